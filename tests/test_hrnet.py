"""Tests for jaxpose.models.hrnet and its PyTorch checkpoint import.

Golden numbers in `fixtures/hrnet_tiny.npz` come from the official `pose_hrnet`
(leoxiaobin/deep-high-resolution-net.pytorch @6f69e46, `lib/models/pose_hrnet.py`, run
unchanged under torch 2.13 on CPU): width 6, stages (modules, branches, blocks) = (1, 2, 2),
(2, 3, 1), (2, 4, 1), K = 17, every conv weight/bias and BatchNorm weight/bias/running
mean/running var randomised, seed 20190225, input [2, 3, 96, 64]. It holds the input, the
full state_dict (`state_dict/<torch key>`), the eval- and train-mode heatmaps, and for the
DEKR concatenation the extra stage-4 fuse layers of a multi-scale last module
(`dekr_extra/<torch key>`, built with the official `_make_stage(..., multi_scale_output=
True)` and sharing all other weights) plus the output of HRNet/DEKR @7a30313's literal
`torch.cat([y0, F.upsample(y1, size, mode='bilinear'), ...])`. Arrays are stored NHWC. The
script imports the official code, so it is kept outside the repo.
"""

import functools
import re
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxpose.models import hrnet
from jaxpose.models import hrnet_torch_import

FIXTURE = Path(__file__).parent / "fixtures" / "hrnet_tiny.npz"
TINY_STAGES = (hrnet.StageSpec(1, 2, 1), hrnet.StageSpec(1, 3, 1), hrnet.StageSpec(1, 4, 1))
BATCH, HEIGHT, WIDTH = 2, 96, 64  # H, W must be multiples of 32; 96x64 gives a 3x2 branch 3
NUM_KEYPOINTS = 5
# Eval parity: max |jax - torch| <= 1e-4 * max |torch| (float32, different conv kernels).
RELATIVE_TOLERANCE = 1e-4


def _load_fixture() -> dict[str, np.ndarray]:
  with np.load(FIXTURE) as data:
    return {key: data[key] for key in data.files}


