"""Person boxes from a detector's results json: a source of boxes for top-down inference.

The file is COCO's detection results format, as HRNet reads
`COCO_val2017_detections_AP_H_56_person.json`: a JSON list of {"image_id", "category_id",
"bbox": [x, y, w, h] (pixels, top-left corner and size), "score"}. Read as HRNet's
`COCODataset._load_coco_person_detection_results` (leoxiaobin/deep-high-resolution-net.pytorch
@6f69e46): only category 1 (person) is kept, a box whose score is below the threshold
(TEST.IMAGE_THRE) is dropped, boxes are not clipped to the image, and the box score later
multiplies the rescored keypoint score. Unlike HRNet, the file is checked first: a malformed
entry, or an image id the annotation file does not list, raises DatasetError naming the file
and the entry; the image path comes from the annotation file's `file_name`.

`PersonBoxes` is the random-access source over such boxes (or any boxes, e.g. whole images
for `python -m jaxpose.predict`), with the record keys of `coco.CocoPersonBoxes`.
"""

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from jaxpose.data import coco
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError
from jaxpose.evaluation import coco_eval

_FIELDS = ("image_id", "category_id", "bbox", "score")


@dataclasses.dataclass(frozen=True)
class BoxRecord:
  """One person box to crop, with its detector score (1 for a box given by hand).
  annotation_id is -1: the box is not an annotation."""
  image_path: str
  image_id: int
  box_xywh: np.ndarray
  score: float
  image_wh: tuple[int, int]
  annotation_id: int = -1


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_image_table(annotation_file: str | os.PathLike) -> dict[int, tuple[str, tuple[int, int]]]:
  """image id -> (file_name, (width, height)) from a COCO annotation file's "images"."""
  path = Path(annotation_file)
  data = coco.load_json(path)
  images = data.get("images")
  if not isinstance(images, list):
    raise DatasetError(f"{path}: missing top-level list 'images'")
  table = {}
  for i, image in enumerate(images):
    if not (isinstance(image, dict) and _is_int(image.get("id"))
            and isinstance(image.get("file_name"), str)
            and all(_is_finite_number(image.get(k)) for k in ("width", "height"))):
      raise DatasetError(f"{path}: images[{i}]: needs an integer 'id', a 'file_name' and a "
                         "numeric 'width' and 'height'")
    table[image["id"]] = (image["file_name"], (int(image["width"]), int(image["height"])))
  return table


