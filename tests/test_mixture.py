"""Dataset mixtures: layout maps, mixed train batches, 2D data in the integral family, config.

Golden layout maps come from the official code: integral-human-pose @ad3f875
`common_pytorch/dataset/hm36.py` (`s_mpii_2_hm36_jt`, `s_coco_2_hm36_jt`, `s_hm36_2_mpii_jt`,
whose 18th joint, the thorax, jaxpose's 17-joint table does not have) and, for MPII -> LSP,
the joint numbers of the two READMEs (MPII "8 - upper neck, 9 - head top, 10 - r wrist ...",
LSP "... Neck, Head top"), as pytorch-pose's `miscs/gen_lsp.m` pairs them. The mixed datasets
are written by the test in the official formats (HRNet's MPII json, LSP-extended's
joints.mat, the synthetic Human3.6M in RLE's json) with the reader tests' writers.
"""

from absl import flags
import cv2
import ml_collections
import numpy as np
import pytest
import scipy.io

from configs import common
from configs import samkr_coco
from configs import sadinet_mpii
from configs import san_h36m
from jaxpose import config_check
from jaxpose.data import integral_pipeline
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import lsp
from jaxpose.data import mixture
from jaxpose.data import pipeline
from jaxpose.errors import UserError
from test_lsp_reader import write_lspet
from test_mpii_reader import write_mpii

MPII, LSP, COCO, H36M = (keypoints_lib.MPII, keypoints_lib.LSP, keypoints_lib.COCO,
                         keypoints_lib.H36M)
MPII_FILL = 200  # the MPII images' grey level: a crop centred on an MPII person shows it


# ----------------------------------------------------------------------------- layout maps


def test_layout_maps_equal_the_official_tables():
  # integral-human-pose's tables, the thorax (their joint 17) dropped / read as "none".
  chex_equal = np.testing.assert_array_equal
  chex_equal(keypoints_lib.layout_map(MPII, H36M),
             [6, 2, 1, 0, 3, 4, 5, -1, 8, -1, 9, 13, 14, 15, 12, 11, 10])
  chex_equal(keypoints_lib.layout_map(COCO, H36M),
             [-1, 12, 14, 16, 11, 13, 15, -1, -1, 0, -1, 5, 7, 9, 6, 8, 10])
  chex_equal(keypoints_lib.layout_map(H36M, MPII),
             [3, 2, 1, 4, 5, 6, 0, -1, 8, 10, 16, 15, 14, 11, 12, 13])
  # By hand from the READMEs: legs 0-5 alike, LSP wrists..shoulders = MPII 10-15, neck = upper
  # neck (8), head top = head top (9); LSP has no pelvis (6) or thorax (7).
  chex_equal(keypoints_lib.layout_map(MPII, LSP), [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 8, 9])
  chex_equal(keypoints_lib.layout_map(LSP, MPII),
             [0, 1, 2, 3, 4, 5, -1, -1, 12, 13, 6, 7, 8, 9, 10, 11])
  chex_equal(keypoints_lib.layout_map(LSP, LSP), np.arange(14))


@pytest.mark.parametrize("source", sorted(keypoints_lib.SPECS))
@pytest.mark.parametrize("target", sorted(keypoints_lib.SPECS))
def test_remapping_commutes_with_flipping(source, target):
  """Remap-then-flip (with the target's pairs) = flip-then-remap, the mixture's premise."""
  from_spec, to_spec = keypoints_lib.SPECS[source], keypoints_lib.SPECS[target]
  index = keypoints_lib.layout_map(from_spec, to_spec)
  for k in np.flatnonzero(index >= 0):
    assert index[to_spec.flip_index[k]] == from_spec.flip_index[index[k]], (
        to_spec.names[k], from_spec.names[index[k]])


# ----------------------------------------------------------------------------- datasets


def _mpii_entries(num: int = 12) -> list[dict]:
  """HRNet-json persons centred in 64x64 images (1-based pixels), every joint visible,
  pelvis and thorax near the centre, limbs within 20 px."""
  rng = np.random.default_rng(3)
  entries = []
  for i in range(num):
    joints = np.array([33.0, 31.0]) + rng.uniform(-20, 20, (16, 2))
    joints[MPII.names.index("pelvis")] = (33, 34)
    joints[MPII.names.index("thorax")] = (33, 28)
    entries.append(dict(image=f"{i + 1:09d}.jpg", center=[33.0, 30.0], scale=0.25,
                        joints=np.round(joints, 2).tolist(), joints_vis=[1] * 16))
  return entries


