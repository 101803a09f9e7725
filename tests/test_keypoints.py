"""Keypoint specs against the official code's own index lists (typed here from the cited
files, independently of the tables in jaxpose/data/keypoints.py)."""

import numpy as np
import pytest

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import UserError

ALL = [keypoints_lib.get_spec(name) for name in ("coco", "mpii", "lsp", "crowdpose", "h36m")]


def _flip_index_from_pairs(num_keypoints: int, pairs) -> list[int]:
  index = list(range(num_keypoints))
  for a, b in pairs:
    index[a], index[b] = b, a
  return index


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.dataset)
def test_flip_is_an_involution_that_swaps_left_and_right(spec):
  flip = spec.flip_index
  np.testing.assert_array_equal(flip[flip], np.arange(spec.num_keypoints))
  for k, partner in enumerate(flip):
    swapped = spec.names[k].replace("left", "@").replace("right", "left").replace("@", "right")
    assert spec.names[partner] == swapped


@pytest.mark.parametrize("spec", ALL, ids=lambda s: s.dataset)
def test_skeleton_indexes_the_table(spec):
  pairs = np.array(spec.skeleton)
  assert pairs.min() >= 0 and pairs.max() < spec.num_keypoints
  assert all(a != b for a, b in spec.skeleton)
  assert len(set(spec.names)) == spec.num_keypoints


@pytest.mark.parametrize("name, num_keypoints, pairs, upper", [
    # HRNet lib/dataset/coco.py and mpii.py (@6f69e46): flip_pairs, upper_body_ids.
    ("coco", 17, [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]],
     (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)),
    ("mpii", 16, [[0, 5], [1, 4], [2, 3], [10, 15], [11, 14], [12, 13]],
     (7, 8, 9, 10, 11, 12, 13, 14, 15)),
    # LSP README order: right/left ankle 0/5, knee 1/4, hip 2/3, wrist 6/11, elbow 7/10,
    # shoulder 8/9; neck 12 and head top 13 on the midline.
    ("lsp", 14, [[0, 5], [1, 4], [2, 3], [6, 11], [7, 10], [8, 9]],
     (6, 7, 8, 9, 10, 11, 12, 13)),
    # mmpose configs/_base_/datasets/crowdpose.py: swaps and type='upper'.
    ("crowdpose", 14, [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]],
     (0, 1, 2, 3, 4, 5, 12, 13)),
    # RLE rlepose/datasets/h36m.py (@203dc31): joint_pairs and upper_body_ids (minus the
    # thorax it appends as joint 17).
    ("h36m", 17, [[1, 4], [2, 5], [3, 6], [14, 11], [15, 12], [16, 13]],
     (7, 8, 9, 10, 11, 12, 13, 14, 15, 16)),
])
def test_flip_pairs_and_upper_body_equal_the_official_lists(name, num_keypoints, pairs, upper):
  spec = keypoints_lib.get_spec(name)
  assert spec.num_keypoints == num_keypoints
  np.testing.assert_array_equal(spec.flip_index, _flip_index_from_pairs(num_keypoints, pairs))
  np.testing.assert_array_equal(spec.upper_body_ids, upper)
  np.testing.assert_array_equal(np.sort(np.concatenate([spec.upper_body_ids, spec.lower_body_ids])),
                                np.arange(num_keypoints))


def test_official_joint_orders():
  # MPII README joint ids; HRNet's gt_valid.mat `dataset_joints` names in the same order.
  mpii_ids = ["rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck", "head",
              "rwri", "relb", "rsho", "lsho", "lelb", "lwri"]
  short = {"right": "r", "left": "l", "ankle": "ank", "knee": "kne", "hip": "hip",
           "wrist": "wri", "elbow": "elb", "shoulder": "sho"}
  for name, mpii_id in zip(keypoints_lib.MPII.names, mpii_ids):
    side, _, part = name.partition("_")
    expected = short[side] + short[part] if side in short and part in short else None
    assert expected in (None, mpii_id), (name, mpii_id)
  assert keypoints_lib.MPII.names[6:10] == ("pelvis", "thorax", "upper_neck", "head_top")
  # crowdpose_val.json's person category, verbatim.
  assert keypoints_lib.CROWDPOSE.names == (
      "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
      "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
      "right_ankle", "head", "neck")
  # RLE h36m.py joints_name (first 17), lower-cased and spelled out.
  rle = ("Pelvis", "R_Hip", "R_Knee", "R_Ankle", "L_Hip", "L_Knee", "L_Ankle", "Torso", "Neck",
         "Nose", "Head", "L_Shoulder", "L_Elbow", "L_Wrist", "R_Shoulder", "R_Elbow", "R_Wrist")
  spelled = tuple(n.lower().replace("r_", "right_").replace("l_", "left_") for n in rle)
  assert keypoints_lib.H36M.names == spelled
  assert keypoints_lib.H36M.root_index == 0 and keypoints_lib.COCO.root_index is None


def test_oks_sigmas():
  # crowdpose-api cocoeval.py: np.array([.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87,
  # .89, .89, .79, .79]) / 10.0
  official = np.array(
      [.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79]) / 10.0
  np.testing.assert_array_equal(keypoints_lib.CROWDPOSE.oks_sigmas, official)  # the same bits
  assert keypoints_lib.COCO.oks_sigmas[0] == 0.026
  for name in ("mpii", "lsp", "h36m"):
    with pytest.raises(UserError, match=f"keypoint layout '{name}' has no OKS sigmas"):
      keypoints_lib.get_spec(name).oks_sigmas


def test_pck_groups():
  mpii = keypoints_lib.MPII.pck_groups
  assert list(mpii) == ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle"]
  # The MPII benchmark's evalMPII: Head = upper neck (8) and head top (9) (HRNet's evaluate
  # uses the head top alone); the other pairs are right/left joints.
  expected = {"Head": [8, 9], "Shoulder": [12, 13], "Elbow": [11, 14], "Wrist": [10, 15],
              "Hip": [2, 3], "Knee": [1, 4], "Ankle": [0, 5]}
  for group, indices in expected.items():
    np.testing.assert_array_equal(mpii[group], indices)
  lsp = keypoints_lib.LSP.pck_groups
  np.testing.assert_array_equal(lsp["Head"], [12, 13])
  np.testing.assert_array_equal(lsp["Wrist"], [6, 11])
  assert keypoints_lib.CROWDPOSE.pck_groups == {} and keypoints_lib.H36M.pck_groups == {}


def test_unknown_layout_lists_the_known_ones():
  with pytest.raises(KeyError, match=r"unknown keypoint layout 'posetrack'; known: \['coco', "
                     r"'crowdpose', 'h36m', 'lsp', 'mpii'\]"):
    keypoints_lib.get_spec("posetrack")
