"""Tests for jaxpose.models.sadinet: RFM, SFM (eq. 2-3), local attention, H2, shapes, size.

SADI-Net has no official code, so the golden numbers are hand computations: the RFM with a
constant SE gate and a one-tap dilated kernel (eq. 1), the SE gate, the local attention's
column softmax, the H2 rendering at chosen points, and the full-size parameter count from
per-layer formulas. The RLE flow and loss inside the DLM are tested against the official
RLE code in tests/test_rle.py.
"""

import functools
import math
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxpose.models import hourglass
from jaxpose.models import realnvp
from jaxpose.models import sadinet

BATCH, HEIGHT, WIDTH, NUM_KEYPOINTS = 2, 64, 64, 5  # multiples of 64: stem /4, four poolings
BN_EPS = 1e-5


def _seeded_variables(module, *args, **kwargs) -> dict:
  """0.1 N(0, 1) float32 variables for `module` from numpy (running variances 0.5 + |.|):
  running `init` would compile one random kernel per parameter shape."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.key(0), *args)
  variables = jax.tree.map(lambda s: 0.1 * rng.standard_normal(s.shape).astype(np.float32),
                           shapes)
  if "batch_stats" in variables:
    variables["batch_stats"] = jax.tree.map(lambda v: 0.5 + np.abs(v), variables["batch_stats"])
  return variables


class RFMTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_squeeze_excitation_by_hand(self):
    x = np.zeros((1, 2, 2, 3), np.float32)
    x[0, :, :, 0] = [[1.0, 3.0], [2.0, 2.0]]  # channel 0 has mean 2
    x[0, :, :, 1:] = 1.0
    params = {"fc1": {"kernel": np.array([[1.0], [0.0], [0.0]], np.float32),
                      "bias": np.zeros(1, np.float32)},
              "fc2": {"kernel": np.array([[1.0, -1.0, 0.0]], np.float32),
                      "bias": np.zeros(3, np.float32)}}
    out = self.variant(sadinet.SqueezeExcitation(reduction=3).apply)({"params": params}, x)
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # hidden = relu(2) = 2, gates s(2), s(-2), s(0)
    np.testing.assert_allclose(out, x * np.array([sigmoid(2), sigmoid(-2), 0.5]), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_rfm_with_constant_se_gate_and_one_tap_dilated_kernel(self):
    # conv2 = 0 makes the basic branch bn2's bias; a dilated kernel whose only tap is
    # w[0, 0] = I makes the dilated branch x[i - b, j - b] (eq. 1 with the padding b); an SE
    # whose fc2 is zero gates by sigmoid(0) = 1/2. So out = relu((beta2 + shift_b(x) /
    # sqrt(1 + eps)) / 2 + x).
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 7, 7, 4)).astype(np.float32)
    beta2 = rng.standard_normal(4).astype(np.float32)
    for dilation in (1, 2, 3):
      block = sadinet.RFM(4, dilation=dilation, se_reduction=2)
      variables = _seeded_variables(block, x, train=False)
      params, stats = variables["params"], variables["batch_stats"]
      params["conv2"]["kernel"] = np.zeros_like(params["conv2"]["kernel"])
      dilated = np.zeros((3, 3, 4, 4), np.float32)
      dilated[0, 0] = np.eye(4)
      params["dilated_conv"]["kernel"] = dilated
      for bn in ("bn2", "dilated_bn"):
        params[bn] = {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)}
        stats[bn] = {"mean": np.zeros(4, np.float32), "var": np.ones(4, np.float32)}
      params["bn2"]["bias"] = beta2
      params["se"]["fc2"] = jax.tree.map(np.zeros_like, params["se"]["fc2"])
      self.assertNotIn("downsample_conv", params)  # same width: identity shortcut
      out = self.variant(functools.partial(block.apply, train=False))(variables, x)
      padded = np.pad(x, ((0, 0), (dilation, dilation), (dilation, dilation), (0, 0)))
      shifted = padded[:, :7, :7]  # shifted[i, j] = x[i - b, j - b], 0 outside
      expected = np.maximum((beta2 + shifted / np.sqrt(1 + BN_EPS)) / 2 + x, 0)
      np.testing.assert_allclose(out, expected, atol=1e-5, err_msg=f"dilation {dilation}")

  def test_projection_shortcut_and_train_mode(self):
    x = np.random.default_rng(2).standard_normal((2, 8, 8, 6)).astype(np.float32)
    block = sadinet.RFM(10, se_reduction=4)
    variables = _seeded_variables(block, x, train=False)
    chex.assert_shape(variables["params"]["downsample_conv"]["kernel"], (1, 1, 6, 10))
    chex.assert_shape(variables["params"]["dilated_conv"]["kernel"], (3, 3, 6, 10))
    chex.assert_shape(variables["params"]["se"]["fc1"]["kernel"], (10, 2))
    apply = jax.jit(functools.partial(block.apply, train=True, mutable=["batch_stats"]))
    out, updates = apply(variables, x)
    chex.assert_shape(out, (2, 8, 8, 10))
    self.assertGreaterEqual(float(out.min()), 0.0)  # the final ReLU
    old = variables["batch_stats"]["dilated_bn"]["mean"]
    new = updates["batch_stats"]["dilated_bn"]["mean"]
    self.assertGreater(float(jnp.abs(new - old).max()), 0.0)


class SpatialFusionTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    rng = np.random.default_rng(3)
    cls.levels = [rng.standard_normal((BATCH, 16 // 2**n, 16 // 2**n, 6)).astype(np.float32)
                  for n in range(4)]
    cls.module = sadinet.SpatialFusion(channels=(4, 8, 12, 16), attention_channels=5)
    cls.variables = _seeded_variables(cls.module, cls.levels, train=False)

  def test_global_weights_sum_to_one_at_every_pixel(self):
    apply = jax.jit(functools.partial(self.module.apply, train=False))
    outputs, weights = apply(self.variables, self.levels)
    chex.assert_shape(weights, (BATCH, 16, 16, 4))
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)  # eq. 3
    self.assertGreater(float(weights.std()), 1e-3)  # not trivially uniform
    self.assertEqual([o.shape for o in outputs],
                     [(BATCH, 16 // 2**n, 16 // 2**n, c) for n, c in enumerate((4, 8, 12, 16))])
    # Equal logits (zero kernels, equal biases): W_n = 1/4 everywhere (eq. 2).
    params = dict(self.variables["params"])
    for n in range(1, 5):
      params[f"logit{n}"] = {"kernel": np.zeros_like(params[f"logit{n}"]["kernel"]),
                             "bias": np.full((1,), 0.7, np.float32)}
    _, weights = apply({**self.variables, "params": params}, self.levels)
    np.testing.assert_allclose(weights, 0.25, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_local_attention(self):
    x = np.array([0.0, math.log(3.0)], np.float32).reshape(1, 2, 1, 1)  # one column [0, ln 3]
    out = self.variant(sadinet.local_attention)(x)
    np.testing.assert_allclose(out.ravel(), [0.0, 0.75 * math.log(3.0)], rtol=1e-6)
    x = np.random.default_rng(4).uniform(0.5, 2.0, (2, 5, 3, 4)).astype(np.float32)
    out = self.variant(sadinet.local_attention)(x)
    np.testing.assert_allclose((out / x).sum(axis=1), 1.0, rtol=1e-6)  # softmax over H


class LearnedHeatmapsTest(chex.TestCase):

  def test_grid_convention(self):
    grid = sadinet.heatmap_grid_uv(4, 8)  # h = 4, w = 8
    chex.assert_shape(grid, (32, 2))
    np.testing.assert_allclose(grid[1 * 8 + 3], [3 / 8 - 0.5, 1 / 4 - 0.5])  # pixel x=3, y=1

  @chex.variants(with_jit=True, without_jit=True)
  def test_h2_by_hand(self):
    # A flat flow term (log G = 0) leaves Q: H2 = exp(-(|dx| / s_x + |dy| / s_y) / sqrt 2).
    mu = np.array([[[5 / 16 - 0.5, 9 / 16 - 0.5]]], np.float32)  # pixel (x=5, y=9) of 16x16
    sigma = np.array([[[0.125, 0.25]]], np.float32)
    h2 = self.variant(sadinet.learned_heatmaps, static_argnums=3)(
        np.zeros((1, 1, 256), np.float32), mu, sigma, (16, 16))
    chex.assert_shape(h2, (1, 16, 16, 1))
    self.assertEqual(float(h2[0, 9, 5, 0]), 1.0)
    step_x, step_y = (1 / 16) / 0.125, (1 / 16) / 0.25
    np.testing.assert_allclose(h2[0, 9, 6, 0], math.exp(-step_x / math.sqrt(2)), rtol=1e-5)
    np.testing.assert_allclose(h2[0, 10, 5, 0], math.exp(-step_y / math.sqrt(2)), rtol=1e-5)
    # The flow term adds to the log-density before the peak normalisation.
    boost = np.zeros((1, 1, 256), np.float32)
    boost[0, 0, 9 * 16 + 7] = 10.0
    h2 = sadinet.learned_heatmaps(boost, mu, sigma, (16, 16))
    self.assertEqual(float(h2[0, 9, 7, 0]), 1.0)
    np.testing.assert_allclose(h2[0, 9, 5, 0], math.exp(-10 + 2 * step_x / math.sqrt(2)),
                               rtol=1e-4)


def _rfm_params(c_in: int, c: int, reduction: int) -> int:
  """Two 3x3 convs + dilated 3x3 (no bias), three BNs, SE (two Dense with bias), projection."""
  hidden = max(1, c // reduction)
  se = c * hidden + hidden + hidden * c + c
  projection = c_in * c + 2 * c if c_in != c else 0
  return 9 * c_in * c + 9 * c * c + 9 * c_in * c + 3 * 2 * c + se + projection


def _conv_block_params(c_in: int, c: int, kernel_size: int, bn: bool) -> int:
  return kernel_size**2 * c_in * c + c + (2 * c if bn else 0)  # conv with bias [+ BN]


def _expected_params(k: int, stacks=8, width=256, reduction=16, channels=(64, 128, 256, 512),
                     attention=256, planes=(32, 64, 128, 256), feature=2048) -> dict[str, int]:
  stem = (_conv_block_params(3, 64, 7, True) + _rfm_params(64, 128, reduction)
          + _rfm_params(128, 128, reduction) + _rfm_params(128, width, reduction))
  # 13 RFMs in a depth-4 hourglass (up1, low1, low3 per level, the innermost low2), 1 after.
  stack = (14 * _rfm_params(width, width, reduction) + _conv_block_params(width, width, 1, True)
           + _conv_block_params(width, k, 1, False))
  merge = _conv_block_params(k, width, 1, False) + _conv_block_params(width, width, 1, False)
  sfm = sum(width * c + 2 * c + c * attention + 2 * attention + attention + 1
            + attention * c + 2 * c for c in channels)
  incre = sum(c * p + 2 * p + 9 * p * p + 2 * p + 4 * p * p + 8 * p
              + (c * 4 * p + 8 * p if c != 4 * p else 0) for c, p in zip(channels, planes))
  down = sum(9 * 4 * a * 4 * b + 3 * 4 * b for a, b in zip(planes, planes[1:]))
  flow = 12 * (2 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2)
  return {"backbone": stem + stacks * stack + (stacks - 1) * merge, "sfm": sfm,
          "head": incre + down + 4 * planes[-1] * feature + 3 * feature,
          "dlm": 2 * (feature * 2 * k + 2 * k) + flow}


class SADINetTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # One stack for the compiled run (two stacks double the compile); two in eval_shape.
    cls.model = sadinet.sadinet_tiny(num_keypoints=NUM_KEYPOINTS, num_stacks=1)
    rng = np.random.default_rng(5)
    cls.images = rng.standard_normal((BATCH, HEIGHT, WIDTH, 3)).astype(np.float32)
    cls.target_uv = rng.uniform(-0.5, 0.5, (BATCH, NUM_KEYPOINTS, 2)).astype(np.float32)
    cls.variables = _seeded_variables(cls.model, cls.images, train=False)

  def test_eval_outputs(self):
    apply = jax.jit(functools.partial(self.model.apply, train=False))
    # 512 points per rematerialised step: H2's 10 maps of 16x16 take the chunked path, as
    # full-size maps do (2 maps per step, 5 steps).
    with mock.patch.object(realnvp, "CHUNK_POINTS", 512):
      heatmaps, aux = apply(self.variables, self.images, target_uv=self.target_uv)
    h, w = HEIGHT // 4, WIDTH // 4
    chex.assert_shape(heatmaps, (BATCH, 1, h, w, NUM_KEYPOINTS))
    chex.assert_shape([aux["mu_hat"], aux["sigma_hat"]], (BATCH, NUM_KEYPOINTS, 2))
    chex.assert_shape(aux["h2"], (BATCH, h, w, NUM_KEYPOINTS))
    chex.assert_shape(aux["feature"], (BATCH, 64))
    chex.assert_shape(aux["log_phi"], (BATCH, NUM_KEYPOINTS))
    chex.assert_tree_all_finite((heatmaps, aux))
    self.assertEqual({a.dtype for a in jax.tree.leaves((heatmaps, aux))}, {jnp.dtype("float32")})
    np.testing.assert_allclose(aux["sfm_weights"].sum(-1), 1.0, atol=1e-6)  # eq. 3
    np.testing.assert_array_equal(aux["h2"].max(axis=(1, 2)), 1.0)  # peak-normalised H2
    self.assertGreaterEqual(float(aux["h2"].min()), 0.0)
    self.assertTrue(bool(((aux["sigma_hat"] > 0) & (aux["sigma_hat"] < 1)).all()))

  def test_tiny_preset_tree_and_shapes(self):
    model = sadinet.sadinet_tiny(num_keypoints=NUM_KEYPOINTS)
    (heatmaps, aux), variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0), self.images)
    chex.assert_shape(heatmaps, (BATCH, 2, HEIGHT // 4, WIDTH // 4, NUM_KEYPOINTS))
    self.assertNotIn("log_phi", aux)  # only with target_uv
    params = variables["params"]
    self.assertEqual(set(params), {"backbone", "sfm", "head", "dlm"})
    backbone = params["backbone"]
    self.assertIn("merge_preds", backbone["stacks"])
    self.assertIn("outs1", backbone)  # the last stack, outside the scan
    self.assertNotIn("merge_preds1", backbone)  # the last stack merges nothing
    self.assertIn("dilated_conv", backbone["hourglass1"]["low2"]["low2"]["low2"]["low2"])
    # The first stack's parameters, scanned: one leading axis of S - 1 = 1.
    chex.assert_shape(backbone["stacks"]["outs"]["conv"]["kernel"], (1, 1, 1, 16, NUM_KEYPOINTS))
    chex.assert_shape(params["sfm"]["adapt4"]["conv"]["kernel"], (1, 1, 16, 64))
    chex.assert_shape(params["head"]["final"]["kernel"], (1, 1, 128, 64))
    chex.assert_shape(params["dlm"]["fc_sigma"]["kernel"], (64, 2 * NUM_KEYPOINTS))
    self.assertLen(jax.tree.leaves(params["dlm"]["flow"]), 6 * 2 * 3 * 2)

  def test_bfloat16_compute_keeps_float32_params_and_outputs(self):
    model = sadinet.sadinet_tiny(num_keypoints=NUM_KEYPOINTS, num_stacks=1, dtype=jnp.bfloat16)
    (heatmaps, aux), variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0), self.images)
    self.assertEqual({leaf.dtype for leaf in jax.tree.leaves(variables)}, {jnp.dtype("float32")})
    self.assertEqual({a.dtype for a in jax.tree.leaves((heatmaps, aux))}, {jnp.dtype("float32")})

  def test_rejects_size_not_multiple_of_64(self):
    init = functools.partial(self.model.init, train=False)
    with self.assertRaisesRegex(ValueError, "divisible by 64.*96, 64"):
      jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 96, 64, 3)))

  def test_full_size_parameter_count(self):
    # sadinet (8 stacks of width 256, K = 16): per-module counts from the formulas above.
    # The DLM's 184,920 equal the official RLE RegressFlow head's (fc_coord, fc_sigma, flow)
    # at a 2048-d feature and 16 joints, counted with the official code (make_fixture.py).
    init = functools.partial(sadinet.sadinet().init, train=False)
    params = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 256, 256, 3)))["params"]
    counts = {name: sum(leaf.size for leaf in jax.tree.leaves(tree))
              for name, tree in params.items()}
    self.assertEqual(counts, _expected_params(16))
    self.assertEqual(counts, {"backbone": 202_339_360, "sfm": 744_196, "head": 10_313_344,
                              "dlm": 184_920})


class HourglassUnitTest(chex.TestCase):
  """Table IV's "Hourglass + SFM-DLM": `residual_unit="bottleneck"` puts the official
  hourglass's bottleneck `Residual` in every RFM's place, so the backbone is exactly the
  plain stacked hourglass: the same parameters (rearranged per stack), and with its weights
  the same H1, whether the merging stacks run as one `nn.scan` or one module each."""

  def test_backbone_is_the_plain_stacked_hourglass(self):
    images = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3)) * 255.0
    num_stacks = 3  # two merging stacks: the scan runs more than once
    plain = hourglass.StackedHourglass(num_stacks=num_stacks, width=16, num_keypoints=4,
                                       scan_stacks=False)
    # Eager init: jitting it would compile a threefry hash per kernel (slower than running).
    plain_variables = plain.init(jax.random.key(2), images, train=False)
    expected, _ = jax.jit(functools.partial(plain.apply, train=False))(plain_variables, images)
    for scan in (True, False):
      model = sadinet.sadinet_tiny(num_keypoints=4, num_stacks=num_stacks,
                                   residual_unit="bottleneck", scan_stacks=scan)
      shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                              images)
      variables = {collection: hourglass.scanned_layout(tree, num_stacks) if scan else tree
                   for collection, tree in plain_variables.items()}
      chex.assert_trees_all_equal_shapes(
          variables, {name: shapes[name]["backbone"] for name in variables})
      # The backbone module SADINet builds for this unit, run on the hourglass's weights.
      backbone = sadinet.RFMStackedHourglass(num_stacks, 4, 16, hourglass.Residual,
                                             scan_stacks=scan)
      h1, _ = jax.jit(functools.partial(backbone.apply, train=False))(variables, images)
      chex.assert_trees_all_close(h1, expected, atol=1e-5)

  def test_scanned_rfm_stacks_train_as_unrolled_ones(self):
    # The RFM backbone in train mode (batch statistics used and updated): the scanned stacks
    # on the unrolled stacks' variables, stacked, give the same H1, levels and statistics.
    images = jax.random.uniform(jax.random.key(3), (2, 64, 64, 3))
    unit = functools.partial(sadinet.RFM, se_reduction=4)
    unrolled = sadinet.RFMStackedHourglass(3, 4, 16, unit, scan_stacks=False)
    variables = _seeded_variables(unrolled, images, train=False)
    self.assertIn("merge_preds1", variables["params"])  # the official per-stack names
    scanned = sadinet.RFMStackedHourglass(3, 4, 16, unit, scan_stacks=True)
    scanned_variables = {collection: hourglass.scanned_layout(tree, 3)
                         for collection, tree in variables.items()}
    chex.assert_trees_all_equal_shapes(
        scanned_variables,
        jax.eval_shape(functools.partial(scanned.init, train=False), jax.random.key(0), images))
    run = lambda model, v: jax.jit(functools.partial(model.apply, train=True,
                                                     mutable=["batch_stats"]))(v, images)
    (h1, levels), updates = run(unrolled, variables)
    (h1_scanned, levels_scanned), updates_scanned = run(scanned, scanned_variables)
    chex.assert_trees_all_close((h1_scanned, levels_scanned), (h1, levels), atol=1e-5)
    chex.assert_trees_all_close(updates_scanned["batch_stats"],
                                hourglass.scanned_layout(updates["batch_stats"], 3), atol=1e-5)

  def test_unknown_unit_is_rejected(self):
    model = sadinet.sadinet_tiny(num_keypoints=4, residual_unit="basic")
    with self.assertRaisesRegex(ValueError, "residual_unit"):
      model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)


if __name__ == "__main__":
  absltest.main()
