"""Tests for jaxpose.models.samkr (SAMKR: DEKR + subspace attention).

Golden numbers in `fixtures/samkr_tiny.npz` come from official code run unchanged under
torch 2.13 on CPU by /work/parity/ulsam/make_fixture.py (outside the repo):
  sam/<case>  the official `ULSAM(C, C, 9, 7, g)` (Nandan91/ULSAM @9a07d68, `ulsam.py`) with
              every weight and BN statistic random (seed 20220801), cases (C, g) = (16, 8),
              (16, 1), (8, 8); input [2, 9, 7, C] (NHWC in the file), eval- and train-mode
              outputs and the BN running means after the train-mode forward.
  samkr/      the official DEKR tiny model of `fixtures/dekr_tiny.npz` (HRNet/DEKR @7a30313;
              its state_dict and images are read from that file, whose SHA-256 is stored
              here) with one official ULSAM(4, 4, 16, 16, 2) appended to each
              `offset_feature_layers[j]`: the ULSAM keys of its state_dict and its eval- and
              train-mode heatmaps and offsets.
The equation-level tests use hand formulas: Eq. 9 with a zero pointwise conv, and the
adaptive convolution (Eqs. 7-8) with the identity affine map against `lax.conv`.
"""

import functools
import hashlib
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from jaxpose.models import dekr
from jaxpose.models import hrnet
from jaxpose.models import samkr

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE, DEKR_FIXTURE = FIXTURES / "samkr_tiny.npz", FIXTURES / "dekr_tiny.npz"
TINY_STAGES = (hrnet.StageSpec(1, 2, 1), hrnet.StageSpec(1, 3, 1), hrnet.StageSpec(1, 4, 1))
# The DEKR tiny fixture's model with 2 subspaces of 2 channels per branch.
TINY = dict(width=4, heatmap_channels=8, num_keypoints=3, stages=TINY_STAGES,
            offset_channels_per_keypoint=4, num_subspaces=2)
SAM_TOLERANCE = 1e-5  # the brief's SAM parity: max error <= 1e-5 x max |official|
RELATIVE_TOLERANCE = 1e-4  # whole-model parity, as for DEKR


def _load(path: Path) -> dict[str, np.ndarray]:
  with np.load(path) as data:
    return {key: data[key] for key in data.files}


def _with_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  return {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}


def _assert_close_to_scale(actual, expected, what: str, tolerance: float):
  scale = float(np.abs(expected).max())
  error = float(np.abs(np.asarray(actual, np.float32) - expected).max())
  assert error <= tolerance * scale, f"{what}: max abs error {error} vs scale {scale}"


def _fast_compile_jit(fn):
  """jit without XLA's backend optimisations (as test_dekr.py: most of a tiny DEKR's compile
  time, and they change outputs only by float rounding)."""
  return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


def _random_sam_variables(channels: int, groups: int, seed: int) -> dict:
  """SubspaceAttention variables with every leaf random (BN variances positive)."""
  module = samkr.SubspaceAttention(groups)
  shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0),
                          jnp.zeros((1, 4, 4, channels)))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: (rng.uniform(0.5, 1.5, leaf.shape) if path[-1].key == "var"
                          else rng.normal(0, 1, leaf.shape)).astype(np.float32), shapes)


def _parameter_count(model: samkr.SAMKR) -> int:
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                             jnp.zeros((1, 64, 64, 3)))
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


class SubspaceAttentionTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(False, True)
  def test_attention_maps_sum_to_one(self, train):
    variables = _random_sam_variables(12, 3, seed=0)
    x = np.random.default_rng(1).normal(0, 2, (2, 5, 7, 12)).astype(np.float32)
    apply = functools.partial(samkr.SubspaceAttention(3).apply, train=train,
                              mutable=["intermediates", "batch_stats"])
    _, state = self.variant(apply)(variables, x)
    (attention,) = state["intermediates"]["attention"]
    chex.assert_shape(attention, (2, 5, 7, 3))
    chex.assert_trees_all_close(attention.sum(axis=(1, 2)), np.ones((2, 3)), atol=1e-6)
    self.assertGreater(float(attention.max() - attention.min()), 1e-3)  # not uniform

  @parameterized.parameters(False, True)
  def test_zero_pointwise_conv_gives_uniform_attention(self, train):
    # Eq. 9: PW^1 = 0 makes the logits one constant per map (ULSAM's BN and ReLU after the
    # pointwise conv keep it constant), so A = 1 / (H W) and O = (1 + 1 / (H W)) f.
    variables = _random_sam_variables(8, 4, seed=2)
    params = dict(variables["params"], point_kernel=np.zeros((4, 2), np.float32),
                  point_bias=np.zeros(4, np.float32))
    x = np.random.default_rng(3).normal(0, 1, (2, 6, 5, 8)).astype(np.float32)
    out, state = jax.jit(functools.partial(
        samkr.SubspaceAttention(4).apply, train=train, mutable=["intermediates", "batch_stats"]))(
            {**variables, "params": params}, x)
    (attention,) = state["intermediates"]["attention"]
    chex.assert_trees_all_close(attention, np.full((2, 6, 5, 4), 1 / 30, np.float32), rtol=1e-6)
    chex.assert_trees_all_close(out, (1 + 1 / 30) * x, rtol=1e-6, atol=1e-7)

  def test_rejects_channels_not_divisible_by_subspaces(self):
    with self.assertRaisesRegex(ValueError, "10 channels .* num_subspaces=4"):
      jax.eval_shape(functools.partial(samkr.SubspaceAttention(4).init, train=False),
                     jax.random.key(0), jnp.zeros((1, 4, 4, 10)))

  @parameterized.parameters("g8_s2", "g1_s16", "g8_s1")
  def test_matches_official_ulsam(self, case):
    fixture = _with_prefix(_load(FIXTURE), f"sam/{case}/")
    variables = samkr.sam_variables_from_torch(_with_prefix(fixture, "state_dict/"))
    groups = variables["params"]["point_kernel"].shape[0]
    x = fixture["input_nhwc"]
    module = samkr.SubspaceAttention(groups)
    out = jax.jit(functools.partial(module.apply, train=False))(variables, x)
    _assert_close_to_scale(out, fixture["output_nhwc"], "eval", SAM_TOLERANCE)
    # The attention term alone (out - x), which is small beside x.
    _assert_close_to_scale(out - x, fixture["output_nhwc"] - x, "eval attention", SAM_TOLERANCE)
    out, updates = jax.jit(functools.partial(module.apply, train=True, mutable=["batch_stats"]))(
        variables, x)
    _assert_close_to_scale(out, fixture["output_train_nhwc"], "train", SAM_TOLERANCE)
    _assert_close_to_scale(out - x, fixture["output_train_nhwc"] - x, "train attention",
                           SAM_TOLERANCE)
    # ULSAM's BatchNorm2d(momentum=0.9): the running mean moves 90% of the way to the batch's.
    expected = samkr.sam_variables_from_torch(_with_prefix(fixture, "after_train/") | {
        key: value for key, value in _with_prefix(fixture, "state_dict/").items()
        if not key.endswith("running_mean")})["batch_stats"]
    for name in ("bn_dws", "bn_point"):
      chex.assert_trees_all_close(updates["batch_stats"][name]["mean"], expected[name]["mean"],
                                  atol=1e-5)


class AdaptiveConvolutionTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters(1, 2)
  def test_identity_affine_transform_is_a_plain_3x3_conv(self, dilation):
    # Eqs. 7-8 with M = I and t = 0 (zero matrix/translation conv weights, matrix bias the
    # identity): the offsets M G - G + t vanish and the deformable conv samples the regular
    # grid, so the block is ReLU(BN(conv3x3(x)) + x).
    block = dekr.AdaptBlock(dilation)
    x = np.random.default_rng(4).normal(0, 1, (2, 7, 6, 5)).astype(np.float32)
    rng = np.random.default_rng(5)
    params = {
        "transform_matrix_conv": {"kernel": np.zeros((3, 3, 5, 4), np.float32),
                                  "bias": np.array([1, 0, 0, 1], np.float32)},
        "translation_conv": {"kernel": np.zeros((3, 3, 5, 2), np.float32),
                             "bias": np.zeros(2, np.float32)},
        "adapt_conv": {"kernel": rng.normal(0, 0.3, (3, 3, 5, 5)).astype(np.float32)},
        "bn": {"scale": rng.uniform(0.5, 1.5, 5).astype(np.float32),
               "bias": rng.normal(0, 0.2, 5).astype(np.float32)}}
    stats = {"bn": {"mean": rng.normal(0, 0.2, 5).astype(np.float32),
                    "var": rng.uniform(0.5, 1.5, 5).astype(np.float32)}}
    out = jax.jit(functools.partial(block.apply, train=False))(
        {"params": params, "batch_stats": stats}, x)

    conv = jax.lax.conv_general_dilated(
        x, params["adapt_conv"]["kernel"], (1, 1), [(dilation, dilation)] * 2,
        rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)
    normalised = ((conv - stats["bn"]["mean"]) / np.sqrt(stats["bn"]["var"] + 1e-5)
                  * params["bn"]["scale"] + params["bn"]["bias"])
    chex.assert_trees_all_close(out, jnp.maximum(normalised + x, 0), atol=1e-5)