def _write_mpii(root) -> None:
  entries = _mpii_entries()
  write_mpii(root, entries)
  for entry in entries:  # grey, not write_mpii's 4x4 black: the batches tell MPII apart by it
    cv2.imwrite(str(root / "images" / entry["image"]), np.full((64, 64, 3), MPII_FILL, np.uint8))


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  base = tmp_path_factory.mktemp("mixture")
  _write_mpii(base / "mpii")
  write_lspet(base / "lspet")
  return base


def _shows_mpii_fill(images: np.ndarray) -> np.ndarray:
  """[B] bool: the crop's centre 4x4 pixels are the MPII images' grey (LSP-extended's crops
  are black, the synthetic Human3.6M frames' coloured)."""
  h, w = images.shape[1:3]
  centre = images[:, h // 2 - 2:h // 2 + 2, w // 2 - 2:w // 2 + 2].astype(int)
  return np.all(np.abs(centre - MPII_FILL) <= 3, axis=(1, 2, 3))


def _config(module, arg: str, edit) -> ml_collections.ConfigDict:
  data = module.get_config(arg).to_dict()
  edit(data)
  return ml_collections.ConfigDict(data)


def _mpii_with_lspet(roots, **overrides) -> ml_collections.ConfigDict:
  """SADI-Net's smoke run on MPII (weight 3) mixed with LSP-extended (weight 1)."""
  def edit(d):
    d["data"].update(source="mpii", root=str(roots / "mpii"), weight=3.0, mixture=dict(
        lspet=common.mixture_component("lsp_extended", "lsp", root="../lspet").to_dict()))
    d["input"].update(overrides)
  return _config(sadinet_mpii, "smoke", edit)


def _batches(config, count: int) -> list[dict]:
  source = pipeline.open_split(config, "train")
  iterator = iter(pipeline.train_dataset(config, source, 8, keys=pipeline.RLE_TRAIN_KEYS))
  return [next(iterator) for _ in range(count)]


def test_a_remapped_record_keeps_the_source_coordinates_of_each_joint(roots):
  source = lsp.LspExtendedPersons(roots / "lspet" / "joints.mat", roots / "lspet" / "images", LSP)
  raw = scipy.io.loadmat(str(roots / "lspet" / "joints.mat"))["joints"]  # [14, 3, N], 1 = visible
  remap = mixture.remap_for(LSP, MPII, "data.mixture.lspet")
  for record in (source[0], source[7]):
    out = remap.map(record)
    n = record["annotation_id"]
    for lsp_name, mpii_name in (("neck", "upper_neck"), ("head_top", "head_top"),
                                ("left_wrist", "left_wrist"), ("right_ankle", "right_ankle")):
      k, j = LSP.names.index(lsp_name), MPII.names.index(mpii_name)
      visible = raw[k, 2, n] == 1
      assert out["keypoints"][j, 2] == (2 if visible else 0)  # LSP-extended: 1 = visible
      if visible:
        np.testing.assert_allclose(out["keypoints"][j, :2], raw[k, :2, n], atol=1e-4)
    for missing in ("pelvis", "thorax"):
      np.testing.assert_array_equal(out["keypoints"][MPII.names.index(missing)], [0, 0, 0])


def test_mixed_batches_hold_the_weights_shares_remapped(roots):
  config = _mpii_with_lspet(roots)
  batches = _batches(config, 6)
  pelvis, thorax = MPII.names.index("pelvis"), MPII.names.index("thorax")
  num_mpii = 0
  for batch in batches:
    assert batch["keypoints"].shape == (8, 16, 3) and batch["heatmaps"].shape == (8, 16, 16, 16)
    assert not batch["skipped"].any()
    is_mpii = _shows_mpii_fill(batch["image"])
    assert 0 < is_mpii.sum() < 8  # both datasets in every batch
    num_mpii += int(is_mpii.sum())
    # LSP-extended has no pelvis or thorax: never trained; MPII's (centred) always.
    np.testing.assert_array_equal(batch["target_weight"][~is_mpii][:, [pelvis, thorax]], 0)
    np.testing.assert_array_equal(batch["keypoints"][~is_mpii][:, [pelvis, thorax], 2], 0)
    np.testing.assert_array_equal(batch["target_weight"][is_mpii][:, pelvis], 1)
  assert abs(num_mpii - 48 * 3 / 4) <= 1  # weights 3 : 1


def test_mixed_batches_are_deterministic_for_any_worker_count(roots):
  flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; jaxpose.launch parses them
  first, again = _batches(_mpii_with_lspet(roots), 2), _batches(_mpii_with_lspet(roots), 2)
  workers = _batches(_mpii_with_lspet(roots, num_workers=2), 2)
  for other in (again, workers):
    for a, b in zip(first, other):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_2d_samples_in_the_integral_family_have_zero_depth_weight(roots, tmp_path_factory):
  def edit(d):
    d["data"].update(mixture=dict(
        mpii=common.mixture_component("mpii", "mpii", root=str(roots / "mpii")).to_dict()))
    d["data"]["synthetic"]["cache_dir"] = str(tmp_path_factory.mktemp("san_cache"))
  config = _config(san_h36m, "smoke", edit)
  source = integral_pipeline.open_split(config, "train")
  iterator = iter(integral_pipeline.train_dataset(config, source, 4))
  torso, nose = H36M.names.index("torso"), H36M.names.index("nose")
  for _ in range(3):
    batch = next(iterator)
    is_mpii = _shows_mpii_fill(batch["image"])
    assert is_mpii.sum() == 2  # weights 1 : 1
    weights = batch["target_weight"]
    np.testing.assert_array_equal(weights[is_mpii][:, :, 2], 0)  # no depth from 2D data
    np.testing.assert_array_equal(weights[is_mpii][:, [torso, nose]], 0)  # MPII has neither
    np.testing.assert_array_equal(weights[~is_mpii], 1)  # Human3.6M: every joint, with depth


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("module, arg", [
    (san_h36m, "synthetic,mix=mpii"), (san_h36m, "mix=mpii"), (san_h36m, "mix=mpii_coco"),
    (sadinet_mpii, "dataset=lsp"), (sadinet_mpii, "dataset=lsp,variant=hourglass")])
def test_mixture_variants_validate(module, arg):
  config = module.get_config(arg)
  config.data.root = config.data.root or "/data/main"  # the component roots are relative to it
  config_check.validate(config, device_count=1, process_count=1)
  assert config.data.mixture  # each of these variants mixes


def _error(edit, module=sadinet_mpii, arg="dataset=lsp") -> str:
  def edit_with_root(d):
    d["data"]["root"] = "/data/lsp"
    edit(d)
  with pytest.raises(UserError) as caught:
    config_check.validate(_config(module, arg, edit_with_root), device_count=1, process_count=1)
  return str(caught.value)


@pytest.mark.parametrize("edit, key, phrase", [
    (lambda d: d["data"]["mixture"]["mpii"].update(weight="2"), "data.mixture.mpii.weight",
     "not a float"),
    (lambda d: d["data"]["mixture"]["mpii"].update(wieght=2.0), "data.mixture.mpii.wieght",
     "did you mean 'weight'"),
    (lambda d: d["data"]["mixture"]["mpii"].update(weight=0.0), "data.mixture.mpii.weight", "> 0"),
    (lambda d: d["data"]["mixture"]["mpii"].update(source="mpi"), "data.mixture.mpii.source",
     "unknown 'mpi'"),
    (lambda d: d["data"]["mixture"]["mpii"].update(keypoints="coco"),
     "data.mixture.mpii.keypoints", "'mpii' layout"),
    (lambda d: d["data"]["mixture"]["mpii"].pop("root"), "data.mixture.mpii.root", "missing"),
    (lambda d: d["data"].update(weight=-1.0), "data.weight", "> 0"),
])
def test_mixture_mistakes_name_their_key(edit, key, phrase):
  message = _error(edit)
  assert f"config key {key}:" in message and phrase in message, message


def test_relative_component_root_needs_a_main_root():
  message = _error(lambda d: d["data"].update(root=""))
  assert "data.mixture.lsp_extended.root" in message and "data.root" in message, message


def test_bottomup_configs_have_no_mixture():
  def edit(d):
    d["data"]["mixture"] = {}
  with pytest.raises(UserError, match="config key data.mixture: unknown key"):
    config_check.validate(_config(samkr_coco, "smoke", edit), device_count=1, process_count=1)