def _with_prefix(fixture: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  return {key[len(prefix):]: value for key, value in fixture.items() if key.startswith(prefix)}


def _assert_close_to_scale(actual, expected):
  scale = float(np.abs(expected).max())
  error = float(np.abs(np.asarray(actual, np.float32) - expected).max())
  assert error <= RELATIVE_TOLERANCE * scale, f"max abs error {error} vs output scale {scale}"


class HRNetShapeTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = hrnet.HRNet(width=8, num_keypoints=NUM_KEYPOINTS, stages=TINY_STAGES)
    cls.images = jax.random.normal(jax.random.key(0), (BATCH, HEIGHT, WIDTH, 3))
    # An RBG key: threefry's per-parameter unrolled hashing makes this init compile for
    # ~15 s on 2 CPU cores, RBG for ~5 s. The init distribution is the same.
    cls.variables = jax.jit(functools.partial(cls.model.init, train=False))(
        jax.random.key(1, impl="rbg"), cls.images)

  @chex.variants(with_jit=True, without_jit=True)
  def test_eval_shapes(self):
    apply = self.variant(functools.partial(self.model.apply, train=False))
    heatmaps, aux = apply(self.variables, self.images)
    chex.assert_shape(heatmaps, (BATCH, HEIGHT // 4, WIDTH // 4, NUM_KEYPOINTS))
    chex.assert_shape(aux["features"], (BATCH, HEIGHT // 4, WIDTH // 4, 8))
    self.assertEqual(heatmaps.dtype, jnp.float32)
    chex.assert_tree_all_finite(heatmaps)

  def test_train_mode_updates_batch_stats(self):
    apply = jax.jit(functools.partial(self.model.apply, train=True, mutable=["batch_stats"]))
    (heatmaps, _), updates = apply(self.variables, self.images)
    chex.assert_shape(heatmaps, (BATCH, HEIGHT // 4, WIDTH // 4, NUM_KEYPOINTS))
    chex.assert_trees_all_equal_shapes(updates["batch_stats"], self.variables["batch_stats"])
    old_mean = self.variables["batch_stats"]["backbone"]["bn1"]["mean"]
    new_mean = updates["batch_stats"]["backbone"]["bn1"]["mean"]
    self.assertGreater(float(jnp.abs(new_mean - old_mean).max()), 0.0)

  def test_official_init(self):
    params = self.variables["params"]
    kernel = params["backbone"]["stage4_module0"]["branch3_block0"]["conv1"]["kernel"]
    self.assertAlmostEqual(float(jnp.std(kernel)), 0.001, delta=2e-4)
    chex.assert_trees_all_equal(params["final_layer"]["bias"], jnp.zeros(NUM_KEYPOINTS))
    chex.assert_trees_all_equal(params["backbone"]["bn1"]["scale"], jnp.ones(64))

  def test_backbone_branches_and_concat(self):
    backbone = hrnet.HRNetBackbone(width=8, stages=TINY_STAGES, multi_scale_output=True)
    features = jax.eval_shape(
        lambda x: backbone.init_with_output(jax.random.key(0), x, train=False)[0], self.images)
    self.assertEqual([f.shape for f in features],
                     [(BATCH, HEIGHT // 4 // 2**b, WIDTH // 4 // 2**b, 8 * 2**b) for b in range(4)])
    concat = jax.eval_shape(hrnet.concat_branches, features)
    chex.assert_shape(concat, (BATCH, HEIGHT // 4, WIDTH // 4, 8 + 16 + 32 + 64))

  def test_bfloat16_compute_keeps_float32_params_and_output(self):
    model = hrnet.HRNet(width=8, num_keypoints=NUM_KEYPOINTS, stages=TINY_STAGES,
                        dtype=jnp.bfloat16)
    (heatmaps, aux), variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0), self.images)
    self.assertEqual({leaf.dtype for leaf in jax.tree.leaves(variables)}, {jnp.dtype("float32")})
    self.assertEqual(heatmaps.dtype, jnp.float32)
    self.assertEqual(aux["features"].dtype, jnp.bfloat16)

  def test_rejects_size_not_multiple_of_32(self):
    with self.assertRaisesRegex(ValueError, "divisible by 32.*64, 48"):
      self.model.apply(self.variables, jnp.zeros((1, 64, 48, 3)), train=False)

  def test_official_parameter_counts(self):
    # pose_hrnet_w32_256x192 / w48: 28,536,113 and 63,595,745 parameters (the official
    # torch models' sum of numel; arXiv:1902.09212 Table 1 rounds to 28.5M and 63.6M).
    for preset, expected in ((hrnet.hrnet_w32, 28_536_113), (hrnet.hrnet_w48, 63_595_745)):
      init = functools.partial(preset(num_keypoints=17).init, train=False)
      variables = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 256, 192, 3)))
      self.assertEqual(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])), expected)


class OfficialParityTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fixture = _load_fixture()
    cls.state_dict = _with_prefix(cls.fixture, "state_dict/")

  def test_inferred_model_matches_fixture_config(self):
    model = hrnet_torch_import.infer_model(self.state_dict)
    self.assertEqual((model.width, model.num_keypoints), (6, 17))
    self.assertEqual(tuple(model.stages), ((1, 2, 2), (2, 3, 1), (2, 4, 1)))

  @chex.variants(with_jit=True, without_jit=True)
  def test_eval_heatmaps_match_official(self):
    model = hrnet_torch_import.infer_model(self.state_dict)
    variables = hrnet_torch_import.hrnet_from_torch(self.state_dict)
    heatmaps, _ = self.variant(functools.partial(model.apply, train=False))(
        variables, self.fixture["images_nhwc"])
    _assert_close_to_scale(heatmaps, self.fixture["heatmaps_nhwc"])

  def test_train_mode_heatmaps_match_official(self):
    # Train mode normalises with the batch's (biased) statistics in both frameworks.
    model = hrnet_torch_import.infer_model(self.state_dict)
    variables = hrnet_torch_import.hrnet_from_torch(self.state_dict)
    apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    (heatmaps, _), _ = apply(variables, self.fixture["images_nhwc"])
    _assert_close_to_scale(heatmaps, self.fixture["heatmaps_train_nhwc"])

  def test_scanned_modules_import_and_match_unrolled(self):
    # The fixture has two modules per stage, too few to scan. A third module in stages 3 and
    # 4 makes three, of which `scan_modules` stacks the first two (stage{s}_modules/), the
    # last keeping its own name, as the official keys: stage 3's copies module 1; stage 4's
    # last module fuses into branch 0 only, so module 0 is copied to 1 and 1 moves to 2.
    state_dict = dict(self.state_dict)
    copies = {("3", "1"): "2", ("4", "1"): "2", ("4", "0"): "1"}
    for key, value in self.state_dict.items():
      if (match := re.fullmatch(r"stage(\d)\.(\d)\.(.*)", key)) and match.group(1, 2) in copies:
        state_dict[f"stage{match[1]}.{copies[match.group(1, 2)]}.{match[3]}"] = value
    model = hrnet_torch_import.infer_model(state_dict)
    self.assertEqual((tuple(model.stages), model.scan_modules), (((1, 2, 2), (3, 3, 1), (3, 4, 1)),
                                                                  True))
    unrolled_model = model.clone(scan_modules=False)
    scanned = hrnet_torch_import.hrnet_from_torch(state_dict, model)
    unrolled = hrnet_torch_import.hrnet_from_torch(state_dict, unrolled_model)
    backbone = scanned["params"]["backbone"]
    self.assertNotIn("stage4_module1", backbone)
    chex.assert_trees_all_equal(  # module 1 of stage 4 is row 1 of the stack, from stage4.1.*
        backbone["stage4_modules"]["stage4_module"]["fuse3_from0_down2"]["conv"]["kernel"][1],
        state_dict["stage4.1.fuse_layers.3.0.2.0.weight"].transpose(2, 3, 1, 0))
    outputs = []
    for net, variables in ((model, scanned), (unrolled_model, unrolled)):
      apply = jax.jit(functools.partial(net.apply, train=True, mutable=["batch_stats"]))
      (heatmaps, _), updates = apply(variables, self.fixture["images_nhwc"])
      outputs.append((heatmaps, updates["batch_stats"]))
    (scanned_heatmaps, scanned_stats), (unrolled_heatmaps, unrolled_stats) = outputs
    _assert_close_to_scale(scanned_heatmaps, np.asarray(unrolled_heatmaps))
    chex.assert_trees_all_close(
        scanned_stats, hrnet.backbone_scanned_layout({"s": unrolled_stats}, model)["s"],
        atol=1e-5, rtol=1e-5)

  def test_dekr_concat_matches_official(self):
    model = hrnet_torch_import.infer_model(self.state_dict)
    backbone = hrnet.HRNetBackbone(model.width, model.stages, multi_scale_output=True)
    state_dict = {**self.state_dict, **_with_prefix(self.fixture, "dekr_extra/")}
    del state_dict["final_layer.weight"], state_dict["final_layer.bias"]
    variables = hrnet_torch_import.hrnet_from_torch(state_dict, backbone)

    @jax.jit
    def features_concat(variables, images):
      return hrnet.concat_branches(backbone.apply(variables, images, train=False))

    concat = features_concat(variables, self.fixture["images_nhwc"])
    _assert_close_to_scale(concat, self.fixture["dekr_concat_nhwc"])


class TorchImportTest(absltest.TestCase):

  def test_key_map_by_hand(self):
    cases = {
        ("params", ("backbone", "conv1", "kernel")): "conv1.weight",
        ("batch_stats", ("backbone", "bn2", "var")): "bn2.running_var",
        ("params", ("backbone", "layer1_block0", "downsample", "conv", "kernel")):
            "layer1.0.downsample.0.weight",
        ("params", ("backbone", "transition1", "branch0", "bn", "scale")):
            "transition1.0.1.weight",
        ("params", ("backbone", "transition3", "branch3_down0", "conv", "kernel")):
            "transition3.3.0.0.weight",
        ("params", ("backbone", "stage3_module2", "branch1_block3", "bn2", "bias")):
            "stage3.2.branches.1.3.bn2.bias",
        ("batch_stats", ("backbone", "stage4_module0", "fuse0_from3", "bn", "mean")):
            "stage4.0.fuse_layers.0.3.1.running_mean",
        ("params", ("backbone", "stage4_module0", "fuse3_from0_down2", "conv", "kernel")):
            "stage4.0.fuse_layers.3.0.2.0.weight",
        ("params", ("final_layer", "bias")): "final_layer.bias",
    }
    for (collection, path), expected in cases.items():
      self.assertEqual(hrnet_torch_import.torch_key(collection, path), expected)

  def test_error_lists_missing_extra_and_misshaped_keys(self):
    state_dict = _with_prefix(_load_fixture(), "state_dict/")
    model = hrnet_torch_import.infer_model(state_dict)
    del state_dict["stage3.1.fuse_layers.2.0.1.0.weight"]
    state_dict["transition2.2.0.1.running_var"] = np.ones(5, np.float32)
    state_dict["stage9.0.unknown.weight"] = np.zeros(1, np.float32)
    with self.assertRaises(ValueError) as raised:
      hrnet_torch_import.hrnet_from_torch(state_dict, model)
    message = str(raised.exception)
    self.assertIn("1 missing: stage3.1.fuse_layers.2.0.1.0.weight", message)
    self.assertIn("1 extra: stage9.0.unknown.weight", message)
    self.assertIn("1 mis-shaped: transition2.2.0.1.running_var: got (5,), expected (24,)",
                  message)
    self.assertNotIn("num_batches_tracked", message)


if __name__ == "__main__":
  absltest.main()
