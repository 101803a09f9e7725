"""Tests for jaxpose.evaluation.h36m_eval: MPJPE / PA-MPJPE against VideoPose3D and RLE.

Fixture (recipe in BUILD_NOTES.md): `h36m_eval_case.npz`, 48 frames of 17-joint poses in mm
over 4 actions of unequal length (frame 0 and 12 mirrored predictions, frame 1 an exact
similarity transform, frame 2 a pure shift), with the numbers of VideoPose3D's `mpjpe` /
`p_mpjpe` aggregated as its run.py does, RLE's per-frame PA error and integral-human-pose's
rigid (no scale) alignment.
"""

from pathlib import Path

import chex
import numpy as np
import pytest

from jaxpose.errors import UserError
from jaxpose.evaluation import h36m_eval

CASE = np.load(Path(__file__).parent / "fixtures" / "h36m_eval_case.npz")


def _rotation_z(angle):
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_equals_videopose3d_per_action_and_overall():
  results = h36m_eval.h36m_errors(CASE["pred"], CASE["gt"], CASE["actions"])
  names = [str(n) for n in CASE["action_names"]]
  ours = {metric: np.array([results[f"{metric}/{name}"] for name in names])
          for metric in ("MPJPE", "PA-MPJPE")}
  chex.assert_trees_all_close(ours, {"MPJPE": CASE["vp3d_action_mpjpe"],
                                     "PA-MPJPE": CASE["vp3d_action_pa_mpjpe"]}, rtol=1e-6)
  overall = {k: results[k]
             for k in ("MPJPE", "PA-MPJPE", "MPJPE_all_frames", "PA-MPJPE_all_frames")}
  expected = {"MPJPE": np.mean(CASE["vp3d_action_mpjpe"]),
              "PA-MPJPE": np.mean(CASE["vp3d_action_pa_mpjpe"]),
              "MPJPE_all_frames": float(CASE["vp3d_all_frames_mpjpe"]),
              "PA-MPJPE_all_frames": float(CASE["vp3d_all_frames_pa_mpjpe"])}
  chex.assert_trees_all_close(overall, expected, rtol=1e-6)
  # the two overall numbers differ on unequal action lengths: which one is reported matters
  assert abs(results["MPJPE"] - results["MPJPE_all_frames"]) > 1.0


def test_per_frame_errors_equal_videopose3d_and_rle():
  mpjpe = h36m_eval.mpjpe_per_frame(CASE["pred"], CASE["gt"])
  pa_mpjpe = h36m_eval.pa_mpjpe_per_frame(CASE["pred"], CASE["gt"])
  chex.assert_shape((mpjpe, pa_mpjpe), (48,))
  chex.assert_trees_all_close(
      (mpjpe, pa_mpjpe), (CASE["vp3d_frame_mpjpe"], CASE["vp3d_frame_pa_mpjpe"]),
      rtol=1e-6, atol=1e-9)  # atol: frames 1 and 2 are 0 up to rounding
  chex.assert_trees_all_close(
      (mpjpe, pa_mpjpe), (CASE["rle_frame_mpjpe"], CASE["rle_frame_pa_mpjpe"]),
      rtol=1e-6, atol=1e-9)
  # integral-human-pose's rigid_align (no scale, re-rooted) is another metric: frame 1, an
  # exact similarity transform with scale 1.1, keeps an error there
  assert CASE["integral_frame_rigid_mpjpe"][1] > 10.0 and pa_mpjpe[1] < 1e-9
  assert np.mean(CASE["integral_frame_rigid_mpjpe"]) > np.mean(pa_mpjpe) + 10.0


