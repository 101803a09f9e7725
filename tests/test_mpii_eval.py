"""Tests for jaxpose.evaluation.mpii_eval: MPII PCKh against the benchmark's MATLAB code.

Fixtures (recipe in BUILD_NOTES.md): `mpii_eval_gt_valid.mat` (40 persons, gt_valid.mat
format) and `mpii_eval_gt_valid_noankles.mat` (the same with both ankles missing for
everyone); `mpii_eval_golden.npz` holds the 0-based predictions, the tables printed by the
MPII benchmark's evalMPII code (run in Octave 7.3) and HRNet's `MPIIDataset.evaluate` output.
"""

from pathlib import Path

import chex
import numpy as np
import pytest
import scipy.io

from jaxpose.errors import DatasetError, UserError
from jaxpose.evaluation import mpii_eval

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = np.load(FIXTURES / "mpii_eval_golden.npz")
CASES = {"A": FIXTURES / "mpii_eval_gt_valid.mat",
         "B": FIXTURES / "mpii_eval_gt_valid_noankles.mat"}
TABLE_COLUMNS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "UBody", "Mean")
# annolist2matrix.m's 14 columns as MPII joint indices: MPII 0-5, 10-15, 8, 9.
MATLAB_COLUMNS = (0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 8, 9)


def _hrnet(case: str) -> dict[str, float]:
  names = [str(n) for n in GOLDEN["hrnet_names"]]
  return {n.split("/", 1)[1]: float(v) for n, v in zip(names, GOLDEN["hrnet_values"])
          if n.startswith(case + "/")}


@pytest.mark.parametrize("case", ["A", "B"])
def test_table_equals_official_matlab_evaluation(case):
  results = mpii_eval.evaluate_gt_valid(CASES[case], GOLDEN["predictions"])
  for threshold, suffix in (("0.5", ""), ("0.1", "@0.1")):
    ours = np.array([results[name + suffix] for name in TABLE_COLUMNS])
    chex.assert_trees_all_close(ours, GOLDEN[f"official_{case}_table_at_{threshold}"], rtol=1e-6)
  if case == "B":  # no visible ankle: the group is undefined, the Mean (Total) is not
    assert np.isnan(results["Ankle"]) and np.isfinite(results["Mean"])


@pytest.mark.parametrize("case", ["A", "B"])
def test_per_joint_pckh_equals_official(case):
  ground_truth = mpii_eval.read_gt_valid(CASES[case])
  distances = mpii_eval.normalized_distances(GOLDEN["predictions"] + 1.0, ground_truth)
  for threshold in (0.5, 0.1):
    per_joint = mpii_eval.per_joint_pckh(distances, threshold)
    chex.assert_shape(per_joint, (16,))
    chex.assert_trees_all_close(per_joint[list(MATLAB_COLUMNS)],
                                GOLDEN[f"official_{case}_pck_at_{threshold}"][:14], rtol=1e-6)


def test_where_hrnet_differs_from_the_benchmark():
  """HRNet's numbers, from running its evaluate, against ours: the three documented differences."""
  ground_truth = mpii_eval.read_gt_valid(CASES["A"])
  distances = mpii_eval.normalized_distances(GOLDEN["predictions"] + 1.0, ground_truth)
  ours = mpii_eval.evaluate_gt_valid(CASES["A"], GOLDEN["predictions"])
  hrnet = _hrnet("A")
  for name in ("Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean"):
    assert hrnet[name] == pytest.approx(ours[name], rel=1e-9)
  # 1. HRNet's Head is the head top alone; the benchmark averages upper neck and head top.
  assert hrnet["Head"] == pytest.approx(mpii_eval.per_joint_pckh(distances, 0.5)[9], rel=1e-9)
  assert hrnet["Head"] != pytest.approx(ours["Head"])
  # 2. HRNet's "Mean@0.1" is the pooled PCKh at 0.11.
  assert hrnet["Mean@0.1"] == pytest.approx(mpii_eval.pckh_table(distances, 0.11)["Mean"], rel=1e-9)
  assert hrnet["Mean@0.1"] != pytest.approx(ours["Mean@0.1"])
  # 3. A joint never visible makes HRNet's Mean NaN; the benchmark's Total pools what exists.
  assert np.isnan(_hrnet("B")["Mean"])


def _write_gt_valid(path, joints_xy, missing, head_boxes, names=mpii_eval.GT_VALID_JOINT_NAMES):
  """Persons-first arrays (in `names` order) -> a gt_valid.mat as HRNet ships it."""
  scipy.io.savemat(path, {
      "dataset_joints": np.array([list(names)], dtype=object),
      "jnt_missing": np.asarray(missing, np.uint8).T,
      "pos_gt_src": np.asarray(joints_xy, np.float64).transpose(1, 2, 0),
      "headboxes_src": np.asarray(head_boxes, np.float64).transpose(1, 2, 0)})


