"""Tests for jaxpose.models.hourglass and its PyTorch checkpoint import.

Golden numbers in `fixtures/hourglass_tiny.npz` come from the official `PoseNet`
(princeton-vl/pytorch_stacked_hourglass @ceedc14, `models/posenet.py` and
`models/layers.py`, run unchanged under torch 2.13 on CPU): nstack 2, inp_dim 16, oup_dim
5, increase 4, every conv weight/bias and BatchNorm weight/bias/running mean/running var
randomised (seed 20160322), eval mode, input [2, 64, 64, 3] (PoseNet itself takes NHWC
images and permutes them). It holds the input, the full official state_dict
(`state_dict/<torch key>`, including the unused same-width `skip_layer` convs) and the
heatmaps of both stacks, stored [B, S, H/4, W/4, K]. The generating script imports the
official code, so it lives outside the repo (/work/parity/hourglass/make_fixture.py).
"""

import functools
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxpose.models import hourglass
from jaxpose.models import hourglass_torch_import

FIXTURE = Path(__file__).parent / "fixtures" / "hourglass_tiny.npz"
BATCH, HEIGHT, WIDTH = 2, 64, 64  # multiples of 64: stride-4 stem, then four 2x poolings
NUM_STACKS, NUM_KEYPOINTS, TINY_WIDTH = 2, 5, 16
# Eval parity: max |jax - torch| <= 1e-4 * max |torch| (float32, different conv kernels).
RELATIVE_TOLERANCE = 1e-4


@functools.cache
def _load_fixture() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(fixture arrays, official state_dict); callers must not mutate them."""
  with np.load(FIXTURE) as data:
    fixture = {key: data[key] for key in data.files}
  prefix = "state_dict/"
  return fixture, {k[len(prefix):]: v for k, v in fixture.items() if k.startswith(prefix)}


@functools.cache
def _tiny_model_and_variables():
  """The fixture's network with its official weights. Compiling `init` of even one stack
  takes 20-30 s on 2 CPU cores (hundreds of small random-init ops), so the run-time tests
  use these converted weights and check `init` with `jax.eval_shape` only."""
  _, state_dict = _load_fixture()
  return (hourglass_torch_import.infer_model(state_dict),
          hourglass_torch_import.convert(state_dict))


@functools.cache
def _jitted_apply(train: bool):
  model, _ = _tiny_model_and_variables()
  mutable = ["batch_stats"] if train else False
  return jax.jit(functools.partial(model.apply, train=train, mutable=mutable))


def _seeded_variables(module, x: jax.Array) -> dict:
  """N(0, 1) float32 variables for `module` from a seeded numpy generator (running variances
  |N(0, 1)|): running `init` eagerly would compile one random kernel per shape."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), x)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  if "batch_stats" in variables:
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
  return variables


class StackedHourglassTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.variables = _tiny_model_and_variables()
    cls.images = jax.random.normal(jax.random.key(0), (BATCH, HEIGHT, WIDTH, 3))

  def test_eval_shapes(self):
    heatmaps, aux = _jitted_apply(False)(self.variables, self.images)
    chex.assert_shape(heatmaps, (BATCH, NUM_STACKS, HEIGHT // 4, WIDTH // 4, NUM_KEYPOINTS))
    chex.assert_shape(aux["features"], (BATCH, HEIGHT // 4, WIDTH // 4, TINY_WIDTH))
    self.assertEqual(heatmaps.dtype, jnp.float32)
    chex.assert_tree_all_finite(heatmaps)

  @chex.variants(with_jit=True, without_jit=True)
  def test_residual_is_identity_or_skip_when_its_last_conv_is_zero(self):
    x = jax.random.normal(jax.random.key(2), (1, 4, 4, 6))
    for features in (6, 10):
      block = hourglass.Residual(features)
      variables = _seeded_variables(block, x)
      variables["params"]["conv3"] = jax.tree.map(jnp.zeros_like, variables["params"]["conv3"])
      out = self.variant(functools.partial(block.apply, train=False))(variables, x)
      skip = variables["params"].get("skip_layer")
      expected = x if skip is None else x @ skip["kernel"][0, 0] + skip["bias"]
      chex.assert_trees_all_close(out, expected, atol=1e-6)
      self.assertEqual(skip is None, features == 6)

  def test_init_matches_the_variables_tree(self):
    init = functools.partial(self.model.init, train=False)
    variables = jax.eval_shape(init, jax.random.key(0), self.images)
    chex.assert_trees_all_equal_shapes_and_dtypes(variables, self.variables)

  def test_torch_default_init(self):
    # torch Conv2d's default init, which the official code keeps: kernel and bias in
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 4 * 3 * 3 here.
    block = hourglass.ConvBlock(64, 3, bn=True)
    init = jax.jit(functools.partial(block.init, train=False))  # one compile, not one per op
    variables = init(jax.random.key(0), jnp.ones((1, 8, 8, 4)))
    bound = 1 / 6
    for leaf in (variables["params"]["conv"]["kernel"], variables["params"]["conv"]["bias"]):
      self.assertLessEqual(float(jnp.abs(leaf).max()), bound)
      self.assertGreater(float(jnp.abs(leaf).max()), 0.8 * bound)
    chex.assert_trees_all_equal(variables["params"]["bn"]["scale"], jnp.ones(64))

  def test_train_mode_updates_batch_stats(self):
    # One stack at width 8 halves the compile of the train-mode graph.
    model = hourglass.hourglass_1(num_keypoints=NUM_KEYPOINTS, width=8)
    variables = _seeded_variables(model, self.images)
    apply = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    (heatmaps, _), updates = apply(variables, self.images)
    chex.assert_shape(heatmaps, (BATCH, 1, HEIGHT // 4, WIDTH // 4, NUM_KEYPOINTS))
    chex.assert_tree_all_finite(heatmaps)
    chex.assert_trees_all_equal_shapes(updates["batch_stats"], variables["batch_stats"])
    old = variables["batch_stats"]["pre0_conv"]["bn"]["mean"]
    new = updates["batch_stats"]["pre0_conv"]["bn"]["mean"]
    self.assertGreater(float(jnp.abs(new - old).max()), 0.0)

  def test_skip_conv_only_where_the_width_changes(self):
    params = self.variables["params"]
    self.assertIn("skip_layer", params["pre1_residual"])  # 64 -> 128
    self.assertIn("skip_layer", params["pre4_residual"])  # 128 -> width
    self.assertNotIn("skip_layer", params["pre3_residual"])  # 128 -> 128: identity
    self.assertNotIn("skip_layer", params["hourglass1"]["up1"])
    # Only the outer hourglass widens (16 -> 16 + increase 4): its `low1` needs a skip conv,
    # the nested ones run at 20 channels throughout. (hourglass1: the last stack, outside
    # the scan; stack 0 is stacks/hourglass, its leaves with a leading axis of 1.)
    chex.assert_shape(params["stacks"]["hourglass"]["low1"]["skip_layer"]["kernel"],
                      (1, 1, 1, 16, 20))
    outer = params["hourglass1"]
    chex.assert_shape(outer["low1"]["skip_layer"]["kernel"], (1, 1, 16, 20))
    chex.assert_shape(outer["low2"]["low1"]["conv3"]["kernel"], (1, 1, 10, 20))
    self.assertNotIn("skip_layer", outer["low2"]["low1"])
    chex.assert_shape(outer["low3"]["skip_layer"]["kernel"], (1, 1, 20, 16))

  def test_bfloat16_compute_keeps_float32_params_and_output(self):
    model = hourglass.hourglass_1(num_keypoints=NUM_KEYPOINTS, width=TINY_WIDTH,
                                  dtype=jnp.bfloat16)
    (heatmaps, aux), variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0), self.images)
    self.assertEqual({leaf.dtype for leaf in jax.tree.leaves(variables)}, {jnp.dtype("float32")})
    self.assertEqual(heatmaps.dtype, jnp.float32)
    self.assertEqual(aux["features"].dtype, jnp.bfloat16)

  def test_rejects_size_not_multiple_of_64(self):
    with self.assertRaisesRegex(ValueError, "divisible by 64.*96, 64"):
      self.model.apply(self.variables, jnp.zeros((1, 96, 64, 3)), train=False)

  def test_official_parameter_count(self):
    # The official PoseNet(nstack=8, inp_dim=256, oup_dim=16) has 32,819,328 parameters, of
    # which 7,385,216 belong to same-width `skip_layer` convs that its forward never runs
    # (sum of numel, counted with the official code under torch 2.13,
    # /work/parity/hourglass/count.py); jaxpose has the 25,434,112 used ones.
    init = functools.partial(hourglass.hourglass_8(num_keypoints=16).init, train=False)
    variables = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 256, 256, 3)))
    self.assertEqual(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])),
                     32_819_328 - 7_385_216)


class OfficialParityTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fixture, cls.state_dict = _load_fixture()

  def test_inferred_model_matches_fixture_config(self):
    model = hourglass_torch_import.infer_model(self.state_dict)
    self.assertEqual((model.num_stacks, model.width, model.num_keypoints, model.increase),
                     (NUM_STACKS, TINY_WIDTH, NUM_KEYPOINTS, 4))

  def test_eval_heatmaps_match_official(self):
    # Both layouts: stacks 0 .. S-2 scanned (the default) and every stack its own module.
    scanned = hourglass_torch_import.infer_model(self.state_dict)
    for model in (scanned, scanned.clone(scan_stacks=False)):
      variables = hourglass_torch_import.convert(self.state_dict, model)
      self.assertEqual("stacks" in variables["params"], model.scan_stacks)
      heatmaps, _ = jax.jit(functools.partial(model.apply, train=False))(
          variables, self.fixture["images_nhwc"])
      expected = self.fixture["heatmaps_nhwc"]
      chex.assert_shape(heatmaps, expected.shape)
      scale = float(np.abs(expected).max())
      error = float(np.abs(np.asarray(heatmaps) - expected).max())
      self.assertLessEqual(error, RELATIVE_TOLERANCE * scale, f"error {error}, scale {scale}")


class TorchImportTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.state_dict = dict(_load_fixture()[1])
    cls.model = hourglass_torch_import.infer_model(cls.state_dict)

  def test_key_map_by_hand(self):
    cases = {
        ("params", ("pre0_conv", "conv", "kernel")): "pre.0.conv.weight",
        ("batch_stats", ("pre0_conv", "bn", "var")): "pre.0.bn.running_var",
        ("params", ("pre1_residual", "skip_layer", "bias")): "pre.1.skip_layer.conv.bias",
        ("params", ("pre4_residual", "bn3", "scale")): "pre.4.bn3.weight",
        ("params", ("hourglass1", "low2", "low2", "low2", "low2", "conv2", "kernel")):
            "hgs.1.0.low2.low2.low2.low2.conv2.conv.weight",
        ("params", ("features0_residual", "conv1", "bias")): "features.0.0.conv1.conv.bias",
        ("batch_stats", ("features1_conv", "bn", "mean")): "features.1.1.bn.running_mean",
        ("params", ("outs1", "conv", "kernel")): "outs.1.conv.weight",
        ("params", ("merge_preds0", "conv", "bias")): "merge_preds.0.conv.conv.bias",
        ("params", ("merge_features0", "conv", "kernel")): "merge_features.0.conv.conv.weight",
    }
    for (collection, path), expected in cases.items():
      self.assertEqual(hourglass_torch_import.torch_key(collection, path), expected)

  def test_drops_exactly_the_unused_skip_convs(self):
    unused = hourglass_torch_import.unused_skip_keys(self.state_dict)
    self.assertIn("pre.3.skip_layer.conv.weight", unused)  # Residual(128, 128)
    self.assertNotIn("pre.4.skip_layer.conv.weight", unused)  # Residual(128, 16): used
    self.assertNotIn("hgs.0.0.low1.skip_layer.conv.bias", unused)  # 16 -> 20 (increase)
    # Same-width residuals, a weight and a bias each: pre.3, and per stack the outer
    # hourglass's up1, 3 x (up1, low1, low3) of the nested ones, the innermost low2 and
    # features.0: 1 + 2 * 12 = 25.
    self.assertLen(unused, 50)
    # A state_dict without them (e.g. exported from jaxpose) converts too.
    kept = {k: v for k, v in self.state_dict.items() if k not in set(unused)}
    hourglass_torch_import.convert(kept, self.model)

  def test_official_trainer_prefix_is_stripped(self):
    # The released checkpoint.pt files hold Trainer(DataParallel(PoseNet)).state_dict().
    prefixed = {f"model.module.{key}": value for key, value in self.state_dict.items()}
    self.assertEqual(hourglass_torch_import.infer_model(prefixed), self.model)
    variables = hourglass_torch_import.convert(prefixed)
    np.testing.assert_array_equal(variables["params"]["outs1"]["conv"]["bias"],
                                  self.state_dict["outs.1.conv.bias"])

  def test_missing_key_is_named(self):
    state_dict = dict(self.state_dict)
    del state_dict["hgs.1.0.low2.low2.up1.bn2.running_mean"]
    missing = r"1 missing: hgs\.1\.0\.low2\.low2\.up1\.bn2\.running_mean"
    with self.assertRaisesRegex(ValueError, missing):
      hourglass_torch_import.convert(state_dict, self.model)

  def test_misshaped_and_extra_keys_are_named(self):
    state_dict = dict(self.state_dict)
    state_dict["outs.0.conv.weight"] = np.zeros((4, 16, 1, 1), np.float32)
    # A skip conv of a residual that does not exist is not an unused official key.
    state_dict["hgs.2.0.up1.skip_layer.conv.weight"] = np.zeros((16, 16, 1, 1), np.float32)
    with self.assertRaises(ValueError) as raised:
      hourglass_torch_import.convert(state_dict, self.model)
    message = str(raised.exception)
    self.assertIn("1 mis-shaped: outs.0.conv.weight: got (4, 16, 1, 1), expected (5, 16, 1, 1)",
                  message)
    self.assertIn("1 extra: hgs.2.0.up1.skip_layer.conv.weight", message)
    self.assertIn("does not match StackedHourglass", message)
    self.assertNotIn("num_batches_tracked", message)


if __name__ == "__main__":
  absltest.main()
