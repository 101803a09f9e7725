"""Per-dataset keypoint tables: every per-keypoint fact in one place.

Flip permutations, half-body sets, OKS sigmas and PCK reporting groups are derived from
these tables, never typed as separate index lists (mmpose `configs/_base_/datasets/*.py`
keeps the same facts in one table per dataset). Each table is in its dataset's official
joint order, cited above it.
"""

import dataclasses

import numpy as np

from jaxpose.errors import UserError

# The joint groups of the PCK/PCKh reports (HRNet `MPIIDataset.evaluate`, the LSP
# benchmark's Head ... Ankle columns), in reporting order.
PCK_GROUPS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle")


@dataclasses.dataclass(frozen=True)
class Keypoint:
  name: str
  flip_partner: str  # its own name for keypoints on the body's midline
  upper_body: bool
  oks_sigma: float | None  # None: the dataset defines no OKS
  group: str | None = None  # one of PCK_GROUPS, or None when the joint is in no reported group


@dataclasses.dataclass(frozen=True)
class KeypointSpec:
  """The keypoint layout of one dataset.

  `skeleton` holds 0-based index pairs (the COCO json stores them 1-based; the
  COCO writer adds 1). `root_index` is the joint 3D poses are made relative to
  (Human3.6M's pelvis); None for 2D datasets.
  """
  dataset: str
  keypoints: tuple[Keypoint, ...]
  skeleton: tuple[tuple[int, int], ...]
  root_index: int | None = None

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
    if any(k.oks_sigma is None for k in self.keypoints):
      raise UserError(f"keypoint layout {self.dataset!r} has no OKS sigmas: score it with PCK "
                      "or MPJPE, not COCO AP")
    return np.array([k.oks_sigma for k in self.keypoints], np.float64)

  @property
  def pck_groups(self) -> dict[str, np.ndarray]:
    """Reported group name -> its keypoint indices, in PCK_GROUPS order; {} if none."""
    return {g: np.array([i for i, k in enumerate(self.keypoints) if k.group == g], np.int32)
            for g in PCK_GROUPS if any(k.group == g for k in self.keypoints)}


def _table(rows) -> tuple[Keypoint, ...]:
  return tuple(Keypoint(*row) for row in rows)


def _pairs_by_name(names: tuple[str, ...], pairs) -> tuple[tuple[int, int], ...]:
  position = {name: i for i, name in enumerate(names)}
  return tuple((position[a], position[b]) for a, b in pairs)


# COCO: the person category of `person_keypoints_*.json`; sigmas are pycocotools'
# COCOeval kpt_oks_sigmas. (name, flip partner, upper body, OKS sigma)
_COCO_ROWS = [
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

# The COCO person category's skeleton, converted from its 1-based json form.
_COCO_SKELETON_1_BASED = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7),
    (6, 8), (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5),
    (4, 6), (5, 7))

COCO = KeypointSpec(
    dataset="coco",
    keypoints=_table(_COCO_ROWS),
    skeleton=tuple((a - 1, b - 1) for a, b in _COCO_SKELETON_1_BASED),
)

# MPII: joint ids 0-15 of the MPII Human Pose README ("0 - r ankle, ..., 15 - l wrist"), the
# order of HRNet's `mpii_{train,valid}.json`. No OKS. Upper body as HRNet's `upper_body_ids`
# (thorax and up). Groups as the MPII benchmark's own evaluation (`evalMPII`, which
# `jaxpose.evaluation.mpii_eval` follows): Head is the upper neck and the head top (HRNet's
# `evaluate` uses the head top alone); pelvis and thorax count in no group and not in the Mean.
# (name, flip partner, upper body, OKS sigma, PCK group)
_MPII_ROWS = [
    ("right_ankle", "left_ankle", False, None, "Ankle"),
    ("right_knee", "left_knee", False, None, "Knee"),
    ("right_hip", "left_hip", False, None, "Hip"),
    ("left_hip", "right_hip", False, None, "Hip"),
    ("left_knee", "right_knee", False, None, "Knee"),
    ("left_ankle", "right_ankle", False, None, "Ankle"),
    ("pelvis", "pelvis", False, None, None),
    ("thorax", "thorax", True, None, None),
    ("upper_neck", "upper_neck", True, None, "Head"),
    ("head_top", "head_top", True, None, "Head"),
    ("right_wrist", "left_wrist", True, None, "Wrist"),
    ("right_elbow", "left_elbow", True, None, "Elbow"),
    ("right_shoulder", "left_shoulder", True, None, "Shoulder"),
    ("left_shoulder", "right_shoulder", True, None, "Shoulder"),
    ("left_elbow", "right_elbow", True, None, "Elbow"),
    ("left_wrist", "right_wrist", True, None, "Wrist"),
]
# HRNet `MPIIDataset.parent_ids` as (child, parent), without the pelvis's self-loop.
_MPII_PARENTS = (1, 2, 6, 6, 3, 4, 6, 6, 7, 8, 11, 12, 7, 7, 13, 14)

