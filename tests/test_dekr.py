"""Tests for jaxpose.models.dekr and its PyTorch checkpoint import.

Golden numbers in `fixtures/dekr_tiny.npz` come from the official DEKR model
(HRNet/DEKR @7a30313, `lib/models/hrnet_dekr.py` with `conv_block.py` and `conv_module.py`,
run unchanged under torch 2.13 on CPU by /work/parity/dekr/make_fixture.py). torchvision
does not import there, so `torchvision.ops.DeformConv2d` was replaced (a stub module in
`sys.modules`) by a pure-tensor-op torch reference written from torchvision's C++ CPU kernel
and checked against literal loops first (the chain is in `tests/test_deform_conv.py`).
Tiny config: HRNet width 4 (stages 2-4 with one module of one BasicBlock per branch),
K = 3, heatmap head 8 channels with 1 BasicBlock, offset head 4 channels per keypoint with
2 AdaptBlocks, 1x1 final convs. Every conv weight/bias and BatchNorm weight/bias/running
mean/running var randomised (the AdaptBlock matrix convs biased to the identity so offsets
are ~1 px), seed 20210619, input [2, 64, 64, 3] (NHWC in the file). Stored: the full
state_dict (`state_dict/<torch key>`, incl. `regular_matrix` and `num_batches_tracked`);
eval-mode heatmaps and offsets; the same weights with DILATION_RATE 2 in both heads; and
train-mode (batch statistics) outputs.
"""

import functools
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxpose.models import dekr
from jaxpose.models import dekr_torch_import
from jaxpose.models import hrnet

FIXTURE = Path(__file__).parent / "fixtures" / "dekr_tiny.npz"
TINY = dict(width=4, heatmap_channels=8, num_keypoints=3, offset_channels_per_keypoint=4,
            stages=(hrnet.StageSpec(1, 2, 1), hrnet.StageSpec(1, 3, 1), hrnet.StageSpec(1, 4, 1)))
# Eval parity: max |jax - torch| <= 1e-4 * max |torch| (float32, different conv kernels).
RELATIVE_TOLERANCE = 1e-4


def _fast_compile_jit(fn):
  """jit without XLA's backend optimisations: they take ~2/3 of this model's ~12 s compile
  on 2 cores and change the outputs only by float rounding (tests, not training)."""
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


def _load_fixture() -> dict[str, np.ndarray]:
  with np.load(FIXTURE) as data:
    return {key: data[key] for key in data.files}


