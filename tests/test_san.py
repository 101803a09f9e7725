"""Tests for jaxpose.models.san: the self-attention block (SAN eq. 1-4) and the SAN model.

Golden numbers for the block come from `fixtures/integral_parity.npz` (`sagan/`), made by
RUNNING heykeetae/Self-Attention-GAN @8714a54 `sagan_models.py: Self_Attn` (the block SAN's
eq. 1-4 restate) under torch 2.13 CPU with C = 16, random weights and gamma = 0.7 on an
input [2, 16, 3, 5] (stored NHWC), by /work/parity/integral/make_fixture.py (outside the
repo: it imports the official code). The same script counted the official pieces'
parameters (`counts/`): SAGAN `Self_Attn(2048)` and integral-human-pose @ad3f875
`DeconvHead(2048, 3, 256, 4, 1, 17, depth_dim)`; the torchvision backbones without fc are
23,508,032 (resnet50) and 58,143,808 (resnet152) parameters.
"""

import functools
from pathlib import Path

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from jaxpose import weights
from jaxpose.codecs import integral
from jaxpose.models import resnet
from jaxpose.models import san
from jaxpose.models import simple_baseline
from jaxpose.models import torch_import

FIXTURE = Path(__file__).parent / "fixtures" / "integral_parity.npz"
BACKBONE_PARAMS = {50: 23_508_032, 152: 58_143_808}  # torchvision resnet{50,152} minus fc
BATCH, HEIGHT, WIDTH = 2, 64, 96
TINY = dict(depth=18, num_deconv_filters=(16, 16, 16))  # ResNet-18: 512 channels after conv5
NUM_KEYPOINTS = 3


def _load_fixture() -> dict[str, np.ndarray]:
  with np.load(FIXTURE) as data:
    return {key: data[key] for key in data.files}


def _param_count(tree) -> int:
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


class SelfAttentionTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.block = san.SelfAttention()
    cls.x = jax.random.normal(jax.random.key(0), (2, 3, 4, 16))
    cls.variables = jax.jit(cls.block.init)(jax.random.key(1), cls.x)

  @chex.variants(with_jit=True, without_jit=True)
  def test_zero_delta_is_exactly_the_identity(self):
    self.assertEqual(float(self.variables["params"]["delta"]), 0.0)  # the init, eq. 4
    out, _ = self.variant(self.block.apply)(self.variables, self.x)
    np.testing.assert_array_equal(out, self.x)

  @chex.variants(with_jit=True, without_jit=True)
  def test_attention_rows_sum_to_one_and_use_no_scaling(self):
    _, attention = self.variant(self.block.apply)(self.variables, self.x)
    chex.assert_shape(attention, (2, 12, 12))
    chex.assert_trees_all_close(attention.sum(-1), jnp.ones((2, 12)), atol=1e-6)
    # Eq. 2-3 by hand: softmax_j <q_i, k_j>, no 1/sqrt(C/8).
    params = self.variables["params"]
    x = np.asarray(self.x, np.float64).reshape(2, 12, 16)
    q = x @ params["query_conv"]["kernel"][0, 0] + params["query_conv"]["bias"]
    k = x @ params["key_conv"]["kernel"][0, 0] + params["key_conv"]["bias"]
    energy = np.einsum("bic,bjc->bij", q, k)
    expected = np.exp(energy - energy.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(attention, expected, atol=1e-5)

  def test_nonzero_delta_adds_attended_values(self):
    params = flax.core.unfreeze(self.variables["params"])
    params["delta"] = jnp.float32(0.5)
    out, attention = self.block.apply({"params": params}, self.x)
    value = self.x @ params["value_conv"]["kernel"][0, 0] + params["value_conv"]["bias"]
    attended = jnp.einsum("bij,bjc->bic", attention, value.reshape(2, 12, 16))
    chex.assert_trees_all_close(out, self.x + 0.5 * attended.reshape(self.x.shape), atol=1e-5)

  def test_matches_official_sagan_block(self):
    fixture = _load_fixture()
    state = {key.removeprefix("sagan/state_dict/"): value for key, value in fixture.items()
             if key.startswith("sagan/state_dict/")}
    params = {name: {"kernel": np.transpose(state[f"{name}.weight"], weights.CONV_AXES[0]),
                     "bias": state[f"{name}.bias"]}
              for name in ("query_conv", "key_conv", "value_conv")}
    params["delta"] = state["gamma"].reshape(())
    out, attention = jax.jit(self.block.apply)({"params": params}, fixture["sagan/x_nhwc"])
    scale = float(np.abs(fixture["sagan/y_nhwc"]).max())
    self.assertLessEqual(float(np.abs(out - fixture["sagan/y_nhwc"]).max()), 1e-4 * scale)
    np.testing.assert_allclose(attention, fixture["sagan/attention"], atol=1e-5)

  def test_bfloat16_compute_keeps_float32_attention(self):
    block = san.SelfAttention(dtype=jnp.bfloat16)
    (out, attention), variables = jax.eval_shape(block.init_with_output, jax.random.key(0),
                                                 self.x.astype(jnp.bfloat16))
    self.assertEqual((out.dtype, attention.dtype), (jnp.bfloat16, jnp.float32))
    self.assertEqual({leaf.dtype for leaf in jax.tree.leaves(variables)}, {jnp.dtype("float32")})

  def test_rejects_channels_not_divisible_by_reduction(self):
    with self.assertRaisesRegex(ValueError, "divisible by reduction=8"):
      self.block.init(jax.random.key(0), jnp.zeros((1, 2, 2, 12)))


class SANRunTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = san.SAN(num_keypoints=NUM_KEYPOINTS, **TINY)
    cls.images = jax.random.normal(jax.random.key(0), (BATCH, HEIGHT, WIDTH, 3))
    # An RBG key: threefry's per-parameter hashing makes this init compile for ~10 s on 2
    # CPU cores; the init distributions are the same.
    # init_with_output also gives the eval-mode outputs, saving a second compile.
    (cls.heatmaps, cls.aux), cls.variables = jax.jit(
        functools.partial(cls.model.init_with_output, train=False))(
            jax.random.key(1, impl="rbg"), cls.images)

  def test_2d_eval_outputs(self):
    heatmaps, aux = self.heatmaps, self.aux
    chex.assert_shape(heatmaps, (BATCH, HEIGHT // 4, WIDTH // 4, NUM_KEYPOINTS))
    chex.assert_shape(aux["coords"], (BATCH, NUM_KEYPOINTS, 2))
    chex.assert_shape(aux["backbone"], (BATCH, HEIGHT // 32, WIDTH // 32, 512))
    chex.assert_shape(aux["attention"], (BATCH, 6, 6))
    self.assertEqual(heatmaps.dtype, jnp.float32)
    # The coordinates are the soft-argmax of the returned logits, inside [-0.5, 0.5).
    chex.assert_trees_all_close(aux["coords"], jax.jit(integral.soft_argmax_2d)(heatmaps),
                                atol=1e-6)
    self.assertTrue(bool(jnp.all(jnp.abs(aux["coords"]) <= 0.5)))

  def test_zero_delta_model_equals_simple_baseline(self):
    # Eq. 4 with delta = 0 at init: SAN is SimpleBaseline with the same weights (same names).
    baseline = simple_baseline.SimpleBaseline(num_keypoints=NUM_KEYPOINTS, **TINY)
    params = {k: v for k, v in self.variables["params"].items() if k != "attention"}
    expected, _ = jax.jit(functools.partial(baseline.apply, train=False))(
        {**self.variables, "params": params}, self.images)
    # Two separately compiled graphs: equal up to float32 rounding of fused kernels, which
    # reached 1.1e-6 of the largest logit on one machine (Intel Xeon, 2026-12-04); a non-zero
    # attention term would differ by O(1) of it.
    np.testing.assert_allclose(self.heatmaps, expected, rtol=0, atol=1e-5 * np.abs(expected).max())

  def test_3d_train_mode_shapes(self):
    # Shapes only (no compile): the 3D path differs from the 2D one by the K * D head and
    # `soft_argmax_3d`, whose numbers tests/test_integral.py checks against the official code.
    model = san.SAN(num_keypoints=NUM_KEYPOINTS, depth_bins=4, **TINY)
    images = jax.ShapeDtypeStruct(self.images.shape, jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               images)
    apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    (heatmaps, aux), updates = jax.eval_shape(apply, variables, images)
    chex.assert_shape(heatmaps, (BATCH, HEIGHT // 4, WIDTH // 4, NUM_KEYPOINTS * 4))
    chex.assert_shape(aux["coords"], (BATCH, NUM_KEYPOINTS, 3))
    self.assertEqual((heatmaps.dtype, aux["coords"].dtype), (jnp.float32, jnp.float32))
    chex.assert_trees_all_equal_shapes(updates["batch_stats"], self.variables["batch_stats"])
    chex.assert_shape(variables["params"]["final_layer"]["kernel"], (1, 1, 16, NUM_KEYPOINTS * 4))

  def test_init_follows_official(self):
    params = self.variables["params"]
    self.assertAlmostEqual(float(jnp.std(params["deconv0"]["kernel"])), 0.001, delta=2e-4)
    np.testing.assert_array_equal(params["final_layer"]["bias"], 0.0)
    # torch Conv2d default: U(+-1/sqrt(fan_in)) for the attention convs, fan_in = 512.
    bound = 1 / np.sqrt(512)
    for name in ("query_conv", "value_conv"):
      for leaf in params["attention"][name].values():
        self.assertLessEqual(float(jnp.abs(leaf).max()), bound)
        self.assertGreater(float(jnp.abs(leaf).max()), 0.9 * bound)


class SANPresetTest(parameterized.TestCase):

  # Official counts: torchvision backbone + integral-human-pose DeconvHead + SAGAN Self_Attn.
  # san_r50 with 17 joints: SimpleBaseline-R50's 33,999,697 + 5,245,441 = 39,245,138 (39.25 M).
  @parameterized.parameters(("san_r50", 50, 1, 39_245_138), ("san_r152", 152, 1, 73_880_914),
                            ("san_r50_3d", 50, 64, 39_520_385),
                            ("san_r152_3d", 152, 72, 74_191_113))
  def test_parameter_counts_equal_official(self, name, depth, depth_bins, expected):
    model = getattr(san, name)(num_keypoints=17)
    images = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               images)
    counts = {key: int(value) for key, value in _load_fixture().items()
              if key.startswith("counts/")}
    official = (BACKBONE_PARAMS[depth] + counts["counts/self_attn_2048"]
                + counts[f"counts/deconv_head_k17_d{depth_bins}"])
    self.assertEqual(official, expected)
    self.assertEqual(_param_count(variables["params"]), expected)
    self.assertEqual(_param_count(variables["params"]["attention"]), 5_245_441)

  def test_imagenet_backbone_slots_under_backbone(self):
    # A torchvision state_dict converted for `resnet.ResNet(depth)` (fc dropped) has exactly
    # the structure and shapes of SAN's "backbone" subtree.
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    backbone = jax.eval_shape(functools.partial(resnet.ResNet(18).init, train=False),
                              jax.random.key(0), images)
    state_dict = {}
    for collection in ("params", "batch_stats"):
      for path, leaf in flax.traverse_util.flatten_dict(backbone[collection]).items():
        axes = weights.CONV_AXES[1] if path[-1] == "kernel" else range(leaf.ndim)
        shape = tuple(leaf.shape[i] for i in axes)
        state_dict[torch_import.torch_key(collection, path)] = np.zeros(shape, np.float32)
    converted = torch_import.simple_baseline_from_torch(state_dict, resnet.ResNet(18))
    model = san.SAN(num_keypoints=17, **TINY)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               images)
    for collection in ("params", "batch_stats"):
      chex.assert_trees_all_equal_shapes(converted[collection], variables[collection]["backbone"])

  def test_rejects_input_not_multiple_of_32(self):
    images = jax.ShapeDtypeStruct((1, 64, 48, 3), jnp.float32)
    with self.assertRaisesRegex(ValueError, "divisible by 32"):
      jax.eval_shape(functools.partial(san.san_r50(num_keypoints=17).init, train=False),
                     jax.random.key(0), images)


if __name__ == "__main__":
  absltest.main()
