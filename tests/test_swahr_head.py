"""Tests for SWAHR's scale head on DEKR / SAMKR (`dekr.DEKR(scale_head=True)`).

The head is SWAHR's `conv_scale_layers[0]` (greatlog/SWAHR-HumanPose @7555826,
`lib/models/pose_higher_hrnet.py`): Conv2d(C_in, C, 1) with bias, BatchNorm2d(C), ReLU,
Conv2d(C, C, 9, padding=4, groups=C) with bias, the last conv's weight and bias set to 0 by
`init_weights`. Golden numbers are hand computations: a numpy transcription of those four
layers from torch-layout weights, and the SWAHR loss's derivative in closed form. The
model-level tests reuse the official tiny DEKR of `fixtures/dekr_tiny.npz` (see
`tests/test_dekr.py`), extended with scale-head keys under SWAHR's names drawn here (seeded).
"""

import functools
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxpose.losses import bottomup
from jaxpose.models import dekr
from jaxpose.models import dekr_torch_import
from jaxpose.models import hrnet
from jaxpose.models import samkr

FIXTURE = Path(__file__).parent / "fixtures" / "dekr_tiny.npz"
TINY = dict(width=4, heatmap_channels=8, num_keypoints=3, offset_channels_per_keypoint=4,
            stages=(hrnet.StageSpec(1, 2, 1), hrnet.StageSpec(1, 3, 1), hrnet.StageSpec(1, 4, 1)))
BN_EPS = 1e-5  # torch BatchNorm2d's default


def _fast_compile_jit(fn):
  """jit without XLA's backend optimisations (as test_dekr.py: they dominate a tiny DEKR's
  compile time and change outputs only by float rounding)."""
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


def _random_torch_head(in_channels: int, maps: int, seed: int) -> dict[str, np.ndarray]:
  """SWAHR's conv_scale_layers.0 state_dict entries, every value random (variances > 0)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.normal(0, 0.5, shape).astype(np.float32)
  return {
      "conv_scale_layers.0.0.weight": normal(maps, in_channels, 1, 1),
      "conv_scale_layers.0.0.bias": normal(maps),
      "conv_scale_layers.0.1.weight": rng.uniform(0.5, 1.5, maps).astype(np.float32),
      "conv_scale_layers.0.1.bias": normal(maps),
      "conv_scale_layers.0.1.running_mean": normal(maps),
      "conv_scale_layers.0.1.running_var": rng.uniform(0.5, 1.5, maps).astype(np.float32),
      "conv_scale_layers.0.1.num_batches_tracked": np.array(7, np.int64),
      "conv_scale_layers.0.3.weight": normal(maps, 1, 9, 9),
      "conv_scale_layers.0.3.bias": normal(maps),
  }


def _reference_head(x: np.ndarray, sd: dict[str, np.ndarray], train: bool = False) -> np.ndarray:
  """SWAHR's scale branch by hand, from torch-layout weights; x [B, h, w, C_in]. BN uses the
  running statistics, or with `train` the batch's mean and biased variance (as torch)."""
  key = "conv_scale_layers.0."
  y = np.einsum("bhwi,oi->bhwo", x, sd[key + "0.weight"][:, :, 0, 0]) + sd[key + "0.bias"]
  mean, var = sd[key + "1.running_mean"], sd[key + "1.running_var"]
  if train:
    mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
  y = (y - mean) / np.sqrt(var + BN_EPS) * sd[key + "1.weight"] + sd[key + "1.bias"]
  y = np.pad(np.maximum(y, 0), ((0, 0), (4, 4), (4, 4), (0, 0)))
  depthwise = sd[key + "3.weight"]  # [C, 1, 9, 9]: channel c sees only its own input c
  height, width = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (depthwise.shape[0],), np.float64)
  for i in range(9):
    for j in range(9):
      out += y[:, i:i + height, j:j + width, :] * depthwise[:, 0, i, j]
  return (out + sd[key + "3.bias"]).astype(np.float32)


