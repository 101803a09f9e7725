"""Tests for jaxpose.models.realnvp (RLE flow and head) and jaxpose.losses.rle.

Golden numbers in `fixtures/rle_tiny.npz` come from the official RLE code
(Jeff-sjtu/res-loglikelihood-regression @203dc31: `rlepose/models/layers/real_nvp.py`,
`rlepose/models/regression_nf.py`, `rlepose/models/criterion.py`, run unchanged under torch
2.13 on CPU; /work/parity/rle/make_fixture.py, outside the repo because it imports the
official code). The official RegressFlow head (fc_coord, fc_sigma with sigmoid, RealNVP
flow) on a 16-d feature with K = 5 joints, every Linear randomised (seed 20210721), train
mode with labels: it holds the state_dict, features [3, 16], target_uv and target_uv_weight
[3, 5, 2] (two unlabelled joints), the head's pred_jts, sigma, nf_loss, log_phi, the
RLELoss value (size_average True and False), and the flow on 64 random points: log_prob,
backward_p's z and log-determinant, and forward_p(z).
"""

import functools
import math
from pathlib import Path
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxpose import step
from jaxpose.losses import rle
from jaxpose.models import realnvp

FIXTURE = Path(__file__).parent / "fixtures" / "rle_tiny.npz"
TOLERANCE = 1e-5  # the issue's: absolute, relative for values above 1


@functools.cache
def _fixture():
  with np.load(FIXTURE) as data:
    fixture = {key: data[key] for key in data.files}
  prefix = "state_dict/"
  state_dict = {k[len(prefix):]: v for k, v in fixture.items() if k.startswith(prefix)}
  head, variables = realnvp.head_from_torch(state_dict)
  return fixture, state_dict, head, variables


def _assert_close(actual, expected, what: str):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  chex.assert_shape(actual, expected.shape)
  error = np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))
  assert error.max() <= TOLERANCE, f"{what}: max error {error.max():.3g}"


def _flow_weights(variables):
  head = _fixture()[2]
  return head.apply(variables, method=lambda module: module.flow.weights())


class OfficialParityTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fixture, cls.state_dict, cls.head, cls.variables = _fixture()
    cls.flow_weights = _flow_weights(cls.variables)

  def test_head_outputs(self):
    f = self.fixture
    out = self.head.apply(self.variables, f["features"], target_uv=f["target_uv"])
    _assert_close(out["mu_hat"], f["pred_jts"], "pred_jts")
    _assert_close(out["sigma_hat"], f["sigma"], "sigma")
    _assert_close(out["log_phi"], f["log_phi"], "log_phi")
    # The official nf_loss = log(sigma) - log_phi, broadcast over x and y.
    _assert_close(jnp.log(out["sigma_hat"]) - out["log_phi"][..., None], f["nf_loss"], "nf_loss")

  @chex.variants(with_jit=True, without_jit=True)
  def test_flow_log_prob_inverse_and_forward(self):
    f = self.fixture
    log_prob = self.variant(realnvp.flow_log_prob)(self.flow_weights, f["points"])
    _assert_close(log_prob, f["points_log_prob"], "log_prob")
    z, log_det = self.variant(realnvp.flow_inverse)(self.flow_weights, f["points"])
    _assert_close(z, f["points_z"], "backward_p z")
    _assert_close(log_det, f["points_log_det"], "backward_p log_det_J")
    x = self.variant(realnvp.flow_forward)(self.flow_weights, f["points_z"])
    _assert_close(x, f["points_forward_of_z"], "forward_p")

  @chex.variants(with_jit=True, without_jit=True)
  def test_rle_loss(self):
    f = self.fixture
    out = self.head.apply(self.variables, f["features"], target_uv=f["target_uv"])
    per_sample = self.variant(rle.rle_per_sample)(
        out["mu_hat"], out["sigma_hat"], out["log_phi"], f["target_uv"], f["target_uv_weight"])
    chex.assert_shape(per_sample, (3,))
    _assert_close(per_sample.mean(), f["loss"], "RLELoss()")
    _assert_close(per_sample.sum(), f["loss_sum"], "RLELoss(size_average=False)")
    # jaxpose's per-joint target_weight [B, K] means the same as the official [B, K, 2].
    per_joint = rle.rle_per_sample(out["mu_hat"], out["sigma_hat"], out["log_phi"],
                                   f["target_uv"], f["target_uv_weight"][..., 0])
    chex.assert_trees_all_close(per_joint, per_sample, rtol=1e-6)

  def test_import_checks_mask_and_keys(self):
    bad_mask = dict(self.state_dict, **{"flow.mask": realnvp.coupling_masks()[::-1]})
    with self.assertRaisesRegex(ValueError, "flow.mask must be the official"):
      realnvp.head_from_torch(bad_mask)
    missing = {k: v for k, v in self.state_dict.items() if k != "flow.t.3.2.bias"}
    with self.assertRaisesRegex(ValueError, r"missing flow\.t\.3\.2\.bias"):
      realnvp.head_from_torch(missing)
    self.assertEqual(realnvp.torch_key(("flow", "s3", "linear4", "kernel")), "flow.s.3.4.weight")
    self.assertEqual(realnvp.torch_key(("fc_sigma", "bias")), "fc_sigma.linear.bias")
    prefixed = {f"module.{k}": v for k, v in self.state_dict.items()}
    _, variables = realnvp.head_from_torch(prefixed, prefix="module.")
    chex.assert_trees_all_equal(variables, self.variables)


class FlowPropertiesTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # The official flow init (torch nn.Linear defaults: weight and bias U(+-1/sqrt(fan_in)),
    # drawn with numpy: compiling `init` takes ~10 s) and the fixture's larger weights.
    flow = realnvp.RealNVP()
    shapes = jax.eval_shape(flow.init, jax.random.key(0), jnp.zeros((1, 2)))["params"]
    rng = np.random.default_rng(0)
    default_init = {net: {linear: {name: rng.uniform(-1, 1, leaf.shape).astype(np.float32)
                                   / np.sqrt(layer["kernel"].shape[0])
                                   for name, leaf in layer.items()}
                          for linear, layer in layers.items()}
                    for net, layers in shapes.items()}
    cls.weight_sets = {
        "default_init": flow.apply({"params": default_init}, method=lambda m: m.weights()),
        "fixture": _flow_weights(_fixture()[3]),
    }
    cls.points = 1.5 * np.random.default_rng(1).standard_normal((32, 2)).astype(np.float32)

  @chex.variants(with_jit=True, without_jit=True)
  def test_inverts(self):
    for name, weights in self.weight_sets.items():
      z, _ = self.variant(realnvp.flow_inverse)(weights, self.points)
      back = self.variant(realnvp.flow_forward)(weights, z)
      np.testing.assert_allclose(back, self.points, atol=1e-5, err_msg=name)
      x = self.variant(realnvp.flow_forward)(weights, self.points)
      np.testing.assert_allclose(realnvp.flow_inverse(weights, x)[0], self.points, atol=1e-5,
                                 err_msg=name)

  def test_log_det_is_log_abs_det_jacobian(self):
    for name, weights in self.weight_sets.items():
      inverse = lambda p, w=weights: realnvp.flow_inverse(w, p)[0]
      jacobians = jax.vmap(jax.jacfwd(inverse))(self.points)  # [N, 2, 2]
      _, expected = jnp.linalg.slogdet(jacobians)
      _, log_det = realnvp.flow_inverse(weights, self.points)
      np.testing.assert_allclose(log_det, expected, atol=1e-5, err_msg=name)

  def test_density_integrates_to_one(self):
    grid = jnp.linspace(-10.0, 10.0, 201)  # a Riemann sum at spacing 0.1
    points = jnp.stack(jnp.meshgrid(grid, grid), axis=-1)
    log_prob = jax.jit(realnvp.flow_log_prob)
    for name, weights in self.weight_sets.items():
      mass = jnp.exp(log_prob(weights, points)).sum() * (grid[1] - grid[0])**2
      self.assertAlmostEqual(float(mass), 1.0, delta=1e-3, msg=name)

  def test_chunked_log_prob_equals_direct(self):
    weights = self.weight_sets["fixture"]
    # 10 rows of 4 points with 16 points per step: 4 rows per rematerialised step, and a
    # remainder of 2 rows.
    x = np.random.default_rng(2).standard_normal((10, 4, 2)).astype(np.float32)

    def rows_and_grads(log_prob_fn):
      rows, vjp = jax.vjp(lambda w: log_prob_fn(w, x), weights)
      return rows, vjp(jnp.ones_like(rows))[0]

    with mock.patch.object(realnvp, "CHUNK_POINTS", 16):  # read when traced, inside the patch
      (chunked, chunked_grad), (direct, direct_grad) = jax.jit(lambda: (
          rows_and_grads(realnvp.flow_log_prob_chunked), rows_and_grads(realnvp.flow_log_prob)))()
    np.testing.assert_allclose(chunked, direct, atol=1e-5)
    chex.assert_trees_all_close(chunked_grad, direct_grad, atol=1e-4)


