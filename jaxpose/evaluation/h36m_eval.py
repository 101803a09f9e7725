"""Human3.6M MPJPE and PA-MPJPE in millimetres, per action and overall.

- MPJPE (protocol #1): both poses made root-relative (minus their pelvis, joint 0), then the
  mean over all K joints of the Euclidean error; the root's zero error is in the mean (K = 17),
  as in integral-human-pose `hm36.py: evaluate`, RLE `h36m.py: evaluate` and VideoPose3D
  (which zeroes the ground-truth root and scores all 17 joints).
- PA-MPJPE (protocol #2): the prediction is first aligned to the ground truth by the
  similarity transform (scale, rotation, translation) that minimises the squared error, with
  the rotation kept proper (det = +1: a mirrored prediction is not reflected back), as
  VideoPose3D `common/loss.py: p_mpjpe` and RLE `compute_similarity_transform` do.
  integral-human-pose's `rigid_align` differs: no scale, and the aligned pose is re-rooted
  before scoring; its numbers are not PA-MPJPE in this sense.
- Per action: the mean over that action's frames. Overall, two numbers, because the official
  codes disagree: `MPJPE` / `PA-MPJPE` are the mean over actions of the per-action means
  (VideoPose3D's "action-wise average", the Avg column of the papers' per-action tables);
  `MPJPE_all_frames` / `PA-MPJPE_all_frames` are the mean over all frames (RLE's and
  integral-human-pose's `tot`).
Poses are camera-space [F, K, 3] in millimetres (the annotations' unit).
"""

import re
from collections.abc import Sequence

import numpy as np

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import UserError

# The 17-joint Human3.6M layout of integral-human-pose / RLE (root first), from the spec.
H36M_JOINTS = keypoints_lib.H36M.names
ROOT_JOINT = keypoints_lib.H36M.root_index
# Human3.6M action ids 2..16 (the `act_XX` of image names), as RLE's `action_name`.
ACTION_NAMES = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Posing",
                "Purchases", "Sitting", "SittingDown", "Smoking", "Photo", "Waiting", "Walking",
                "WalkDog", "WalkTogether")
FIRST_ACTION_ID = 2
_ACTION_ID = re.compile(r"s_\d+_act_(\d+)_")


