"""Tests for jaxpose.codecs.integral (soft-argmax, SAN eq. 5-6) and jaxpose.losses.integral_l1.

Golden numbers: hand computations below, and `fixtures/integral_parity.npz`, made by RUNNING
the official JimmySuen/integral-human-pose @ad3f875 functions under torch 2.13 CPU
(`common_loss/integral.py: softmax_integral_tensor`, `loss/integral.py: L1JointLocationLoss`
(+ its backward), `generate_joint_location_label`, `get_joint_location_result`), unchanged
but for two CPU shims (`torch.cuda.comm.broadcast` -> identity, `torch.cuda.FloatTensor` ->
`torch.FloatTensor`), by /work/parity/integral/make_fixture.py (outside the repo: it
imports the official code). Logits are stored NHWC: the official [B, K * D, H, W] becomes
[B, H, W, K * D] with the same joint-major channel order.
  3d/      B=3, K=4, D=5, H=6, W=7; sample 1 is a 2D sample (z weights 0), joint 3 of
           sample 2 unlabelled: coords, loss, d loss / d logits
  2d/      the official function with hm_depth=1 (its 2D path is not implemented)
  label/, result/   encode / decode in a 288x384 (w x h) input
"""

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxpose.codecs import integral
from jaxpose.losses import integral_l1

FIXTURE = Path(__file__).parent / "fixtures" / "integral_parity.npz"
TOLERANCE = 1e-5


def _load_fixture() -> dict[str, np.ndarray]:
  with np.load(FIXTURE) as data:
    return {key: data[key] for key in data.files}


class HandComputedTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_2x2_heatmap(self):
    # p[y, x] = [[0.1, 0.2], [0.3, 0.4]]: p(x=1) = 0.6, p(y=1) = 0.7, so E[x] = 0.6 and
    # E[y] = 0.7 heatmap pixels, normalised 0.6 / 2 - 0.5 = -0.2 and 0.7 / 2 - 0.5 = -0.15.
    logits = jnp.log(jnp.array([[0.1, 0.2], [0.3, 0.4]]))[None, :, :, None]
    coords = self.variant(integral.soft_argmax_2d)(logits)
    chex.assert_trees_all_close(coords, jnp.array([[[-0.2, -0.15]]]), atol=1e-6)
    chex.assert_trees_all_close(integral.to_heatmap_xy(coords, (2, 2)),
                                jnp.array([[[0.6, 0.7]]]), atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_2x2_depth_by_width_volume(self):
    # One joint, H = 1, W = 2, D = 2, p[d, x] = [[0.1, 0.2], [0.3, 0.4]]: E[x] = 0.6,
    # E[z] = 0.7 bins, y is always row 0: (-0.2, -0.5, -0.15).
    p = jnp.array([[0.1, 0.2], [0.3, 0.4]])  # [D, W]
    logits = jnp.log(p).T[None, None]  # [B=1, H=1, W=2, K * D = 2], channel = d
    coords = self.variant(integral.soft_argmax_3d, static_argnums=1)(logits, 1)
    chex.assert_trees_all_close(coords, jnp.array([[[-0.2, -0.5, -0.15]]]), atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_hot_heatmaps_return_their_location(self):
    peaks = [(0, 0, 4, 1), (0, 1, 0, 3), (1, 0, 5, 2), (1, 2, 1, 0)]  # (b, k, y, x)
    logits = jnp.zeros((2, 6, 4, 3))
    for b, k, y, x in peaks:
      logits = logits.at[b, y, x, k].set(100.0)
    coords = self.variant(integral.soft_argmax_2d)(logits)
    xy = integral.to_heatmap_xy(coords, (4, 6))
    for b, k, y, x in peaks:
      chex.assert_trees_all_close(xy[b, k], jnp.array([x, y], jnp.float32), atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_hot_volumes_return_their_location(self):
    num_keypoints, depth, height, width = 2, 5, 4, 3
    peaks = [(0, 0, 3, 2, 1), (0, 1, 0, 1, 4), (1, 0, 2, 0, 0), (1, 1, 1, 2, 3)]  # b, k, y, x, z
    volume = jnp.zeros((2, height, width, num_keypoints, depth))
    for b, k, y, x, z in peaks:
      volume = volume.at[b, y, x, k, z].set(100.0)
    logits = volume.reshape(2, height, width, num_keypoints * depth)  # joint-major channels
    coords = self.variant(integral.soft_argmax_3d, static_argnums=1)(logits, num_keypoints)
    for b, k, y, x, z in peaks:
      expected = jnp.array([x / width, y / height, z / depth]) - 0.5
      chex.assert_trees_all_close(coords[b, k], expected, atol=1e-6)

  def test_rejects_channels_not_multiple_of_keypoints(self):
    with self.assertRaisesRegex(ValueError, "10 channels.*num_keypoints=3"):
      integral.soft_argmax_3d(jnp.zeros((1, 2, 2, 10)), 3)


class CodecTest(chex.TestCase):

  def test_encode_decode_round_trip_and_2d_sample_weights(self):
    keypoints = np.array([[10.0, 20.0, -30.0], [250.0, 300.0, 40.0]])
    targets, weights = integral.encode(keypoints, np.array([1, 0]), (288, 384), has_depth=False)
    np.testing.assert_allclose(targets[0], [10 / 288 - 0.5, 20 / 384 - 0.5, -30 / 288], rtol=1e-6)
    np.testing.assert_array_equal(weights, [[1, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(integral.decode(targets, (288, 384)), keypoints, rtol=1e-5)
    _, weights_3d = integral.encode(keypoints, np.array([1, 1]), (288, 384))
    np.testing.assert_array_equal(weights_3d, np.ones((2, 3)))

  @chex.variants(with_jit=True, without_jit=True)
  def test_flip_back(self):
    keypoints = jnp.array([[[3.0, 5.0, -1.0], [10.0, 7.0, 2.0], [0.0, 1.0, 4.0]]])
    flip = self.variant(integral.flip_back, static_argnums=(1, 2))
    flipped = flip(keypoints, (1, 0, 2), 16)
    chex.assert_trees_all_close(
        flipped, jnp.array([[[5.0, 7.0, 2.0], [12.0, 5.0, -1.0], [15.0, 1.0, 4.0]]]))
    chex.assert_trees_all_close(flip(flipped, (1, 0, 2), 16), keypoints)


class OfficialParityTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fixture = _load_fixture()

  @chex.variants(with_jit=True)  # op-by-op autodiff compiles each primitive: slow
  def test_3d_coords_loss_and_gradient(self):
    f = self.fixture
    num_keypoints = f["3d/targets"].shape[1]
    coords = self.variant(integral.soft_argmax_3d, static_argnums=1)(f["3d/logits_nhwc"],
                                                                      num_keypoints)
    chex.assert_trees_all_close(coords, f["3d/coords"], atol=TOLERANCE)
    loss, grad = self.variant(jax.value_and_grad(integral_l1.integral_l1_loss))(
        f["3d/logits_nhwc"], f["3d/targets"], f["3d/weights"])
    chex.assert_trees_all_close(loss, f["3d/loss"], atol=TOLERANCE)
    chex.assert_trees_all_close(grad, f["3d/grad_nhwc"], atol=TOLERANCE)

  @chex.variants(with_jit=True, without_jit=True)
  def test_2d_is_the_official_depth_one_case(self):
    coords = self.variant(integral.soft_argmax_2d)(self.fixture["2d/logits_nhwc"])
    chex.assert_trees_all_close(coords, self.fixture["2d/coords"][..., :2], atol=TOLERANCE)

  def test_encode_and_decode_match_official(self):
    f = self.fixture
    input_wh = tuple(int(v) for v in f["label/patch_wh"])
    targets, _ = integral.encode(f["label/joints"], np.ones(len(f["label/joints"])), input_wh)
    np.testing.assert_allclose(targets, f["label/targets"], atol=TOLERANCE)
    logits = f["result/logits_nhwc"]
    coords = integral.soft_argmax_3d(logits, f["result/keypoints"].shape[1])
    np.testing.assert_allclose(integral.decode(coords, input_wh), f["result/keypoints"],
                               rtol=TOLERANCE, atol=1e-3)  # pixels, up to 384


class DepthGradientTest(chex.TestCase):
  """Sec. 3.4: a 2D sample supervises x, y only; nothing flows back through its z."""

  def setUp(self):
    super().setUp()
    fixture = _load_fixture()
    self.logits = fixture["3d/logits_nhwc"]
    self.targets = fixture["3d/targets"]
    _, self.weights_2d = integral.encode(np.zeros((4, 3)), np.ones(4), (7, 6), has_depth=False)
    self.weights = np.stack([np.ones((4, 3), np.float32), self.weights_2d])
    self.num_keypoints = 4

  @chex.variants(with_jit=True)  # op-by-op autodiff compiles each primitive: slow
  def test_z_coordinate_gets_exactly_zero_gradient(self):
    coords = integral.soft_argmax_3d(self.logits[:2], self.num_keypoints)

    def loss(coords):
      return integral_l1.integral_l1_per_sample(coords, self.targets[:2], self.weights).mean()

    grad = self.variant(jax.grad(loss))(coords)
    np.testing.assert_array_equal(grad[1, :, 2], 0.0)  # 2D sample: z
    self.assertTrue(np.all(np.abs(grad[1, :, :2]) > 0))  # 2D sample: x, y
    self.assertTrue(np.all(np.abs(grad[0]) > 0))  # 3D sample: x, y, z

  @chex.variants(with_jit=True)  # op-by-op autodiff compiles each primitive: slow
  def test_logit_gradient_ignores_2d_sample_depth_target(self):
    # No path through z: any z target gives bit-identical logit gradients.
    grad_fn = self.variant(jax.grad(integral_l1.integral_l1_loss))
    logits, weights = self.logits[:2], self.weights
    other_z = self.targets[:2].copy()
    other_z[1, :, 2] = [0.4, -0.3, 0.0, 123.0]
    grad_a = grad_fn(logits, self.targets[:2], weights)
    grad_b = grad_fn(logits, other_z, weights)
    np.testing.assert_array_equal(grad_a, grad_b)
    # ... while a 3D sample's z target does move its gradient.
    other_z[0, :, 2] += 0.25
    self.assertGreater(float(jnp.abs(grad_fn(logits, other_z, weights) - grad_a).max()), 0.0)


if __name__ == "__main__":
  absltest.main()
