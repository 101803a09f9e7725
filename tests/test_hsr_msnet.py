"""Tests for jaxpose.models.hsr_msnet (HSRNet / HSR-MSNet) and its torch key map.

Golden numbers in `fixtures/hsrnet_tiny.npz` come from the official pieces HSRNet is
assembled from, run unchanged under torch 2.13 on CPU: DetNet (guoruoqian/DetNet_pytorch
@735e2c5, `lib/model/fpn/detnet_backbone.py`, the repository the paper links) with layers
[1, 1, 1, 2, 1], under pose_resnet's `_make_deconv_layer` (leoxiaobin/
deep-high-resolution-net.pytorch @6f69e46) with two 256-filter kernel-4 deconvs and a 1x1
final layer to K = 5, on a [2, 64, 48, 3] input (stored NHWC): eval- and train-mode
heatmaps and the backbone output. That covers a projected stride-1 and two stride-2
Bottlenecks, DetNet's bottleneck C (projection shortcut, 1024 -> 1024) in both new stages
and a bottleneck D. DetNet's widths are fixed, so the ~12.7 M weight values are not stored:
each tensor is the hash `_fixture_value` below, and the npz holds the official key list,
shapes and per-tensor sums proving the regeneration bit-identical. Script and assembly:
/work/parity/detnet/ (make_fixture.py, official_pose_detnet.py, recipe.py).

There is no official HSR-MSNet code: the MSNet block is checked against the blocks it is
built from (`resnet.Bottleneck`, `res2net.Bottle2neck`, both with official parity) by
choosing weights that make the paper's additions neutral, and the SE block by hand.
"""

import functools
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import hash_weights

from jaxpose import weights
from jaxpose.models import hsr_msnet
from jaxpose.models import res2net
from jaxpose.models import resnet

FIXTURE = Path(__file__).parent / "fixtures" / "hsrnet_tiny.npz"
FIXTURE_SEED = 20180417
TINY_STAGES = (1, 1, 1, 2, 1)
BATCH, HEIGHT, WIDTH, NUM_KEYPOINTS = 2, 64, 48, 5
# Eval parity: max |jax - torch| <= 1e-4 * max |torch| (float32, different conv kernels).
RELATIVE_TOLERANCE = 1e-4


def _fixture_value(index: int, key: str, shape: tuple[int, ...]) -> np.ndarray:
  return hash_weights.state_dict_value(index, key, shape, FIXTURE_SEED)


