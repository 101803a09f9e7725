"""jaxpose's own person-keypoints dataset, generated on first use in the COCO on-disk format.

Layout under `root`, readable by `jaxpose.data.coco`, pycocotools' `COCO()` and `COCOeval`:

  train/000000000001.jpg ...                       val/000000000001.jpg ...
  annotations/person_keypoints_train.json          annotations/person_keypoints_val.json
  COMPLETE                                         the generation parameters, as JSON

Images come from `synthetic_render.render_image` (see there for the scene and the
keypoint, box and visibility conventions). Everything is a pure function of `seed`:
image i of split s draws from `np.random.default_rng([seed, s, i])` (s: train 0, val 1),
so regenerating gives byte-identical json and JPEGs, whatever the order of generation.

Crash safety: a dataset is written into a hidden sibling directory, `COMPLETE` last, and
renamed onto `root` in one step, so `root` is either absent or complete. A `root` that
exists without `COMPLETE` (written by hand, or by an older, non-atomic writer) is
replaced if it holds only dataset entries. A `root` whose `COMPLETE` records other
parameters raises `DatasetError` rather than being overwritten: callers encode the
parameters in the directory name, so a mismatch means a stale or hand-picked path.
"""

import dataclasses
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

from jaxpose.data.keypoints import COCO
from jaxpose.data.synthetic_render import PersonLabel, render_image
from jaxpose.errors import DatasetError

# Bump whenever generated pixels or json change, so stale caches are refused, not reused.
FORMAT_VERSION = 1
_SPLIT_IDS = {"train": 0, "val": 1}
_MARKER = "COMPLETE"
_LAYOUT_ENTRIES = {"train", "val", "annotations", _MARKER}
_JPEG_QUALITY = 90
_STALE_TEMP_SECONDS = 3600  # a temp dir untouched this long belongs to a crashed run


@dataclasses.dataclass(frozen=True)
class SyntheticPaths:
  root: Path
  train_images_dir: Path
  val_images_dir: Path
  train_annotations: Path
  val_annotations: Path


def synthetic_paths(root: str | os.PathLike) -> SyntheticPaths:
  root = Path(root).expanduser()
  return SyntheticPaths(root=root, train_images_dir=root / "train", val_images_dir=root / "val",
                        train_annotations=root / "annotations" / "person_keypoints_train.json",
                        val_annotations=root / "annotations" / "person_keypoints_val.json")


def _generation_params(num_train_images: int, num_val_images: int, seed: int,
                       image_size_hw: tuple[int, int]) -> dict:
  return dict(format_version=FORMAT_VERSION, seed=int(seed), num_train_images=int(num_train_images),
              num_val_images=int(num_val_images), image_size_hw=[int(s) for s in image_size_hw])


def _read_marker(root: Path) -> dict | None:
  try:
    return json.loads((root / _MARKER).read_text())
  except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
    return None


def _annotation_entry(person: PersonLabel, annotation_id: int, image_id: int) -> dict:
  x, y, w, h = (float(v) for v in person.box_xywh)
  keypoints = [round(float(v), 2) for v in person.keypoints.reshape(-1)]
  return dict(id=annotation_id, image_id=image_id, category_id=1, bbox=[x, y, w, h],
              area=float(person.area), iscrowd=0,
              num_keypoints=int(np.count_nonzero(person.keypoints[:, 2] > 0)),
              keypoints=keypoints,
              # The box as a polygon: enough for pycocotools' mask helpers.
              segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]])