def _check_poses(predictions: np.ndarray,
                 ground_truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  predictions = np.asarray(predictions, np.float64)
  ground_truth = np.asarray(ground_truth, np.float64)
  if predictions.shape != ground_truth.shape or predictions.ndim != 3 or predictions.shape[-1] != 3:
    raise UserError(f"3D poses must both be [F, K, 3]; got predictions {predictions.shape}, "
                    f"ground truth {ground_truth.shape}")
  for name, poses in (("prediction", predictions), ("ground truth", ground_truth)):
    bad = ~np.isfinite(poses).all(axis=(1, 2))
    if bad.any():
      raise UserError(f"{name} of frame {int(np.argmax(bad))} has a non-finite coordinate")
  return predictions, ground_truth


def mpjpe_per_frame(predictions: np.ndarray, ground_truth: np.ndarray,
                    root_joint: int = ROOT_JOINT) -> np.ndarray:
  """Root-relative mean per-joint position error: [F, K, 3] x 2 -> [F], in the input unit."""
  predictions, ground_truth = _check_poses(predictions, ground_truth)
  difference = ((predictions - predictions[:, root_joint:root_joint + 1])
                - (ground_truth - ground_truth[:, root_joint:root_joint + 1]))
  return np.mean(np.linalg.norm(difference, axis=-1), axis=-1)


def procrustes_align(predictions: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
  """Least-squares similarity alignment of each predicted pose onto its ground truth.

  Umeyama (1991): with centred poses P, G and P^T G = U S V^T, the rotation R = U D V^T,
  D = diag(1, .., 1, sign det(U V^T)) so that det R = +1 (reflections are not allowed), scale
  s = trace(S D) / ||P||^2, and the aligned pose is s P R + mean(G).

  Args:
    predictions, ground_truth: [F, K, 3].

  Returns:
    [F, K, 3] aligned predictions.
  """
  predictions, ground_truth = _check_poses(predictions, ground_truth)
  predicted_mean = predictions.mean(axis=1, keepdims=True)
  target_mean = ground_truth.mean(axis=1, keepdims=True)
  centred_prediction = predictions - predicted_mean
  centred_target = ground_truth - target_mean
  u, singular_values, vt = np.linalg.svd(np.swapaxes(centred_prediction, 1, 2) @ centred_target)
  reflection_sign = np.where(np.linalg.det(u @ vt) < 0, -1.0, 1.0)
  d = np.ones_like(singular_values)
  d[:, -1] = reflection_sign
  rotation = (u * d[:, None, :]) @ vt
  # A collapsed prediction (every joint at one point, e.g. an untrained soft-argmax) has no
  # rotation to fit: scale 0 puts it on the target's centroid instead of dividing by zero.
  spread = np.sum(np.square(centred_prediction), axis=(1, 2))
  scale = np.sum(singular_values * d, axis=-1) / np.where(spread > 0, spread, 1.0)
  scale = np.where(spread > 0, scale, 0.0)
  return scale[:, None, None] * centred_prediction @ rotation + target_mean


def pa_mpjpe_per_frame(predictions: np.ndarray, ground_truth: np.ndarray) -> np.ndarray:
  """Mean per-joint error after `procrustes_align`: [F, K, 3] x 2 -> [F]."""
  aligned = procrustes_align(predictions, ground_truth)
  return np.mean(np.linalg.norm(aligned - np.asarray(ground_truth, np.float64), axis=-1), axis=-1)


def h36m_errors(predictions: np.ndarray, ground_truth: np.ndarray,
                actions: Sequence[str]) -> dict[str, float]:
  """MPJPE and PA-MPJPE per action and overall.

  Args:
    predictions, ground_truth: [F, K, 3] camera-space poses in mm, root (pelvis) at joint 0.
    actions: F action names (e.g. from `action_names_from_image_paths`).

  Returns:
    {"MPJPE", "PA-MPJPE"} (mean over actions of the per-action means),
    {"MPJPE_all_frames", "PA-MPJPE_all_frames"} (mean over frames), and
    "MPJPE/<action>", "PA-MPJPE/<action>" for each action, in order of first appearance.
  """
  actions = np.asarray(actions)
  if actions.shape != (len(predictions),):
    raise UserError(f"{actions.shape[0] if actions.ndim else 0} action labels for "
                    f"{len(predictions)} frames")
  if len(predictions) == 0:
    raise UserError("no frames to evaluate")
  errors = {"MPJPE": mpjpe_per_frame(predictions, ground_truth),
            "PA-MPJPE": pa_mpjpe_per_frame(predictions, ground_truth)}
  results = {}
  for metric, per_frame in errors.items():
    per_action = {name: float(np.mean(per_frame[actions == name]))
                  for name in dict.fromkeys(actions.tolist())}
    results[metric] = float(np.mean(list(per_action.values())))
    results[f"{metric}_all_frames"] = float(np.mean(per_frame))
    results.update({f"{metric}/{name}": value for name, value in per_action.items()})
  return results


def action_names_from_image_paths(image_paths: Sequence[str]) -> list[str]:
  """Action names from Human3.6M image names such as `s_09_act_02_subact_01_ca_01/..._000001.jpg`
  (the `act_XX` id, 2..16, that RLE's evaluate reads)."""
  names = []
  for path in image_paths:
    match = _ACTION_ID.search(path)
    action_id = int(match.group(1)) if match else -1
    if not FIRST_ACTION_ID <= action_id < FIRST_ACTION_ID + len(ACTION_NAMES):
      raise UserError(f"image name {path!r} has no Human3.6M action id s_XX_act_02 .. act_16")
    names.append(ACTION_NAMES[action_id - FIRST_ACTION_ID])
  return names
