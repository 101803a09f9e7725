"""Tests for jaxpose.evaluation.coco_eval: COCOeval on results files, their checks,
rescoring and OKS-NMS.

Golden AP/AR numbers come from pycocotools run directly on the same files (its own
COCO / loadRes / COCOeval calls, not jaxpose's) or from hand computations.
"""

import contextlib
import io
import json
import re
from pathlib import Path

import chex
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError
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
  return [{"image_id": image_id, "keypoints": keypoints.copy(),
           "score": 1.0 if scores is None else s}
          for (image_id, keypoints), s in zip(people, scores or [None] * len(people))]


def _pycocotools_stats(gt_path: Path, results_path: Path) -> np.ndarray:
  """The golden path: pycocotools run directly on the files, as its README shows."""
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(str(gt_path))
    evaluator = COCOeval(gt, gt.loadRes(str(results_path)), "keypoints")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return np.asarray(evaluator.stats)


def _as_array(stats: dict) -> np.ndarray:
  return np.array([stats[name] for name in coco_eval.STAT_NAMES])


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
  direct_json = tmp_path / "direct.json"  # written here, not by coco_eval
  direct_json.write_text(json.dumps([
      {"image_id": r["image_id"], "category_id": 1, "score": r["score"],
       "keypoints": [float(v) for v in r["keypoints"].reshape(-1)]} for r in results]))
  chex.assert_trees_all_close(_as_array(stats), _pycocotools_stats(path, direct_json), rtol=1e-6)


def test_image_without_detections_by_hand(ground_truth, tmp_path):
  # Image 2's only person gets no detection: 2 of 3 found, both ranked first, so precision
  # is 1 up to recall 2/3 and 0 after: AP = 67/101 (recall points 0, 0.01, ..., 0.66).
  path, people = ground_truth
  stats = coco_eval.evaluate_keypoints(path, _results_from(people[:2]), tmp_path / "results.json")
  assert stats["AP"] == pytest.approx(67 / 101, abs=1e-12)
  assert stats["AR"] == pytest.approx(2 / 3, abs=1e-12)


def test_empty_results_give_zero_ap(ground_truth, tmp_path):
  # pycocotools' loadRes fails on []; jaxpose scores it as "every person missed".
  path, _ = ground_truth
  stats = coco_eval.evaluate_keypoints(path, [], tmp_path / "results.json")
  assert json.loads((tmp_path / "results.json").read_text()) == []
  for name in ("AP", "AP50", "AP75", "APl", "AR", "AR50", "AR75", "ARl"):
    assert stats[name] == 0.0, name
  assert stats["APm"] == stats["ARm"] == -1.0  # no medium person, as for non-empty results


# ---------------------------------------------------------------- traps, against pycocotools


def _person(rng, x0, y0, w, h, visible=None):
  keypoints = np.zeros((K, 3))
  keypoints[:, :2] = np.round(rng.uniform((x0, y0), (x0 + w, y0 + h), (K, 2)), 2)
  keypoints[:, 2] = 2 if visible is None else visible
  keypoints[keypoints[:, 2] == 0] = 0  # COCO stores unlabelled keypoints as (0, 0, 0)
  return keypoints