@functools.cache
def _load_fixture() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(fixture arrays, the official state_dict it ran with); callers must not mutate them."""
  with np.load(FIXTURE) as data:
    fixture = {key: data[key] for key in data.files}
  keys = [str(key) for key in fixture["keys"]]
  shapes = [tuple(int(d) for d in row[:n]) for row, n in zip(fixture["shapes"], fixture["ndims"])]
  state_dict = {key: _fixture_value(i, key, shape)
                for i, (key, shape) in enumerate(zip(keys, shapes))}
  sums = np.array([state_dict[key].astype(np.float64).sum() for key in keys])
  np.testing.assert_array_equal(sums, fixture["tensor_sums"])
  return fixture, state_dict


def _tiny_model(**overrides) -> hsr_msnet.HSRMSNet:
  return hsr_msnet.HSRMSNet(stage_sizes=TINY_STAGES, num_keypoints=NUM_KEYPOINTS, **overrides)


def _convert(state_dict, model):
  return weights.convert(state_dict, model, hsr_msnet.torch_key, hsr_msnet.kernel_axes,
                         input_hw=(HEIGHT, WIDTH))


def _assert_close_to_scale(actual, expected):
  scale = float(np.abs(expected).max())
  error = float(np.abs(np.asarray(actual, np.float32) - expected).max())
  assert error <= RELATIVE_TOLERANCE * scale, f"max abs error {error} vs output scale {scale}"


def _apply(module, variables, x):
  return jax.jit(functools.partial(module.apply, train=False))(variables, x)


def _random_variables(module, x, seed: int):
  """Variables of `module` for input `x`, drawn with numpy (no init compile): kernels
  N(0, 2 / fan_in); BN scale and running var U(0.5, 1.5), BN bias and running mean and
  dense biases N(0, 0.2^2)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), x)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      values = rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    elif name in ("scale", "var"):
      values = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      values = 0.2 * rng.standard_normal(leaf.shape)
    return jnp.asarray(values, jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _set(tree, path, value):
  """A copy of the nested dict `tree` with tree[path[0]]...[path[-1]] = value."""
  if len(path) == 1:
    return {**tree, path[0]: value}
  return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


class OfficialParityTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fixture, state_dict = _load_fixture()
    cls.model = _tiny_model()
    cls.variables = _convert(state_dict, cls.model)

  def test_eval_heatmaps_and_features_match_official(self):
    (heatmaps, aux) = jax.jit(functools.partial(self.model.apply, train=False))(
        self.variables, self.fixture["images_nhwc"])
    _assert_close_to_scale(heatmaps, self.fixture["heatmaps_nhwc"])
    _assert_close_to_scale(aux["backbone"], self.fixture["features_nhwc"])

  def test_train_mode_heatmaps_match_official(self):
    # Train mode normalises with the batch's (biased) statistics in both frameworks.
    apply = jax.jit(functools.partial(self.model.apply, train=True, mutable=["batch_stats"]))
    (heatmaps, _), updates = apply(self.variables, self.fixture["images_nhwc"])
    _assert_close_to_scale(heatmaps, self.fixture["heatmaps_train_nhwc"])
    chex.assert_trees_all_equal_shapes(updates["batch_stats"], self.variables["batch_stats"])

  def test_key_map_by_hand(self):
    cases = {
        ("params", ("backbone", "conv1", "kernel")): "conv1.weight",
        ("params", ("backbone", "layer2_0", "downsample_conv", "kernel")):
            "layer2.0.downsample.0.weight",
        ("batch_stats", ("backbone", "layer4_0", "extra_bn", "var")):
            "layer4.0.extra_conv.1.running_var",
        ("params", ("backbone", "layer5_0", "extra_conv", "kernel")):
            "layer5.0.extra_conv.0.weight",
        ("params", ("backbone", "layer3_4", "convs_3", "kernel")): "layer3.4.convs.3.weight",
        ("batch_stats", ("backbone", "layer1_0", "bns_0", "mean")): "layer1.0.bns.0.running_mean",
        ("params", ("backbone", "layer1_2", "se", "fc2", "bias")): "layer1.2.se.fc2.bias",
        ("params", ("deconv1", "kernel")): "deconv_layers.3.weight",
        ("params", ("deconv1_bn", "scale")): "deconv_layers.4.weight",
        ("params", ("final_layer", "bias")): "final_layer.bias",
    }
    for (collection, path), expected in cases.items():
      self.assertEqual(hsr_msnet.torch_key(collection, path), expected)
    self.assertEqual(hsr_msnet.kernel_axes(("deconv0", "kernel")), ((2, 3, 0, 1), (2, 3, 0, 1)))
    self.assertEqual(hsr_msnet.kernel_axes(("backbone", "layer1_0", "se", "fc1", "kernel")),
                     ((1, 0), (1, 0)))


class SqueezeExcitationTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_by_hand(self):
    # C = 2, reduction 2 -> 1 hidden unit. Image 0: channel means (2, 4), hidden
    # ReLU(0.5 * 2 - 0.25 * 4 + 0.5) = 0.5, logits (2 * 0.5, -2 * 0.5 + 1) = (1, 0), gate
    # (sigmoid(1), 1/2). Image 1: means (0, 4), hidden ReLU(-0.5) = 0, gate sigmoid(0, 1).
    x = jnp.array([[[[1.0, 2.0], [3.0, 6.0]]], [[[0.0, 4.0], [0.0, 4.0]]]])  # [2, 1, 2, 2]
    params = {"fc1": {"kernel": jnp.array([[0.5], [-0.25]]), "bias": jnp.array([0.5])},
              "fc2": {"kernel": jnp.array([[2.0, -2.0]]), "bias": jnp.array([0.0, 1.0])}}
    out = self.variant(hsr_msnet.SqueezeExcitation(reduction=2).apply)({"params": params}, x)
    s1 = 1.0 / (1.0 + np.exp(-1.0))
    expected = np.array([[[[s1, 1.0], [3 * s1, 3.0]]], [[[0.0, 4 * s1], [0.0, 4 * s1]]]])
    chex.assert_trees_all_close(out, expected, rtol=1e-6)


class MSNetBlockTest(chex.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(("projection_stride2", 2, 16, True),
                                  ("identity", 1, 32, False))
  def test_scale_one_is_bottleneck_with_se(self, stride, in_channels, first):
    # s = 1, base width 64: the single split conv is the bottleneck's 3x3 and MSNet is
    # ResNet's Bottleneck with SE before the addition. With W2 = 0 the SE gate is the
    # constant c = sigmoid(b2), which scales bn3's output: Bottleneck with bn3 scale and
    # bias times c.
    x = jax.random.uniform(jax.random.key(1), (2, 8, 6, in_channels))
    block = hsr_msnet.MSNetBlock(8, stride, base_width=64, scale=1, first_in_stage=first)
    variables = _random_variables(block, x, seed=2)
    gate = 0.3
    params = variables["params"]
    params = _set(params, ("se", "fc2", "kernel"), jnp.zeros_like(params["se"]["fc2"]["kernel"]))
    params = _set(params, ("se", "fc2", "bias"), jnp.full((32,), np.log(gate / (1 - gate))))
    out = _apply(block, {**variables, "params": params}, x)

    rename = {"convs_0": "conv2", "bns_0": "bn2"}
    plain = {collection: {rename.get(k, k): v for k, v in tree.items() if k != "se"}
             for collection, tree in variables.items()}
    bn3 = {name: gate * value for name, value in plain["params"]["bn3"].items()}
    plain["params"] = {**plain["params"], "bn3": bn3}
    expected = _apply(resnet.Bottleneck(8, stride), plain, x)
    chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=1e-5)

  @parameterized.parameters(1, 2)
  def test_stage_block_with_averaging_last_conv_is_res2net(self, stride):
    # A stage's first block: Res2Net average-pools its last split (3x3, padding 1, zeros
    # counted). The MSNet conv that replaces it, with every tap I/9, identity BN and SE
    # gate 1 (W2 = 0, b2 = 40: sigmoid is 1 in float32), computes exactly that; ReLU keeps
    # the (post-ReLU, non-negative) average. All other weights are shared.
    x = jax.random.uniform(jax.random.key(3), (2, 8, 6, 16))
    block = hsr_msnet.MSNetBlock(8, stride, base_width=16, scale=4, first_in_stage=True)
    variables = _random_variables(block, x, seed=4)
    params, stats = variables["params"], variables["batch_stats"]
    width = params["convs_3"]["kernel"].shape[-1]
    params = _set(params, ("convs_3", "kernel"),
                  jnp.broadcast_to(jnp.eye(width) / 9.0, (3, 3, width, width)))
    params = _set(params, ("bns_3",), {"scale": jnp.ones(width), "bias": jnp.zeros(width)})
    stats = _set(stats, ("bns_3",), {"mean": jnp.zeros(width), "var": jnp.full(width, 1 - 1e-5)})
    params = _set(params, ("se", "fc2", "kernel"), jnp.zeros_like(params["se"]["fc2"]["kernel"]))
    params = _set(params, ("se", "fc2", "bias"), jnp.full((32,), 40.0))
    out = _apply(block, {"params": params, "batch_stats": stats}, x)

    drop = ("convs_3", "bns_3", "se")
    shared = {c: {k: v for k, v in tree.items() if k not in drop}
              for c, tree in (("params", params), ("batch_stats", stats))}
    reference = res2net.Bottle2neck(8, stride, base_width=16, scale=4, first_in_stage=True)
    expected = _apply(reference, shared, x)
    chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=1e-5)

  def test_hierarchical_block_with_neutral_additions_is_res2net(self):
    # A non-first block: MSNet's y_4 = K_4(x_4 + y_3) where Res2Net passes x_4 through.
    # With y_3 = 0 (bns_2 scale and bias 0) and K_4 the identity (centre tap I, identity
    # BN), y_4 = x_4; y_1 and y_2 = K_2(x_2 + y_1) still exercise the hierarchy. SE gate 1.
    x = jax.random.uniform(jax.random.key(5), (2, 6, 5, 32))
    block = hsr_msnet.MSNetBlock(8, 1, base_width=16, scale=4)
    variables = _random_variables(block, x, seed=6)
    params, stats = variables["params"], variables["batch_stats"]
    width = params["convs_3"]["kernel"].shape[-1]
    params = _set(params, ("bns_2",), {"scale": jnp.zeros(width), "bias": jnp.zeros(width)})
    params = _set(params, ("convs_3", "kernel"),
                  jnp.zeros((3, 3, width, width)).at[1, 1].set(jnp.eye(width)))
    params = _set(params, ("bns_3",), {"scale": jnp.ones(width), "bias": jnp.zeros(width)})
    stats = _set(stats, ("bns_3",), {"mean": jnp.zeros(width), "var": jnp.full(width, 1 - 1e-5)})
    params = _set(params, ("se", "fc2", "kernel"), jnp.zeros_like(params["se"]["fc2"]["kernel"]))
    params = _set(params, ("se", "fc2", "bias"), jnp.full((32,), 40.0))
    out = _apply(block, {"params": params, "batch_stats": stats}, x)

    drop = ("convs_3", "bns_3", "se")
    shared = {c: {k: v for k, v in tree.items() if k not in drop}
              for c, tree in (("params", params), ("batch_stats", stats))}
    expected = _apply(res2net.Bottle2neck(8, 1, base_width=16, scale=4), shared, x)
    chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=1e-5)

  def test_every_split_is_convolved(self):
    x = jnp.zeros((1, 8, 8, 64))
    params = jax.eval_shape(functools.partial(
        hsr_msnet.MSNetBlock(64, 2, first_in_stage=True).init, train=False),
        jax.random.key(0), x)["params"]
    width = 26  # floor(64 * 26 / 64)
    self.assertEqual(sorted(k for k in params if k.startswith("convs_")),
                     [f"convs_{i}" for i in range(4)])
    self.assertEqual(params["convs_3"]["kernel"].shape, (3, 3, width, width))
    self.assertEqual(params["se"]["fc1"]["kernel"].shape, (256, 16))

  def test_non_first_block_must_keep_its_input(self):
    block = hsr_msnet.MSNetBlock(8, 2)
    with self.assertRaisesRegex(ValueError, "not first in its stage"):
      jax.eval_shape(functools.partial(block.init, train=False), jax.random.key(0),
                     jnp.zeros((1, 8, 8, 32)))


class ModelTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters(4, 3, 2)
  def test_tiny_shapes_every_deconv_kernel(self, kernel):
    model = _tiny_model(deconv_kernel=kernel, multiscale=True, base_width=8, scale=2)
    images = jnp.zeros((BATCH, HEIGHT, WIDTH, 3))
    (heatmaps, aux), variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0), images)
    chex.assert_shape(heatmaps, (BATCH, HEIGHT // 4, WIDTH // 4, NUM_KEYPOINTS))
    self.assertEqual(heatmaps.dtype, jnp.float32)
    self.assertEqual(variables["params"]["deconv0"]["kernel"].shape, (kernel, kernel, 1024, 256))
    chex.assert_shape(aux["backbone"], (BATCH, HEIGHT // 16, WIDTH // 16, 1024))

  def test_bfloat16_compute_keeps_float32_params_and_output(self):
    model = _tiny_model(multiscale=True, dtype=jnp.bfloat16)
    (heatmaps, aux), variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0),
        jnp.zeros((1, HEIGHT, WIDTH, 3)))
    self.assertEqual({leaf.dtype for leaf in jax.tree.leaves(variables)}, {jnp.dtype("float32")})
    self.assertEqual(heatmaps.dtype, jnp.float32)
    self.assertEqual(aux["backbone"].dtype, jnp.bfloat16)

  def test_rejects_size_not_multiple_of_16(self):
    with self.assertRaisesRegex(ValueError, "divisible by 16"):
      jax.eval_shape(functools.partial(_tiny_model().init, train=False), jax.random.key(0),
                     jnp.zeros((1, 64, 40, 3)))

  @parameterized.named_parameters(
      # HSRNet: equal to the official DetNet (@735e2c5) + pose_resnet head assembly's sum of
      # numel (/work/parity/detnet/count.py). HSR-MSNet: no official code; equal to the
      # closed form HSRNet - ResNet layer1-3 + Res2Net-26w4s layer1-3 + per block one
      # width x width 3x3 conv-BN + SE (/work/parity/detnet/msnet_count_check.py).
      ("hsrnet59", hsr_msnet.hsrnet59, 22_595_921),
      ("hsrnet110", hsr_msnet.hsrnet110, 41_588_049),
      ("hsrnet161", hsr_msnet.hsrnet161, 57_231_697),
      ("hsr_msnet59", hsr_msnet.hsr_msnet59, 24_357_521),
      ("hsr_msnet110", hsr_msnet.hsr_msnet110, 47_770_193),
      ("hsr_msnet161", hsr_msnet.hsr_msnet161, 67_056_017))
  def test_full_size_parameters_and_stride_16(self, preset, expected):
    init = functools.partial(preset(num_keypoints=17).init_with_output, train=False)
    (heatmaps, aux), variables = jax.eval_shape(init, jax.random.key(0),
                                                jnp.zeros((1, 256, 192, 3)))
    self.assertEqual(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])), expected)
    # The dilated stages 5-6 (layer4-5) keep layer3's stride 16: 256x192 -> 16x12.
    self.assertEqual([s.shape[1:] for s in aux["stages"]],
                     [(64, 48, 256), (32, 24, 512), (16, 12, 1024), (16, 12, 1024),
                      (16, 12, 1024)])
    chex.assert_shape(heatmaps, (1, 64, 48, 17))


if __name__ == "__main__":
  absltest.main()
