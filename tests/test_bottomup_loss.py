"""Tests for jaxpose.losses.bottomup against the official DEKR and SWAHR loss code.

Golden numbers in `fixtures/bottomup_loss_official.npz` come from running, under torch
2.13.0 CPU in float64, HRNet/DEKR @7a30313 `lib/core/loss.py` (`MultiLossFactory` with the
COCO yaml factors 1.0 / 0.03, plus `HeatmapLoss` and `OffsetsLoss` alone) and
greatlog/SWAHR-HumanPose @7555826 `lib/core/loss.py` (`MultiLossFactory` with one stage, no
AE loss; per-image losses averaged over the batch as its `trainer.py`), both unchanged, on
seeded random inputs (B 2, 8 x 8 maps, K 3): /work/parity/bottomup_loss/make_loss_fixture.py.
Gradients are torch autograd's of the summed loss.
"""

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxpose.errors import UserError
from jaxpose.losses import bottomup

FIXTURE = Path(__file__).parent / "fixtures" / "bottomup_loss_official.npz"
TOLERANCE = 1e-5


def _fixture() -> dict[str, np.ndarray]:
  with np.load(FIXTURE) as data:
    return {key: data[key] for key in data.files}


class DEKRLossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_heatmap_and_offset_losses_equal_the_official_classes(self):
    f = _fixture()
    for case in ("dekr", "dekr_no_positive"):
      heat = self.variant(bottomup.heatmap_loss)(
          f["dekr/heatmaps_pred"], f["dekr/heatmaps_target"], f["dekr/heatmap_weights"])
      offset = self.variant(bottomup.offset_loss)(
          f["dekr/offsets_pred"], f["dekr/offsets_target"], f[f"{case}/offset_weights"])
      chex.assert_trees_all_close((heat, offset), (f[f"{case}/heatmap_loss_class"],
                                                  f[f"{case}/offset_loss_class"]),
                                  atol=TOLERANCE, rtol=TOLERANCE)

  def test_factored_losses_and_gradients_equal_multi_loss_factory(self):
    f = _fixture()
    config = bottomup.LossConfig()  # DEKR's yaml: heatmap 1.0, offsets 0.03
    for case in ("dekr", "dekr_no_positive"):
      batch = dict(heatmaps=f["dekr/heatmaps_target"], heatmap_weights=f["dekr/heatmap_weights"],
                   offsets=f["dekr/offsets_target"], offset_weights=f[f"{case}/offset_weights"])

      def total(heatmaps, offsets, batch=batch):
        terms = bottomup.bottomup_losses((heatmaps, offsets), {}, batch, config)
        return terms["total"], terms

      (_, terms), grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(
          f["dekr/heatmaps_pred"], f["dekr/offsets_pred"])
      chex.assert_trees_all_close(
          (terms["heatmap"], terms["offset"], terms["scale"]),
          (f[f"{case}/heatmap_loss"], f[f"{case}/offset_loss"], 0.0),
          atol=TOLERANCE, rtol=TOLERANCE)
      chex.assert_shape(grads, [f["dekr/heatmaps_pred"].shape, f["dekr/offsets_pred"].shape])
      # Gradients are ~1e-3 per element: compare relative to their largest value.
      for grad, expected in zip(grads, (f[f"{case}/grad_heatmaps"], f[f"{case}/grad_offsets"])):
        scale = max(float(np.abs(expected).max()), 1e-12)
        chex.assert_trees_all_close(np.asarray(grad) / scale, expected / scale, atol=TOLERANCE)
    self.assertEqual(float(np.abs(f["dekr_no_positive/grad_offsets"]).max()), 0.0)

  def test_smooth_l1_by_hand(self):
    beta = 1.0 / 9.0
    values = jnp.array([0.0, 0.05, -0.05, 0.5, -2.0], jnp.float32)
    expected = np.array([0.0, 0.5 * 0.05**2 / beta, 0.5 * 0.05**2 / beta, 0.5 - beta / 2,
                         2.0 - beta / 2], np.float32)
    chex.assert_trees_all_close(bottomup.smooth_l1(values), expected, atol=1e-7)

  def test_offset_loss_counts_x_and_y_weights_over_the_batch(self):
    # Two images, one positive pixel each for keypoint 0: 4 positive weights in all.
    weights = np.zeros((2, 3, 3, 2), np.float32)
    weights[0, 1, 1] = weights[1, 2, 0] = 0.5
    pred = np.zeros_like(weights)
    target = np.full_like(weights, 1.0)  # |d| = 1 everywhere: smooth-L1 1 - 1/18
    expected = 4 * 0.5 * (1 - 1 / 18) / 4
    chex.assert_trees_all_close(bottomup.offset_loss(pred, target, weights), expected, atol=1e-6)


class SWAHRLossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_losses_and_gradients_equal_the_official_factory(self):
    f = _fixture()
    mask = f["swahr/mask"][..., None]  # SWAHR's image mask [B, h, w] on every channel

    def total(heatmaps, scales):
      heat, scale = bottomup.scale_adaptive_heatmap_loss(heatmaps, f["swahr/heatmaps_target"],
                                                         mask, scales)
      return heat + scale, (heat, scale)

    (_, (heat, scale)), grads = self.variant(jax.value_and_grad(total, (0, 1), has_aux=True))(
        f["swahr/heatmaps_pred"], f["swahr/scales"])
    chex.assert_trees_all_close((heat, scale), (f["swahr/heatmap_loss"], f["swahr/scale_loss"]),
                                atol=TOLERANCE, rtol=TOLERANCE)
    for grad, expected in zip(grads, (f["swahr/grad_heatmaps"], f["swahr/grad_scales"])):
      scale_of = float(np.abs(expected).max())
      chex.assert_trees_all_close(np.asarray(grad) / scale_of, expected / scale_of, atol=TOLERANCE)

  def test_zero_scale_and_exact_prediction_give_zero_loss(self):
    # With s = 0 the scaled target is the target; predicting it exactly costs nothing.
    target = jnp.array([[[[0.0, 0.25, 1.0]]]], jnp.float32)
    heat, scale = bottomup.scale_adaptive_heatmap_loss(target, target, jnp.ones((1, 1, 1, 1)),
                                                       jnp.zeros_like(target))
    chex.assert_trees_all_close((heat, scale), (0.0, 0.0), atol=1e-8)

  def test_step_without_a_scale_head_is_refused(self):
    config = bottomup.LossConfig(heatmap_loss="swahr")
    zeros = jnp.zeros((1, 2, 2, 3))
    batch = dict(heatmaps=zeros, heatmap_weights=zeros, offsets=zeros[..., :2],
                 offset_weights=zeros[..., :2])
    with self.assertRaisesRegex(UserError, "heatmap_scales"):
      bottomup.bottomup_losses((zeros, zeros[..., :2]), {}, batch, config)


class LossConfigTest(absltest.TestCase):

  def test_unknown_names_are_refused(self):
    with self.assertRaisesRegex(UserError, "loss.heatmap_loss: unknown 'mse'"):
      bottomup.LossConfig(heatmap_loss="mse")
    with self.assertRaisesRegex(UserError, "loss.offset_weight: unknown"):
      bottomup.LossConfig.from_mapping({"offset_weight": 0.03})
    self.assertEqual(bottomup.LossConfig.from_mapping({"offset_factor": 0.1}).offset_factor, 0.1)


if __name__ == "__main__":
  absltest.main()