def _write_split(directory: Path, split: str, num_images: int, seed: int,
                 image_size_hw: tuple[int, int]) -> dict:
  """Renders and writes one split's JPEGs; returns its COCO json dict.

  One process on purpose: a spawn pool would re-import the caller's unguarded `__main__`
  script, and the whole default dataset takes well under a minute anyway.
  """
  image_dir = directory / split
  image_dir.mkdir(parents=True)
  images, annotations = [], []
  for index in range(num_images):
    image_id = index + 1
    rendered = render_image(np.random.default_rng([seed, _SPLIT_IDS[split], index]), image_size_hw)
    file_name = f"{image_id:012d}.jpg"
    if not cv2.imwrite(str(image_dir / file_name), rendered.image_bgr,
                       [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
      raise OSError(f"{image_dir / file_name}: cv2.imwrite failed")
    images.append(dict(id=image_id, file_name=file_name, width=image_size_hw[1],
                       height=image_size_hw[0]))
    for person in rendered.persons:
      annotations.append(_annotation_entry(person, len(annotations) + 1, image_id))
  category = dict(id=1, name="person", supercategory="person", keypoints=list(COCO.names),
                  skeleton=[[a + 1, b + 1] for a, b in COCO.skeleton])
  info = dict(description=f"jaxpose synthetic person keypoints, {split} split",
              version=str(FORMAT_VERSION), seed=int(seed))
  return dict(info=info, licenses=[], images=images, annotations=annotations,
              categories=[category])


def _remove_previous(root: Path) -> None:
  """Deletes an earlier dataset at `root`; a marker-less one only if it holds nothing else."""
  foreign = sorted(p.name for p in root.iterdir() if p.name not in _LAYOUT_ENTRIES)
  if foreign and _read_marker(root) is None:
    raise DatasetError(
        f"{root}: exists without a {_MARKER} marker and holds {foreign[:5]}, which a synthetic "
        f"dataset does not ({sorted(_LAYOUT_ENTRIES)}); refusing to delete it. Pick another root.")
  trash = root.with_name(f".{root.name}.trash-{uuid.uuid4().hex[:8]}")
  os.rename(root, trash)  # atomic, so a concurrent reader never sees a half-deleted root
  shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_temps(root: Path) -> None:
  if not root.parent.is_dir():
    return
  for sibling in root.parent.glob(f".{root.name}.tmp-*"):
    try:
      stale = time.time() - sibling.stat().st_mtime > _STALE_TEMP_SECONDS
    except FileNotFoundError:  # its owner just finished or cleaned up
      continue
    if stale:
      shutil.rmtree(sibling, ignore_errors=True)


def generate_coco_synthetic(root: str | os.PathLike, *, num_train_images: int, num_val_images: int,
                            seed: int, image_size_hw: tuple[int, int] = (256, 256)) -> SyntheticPaths:
  """Writes the dataset to `root` (replacing a previous one there) and returns its paths.

  Writes into a hidden sibling directory first and renames it onto `root` at the end
  (see the module docstring). image_size_hw: (height, width) of every image in pixels.
  """
  paths = synthetic_paths(root)
  params = _generation_params(num_train_images, num_val_images, seed, image_size_hw)
  paths.root.parent.mkdir(parents=True, exist_ok=True)
  temp = paths.root.with_name(f".{paths.root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    temp.mkdir()
    (temp / "annotations").mkdir()
    for split, num_images in (("train", num_train_images), ("val", num_val_images)):
      coco = _write_split(temp, split, num_images, seed, tuple(image_size_hw))
      (temp / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(coco))
    (temp / _MARKER).write_text(json.dumps(params, sort_keys=True))
    if _read_marker(paths.root) == params:
      return paths  # a concurrent run placed the same (byte-identical) dataset meanwhile
    if paths.root.exists():
      _remove_previous(paths.root)
    try:
      os.rename(temp, paths.root)
    except OSError:
      # Another process finished the same dataset between our check and the rename.
      if _read_marker(paths.root) != params:
        raise
  finally:
    shutil.rmtree(temp, ignore_errors=True)
  return paths


def ensure_synthetic_dataset(root: str | os.PathLike, *, num_train_images: int, num_val_images: int,
                             seed: int, image_size_hw: tuple[int, int] = (256, 256)) -> SyntheticPaths:
  """Returns the dataset at `root`, generating it first unless a complete one is there.

  Raises DatasetError if `root` holds a complete dataset made with other parameters, or a
  marker-less folder with files that are not ours.
  """
  paths = synthetic_paths(root)
  params = _generation_params(num_train_images, num_val_images, seed, image_size_hw)
  found = _read_marker(paths.root)
  if found == params:
    return paths
  if found is not None:
    raise DatasetError(
        f"{paths.root / _MARKER}: the synthetic dataset there was generated with {found}, not the "
        f"requested {params}; delete {paths.root} or choose a root named after the parameters.")
  _remove_stale_temps(paths.root)
  return generate_coco_synthetic(paths.root, num_train_images=num_train_images,
                                 num_val_images=num_val_images, seed=seed, image_size_hw=image_size_hw)