class LossTest(chex.TestCase):

  def test_uv_from_xy(self):
    uv = rle.uv_from_xy(jnp.array([[48.0, 16.0], [0.0, 64.0]]), (64, 128))
    chex.assert_trees_all_close(uv, jnp.array([[0.25, -0.375], [-0.5, 0.0]]))

  @chex.variants(with_jit=True, without_jit=True)
  def test_rle_by_hand_with_identity_flow(self):
    # With an identity flow G is the prior: log_phi = -|bar|^2 / 2 - log(2 pi).
    mu, sigma, target = np.array([0.1, -0.2]), np.array([0.5, 0.25]), np.array([0.0, 0.0])
    bar = (mu - target) / sigma  # (0.2, -0.8)
    log_phi = -0.5 * (0.2**2 + 0.8**2) - math.log(2 * math.pi)
    expected = sum(math.log(s) - log_phi + math.log(s * math.sqrt(2 * math.pi))
                   + abs(t - m) / (math.sqrt(2) * s + 1e-9) for m, s, t in zip(mu, sigma, target))
    self.assertAlmostEqual(float(realnvp.prior_log_prob(jnp.array(bar))), log_phi, places=6)
    # A second joint with weight 0 adds nothing.
    loss = self.variant(rle.rle_per_sample)(
        jnp.array([[mu, mu + 1]]), jnp.array([[sigma, sigma]]), jnp.array([[log_phi, 5.0]]),
        jnp.array([[target, target]]), jnp.array([[1.0, 0.0]]))
    np.testing.assert_allclose(loss, [expected], rtol=1e-6)

  def _aux(self, sigma_per_joint, h2, log_phi=True):
    b, k = sigma_per_joint.shape
    aux = {"h2": h2, "mu_hat": jnp.zeros((b, k, 2)),
           "sigma_hat": jnp.repeat(sigma_per_joint[..., None], 2, -1)}
    if log_phi:
      aux["log_phi"] = jnp.zeros((b, k))
    return aux

  @chex.variants(with_jit=True, without_jit=True)
  def test_chi_modes(self):
    rng = np.random.default_rng(3)  # numpy: eager jax.random would compile per shape
    h1 = rng.uniform(size=(2, 3, 8, 8, 4)).astype(np.float32)  # [B, S, h, w, K]
    h2 = rng.uniform(size=(2, 8, 8, 4)).astype(np.float32)
    target = rng.uniform(size=(2, 8, 8, 4)).astype(np.float32)
    weight = jnp.array([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    uv = jnp.zeros((2, 4, 2))
    sigma = jnp.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    aux = self._aux(sigma, h2)
    terms = {chi: self.variant(functools.partial(rle.sadinet_terms, chi=chi))(
        h1, aux, target, weight, uv) for chi in rle.CHI_MODES}
    # Independent: the trainer's JointsMSE per sample (mean over stacks and joints).
    loss_h1 = step.joints_mse_per_sample(h1, target, weight)
    loss_h2 = step.joints_mse_per_sample(h2, target, weight)
    np.testing.assert_allclose(terms["sum"]["heatmaps"], loss_h1 + loss_h2, rtol=1e-6)
    np.testing.assert_allclose(terms["sigma"]["h1"], loss_h1, rtol=1e-6)
    per_joint_h1 = rle.joints_mse_per_joint(h1, target, weight)
    per_joint_h2 = rle.joints_mse_per_joint(h2, target, weight)
    np.testing.assert_allclose(
        terms["sigma"]["heatmaps"],
        ((1 - sigma) * per_joint_h1 + sigma * per_joint_h2).mean(-1), rtol=1e-6)
    np.testing.assert_allclose(
        terms["sigma_swapped"]["heatmaps"],
        (sigma * per_joint_h1 + (1 - sigma) * per_joint_h2).mean(-1), rtol=1e-6)
    for chi, t in terms.items():
      np.testing.assert_allclose(t["total"], t["heatmaps"] + t["rle"], rtol=1e-6, err_msg=chi)

  def test_chi_is_not_trained_through_the_heatmap_terms(self):
    h1, h2 = jnp.ones((1, 1, 4, 4, 2)), jnp.zeros((1, 4, 4, 2))
    target, weight = jnp.full((1, 4, 4, 2), 0.5), jnp.ones((1, 2))

    def heatmap_loss(sigma):
      return rle.sadinet_terms(h1, self._aux(sigma, h2), target, weight, jnp.zeros((1, 2, 2)))
    grad = jax.grad(lambda s: heatmap_loss(s)["heatmaps"].sum())(jnp.full((1, 2), 0.3))
    chex.assert_trees_all_equal(grad, jnp.zeros((1, 2)))

  def test_errors_name_the_problem(self):
    h1, h2 = jnp.zeros((1, 1, 4, 4, 2)), jnp.zeros((1, 4, 4, 2))
    args = (h1, self._aux(jnp.full((1, 2), 0.5), h2), h2, jnp.ones((1, 2)), jnp.zeros((1, 2, 2)))
    with self.assertRaisesRegex(ValueError, "unknown chi mode 'chi'; valid: sigma, sum"):
      rle.sadinet_terms(*args, chi="chi")
    args = (h1, self._aux(jnp.full((1, 2), 0.5), h2, log_phi=False), *args[2:])
    with self.assertRaisesRegex(ValueError, "target_uv"):
      rle.sadinet_per_sample(*args)


if __name__ == "__main__":
  absltest.main()