def _one_person():
  """A person with head box 30 x 40 px (head size 0.6 x 50 = 30 px) and four scored joints.

  0-based predictions, 1-based ground truth (errors after adding 1):
    head_top   error 15 = exactly 0.5 head sizes    -> correct at 0.5 (<=), not at 0.1
    upper_neck error 3  = exactly 0.1 head sizes    -> correct at both
    r_wrist    error one ulp above 15 px            -> wrong at both
    l_wrist    NaN prediction                       -> wrong at both
    pelvis     exact, but pelvis is never scored; every other joint is missing.
  """
  gt = np.zeros((1, 16, 2))
  missing = np.ones((1, 16), bool)
  predictions = np.zeros((1, 16, 2))
  cases = {9: ([100.0, 50.0], [9.0, 12.0]), 8: ([100.0, 80.0], [3.0, 0.0]),
           10: ([0.5, 200.0], None), 15: ([150.0, 200.0], None), 6: ([120.0, 200.0], [0.0, 0.0])}
  for joint, (xy, offset) in cases.items():
    gt[0, joint] = xy
    missing[0, joint] = False
    if offset is not None:
      predictions[0, joint] = np.array(xy) + offset - 1.0
  predictions[0, 10] = [np.nextafter(15.5, 16.0) - 1.0, 199.0]
  predictions[0, 15] = np.nan
  head_boxes = np.array([[[10.0, 20.0], [40.0, 60.0]]])
  return gt, missing, head_boxes, predictions


def test_hand_computed_person(tmp_path):
  gt, missing, head_boxes, predictions = _one_person()
  _write_gt_valid(tmp_path / "gt_valid.mat", gt, missing, head_boxes)
  results = mpii_eval.evaluate_gt_valid(tmp_path / "gt_valid.mat", predictions)
  # Head = mean(neck 100, head top 100) = 100 at 0.5 and mean(100, 0) = 50 at 0.1.
  # Wrist = mean(0, 0) = 0. Mean pools neck, head top, both wrists: 2/4 and 1/4.
  # Shoulder: no visible shoulder -> NaN (MATLAB's mean of nothing).
  expected = {"Head": 100.0, "Head@0.1": 50.0, "Wrist": 0.0, "UBody": 0.0,
              "Mean": 50.0, "Mean@0.1": 25.0}
  chex.assert_trees_all_close({k: results[k] for k in expected}, expected)
  assert np.isnan(results["Shoulder"]) and np.isnan(results["Ankle@0.1"])


def test_joint_order_is_read_from_dataset_joints(tmp_path):
  gt, missing, head_boxes, predictions = _one_person()
  permutation = np.random.default_rng(0).permutation(16)
  names = [mpii_eval.GT_VALID_JOINT_NAMES[j] for j in permutation]
  _write_gt_valid(tmp_path / "shuffled.mat", gt[:, permutation], missing[:, permutation],
                  head_boxes, names)
  _write_gt_valid(tmp_path / "plain.mat", gt, missing, head_boxes)
  shuffled = mpii_eval.evaluate_gt_valid(tmp_path / "shuffled.mat", predictions)
  plain = mpii_eval.evaluate_gt_valid(tmp_path / "plain.mat", predictions)
  chex.assert_trees_all_close(shuffled, plain)


def test_bad_input_is_named(tmp_path):
  gt, missing, head_boxes, predictions = _one_person()
  scipy.io.savemat(tmp_path / "no_boxes.mat",
                   {"dataset_joints": np.array([["rank"]], dtype=object)})
  with pytest.raises(DatasetError, match=r"no_boxes.mat: key 'jnt_missing' missing"):
    mpii_eval.read_gt_valid(tmp_path / "no_boxes.mat")
  _write_gt_valid(tmp_path / "flat_head.mat", gt, missing, np.zeros((1, 2, 2)))
  with pytest.raises(DatasetError, match=r"flat_head.mat: person 0 .* zero-size head box"):
    mpii_eval.read_gt_valid(tmp_path / "flat_head.mat")
  _write_gt_valid(tmp_path / "gt_valid.mat", gt, missing, head_boxes)
  with pytest.raises(UserError, match=r"shape \(1, 14, 2\).*needs \(1, 16, >=2\)"):
    mpii_eval.evaluate_gt_valid(tmp_path / "gt_valid.mat", predictions[:, :14])
