"""LSP and LSP-extended readers on `joints.mat` files in both official layouts.

The files are written with scipy.io.savemat as the datasets ship them: LSP `joints`
float64 [3, 14, 2000] with row 3 = 1 for OCCLUDED, LSP-extended [14, 3, N] with column 3
= 1 for VISIBLE. The CPM centres and scales are golden numbers from the official MATLAB
code run in Octave on the same joints (tests/fixtures/lsp_cpm_center_scale.npz; recipe
in /work/parity/lsp/make_fixture.py).
"""

import os

import chex
import cv2
import numpy as np
import pytest
import scipy.io

from conftest import REPO
from hash_weights import hash_uniform
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import lsp
from jaxpose.errors import DatasetError

SPEC = keypoints_lib.LSP
FIXTURE = REPO / "tests" / "fixtures" / "lsp_cpm_center_scale.npz"
NUM_LSPET = 300

# A frontal standing pose in LSP joint order, in units of body height (x right, y down).
_TEMPLATE = np.array([
    (-0.10, 1.00), (-0.10, 0.75), (-0.10, 0.50), (0.10, 0.50), (0.10, 0.75), (0.10, 1.00),
    (-0.30, 0.45), (-0.25, 0.30), (-0.15, 0.15), (0.15, 0.15), (0.25, 0.30), (0.30, 0.45),
    (0.00, 0.12), (0.00, 0.00)])


def leeds_joints(num_images: int, layout: str, seed: int) -> np.ndarray:
  """Deterministic joints as the file stores them: "lsp" [3, 14, N] (1 = occluded) or
  "lspet" [14, 3, N] (1 = visible). Also used by the fixture script."""
  joints = np.zeros((num_images, 14, 3))
  for n in range(num_images):
    u = hash_uniform(n, (3 + 28 + 14,), seed).astype(np.float64)
    height = 100 + 60 * u[0]
    offset = np.array([110 + 30 * u[1], 120 + 30 * u[2] - 0.5 * height])
    joints[n, :, :2] = _TEMPLATE * height + offset + 0.06 * height * u[3:31].reshape(14, 2)
    flag_u = u[31:]
    if layout == "lsp":
      joints[n, :, 2] = (flag_u > 0.6) & (np.arange(14) < 12)  # ~20% occluded, never the head
    else:
      visible = (flag_u > -0.6) | (np.arange(14) >= 12)  # neck and head always visible
      # Invisible joints sit inside the visible ones' hull, so CPM's synthetic pelvis and
      # thorax (which gen_lsp.m counts for LSP-extended even then) never widen the extent.
      joints[n, ~visible, :2] = joints[n, visible, :2].mean(axis=0)
      joints[n, :, 2] = visible
  joints = np.round(joints, 2)
  return np.transpose(joints, (2, 1, 0)) if layout == "lsp" else np.transpose(joints, (1, 2, 0))


def lsp_image_wh(number: int) -> tuple[int, int]:
  """The (width, height) the tests give LSP image `number` (1-based)."""
  return 20 + number % 7, 30 + number % 5


def _write_jpeg(path, width: int, height: int) -> None:
  """Hard-links one black JPEG per size into place: creating thousands of files costs
  milliseconds each on this machine's disk, a link microseconds."""
  template = path.parent.parent / "templates" / f"{width}x{height}.jpg"
  if not template.exists():
    template.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(template), np.zeros((height, width, 3), np.uint8))
  os.link(template, path)


def write_lsp(root, joints=None, numbers=range(1, 2001)):
  (root / "images").mkdir(parents=True, exist_ok=True)
  for number in numbers:
    _write_jpeg(root / "images" / f"im{number:04d}.jpg", *lsp_image_wh(number))
  joints = leeds_joints(2000, "lsp", seed=1) if joints is None else joints
  scipy.io.savemat(str(root / "joints.mat"), {"joints": joints})
  return root / "joints.mat"


def write_lspet(root, joints=None):
  (root / "images").mkdir(parents=True, exist_ok=True)
  joints = leeds_joints(NUM_LSPET, "lspet", seed=2) if joints is None else joints
  for number in range(1, joints.shape[2] + 1):
    _write_jpeg(root / "images" / f"im{number:05d}.jpg", 4, 4)
  scipy.io.savemat(str(root / "joints.mat"), {"joints": joints})
  return root / "joints.mat"


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(FIXTURE))


