"""SAN's 2D family ("integral_2d", configs/san_2d.py): targets, loss, eval decoding, a smoke run.

Golden numbers are hand computations: a stub model whose soft-argmax sits on one heatmap
pixel (a logit of 40 there, 0 elsewhere: every other pixel has probability < 1e-15) against
targets x / w - 0.5, y / h - 0.5 (integral-human-pose's `generate_joint_location_label`),
the L1 sum / B, its gradient sign(pred - target) / B, and the crop's inverse affine
(image = center + (input pixel - input_wh / 2) * scale_wh / input_wh).
"""


import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import san_2d
from jaxpose import families
from jaxpose import integral2d_step
from jaxpose import step as step_lib
from jaxpose.codecs import heatmap as heatmap_codec
from jaxpose.codecs import integral
from jaxpose.data import pipeline
from jaxpose.errors import UserError
from jaxpose.evaluation import topdown
from jaxpose.losses import integral_l1


class PeakModel(nn.Module):
  """Heatmap logits of 40 on one pixel per joint (`peaks_xy`, heatmap pixels), 0 elsewhere,
  whatever the image; returns the SAN 2D outputs (logits, {"coords"}). A BatchNorm on the
  image mean (times 0) gives it the `batch_stats` the train step carries."""
  peaks_xy: tuple[tuple[int, int], ...]
  heatmap_wh: tuple[int, int]

  @nn.compact
  def __call__(self, images, *, train: bool):
    width, height = self.heatmap_wh
    peaks = np.zeros((height, width, len(self.peaks_xy)), np.float32)
    for k, (x, y) in enumerate(self.peaks_xy):
      peaks[y, x, k] = 40.0
    logits = self.param("logits", lambda key: jnp.asarray(peaks))
    zero = 0.0 * nn.BatchNorm(use_running_average=not train)(images.mean(axis=(1, 2)))[:, :1]
    logits = logits[None] + zero[:, :, None, None]
    return logits, {"coords": integral.soft_argmax_2d(logits)}


# 32x32 crops, 8x8 maps; joint 0 predicted at heatmap (2, 5), joint 1 at (6, 1): normalised
# (-0.25, 0.125) and (0.25, -0.375).
INPUT_WH = (32, 32)
PEAK_MODEL = PeakModel(peaks_xy=((2, 5), (6, 1)), heatmap_wh=(8, 8))
# Crop-pixel (x, y, labelled) of three samples; sample 1's joint 0 is unlabelled, sample 2
# is skipped (its image unreadable).
KEYPOINTS = np.array([[[12.0, 22.0, 2.0], [8.0, 6.0, 1.0]],
                      [[30.0, 30.0, 0.0], [26.0, 28.0, 2.0]],
                      [[16.0, 16.0, 2.0], [16.0, 16.0, 2.0]]], np.float32)
SKIPPED = np.array([0, 0, 1], np.int32)


def _batch(keypoints=KEYPOINTS, skipped=SKIPPED) -> dict:
  raw = dict(image=np.full((len(keypoints), *INPUT_WH[::-1], 3), 128, np.uint8),
             keypoints=keypoints, skipped=skipped)
  return integral2d_step.EncodeIntegralTargets(INPUT_WH).map(raw)


class TargetsAndLossTest(chex.TestCase):

  def test_targets_are_normalised_crop_pixels_weighted_by_labels(self):
    batch = _batch()
    expected = np.array([[[12 / 32 - 0.5, 22 / 32 - 0.5], [8 / 32 - 0.5, 6 / 32 - 0.5]],
                         [[30 / 32 - 0.5, 30 / 32 - 0.5], [26 / 32 - 0.5, 28 / 32 - 0.5]],
                         [[0.0, 0.0], [0.0, 0.0]]], np.float32)
    chex.assert_trees_all_close(batch["coords_target"], expected, atol=1e-7)
    weights = np.array([[[1, 1], [1, 1]], [[0, 0], [1, 1]], [[0, 0], [0, 0]]], np.float32)
    chex.assert_trees_all_equal(batch["target_weight"], weights)
    assert set(batch) == {"image", "coords_target", "target_weight", "skipped"}

  @chex.variants(with_jit=True, without_jit=True)
  def test_l1_and_its_gradient_by_hand(self):
    batch = _batch()
    predicted = np.broadcast_to(np.float32([[-0.25, 0.125], [0.25, -0.375]]), (3, 2, 2))

    def loss(coords):
      return integral_l1.integral_l1_per_sample(coords, batch["coords_target"],
                                                batch["target_weight"]).mean()

    value, grad = self.variant(jax.value_and_grad(loss))(jnp.asarray(predicted))
    # Targets (-0.125, 0.1875), (-0.25, -0.3125); (-, -), (0.3125, 0.375); skipped.
    # Sample 0: 0.125 + 0.0625 + 0.5 + 0.0625 = 0.75; sample 1, joint 1 only: 0.0625 + 0.75 =
    # 0.8125; sample 2: 0. Mean over B = 3.
    chex.assert_trees_all_close(value, (0.75 + 0.8125) / 3, rtol=1e-6)
    # sign(pred - target) / B where labelled (no ties: JAX's |x|' at 0 is 1, torch's 0);
    # exactly 0 for the unlabelled joint and the skipped sample.
    expected = np.array([[[-1, -1], [1, -1]], [[0, 0], [-1, -1]], [[0, 0], [0, 0]]]) / 3
    chex.assert_trees_all_equal(grad, jnp.asarray(expected, jnp.float32))


