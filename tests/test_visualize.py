"""Tests for jaxpose.visualize: drawing touches only keypoints/limbs; the grid PNG is written."""

import cv2
import numpy as np

from jaxpose import visualize

SKELETON = ((0, 1),)


def _two_keypoints(score_b=1.0):
  return np.array([[[10.0, 10.0, 1.0], [50.0, 10.0, score_b]]])  # [N=1, K=2, 3]


def test_draw_changes_keypoints_and_limb_only():
  image = np.full((40, 64, 3), 30, np.uint8)
  drawn = visualize.draw_skeleton(image, _two_keypoints(), SKELETON, threshold=0.5,
                                  color=(255, 0, 0))
  assert drawn.shape == image.shape and drawn.dtype == np.uint8
  np.testing.assert_array_equal(image, 30)  # input untouched
  np.testing.assert_array_equal(drawn[10, 10], (255, 0, 0))  # keypoint centre
  np.testing.assert_array_equal(drawn[10, 30], (255, 0, 0))  # middle of the limb
  np.testing.assert_array_equal(drawn[35, 60], (30, 30, 30))  # far away
  changed_rows = np.flatnonzero((drawn != image).any(axis=(1, 2)))
  assert changed_rows.min() >= 10 - 4 and changed_rows.max() <= 10 + 4  # radius 3 + antialiasing


def test_low_score_keypoint_and_its_limb_are_skipped():
  image = np.zeros((40, 64, 3), np.uint8)
  drawn = visualize.draw_skeleton(image, _two_keypoints(score_b=0.1), SKELETON, threshold=0.5)
  assert drawn[10, 10].any()
  np.testing.assert_array_equal(drawn[10, 30], 0)  # no limb
  np.testing.assert_array_equal(drawn[10, 50], 0)  # no dot


def test_prediction_grid_png(tmp_path):
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 255, (40, 64, 3), np.uint8), rng.integers(0, 255, (30, 50, 3), np.uint8)]
  # Keypoints below the label strip; the second image has nobody.
  keypoints = [np.array([[[10.0, 28.0, 1.0], [50.0, 28.0, 1.0]]]), np.zeros((0, 2, 3))]
  path = tmp_path / "grid.png"
  grid = visualize.save_prediction_grid(path, images, keypoints, keypoints, SKELETON)
  loaded = cv2.imread(str(path))
  assert loaded is not None and loaded.shape == (2 * 40, 2 * 64, 3)
  np.testing.assert_array_equal(cv2.cvtColor(loaded, cv2.COLOR_BGR2RGB), grid)
  # Ground truth on the left in green, prediction on the right in red, same keypoint.
  np.testing.assert_array_equal(grid[28, 10], visualize.GROUND_TRUTH_COLOR)
  np.testing.assert_array_equal(grid[28, 64 + 50], visualize.PREDICTION_COLOR)
  assert (grid[:8, :40] != np.concatenate(images[:1], 0)[:8, :40]).any()  # label drawn
  np.testing.assert_array_equal(grid[40 + 35, 30], 0)  # padding below the smaller image
