"""CrowdPose keypoint evaluation: AP/AP50/AP75/AR and AP easy/medium/hard by crowd index.

Reproduces the official CrowdPose evaluation (Jeff-sjtu/CrowdPose @86fe5e1,
`crowdpose-api/PythonAPI/crowdposetools/cocoeval.py`), which is pycocotools' COCOeval with
these changes only:
- OKS sigmas for CrowdPose's 14 keypoints (`CROWDPOSE_OKS_SIGMAS`);
- a person's area, both the OKS scale s^2 and the area-range test, is 0.53 x its box's
  w x h, never the annotation's "area" (CrowdPose annotations have none);
- AP easy / medium / hard: AP over IoU 0.50:0.95 on the images whose "crowdIndex" is
  < 0.2, in [0.2, 0.8), >= 0.8, each bucket evaluated on its own.
Everything else (ignore rules: iscrowd and num_keypoints == 0 persons are ignored, an
"ignore" field is overwritten by iscrowd; maxDets 20; matching; accumulation) is
pycocotools' code, run unchanged by the subclass below. The equality with the official code
is tested on fixtures made by running it (`tests/test_crowdpose_eval.py`).
"""

import logging
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError
from jaxpose.evaluation import coco_eval

STAT_NAMES = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard")
# Where each of STAT_NAMES' first six sits in pycocotools' keypoint `stats`.
_COCOEVAL_STAT_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "AR": 5, "AR50": 6, "AR75": 7}

# crowdpose-api's sigmas, from the CrowdPose spec (written there as the official `[...] / 10`).
CROWDPOSE_OKS_SIGMAS = keypoints_lib.CROWDPOSE.oks_sigmas
# crowdpose-api scales every box area by this in `computeOks` and `evaluateImg`.
BOX_AREA_SCALE = 0.53
# `summarize` calls `get_type_result(first=0.2, second=0.8)`: easy < 0.2 <= medium < 0.8 <= hard.
CROWD_INDEX_BOUNDS = (0.2, 0.8)
# What pycocotools' keypoint COCOeval reads from each ground-truth person, less "area".
CROWDPOSE_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "iscrowd", "keypoints",
                               "num_keypoints", "bbox")


class CrowdPoseCOCOeval(COCOeval):
  """pycocotools' keypoint COCOeval with CrowdPose's sigmas and box-based person area.

  Overrides only `_prepare`: after pycocotools has gathered the persons, each one's
  "area" is set to 0.53 * w * h of its box, which pycocotools' `computeOks` (OKS scale)
  and `evaluateImg` (area ranges) then read exactly where crowdpose-api computes the same
  product. The ground truth is modified in place: use a `COCO` made for this evaluation.
  """

  def __init__(self, ground_truth: COCO, detections: COCO):
    super().__init__(ground_truth, detections, "keypoints")
    self.params.kpt_oks_sigmas = CROWDPOSE_OKS_SIGMAS

  def _prepare(self):
    super()._prepare()
    for persons in self._gts.values():
      for person in persons:
        width, height = person["bbox"][2], person["bbox"][3]
        person["area"] = width * height * BOX_AREA_SCALE


def crowd_index_buckets(ground_truth: COCO) -> dict[str, list[int]]:
  """Image ids per crowd-index bucket ("easy", "medium", "hard"), as crowdpose-api `split`."""
  low, high = CROWD_INDEX_BOUNDS
  buckets = {"easy": [], "medium": [], "hard": []}
  for image in ground_truth.dataset["images"]:
    crowd_index = image["crowdIndex"]
    name = "easy" if crowd_index < low else "medium" if crowd_index < high else "hard"
    buckets[name].append(image["id"])
  return buckets


def _bucket_ap(evaluator: CrowdPoseCOCOeval, image_ids: list[int]) -> float:
  """crowdpose-api `get_type_result` for one bucket, without its round(., 4).

  The mean runs over the whole [T, R] precision block at area "all", maxDets 20, as
  there: it is -1 when the bucket has no unignored person (or no image).
  """
  evaluator.params.imgIds = image_ids
  evaluator.evaluate()
  evaluator.accumulate()
  return float(np.mean(evaluator.eval["precision"][:, :, :, 0, :]))


def load_ground_truth(annotation_file: str | Path) -> COCO:
  """Reads a CrowdPose keypoints json (crowdpose_val.json style), checking its schema.

  Besides `coco_eval.load_ground_truth`'s checks: every image needs a numeric
  "crowdIndex" and the person category 14 keypoints (the sigmas are CrowdPose's).
  """
  ground_truth = coco_eval.load_ground_truth(annotation_file, CROWDPOSE_ANNOTATION_FIELDS)
  for i, image in enumerate(ground_truth.dataset["images"]):
    crowd_index = image.get("crowdIndex")
    if isinstance(crowd_index, bool) or not isinstance(crowd_index, (int, float)):
      raise DatasetError(f"{annotation_file}: images[{i}] (id {image.get('id')!r}): "
                         f"'crowdIndex' is {crowd_index!r}; CrowdPose's AP easy/medium/hard "
                         "need a number per image")
  expected = len(CROWDPOSE_OKS_SIGMAS)
  for category_id, count in coco_eval.num_keypoints_by_category(ground_truth).items():
    if count != expected:
      raise DatasetError(f"{annotation_file}: category {category_id} has {count} keypoints, "
                         f"CrowdPose has {expected}")
  return ground_truth


def evaluate_results_file(
    gt_annotation_file: str | Path, results_json: str | Path
) -> dict[str, float]:
  """Scores a keypoint results json as the official CrowdPose evaluation does.

  Args:
    gt_annotation_file: CrowdPose ground truth (COCO-style json, 14 keypoints, a
      "crowdIndex" per image), e.g. crowdpose_test.json.
    results_json: COCO keypoint results json with 14 keypoints per entry, checked by
      `coco_eval.load_results` (bad entries raise DatasetError naming them).

  Returns:
    {"AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard"}; -1
    where there is no unignored person (e.g. an empty crowd-index bucket). Easy/medium/
    hard are not rounded (crowdpose-api prints and returns them rounded to 4 digits). An
    empty results list scores 0 (crowdpose-api fails on it).
  """
  ground_truth = load_ground_truth(gt_annotation_file)
  results = coco_eval.load_results(results_json, ground_truth, gt_annotation_file)
  evaluator = CrowdPoseCOCOeval(ground_truth, coco_eval.detections_from(ground_truth, results))
  printed = coco_eval.run_cocoeval(evaluator)
  stats = {name: float(evaluator.stats[i]) for name, i in _COCOEVAL_STAT_INDEX.items()}
  for name, image_ids in crowd_index_buckets(ground_truth).items():
    with coco_eval.quiet():
      stats[f"AP_{name}"] = _bucket_ap(evaluator, image_ids)
  logging.info("CrowdPose keypoint evaluation of %s:\n%s(pycocotools' APm/APl/ARm/ARl lines do "
               "not apply)\nAP easy / medium / hard: %.4f / %.4f / %.4f", results_json, printed,
               stats["AP_easy"], stats["AP_medium"], stats["AP_hard"])
  return stats


def evaluate_keypoints(
    gt_annotation_file: str | Path, results: list[dict], results_json_path: str | Path
) -> dict[str, float]:
  """Writes results (as `coco_eval.evaluate_keypoints` takes them) and scores the file."""
  coco_eval.write_results(results, results_json_path)
  return evaluate_results_file(gt_annotation_file, results_json_path)
