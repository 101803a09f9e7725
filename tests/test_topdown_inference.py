"""Test-time inference: DARK decoding against the official code, the multi-scale pyramid's
geometry, and flip-test and pyramid invariances.

`fixtures/dark_official.npz` holds seeded heatmaps (int16 codes, value = code / 4096) and the
coordinates DarkPose's own numpy/cv2 post-processing (ilovepose/DarkPose @0185b42,
lib/core/inference.py: get_max_preds, gaussian_blur, log, taylor) gives for them, for blur
kernels 11, 17, 3 and 5; the recipe is in BUILD_NOTES.md.
"""

from pathlib import Path

import chex
import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from configs import default as default_config
from jaxpose import geometry
from jaxpose import mesh as mesh_lib
from jaxpose import step as step_lib
from jaxpose.codecs import heatmap
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import pipeline
from jaxpose.evaluation import detections
from jaxpose.evaluation import topdown

FIXTURE = np.load(Path(__file__).parent / "fixtures" / "dark_official.npz")
COCO = keypoints_lib.COCO


def _gaussian(height: int, width: int, center_xy, sigma: float) -> np.ndarray:
  x, y = np.arange(width)[None, :], np.arange(height)[:, None]
  return np.exp(-((x - center_xy[0]) ** 2 + (y - center_xy[1]) ** 2) / (2 * sigma**2))


class DarkDecodeTest(chex.TestCase, parameterized.TestCase):

  def _check_against_darkpose(self, case, decode_fn):
    heatmaps = jnp.asarray(FIXTURE[f"{case}_heatmap_codes"].astype(np.float32) / 4096)
    xy, maxvals = decode_fn(heatmaps, int(FIXTURE[f"{case}_kernel"]))
    chex.assert_shape(xy, FIXTURE[f"{case}_xy"].shape)
    # float32 on both sides; measured max difference 1.9e-6 px.
    chex.assert_trees_all_close(xy, FIXTURE[f"{case}_xy"], atol=1e-5, rtol=0)
    chex.assert_trees_all_close(maxvals, FIXTURE[f"{case}_maxvals"], atol=0, rtol=0)

  @staticmethod
  def _decode(heatmaps, kernel):
    xy, maxvals = heatmap.decode_argmax(heatmaps)
    return heatmap.refine_dark(heatmaps, xy, kernel), maxvals

  @chex.variants(with_jit=True, without_jit=True)
  def test_equals_darkpose_with_the_traps(self):
    self._check_against_darkpose(
        "k11", self.variant(self._decode, static_argnums=1))

  @parameterized.parameters("k17", "k3", "k5")
  def test_equals_darkpose_other_kernels(self, case):
    self._check_against_darkpose(case, jax.jit(self._decode, static_argnums=1))

  def test_fixture_covers_the_traps(self):
    # All-zero and all-negative maps stay at (0, 0); peaks at x = 1 and x = W - 2 are outside
    # DarkPose's bounds and keep their integer argmax.
    xy = FIXTURE["k11_xy"]
    np.testing.assert_array_equal(xy[0, :2], [[0, 0], [0, 0]])
    np.testing.assert_array_equal(xy[1, 0], [1, 32])
    np.testing.assert_array_equal(xy[1, 1], [46, 3])
    self.assertTrue(np.any(xy % 1 != 0))  # and most keypoints did move

  def test_sampled_gaussian_decodes_to_its_centre(self):
    cases = ((2.0, ((23.3, 31.7), (20.5, 30.5))), (3.0, ((24.9, 33.1), (10.2, 12.8))))
    for sigma, centres in cases:
      heatmaps = np.stack([_gaussian(64, 48, c, sigma) for c in centres], axis=-1)[None]
      heatmaps = jnp.asarray(heatmaps, jnp.float32)  # [1, 64, 48, 2]
      xy, _ = jax.jit(self._decode, static_argnums=1)(heatmaps,
                                                      heatmap.dark_blur_kernel_size(sigma))
      chex.assert_trees_all_close(xy[0], np.array(centres), atol=1e-3, rtol=0)

  def test_without_blur_the_newton_step_is_exact(self):
    # Kernel 1 leaves the map unchanged; the log of a Gaussian is a quadratic, on which the
    # central differences are exact and one Newton step lands on the vertex.
    heatmaps = jnp.asarray(_gaussian(64, 48, (17.37, 40.61), 2.0), jnp.float32)[None, :, :, None]
    xy, _ = jax.jit(self._decode, static_argnums=1)(heatmaps, 1)
    chex.assert_trees_all_close(xy[0, 0], np.array([17.37, 40.61]), atol=1e-5, rtol=0)

  def test_kernel_size_follows_the_training_sigma(self):
    # DarkPose / mmpose: 11 for sigma 2, 17 for sigma 3 (OpenCV's sigma for these sizes).
    self.assertEqual(heatmap.dark_blur_kernel_size(2.0), 11)
    self.assertEqual(heatmap.dark_blur_kernel_size(3.0), 17)


class PyramidWarpTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters(0.5, 0.8, 4 / 3, 2.0)
  def test_equals_cv2_warp_through_the_crop_affines(self, scale_factor):
    # Composed crop affines (scale-s crop heatmap <- image <- base crop heatmap) applied with
    # cv2.warpAffine, bilinear, zero border. Sample positions are multiples of 1/4 px here,
    # which OpenCV's 1/32-px fixed-point interpolation represents exactly.
    heatmap_wh, center, scale_wh = (12, 16), (101.0, 77.0), np.array([48.0, 64.0])
    base_to_image = geometry.get_affine_transform(center, scale_wh, 0.0, heatmap_wh, inverse=True)
    image_to_scaled = geometry.get_affine_transform(center, scale_wh * scale_factor, 0.0,
                                                    heatmap_wh)
    base_to_scaled = (np.vstack([image_to_scaled, [0, 0, 1]])
                      @ np.vstack([base_to_image, [0, 0, 1]]))[:2]
    heatmaps = np.random.default_rng(0).uniform(0, 1, (2, 16, 12, 3)).astype(np.float32)
    expected = np.stack([np.stack([
        cv2.warpAffine(heatmaps[b, :, :, k], base_to_scaled, heatmap_wh,
                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        for k in range(3)], axis=-1) for b in range(2)])
    chex.assert_trees_all_close(heatmap.heatmaps_to_base_crop(heatmaps, scale_factor), expected,
                                atol=1e-6, rtol=0)

  def test_peak_of_a_twice_larger_crop_moves_away_from_the_centre(self):
    # Scale-2 crop: its heatmap pixel (8, 10) is base pixel (W/2 + 2 (8 - W/2), ...) = (10, 12)
    # for W = 12, H = 16.
    heatmaps = np.zeros((1, 16, 12, 1), np.float32)
    heatmaps[0, 10, 8, 0] = 1.0
    resampled = np.asarray(heatmap.heatmaps_to_base_crop(heatmaps, 2.0))
    self.assertEqual(resampled[0, 12, 10, 0], 1.0)
    self.assertEqual(resampled[0, 12, 11, 0], 0.5)  # halfway to the next scale-2 pixel

  def test_scale_one_is_the_identity(self):
    heatmaps = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 6, 3)), jnp.float32)
    self.assertIs(heatmap.heatmaps_to_base_crop(heatmaps, 1.0), heatmaps)


class MirrorEquivariantStub(nn.Module):
  """A parameter-free 'model' whose output is exactly flip-equivariant: channel k is the 4x4
  max-pool of the first image channel, kept on the left half for the first keypoint of a
  left/right pair, on the right half for the second, whole for unpaired keypoints, and scaled
  per pair, so a wrong channel swap or a missing mirror changes the output."""
  flip_index: tuple[int, ...]

  def __call__(self, images, train: bool = False):
    del train
    pooled = nn.max_pool(images[..., :1], (4, 4), strides=(4, 4))
    width = pooled.shape[2]
    left = np.arange(width) < width // 2
    masks, weights = [], []
    for k, partner in enumerate(self.flip_index):
      masks.append(np.ones(width) if partner == k else (left if k < partner else ~left))
      weights.append(1.0 + 0.25 * min(k, partner))
    channel_scale = np.stack(masks, axis=-1) * np.array(weights)  # [w, K]
    return pooled * jnp.asarray(channel_scale, jnp.float32), {}