def read_detections(detections_file: str | os.PathLike, known_image_ids,
                    images_from: str = "the annotation file") -> list[dict]:
  """Every entry of a detection results json, checked; returns them in file order.

  Each entry needs an integer image id listed in `known_image_ids` (the images of
  `images_from`, for the message), an integer category id, a
  bbox of 4 finite numbers with positive width and height (a crop of zero size has no
  pixels) and a finite score; else DatasetError names the file and the entry.
  """
  path = Path(detections_file)
  if not path.is_file():
    raise DatasetError(f"{path}: detection results file not found")
  try:
    with open(path) as f:
      entries = json.load(f)
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
                       ) from None
  except (OSError, UnicodeDecodeError) as e:
    raise DatasetError(f"{path}: cannot read the detection results ({e})") from None
  if not isinstance(entries, list):
    raise DatasetError(
        f"{path}: expected a JSON list of detections, got {type(entries).__name__}")
  for i, entry in enumerate(entries):
    where = f"{path}: entry {i}"
    if not isinstance(entry, dict):
      raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
    where += f" (image_id {entry.get('image_id', 'missing')!r})"
    missing = [f for f in _FIELDS if f not in entry]
    if missing:
      raise DatasetError(f"{where}: missing field(s) {missing}")
    if not _is_int(entry["image_id"]) or entry["image_id"] not in known_image_ids:
      raise DatasetError(f"{where}: image_id is not an image of {images_from}")
    if not _is_int(entry["category_id"]):
      raise DatasetError(f"{where}: category_id {entry['category_id']!r} is not an integer")
    box = entry["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(_is_finite_number(v) for v in box)):
      raise DatasetError(f"{where}: bbox {box!r} is not 4 finite numbers [x, y, w, h]")
    if box[2] <= 0 or box[3] <= 0:
      raise DatasetError(f"{where}: bbox {box!r} has no area (width and height must be > 0)")
    if not _is_finite_number(entry["score"]):
      raise DatasetError(f"{where}: score {entry['score']!r} is not a finite number")
  return entries


class PersonBoxes:
  """Random-access source over person boxes to crop, one record per box.

  Records carry the keys of `coco.CocoPersonBoxes` records (keypoints all zero: nothing is
  labelled) plus `box_score`; `scores` [N] holds the box scores in record order.
  """

  def __init__(self, records: list[BoxRecord], spec: keypoints_lib.KeypointSpec,
               description: str = ""):
    self.records = records
    self.spec = spec
    self.scores = np.array([r.score for r in records], np.float64)
    self.description = description

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    r = self.records[index]
    return dict(image_path=r.image_path, image_id=r.image_id, annotation_id=r.annotation_id,
                box_xywh=r.box_xywh, keypoints=np.zeros((self.spec.num_keypoints, 3), np.float32),
                area=np.float32(r.box_xywh[2] * r.box_xywh[3]),
                image_wh=np.array(r.image_wh, np.int32), box_score=np.float32(r.score))

  def __repr__(self) -> str:
    return f"PersonBoxes({self.description}, {len(self)} boxes)"


def detection_boxes(detections_file: str | os.PathLike,
                    images: dict[int, tuple[str, tuple[int, int]]],
                    spec: keypoints_lib.KeypointSpec, score_threshold: float,
                    image_ids=None, images_from: str = "the annotation file") -> PersonBoxes:
  """The person boxes of a detection results json that HRNet would crop.

  Args:
    detections_file: COCO detection results json.
    images: image id -> (image path, (width, height)); the file's image ids must be keys.
    spec: the keypoint layout (K and the flip pairs the evaluator uses).
    score_threshold: boxes scoring below it are dropped (HRNet TEST.IMAGE_THRE).
    image_ids: if given, only boxes on these images are kept.
    images_from: where `images` come from, for the error message of an unknown image id.
  """
  entries = read_detections(detections_file, images, images_from)
  records = []
  for e in entries:
    if e["category_id"] != coco_eval.PERSON_CATEGORY_ID or e["score"] < score_threshold:
      continue
    if image_ids is not None and e["image_id"] not in image_ids:
      continue
    image_path, image_wh = images[e["image_id"]]
    records.append(BoxRecord(
        image_path=image_path, image_id=e["image_id"], box_xywh=np.asarray(e["bbox"], np.float32),
        score=float(e["score"]), image_wh=image_wh))
  return PersonBoxes(records, spec, str(detections_file))


def split_detection_boxes(detections_file: str | os.PathLike, annotation_file: str | os.PathLike,
                          image_dir: str | os.PathLike, spec: keypoints_lib.KeypointSpec,
                          score_threshold: float, image_ids=None) -> PersonBoxes:
  """`detection_boxes` on the images of a COCO split: the annotation file's "images" give
  each id's file (under `image_dir`) and size; an image a kept box is on must exist."""
  images = {image_id: (str(Path(image_dir) / file_name), image_wh)
            for image_id, (file_name, image_wh) in read_image_table(annotation_file).items()}
  boxes = detection_boxes(detections_file, images, spec, score_threshold, image_ids,
                          f"the annotation file {annotation_file}")
  for image_path in sorted({r.image_path for r in boxes.records}):
    if not os.path.isfile(image_path):
      raise DatasetError(f"{image_path}: image listed in {annotation_file} is missing on disk "
                         f"(boxes of {detections_file} are on it)")
  return boxes