MPII = KeypointSpec(
    dataset="mpii",
    keypoints=_table(_MPII_ROWS),
    skeleton=tuple((c, p) for c, p in enumerate(_MPII_PARENTS) if c != p),
)

# LSP and LSP-extended: the joint order of both datasets' README ("Right ankle, ..., Neck,
# Head top"), i.e. the rows of `joints.mat`. No OKS. Head = neck and head top, the pair the
# LSP PCK evaluation (bearpaw/eval_pose `demo_eval_lsp.m`) reports together; upper body by
# analogy with MPII (LSP's baselines define none).
_LSP_ROWS = [
    ("right_ankle", "left_ankle", False, None, "Ankle"),
    ("right_knee", "left_knee", False, None, "Knee"),
    ("right_hip", "left_hip", False, None, "Hip"),
    ("left_hip", "right_hip", False, None, "Hip"),
    ("left_knee", "right_knee", False, None, "Knee"),
    ("left_ankle", "right_ankle", False, None, "Ankle"),
    ("right_wrist", "left_wrist", True, None, "Wrist"),
    ("right_elbow", "left_elbow", True, None, "Elbow"),
    ("right_shoulder", "left_shoulder", True, None, "Shoulder"),
    ("left_shoulder", "right_shoulder", True, None, "Shoulder"),
    ("left_elbow", "right_elbow", True, None, "Elbow"),
    ("left_wrist", "right_wrist", True, None, "Wrist"),
    ("neck", "neck", True, None, "Head"),
    ("head_top", "head_top", True, None, "Head"),
]
_LSP_NAMES = tuple(row[0] for row in _LSP_ROWS)

LSP = KeypointSpec(
    dataset="lsp",
    keypoints=_table(_LSP_ROWS),
    # For drawing: the limbs plus the torso outline (LSP defines no skeleton file).
    skeleton=_pairs_by_name(_LSP_NAMES, (
        ("right_ankle", "right_knee"), ("right_knee", "right_hip"), ("left_ankle", "left_knee"),
        ("left_knee", "left_hip"), ("right_hip", "left_hip"), ("right_wrist", "right_elbow"),
        ("right_elbow", "right_shoulder"), ("left_wrist", "left_elbow"),
        ("left_elbow", "left_shoulder"), ("right_shoulder", "left_shoulder"),
        ("right_shoulder", "right_hip"), ("left_shoulder", "left_hip"), ("neck", "head_top"),
        ("right_shoulder", "neck"), ("left_shoulder", "neck"))),
)

# CrowdPose: the person category of `crowdpose_{train,val,test}.json` (names as in the file;
# mmpose renames `head` to `top_head`). Sigmas: crowdpose-api `cocoeval.py`
# (Jeff-sjtu/CrowdPose @86fe5e1), [.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89,
# .89, .79, .79] / 10, written as those divisions so the float64 values are the same bits.
# Upper body as mmpose `crowdpose.py`.
_CROWDPOSE_ROWS = [
    ("left_shoulder", "right_shoulder", True, 0.79 / 10),
    ("right_shoulder", "left_shoulder", True, 0.79 / 10),
    ("left_elbow", "right_elbow", True, 0.72 / 10),
    ("right_elbow", "left_elbow", True, 0.72 / 10),
    ("left_wrist", "right_wrist", True, 0.62 / 10),
    ("right_wrist", "left_wrist", True, 0.62 / 10),
    ("left_hip", "right_hip", False, 1.07 / 10),
    ("right_hip", "left_hip", False, 1.07 / 10),
    ("left_knee", "right_knee", False, 0.87 / 10),
    ("right_knee", "left_knee", False, 0.87 / 10),
    ("left_ankle", "right_ankle", False, 0.89 / 10),
    ("right_ankle", "left_ankle", False, 0.89 / 10),
    ("head", "head", True, 0.79 / 10),
    ("neck", "neck", True, 0.79 / 10),
]
_CROWDPOSE_NAMES = tuple(row[0] for row in _CROWDPOSE_ROWS)

