"""Tests for jaxpose.evaluation.lsp_eval: LSP PCK@0.2 against eval_pose's eval_pck.m.

Fixtures (recipe in BUILD_NOTES.md): `lsp_eval_joints.mat` (LSP's joints.mat layout, 3 x 14 x
30), `lsp_eval_golden.npz` (predictions for images 16-30 and the [7 parts, Mean] vector
printed by bearpaw/eval_pose `utils/eval_pck.m`, run in Octave 7.3).
"""

from pathlib import Path

import chex
import numpy as np
import pytest
import scipy.io

from jaxpose.errors import DatasetError, UserError
from jaxpose.evaluation import lsp_eval

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = np.load(FIXTURES / "lsp_eval_golden.npz")
EVAL_PCK_COLUMNS = ("Ankle", "Knee", "Hip", "Wrist", "Elbow", "Shoulder", "Head", "Mean")


def test_equals_official_eval_pck():
  results = lsp_eval.evaluate_lsp_joints(FIXTURES / "lsp_eval_joints.mat", GOLDEN["predictions"],
                                         first_test_image=int(GOLDEN["first_test"]))
  ours = np.array([results[name] for name in EVAL_PCK_COLUMNS])
  chex.assert_trees_all_close(ours, GOLDEN["official_parts_and_mean"], rtol=1e-6)


def _one_image():
  """Torso: left shoulder (100, 100) to right hip (130, 140) = 50 px, so PCK@0.2 allows 10 px.

  Every prediction is exact except:
    head_top  error 10 px (6, 8)        = exactly 0.2 -> correct (<=)
    neck      error one ulp above 10 px               -> wrong
    r_ankle   error 12 px                             -> wrong
  """
  gt = np.stack([np.linspace(20.0, 200.0, 14), np.linspace(220.0, 30.0, 14)], -1)[None]
  gt[0, 9] = [100.0, 100.0]
  gt[0, 2] = [130.0, 140.0]
  gt[0, 12] = [0.5, 60.0]
  predictions = gt.copy()
  predictions[0, 13] += [6.0, 8.0]
  predictions[0, 12, 0] = np.nextafter(10.5, 11.0)
  predictions[0, 0] += [0.0, 12.0]
  return gt, predictions


def test_hand_computed_image():
  gt, predictions = _one_image()
  results = lsp_eval.lsp_pck(predictions, gt)
  # Head = mean(neck 0, head top 100); Ankle = mean(r 0, l 100); Mean = 12 of 14 joints.
  expected = {"Head": 50.0, "Shoulder": 100.0, "Elbow": 100.0, "Wrist": 100.0, "Hip": 100.0,
              "Knee": 100.0, "Ankle": 50.0, "Mean": 100.0 * 12 / 14}
  chex.assert_trees_all_close(results, expected)


def test_zero_torso_and_nan_predictions_are_misses():
  gt, predictions = _one_image()
  collapsed = gt.copy()
  collapsed[0, 9] = collapsed[0, 2]  # left shoulder on the right hip: torso size 0
  assert lsp_eval.lsp_pck(collapsed.copy(), collapsed)["Mean"] == 0.0  # even exact predictions
  predictions = gt.copy()
  predictions[0, 6] = np.nan  # r_wrist
  assert lsp_eval.lsp_pck(predictions, gt)["Wrist"] == 50.0


def test_occlusion_flag_does_not_change_the_score(tmp_path):
  gt, predictions = _one_image()
  for flag in (0.0, 1.0):
    joints = np.concatenate([gt, np.full((1, 14, 1), flag)], -1).transpose(2, 1, 0)
    scipy.io.savemat(tmp_path / "joints.mat", {"joints": joints})
    results = lsp_eval.evaluate_lsp_joints(tmp_path / "joints.mat", predictions, first_test_image=0)
    assert results["Mean"] == pytest.approx(100.0 * 12 / 14)


def test_bad_input_is_named(tmp_path):
  gt, predictions = _one_image()
  lspet_layout = np.concatenate([gt, np.ones((1, 14, 1))], -1).transpose(1, 2, 0)  # 14 x 3 x N
  scipy.io.savemat(tmp_path / "lspet.mat", {"joints": lspet_layout})
  with pytest.raises(DatasetError, match=r"lspet.mat: 'joints' has shape \(14, 3, 1\)"):
    lsp_eval.read_lsp_joints(tmp_path / "lspet.mat")
  scipy.io.savemat(tmp_path / "joints.mat", {"joints": np.concatenate(
      [gt, np.ones((1, 14, 1))], -1).transpose(2, 1, 0)})
  with pytest.raises(UserError, match=r"images 0.. of .*joints.mat need \(1, 14, >=2\)"):
    lsp_eval.evaluate_lsp_joints(tmp_path / "joints.mat", predictions[:, :13], first_test_image=0)