def test_fixture_was_made_from_these_joints(golden):
  chex.assert_trees_all_close(
      (leeds_joints(2000, "lsp", 1).sum(), leeds_joints(NUM_LSPET, "lspet", 2).sum()),
      (golden["lsp_joints_sum"], golden["lspet_joints_sum"]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("split, numbers", [("train", range(1, 1001)), ("test", range(1001, 2001))])
def test_lsp_split_flags_and_cpm_crop(tmp_path, golden, split, numbers):
  joints = leeds_joints(2000, "lsp", seed=1)
  source = lsp.LspPersons(write_lsp(tmp_path, joints), tmp_path / "images", SPEC, split)
  assert len(source) == 1000
  assert [r["image_id"] for r in source.records] == list(numbers)
  assert source[0]["image_path"].endswith(f"images/im{numbers[0]:04d}.jpg")
  columns = np.array(numbers) - 1
  keypoints = np.stack([r["keypoints"] for r in source.records])
  chex.assert_shape(keypoints, (1000, 14, 3))
  chex.assert_trees_all_close(keypoints[..., :2], joints[:2].T[columns], atol=1e-5)
  # LSP's flag 1 means occluded: v = 1 (labelled, occluded); 0 means visible: v = 2.
  np.testing.assert_array_equal(keypoints[..., 2], np.where(joints[2].T[columns] == 1, 1, 2))
  assert 0.1 < np.mean(keypoints[..., 2] == 1) < 0.3
  centers = np.stack([r["center_xy"] for r in source.records])
  scales = np.stack([r["scale_wh"] for r in source.records])
  np.testing.assert_array_equal(np.stack([r["image_wh"] for r in source.records]),
                                [lsp_image_wh(n) for n in numbers])
  chex.assert_trees_all_close(centers, golden["lsp_center"][columns], rtol=1e-6)
  # pytorch-pose crops 200 * (1.4375 * scale_provided) pixels.
  expected = 200 * 1.4375 * golden["lsp_scale"][columns]
  chex.assert_trees_all_close(scales, np.stack([expected, expected], axis=1), rtol=1e-6)


def test_lsp_extended_flags_centres_and_scales(tmp_path, golden):
  joints = leeds_joints(NUM_LSPET, "lspet", seed=2)
  source = lsp.LspExtendedPersons(write_lspet(tmp_path, joints), tmp_path / "images", SPEC)
  assert len(source) == NUM_LSPET
  assert source[-1]["image_path"].endswith(f"images/im{NUM_LSPET:05d}.jpg")
  keypoints = np.stack([r["keypoints"] for r in source.records])
  visible = np.transpose(joints, (2, 0, 1))[..., 2] == 1
  # LSP-extended's flag 1 means visible: v = 2; 0 means not located: v = 0 and x, y = 0.
  np.testing.assert_array_equal(keypoints[..., 2], np.where(visible, 2, 0))
  np.testing.assert_array_equal(keypoints[~visible][:, :2], 0)
  chex.assert_trees_all_close(keypoints[visible][:, :2],
                              np.transpose(joints, (2, 0, 1))[visible][:, :2], atol=1e-5)
  chex.assert_trees_all_close(np.stack([r["center_xy"] for r in source.records]),
                              golden["lspet_center"], rtol=1e-6)
  chex.assert_trees_all_close(np.stack([r["scale_wh"] for r in source.records])[:, 0],
                              200 * 1.4375 * golden["lspet_scale"], rtol=1e-6)


def test_the_same_numbers_read_with_the_other_flag_meaning_differ(tmp_path):
  """One array saved in each layout: the readers must disagree on every flag."""
  lsp_joints = leeds_joints(2000, "lsp", seed=1)
  write_lsp(tmp_path / "lsp", lsp_joints, numbers=range(1, 1001))
  as_lspet = np.transpose(lsp_joints, (1, 0, 2))  # the same numbers, [14, 3, 2000]
  write_lspet(tmp_path / "lspet", as_lspet)
  a = lsp.LspPersons(tmp_path / "lsp" / "joints.mat", tmp_path / "lsp" / "images", SPEC, "train")
  b = lsp.LspExtendedPersons(tmp_path / "lspet" / "joints.mat", tmp_path / "lspet" / "images", SPEC)
  b_by_id = {r["image_id"]: r for r in b.records}
  compared = [r for r in a.records[:100] if r["image_id"] in b_by_id]
  assert len(compared) > 50  # the rest have too few "visible" joints for a CPM scale
  for r in compared:
    visible_a = r["keypoints"][:, 2] == 2
    visible_b = b_by_id[r["image_id"]]["keypoints"][:, 2] == 2
    np.testing.assert_array_equal(visible_a, ~visible_b)


def test_cpm_scale_by_hand():
  """Joints on a line so that every CPM limb of image 1 is 10 px, image 2 the same at twice
  the size, image 3 as image 1 with the right ankle moved to x = 400. Limb medians are then
  1 (3 votes, 1 outlier), the 75% quantile of the limbs is the neck-head length L, and the
  scale is max(41/35 * extent / 304, L / 35)."""
  x = {13: 0, 12: 10, 2: 20, 5: 20, 8: 20, 11: 20, 9: 20, 1: 30, 3: 30, 7: 30, 10: 30,
       0: 40, 4: 40, 6: 40}
  xy = np.zeros((3, 14, 2))
  for k, value in x.items():
    xy[:, k, 0] = value
  xy[1] *= 2
  xy[2, 0, 0] = 400
  scales = lsp.cpm_scale(xy, np.ones((3, 14), bool))
  chex.assert_trees_all_close(scales, np.array([10 / 35, 20 / 35, 41 / 35 * 400 / 304]), rtol=1e-12)


def test_matlab_quantile_equals_numpy_hazen():
  values = hash_uniform(0, (40, 9), seed=5).astype(np.float64)
  values[hash_uniform(1, (40, 9), seed=5) > 0.3] = np.nan
  values[0] = np.nan
  expected = [np.quantile(row[~np.isnan(row)], 0.75, method="hazen") if (~np.isnan(row)).any()
              else np.nan for row in values]
  chex.assert_trees_all_close(lsp._hazen_quantile(values, 0.75), np.array(expected), rtol=1e-12)


def test_images_without_a_crop_scale_are_left_out(tmp_path):
  joints = leeds_joints(10, "lspet", 2)
  joints[:, 2, 2] = 0
  joints[13, 2, 2] = 1  # image 3: only the head top is visible, no limb and no extent
  source = lsp.LspExtendedPersons(write_lspet(tmp_path, joints), tmp_path / "images", SPEC)
  assert [r["image_id"] for r in source.records] == [1, 2, 4, 5, 6, 7, 8, 9, 10]


def test_missing_file_is_named(tmp_path):
  with pytest.raises(DatasetError, match="nope.mat: joints file not found"):
    lsp.LspPersons(tmp_path / "nope.mat", tmp_path, SPEC, "train")


def test_not_a_mat_file_is_named(tmp_path):
  (tmp_path / "joints.mat").write_text("hello")
  with pytest.raises(DatasetError, match="joints.mat: not a MATLAB .mat file"):
    lsp.LspExtendedPersons(tmp_path / "joints.mat", tmp_path, SPEC)


def test_missing_variable_is_named(tmp_path):
  scipy.io.savemat(str(tmp_path / "joints.mat"), {"points": np.zeros((3, 14, 2000))})
  with pytest.raises(DatasetError,
                     match=r"joints.mat: no variable 'joints' \(found \['points'\]\)"):
    lsp.LspPersons(tmp_path / "joints.mat", tmp_path, SPEC, "train")


def test_layouts_are_told_apart(tmp_path):
  scipy.io.savemat(str(tmp_path / "joints.mat"), {"joints": leeds_joints(20, "lspet", 2)})
  with pytest.raises(DatasetError, match=r"'joints' has shape \[14, 3, 20\], expected "
                     r"\[3, 14, 2000\] \(a file in LSP-extended's \[14, 3, N\] layout"):
    lsp.LspPersons(tmp_path / "joints.mat", tmp_path, SPEC, "train")
  scipy.io.savemat(str(tmp_path / "joints.mat"), {"joints": leeds_joints(2000, "lsp", 1)})
  with pytest.raises(DatasetError, match=r"expected \[14, 3, N\] \(a file in LSP's"):
    lsp.LspExtendedPersons(tmp_path / "joints.mat", tmp_path, SPEC)


def test_lsp_image_count_and_keypoint_layout_are_checked(tmp_path):
  scipy.io.savemat(str(tmp_path / "joints.mat"), {"joints": leeds_joints(1000, "lsp", 1)})
  with pytest.raises(DatasetError, match="has 1000 images, LSP has 2000"):
    lsp.LspPersons(tmp_path / "joints.mat", tmp_path, SPEC, "train")
  scipy.io.savemat(str(tmp_path / "joints.mat"), {"joints": np.zeros((16, 3, 5))})
  with pytest.raises(DatasetError, match="holds 16 joints per image, layout 'lsp' expects 14"):
    lsp.LspExtendedPersons(tmp_path / "joints.mat", tmp_path, SPEC)


def test_bad_flag_names_image_and_joint(tmp_path):
  joints = leeds_joints(10, "lspet", 2)
  joints[3, 2, 6] = 2
  scipy.io.savemat(str(tmp_path / "joints.mat"), {"joints": joints})
  with pytest.raises(DatasetError, match="image 7 joint 3: flag 2, expected 0 or 1"):
    lsp.LspExtendedPersons(tmp_path / "joints.mat", tmp_path, SPEC)


def test_missing_image_is_named(tmp_path):
  path = write_lspet(tmp_path, leeds_joints(10, "lspet", 2))
  (tmp_path / "images" / "im00004.jpg").unlink()
  with pytest.raises(DatasetError, match="im00004.jpg: image of .*joints.mat is missing on disk"):
    lsp.LspExtendedPersons(path, tmp_path / "images", SPEC)
  path = write_lsp(tmp_path / "lsp", numbers=range(1, 1001))
  with pytest.raises(DatasetError, match="im1001.jpg: image of .* is missing on disk"):
    lsp.LspPersons(path, tmp_path / "lsp" / "images", SPEC, "test")


def test_unknown_split_is_named(tmp_path):
  with pytest.raises(DatasetError, match="LSP split 'val'; known: \\['test', 'train'\\]"):
    lsp.LspPersons(tmp_path / "joints.mat", tmp_path, SPEC, "val")
