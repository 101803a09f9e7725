"""A small synthetic COCO-format dataset with planted faults, for the hostile-data tests.

`make_hostile_dataset(root)` generates jaxpose's synthetic dataset (20 train and 8 val
images of 128 px) and then breaks it on purpose:

  train images   1 truncated JPEG (5% of 20), 1 JPEG with a garbage header, 1 image
                 replaced by a 1x1 JPEG (its annotation still says 128x128);
  train json     one person each with a box outside the image, a zero-area box, a NaN
                 keypoint, a labelled keypoint outside the image; one image entry that
                 repeats another's id;
  val            1 truncated JPEG (evaluation must survive it);
  annotations/person_keypoints_empty.json   an empty (0-byte) annotation file.

It also plants what is *not* a fault: a person whose keypoints are all zero (HRNet filters
it) and three images in other colour modes (grayscale JPEG, RGBA PNG, 16-bit PNG).

The expected counts are derived here from the json alone (persons per image), not from
jaxpose's reader.
"""

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np

from jaxpose.data import synthetic

NUM_TRAIN_IMAGES = 20
NUM_VAL_IMAGES = 8
IMAGE_SIZE = 128
EMPTY_SPLIT = "empty"


@dataclasses.dataclass(frozen=True)
class PlantedFault:
  kind: str
  file: str
  entry: str
  persons: int  # persons it removes from the split


@dataclasses.dataclass
class HostileDataset:
  root: Path
  faults: list[PlantedFault]  # train and val faults; the empty file's is `empty_file`
  filtered: dict[str, int]  # kind -> persons, train split
  usable_train_persons: int  # persons that pass the start-up checks
  converted_images: list[str]  # other colour modes: not faults
  empty_file: Path

  def by_split(self, split: str) -> list[PlantedFault]:
    folder = str(self.root / split) + "/"
    json_file = str(self.root / "annotations" / f"person_keypoints_{split}.json")
    return [f for f in self.faults if f.file == json_file or f.file.startswith(folder)]


def _image_path(root: Path, split: str, image: dict) -> Path:
  return root / split / image["file_name"]


def _persons_per_image(annotations: list[dict]) -> dict[int, int]:
  counts: dict[int, int] = {}
  for ann in annotations:
    if not ann["iscrowd"] and max(ann["keypoints"]) > 0:
      counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + 1
  return counts


def _truncate(path: Path) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def _garble_header(path: Path) -> None:
  data = bytearray(path.read_bytes())
  data[2:40] = bytes(range(38))  # the JFIF segment and what follows become nonsense
  path.write_bytes(bytes(data))


def make_hostile_dataset(root: Path) -> HostileDataset:
  paths = synthetic.generate_coco_synthetic(
      root, num_train_images=NUM_TRAIN_IMAGES, num_val_images=NUM_VAL_IMAGES, seed=0,
      image_size_hw=(IMAGE_SIZE, IMAGE_SIZE))
  train = json.loads(paths.train_annotations.read_text())
  val = json.loads(paths.val_annotations.read_text())
  per_image = _persons_per_image(train["annotations"])
  with_persons = iter([im for im in train["images"] if per_image.get(im["id"], 0) > 0])
  planted: list[PlantedFault] = []

  def image_fault(kind: str, image: dict, split: str = "train", persons: int | None = None):
    planted.append(PlantedFault(kind, str(_image_path(root, split, image)),
                                f"image id {image['id']}",
                                per_image[image["id"]] if persons is None else persons))

  num_truncated = NUM_TRAIN_IMAGES * 5 // 100
  for _ in range(num_truncated):
    image = next(with_persons)
    _truncate(_image_path(root, "train", image))
    image_fault("corrupt_image", image)
  image = next(with_persons)
  _garble_header(_image_path(root, "train", image))
  image_fault("corrupt_image", image)
  image = next(with_persons)
  cv2.imwrite(str(_image_path(root, "train", image)), np.full((1, 1, 3), 90, np.uint8))
  image_fault("image_size_mismatch", image)

  # Other colour modes: converted on decode, not faults.
  converted = []
  for mode in ("gray", "rgba", "16bit"):
    image = next(with_persons)
    original = _image_path(root, "train", image)
    bgr = cv2.imread(str(original))
    if mode == "gray":
      cv2.imwrite(str(original), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    else:
      original.unlink()
      image["file_name"] = original.with_suffix(".png").name
      pixels = (np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)]) if mode == "rgba"
                else bgr.astype(np.uint16) * 257)
      cv2.imwrite(str(_image_path(root, "train", image)), pixels)
    converted.append(str(_image_path(root, "train", image)))

  # One hostile annotation of each kind, on persons of still-healthy images.
  annotation_file = str(paths.train_annotations)
  index_of = {id(ann): i for i, ann in enumerate(train["annotations"])}
  *healthy_images, duplicated = list(with_persons)
  healthy = iter([ann for ann in train["annotations"]
                  if ann["image_id"] in {im["id"] for im in healthy_images}])

  def annotation_fault(kind: str, ann: dict, persons: int = 1):
    planted.append(PlantedFault(kind, annotation_file,
                                f"annotations[{index_of[id(ann)]}] (id {ann['id']})", persons))

  ann = next(healthy)
  ann["bbox"] = [IMAGE_SIZE + 20.0, 10.0, 30.0, 40.0]
  annotation_fault("box_outside_image", ann)
  ann = next(healthy)
  ann["bbox"][2] = 0.0
  annotation_fault("box_zero_area", ann)
  ann = next(healthy)
  ann["keypoints"][3 * 5] = float("nan")  # json.dumps writes NaN, which json.loads accepts
  annotation_fault("keypoints_not_finite", ann)
  ann = next(healthy)
  labelled = next(k for k in range(len(ann["keypoints"]) // 3) if ann["keypoints"][3 * k + 2] > 0)
  ann["keypoints"][3 * labelled] = 10.0 * IMAGE_SIZE
  annotation_fault("keypoints_out_of_range", ann)
  ann = next(healthy)
  ann["keypoints"] = [0] * len(ann["keypoints"])
  ann["num_keypoints"] = 0
  filtered = {"no_labelled_keypoints": 1}

  # An image entry repeating an earlier id: the persons on that id become ambiguous.
  train["images"].append(dict(duplicated, file_name=train["images"][0]["file_name"]))
  planted.append(PlantedFault("duplicate_image_id", annotation_file,
                              f"images[{len(train['images']) - 1}] (id {duplicated['id']})",
                              per_image[duplicated["id"]]))
  paths.train_annotations.write_text(json.dumps(train))

  val_image = next(im for im in val["images"]
                   if _persons_per_image(val["annotations"]).get(im["id"], 0) > 0)
  _truncate(_image_path(root, "val", val_image))
  image_fault("corrupt_image", val_image, "val",
              persons=_persons_per_image(val["annotations"])[val_image["id"]])

  empty_file = paths.train_annotations.with_name(f"person_keypoints_{EMPTY_SPLIT}.json")
  empty_file.write_bytes(b"")

  at_open = sum(f.persons for f in planted if f.file == annotation_file)
  usable = sum(per_image.values()) - sum(filtered.values()) - at_open
  return HostileDataset(root=root, faults=planted, filtered=filtered,
                        usable_train_persons=usable, converted_images=converted,
                        empty_file=empty_file)
