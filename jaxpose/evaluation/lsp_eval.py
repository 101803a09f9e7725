"""LSP PCK@0.2 with torso normalisation, as the standard LSP evaluation computes it.

The reference is `eval_pck.m` of bearpaw/eval_pose (the "widely used version from the MPII
Human Pose Dataset" page, used for the LSP tables of Yang et al. 2016 and the papers that
compare with them), re-implemented in numpy:
- torso size = || left shoulder - right hip || of the ground truth (LSP joints 10 and 3,
  1-based; the Sapp & Taskar PCK definition);
- a joint is correct when distance / torso size <= threshold (`<=`);
- every one of the 14 joints of every test image counts, occluded or not (the code has no
  visibility mask); a NaN prediction or a zero torso size makes a miss;
- a group (Head = neck + head top, Shoulder, ...) is the mean of a joint's PCK and its
  mirror partner's; `Mean` pools all 14 joints of all images.
The test set is images 1001-2000 of the 2000 in LSP's joints.mat.
"""

from pathlib import Path

import numpy as np
import scipy.io

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError, UserError

# The 14 LSP joints in joints.mat order and their PCK groups, from the LSP spec.
LSP_JOINTS = keypoints_lib.LSP.names
PCK_GROUPS = {name: tuple(int(i) for i in ids)
              for name, ids in keypoints_lib.LSP.pck_groups.items()}
TORSO_JOINTS = (9, 2)  # left shoulder, right hip (eval_pck.m: gt(:,10) - gt(:,3))
LSP_FIRST_TEST_IMAGE = 1000  # 0-based: images 1001-2000 are the test set


def torso_sizes(ground_truth_xy: np.ndarray) -> np.ndarray:
  """[N, 14, 2] -> [N] left shoulder to right hip distances."""
  left_shoulder, right_hip = TORSO_JOINTS
  torso = ground_truth_xy[:, left_shoulder] - ground_truth_xy[:, right_hip]
  return np.sqrt(np.sum(np.square(torso), axis=-1))


def normalized_distances(predictions_xy: np.ndarray, ground_truth_xy: np.ndarray) -> np.ndarray:
  """[N, 14, 2] predictions and ground truth (same pixels) -> [N, 14] distances in torso sizes."""
  error = np.sqrt(np.sum(np.square(np.asarray(predictions_xy, np.float64) - ground_truth_xy),
                         axis=-1))
  with np.errstate(divide="ignore", invalid="ignore"):
    return error / torso_sizes(ground_truth_xy)[:, None]


def lsp_pck(predictions_xy: np.ndarray, ground_truth_xy: np.ndarray,
            threshold: float = 0.2) -> dict[str, float]:
  """PCK in percent: "Head", "Shoulder", ..., "Ankle" and "Mean".

  predictions_xy, ground_truth_xy: [N, 14, 2] (x, y), LSP joint order, the same pixel
  convention. NaN distances (a NaN prediction, a zero torso with an exact prediction) are
  misses, as `mean(dist <= t)` makes them in eval_pck.m.
  """
  with np.errstate(invalid="ignore"):
    correct = normalized_distances(predictions_xy, ground_truth_xy) <= threshold
  per_joint = 100.0 * np.mean(correct, axis=0)
  results = {name: float((per_joint[a] + per_joint[b]) / 2) for name, (a, b) in PCK_GROUPS.items()}
  results["Mean"] = float(100.0 * np.mean(correct))
  return results


def read_lsp_joints(path: str | Path) -> np.ndarray:
  """LSP's joints.mat (`joints`, 3 x 14 x N: x, y, occlusion flag) -> [N, 14, 3].

  Only LSP's layout is read: LSP-extended stores 14 x 3 x N with the flag's meaning reversed,
  and it has no test split.
  """
  try:
    contents = scipy.io.loadmat(str(path))
  except (OSError, ValueError, TypeError) as error:
    raise DatasetError(f"{path}: not a readable MATLAB .mat file ({error})") from error
  if "joints" not in contents:
    raise DatasetError(f"{path}: key 'joints' missing (LSP's joints.mat holds 'joints', "
                       "3 x 14 x N)")
  joints = np.asarray(contents["joints"], np.float64)
  if joints.ndim != 3 or joints.shape[:2] != (3, len(LSP_JOINTS)):
    raise DatasetError(f"{path}: 'joints' has shape {joints.shape}; LSP's is (3, 14, N) "
                       "(LSP-extended's 14 x 3 x N training file has no test split)")
  if not np.isfinite(joints[:2]).all():
    raise DatasetError(f"{path}: 'joints' holds non-finite coordinates")
  return joints.transpose(2, 1, 0)


def evaluate_lsp_joints(joints_mat_path: str | Path, predictions_xy: np.ndarray,
                        first_test_image: int = LSP_FIRST_TEST_IMAGE,
                        threshold: float = 0.2) -> dict[str, float]:
  """Scores predictions [M, 14, >=2] for images first_test_image.. (0-based) of a joints.mat.

  Predictions must be in joints.mat's own pixel coordinates (whatever shift a reader applies
  to the annotations must be undone first): PCK compares them directly.
  """
  ground_truth = read_lsp_joints(joints_mat_path)[first_test_image:, :, :2]
  predictions = np.asarray(predictions_xy, np.float64)
  expected = (len(ground_truth), len(LSP_JOINTS))
  if predictions.ndim != 3 or predictions.shape[:2] != expected or predictions.shape[2] < 2:
    raise UserError(f"LSP predictions have shape {predictions.shape}; images {first_test_image}.. "
                    f"of {joints_mat_path} need ({expected[0]}, {expected[1]}, >=2)")
  return lsp_pck(predictions[..., :2], ground_truth, threshold)
