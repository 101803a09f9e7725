"""COCO person-keypoints reader: a random-access grain source of person boxes.

Reads the official on-disk format (`annotations/person_keypoints_<split>.json` plus an
image folder). One record per annotated person (top-down), keeping, as HRNet's
`COCODataset._load_coco_keypoint_annotation_kernal` does, only non-crowd persons with at
least one labelled keypoint and a box of positive area after clipping to the image.
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError

_REQUIRED_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox", "keypoints", "iscrowd")
_REQUIRED_IMAGE_FIELDS = ("id", "file_name", "width", "height")


@dataclasses.dataclass(frozen=True)
class PersonRecord:
  """One person box. keypoints: [K, 3] float32 (x, y, v) in image pixels, v as COCO."""
  image_path: str
  image_id: int
  annotation_id: int
  box_xywh: np.ndarray
  keypoints: np.ndarray
  area: float


def load_json(path: Path) -> dict:
  if not path.is_file():
    raise DatasetError(f"{path}: annotation file not found")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def _require(entry: dict, fields, where: str) -> None:
  missing = [f for f in fields if f not in entry]
  if missing:
    raise DatasetError(f"{where}: missing field(s) {missing}")


def _clip_box(box_xywh, area: float, width: int, height: int) -> np.ndarray | None:
  """HRNet's sanitisation: clip to the image, drop boxes with no area."""
  x, y, w, h = box_xywh
  x1, y1 = max(0.0, x), max(0.0, y)
  x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
  y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
  if x2 < x1 or y2 < y1 or area <= 0:
    return None
  return np.array([x1, y1, x2 - x1, y2 - y1], np.float32)


class CocoPersonBoxes:
  """Random-access source over the labelled persons of one COCO keypoints split.

  Validates on open: the annotation file must exist and be valid JSON with the COCO
  schema, its person category must have `spec.num_keypoints` keypoints, and every
  image the records refer to must exist on disk. Errors name the file and entry.
  """

  def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
               spec: keypoints_lib.KeypointSpec):
    self.annotation_file = Path(annotation_file)
    self.image_dir = Path(image_dir)
    self.spec = spec
    data = load_json(self.annotation_file)
    where = str(self.annotation_file)
    for key in ("images", "annotations", "categories"):
      if key not in data:
        raise DatasetError(f"{where}: missing top-level field {key!r}")
    self._check_category(data["categories"], where)
    images = {}
    for i, image in enumerate(data["images"]):
      _require(image, _REQUIRED_IMAGE_FIELDS, f"{where}: images[{i}]")
      if image["id"] in images:
        raise DatasetError(f"{where}: images[{i}]: duplicate image id {image['id']}")
      images[image["id"]] = image
    self.records = self._person_records(data["annotations"], images, where)
    self._check_images_exist(where)

  def _check_category(self, categories, where: str) -> None:
    people = [c for c in categories if c.get("name") == "person"]
    if not people:
      raise DatasetError(f"{where}: no 'person' category")
    names = people[0].get("keypoints", [])
    if len(names) != self.spec.num_keypoints:
      raise DatasetError(
          f"{where}: person category has {len(names)} keypoints, layout "
          f"{self.spec.dataset!r} expects {self.spec.num_keypoints}")

  def _person_records(self, annotations, images, where: str) -> list[PersonRecord]:
    num_keypoints = self.spec.num_keypoints
    records = []
    for i, ann in enumerate(annotations):
      entry = f"{where}: annotations[{i}] (id {ann.get('id')})"
      _require(ann, _REQUIRED_ANNOTATION_FIELDS, entry)
      if ann["image_id"] not in images:
        raise DatasetError(f"{entry}: image_id {ann['image_id']} is not in 'images'")
      keypoints = np.asarray(ann["keypoints"], np.float32)
      if keypoints.shape != (num_keypoints * 3,):
        raise DatasetError(
            f"{entry}: 'keypoints' has {keypoints.size} values, expected {num_keypoints * 3}")
      if ann["iscrowd"] or keypoints.max(initial=0) <= 0:
        continue
      image = images[ann["image_id"]]
      area = float(ann.get("area", ann["bbox"][2] * ann["bbox"][3]))
      box = _clip_box(ann["bbox"], area, image["width"], image["height"])
      if box is None:
        continue
      records.append(PersonRecord(
          image_path=str(self.image_dir / image["file_name"]),
          image_id=int(ann["image_id"]),
          annotation_id=int(ann["id"]),
          box_xywh=box,
          keypoints=keypoints.reshape(num_keypoints, 3),
          area=area,
      ))
    return records

  def _check_images_exist(self, where: str) -> None:
    for path in sorted({r.image_path for r in self.records}):
      if not os.path.isfile(path):
        raise DatasetError(f"{path}: image listed in {where} is missing on disk")

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    r = self.records[index]
    return dict(image_path=r.image_path, image_id=r.image_id, annotation_id=r.annotation_id,
                box_xywh=r.box_xywh, keypoints=r.keypoints, area=np.float32(r.area))

  def __repr__(self) -> str:
    return f"CocoPersonBoxes({self.annotation_file}, {len(self)} persons)"
