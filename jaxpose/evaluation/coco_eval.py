"""COCO keypoint evaluation: rescoring, OKS-NMS, results-json checks, COCOeval.

Rescoring and OKS-NMS follow HRNet (leoxiaobin/deep-high-resolution-net.pytorch)
`lib/dataset/coco.py: COCODataset.evaluate` and `lib/nms/nms.py: oks_iou, oks_nms`,
re-implemented in vectorised numpy. Scoring is pycocotools' own COCOeval on a results
json (`evaluate_results_file`), never a re-implementation; this module only checks the
files first, so bad input fails with a DatasetError naming the entry instead of a
pycocotools assertion or a silently wrong AP.

Symbols: N person detections, K keypoints. Keypoints are (x, y, score) in original-image
pixels.
"""

import contextlib
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxpose.errors import DatasetError

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
PERSON_CATEGORY_ID = 1


def oks_matrix(keypoints: np.ndarray, areas: np.ndarray, oks_sigmas: np.ndarray) -> np.ndarray:
  """Pairwise object keypoint similarity between detections (HRNet `oks_iou`).

  OKS[i, j] = mean_k exp(-d_ijk^2 / (2 * ((a_i + a_j) / 2 + eps) * (2 sigma_k)^2)), over
  all K keypoints whatever their scores (HRNet's NMS passes no visibility threshold).
  Unlike COCOeval's OKS, the area is the mean of the two detections' areas, so the
  matrix is symmetric.

  Args:
    keypoints: [N, K, >=2] (x, y, ...).
    areas: [N] areas in pixels^2 (HRNet: the crop's scale_w * scale_h).
    oks_sigmas: [K].

  Returns:
    [N, N] float64.
  """
  xy = np.asarray(keypoints, np.float64)[..., :2]
  squared_distance = np.sum(np.square(xy[:, None] - xy[None, :]), axis=-1)  # [N, N, K]
  variances = np.square(2 * np.asarray(oks_sigmas, np.float64))
  mean_area = (areas[:, None] + areas[None, :]) / 2 + np.spacing(1)
  exponent = squared_distance / variances / mean_area[..., None] / 2
  return np.mean(np.exp(-exponent), axis=-1)


def oks_nms(
    keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, oks_sigmas: np.ndarray,
    threshold: float,
) -> np.ndarray:
  """Greedy NMS with OKS as overlap (HRNet `oks_nms`) for the detections of one image.

  Takes detections by descending score (ties as HRNet: reversed `np.argsort`) and drops
  every remaining one whose OKS with the taken one is above `threshold`.

  Returns:
    [M] int indices of the kept detections, in the order they were taken.
  """
  oks = oks_matrix(keypoints, np.asarray(areas, np.float64), oks_sigmas)
  order = np.argsort(np.asarray(scores))[::-1]
  kept = []
  while order.size > 0:
    best, rest = order[0], order[1:]
    kept.append(best)
    order = rest[oks[best, rest] <= threshold]
  return np.array(kept, np.int64)


def rescore_and_nms(
    image_ids: Sequence[int] | np.ndarray,
    keypoints: np.ndarray,
    box_scores: np.ndarray,
    areas: np.ndarray,
    oks_sigmas: np.ndarray,
    in_vis_threshold: float = 0.2,
    oks_threshold: float = 0.9,
) -> list[dict]:
  """HRNet's post-processing of top-down results before COCO evaluation.

  Per person: score = box_score * mean of the keypoint scores above `in_vis_threshold`
  (0 if none is). Per image: `oks_nms` at `oks_threshold` with these scores.
  HRNet's defaults (TEST.IN_VIS_THRE, TEST.OKS_THRE) are the defaults here.

  Args:
    image_ids: [N] COCO image id of each detection.
    keypoints: [N, K, 3] (x, y, keypoint score) in image pixels, e.g. `heatmap.decode`
      locations with heatmap maxima as scores.
    box_scores: [N] person detector scores (1 for ground-truth boxes).
    areas: [N] pixels^2 used by the NMS; HRNet uses the padded crop area
      scale_wh[0] * scale_wh[1], not the box or segment area.
    oks_sigmas: [K], e.g. `keypoints.COCO.oks_sigmas`.

  Returns:
    One dict per kept detection, images in first-appearance order, detections by
    descending score: {"image_id": int, "category_id": 1, "keypoints": [K, 3] float64,
    "score": float, "index": int (row in the inputs)}. Feed it to `evaluate_keypoints`.
  """
  image_ids = np.asarray(image_ids)
  keypoints = np.asarray(keypoints, np.float64)
  areas = np.asarray(areas, np.float64)
  keypoint_scores = keypoints[..., 2]
  confident = keypoint_scores > in_vis_threshold
  num_confident = confident.sum(axis=-1)
  confident_sum = np.where(confident, keypoint_scores, 0).sum(axis=-1)
  mean_confident = confident_sum / np.maximum(num_confident, 1)
  scores = np.asarray(box_scores, np.float64) * mean_confident

  results = []
  _, first_index = np.unique(image_ids, return_index=True)
  for image_id in image_ids[np.sort(first_index)]:
    rows = np.flatnonzero(image_ids == image_id)
    kept = oks_nms(keypoints[rows], scores[rows], areas[rows], oks_sigmas, oks_threshold)
    for row in rows[kept]:
      results.append({"image_id": int(image_id), "category_id": PERSON_CATEGORY_ID,
                      "keypoints": keypoints[row], "score": float(scores[row]),
                      "index": int(row)})
  return results