class TinyConvNet(nn.Module):
  """A random, not flip-equivariant network with heatmaps at 1/4 of the input."""
  num_keypoints: int

  @nn.compact
  def __call__(self, images, train: bool = False):
    del train
    x = nn.relu(nn.Conv(8, (3, 3))(images))
    x = nn.max_pool(x, (4, 4), strides=(4, 4))
    return nn.Conv(self.num_keypoints, (3, 3))(x), {}


def _random_images(seed: int, shape=(2, 64, 48, 3)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


class FlipTestTest(chex.TestCase):

  def test_equivariant_model_flip_test_equals_single_pass(self):
    # Without HRNet's one-pixel shift, averaging an exactly equivariant model with its flipped
    # pass reproduces the single pass bit for bit: the mirror and the channel swap are right.
    model = MirrorEquivariantStub(tuple(int(i) for i in COCO.flip_index))
    images = _random_images(0)
    single = jax.jit(step_lib.make_predict_step(model, None))({}, images)
    flipped = jax.jit(step_lib.make_predict_step(
        model, COCO.flip_index, shift_flipped_heatmaps=False))({}, images)
    chex.assert_trees_all_equal(flipped, single)
    wrong_pairs = jax.jit(step_lib.make_predict_step(
        model, np.arange(COCO.num_keypoints), shift_flipped_heatmaps=False))({}, images)
    self.assertFalse(np.array_equal(wrong_pairs[1], single[1]))  # the test can fail

  def test_symmetric_input_gives_mirrored_keypoints(self):
    # Any network, flip test on a mirror-symmetric image: the averaged heatmap of keypoint k
    # is the mirror of its partner's, so left/right predictions are mirror images
    # (x_k + x_partner = W - 1 in heatmap pixels) with equal scores.
    model = TinyConvNet(COCO.num_keypoints)
    half = _random_images(1, (2, 64, 24, 3))
    images = np.concatenate([half, half[:, :, ::-1]], axis=2)
    # Random weights from numpy: compiling flax's initialisers costs seconds on a busy CPU.
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 48, 3)))
    rng = np.random.default_rng(2)
    variables = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)
    width = 12
    paired = np.flatnonzero(COCO.flip_index != np.arange(COCO.num_keypoints))
    for decode in ("quarter", "dark"):
      xy, scores = jax.jit(step_lib.make_predict_step(
          model, COCO.flip_index, decode=decode, shift_flipped_heatmaps=False))(variables, images)
      xy, scores = np.asarray(xy), np.asarray(scores)
      partner = COCO.flip_index[paired]
      np.testing.assert_array_equal(scores[:, paired], scores[:, partner])
      column = np.floor(xy[:, paired, 0] + 0.5)
      # Maxima <= 0 are put at (0, 0); HRNet's quarter-pixel bounds (1 < x < W - 1) are not
      # mirror-symmetric at x = 1, W - 2.
      comparable = scores[:, paired] > 0
      if decode == "quarter":
        comparable &= (column != 1) & (column != width - 2)
      self.assertGreater(comparable.mean(), 0.5)
      mirrored = np.where(comparable, xy[:, paired, 0] + xy[:, partner, 0], width - 1)
      np.testing.assert_allclose(mirrored, width - 1, atol=1e-5 if decode == "dark" else 0)
      np.testing.assert_allclose(np.where(comparable, xy[:, paired, 1] - xy[:, partner, 1], 0),
                                 0, atol=1e-5 if decode == "dark" else 0)


# Blob centres in 80x96 images, 25-35 px from the crop centre (40, 48).
_BLOBS_XY = ((15.0, 80.0), (65.0, 20.0), (18.0, 22.0))


