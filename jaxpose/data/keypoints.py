"""Per-dataset keypoint tables: every per-keypoint fact in one place.

Flip permutations, half-body sets and OKS sigmas are derived from these tables,
never typed as separate index lists (mmpose `configs/_base_/datasets/coco.py`
keeps the same facts in one table).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Keypoint:
  name: str
  flip_partner: str  # its own name for keypoints on the body's midline
  upper_body: bool
  oks_sigma: float


@dataclasses.dataclass(frozen=True)
class KeypointSpec:
  """The keypoint layout of one dataset.

  `skeleton` holds 0-based index pairs (the COCO json stores them 1-based; the
  COCO writer adds 1).
  """
  dataset: str
  keypoints: tuple[Keypoint, ...]
  skeleton: tuple[tuple[int, int], ...]

  @property
  def num_keypoints(self) -> int:
    return len(self.keypoints)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(k.name for k in self.keypoints)

  @property
  def flip_index(self) -> np.ndarray:
    """flip_index[k] is the keypoint that k becomes after a horizontal flip."""
    position = {name: i for i, name in enumerate(self.names)}
    return np.array([position[k.flip_partner] for k in self.keypoints], np.int32)

  @property
  def upper_body_ids(self) -> np.ndarray:
    return np.array([i for i, k in enumerate(self.keypoints) if k.upper_body], np.int32)

  @property
  def lower_body_ids(self) -> np.ndarray:
    return np.array([i for i, k in enumerate(self.keypoints) if not k.upper_body], np.int32)

  @property
  def oks_sigmas(self) -> np.ndarray:
    return np.array([k.oks_sigma for k in self.keypoints], np.float64)


def _coco_keypoints() -> tuple[Keypoint, ...]:
  # (name, flip partner, upper body, OKS sigma); sigmas are pycocotools' COCOeval kpt_oks_sigmas.
  rows = [
      ("nose", "nose", True, 0.026),
      ("left_eye", "right_eye", True, 0.025),
      ("right_eye", "left_eye", True, 0.025),
      ("left_ear", "right_ear", True, 0.035),
      ("right_ear", "left_ear", True, 0.035),
      ("left_shoulder", "right_shoulder", True, 0.079),
      ("right_shoulder", "left_shoulder", True, 0.079),
      ("left_elbow", "right_elbow", True, 0.072),
      ("right_elbow", "left_elbow", True, 0.072),
      ("left_wrist", "right_wrist", True, 0.062),
      ("right_wrist", "left_wrist", True, 0.062),
      ("left_hip", "right_hip", False, 0.107),
      ("right_hip", "left_hip", False, 0.107),
      ("left_knee", "right_knee", False, 0.087),
      ("right_knee", "left_knee", False, 0.087),
      ("left_ankle", "right_ankle", False, 0.089),
      ("right_ankle", "left_ankle", False, 0.089),
  ]
  return tuple(Keypoint(*row) for row in rows)


# The COCO person category's skeleton, converted from its 1-based json form.
_COCO_SKELETON_1_BASED = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7),
    (6, 8), (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5),
    (4, 6), (5, 7))

COCO = KeypointSpec(
    dataset="coco",
    keypoints=_coco_keypoints(),
    skeleton=tuple((a - 1, b - 1) for a, b in _COCO_SKELETON_1_BASED),
)

SPECS = {"coco": COCO}


def get_spec(name: str) -> KeypointSpec:
  if name not in SPECS:
    raise KeyError(f"unknown keypoint layout {name!r}; known: {sorted(SPECS)}")
  return SPECS[name]