# What pycocotools' keypoint COCOeval reads from each ground-truth person.
COCO_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "iscrowd", "keypoints", "num_keypoints",
                          "bbox", "area")
_RESULT_FIELDS = ("image_id", "category_id", "keypoints", "score")


def quiet() -> contextlib.AbstractContextManager:
  """Swallows pycocotools' progress prints."""
  return contextlib.redirect_stdout(io.StringIO())


def _json_kind(value) -> str:
  kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
           type(None): "null"}
  return kinds.get(type(value), "a number")


def _read_json(path: Path, what: str):
  if not path.is_file():
    raise DatasetError(f"{path}: {what} not found")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DatasetError(
        f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def load_ground_truth(
    annotation_file: str | Path, annotation_fields: Sequence[str] = COCO_ANNOTATION_FIELDS
) -> COCO:
  """Reads a COCO-style keypoints ground truth into pycocotools' `COCO`, checking its schema.

  Raises DatasetError naming the file and entry for a missing top-level key or annotation
  field, and for annotation id 0: COCOeval stores matches by annotation id with 0 meaning
  "unmatched", so a person with id 0 would silently count as missed.
  """
  path = Path(annotation_file)
  data = _read_json(path, "annotation file")
  if not isinstance(data, dict):
    raise DatasetError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
  for key in ("images", "annotations", "categories"):
    if key not in data:
      raise DatasetError(f"{path}: missing top-level field {key!r}")
  for i, annotation in enumerate(data["annotations"]):
    where = f"{path}: annotations[{i}] (id {annotation.get('id')!r})"
    missing = [f for f in annotation_fields if f not in annotation]
    if missing:
      raise DatasetError(f"{where}: missing field(s) {missing}")
    if annotation["id"] == 0:
      raise DatasetError(
          f"{where}: annotation id 0 reads as 'unmatched' in COCOeval; ids must be nonzero")
  ground_truth = COCO()
  ground_truth.dataset = data
  with quiet():
    ground_truth.createIndex()
  return ground_truth


def num_keypoints_by_category(ground_truth: COCO) -> dict[int, int]:
  """K per category: its "keypoints" names, else the length of its first annotation."""
  counts = {}
  for category_id, category in ground_truth.cats.items():
    if category.get("keypoints"):
      counts[category_id] = len(category["keypoints"])
    elif ground_truth.catToImgs.get(category_id):
      annotation_ids = ground_truth.getAnnIds(catIds=[category_id])
      counts[category_id] = len(ground_truth.anns[annotation_ids[0]]["keypoints"]) // 3
  return counts


def _check_numbers(entries: list[dict], field: str, where) -> None:
  """Raises on the first entry whose `field` holds a non-number, NaN or inf.

  One numpy pass for the common all-good file; the per-value loop runs only to name the
  culprit.
  """
  values = None
  with contextlib.suppress(ValueError, OverflowError):  # e.g. ragged: categories with other K
    values = np.array([entry[field] for entry in entries])
  if values is not None and values.dtype.kind in "iuf" and np.isfinite(values).all():
    return
  for i, entry in enumerate(entries):
    value = entry[field]
    for j, v in enumerate(value if isinstance(value, list) else [value]):
      if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        name = f"{field}[{j}] (keypoint {j // 3} {('x', 'y', 'score')[j % 3]})" if isinstance(
            value, list) else field
        raise DatasetError(f"{where(i, entry)}: {name} is {v!r}, not a finite number")


def load_results(
    results_json: str | Path, ground_truth: COCO, ground_truth_file: str | Path = "the ground truth"
) -> list[dict]:
  """Reads and checks a COCO keypoint results json against its ground truth.

  The file is a list of {"image_id", "category_id", "keypoints": [x1, y1, s1, ...] (3K
  numbers), "score"}. Each entry's image id and category must be in the ground truth,
  its keypoints must number 3K for that category, and every number must be finite;
  otherwise DatasetError names the file and the entry (index and image id). Other fields
  (e.g. "bbox") are dropped, so every file is scored the keypoint way: pycocotools'
  `loadRes` would otherwise take a detection's area from a "bbox" when the first entry
  has one.

  Returns:
    [{"image_id", "category_id", "keypoints", "score"}] in file order (possibly empty).
  """
  path = Path(results_json)
  entries = _read_json(path, "results file")
  if not isinstance(entries, list):
    raise DatasetError(f"{path}: expected a JSON list of results, got {_json_kind(entries)}")

  def where(i: int, entry) -> str:
    image_id = entry.get("image_id", "missing") if isinstance(entry, dict) else "missing"
    return f"{path}: entry {i} (image_id {image_id!r})"

  image_ids = set(ground_truth.imgs)
  keypoint_counts = num_keypoints_by_category(ground_truth)
  results = []
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict):
      raise DatasetError(f"{where(i, entry)}: expected an object, got {_json_kind(entry)}")
    missing = [f for f in _RESULT_FIELDS if f not in entry]
    if missing:
      raise DatasetError(f"{where(i, entry)}: missing field(s) {missing}")
    image_id, category_id, keypoints = entry["image_id"], entry["category_id"], entry["keypoints"]
    if isinstance(image_id, (list, dict)) or image_id not in image_ids:
      raise DatasetError(f"{where(i, entry)}: image_id is not an image of {ground_truth_file}")
    if isinstance(category_id, (list, dict)) or category_id not in keypoint_counts:
      raise DatasetError(f"{where(i, entry)}: category_id {category_id!r} is not a keypoint "
                         f"category of {ground_truth_file} (valid: {sorted(keypoint_counts)})")
    expected = 3 * keypoint_counts[category_id]
    if not isinstance(keypoints, list) or len(keypoints) != expected:
      found = f"{len(keypoints)} values" if isinstance(keypoints, list) else repr(keypoints)
      raise DatasetError(f"{where(i, entry)}: 'keypoints' has {found}, expected {expected} "
                         f"({expected // 3} keypoints x (x, y, score))")
    results.append({field: entry[field] for field in _RESULT_FIELDS})
  _check_numbers(results, "score", where)
  _check_numbers(results, "keypoints", where)
  return results