def _write_images(folder: Path) -> list[Path]:
  """Grey images, each with one bright blob far off the centre."""
  paths = []
  for i, center_xy in enumerate(_BLOBS_XY):
    image = np.full((96, 80, 3), 40, np.uint8)
    blob = _gaussian(96, 80, center_xy, 4.0)
    image[..., 0] = np.clip(40 + 215 * blob, 0, 255).astype(np.uint8)
    path = folder / f"image{i}.png"
    cv2.imwrite(str(path), image[..., ::-1])
    paths.append(path)
  return paths


class PyramidTest(chex.TestCase):
  """`predict_keypoints` with the pyramid, on whole-image boxes of images with one blob."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    folder = Path(absltest.get_default_test_tmpdir()) / "pyramid"
    folder.mkdir(parents=True, exist_ok=True)
    records = [detections.BoxRecord(str(path), i + 1, np.array([0, 0, 80, 96], np.float32),
                                    1.0, (80, 96))
               for i, path in enumerate(_write_images(folder))]
    cls.source = detections.PersonBoxes(records, COCO, "whole images")
    cls.model = MirrorEquivariantStub(tuple(int(i) for i in COCO.flip_index))
    cls.mesh = mesh_lib.make_data_mesh()

  def _predict(self, multi_scale, decode="quarter", flip_test=True):
    config = default_config.get_config("smoke")
    config.eval.batch_size = 2
    config.eval.multi_scale = multi_scale
    config.eval.decode = decode
    config.eval.flip_test = flip_test
    return topdown.predict_keypoints(config, self.model, {}, self.mesh, self.source)

  def test_one_scale_equals_no_pyramid(self):
    for decode in ("quarter", "dark"):
      pyramid = self._predict((1.0,), decode)
      single = self._predict((), decode)
      chex.assert_trees_all_equal(pyramid, single)
      chex.assert_shape(single["keypoints"], (3, COCO.num_keypoints, 3))

  def test_pyramid_crops_and_single_crop_agree(self):
    # The pyramid's first crop is the plain crop; its other crops are the plain crop of a box
    # padded by s (the same pixels `AffineCrop` gives for scale_wh * s).
    config = default_config.get_config("smoke")
    config.eval.batch_size = 2
    batches = list(pipeline.eval_dataset(config, self.source, 2, (1.0, 1.5)))
    plain = list(pipeline.eval_dataset(config, self.source, 2))
    config.augment.box_padding *= 1.5
    padded = list(pipeline.eval_dataset(config, self.source, 2))
    for pyramid, one, wider in zip(batches, plain, padded):
      chex.assert_shape(pyramid["image"], (2, 2, 64, 64, 3))
      np.testing.assert_array_equal(pyramid["image"][:, 0], one["image"])
      np.testing.assert_array_equal(pyramid["image"][:, 1], wider["image"])
      np.testing.assert_array_equal(pyramid["scale_wh"], one["scale_wh"])

  def test_pyramid_peaks_align_on_the_blob(self):
    # Each blob is 25-35 px from the crop centre, so a scale's heatmap mapped back with a wrong
    # factor (s for 1/s) peaks 10-30 px away from the others: the average would then hold
    # three separate peaks of a third of the height instead of one.
    single = self._predict((), flip_test=False)["keypoints"]
    pyramid = self._predict((0.75, 1.0, 1.5), flip_test=False)["keypoints"]
    self.assertEqual(COCO.flip_index[0], 0)  # channel 0 (nose) is unmasked: the whole image
    for i, true_xy in enumerate(_BLOBS_XY):
      # One heatmap pixel is 96 * 1.25 / 16 = 7.5 image px.
      self.assertLess(np.abs(single[i, 0, :2] - true_xy).max(), 7.5)
      self.assertLess(np.abs(pyramid[i, 0, :2] - single[i, 0, :2]).max(), 7.5)
      self.assertGreater(pyramid[i, 0, 2], 0.7 * single[i, 0, 2])


if __name__ == "__main__":
  absltest.main()
