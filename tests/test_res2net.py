"""Tests for jaxpose.models.res2net and its PyTorch checkpoint import.

Golden numbers in `fixtures/res2net_tiny.npz` come from the official `Res2Net`
(Res2Net/Res2Net-PretrainedModels @219c8c6, `res2net.py`, run unchanged under torch 2.13 on
CPU): layers [2, 1, 1, 2], baseWidth 4, scale 4, 10 classes, eval mode, on a [2, 64, 48, 3]
input (stored NHWC). That exercises 'stage' blocks with stride 1 (layer1) and 2 (their
average-pooled last split, on the odd 3-wide layer3 map too), 'normal' blocks and every
downsample. Res2Net's output widths do not shrink with the base width, so the state_dict
(~4 M values) is not stored: every tensor is the deterministic hash `_fixture_value`
below, and the npz holds the official key list, shapes and per-tensor sums, which prove the
regeneration bit-identical. Stored outputs: logits and the layer4 features. The generating
script imports the official code, so it lives outside the repo
(/work/parity/res2net/make_fixture.py, recipe in recipe.py there).
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

from jaxpose.models import res2net
from jaxpose.models import res2net_torch_import

FIXTURE = Path(__file__).parent / "fixtures" / "res2net_tiny.npz"
FIXTURE_SEED = 20190401
BATCH, HEIGHT, WIDTH, NUM_CLASSES = 2, 64, 48, 10
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
  shapes = [tuple(int(d) for d in row[:ndim]) for row, ndim in zip(fixture["shapes"],
                                                                    fixture["ndims"])]
  state_dict = {key: _fixture_value(i, key, shape) for i, (key, shape) in enumerate(zip(keys,
                                                                                        shapes))}
  sums = np.array([state_dict[key].astype(np.float64).sum() for key in keys])
  np.testing.assert_array_equal(sums, fixture["tensor_sums"])
  return fixture, state_dict


@functools.cache
def _tiny_model_and_variables():
  """The fixture network with its official weights (no `init` compile needed)."""
  _, state_dict = _load_fixture()
  return res2net_torch_import.infer_model(state_dict), res2net_torch_import.convert(state_dict)


@functools.cache
def _jitted_apply(train: bool):
  model, _ = _tiny_model_and_variables()
  mutable = ["batch_stats"] if train else False
  return jax.jit(functools.partial(model.apply, train=train, mutable=mutable))


def _param_count(model, size: int = 224) -> int:
  init = functools.partial(model.init, train=False)
  variables = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


class AvgPoolTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_border_windows_count_the_zero_padding(self):
    # torch AvgPool2d(3, stride, padding=1) keeps count_include_pad=True: a corner window
    # of a map of ones holds 4 ones and 5 padded zeros, an edge window 6, the inside 9.
    pooled = self.variant(res2net._avg_pool_3x3, static_argnums=1)(jnp.ones((1, 4, 5, 1)), 1)
    expected = np.full((4, 5), 9.0)
    expected[[0, -1], :] = 6.0
    expected[:, [0, -1]] = 6.0
    expected[[0, 0, -1, -1], [0, -1, 0, -1]] = 4.0
    chex.assert_trees_all_close(pooled[0, :, :, 0], expected / 9.0, atol=1e-6)
    strided = self.variant(res2net._avg_pool_3x3, static_argnums=1)(jnp.ones((1, 3, 3, 1)), 2)
    chex.assert_trees_all_close(strided[0, :, :, 0], np.full((2, 2), 4.0 / 9.0), atol=1e-6)


class Res2NetTest(chex.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.variables = _tiny_model_and_variables()
    cls.images = jax.random.normal(jax.random.key(0), (BATCH, HEIGHT, WIDTH, 3))

  def test_eval_shapes(self):
    logits, aux = _jitted_apply(False)(self.variables, self.images)
    chex.assert_shape(logits, (BATCH, NUM_CLASSES))
    self.assertEqual(logits.dtype, jnp.float32)
    # Every stride-2 step rounds up, as torch: 48 -> 24 -> 12 (layer1) -> 6 -> 3 -> 2.
    self.assertEqual([stage.shape for stage in aux["stages"]],
                     [(BATCH, 16, 12, 256), (BATCH, 8, 6, 512), (BATCH, 4, 3, 1024),
                      (BATCH, 2, 2, 2048)])
    chex.assert_tree_all_finite((logits, aux))

  def test_init_matches_the_variables_tree(self):
    init = functools.partial(self.model.init, train=False)
    variables = jax.eval_shape(init, jax.random.key(0), self.images)
    chex.assert_trees_all_equal_shapes_and_dtypes(variables, self.variables)

  def test_train_mode_updates_batch_stats(self):
    (logits, _), updates = _jitted_apply(True)(self.variables, self.images)
    chex.assert_shape(logits, (BATCH, NUM_CLASSES))
    chex.assert_trees_all_equal_shapes(updates["batch_stats"], self.variables["batch_stats"])
    old = self.variables["batch_stats"]["layer4_1"]["bns_2"]["mean"]
    new = updates["batch_stats"]["layer4_1"]["bns_2"]["mean"]
    self.assertGreater(float(jnp.abs(new - old).max()), 0.0)

  def test_backbone_without_classifier(self):
    model = res2net.Res2Net(stage_sizes=(1, 1, 1, 1), base_width=4, num_classes=None)
    (pooled, aux), variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0), self.images)
    chex.assert_shape(pooled, (BATCH, 2048))
    self.assertLen(aux["stages"], 4)
    self.assertNotIn("fc", variables["params"])

  def test_block_widths_and_splits(self):
    # 26w4s layer3 (256 planes): width floor(256 * 26 / 64) = 104, three 3x3 convs on 104
    # channels; scale 1 keeps a single 3x3 conv on the whole width and no pooled split.
    for scale, num_convs, width in ((4, 3, 104), (1, 1, 104), (8, 7, 104)):
      block = res2net.Bottle2neck(256, stride=2, scale=scale, first_in_stage=True)
      variables = jax.eval_shape(functools.partial(block.init, train=False), jax.random.key(0),
                                 jnp.zeros((1, 8, 8, 512)))
      params = variables["params"]
      self.assertEqual(sorted(k for k in params if k.startswith("convs_")),
                       [f"convs_{i}" for i in range(num_convs)])
      chex.assert_shape(params["conv1"]["kernel"], (1, 1, 512, width * scale))
      chex.assert_shape(params["convs_0"]["kernel"], (3, 3, width, width))

  def test_non_first_block_must_keep_its_input(self):
    block = res2net.Bottle2neck(64, stride=2)
    with self.assertRaisesRegex(ValueError, "not first in its stage.*stride 2"):
      jax.eval_shape(functools.partial(block.init, train=False), jax.random.key(0),
                     jnp.zeros((1, 8, 8, 256)))

  def test_bfloat16_compute_keeps_float32_params_and_output(self):
    model = res2net.Res2Net(stage_sizes=(1, 1, 1, 1), base_width=4, num_classes=NUM_CLASSES,
                            dtype=jnp.bfloat16)
    (logits, aux), variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0), self.images)
    self.assertEqual({leaf.dtype for leaf in jax.tree.leaves(variables)}, {jnp.dtype("float32")})
    self.assertEqual(logits.dtype, jnp.float32)
    self.assertEqual(aux["stages"][3].dtype, jnp.bfloat16)

  @parameterized.parameters((res2net.res2net50_26w4s, 25_699_120),
                            (res2net.res2net50_48w2s, 25_287_304),
                            (res2net.res2net50_14w8s, 25_059_816),
                            (res2net.res2net101_26w4s, 45_206_688))
  def test_official_parameter_counts(self, preset, expected):
    # Sum of numel of the official torch models (`res2net.py` constructors, 1000 classes,
    # counted under torch 2.13 by /work/parity/res2net/count.py).
    self.assertEqual(_param_count(preset()), expected)


class OfficialParityTest(chex.TestCase):

  def test_inferred_model_matches_fixture_config(self):
    model, _ = _tiny_model_and_variables()
    self.assertEqual(model, res2net.Res2Net(stage_sizes=(2, 1, 1, 2), base_width=4, scale=4,
                                            num_classes=NUM_CLASSES))

  def test_eval_logits_and_features_match_official(self):
    fixture, _ = _load_fixture()
    _, variables = _tiny_model_and_variables()
    logits, aux = _jitted_apply(False)(variables, fixture["images_nhwc"])
    for name, actual, expected in (("logits", logits, fixture["logits"]),
                                   ("layer4", aux["stages"][3], fixture["stage4_nhwc"])):
      chex.assert_shape(actual, expected.shape)
      scale = float(np.abs(expected).max())
      error = float(np.abs(np.asarray(actual) - expected).max())
      self.assertLessEqual(error, RELATIVE_TOLERANCE * scale, f"{name}: {error} vs {scale}")


class TorchImportTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.state_dict = dict(_load_fixture()[1])
    cls.model, cls.variables = _tiny_model_and_variables()

  def test_key_map_by_hand(self):
    cases = {
        ("params", ("conv1", "kernel")): "conv1.weight",
        ("batch_stats", ("bn1", "mean")): "bn1.running_mean",
        ("params", ("layer1_0", "convs_2", "kernel")): "layer1.0.convs.2.weight",
        ("batch_stats", ("layer2_0", "bns_1", "var")): "layer2.0.bns.1.running_var",
        ("params", ("layer4_1", "conv3", "kernel")): "layer4.1.conv3.weight",
        ("params", ("layer3_0", "downsample_conv", "kernel")): "layer3.0.downsample.0.weight",
        ("params", ("layer3_0", "downsample_bn", "scale")): "layer3.0.downsample.1.weight",
        ("params", ("fc", "kernel")): "fc.weight",
        ("params", ("fc", "bias")): "fc.bias",
    }
    for (collection, path), expected in cases.items():
      self.assertEqual(res2net_torch_import.torch_key(collection, path), expected)

  def test_linear_weight_is_transposed(self):
    np.testing.assert_array_equal(self.variables["params"]["fc"]["kernel"],
                                  self.state_dict["fc.weight"].T)
    np.testing.assert_array_equal(self.variables["params"]["layer1_0"]["convs_0"]["kernel"],
                                  np.transpose(self.state_dict["layer1.0.convs.0.weight"],
                                               (2, 3, 1, 0)))

  def test_missing_key_is_named(self):
    state_dict = dict(self.state_dict)
    del state_dict["layer2.0.bns.2.running_var"]
    with self.assertRaisesRegex(ValueError, r"1 missing: layer2\.0\.bns\.2\.running_var"):
      res2net_torch_import.convert(state_dict, self.model)

  def test_misshaped_and_extra_keys_are_named(self):
    state_dict = dict(self.state_dict)
    state_dict["fc.weight"] = np.zeros((NUM_CLASSES, 1024), np.float32)
    state_dict["layer1.0.convs.3.weight"] = np.zeros((4, 4, 3, 3), np.float32)
    with self.assertRaises(ValueError) as raised:
      res2net_torch_import.convert(state_dict, self.model)
    message = str(raised.exception)
    self.assertIn("1 mis-shaped: fc.weight: got (10, 1024), expected (10, 2048)", message)
    self.assertIn("1 extra: layer1.0.convs.3.weight", message)

  def test_backbone_import_without_fc(self):
    state_dict = {k: v for k, v in self.state_dict.items() if not k.startswith("fc.")}
    model = res2net_torch_import.infer_model(state_dict)
    self.assertIsNone(model.num_classes)
    variables = res2net_torch_import.convert(state_dict)
    self.assertNotIn("fc", variables["params"])


if __name__ == "__main__":
  absltest.main()
