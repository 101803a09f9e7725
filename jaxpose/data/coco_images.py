"""Image-level COCO / CrowdPose reader for bottom-up models: one record per image.

Reads the same files as `jaxpose.data.coco` (COCO `person_keypoints_<split>.json`, CrowdPose
`crowdpose_<split>.json`) the way DEKR's `CocoKeypoints` / `CrowdPoseKeypoints` do
(HRNet/DEKR @7a30313, `lib/dataset/`):

  * training keeps every image with at least one annotation of any kind (DEKR filters
    `getAnnIds(imgIds=id, iscrowd=None)`), so an image holding only a crowd region stays,
    with no person; evaluation (`require_annotations=False`) keeps every image, as DEKR's
    `CocoDataset` tests on all of val2017;
  * the persons trained on are `bottomup.select_training_persons`: non-crowd ones (even
    with no labelled keypoint, as DEKR) and crowd ones with keypoints;
  * COCO: each person's annotation `area` decides whether it gets a centre
    (`segmentation_area`), and crowd regions and unlabelled persons are ignored by the loss
    (`valid_mask`, `bottomup.valid_region_mask`); CrowdPose (`spec.dataset == "crowdpose"`)
    has neither: every person gets a centre and nothing is masked.

Validation on open, as `coco.py` (whose top-level and image checks are reused): a missing
file, field or image raises `DatasetError` naming the file and entry; a person whose
keypoints fail `faults.keypoints_problem` is left out, warned about and counted, and its box
is masked like an unlabelled person's, so the loss neither learns it as background nor as a
pose.

Record keys (`__getitem__`): `image_path`, `image_id`, `image_wh` [2] int32, `keypoints`
[P, K, 3] float32 (x, y, v in image pixels; P may be 0), and for COCO `segmentation_area`
[P] float32 and `valid_mask` [H, W] bool (rasterised per read: it is image-sized).
"""

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxpose.codecs import bottomup
from jaxpose.data import coco
from jaxpose.data import faults
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError

_REQUIRED_FIELDS = ("id", "image_id", "keypoints", "iscrowd", "num_keypoints")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One image. keypoints [P, K, 3] float32; segmentation_area [P] (None for CrowdPose);
  ignored_regions: annotations in the form `bottomup.valid_region_mask` reads."""
  image_path: str
  image_id: int
  image_wh: tuple[int, int]
  keypoints: np.ndarray
  segmentation_area: np.ndarray | None
  ignored_regions: tuple[dict, ...]


def _is_polygon_list(segmentation: Any) -> bool:
  """Polygons [[x0, y0, x1, y1, ...], ...]; an empty list (nothing to mask) is one too."""
  return (isinstance(segmentation, list)
          and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                  and all(coco._is_number(v) and np.isfinite(v) for v in p)
                  for p in segmentation))


def _is_rle(segmentation: Any, image_wh: tuple[int, int]) -> bool:
  """COCO's crowd format: uncompressed RLE of the image, {"size": [h, w], "counts": [...]}
  (run lengths down the columns), which DEKR's `frPyObjects` call reads."""
  if not (isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list)
          and list(segmentation.get("size", [])) == [image_wh[1], image_wh[0]]):
    return False
  counts = segmentation["counts"]
  return (all(coco._is_int(c) and c >= 0 for c in counts)
          and sum(counts) == image_wh[0] * image_wh[1])


