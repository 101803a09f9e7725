"""COCO person-keypoints reader: a random-access grain source of person boxes.

Reads the official on-disk format (`annotations/person_keypoints_<split>.json` plus an
image folder). One record per annotated person (top-down), keeping, as HRNet's
`COCODataset._load_coco_keypoint_annotation_kernal` does, only non-crowd persons with at
least one non-zero keypoint value and a box that survives HRNet's clipping to the image.

`scan_annotations` applies every check of `jaxpose.data.faults` and collects all problems
(for `python -m jaxpose.data.check`); `CocoPersonBoxes` raises on the first rejected one and
skips, warns about and counts the rest.
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from jaxpose.data import faults
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError

_TOP_LEVEL_FIELDS = ("images", "annotations", "categories")
_REQUIRED_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox", "keypoints", "iscrowd")
_REQUIRED_IMAGE_FIELDS = ("id", "file_name", "width", "height")


@dataclasses.dataclass(frozen=True)
class PersonRecord:
  """One person box. keypoints: [K, 3] float32 (x, y, v) in image pixels, v as COCO;
  image_wh: the annotated (width, height) of its image."""
  image_path: str
  image_id: int
  annotation_id: int
  box_xywh: np.ndarray
  keypoints: np.ndarray
  area: float
  image_wh: tuple[int, int]


def load_json(path: Path) -> dict:
  """The annotation file's top-level object; DatasetError naming the file if it is unusable."""
  if not path.is_file():
    raise DatasetError(f"{path}: annotation file not found")
  try:
    text = path.read_text()
  except (OSError, UnicodeDecodeError) as e:
    raise DatasetError(f"{path}: cannot read the annotation file ({e})") from None
  if not text.strip():
    raise DatasetError(f"{path}: annotation file is empty")
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
  if not isinstance(data, dict):
    raise DatasetError(
        f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
  return data


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value, length: int) -> np.ndarray | None:
  """A JSON list of `length` numbers as float64 (null -> NaN), or None if it is not one."""
  if not isinstance(value, list) or len(value) != length:
    return None
  if not all(v is None or _is_number(v) for v in value):
    return None
  return np.array([np.nan if v is None else v for v in value], np.float64)


class _Scanner:
  """Walks one parsed COCO keypoints file and fills an `AnnotationScan`."""

  def __init__(self, scan: faults.AnnotationScan, image_dir: Path,
               spec: keypoints_lib.KeypointSpec):
    self.scan, self.image_dir, self.spec = scan, image_dir, spec
    self.file = str(scan.annotation_file)

  def reject(self, kind: str, entry: str, message: str) -> None:
    self.scan.rejected.append(faults.Fault(kind, self.file, entry, message))

  def check_top_level(self, data: dict) -> bool:
    for key in _TOP_LEVEL_FIELDS:
      if not isinstance(data.get(key), list):
        self.reject("unreadable_annotation_file", "",
                    f"missing top-level list {key!r}" if key not in data
                    else f"top-level {key!r} is not a list")
    if self.scan.rejected:
      return False
    people = [c for c in data["categories"] if isinstance(c, dict) and c.get("name") == "person"]
    if not people:
      self.reject("unreadable_annotation_file", "", "no 'person' category")
      return False
    names = people[0].get("keypoints", [])
    if not isinstance(names, list) or len(names) != self.spec.num_keypoints:
      count = len(names) if isinstance(names, list) else 0
      self.reject("unreadable_annotation_file", "",
                  f"person category has {count} keypoints, layout {self.spec.dataset!r} "
                  f"expects {self.spec.num_keypoints}")
      return False
    return True

  def images_by_id(self, images: list) -> tuple[dict, dict]:
    """(first entry per image id, the later entries of ids listed more than once)."""
    by_id, duplicates = {}, {}
    for i, image in enumerate(images):
      entry = f"images[{i}]"
      if not isinstance(image, dict):
        self.reject("invalid_entry", entry, "not a JSON object")
        continue
      missing = [f for f in _REQUIRED_IMAGE_FIELDS if f not in image]
      if missing:
        self.reject("invalid_entry", entry, f"missing field(s) {missing}")
        continue
      entry = f"images[{i}] (id {image['id']})"
      if not _is_int(image["id"]):
        self.reject("invalid_entry", entry, f"'id' {image['id']!r} is not an integer")
      elif not isinstance(image["file_name"], str) or not image["file_name"]:
        self.reject("invalid_entry", entry,
                    f"'file_name' {image['file_name']!r} is not a file name")
      elif not all(_is_number(image[k]) and image[k] >= 1 and float(image[k]).is_integer()
                   for k in ("width", "height")):
        self.reject("invalid_entry", entry,
                    f"width {image['width']!r} / height {image['height']!r} are not positive "
                    "integers")
      elif image["id"] in by_id:
        duplicates.setdefault(image["id"], []).append(entry)
      else:
        by_id[image["id"]] = dict(image, width=int(image["width"]), height=int(image["height"]),
                                  entry=entry)
    return by_id, duplicates

  def person(self, i: int, ann, images: dict, duplicates: dict, on_duplicates: dict) -> None:
    """Adds annotation `i` as a record, or records why it is rejected, filtered or skipped."""
    if not isinstance(ann, dict):
      self.reject("invalid_entry", f"annotations[{i}]", "not a JSON object")
      return
    entry = f"annotations[{i}] (id {ann.get('id')})"
    missing = [f for f in _REQUIRED_ANNOTATION_FIELDS if f not in ann]
    if missing:
      self.reject("invalid_entry", entry, f"missing field(s) {missing}")
      return
    num_values = self.spec.num_keypoints * 3
    keypoints = _numbers(ann["keypoints"], num_values)
    box = _numbers(ann["bbox"], 4)
    area = ann.get("area")
    if not _is_int(ann["id"]):
      self.reject("invalid_entry", entry, f"'id' {ann['id']!r} is not an integer")
    elif not _is_int(ann["image_id"]) or ann["image_id"] not in images:
      self.reject("invalid_entry", entry, f"image_id {ann['image_id']!r} is not in 'images'")
    elif keypoints is None:
      found = len(ann["keypoints"]) if isinstance(ann["keypoints"], list) else "no list of"
      self.reject("invalid_entry", entry,
                  f"'keypoints' has {found} values, expected {num_values} numbers")
    elif box is None:
      self.reject("invalid_entry", entry, f"'bbox' {ann['bbox']!r} is not 4 numbers")
    elif area is not None and not _is_number(area):
      self.reject("invalid_entry", entry, f"'area' {area!r} is not a number")
    else:
      image = images[ann["image_id"]]
      image_wh = (image["width"], image["height"])
      area = float(box[2] * box[3] if area is None else area)
      keypoints = keypoints.reshape(self.spec.num_keypoints, 3)
      problem = faults.person_problem(keypoints, box, area, image_wh, bool(ann["iscrowd"]))
      if problem and problem[0] in faults.FILTERED:
        self.scan.filtered[problem[0]] += 1
      elif problem:
        self.scan.skipped.append(faults.Fault(problem[0], self.file, entry, problem[1]))
      elif ann["image_id"] in duplicates:
        on_duplicates[ann["image_id"]] = on_duplicates.get(ann["image_id"], 0) + 1
      else:
        self.scan.records.append(PersonRecord(
            image_path=str(self.image_dir / image["file_name"]),
            image_id=int(ann["image_id"]),
            annotation_id=int(ann["id"]),
            box_xywh=faults.clip_box(box, image_wh),
            keypoints=keypoints.astype(np.float32),
            area=area,
            image_wh=image_wh,
        ))

  def check_images_exist(self) -> None:
    for path in sorted({r.image_path for r in self.scan.records}):
      if not os.path.isfile(path):
        self.scan.rejected.append(faults.Fault(
            "missing_image", path, "", f"image listed in {self.file} is missing on disk"))