CROWDPOSE = KeypointSpec(
    dataset="crowdpose",
    keypoints=_table(_CROWDPOSE_ROWS),
    # The file's own `skeleton` is COCO's (indices up to 17), so drawing uses mmpose's links.
    skeleton=_pairs_by_name(_CROWDPOSE_NAMES, (
        ("left_ankle", "left_knee"), ("left_knee", "left_hip"), ("right_ankle", "right_knee"),
        ("right_knee", "right_hip"), ("left_hip", "right_hip"), ("left_shoulder", "left_hip"),
        ("right_shoulder", "right_hip"), ("left_shoulder", "right_shoulder"),
        ("left_shoulder", "left_elbow"), ("right_shoulder", "right_elbow"),
        ("left_elbow", "left_wrist"), ("right_elbow", "right_wrist"), ("head", "neck"),
        ("right_shoulder", "neck"), ("left_shoulder", "neck"))),
)

# Human3.6M: the 17 joints of the RLE code (Jeff-sjtu/res-loglikelihood-regression @203dc31
# `rlepose/datasets/h36m.py` `joints_name`, without the thorax it appends), i.e. the order of
# `keypoints_world` in its json. Root: the pelvis. Flip pairs and upper body (torso and up)
# as that file's `joint_pairs` and `upper_body_ids`. No OKS, no PCK groups.
_H36M_ROWS = [
    ("pelvis", "pelvis", False, None),
    ("right_hip", "left_hip", False, None),
    ("right_knee", "left_knee", False, None),
    ("right_ankle", "left_ankle", False, None),
    ("left_hip", "right_hip", False, None),
    ("left_knee", "right_knee", False, None),
    ("left_ankle", "right_ankle", False, None),
    ("torso", "torso", True, None),
    ("neck", "neck", True, None),
    ("nose", "nose", True, None),
    ("head", "head", True, None),
    ("left_shoulder", "right_shoulder", True, None),
    ("left_elbow", "right_elbow", True, None),
    ("left_wrist", "right_wrist", True, None),
    ("right_shoulder", "left_shoulder", True, None),
    ("right_elbow", "left_elbow", True, None),
    ("right_wrist", "left_wrist", True, None),
]

H36M = KeypointSpec(
    dataset="h36m",
    keypoints=_table(_H36M_ROWS),
    # RLE's `skeleton` (child, parent) without the appended thorax's bone.
    skeleton=((1, 0), (2, 1), (3, 2), (4, 0), (5, 4), (6, 5), (7, 0), (8, 7), (9, 8), (10, 9),
              (11, 7), (12, 11), (13, 12), (14, 7), (15, 14), (16, 15)),
    root_index=0,
)

SPECS = {spec.dataset: spec for spec in (COCO, MPII, LSP, CROWDPOSE, H36M)}


def get_spec(name: str) -> KeypointSpec:
  if name not in SPECS:
    raise KeyError(f"unknown keypoint layout {name!r}; known: {sorted(SPECS)}")
  return SPECS[name]


# Joints two layouts call by different names, as (layout, name) pairs; `layout_map` matches
# everything else by identical name. Sources:
#   MPII upper_neck = LSP neck: bearpaw/pytorch-pose @c1eb49b `miscs/gen_lsp.m` stores LSP's
#     "Neck" as MPII's "upper neck" (and head top as head top) to train on LSP + MPII;
#   MPII upper_neck = H36M neck, MPII head_top = H36M head: JimmySuen/integral-human-pose
#     @ad3f875 `common_pytorch/dataset/hm36.py` `s_mpii_2_hm36_jt`, which feeds H36M's torso
#     and nose from nothing. Its `s_coco_2_hm36_jt` maps COCO by name alone (the nose and the
#     12 limb joints), so COCO needs no entry here.
_SAME_JOINT = (
    (("mpii", "upper_neck"), ("lsp", "neck")),
    (("mpii", "upper_neck"), ("h36m", "neck")),
    (("mpii", "head_top"), ("h36m", "head")),
)


def layout_map(from_spec: KeypointSpec, to_spec: KeypointSpec) -> np.ndarray:
  """[K_to] int32: the joint of `from_spec` that feeds each joint of `to_spec`, -1 where
  `from_spec` has none. Joints match by name, or through the cited `_SAME_JOINT` pairs."""
  position = {name: i for i, name in enumerate(from_spec.names)}
  source_name = {}  # target name -> the source's name for that joint, where they differ
  for a, b in _SAME_JOINT:
    for (from_layout, from_name), (to_layout, to_name) in ((a, b), (b, a)):
      if (from_layout, to_layout) == (from_spec.dataset, to_spec.dataset):
        source_name[to_name] = from_name
  return np.array([position.get(source_name.get(name, name), -1) for name in to_spec.names],
                  np.int32)
