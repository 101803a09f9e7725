"""Tests for jaxpose.codecs.heatmap: hand values, round trips and HRNet parity.

Golden numbers in `fixtures/hrnet_codec.npz` come from the official HRNet numpy code
(leoxiaobin/deep-high-resolution-net.pytorch @6f69e46: generate_target, get_max_preds,
get_final_preds, flip_back, validate's flip shift, get_affine_transform, and evaluate's
rescoring + oks_nms) run unchanged on seeded inputs. The script that made it imports
the official code, so it is kept outside the repo.
"""

import functools
from pathlib import Path

import chex
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxpose.codecs import heatmap
from jaxpose.data import keypoints as keypoints_lib

FIXTURE = Path(__file__).parent / "fixtures" / "hrnet_codec.npz"
INPUT_WH = (192, 256)
HEATMAP_WH = (48, 64)  # stride 4


class EncodeTest(absltest.TestCase):

  def test_gaussian_values_by_hand(self):
    # (40, 80) / stride 4 = heatmap (10, 20). Value = exp(-(dx^2 + dy^2) / (2 * 2^2)).
    heatmaps, weight = heatmap.encode([[40.0, 80.0]], [2], INPUT_WH, HEATMAP_WH, sigma=2.0)
    chex.assert_shape(heatmaps, (64, 48, 1))
    self.assertEqual(heatmaps.dtype, np.float32)
    np.testing.assert_array_equal(weight, [1.0])
    self.assertEqual(heatmaps[20, 10, 0], 1.0)
    np.testing.assert_allclose(heatmaps[20, 11, 0], np.exp(-1 / 8), rtol=1e-6)
    np.testing.assert_allclose(heatmaps[21, 12, 0], np.exp(-5 / 8), rtol=1e-6)
    np.testing.assert_allclose(heatmaps[20, 16, 0], np.exp(-36 / 8), rtol=1e-6)  # window edge, 3 sigma
    self.assertEqual(heatmaps[20, 17, 0], 0.0)  # outside the 13-pixel window
    self.assertEqual(heatmaps[14, 4, 0], np.float32(np.exp(-72 / 8)))  # window corner
    self.assertEqual(int((heatmaps > 0).sum()), 13 * 13)

  def test_centre_rounds_half_up(self):
    # mu = int(x / 4 + 0.5): 41.9 -> 10.975 -> 10 and 42 -> 11.0 -> 11.
    heatmaps, _ = heatmap.encode([[41.9, 80.0], [42.0, 80.0]], [1, 1], INPUT_WH, HEATMAP_WH, 2.0)
    self.assertEqual(heatmaps[20, 10, 0], 1.0)
    self.assertEqual(heatmaps[20, 11, 1], 1.0)

  def test_target_weight_zero_cases(self):
    keypoints_xy = [[40.0, 80.0],  # unlabelled
                    [192 + 7 * 4, 80.0],  # window starts right of the heatmap: mu 55, start 49
                    [40.0, -30 * 4],  # far above
                    [191.0, 255.0]]  # bottom-right corner, still inside
    heatmaps, weight = heatmap.encode(keypoints_xy, [0, 2, 1, 1], INPUT_WH, HEATMAP_WH, 2.0)
    np.testing.assert_array_equal(weight, [0, 0, 0, 1])
    np.testing.assert_array_equal(heatmaps[..., :3], 0)
    self.assertGreater(heatmaps[..., 3].max(), 0)

  def test_hrnet_quirk_window_ending_at_border_keeps_weight(self):
    # x = -30 -> mu = int(-7.5 + 0.5) = -7, window [-13, 0): nothing drawn, yet HRNet
    # only zeroes the weight when the exclusive end is < 0.
    heatmaps, weight = heatmap.encode([[-30.0, 80.0]], [1], INPUT_WH, HEATMAP_WH, 2.0)
    np.testing.assert_array_equal(weight, [1])
    np.testing.assert_array_equal(heatmaps, 0)

  def test_matches_hrnet_generate_target(self):
    fixture = np.load(FIXTURE)
    for i in range(int(fixture["num_encode_cases"])):
      heatmaps, weight = heatmap.encode(
          fixture[f"encode{i}_keypoints_xy"], fixture[f"encode{i}_visibility"],
          tuple(fixture[f"encode{i}_input_wh"]), tuple(fixture[f"encode{i}_heatmap_wh"]),
          float(fixture[f"encode{i}_sigma"]))
      np.testing.assert_array_equal(
          heatmaps, np.transpose(fixture[f"encode{i}_heatmaps_nchw"], (1, 2, 0)), err_msg=f"case {i}")
      np.testing.assert_array_equal(weight, fixture[f"encode{i}_target_weight"], err_msg=f"case {i}")