class SAMKRTest(chex.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("default", dict(), jnp.float32),
      ("default_bfloat16", dict(), jnp.bfloat16),
      ("single_branch", dict(offset_channels_per_keypoint=6, num_subspaces=3, single_branch=True),
       jnp.float32),
      ("g_equals_c", dict(num_subspaces=4), jnp.float32),
      ("g_1", dict(num_subspaces=1), jnp.float32),
  )
  def test_output_shapes_and_dtypes(self, variant, dtype):
    model = samkr.SAMKR(**{**TINY, **variant}, dtype=dtype)
    ((heatmaps, offsets), aux), variables = jax.eval_shape(
        functools.partial(model.init_with_output, train=False), jax.random.key(0),
        jnp.zeros((2, 96, 64, 3)))
    chex.assert_shape(heatmaps, (2, 24, 16, 4))  # K + 1, the centre last
    chex.assert_shape(offsets, (2, 24, 16, 6))  # (x, y) per keypoint
    chex.assert_shape(aux["features"], (2, 24, 16, 4 + 8 + 16 + 32))
    self.assertEqual((heatmaps.dtype, offsets.dtype), (jnp.float32, jnp.float32))
    self.assertEqual({leaf.dtype for leaf in jax.tree.leaves(variables)}, {jnp.dtype("float32")})
    params = variables["params"]
    groups, channels = model.num_subspaces, model.offset_channels_per_keypoint
    if model.single_branch:  # one branch: nothing to scan, the unrolled names
      self.assertNotIn("offset_branches", params)
      stacked, outputs = (), 6
      attention, final = params["offset_attention0"], params["offset_final0"]
    else:  # 3 branches, stacked on a leading axis
      self.assertEqual([name for name in params if name.startswith("offset_attention")], [])
      stacked, outputs = (3,), 2
      attention, final = (params["offset_branches"][name] for name in ("offset_attention",
                                                                        "offset_final"))
    chex.assert_shape(attention["point_kernel"], stacked + (groups, channels // groups))
    chex.assert_shape(final["kernel"], stacked + (1, 1, channels, outputs))

  def test_variants_are_the_paper_tables(self):
    # (g, c, s) of Table 1 rows 2-4 and Table 2 (12_SAMKR_24 with g = 12, see VARIANTS);
    # Table 1 row 1 is the single branch with c = m = 17 x 16 = 272, s = 34.
    expected = {(1, 16, 16), (16, 16, 1), (8, 16, 2), (2, 16, 8), (4, 16, 4), (8, 8, 1),
                (8, 24, 3), (4, 8, 2), (12, 24, 2)}
    found, single = [], []
    for name, fields in samkr.VARIANTS.items():
      model = samkr.samkr_w32(**fields)
      groups, channels = model.num_subspaces, model.offset_channels_per_keypoint
      self.assertEqual(name.split("_")[:3], [str(groups), "SAMKR", str(channels)])
      self.assertEqual(channels % groups, 0, name)
      (single if model.single_branch else found).append((groups, channels, channels // groups))
    self.assertCountEqual(found, expected)
    self.assertEqual(single, [(8, 272, 34)])
    self.assertEqual(samkr.samkr_w32(), samkr.samkr_w32(**samkr.VARIANTS["8_SAMKR_16"]))

  def test_rejects_branch_width_not_divisible_by_subspaces(self):
    with self.assertRaisesRegex(ValueError, "16 channels .* num_subspaces=3"):
      jax.eval_shape(functools.partial(samkr.SAMKR(**{**TINY, "offset_channels_per_keypoint": 16,
                                                      "num_subspaces": 3}).init, train=False),
                     jax.random.key(0), jnp.zeros((1, 64, 64, 3)))

  def test_parameter_counts(self):
    # Official DEKR with 16 channels per keypoint and an official ULSAM(16, g=8) appended to
    # each branch, counted in torch: 29,582,568 / 65,710,056 (K = 17). The paper: 29.6 M / 65.7 M.
    self.assertEqual(_parameter_count(samkr.samkr_w32()), 29_582_568)
    self.assertEqual(_parameter_count(samkr.samkr_w48()), 65_710_056)


class OfficialParityTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    fixture, dekr_fixture = _load(FIXTURE), _load(DEKR_FIXTURE)
    digest = hashlib.sha256()
    for key in sorted(k for k in dekr_fixture if k.startswith("state_dict/")) + ["images_nhwc"]:
      digest.update(key.encode())
      digest.update(np.ascontiguousarray(dekr_fixture[key]).tobytes())
    if digest.hexdigest() != str(fixture["samkr/dekr_fixture_sha256"]):
      raise AssertionError(f"{DEKR_FIXTURE.name} changed since {FIXTURE.name} was made: rerun "
                           "/work/parity/ulsam/make_fixture.py")
    cls.fixture = _with_prefix(fixture, "samkr/")
    cls.images = dekr_fixture["images_nhwc"]
    cls.state_dict = {**_with_prefix(dekr_fixture, "state_dict/"),
                      **_with_prefix(cls.fixture, "state_dict/")}
    cls.model = samkr.SAMKR(**TINY)
    cls.variables = samkr.convert_torch(cls.state_dict, cls.model)

  def test_eval_outputs_match_official(self):
    # Train mode is left to the SAM-level test above and test_dekr.py: a second whole-model
    # compile would double this test's time.
    (heatmaps, offsets), _ = _fast_compile_jit(functools.partial(self.model.apply, train=False))(
        self.variables, self.images)
    _assert_close_to_scale(heatmaps, self.fixture["heatmaps_nhwc"], "heatmaps", RELATIVE_TOLERANCE)
    _assert_close_to_scale(offsets, self.fixture["offsets_nhwc"], "offsets", RELATIVE_TOLERANCE)

  def test_convert_rejects_wrong_subspace_count(self):
    with self.assertRaisesRegex(ValueError, "offset_attention0: .* 2 subspaces .* num_subspaces=4"):
      samkr.convert_torch(self.state_dict, self.model.clone(num_subspaces=4))
    with self.assertRaisesRegex(ValueError, "lacks offset_feature_layers.1.2.subspaces.1.bn_dws"):
      samkr.convert_torch({k: v for k, v in self.state_dict.items() if not k.startswith(
          "offset_feature_layers.1.2.subspaces.1.bn_dws.weight")}, self.model)


if __name__ == "__main__":
  absltest.main()
