"""Tests for jaxpose.evaluation.crowdpose_eval against the official CrowdPose evaluation.

`fixtures/crowdpose_eval_{gt,results}.json` are a small CrowdPose-format ground truth
(crowdpose_val.json style: 14 keypoints, a crowdIndex per image, no "area") and results
with the evaluation's traps: crowd regions, persons whose keypoints are all v=1
(num_keypoints 0, so ignored), persons with no keypoints, an "ignore" flag that the code
overwrites, duplicates, an image with persons and no detections, images without persons,
22 detections in one image (maxDets 20), detections whose keypoint scores are all 0, and
crowd indices exactly on the bucket bounds 0.2 and 0.8. `crowdpose_eval_expected.json`
holds what the official crowdpose-api (Jeff-sjtu/CrowdPose @86fe5e1, its coco.py,
cocoeval.py and _mask, built locally) computes on them; the script that made it imports the
official code, so it is kept outside the repo (recipe in BUILD_NOTES.md).
"""

import json
from pathlib import Path

import chex
import numpy as np
import pytest

from jaxpose.errors import DatasetError
from jaxpose.evaluation import crowdpose_eval

FIXTURES = Path(__file__).parent / "fixtures"
GT = FIXTURES / "crowdpose_eval_gt.json"
RESULTS = FIXTURES / "crowdpose_eval_results.json"
EXPECTED = json.loads((FIXTURES / "crowdpose_eval_expected.json").read_text())
K = 14


def _assert_matches_official(stats: dict, expected: dict) -> None:
  names = crowdpose_eval.STAT_NAMES
  assert set(stats) == set(names)
  chex.assert_trees_all_close(np.array([stats[n] for n in names]),
                              np.array([expected[n] for n in names]), rtol=1e-6, atol=0)
  for bucket in ("AP_easy", "AP_medium", "AP_hard"):  # what crowdpose-api prints
    assert round(stats[bucket], 4) == expected[f"{bucket}_printed"], bucket


def test_matches_official_crowdpose_api():
  stats = crowdpose_eval.evaluate_results_file(GT, RESULTS)
  _assert_matches_official(stats, EXPECTED["full"])
  assert min(stats.values()) > 0.2 and max(stats.values()) < 0.9  # no degenerate numbers


def test_empty_bucket_matches_official(tmp_path):
  # The make_fixture rule: drop every hard image (crowdIndex >= 0.8) and its persons and results.
  gt = json.loads(GT.read_text())
  keep = {image["id"] for image in gt["images"] if image["crowdIndex"] < 0.8}
  gt["images"] = [image for image in gt["images"] if image["id"] in keep]
  gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
  results = [r for r in json.loads(RESULTS.read_text()) if r["image_id"] in keep]
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "results.json").write_text(json.dumps(results))
  stats = crowdpose_eval.evaluate_results_file(tmp_path / "gt.json", tmp_path / "results.json")
  _assert_matches_official(stats, EXPECTED["without_hard_images"])
  assert stats["AP_hard"] == -1.0