def detections_from(ground_truth: COCO, results: list[dict]) -> COCO:
  """pycocotools' `loadRes` of checked results; no results give an empty detection set.

  `loadRes` fails on an empty list (it inspects the first entry), so the empty case is
  built directly: COCOeval then scores every ground-truth person as missed (AP 0 where
  there are persons, -1 where an area range has none, as for any other results).
  """
  if results:
    with quiet():
      return ground_truth.loadRes(results)
  detections = COCO()
  detections.dataset = {"images": list(ground_truth.dataset["images"]),
                        "categories": list(ground_truth.dataset["categories"]),
                        "annotations": []}
  with quiet():
    detections.createIndex()
  return detections


def run_cocoeval(evaluator: COCOeval) -> str:
  """evaluate, accumulate, summarize; returns what pycocotools printed."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return printed.getvalue()


def evaluate_results_file(
    gt_annotation_file: str | Path, results_json: str | Path
) -> dict[str, float]:
  """Scores a COCO keypoint results json with pycocotools' COCOeval (iouType "keypoints").

  Args:
    gt_annotation_file: COCO person-keypoints json (e.g. person_keypoints_val2017.json).
    results_json: COCO results json (jaxpose's own or a user's), checked by `load_results`.

  Returns:
    {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"} from
    `COCOeval.stats`; pycocotools reports -1 for an area range without ground truth.
    An empty results list scores 0 (see `detections_from`). The printed summary is
    logged at INFO level.
  """
  ground_truth = load_ground_truth(gt_annotation_file)
  results = load_results(results_json, ground_truth, gt_annotation_file)
  evaluator = COCOeval(ground_truth, detections_from(ground_truth, results), "keypoints")
  printed = run_cocoeval(evaluator)
  logging.info("COCO keypoint evaluation of %s:\n%s", results_json, printed)
  return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}


def write_results(results: list[dict], results_json_path: str | Path) -> None:
  """Writes results as a COCO keypoint results json (keypoints flattened to 3K floats)."""
  coco_results = [{"image_id": int(r["image_id"]),
                   "category_id": int(r.get("category_id", PERSON_CATEGORY_ID)),
                   "keypoints": [float(v) for v in np.asarray(r["keypoints"]).reshape(-1)],
                   "score": float(r["score"])} for r in results]
  with open(results_json_path, "w") as f:
    json.dump(coco_results, f)


def evaluate_keypoints(
    gt_annotation_file: str | Path, results: list[dict], results_json_path: str | Path
) -> dict[str, float]:
  """Writes results to `results_json_path` and scores that file (`evaluate_results_file`).

  Args:
    gt_annotation_file: COCO person-keypoints json.
    results: dicts with "image_id", "keypoints" ([K, 3] or flat 3K: x, y, score) and
      "score"; "category_id" defaults to 1. Output of `rescore_and_nms` fits.
    results_json_path: where the COCO results json is written.
  """
  write_results(results, results_json_path)
  return evaluate_results_file(gt_annotation_file, results_json_path)
