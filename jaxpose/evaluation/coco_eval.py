"""COCO keypoint evaluation of top-down predictions: rescoring, OKS-NMS, COCOeval.

Follows HRNet (leoxiaobin/deep-high-resolution-net.pytorch) `lib/dataset/coco.py:
COCODataset.evaluate` and `_do_python_keypoint_eval`, and `lib/nms/nms.py: oks_iou,
oks_nms`, re-implemented in vectorised numpy.

Symbols: N person detections, K keypoints. Keypoints are (x, y, score) in original-image
pixels.
"""

import contextlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

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
  mean_confident = np.where(confident, keypoint_scores, 0).sum(axis=-1) / np.maximum(num_confident, 1)
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


def _to_coco_json(result: dict) -> dict:
  return {"image_id": int(result["image_id"]),
          "category_id": int(result.get("category_id", PERSON_CATEGORY_ID)),
          "keypoints": [float(v) for v in np.asarray(result["keypoints"]).reshape(-1)],
          "score": float(result["score"])}


def evaluate_keypoints(
    gt_annotation_file: str | Path, results: list[dict], results_json_path: str | Path
) -> dict[str, float]:
  """Writes COCO keypoint results and scores them with pycocotools' COCOeval.

  Args:
    gt_annotation_file: COCO person-keypoints json (e.g. person_keypoints_val2017.json).
    results: dicts with "image_id", "keypoints" ([K, 3] or flat 3K: x, y, score) and
      "score"; "category_id" defaults to 1. Output of `rescore_and_nms` fits.
    results_json_path: where the COCO results json is written.

  Returns:
    {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"} from
    `COCOeval.stats`; pycocotools reports -1 for an area range without ground truth.
    An empty `results` gives all zeros (pycocotools cannot load an empty result list).
    The printed summary is captured and logged at INFO level.
  """
  coco_results = [_to_coco_json(r) for r in results]
  with open(results_json_path, "w") as f:
    json.dump(coco_results, f)
  if not coco_results:
    logging.info("no keypoint results: all COCO keypoint metrics are 0")
    return {name: 0.0 for name in STAT_NAMES}

  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    ground_truth = COCO(str(gt_annotation_file))
    detections = ground_truth.loadRes(str(results_json_path))
    evaluator = COCOeval(ground_truth, detections, "keypoints")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  logging.info("COCO keypoint evaluation of %s:\n%s", results_json_path, printed.getvalue())
  return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}