def test_mirrored_pose_is_not_reflected_back():
  """Four non-coplanar joints: their mirror image is no rotation of them, so PA-MPJPE > 0
  (an alignment allowing det = -1 would give 0). Frames 0 and 12 of the fixture are mirrored
  poses; their values are checked against VideoPose3D above."""
  gt = 100.0 * np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
  mirrored = gt * [-1.0, 1.0, 1.0]
  assert h36m_eval.pa_mpjpe_per_frame(mirrored, gt)[0] > 10.0
  assert h36m_eval.pa_mpjpe_per_frame(CASE["pred"][[0, 12]], CASE["gt"][[0, 12]]).min() > 100.0
  # Three joints are always coplanar: a mirror image of them is a rotation (180 deg about an
  # axis in their plane), so the proper alignment recovers it exactly.
  chex.assert_trees_all_close(h36m_eval.pa_mpjpe_per_frame(mirrored[:, :3], gt[:, :3]),
                              np.zeros(1), atol=1e-9)


def test_hand_computed_three_joints():
  """Root (0, 0, 0), joints (100, 0, 0) and (0, 100, 0); the prediction is the truth scaled by
  2, rotated 90 deg about z and shifted by (5, 6, 7).
  Root-relative prediction: (0, 0, 0), (0, 200, 0), (-200, 0, 0); errors 0, sqrt(100^2 + 200^2),
  sqrt(200^2 + 100^2), so MPJPE = 2 * 223.6068 / 3 = 149.0712 (the root's 0 is in the mean).
  PA-MPJPE = 0: the prediction is a similarity transform of the truth."""
  gt = np.array([[[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 100.0, 0.0]]])
  prediction = 2.0 * gt @ _rotation_z(np.pi / 2).T + [5.0, 6.0, 7.0]
  chex.assert_trees_all_close(h36m_eval.mpjpe_per_frame(prediction, gt),
                              np.array([2.0 * np.sqrt(50000.0) / 3.0]))
  chex.assert_trees_all_close(h36m_eval.procrustes_align(prediction, gt), gt, atol=1e-9)


def test_action_average_versus_frame_average():
  """Two joints (root + one). Action A: 1 frame, joint error 20 -> MPJPE 10; action B: 3
  frames, error 40 -> 20. Mean over actions 15; mean over frames (10 + 3 * 20) / 4 = 17.5."""
  gt = np.zeros((4, 2, 3))
  gt[:, 1] = [0.0, -100.0, 0.0]
  prediction = gt.copy()
  prediction[:, 1, 0] = [20.0, 40.0, 40.0, 40.0]
  results = h36m_eval.h36m_errors(prediction, gt, ["A", "B", "B", "B"])
  chex.assert_trees_all_close(
      {k: results[k] for k in ("MPJPE", "MPJPE_all_frames", "MPJPE/A", "MPJPE/B")},
      {"MPJPE": 15.0, "MPJPE_all_frames": 17.5, "MPJPE/A": 10.0, "MPJPE/B": 20.0})


def test_action_names_from_image_paths():
  paths = ["images/s_09_act_02_subact_01_ca_01/s_09_act_02_subact_01_ca_01_000001.jpg",
           "extract_act_99/s_11_act_16_subact_02_ca_04/s_11_act_16_subact_02_ca_04_000101.jpg",
           "s_11_act_12_subact_02_ca_04_000101.jpg"]
  assert h36m_eval.action_names_from_image_paths(paths) == ["Directions", "WalkTogether", "Photo"]
  with pytest.raises(UserError, match=r"'s_09_act_17_subact_01.jpg' has no Human3.6M action id"):
    h36m_eval.action_names_from_image_paths(["s_09_act_17_subact_01.jpg"])


def test_bad_input_is_named():
  prediction = CASE["pred"][:3].copy()
  prediction[2, 5, 1] = np.nan
  with pytest.raises(UserError, match="prediction of frame 2 has a non-finite coordinate"):
    h36m_eval.h36m_errors(prediction, CASE["gt"][:3], ["A"] * 3)
  with pytest.raises(UserError, match=r"2 action labels for 3 frames"):
    h36m_eval.h36m_errors(CASE["pred"][:3], CASE["gt"][:3], ["A"] * 2)
  with pytest.raises(UserError, match=r"\[F, K, 3\]"):
    h36m_eval.mpjpe_per_frame(CASE["pred"][:3, :, :2], CASE["gt"][:3, :, :2])