def _encode_batch(keypoints_xy, sigma=2.0):
  heatmaps, _ = heatmap.encode(keypoints_xy, np.ones(len(keypoints_xy)), INPUT_WH, HEATMAP_WH, sigma)
  return jnp.asarray(heatmaps)[None]


def _decode_to_input_pixels(heatmaps):
  # A crop centred on the input with the input's size makes "image" = input pixels.
  center = np.array([[INPUT_WH[0] / 2, INPUT_WH[1] / 2]])
  scale = np.array([INPUT_WH], np.float64)
  return heatmap.decode(heatmaps, center, scale)


class RoundTripTest(absltest.TestCase):

  def test_grid_keypoints_are_recovered_exactly(self):
    rng = np.random.default_rng(1)
    keypoints_xy = rng.integers(2, (46, 62), (17, 2)) * 4.0  # multiples of the stride
    decoded_xy, scores = _decode_to_input_pixels(_encode_batch(keypoints_xy))
    np.testing.assert_allclose(decoded_xy[0], keypoints_xy, atol=1e-3)
    np.testing.assert_allclose(scores[0], 1.0)

  def test_off_grid_keypoints_within_half_a_heatmap_pixel(self):
    # encode snaps to the nearest heatmap pixel (HRNet), so decode is off by at most
    # half a heatmap pixel = 2 input pixels; the quarter shift cannot undo that snap
    # because the rendered Gaussian is symmetric about the snapped pixel.
    rng = np.random.default_rng(2)
    keypoints_xy = rng.uniform(10, (180, 240), (17, 2))
    decoded_xy, _ = _decode_to_input_pixels(_encode_batch(keypoints_xy))
    self.assertLessEqual(np.abs(decoded_xy[0] - keypoints_xy).max(), 2.0 + 1e-3)

  def test_sub_pixel_peak_recovered_within_a_quarter_pixel(self):
    # A network output peaks between pixels; argmax + quarter shift lands within 0.25.
    rng = np.random.default_rng(3)
    true_xy = rng.uniform(3, (45, 61), (5, 2))
    ys, xs = np.mgrid[0:64, 0:48]
    maps = np.exp(-((xs[..., None] - true_xy[:, 0])**2 + (ys[..., None] - true_xy[:, 1])**2) / 8)
    maps = jnp.asarray(maps[None], jnp.float32)
    argmax_xy, _ = heatmap.decode_argmax(maps)
    refined_xy = heatmap.refine_quarter_offset(maps, argmax_xy)
    self.assertLessEqual(np.abs(np.asarray(refined_xy)[0] - true_xy).max(), 0.25 + 1e-6)


class DecodeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_single_peak_is_recovered(self):
    heatmaps = jnp.zeros((1, 8, 6, 1)).at[0, 5, 2, 0].set(1.0)  # [B, H, W, K], peak at x=2, y=5
    xy, score = self.variant(heatmap.decode_argmax)(heatmaps)
    chex.assert_trees_all_close((xy, score), (jnp.array([[[2.0, 5.0]]]), jnp.array([[1.0]])))

  @chex.variants(with_jit=True, without_jit=True)
  def test_non_positive_maximum_gives_origin(self):
    heatmaps = jnp.full((2, 4, 5, 3), -1.0).at[1, 2, 3, 1].set(0.0).at[0, 3, 4, 2].set(0.5)
    xy, score = self.variant(heatmap.decode_argmax)(heatmaps)
    chex.assert_shape(xy, (2, 3, 2))
    chex.assert_trees_all_close(xy[1, 1], jnp.zeros(2))  # maxval 0 is not > 0
    chex.assert_trees_all_close(xy[0, 2], jnp.array([4.0, 3.0]))
    chex.assert_trees_all_close(score[:, 1], jnp.array([-1.0, 0.0]))

  @chex.variants(with_jit=True, without_jit=True)
  def test_quarter_offset_by_hand(self):
    # Peak at (x=5, y=4); right neighbour > left -> +0.25 x; up neighbour > down -> -0.25 y.
    heatmaps = (jnp.zeros((1, 9, 8, 2)).at[0, 4, 5].set(1.0).at[0, 4, 6].set(0.6)
                .at[0, 4, 4].set(0.2).at[0, 3, 5].set(0.5).at[0, 5, 5].set(0.1))
    # Channel 1 peaks at x=1: HRNet's strict 1 < px leaves it alone.
    heatmaps = heatmaps.at[0, 4, 1, 1].set(2.0).at[0, 4, 2, 1].set(1.0)
    xy = jnp.array([[[5.0, 4.0], [1.0, 4.0]]])
    refined = self.variant(heatmap.refine_quarter_offset)(heatmaps, xy)
    chex.assert_trees_all_close(refined, jnp.array([[[5.25, 3.75], [1.0, 4.0]]]))

  @chex.variants(with_jit=True, without_jit=True)
  def test_equal_neighbours_do_not_move(self):
    heatmaps = jnp.asarray(heatmap.encode([[20.0, 28.0]], [1], INPUT_WH, HEATMAP_WH, 2.0)[0])[None]
    refined = self.variant(heatmap.refine_quarter_offset)(heatmaps, jnp.array([[[5.0, 7.0]]]))
    chex.assert_trees_all_close(refined, jnp.array([[[5.0, 7.0]]]))

  def test_matches_hrnet_get_max_and_final_preds(self):
    fixture = np.load(FIXTURE)
    heatmaps = jnp.asarray(np.transpose(fixture["decode_heatmaps_nchw"], (0, 2, 3, 1)))
    xy, maxval = heatmap.decode_argmax(heatmaps)
    np.testing.assert_array_equal(np.asarray(xy), fixture["decode_max_xy"])
    np.testing.assert_array_equal(np.asarray(maxval), fixture["decode_max_val"])
    image_xy, scores = heatmap.decode(
        heatmaps, fixture["decode_center"], fixture["decode_scale_200"] * 200)
    # HRNet stores its final predictions as float32 (ulp ~3e-5 at x ~ 500).
    np.testing.assert_allclose(image_xy, fixture["decode_final_xy"], rtol=0, atol=1e-4)
    np.testing.assert_array_equal(scores, fixture["decode_final_val"])


class FlipBackTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_flip_twice_is_identity_without_shift(self):
    flip_index = keypoints_lib.COCO.flip_index
    heatmaps = jnp.asarray(np.random.default_rng(4).normal(size=(2, 8, 6, 17)), jnp.float32)
    flip = self.variant(functools.partial(heatmap.flip_heatmaps_back, shift=False))
    chex.assert_trees_all_close(flip(flip(heatmaps, flip_index), flip_index), heatmaps)

  @chex.variants(with_jit=True, without_jit=True)
  def test_mirror_swap_and_shift_by_hand(self):
    # Channel 0 ("left") peaks at x=1 of W=6: mirrored to x=4, moved to channel 1, then
    # shifted right to x=5; column 0 keeps its mirrored value.
    heatmaps = jnp.zeros((1, 3, 6, 2)).at[0, 1, 1, 0].set(1.0).at[0, 2, 5, 1].set(0.5)
    flipped = self.variant(heatmap.flip_heatmaps_back)(heatmaps, jnp.array([1, 0]))
    expected = jnp.zeros((1, 3, 6, 2)).at[0, 1, 5, 1].set(1.0).at[0, 2, 0, 0].set(0.5).at[0, 2, 1, 0].set(0.5)
    chex.assert_trees_all_close(flipped, expected)

  def test_matches_hrnet_flip_back_and_shift(self):
    fixture = np.load(FIXTURE)
    heatmaps = jnp.asarray(np.transpose(fixture["decode_heatmaps_nchw"], (0, 2, 3, 1)))
    flip_index = keypoints_lib.COCO.flip_index
    for shift, key in ((False, "flip_back_nchw"), (True, "flip_back_shifted_nchw")):
      np.testing.assert_array_equal(
          np.asarray(heatmap.flip_heatmaps_back(heatmaps, flip_index, shift=shift)),
          np.transpose(fixture[key], (0, 2, 3, 1)), err_msg=key)


class HeatmapToImageTest(absltest.TestCase):

  def test_hand_values(self):
    # Crop 96x128 px around (300, 200) onto a 48x64 heatmap: 2 image px per heatmap px,
    # heatmap (24, 32) is the centre, heatmap (0, 0) the region's top-left (252, 136).
    image_xy = heatmap.heatmap_to_image_xy(
        np.array([[[24.0, 32.0], [0.0, 0.0], [10.5, 3.0]]]), np.array([[300.0, 200.0]]),
        np.array([[96.0, 128.0]]), (48, 64))
    chex.assert_shape(image_xy, (1, 3, 2))
    np.testing.assert_allclose(image_xy[0], [[300, 200], [252, 136], [273, 142]], atol=1e-4)


if __name__ == "__main__":
  absltest.main()