@pytest.fixture(scope="module")
def peak_step():
  tx = optax.sgd(0.1)
  state = step_lib.create_train_state(PEAK_MODEL, tx, jax.random.key(0), INPUT_WH[::-1])
  train_step = families.FAMILIES["integral_2d"].make_train_step(PEAK_MODEL, tx, None)
  return state, jax.jit(train_step)


def test_train_step_loss_on_a_hand_computed_batch(peak_step):
  state, train_step = peak_step
  _, metrics = train_step(state, _batch(), jax.random.key(1))
  chex.assert_trees_all_close(float(metrics["loss_sum"]), 0.75 + 0.8125, rtol=1e-6)
  assert float(metrics["num_samples"]) == 3.0
  assert float(metrics["labelled_joints"]) == 3.0  # the skipped sample's joints count 0


def test_unlabelled_joints_and_skipped_samples_change_nothing(peak_step):
  """Moving an unlabelled joint or a skipped sample's joints leaves the update unchanged;
  moving a labelled joint changes it (so the comparison can fail)."""
  state, train_step = peak_step
  new_state, metrics = train_step(state, _batch(), jax.random.key(1))
  moved = KEYPOINTS.copy()
  moved[1, 0, :2] = [3.0, 5.0]
  moved[2, :, :2] = [[1.0, 2.0], [30.0, 4.0]]
  moved_state, moved_metrics = train_step(state, _batch(moved), jax.random.key(1))
  chex.assert_trees_all_equal(new_state.params, moved_state.params)
  assert float(metrics["loss_sum"]) == float(moved_metrics["loss_sum"])
  moved[0, 0, :2] = [3.0, 5.0]
  changed_state, _ = train_step(state, _batch(moved), jax.random.key(1))
  assert not np.array_equal(changed_state.params["logits"], new_state.params["logits"])


class EvalDecodeTest(chex.TestCase):
  """The evaluator's predict step for "integral_2d" and the top-down inverse affine:
  48 x 64 crops (w x h), 12 x 16 maps; the crop covers 96 x 128 image pixels around
  (100, 200), so image = (100, 200) + (input - (24, 32)) * 2."""

  def setUp(self):
    super().setUp()
    self.config = san_2d.get_config("smoke")
    self.config.input.size_hw = (64, 48)
    self.model = PeakModel(peaks_xy=((3, 10), (8, 2)), heatmap_wh=(12, 16))
    self.variables = self.model.init(jax.random.key(0), jnp.zeros((1, 64, 48, 3)), train=False)
    self.center_xy = np.float32([[100.0, 200.0]])
    self.scale_wh = np.float32([[96.0, 128.0]])

  def _image_xy(self, flip_index):
    options = topdown.predict_options(self.config)
    predict = topdown.make_predict_step(self.config, self.model, flip_index, options)
    xy, scores = self.variant(predict)(self.variables, jnp.zeros((1, 64, 48, 3), jnp.uint8))
    chex.assert_trees_all_equal(scores, jnp.ones((1, 2), jnp.float32))
    _, heatmap_wh = pipeline.input_and_heatmap_wh(self.config)
    return heatmap_codec.heatmap_to_image_xy(np.asarray(xy), self.center_xy, self.scale_wh,
                                             heatmap_wh)

  @chex.variants(with_jit=True, without_jit=True)
  def test_known_coordinate_maps_to_its_image_pixel(self):
    # Joint 0: heatmap (3, 10) -> input (12, 40) -> image (100 - 24, 200 + 16) = (76, 216);
    # joint 1: heatmap (8, 2) -> input (32, 8) -> image (116, 152).
    chex.assert_trees_all_close(self._image_xy(None), np.array([[[76.0, 216.0], [116.0, 152.0]]]),
                                atol=1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_flip_test_averages_the_mirrored_prediction(self):
    # The stub predicts the same on the mirrored crop; mirrored back (x -> 47 - x, joints
    # swapped) joint 0 reads joint 1's (32, 8) as (15, 8): mean (13.5, 24) -> image (79, 184);
    # joint 1: mean of (32, 8) and (47 - 12, 40) = (33.5, 24) -> image (119, 184).
    chex.assert_trees_all_close(self._image_xy(np.array([1, 0])),
                                np.array([[[79.0, 184.0], [119.0, 184.0]]]), atol=1e-4)

  def test_multi_scale_is_refused(self):
    self.config.eval.multi_scale = (0.8, 1.0)
    with pytest.raises(UserError, match="eval.multi_scale"):
      topdown.make_predict_step(self.config, self.model, None, topdown.predict_options(self.config))
