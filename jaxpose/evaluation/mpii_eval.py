"""MPII single-person PCKh, as the MPII benchmark's own MATLAB evaluation computes it.

The reference is the benchmark's `evalMPII.zip` (`evaluatePCKh.m`: `getHeadSizeAll`,
`getDistPCKh`, `computePCK`, `genTablePCK`), re-implemented in numpy; the ground truth is read
from HRNet's `annot/gt_valid.mat` (fields `dataset_joints`, `jnt_missing`, `pos_gt_src`,
`headboxes_src`), as HRNet's `lib/dataset/mpii.py: MPIIDataset.evaluate` reads it.

The benchmark's rules, all followed here:
- head size = 0.6 x the diagonal of the annotated head box (`SC_BIAS = 0.6`);
- a joint is correct when distance / head size <= threshold (`<=`, not `<`);
- joints without ground truth are ignored; a NaN prediction counts as a miss;
- a joint group (Head = upper neck + head top, Shoulder, ...) is the mean of its two joints'
  PCKh; `Mean` (the benchmark's "Total") pools every visible joint except pelvis and thorax,
  so joints weigh by their number of visible instances; `UBody` pools wrists, elbows, shoulders.
HRNet's evaluate differs in three places (see BUILD_NOTES.md): its Head is the head top alone,
its `Mean@0.1` is taken at threshold 0.11 (`pckAll[11]` of `arange(0, 0.51, 0.01)`), and its
Mean is NaN as soon as one counted joint has no visible instance.

Coordinates: `gt_valid.mat` holds MATLAB 1-based pixels; jaxpose predicts 0-based pixels
(HRNet's reader subtracts 1 from the annotations), so `evaluate_gt_valid` adds 1 as HRNet does.
"""

import dataclasses
from pathlib import Path

import numpy as np
import scipy.io

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError, UserError

# The 16 MPII joints in dataset order (0 right_ankle ... 15 left_wrist), from the MPII spec,
# and their names in gt_valid.mat's `dataset_joints`.
MPII_JOINTS = keypoints_lib.MPII.names
GT_VALID_JOINT_NAMES = ("rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck",
                        "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri")
# genTablePCK's columns, as MPII joint indices (the spec's PCK groups).
PCKH_GROUPS = {name: tuple(int(i) for i in ids)
               for name, ids in keypoints_lib.MPII.pck_groups.items()}
UPPER_BODY_JOINTS = (10, 11, 12, 13, 14, 15)
# The benchmark's 14 joints: every joint but pelvis (6) and thorax (7).
SCORED_JOINTS = (0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15)
HEAD_SIZE_FACTOR = 0.6  # SC_BIAS in util_get_head_size.m


@dataclasses.dataclass(frozen=True)
class MpiiGroundTruth:
  """The contents of a gt_valid.mat, persons first, joints in MPII order.

  joints_xy: [N, 16, 2] (x, y) in 1-based pixels; values of missing joints are meaningless.
  joint_missing: [N, 16] bool, True where the joint has no annotation.
  head_boxes: [N, 2, 2] ((x1, y1), (x2, y2)) head rectangle corners.
  """
  joints_xy: np.ndarray
  joint_missing: np.ndarray
  head_boxes: np.ndarray


def head_sizes(head_boxes: np.ndarray) -> np.ndarray:
  """[N, 2, 2] head boxes -> [N] head sizes, 0.6 x the box diagonal (`util_get_head_size.m`)."""
  diagonal = head_boxes[:, 1] - head_boxes[:, 0]
  return HEAD_SIZE_FACTOR * np.sqrt(np.sum(np.square(diagonal), axis=-1))


def normalized_distances(predictions_xy: np.ndarray, ground_truth: MpiiGroundTruth) -> np.ndarray:
  """Distances in head sizes (`getDistPCKh.m`): [N, 16], NaN where the joint is missing.

  predictions_xy: [N, 16, 2] in the ground truth's (1-based) pixels. A NaN prediction becomes
  +inf, a certain miss (`pred(isnan(pred)) = inf` in evaluatePCKh.m).
  """
  predictions = np.where(np.isnan(predictions_xy), np.inf, np.asarray(predictions_xy, np.float64))
  error = np.sqrt(np.sum(np.square(predictions - ground_truth.joints_xy), axis=-1))
  with np.errstate(divide="ignore", invalid="ignore"):
    distances = error / head_sizes(ground_truth.head_boxes)[:, None]
  return np.where(ground_truth.joint_missing, np.nan, distances)


def _percent_within(distances: np.ndarray, threshold: float) -> float:
  """100 x the fraction of non-NaN distances <= threshold (`computePCK.m`); NaN if none."""
  present = distances[~np.isnan(distances)]
  if present.size == 0:
    return float("nan")  # MATLAB's mean([]) is NaN
  return float(100.0 * np.mean(present <= threshold))


def per_joint_pckh(distances: np.ndarray, threshold: float) -> np.ndarray:
  """[N, 16] normalized distances -> [16] PCKh in percent, NaN for a joint never visible."""
  return np.array([_percent_within(distances[:, j], threshold) for j in range(distances.shape[1])])