def _one_person_files(tmp_path, shift_x: float, crowd_index: float = 0.5):
  box = [100.0, 50.0, 80.0, 200.0]
  xy = np.random.default_rng(3).uniform((100, 50), (180, 250), (K, 2)).round(2)
  keypoints = np.concatenate([xy, np.full((K, 1), 2.0)], 1)
  gt = {"images": [{"id": 7, "file_name": "7.jpg", "width": 400, "height": 300,
                    "crowdIndex": crowd_index}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "iscrowd": 0, "bbox": box,
                         "num_keypoints": K, "keypoints": keypoints.reshape(-1).tolist()}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": [f"k{i}" for i in range(K)]}]}
  detected = keypoints + [shift_x, 0.0, -1.0]  # keypoint scores 1
  results = [{"image_id": 7, "category_id": 1, "score": 0.9,
              "keypoints": detected.reshape(-1).tolist()}]
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  (tmp_path / "results.json").write_text(json.dumps(results))
  return tmp_path / "gt.json", tmp_path / "results.json", box


def test_oks_scale_is_053_box_area_by_hand(tmp_path):
  # One person, one detection shifted 12 px: OKS = mean_k exp(-144 / (2 s (2 sigma_k)^2)) with
  # s = 0.53 w h (CrowdPose), not the box area w h (COCO's convention for box-only persons).
  # The detection matches at every threshold t <= OKS, so AP = (number of such t) / 10.
  shift = 12.0
  gt_path, results_path, (_, _, w, h) = _one_person_files(tmp_path, shift)
  sigmas = np.array([.079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089,
                     .079, .079])
  thresholds = np.linspace(0.5, 0.95, 10)

  def matched_thresholds(area):
    oks = np.mean(np.exp(-shift**2 / (2 * area * (2 * sigmas) ** 2)))
    return int(np.sum(thresholds <= oks))

  n = matched_thresholds(0.53 * w * h)
  assert (n, matched_thresholds(w * h)) == (5, 7)  # OKS 0.716 here, 0.837 with s = w h
  stats = crowdpose_eval.evaluate_results_file(gt_path, results_path)
  assert stats["AP"] == pytest.approx(n / 10, abs=1e-12)
  assert stats["AR"] == pytest.approx(n / 10, abs=1e-12)
  assert (stats["AP50"], stats["AP75"]) == (pytest.approx(1.0, abs=1e-12), 0.0)
  assert stats["AP_medium"] == pytest.approx(n / 10, abs=1e-12)  # crowdIndex 0.5
  assert stats["AP_easy"] == stats["AP_hard"] == -1.0  # buckets without images


@pytest.mark.parametrize("crowd_index, bucket", [(0.0, "easy"), (0.1999, "easy"), (0.2, "medium"),
                                                 (0.7999, "medium"), (0.8, "hard"), (2.5, "hard")])
def test_crowd_index_bounds(tmp_path, crowd_index, bucket):
  gt_path, results_path, _ = _one_person_files(tmp_path, 0.0, crowd_index)
  stats = crowdpose_eval.evaluate_results_file(gt_path, results_path)
  for name in ("easy", "medium", "hard"):  # 1 - 2e-16: precision is tp / (tp + fp + eps)
    assert stats[f"AP_{name}"] == pytest.approx(1.0 if name == bucket else -1.0, abs=1e-12), name


def test_perfect_results_score_one(tmp_path):
  gt = json.loads(GT.read_text())
  labelled = [a for a in gt["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
  results = [{"image_id": a["image_id"], "category_id": 1, "score": 1.0,
              "keypoints": a["keypoints"]} for a in labelled]
  (tmp_path / "results.json").write_text(json.dumps(results))
  stats = crowdpose_eval.evaluate_results_file(GT, tmp_path / "results.json")
  assert stats == {name: 1.0 for name in crowdpose_eval.STAT_NAMES}


def test_empty_results_score_zero(tmp_path):
  # crowdpose-api fails on an empty list; every bucket has persons, so all are 0.
  stats = crowdpose_eval.evaluate_keypoints(GT, [], tmp_path / "results.json")
  assert stats == {name: 0.0 for name in crowdpose_eval.STAT_NAMES}


def test_coco_keypoint_count_is_rejected(tmp_path):
  results = json.loads(RESULTS.read_text())
  results[5]["keypoints"] += [1.0, 2.0, 0.5] * 3  # 17 keypoints
  (tmp_path / "results.json").write_text(json.dumps(results))
  with pytest.raises(DatasetError) as error:
    crowdpose_eval.evaluate_results_file(GT, tmp_path / "results.json")
  assert str(error.value) == (
      f"{tmp_path / 'results.json'}: entry 5 (image_id {results[5]['image_id']}): 'keypoints' "
      "has 51 values, expected 42 (14 keypoints x (x, y, score))")


def test_missing_crowd_index_is_rejected(tmp_path):
  gt = json.loads(GT.read_text())
  del gt["images"][3]["crowdIndex"]
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  with pytest.raises(DatasetError, match=r"images\[3\] \(id 104\): 'crowdIndex' is None"):
    crowdpose_eval.evaluate_results_file(tmp_path / "gt.json", RESULTS)


def test_coco_ground_truth_is_rejected(tmp_path):
  gt = json.loads(GT.read_text())
  gt["categories"][0]["keypoints"] += ["nose", "left_eye", "right_eye"]
  (tmp_path / "gt.json").write_text(json.dumps(gt))
  with pytest.raises(DatasetError, match="category 1 has 17 keypoints, CrowdPose has 14"):
    crowdpose_eval.evaluate_results_file(tmp_path / "gt.json", RESULTS)