def _box_region(box: np.ndarray | None) -> dict | None:
  """An unlabelled-person region covering `box` (x, y, w, h), or None if it is unusable."""
  if box is None or not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
    return None
  x, y, w, h = (float(v) for v in box)
  return {"iscrowd": 0, "num_keypoints": 0,
          "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


class _ImageScanner:
  """Groups one file's annotations by image and checks each (see the module docstring)."""

  def __init__(self, scan: faults.AnnotationScan, spec: keypoints_lib.KeypointSpec):
    self.scan, self.spec = scan, spec
    self.file = str(scan.annotation_file)
    self.uses_masks = spec.dataset != "crowdpose"

  def reject(self, entry: str, message: str) -> None:
    self.scan.rejected.append(faults.Fault("invalid_entry", self.file, entry, message))

  def annotation(self, i: int, ann: Any, images: dict) -> tuple[int, dict] | None:
    """(image id, checked annotation) or None when it is rejected."""
    if not isinstance(ann, dict):
      self.reject(f"annotations[{i}]", "not a JSON object")
      return None
    entry = f"annotations[{i}] (id {ann.get('id')})"
    missing = [f for f in _REQUIRED_FIELDS if f not in ann]
    is_crowd = ann.get("iscrowd") in (1, True)
    if self.uses_masks and "area" not in ann and not is_crowd:
      missing.append("area")
    if missing:
      self.reject(entry, f"missing field(s) {missing}")
      return None
    keypoints = coco._numbers(ann["keypoints"], 3 * self.spec.num_keypoints)
    if not coco._is_int(ann["image_id"]) or ann["image_id"] not in images:
      self.reject(entry, f"image_id {ann['image_id']!r} is not in 'images'")
    elif ann["iscrowd"] not in (0, 1):
      self.reject(entry, f"'iscrowd' {ann['iscrowd']!r} is not 0 or 1")
    elif not coco._is_int(ann["num_keypoints"]) or ann["num_keypoints"] < 0:
      self.reject(entry, f"'num_keypoints' {ann['num_keypoints']!r} is not a count")
    elif keypoints is None:
      self.reject(entry, f"'keypoints' is not {3 * self.spec.num_keypoints} numbers")
    elif self.uses_masks and not is_crowd and not (
        coco._is_number(ann["area"]) and np.isfinite(ann["area"])):
      self.reject(entry, f"'area' {ann['area']!r} is not a finite number")
    else:
      image_wh = (images[ann["image_id"]]["width"], images[ann["image_id"]]["height"])
      masked = self.uses_masks and (is_crowd or ann["num_keypoints"] == 0)
      segmentation = ann.get("segmentation")
      readable = _is_polygon_list(segmentation) or (is_crowd and _is_rle(segmentation, image_wh))
      if masked and not readable:
        self.reject(entry, "'segmentation' is neither polygons nor an RLE of the image's size "
                    "(DEKR masks crowd regions and unlabelled persons by it)")
        return None
      return ann["image_id"], dict(
          ann, iscrowd=int(ann["iscrowd"]), entry=entry,
          keypoints=keypoints.reshape(self.spec.num_keypoints, 3),
          bbox=coco._numbers(ann.get("bbox"), 4))
    return None

  def image_record(self, image: dict, image_dir: Path, annotations: list[dict]) -> ImageRecord:
    image_wh = (image["width"], image["height"])
    persons, areas, ignored = [], [], []
    training = bottomup.select_training_persons(annotations)
    self.scan.filtered["crowd"] += len(annotations) - len(training)
    for ann in training:
      problem = faults.keypoints_problem(ann["keypoints"], image_wh)
      if problem:
        self.scan.skipped.append(faults.Fault(problem[0], self.file, ann["entry"], problem[1]))
        if (region := _box_region(ann["bbox"])) is not None:
          ignored.append(region)
        continue
      persons.append(ann["keypoints"])
      areas.append(float(ann.get("area", 0.0)))
    if self.uses_masks:
      for ann in annotations:
        if ann["iscrowd"] and isinstance(ann["segmentation"], list):
          # Crowd polygons: `valid_region_mask` decodes crowd segmentations as one RLE, so
          # pass them as the unlabelled-person form (the union is the same mask).
          ignored.append({"iscrowd": 0, "num_keypoints": 0, "segmentation": ann["segmentation"]})
        elif ann["iscrowd"] or ann["num_keypoints"] == 0:
          ignored.append({k: ann[k] for k in ("iscrowd", "num_keypoints", "segmentation")})
    num_keypoints = self.spec.num_keypoints
    return ImageRecord(
        image_path=str(image_dir / image["file_name"]), image_id=int(image["id"]),
        image_wh=image_wh,
        keypoints=np.array(persons, np.float32).reshape(-1, num_keypoints, 3),
        segmentation_area=np.array(areas, np.float32) if self.uses_masks else None,
        ignored_regions=tuple(ignored))


def scan_images(annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
                spec: keypoints_lib.KeypointSpec, require_annotations: bool = True
                ) -> faults.AnnotationScan:
  """Reads one keypoints file into image records and every problem; never raises for bad data."""
  scan = faults.AnnotationScan(Path(annotation_file))
  image_dir = Path(image_dir)
  top_level = coco._Scanner(scan, image_dir, spec)  # top-level and `images` checks, shared
  try:
    data = coco.load_json(scan.annotation_file)
  except DatasetError as e:
    top_level.reject("unreadable_annotation_file", "",
                     str(e).removeprefix(f"{scan.annotation_file}: "))
    return scan
  if not top_level.check_top_level(data):
    return scan
  images, duplicates = top_level.images_by_id(data["images"])
  scanner = _ImageScanner(scan, spec)
  by_image: dict[int, list[dict]] = {image_id: [] for image_id in images}
  for i, ann in enumerate(data["annotations"]):
    if (checked := scanner.annotation(i, ann, images)) is not None:
      by_image[checked[0]].append(checked[1])
  if scan.rejected:
    return scan
  for image_id, entries in duplicates.items():
    # Which of the entries sharing the id the annotations belong to is unknowable.
    persons = len(by_image.pop(image_id))
    scan.skipped.append(faults.Fault("duplicate_image_id", scanner.file, entries[0],
                                     f"repeats the id of {images[image_id]['entry']}; the image "
                                     f"and its {persons} annotation(s) are skipped",
                                     persons=persons))
  for image_id, annotations in by_image.items():
    if annotations or not require_annotations:
      scan.records.append(scanner.image_record(images[image_id], image_dir, annotations))
  for path in sorted({r.image_path for r in scan.records}):
    if not os.path.isfile(path):
      scan.rejected.append(faults.Fault("missing_image", path, "",
                                        f"image listed in {scanner.file} is missing on disk"))
  if not scan.records and not scan.rejected:
    scan.rejected.append(faults.Fault("no_persons", scanner.file, "",
                                      f"no image with annotations among {len(images)} images"))
  return scan


class CocoImages:
  """Random-access source over the images of one COCO or CrowdPose keypoints split.

  Validates on open (`scan_images`): a rejected file or entry raises `DatasetError` naming
  them; skipped persons are logged and counted in `scan`. Record keys: module docstring.
  """

  def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
               spec: keypoints_lib.KeypointSpec, require_annotations: bool = True):
    self.annotation_file = Path(annotation_file)
    self.image_dir = Path(image_dir)
    self.spec = spec
    self.scan = scan_images(self.annotation_file, self.image_dir, spec, require_annotations)
    self.scan.raise_if_rejected()
    self.scan.warn_skipped()
    self.records: list[ImageRecord] = self.scan.records

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    r = self.records[index]
    record = dict(image_path=r.image_path, image_id=r.image_id,
                  image_wh=np.array(r.image_wh, np.int32), keypoints=r.keypoints)
    if r.segmentation_area is not None:
      width, height = r.image_wh
      record.update(segmentation_area=r.segmentation_area,
                    valid_mask=bottomup.valid_region_mask(r.ignored_regions, height, width))
    return record

  def __repr__(self) -> str:
    return f"CocoImages({self.annotation_file}, {len(self)} images)"