def _write_trap_files(tmp_path: Path, rng) -> tuple[Path, Path, list[dict]]:
  """COCO ground truth and results holding each trap of the keypoint evaluation.

  Persons: large and medium ones (the "area" field, not the box, picks the range), a
  crowd region (iscrowd 1, no keypoints), a person with no labelled keypoints, one with
  some keypoints unlabelled, one with an "ignore" flag (pycocotools overwrites it with
  iscrowd), an image whose persons get no detection, images without persons.
  """
  some_unlabelled = np.where(np.arange(K) % 3 == 0, 0, 2)
  people = [  # (image id, keypoints, box, area, extra fields)
      (1, _person(rng, 40, 40, 100, 200), [40, 40, 100, 200], 15000.0, {}),
      (1, _person(rng, 300, 60, 50, 100), [300, 60, 50, 100], 4000.0, {}),  # medium
      (1, np.zeros((K, 3)), [200, 200, 300, 250], 40000.0, {"iscrowd": 1}),
      (2, _person(rng, 50, 20, 120, 230, some_unlabelled), [50, 20, 120, 230], 20000.0, {}),
      (2, np.zeros((K, 3)), [350, 100, 80, 160], 9000.0, {}),  # no labelled keypoints
      (3, _person(rng, 100, 50, 110, 220), [100, 50, 110, 220], 18000.0, {"ignore": 1}),
      (4, _person(rng, 30, 30, 90, 200), [30, 30, 90, 200], 12000.0, {}),  # no detections
      (4, _person(rng, 300, 40, 40, 90), [300, 40, 40, 90], 2500.0, {}),
  ]
  annotations = [
      {"id": i + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": box,
       "area": area, "num_keypoints": int(np.count_nonzero(keypoints[:, 2] > 0)),
       "keypoints": keypoints.reshape(-1).tolist(), **extra}
      for i, (image_id, keypoints, box, area, extra) in enumerate(people)]
  gt = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480}
                   for i in range(1, 7)],  # 5: detections only; 6: nothing
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(keypoints_lib.COCO.names)}]}

  def detection(image_id, xy, noise, score):
    keypoints = np.concatenate([xy + rng.normal(0, noise, (K, 2)), rng.uniform(0, 1, (K, 1))], 1)
    return {"image_id": image_id, "category_id": 1, "score": score,
            "keypoints": keypoints.reshape(-1).tolist()}

  xy = [p[1][:, :2] for p in people]
  results = [
      detection(1, xy[0], 3.0, 0.8), detection(1, xy[0], 1.0, 0.9),  # duplicate, scored higher
      detection(1, xy[0], 6.0, 0.3), detection(1, xy[1], 2.0, 0.7),  # low duplicate; medium
      detection(1, rng.uniform((220, 220), (480, 430), (K, 2)), 0.0, 0.95),  # on the crowd
      detection(1, rng.uniform((220, 220), (480, 430), (K, 2)), 0.0, 0.5),
      detection(2, xy[3], 4.0, 0.6), detection(2, xy[3], 8.0, 0.65),
      detection(2, rng.uniform((300, 50), (480, 300), (K, 2)), 0.0, 0.85),  # near the unlabelled
      detection(3, xy[5], 5.0, 0.75),
      detection(5, rng.uniform((0, 0), (20, 20), (K, 2)), 0.0, 0.99),  # small false positive
      detection(5, rng.uniform((100, 100), (400, 400), (K, 2)), 0.0, 0.4),
  ]
  gt_path, results_path = tmp_path / "person_keypoints_traps.json", tmp_path / "results_traps.json"
  gt_path.write_text(json.dumps(gt))
  results_path.write_text(json.dumps(results))
  return gt_path, results_path, results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_traps_match_direct_pycocotools(tmp_path, seed):
  gt_path, results_path, _ = _write_trap_files(tmp_path, np.random.default_rng(seed))
  stats = coco_eval.evaluate_results_file(gt_path, results_path)
  expected = _pycocotools_stats(gt_path, results_path)
  chex.assert_trees_all_close(_as_array(stats), expected, rtol=1e-6)
  assert 0 < stats["AP"] < 1 and stats["APm"] >= 0 and stats["APl"] >= 0  # nothing degenerate


def test_traps_crowd_and_unlabelled_persons_absorb_detections(tmp_path):
  # Dropping the detections on the crowd region and near the unlabelled person changes
  # nothing: both persons are ignored, and so are the detections matched to them.
  gt_path, results_path, results = _write_trap_files(tmp_path, np.random.default_rng(0))
  kept = [r for i, r in enumerate(results) if i not in (4, 5, 8)]
  fewer = tmp_path / "fewer.json"
  fewer.write_text(json.dumps(kept))
  chex.assert_trees_all_close(_as_array(coco_eval.evaluate_results_file(gt_path, results_path)),
                              _as_array(coco_eval.evaluate_results_file(gt_path, fewer)))


