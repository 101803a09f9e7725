"""Tests for the SimpleBaseline family: layers, ResNet, presets and PyTorch parity.

Golden numbers in `fixtures/simple_baseline_tiny.npz` come from the official `PoseResNet`
(leoxiaobin/deep-high-resolution-net.pytorch @6f69e46, `lib/models/pose_resnet.py`, run
unchanged under torch 2.13 on CPU) for two networks on one NHWC input [2, 96, 64, 3]:
  r18_k4  ResNet-18, 3 deconvs of 32 filters, kernel 4, K = 5
  r50_k3  ResNet-50, 3 deconvs of 16 filters, kernel 3, K = 3
A full state_dict would be 45 / 95 MB, so the fixture stores each network's official key
list and shapes, and every tensor is the deterministic hash `_fixture_tensor` below
(documented in the generation script, which imports the official code and therefore lives
outside the repo); the per-tensor sums stored from the torch side prove the regeneration is
bit-identical. Stored outputs: eval- and train-mode heatmaps (NHWC) and every running mean
after the train-mode forward. `deconv_k{2,3,4}` hold one `torch.nn.ConvTranspose2d(6, 4, k,
stride=2, official padding)` each: its weight, an input and the output (NHWC).
"""

import functools
from pathlib import Path

import chex
import flax
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import hash_weights

from jaxpose import models
from jaxpose.models import layers
from jaxpose.models import resnet
from jaxpose.models import simple_baseline
from jaxpose.models import torch_import

FIXTURE = Path(__file__).parent / "fixtures" / "simple_baseline_tiny.npz"
FIXTURE_SEED = 20180406
# Parity: max |jax - torch| <= 1e-4 * max |torch| (float32, different conv algorithms).
RELATIVE_TOLERANCE = 1e-4
# Train mode normalises with batch statistics of as few as 12 values per channel (layer4 of a
# 96x64 batch of 2 is 3x2x2), which amplifies float32 rounding: torch float32 itself is
# 1.9e-4 (relative) away from torch float64 on r50_k3 in train mode, 1.6e-6 in eval mode.
TRAIN_RELATIVE_TOLERANCE = 1e-3
BATCH, HEIGHT, WIDTH = 2, 64, 64  # H, W multiples of 32: the backbone has stride 32
TINY_HEAD = dict(num_deconv_filters=(16, 16, 16))


def _assert_close_to_scale(actual, expected, what: str, tolerance: float = RELATIVE_TOLERANCE):
  scale = float(np.abs(expected).max())
  error = float(np.abs(np.asarray(actual, np.float32) - expected).max())
  assert error <= tolerance * scale, f"{what}: max abs error {error} vs scale {scale}"


def _fixture_tensor(index: int, shape: tuple[int, ...]) -> np.ndarray:
  return hash_weights.hash_uniform(index, shape, FIXTURE_SEED)


def _fixture_state_dict(fixture, name: str) -> dict[str, np.ndarray]:
  """The torch state_dict the fixture's network `name` ran with (the script's recipe)."""
  keys = [str(key) for key in fixture[f"{name}/keys"]]
  shapes = [tuple(int(d) for d in row[:ndim])
            for row, ndim in zip(fixture[f"{name}/shapes"], fixture[f"{name}/ndims"])]
  state = {}
  for index, (key, shape) in enumerate(zip(keys, shapes)):
    u = _fixture_tensor(index, shape)
    if key.endswith("running_var"):
      state[key] = (1.0 + 0.5 * u).astype(np.float32)
    elif len(shape) == 4:  # ConvTranspose2d is [I, O, kh, kw], Conv2d [O, I, kh, kw]
      is_deconv = key.startswith("deconv_layers")
      fan_in = shape[0] * shape[2] * shape[3] if is_deconv else np.prod(shape[1:])
      state[key] = (u * np.float32(np.sqrt(6.0 / fan_in))).astype(np.float32)
    elif key.endswith("weight"):
      state[key] = (0.75 + 0.25 * u).astype(np.float32)
    else:
      state[key] = (0.1 * u).astype(np.float32)
  sums = np.array([state[key].astype(np.float64).sum() for key in keys])
  np.testing.assert_array_equal(sums, fixture[f"{name}/tensor_sums"])
  return state