def _head_variables(sd: dict[str, np.ndarray]) -> dict:
  """Flax variables of `HeatmapScaleHead` from the torch entries, transposed by hand."""
  key = "conv_scale_layers.0."
  return {
      "params": {
          "conv": {"kernel": sd[key + "0.weight"].transpose(2, 3, 1, 0),
                   "bias": sd[key + "0.bias"]},
          "bn": {"scale": sd[key + "1.weight"], "bias": sd[key + "1.bias"]},
          "depthwise_conv": {"kernel": sd[key + "3.weight"].transpose(2, 3, 1, 0),
                             "bias": sd[key + "3.bias"]},
      },
      "batch_stats": {"bn": {"mean": sd[key + "1.running_mean"], "var": sd[key + "1.running_var"]}},
  }


class HeatmapScaleHeadTest(chex.TestCase):

  def test_official_init_gives_zero_scales(self):
    # init_weights: Conv2d ~ N(0, 0.001^2) with bias 0, BN 1 / 0, then the depthwise conv's
    # weight and bias constant 0, so SWAHR's scale maps start at exactly 0.
    head = dekr.HeatmapScaleHead(4)
    x = np.random.default_rng(0).normal(0, 1, (2, 6, 5, 8)).astype(np.float32)
    scales, variables = jax.jit(functools.partial(head.init_with_output, train=False))(
        jax.random.key(0), x)
    params = variables["params"]
    chex.assert_shape(params["depthwise_conv"]["kernel"], (9, 9, 1, 4))  # depthwise: 1 input
    chex.assert_shape(params["conv"]["kernel"], (1, 1, 8, 4))
    chex.assert_trees_all_equal(params["depthwise_conv"],
                                jax.tree.map(jnp.zeros_like, params["depthwise_conv"]))
    chex.assert_trees_all_equal(params["conv"]["bias"], np.zeros(4, np.float32))
    chex.assert_trees_all_equal(params["bn"], {"scale": np.ones(4, np.float32),
                                               "bias": np.zeros(4, np.float32)})
    self.assertLess(float(jnp.abs(params["conv"]["kernel"]).max()), 0.006)  # 6 sigma of 0.001
    self.assertGreater(float(jnp.abs(params["conv"]["kernel"]).max()), 0.0)
    chex.assert_trees_all_equal(scales, np.zeros((2, 6, 5, 4), np.float32))

  @chex.variants(with_jit=True, without_jit=True)
  def test_eval_output_equals_hand_computation(self):
    sd = _random_torch_head(in_channels=6, maps=3, seed=1)
    x = np.random.default_rng(2).normal(0, 1, (2, 11, 10, 6)).astype(np.float32)
    apply = functools.partial(dekr.HeatmapScaleHead(3).apply, train=False)
    scales = self.variant(apply)(_head_variables(sd), x)
    chex.assert_trees_all_close(scales, _reference_head(x, sd), atol=1e-4, rtol=1e-4)

  def test_channels_do_not_mix(self):
    # A depthwise conv: perturbing the head's hidden channel 1 (through its 1x1 conv row)
    # changes output channel 1 only.
    sd = _random_torch_head(in_channels=6, maps=3, seed=3)
    x = np.random.default_rng(4).normal(0, 1, (1, 7, 7, 6)).astype(np.float32)
    head = functools.partial(dekr.HeatmapScaleHead(3).apply, train=False)
    base = head(_head_variables(sd), x)
    sd["conv_scale_layers.0.0.bias"] = sd["conv_scale_layers.0.0.bias"] + np.array([0, 3, 0],
                                                                                   np.float32)
    changed = np.abs(np.asarray(head(_head_variables(sd), x) - base)).max(axis=(0, 1, 2))
    self.assertEqual(changed[0], 0.0)
    self.assertEqual(changed[2], 0.0)
    self.assertGreater(changed[1], 0.0)


def _swahr_batch(batch_size: int, height: int, width: int, channels: int, num_keypoints: int
                 ) -> dict[str, np.ndarray]:
  """Codec-shaped targets: a different Gaussian disk per channel, random heatmap weights."""
  rows, cols = np.mgrid[:height, :width]
  target = np.stack([np.exp(-((rows - 5 - c) ** 2 + (cols - 9 + 2 * c) ** 2) / (2 * (1 + c)))
                     for c in range(channels)], -1)
  target = np.where(target > 1e-3, target, 0).astype(np.float32)
  return {
      "heatmaps": np.broadcast_to(target, (batch_size, height, width, channels)),
      "heatmap_weights": np.random.default_rng(6).uniform(
          0.1, 1, (batch_size, height, width, channels)).astype(np.float32),
      "offsets": np.zeros((batch_size, height, width, 2 * num_keypoints), np.float32),
      "offset_weights": np.zeros((batch_size, height, width, 2 * num_keypoints), np.float32),
  }


class DEKRScaleHeadTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    with np.load(FIXTURE) as data:
      cls.images = data["images_nhwc"]
      cls.official_train_heatmaps = data["heatmaps_train_nhwc"]
      prefix = "state_dict/"
      cls.state_dict = {key[len(prefix):]: data[key] for key in data.files
                        if key.startswith(prefix)}
    cls.head_state = _random_torch_head(in_channels=8, maps=4, seed=5)
    cls.model = dekr_torch_import.infer_model({**cls.state_dict, **cls.head_state})
    cls.variables = dekr_torch_import.convert({**cls.state_dict, **cls.head_state})
    cls.batch = _swahr_batch(2, 16, 16, 4, num_keypoints=3)

    def loss_and_head_grads(variables, batch):
      """A train-mode SWAHR loss and its gradient w.r.t. the scale head only (so the backbone's
      backward is not compiled), with the scales, heatmaps and the last heatmap block's output."""
      params = dict(variables["params"])
      head_params = params.pop("heatmap_scale_head")

      def total(head_params):
        (outputs, aux), state = cls.model.apply(
            {"params": {**params, "heatmap_scale_head": head_params},
             "batch_stats": variables["batch_stats"]}, cls.images, train=True,
            mutable=["batch_stats"],
            capture_intermediates=lambda module, _: module.name == "head_heatmap_block0")
        features = state["intermediates"]["head_heatmap_block0"]["__call__"][0]
        loss = bottomup.bottomup_losses(outputs, aux, batch,
                                        bottomup.LossConfig(heatmap_loss="swahr"))["total"]
        return loss, (outputs[0], aux["heatmap_scales"], features)

      return jax.value_and_grad(total, has_aux=True)(head_params)

    run = _fast_compile_jit(loss_and_head_grads)
    cls.random_head = jax.device_get(run(cls.variables, cls.batch))
    # SWAHR's init: the depthwise conv zero (the rest as imported).
    at_init = jax.tree.map(np.array, cls.variables)
    head = at_init["params"]["heatmap_scale_head"]
    head["depthwise_conv"] = jax.tree.map(np.zeros_like, head["depthwise_conv"])
    cls.at_init = jax.device_get(run(at_init, cls.batch))

  def test_outputs_and_parameters(self):
    # bfloat16 compute: the scales leave the model in float32, as the heatmaps do.
    model = dekr.DEKR(**TINY, scale_head=True, dtype=jnp.bfloat16)
    ((heatmaps, _), aux), variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0),
        jnp.zeros((2, 96, 64, 3)))
    chex.assert_shape(aux["heatmap_scales"], heatmaps.shape)  # [2, 24, 16, K + 1]
    chex.assert_shape(aux["heatmap_scales"], (2, 24, 16, 4))
    self.assertEqual(aux["heatmap_scales"].dtype, jnp.float32)
    self.assertEqual({leaf.dtype for leaf in jax.tree.leaves(variables)}, {jnp.dtype("float32")})
    # Without the field: no scales, and the head is the only difference in the variables.
    plain = jax.eval_shape(functools.partial(dekr.DEKR(**TINY).init_with_output, train=False),
                           jax.random.key(0), jnp.zeros((2, 96, 64, 3)))
    self.assertNotIn("heatmap_scales", plain[0][1])
    with_head = dict(variables["params"])
    del with_head["heatmap_scale_head"]
    chex.assert_trees_all_equal_shapes(with_head, plain[1]["params"])

  def test_w32_head_parameter_count(self):
    # K + 1 = 18 maps from W32's 32 heatmap-head channels: 1x1 conv 32 * 18 + 18, BN 2 * 18,
    # depthwise 9 * 9 * 18 + 18 = 2,106; SAMKR-W32 (8_SAMKR_16, 29,582,568) inherits it.
    variables = jax.eval_shape(functools.partial(samkr.samkr_w32(scale_head=True).init,
                                                 train=False),
                               jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    head = variables["params"]["heatmap_scale_head"]
    self.assertEqual(sum(leaf.size for leaf in jax.tree.leaves(head)),
                     32 * 18 + 18 + 2 * 18 + 81 * 18 + 18)
    self.assertEqual(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])),
                     29_582_568 + 2_106)

  def test_torch_import_of_swahr_keys(self):
    self.assertEqual(self.model, dekr.DEKR(**TINY, scale_head=True))
    self.assertFalse(dekr_torch_import.infer_model(self.state_dict).scale_head)
    head = self.variables["params"]["heatmap_scale_head"]
    chex.assert_trees_all_equal(  # torch [C, 1, 9, 9]: kernel[i, j, 0, c] = weight[c, 0, i, j]
        head["depthwise_conv"]["kernel"][2, 7, 0, 3],
        self.head_state["conv_scale_layers.0.3.weight"][3, 0, 2, 7])
    cases = {("params", ("heatmap_scale_head", "conv", "kernel")): "conv_scale_layers.0.0.weight",
             ("batch_stats", ("heatmap_scale_head", "bn", "var")):
                 "conv_scale_layers.0.1.running_var",
             ("params", ("heatmap_scale_head", "depthwise_conv", "bias")):
                 "conv_scale_layers.0.3.bias"}
    for (collection, path), expected in cases.items():
      self.assertEqual(dekr_torch_import.torch_key(collection, path), expected)

  def test_scales_read_the_heatmap_head_features(self):
    # SWAHR feeds its scale branch the features its final heatmap conv reads: in DEKR, the
    # output of the last heatmap-head block. The heatmaps stay the official DEKR's.
    _, (heatmaps, scales, features) = self.random_head[0]
    expected = _reference_head(np.asarray(features), self.head_state, train=True)
    chex.assert_trees_all_close(scales, expected, atol=1e-4 * float(np.abs(expected).max()))
    scale = float(np.abs(self.official_train_heatmaps).max())
    chex.assert_trees_all_close(heatmaps, self.official_train_heatmaps, atol=1e-4 * scale)

  def test_swahr_loss_gradient_at_swahr_init(self):
    # The depthwise conv is zero, so the scales are 0 and d loss / d bias_c is the heatmap
    # term's derivative at s = 0 summed over channel c's pixels (the regulariser's is 0):
    # sum of -2 (p - t) t ln(t) w_a weight / (B h w C) where t > 0 (w_a: WAHR's weight);
    # nothing flows back through the zero kernel to the 1x1 conv and BN.
    (loss, (heatmaps, scales, _)), grads = self.at_init
    self.assertTrue(np.isfinite(loss) and loss > 0)
    chex.assert_trees_all_equal(scales, np.zeros((2, 16, 16, 4), np.float32))
    p = np.asarray(heatmaps, np.float64)
    t, weight = self.batch["heatmaps"], self.batch["heatmap_weights"]
    log_t = np.log(np.where(t > 0, t, 1))
    adaptive = np.abs(1 - p) * t**0.01 + np.abs(p) * (1 - t**0.01)
    d_scale = -2 * (p - t) * t * log_t * adaptive * weight / p.size
    chex.assert_trees_all_close(grads["depthwise_conv"]["bias"], d_scale.sum(axis=(0, 1, 2)),
                                rtol=1e-4, atol=1e-9)
    self.assertTrue(np.all(np.abs(grads["depthwise_conv"]["bias"]) > 0))
    self.assertGreater(float(np.abs(grads["depthwise_conv"]["kernel"]).max()), 0.0)
    chex.assert_trees_all_equal(grads["conv"], jax.tree.map(np.zeros_like, grads["conv"]))
    chex.assert_trees_all_equal(grads["bn"], jax.tree.map(np.zeros_like, grads["bn"]))

  def test_every_head_parameter_learns_once_the_depthwise_conv_is_nonzero(self):
    (loss, _), grads = self.random_head
    self.assertTrue(np.isfinite(loss))
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
      self.assertGreater(float(np.abs(grad).max()), 0.0, jax.tree_util.keystr(path))


if __name__ == "__main__":
  absltest.main()