def scan_annotations(annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
                     spec: keypoints_lib.KeypointSpec) -> faults.AnnotationScan:
  """Reads one COCO keypoints file and applies every check; never raises for bad data."""
  scan = faults.AnnotationScan(Path(annotation_file))
  scanner = _Scanner(scan, Path(image_dir), spec)
  try:
    data = load_json(scan.annotation_file)
  except DatasetError as e:
    message = str(e).removeprefix(f"{scan.annotation_file}: ")
    scanner.reject("unreadable_annotation_file", "", message)
    return scan
  if not scanner.check_top_level(data):
    return scan
  images, duplicates = scanner.images_by_id(data["images"])
  on_duplicates: dict = {}
  for i, ann in enumerate(data["annotations"]):
    scanner.person(i, ann, images, duplicates, on_duplicates)
  for image_id, entries in duplicates.items():
    for entry in entries:
      persons = on_duplicates.pop(image_id, 0)  # counted once, on the first later entry
      scan.skipped.append(faults.Fault(
          "duplicate_image_id", scanner.file, entry,
          f"repeats the id of {images[image_id]['entry']}; the {persons} person(s) on that id "
          "are skipped",
          persons=persons))
  if scan.rejected:
    return scan
  scanner.check_images_exist()
  if not scan.records and not scan.rejected:
    scanner.reject("no_persons", "",
                   f"no usable person ({len(data['annotations'])} annotations: "
                   f"{scan.filtered_persons} filtered, {scan.skipped_persons} skipped)")
  return scan


class CocoPersonBoxes:
  """Random-access source over the labelled persons of one COCO keypoints split.

  Validates on open (`scan_annotations`): a rejected file or entry raises `DatasetError`
  naming them; skipped persons are logged and counted in `scan`.
  """

  def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
               spec: keypoints_lib.KeypointSpec):
    self.annotation_file = Path(annotation_file)
    self.image_dir = Path(image_dir)
    self.spec = spec
    self.scan = scan_annotations(self.annotation_file, self.image_dir, spec)
    self.scan.raise_if_rejected()
    self.scan.warn_skipped()
    self.records: list[PersonRecord] = self.scan.records

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    r = self.records[index]
    return dict(image_path=r.image_path, image_id=r.image_id, annotation_id=r.annotation_id,
                box_xywh=r.box_xywh, keypoints=r.keypoints, area=np.float32(r.area),
                image_wh=np.array(r.image_wh, np.int32))

  def __repr__(self) -> str:
    return f"CocoPersonBoxes({self.annotation_file}, {len(self)} persons)"