def _load_fixture() -> dict[str, np.ndarray]:
  with np.load(FIXTURE) as data:
    return {key: data[key] for key in data.files}


def _transposed_conv_reference(x: np.ndarray, torch_weight: np.ndarray, padding: int) -> np.ndarray:
  """The definition of torch ConvTranspose2d (stride 2) as a literal scatter-add, NHWC.

  x: [B, H, W, I], torch_weight: [I, O, k, k]. Input pixel (h, w) adds
  x[h, w] @ weight[:, :, ky, kx] to output (2h - padding + ky, 2w - padding + kx); the output
  is cropped to [0, 2H) x [0, 2W) (torch's size with the matching output_padding).
  """
  batch, height, width, _ = x.shape
  kernel_size = torch_weight.shape[-1]
  out = np.zeros((batch, 2 * height, 2 * width, torch_weight.shape[1]))
  for h in range(height):
    for w in range(width):
      for ky in range(kernel_size):
        for kx in range(kernel_size):
          row, col = 2 * h - padding + ky, 2 * w - padding + kx
          if 0 <= row < 2 * height and 0 <= col < 2 * width:
            out[:, row, col] += x[:, h, w].astype(np.float64) @ torch_weight[:, :, ky, kx]
  return out


class Deconv2xTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((4, 1), (3, 1), (2, 0))  # (kernel, official padding)
  def test_equals_scatter_definition(self, kernel_size, padding):
    rng = np.random.default_rng(kernel_size)
    x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
    torch_weight = rng.standard_normal((3, 4, kernel_size, kernel_size)).astype(np.float32)
    kernel = np.transpose(torch_weight, (2, 3, 0, 1))  # the documented layout
    apply = self.variant(layers.Deconv2x(4, kernel_size).apply)
    out = apply({"params": {"kernel": kernel}}, x)
    chex.assert_shape(out, (2, 10, 14, 4))
    expected = _transposed_conv_reference(x, torch_weight, padding).astype(np.float32)
    chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=1e-5)

  @parameterized.parameters(2, 3, 4)
  def test_equals_torch_conv_transpose(self, kernel_size):
    fixture = _load_fixture()
    prefix = f"deconv_k{kernel_size}"
    kernel = np.transpose(fixture[f"{prefix}/weight"], (2, 3, 0, 1))
    out = layers.Deconv2x(4, kernel_size).apply({"params": {"kernel": kernel}},
                                                fixture[f"{prefix}/x"])
    chex.assert_trees_all_close(out, fixture[f"{prefix}/y"], atol=1e-5, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((4, 1), (3, 1), (2, 0))  # (kernel, official padding)
  def test_gradients_equal_autodiff_of_the_dilated_convolution(self, kernel_size, padding):
    # The transposed conv is also a convolution of the 2-dilated input with the flipped
    # kernel, padded k - 1 - p before and k - 1 - p + output_padding after; lax's autodiff
    # of that form is the independent reference for the hand-written backward.
    rng = np.random.default_rng(10 + kernel_size)
    x = jnp.asarray(rng.standard_normal((2, 5, 7, 3)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 3, 4)), jnp.float32)
    weights = jnp.asarray(rng.standard_normal((2, 10, 14, 4)), jnp.float32)
    _, output_padding = layers.deconv_padding(kernel_size)
    low, high = kernel_size - 1 - padding, kernel_size - 1 - padding + output_padding

    def dilated(x, kernel):
      return lax.conv_general_dilated(x, jnp.flip(kernel, (0, 1)), (1, 1), ((low, high),) * 2,
                                      lhs_dilation=(2, 2),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def deconv(x, kernel):
      return layers.Deconv2x(4, kernel_size).apply({"params": {"kernel": kernel}}, x)

    loss = lambda conv: lambda x, kernel: jnp.sum(conv(x, kernel) * weights)
    chex.assert_trees_all_close(deconv(x, kernel), dilated(x, kernel), atol=1e-5)
    actual = self.variant(jax.grad(loss(deconv), argnums=(0, 1)))(x, kernel)
    expected = jax.grad(loss(dilated), argnums=(0, 1))(x, kernel)
    chex.assert_trees_all_close(actual, expected, atol=1e-4, rtol=1e-5)

  def test_padding_rules_match_official(self):
    self.assertEqual([layers.deconv_padding(k) for k in (4, 3, 2)], [(1, 0), (1, 1), (0, 0)])

  def test_bfloat16_compute_keeps_float32_params(self):
    module = layers.Deconv2x(8, dtype=jnp.bfloat16)
    out, variables = module.init_with_output(jax.random.key(0), jnp.ones((1, 4, 3, 5)))
    self.assertEqual(out.dtype, jnp.bfloat16)
    self.assertEqual(variables["params"]["kernel"].dtype, jnp.float32)


class PresetTest(parameterized.TestCase):

  @parameterized.parameters(*[name for name in models.MODELS if name.startswith("simplebaseline")])
  def test_shapes_every_preset(self, name):
    model = models.build(name, num_keypoints=17)
    images = jax.ShapeDtypeStruct((BATCH, HEIGHT, WIDTH, 3), jnp.float32)
    init = functools.partial(model.init_with_output, train=False)
    (heatmaps, aux), variables = jax.eval_shape(init, jax.random.key(0), images)
    chex.assert_shape(heatmaps, (BATCH, HEIGHT // 4, WIDTH // 4, 17))
    channels = 512 if model.depth in (18, 34) else 2048
    chex.assert_shape(aux["backbone"], (BATCH, HEIGHT // 32, WIDTH // 32, channels))
    self.assertEqual(heatmaps.dtype, jnp.float32)
    self.assertEqual(set(variables), {"params", "batch_stats"})

  @parameterized.parameters(("simplebaseline_r50", 34.0), ("simplebaseline_r101", 53.0),
                            ("simplebaseline_r152", 68.6))
  def test_parameter_counts_match_official_readme(self, name, millions):
    # HRNet README (leoxiaobin/deep-high-resolution-net.pytorch) COCO table, 256x192, K=17.
    model = models.build(name, num_keypoints=17)
    images = jax.ShapeDtypeStruct((1, 256, 192, 3), jnp.float32)
    init = functools.partial(model.init, train=False)
    variables = jax.eval_shape(init, jax.random.key(0), images)
    count = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
    self.assertAlmostEqual(count / 1e6, millions, delta=0.05)

  def test_unknown_name_lists_valid_names(self):
    with self.assertRaisesRegex(KeyError, "simplebaseline_r50"):
      models.build("simplebaseline_r51", num_keypoints=17)

  def test_input_not_multiple_of_32_is_rejected(self):
    model = models.build("simplebaseline_r18", num_keypoints=17)
    images = jax.ShapeDtypeStruct((1, 64, 48, 3), jnp.float32)
    with self.assertRaisesRegex(ValueError, "divisible by 32"):
      jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)

  def test_dilation_keeps_resolution(self):
    backbone = resnet.ResNet(50, replace_stride_with_dilation=(False, True, True))
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    features, _ = jax.eval_shape(functools.partial(backbone.init_with_output, train=False),
                                 jax.random.key(0), images)
    chex.assert_shape(features, (1, 8, 8, 2048))


class SimpleBaselineRunTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = models.build("simplebaseline_r18", num_keypoints=5, **TINY_HEAD)
    cls.images = jax.random.normal(jax.random.key(0), (BATCH, HEIGHT, WIDTH, 3))
    # An RBG key: threefry's per-parameter hashing makes this init compile for ~10 s on 2
    # CPU cores; the init distributions are the same.
    cls.variables = jax.jit(functools.partial(cls.model.init, train=False))(
        jax.random.key(1, impl="rbg"), cls.images)

  def test_train_mode_updates_batch_stats(self):
    apply = jax.jit(functools.partial(self.model.apply, train=True, mutable=["batch_stats"]))
    (heatmaps, aux), updates = apply(self.variables, self.images)
    chex.assert_shape(heatmaps, (BATCH, HEIGHT // 4, WIDTH // 4, 5))
    chex.assert_tree_all_finite(heatmaps)
    chex.assert_trees_all_equal_shapes(updates["batch_stats"], self.variables["batch_stats"])
    old = self.variables["batch_stats"]["deconv2_bn"]["mean"]
    self.assertGreater(float(jnp.abs(updates["batch_stats"]["deconv2_bn"]["mean"] - old).max()), 0)

  def test_eval_mode_is_pure(self):
    heatmaps, aux = jax.jit(functools.partial(self.model.apply, train=False))(
        self.variables, self.images)
    chex.assert_shape(heatmaps, (BATCH, HEIGHT // 4, WIDTH // 4, 5))
    chex.assert_shape(aux["backbone"], (BATCH, HEIGHT // 32, WIDTH // 32, 512))

  def test_init_follows_official_and_torchvision(self):
    params = self.variables["params"]
    # Head N(0, 0.001^2), final bias 0; backbone kaiming fan_out std sqrt(2 / (64 * 7 * 7)).
    self.assertAlmostEqual(float(jnp.std(params["deconv0"]["kernel"])), 0.001, delta=2e-4)
    np.testing.assert_array_equal(params["final_layer"]["bias"], 0.0)
    stem_std = float(jnp.std(params["backbone"]["conv1"]["kernel"]))
    self.assertAlmostEqual(stem_std, np.sqrt(2 / (64 * 49)), delta=0.1 * stem_std)
    np.testing.assert_array_equal(params["deconv1_bn"]["scale"], 1.0)

  def test_bfloat16_compute_returns_float32_heatmaps(self):
    model = models.build("simplebaseline_r18", num_keypoints=5, dtype=jnp.bfloat16, **TINY_HEAD)
    heatmaps, _ = jax.jit(functools.partial(model.apply, train=False))(self.variables, self.images)
    self.assertEqual(heatmaps.dtype, jnp.float32)


class TorchParityTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fixture = _load_fixture()

  @parameterized.parameters(("r18_k4", 18, (32, 32, 32), 4, 5),
                            ("r50_k3", 50, (16, 16, 16), 3, 3))
  def test_matches_official_pose_resnet(self, name, depth, filters, kernel, num_keypoints):
    state_dict = _fixture_state_dict(self.fixture, name)
    model = torch_import.infer_model(state_dict)
    self.assertEqual(model, simple_baseline.SimpleBaseline(
        depth=depth, num_keypoints=num_keypoints, num_deconv_filters=filters, deconv_kernel=kernel))
    variables = torch_import.simple_baseline_from_torch(state_dict)
    images = self.fixture["images"]

    heatmaps, _ = jax.jit(functools.partial(model.apply, train=False))(variables, images)
    _assert_close_to_scale(heatmaps, self.fixture[f"{name}/heatmaps_eval"], f"{name} eval")

    apply_train = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    (heatmaps, _), updates = apply_train(variables, images)
    _assert_close_to_scale(heatmaps, self.fixture[f"{name}/heatmaps_train"], f"{name} train",
                           TRAIN_RELATIVE_TOLERANCE)
    prefix = f"{name}/train_running_mean/"
    flat = flax.traverse_util.flatten_dict(updates["batch_stats"])
    means = {torch_import.torch_key("batch_stats", path): value
             for path, value in flat.items() if path[-1] == "mean"}
    expected = {key[len(prefix):]: value for key, value in self.fixture.items()
                if key.startswith(prefix)}
    self.assertEqual(set(means), set(expected))
    for key, value in expected.items():
      np.testing.assert_allclose(means[key], value, atol=1e-5, rtol=1e-4, err_msg=key)

  def test_mismatched_state_dict_lists_every_bad_key(self):
    state_dict = _fixture_state_dict(self.fixture, "r18_k4")
    del state_dict["layer2.0.downsample.1.running_var"]
    state_dict["fc.weight"] = np.zeros((1000, 512), np.float32)
    state_dict["deconv_layers.3.weight"] = np.zeros((32, 32, 3, 3), np.float32)
    model = simple_baseline.SimpleBaseline(depth=18, num_keypoints=5, num_deconv_filters=(32,) * 3)
    with self.assertRaises(ValueError) as raised:
      torch_import.simple_baseline_from_torch(state_dict, model)
    message = str(raised.exception)
    for expected in ("1 missing: layer2.0.downsample.1.running_var", "1 extra: fc.weight",
                     "1 mis-shaped: deconv_layers.3.weight: got (32, 32, 3, 3), "
                     "expected (32, 32, 4, 4)"):
      self.assertIn(expected, message)


if __name__ == "__main__":
  absltest.main()