def test_traps_empty_results_score_zero(tmp_path):
  gt_path, _, _ = _write_trap_files(tmp_path, np.random.default_rng(0))
  empty = tmp_path / "empty.json"
  empty.write_text("[]")
  stats = coco_eval.evaluate_results_file(gt_path, empty)
  assert stats == {name: 0.0 for name in coco_eval.STAT_NAMES}  # medium and large persons exist


# ---------------------------------------------------------------- bad results files


def _bad_entry(tmp_path, edit):
  gt_path, _, results = _write_trap_files(tmp_path, np.random.default_rng(0))
  entry = results[3]  # image 1
  edit(entry)
  path = tmp_path / "bad_results.json"
  path.write_text(json.dumps(results))  # json writes NaN / Infinity as Python reads them
  return gt_path, path


def _set_keypoint(entry, index, value):
  entry["keypoints"][index] = value


@pytest.mark.parametrize("edit, image_id, reason", [
    (lambda e: e.update(image_id=77), 77, "image_id is not an image of"),
    (lambda e: _set_keypoint(e, 7, float("nan")), 1, "keypoints[7] (keypoint 2 y) is nan"),
    (lambda e: _set_keypoint(e, 0, float("inf")), 1, "keypoints[0] (keypoint 0 x) is inf"),
    (lambda e: _set_keypoint(e, 4, "12.5"), 1, "keypoints[4] (keypoint 1 y) is '12.5'"),
    (lambda e: e.update(score=float("nan")), 1, "score is nan"),
    (lambda e: e.update(score=None), 1, "score is None"),
    (lambda e: e.update(keypoints=e["keypoints"][:-3]), 1, "has 48 values, expected 51"),
    (lambda e: e.update(keypoints=e["keypoints"] + [0, 0, 0] * 2), 1, "has 57 values"),
    (lambda e: e.pop("score"), 1, "missing field(s) ['score']"),
    (lambda e: e.pop("keypoints"), 1, "missing field(s) ['keypoints']"),
    (lambda e: e.pop("image_id"), "missing", "missing field(s) ['image_id']"),
    (lambda e: e.update(category_id=2), 1, "category_id 2 is not a keypoint category"),
])
def test_bad_results_entry_is_named(tmp_path, edit, image_id, reason):
  gt_path, path = _bad_entry(tmp_path, edit)
  with pytest.raises(DatasetError) as error:
    coco_eval.evaluate_results_file(gt_path, path)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"{path}: entry 3 (image_id {image_id!r}): "), message
  assert reason in message, message


@pytest.mark.parametrize("content, reason", [
    ('{"image_id": 1}', "expected a JSON list of results, got an object"),
    ("[1, 2]", "entry 0 (image_id 'missing'): expected an object, got a number"),
    ("[{]", "not valid JSON"),
])
def test_bad_results_file_is_named(tmp_path, content, reason):
  gt_path, _, _ = _write_trap_files(tmp_path, np.random.default_rng(0))
  path = tmp_path / "bad.json"
  path.write_text(content)
  with pytest.raises(DatasetError, match=re.escape(reason)):
    coco_eval.evaluate_results_file(gt_path, path)
  with pytest.raises(DatasetError, match="results file not found"):
    coco_eval.evaluate_results_file(gt_path, tmp_path / "absent.json")


def test_nan_from_jaxposes_own_results_is_rejected(ground_truth, tmp_path):
  path, people = ground_truth
  results = _results_from(people)
  results[2]["keypoints"][5, 0] = np.nan
  with pytest.raises(DatasetError, match=re.escape("entry 2 (image_id 2): keypoints[15]")):
    coco_eval.evaluate_keypoints(path, results, tmp_path / "results.json")


def test_ground_truth_annotation_id_zero_is_rejected(tmp_path):
  gt_path, results_path, _ = _write_trap_files(tmp_path, np.random.default_rng(0))
  gt = json.loads(gt_path.read_text())
  gt["annotations"][2]["id"] = 0
  gt_path.write_text(json.dumps(gt))
  with pytest.raises(DatasetError, match=re.escape("annotations[2] (id 0): annotation id 0")):
    coco_eval.evaluate_results_file(gt_path, results_path)


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
