"""Tests for jaxpose.evaluation.coco_eval: COCOeval wrapper, rescoring and OKS-NMS."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.evaluation import coco_eval

FIXTURE = Path(__file__).parent / "fixtures" / "hrnet_codec.npz"
SIGMAS = keypoints_lib.COCO.oks_sigmas
K = keypoints_lib.COCO.num_keypoints


def _person_keypoints(rng, x0, y0):
  """[K, 3] (x, y, v=2) spread over a 100x200 box at (x0, y0)."""
  xy = rng.uniform((x0, y0), (x0 + 100, y0 + 200), (K, 2))
  return np.concatenate([xy, np.full((K, 1), 2.0)], axis=1)


@pytest.fixture
def ground_truth(tmp_path):
  """A COCO person-keypoints file with 2 images and 3 persons (large: area 20000)."""
  rng = np.random.default_rng(0)
  people = [(1, _person_keypoints(rng, 50, 40)), (1, _person_keypoints(rng, 300, 60)),
            (2, _person_keypoints(rng, 120, 100))]
  annotations = []
  for annotation_id, (image_id, keypoints) in enumerate(people, start=1):
    x0, y0 = keypoints[:, :2].min(0)
    x1, y1 = keypoints[:, :2].max(0)
    annotations.append({
        "id": annotation_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": 20000.0,
        "keypoints": keypoints.reshape(-1).tolist(), "num_keypoints": K})
  coco = {
      "images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480},
                 {"id": 2, "file_name": "b.jpg", "width": 640, "height": 480}],
      "annotations": annotations,
      "categories": [{"id": 1, "name": "person", "supercategory": "person",
                      "keypoints": list(keypoints_lib.COCO.names),
                      "skeleton": [[a + 1, b + 1] for a, b in keypoints_lib.COCO.skeleton]}],
  }
  path = tmp_path / "person_keypoints_tiny.json"
  path.write_text(json.dumps(coco))
  return path, people


def _results_from(people, scores=None):
  return [{"image_id": image_id, "keypoints": keypoints.copy(), "score": 1.0 if scores is None else s}
          for (image_id, keypoints), s in zip(people, scores or [None] * len(people))]


def test_perfect_results_score_one(ground_truth, tmp_path):
  path, people = ground_truth
  stats = coco_eval.evaluate_keypoints(path, _results_from(people), tmp_path / "results.json")
  assert set(stats) == set(coco_eval.STAT_NAMES)
  for name in ("AP", "AP50", "AP75", "APl", "AR", "AR50", "AR75", "ARl"):
    assert stats[name] == pytest.approx(1.0), name
  assert stats["APm"] == -1.0  # pycocotools' "no ground truth in this area range"
  written = json.loads((tmp_path / "results.json").read_text())
  assert len(written) == 3 and len(written[0]["keypoints"]) == 3 * K
  assert written[0]["category_id"] == 1


def test_displaced_person_matches_direct_pycocotools(ground_truth, tmp_path):
  path, people = ground_truth
  results = _results_from(people, scores=[0.9, 0.8, 0.7])
  results[1]["keypoints"][:, :2] += 150.0  # far from every ground-truth person
  stats = coco_eval.evaluate_keypoints(path, results, tmp_path / "results.json")
  assert stats["AP"] < 1.0

  # Independent path: our own json, straight into pycocotools.
  direct_json = tmp_path / "direct.json"
  direct_json.write_text(json.dumps([
      {"image_id": r["image_id"], "category_id": 1, "score": r["score"],
       "keypoints": [float(v) for v in r["keypoints"].reshape(-1)]} for r in results]))
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(str(path))
    evaluator = COCOeval(gt, gt.loadRes(str(direct_json)), "keypoints")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  np.testing.assert_allclose([stats[n] for n in coco_eval.STAT_NAMES], evaluator.stats)


def test_empty_results_give_zeros(ground_truth, tmp_path):
  path, _ = ground_truth
  stats = coco_eval.evaluate_keypoints(path, [], tmp_path / "results.json")
  assert stats == {name: 0.0 for name in coco_eval.STAT_NAMES}
  assert json.loads((tmp_path / "results.json").read_text()) == []


def test_oks_nms_removes_duplicate_by_hand():
  rng = np.random.default_rng(5)
  person = _person_keypoints(rng, 0, 0)
  other = _person_keypoints(rng, 400, 0)
  # 0 and 1 are the same person (OKS 1 > 0.9); 2 is far away (OKS ~ 0).
  keypoints = np.stack([person, person + [0.5, -0.5, 0], other])
  kept = coco_eval.oks_nms(keypoints, np.array([0.8, 0.9, 0.5]), np.full(3, 20000.0), SIGMAS, 0.9)
  np.testing.assert_array_equal(kept, [1, 2])  # the higher-scored duplicate survives


def test_oks_matrix_hand_value():
  # One keypoint off by d = 2 px, others equal; area 100, sigma_k = 0.1:
  # e = d^2 / (2 sigma)^2 / area / 2 = 4 / 0.04 / 100 / 2 = 0.5.
  keypoints = np.zeros((2, 3, 3))
  keypoints[1, 0, 0] = 2.0
  oks = coco_eval.oks_matrix(keypoints, np.array([100.0, 100.0]), np.array([0.1, 0.1, 0.1]))
  np.testing.assert_allclose(oks, [[1, (np.exp(-0.5) + 2) / 3], [(np.exp(-0.5) + 2) / 3, 1]])


def test_rescore_by_hand():
  # Keypoint scores above 0.2 are 0.4 and 0.8 -> mean 0.6; times box score 0.5 -> 0.3.
  keypoints = np.zeros((2, 3, 3))
  keypoints[0, :, 2] = [0.1, 0.4, 0.8]
  keypoints[1, :, 2] = [0.1, 0.2, 0.05]  # none above 0.2 (strict) -> score 0
  keypoints[1, :, 0] = 500.0  # far from person 0, so NMS keeps both
  results = coco_eval.rescore_and_nms([7, 7], keypoints, [0.5, 1.0], [1e4, 1e4], np.full(3, 0.1))
  assert [(r["index"], r["image_id"]) for r in results] == [(0, 7), (1, 7)]
  assert results[0]["score"] == pytest.approx(0.3)
  assert results[1]["score"] == 0.0


def test_rescore_and_nms_matches_hrnet_evaluate():
  # Kept detections and scores from HRNet's COCODataset.evaluate (rescoring + oks_nms).
  fixture = np.load(FIXTURE)
  results = coco_eval.rescore_and_nms(
      fixture["nms_image_ids"], fixture["nms_keypoints"], fixture["nms_box_scores"],
      fixture["nms_areas"], SIGMAS)
  assert [r["index"] for r in results] == fixture["nms_kept_index"].tolist()
  np.testing.assert_allclose([r["score"] for r in results], fixture["nms_kept_score"], rtol=1e-6)