def pckh_table(distances: np.ndarray, threshold: float) -> dict[str, float]:
  """The benchmark's table row at one threshold: the 7 groups, `UBody` and `Mean` (Total)."""
  per_joint = per_joint_pckh(distances, threshold)
  table = {name: float((per_joint[a] + per_joint[b]) / 2) for name, (a, b) in PCKH_GROUPS.items()}
  table["UBody"] = _percent_within(distances[:, UPPER_BODY_JOINTS], threshold)
  table["Mean"] = _percent_within(distances[:, SCORED_JOINTS], threshold)
  return table


def mpii_pckh(predictions_xy: np.ndarray, ground_truth: MpiiGroundTruth) -> dict[str, float]:
  """PCKh@0.5 (keys "Head", ..., "Ankle", "UBody", "Mean") and PCKh@0.1 ("Head@0.1", ...,
  "Mean@0.1"), in percent.

  predictions_xy: [N, 16, 2] in the ground truth's 1-based pixels.
  """
  distances = normalized_distances(predictions_xy, ground_truth)
  results = pckh_table(distances, 0.5)
  results.update({f"{name}@0.1": value for name, value in pckh_table(distances, 0.1).items()})
  return results


def _joint_names(dataset_joints: np.ndarray) -> list[str]:
  """loadmat gives a 1x16 cell as a (1, 16) object array of 1-element string arrays."""
  return [str(np.asarray(name).ravel()[0]) for name in np.asarray(dataset_joints).ravel()]


def read_gt_valid(path: str | Path) -> MpiiGroundTruth:
  """Reads HRNet's gt_valid.mat into persons-first arrays in MPII joint order.

  Raises:
    DatasetError: a missing key, inconsistent shapes, unknown joint names, or a person with
      visible joints and a zero-size head box (its PCKh would be undefined).
  """
  try:
    contents = scipy.io.loadmat(str(path))
  except (OSError, ValueError, TypeError) as error:
    raise DatasetError(f"{path}: not a readable MATLAB .mat file ({error})") from error
  for key in ("dataset_joints", "jnt_missing", "pos_gt_src", "headboxes_src"):
    if key not in contents:
      raise DatasetError(f"{path}: key {key!r} missing (a gt_valid.mat has dataset_joints, "
                         "jnt_missing, pos_gt_src, headboxes_src)")
  names = _joint_names(contents["dataset_joints"])
  if sorted(names) != sorted(GT_VALID_JOINT_NAMES):
    raise DatasetError(f"{path}: dataset_joints {names} are not the 16 MPII joint names "
                       f"{list(GT_VALID_JOINT_NAMES)}")
  order = [names.index(name) for name in GT_VALID_JOINT_NAMES]
  positions = np.asarray(contents["pos_gt_src"], np.float64)
  missing = np.asarray(contents["jnt_missing"])
  boxes = np.asarray(contents["headboxes_src"], np.float64)
  num_persons = positions.shape[-1] if positions.ndim == 3 else -1
  if (positions.shape != (16, 2, num_persons) or missing.shape != (16, num_persons)
      or boxes.shape != (2, 2, num_persons)):
    raise DatasetError(f"{path}: shapes pos_gt_src {positions.shape}, jnt_missing "
                       f"{missing.shape}, headboxes_src {boxes.shape}; expected (16, 2, N), "
                       "(16, N), (2, 2, N)")
  ground_truth = MpiiGroundTruth(joints_xy=positions.transpose(2, 0, 1)[:, order],
                                 joint_missing=missing.T[:, order].astype(bool),
                                 head_boxes=boxes.transpose(2, 0, 1))
  degenerate = (head_sizes(ground_truth.head_boxes) == 0) & ~ground_truth.joint_missing.all(-1)
  if degenerate.any():
    raise DatasetError(f"{path}: person {int(np.argmax(degenerate))} (0-based) has visible "
                       "joints but a zero-size head box in headboxes_src")
  return ground_truth


def evaluate_gt_valid(gt_valid_path: str | Path, predictions_xy: np.ndarray) -> dict[str, float]:
  """Scores 0-based predictions [N, 16, >=2] (x, y, ...) against a gt_valid.mat (`mpii_pckh`).

  Predictions are in jaxpose's 0-based image pixels and in the file's person order; 1 is
  added before comparing with the 1-based annotations, as HRNet's evaluate does.
  """
  ground_truth = read_gt_valid(gt_valid_path)
  predictions = np.asarray(predictions_xy, np.float64)
  expected = (len(ground_truth.joints_xy), len(MPII_JOINTS))
  if predictions.ndim != 3 or predictions.shape[:2] != expected or predictions.shape[2] < 2:
    raise UserError(f"MPII predictions have shape {predictions.shape}; {gt_valid_path} needs "
                    f"({expected[0]}, {expected[1]}, >=2)")
  return mpii_pckh(predictions[..., :2] + 1.0, ground_truth)