def _state_dict(fixture: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  prefix = "state_dict/"
  return {key[len(prefix):]: value for key, value in fixture.items() if key.startswith(prefix)}


def _assert_close_to_scale(actual, expected, what: str):
  scale = float(np.abs(expected).max())
  error = float(np.abs(np.asarray(actual, np.float32) - expected).max())
  assert error <= RELATIVE_TOLERANCE * scale, f"{what}: max abs error {error} vs scale {scale}"


def _parameter_count(model: dekr.DEKR) -> int:
  init = functools.partial(model.init, train=False)
  variables = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


class DEKRShapeTest(chex.TestCase):

  def test_output_shapes_and_dtypes(self):
    for dtype in (jnp.float32, jnp.bfloat16):
      model = dekr.DEKR(**TINY, dtype=dtype)
      ((heatmaps, offsets), aux), variables = jax.eval_shape(
          functools.partial(model.init_with_output, train=False), jax.random.key(0),
          jnp.zeros((2, 96, 64, 3)))
      chex.assert_shape(heatmaps, (2, 24, 16, 4))  # K + 1: the centre map last
      chex.assert_shape(offsets, (2, 24, 16, 6))  # (x, y) per keypoint
      chex.assert_shape(aux["features"], (2, 24, 16, 4 + 8 + 16 + 32))
      self.assertEqual((heatmaps.dtype, offsets.dtype), (jnp.float32, jnp.float32))
      self.assertEqual(aux["features"].dtype, dtype)
      self.assertEqual({leaf.dtype for leaf in jax.tree.leaves(variables)}, {jnp.dtype("float32")})

  def test_rejects_size_not_multiple_of_32(self):
    with self.assertRaisesRegex(ValueError, "divisible by 32"):
      jax.eval_shape(functools.partial(dekr.DEKR(**TINY).init, train=False), jax.random.key(0),
                     jnp.zeros((1, 64, 48, 3)))

  def test_official_parameter_counts(self):
    # The official torch models (hrnet_dekr.py built from experiments/coco/w32/w32_4x_reg03_
    # bs10_512_adam_lr1e-3_coco_x140.yaml and w48/w48_4x_reg03_bs5_640_adam_lr1e-3_coco_x140
    # .yaml, sum of parameter numel, buffers excluded): 29,561,182 and 65,684,590; the DEKR
    # README rounds to 29.6M and 65.7M.
    self.assertEqual(_parameter_count(dekr.dekr_w32()), 29_561_182)
    self.assertEqual(_parameter_count(dekr.dekr_w48()), 65_684_590)


class AdaptBlockTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_affine_offsets_equal_official_formula(self):
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    translation = rng.standard_normal((2, 3, 5, 2)).astype(np.float32)
    # conv_block.AdaptBlock, transcribed: M (row-major 2x2) @ regular_matrix - regular_matrix,
    # transposed to (tap, (dy, dx)), then translation (dy, dx) added to even / odd channels.
    regular = np.array([[-1, -1, -1, 0, 0, 0, 1, 1, 1], [-1, 0, 1, -1, 0, 1, -1, 0, 1]],
                       np.float32)
    expected = matrix.reshape(-1, 2, 2) @ regular - regular
    expected = expected.transpose(0, 2, 1).reshape(2, 3, 5, 18)
    expected[..., 0::2] += translation[..., :1]
    expected[..., 1::2] += translation[..., 1:]
    offsets = self.variant(dekr.affine_offsets)(matrix, translation)
    chex.assert_trees_all_close(offsets, expected, atol=1e-6)
    # M = I, t = 0: the regular grid, no deformation.
    identity = np.broadcast_to(np.array([1, 0, 0, 1], np.float32), (1, 1, 1, 4))
    chex.assert_trees_all_equal(dekr.affine_offsets(identity, np.zeros((1, 1, 1, 2))),
                                np.zeros((1, 1, 1, 18)))

  def test_official_init(self):
    # init_weights: the matrix and translation convs are zero, so M = 0 and every tap samples
    # the centre pixel: the block starts as BN(1x1 conv with the taps' summed kernel) + x.
    block = dekr.AdaptBlock()
    x = np.random.default_rng(1).standard_normal((1, 6, 6, 5)).astype(np.float32)
    out, variables = jax.jit(functools.partial(block.init_with_output, train=False))(
        jax.random.key(0, impl="rbg"), x)
    params = variables["params"]
    for name in ("transform_matrix_conv", "translation_conv"):
      chex.assert_trees_all_equal(params[name], jax.tree.map(jnp.zeros_like, params[name]))
    kernel = params["adapt_conv"]["kernel"]
    self.assertLessEqual(float(jnp.abs(kernel).max()), 1 / np.sqrt(9 * 5))  # torchvision's
    summed = np.einsum("bhwc,co->bhwo", x, np.asarray(kernel).sum(axis=(0, 1)))
    expected = np.maximum(summed / np.sqrt(1 + 1e-5) + x, 0)  # BN at init: scale 1, var 1
    chex.assert_trees_all_close(out, expected, atol=1e-5)


class OfficialParityTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fixture = _load_fixture()
    cls.state_dict = _state_dict(cls.fixture)
    cls.model = dekr_torch_import.infer_model(cls.state_dict)
    cls.variables = dekr_torch_import.convert(cls.state_dict)

  def test_inferred_model_matches_fixture_config(self):
    self.assertEqual(self.model, dekr.DEKR(**TINY, heatmap_blocks=1, offset_blocks=2,
                                           final_conv_kernel=1))

  def test_eval_outputs_match_official(self):
    (heatmaps, offsets), _ = _fast_compile_jit(functools.partial(self.model.apply, train=False))(
        self.variables, self.fixture["images_nhwc"])
    _assert_close_to_scale(heatmaps, self.fixture["heatmaps_nhwc"], "heatmaps")
    _assert_close_to_scale(offsets, self.fixture["offsets_nhwc"], "offsets")

  def test_dilated_heads_match_official(self):
    # Same weights, DILATION_RATE 2 in both heads (not stored in a state_dict).
    model = self.model.clone(heatmap_dilation=2, offset_dilation=2)
    (heatmaps, offsets), _ = _fast_compile_jit(functools.partial(model.apply, train=False))(
        self.variables, self.fixture["images_nhwc"])
    _assert_close_to_scale(heatmaps, self.fixture["heatmaps_dilated_nhwc"], "heatmaps")
    _assert_close_to_scale(offsets, self.fixture["offsets_dilated_nhwc"], "offsets")

  def test_train_mode_outputs_match_official(self):
    # Train mode normalises with the batch's (biased) statistics in both frameworks. Both
    # parameter layouts: keypoint branches scanned (the default, stacked under
    # offset_branches/) and unrolled (the official per-keypoint tree).
    for model in (self.model, self.model.clone(scan_branches=False)):
      variables = dekr_torch_import.convert(self.state_dict, model)
      params = variables["params"]
      self.assertEqual("offset_branches" in params, model.scan_branches)
      final = (params["offset_branches"]["offset_final"]["kernel"][1] if model.scan_branches
               else params["offset_final1"]["kernel"])  # keypoint 1's, [O, I, 1, 1] in torch
      chex.assert_trees_all_equal(final, self.state_dict["offset_final_layer.1.weight"]
                                  .transpose(2, 3, 1, 0))
      apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
      ((heatmaps, offsets), _), updates = _fast_compile_jit(apply)(
          variables, self.fixture["images_nhwc"])
      _assert_close_to_scale(heatmaps, self.fixture["heatmaps_train_nhwc"], "heatmaps")
      _assert_close_to_scale(offsets, self.fixture["offsets_train_nhwc"], "offsets")
      chex.assert_trees_all_equal_shapes(updates["batch_stats"], variables["batch_stats"])


class TorchImportTest(absltest.TestCase):

  def test_key_map_by_hand(self):
    cases = {
        ("params", ("backbone", "stage2_module0", "branch0_block0", "conv1", "kernel")):
            "stage2.0.branches.0.0.conv1.weight",
        ("batch_stats", ("backbone", "stage4_module2", "fuse3_from0_down2", "bn", "mean")):
            "stage4.2.fuse_layers.3.0.2.1.running_mean",
        ("params", ("transition_heatmap_conv", "kernel")): "transition_heatmap.0.weight",
        ("batch_stats", ("transition_offset_bn", "var")): "transition_offset.1.running_var",
        ("params", ("head_heatmap_block0", "bn2", "scale")): "head_heatmap.0.0.bn2.weight",
        ("params", ("head_heatmap_final", "bias")): "head_heatmap.1.bias",
        ("params", ("offset_feature16_block1", "adapt_conv", "kernel")):
            "offset_feature_layers.16.1.adapt_conv.weight",
        ("params", ("offset_feature3_block0", "transform_matrix_conv", "bias")):
            "offset_feature_layers.3.0.transform_matrix_conv.bias",
        ("batch_stats", ("offset_feature0_block1", "bn", "mean")):
            "offset_feature_layers.0.1.bn.running_mean",
        ("params", ("offset_final12", "kernel")): "offset_final_layer.12.weight",
    }
    for (collection, path), expected in cases.items():
      self.assertEqual(dekr_torch_import.torch_key(collection, path), expected)

  def test_error_lists_every_bad_key(self):
    state_dict = _state_dict(_load_fixture())
    model = dekr_torch_import.infer_model(state_dict)
    del state_dict["offset_feature_layers.1.0.translation_conv.bias"]
    del state_dict["offset_feature_layers.0.0.regular_matrix"]
    state_dict["transition_heatmap.1.running_var"] = np.ones(5, np.float32)
    state_dict["head_heatmap.2.weight"] = np.zeros(1, np.float32)
    state_dict["offset_feature_layers.2.1.regular_matrix"] = np.zeros((2, 9), np.float32)
    with self.assertRaises(ValueError) as raised:
      dekr_torch_import.convert(state_dict, model)
    message = str(raised.exception)
    self.assertIn("1 missing: offset_feature_layers.1.0.translation_conv.bias", message)
    self.assertIn("1 extra: head_heatmap.2.weight", message)
    self.assertIn("1 mis-shaped: transition_heatmap.1.running_var: got (5,), expected (8,)",
                  message)
    self.assertIn("missing: offset_feature_layers.0.0.regular_matrix", message)
    self.assertIn("wrong value: offset_feature_layers.2.1.regular_matrix", message)
    self.assertNotIn("num_batches_tracked", message)

  def test_infer_model_checks_keypoint_counts(self):
    state_dict = _state_dict(_load_fixture())
    del state_dict["offset_final_layer.2.weight"]
    with self.assertRaisesRegex(ValueError, "3 keypoints .* 2 offset_final_layer"):
      dekr_torch_import.infer_model(state_dict)
    with self.assertRaisesRegex(ValueError, "lacks .*'head_heatmap.1.weight'"):
      dekr_torch_import.infer_model({"transition1.0.0.weight": np.zeros((4, 256, 3, 3))})


if __name__ == "__main__":
  absltest.main()
