"""Tests for jaxpose.geometry: hand-computed crops, round trips, HRNet parity."""

from pathlib import Path

import chex
import numpy as np
from absl.testing import absltest, parameterized

from jaxpose import geometry

FIXTURE = Path(__file__).parent / "fixtures" / "hrnet_codec.npz"


class BoxToCenterScaleTest(parameterized.TestCase):

  @parameterized.named_parameters(
      # box (x, y, w, h), aspect w/h, expected center, expected scale (hand: widen, x1.25)
      ("already_3_to_4", (10, 20, 30, 40), 0.75, (25, 40), (37.5, 50)),
      ("too_wide_grows_height", (0, 0, 100, 50), 0.75, (50, 25), (125, 100 / 0.75 * 1.25)),
      ("too_tall_grows_width", (4, 6, 30, 80), 0.75, (19, 46), (75, 100)),
  )
  def test_hand_values(self, box, aspect, center, scale):
    center_xy, scale_wh = geometry.box_to_center_scale(box, aspect)
    np.testing.assert_allclose(center_xy, center)
    np.testing.assert_allclose(scale_wh, scale)

  def test_padding_one_keeps_box_size(self):
    _, scale_wh = geometry.box_to_center_scale((0, 0, 48, 64), 0.75, padding=1.0)
    np.testing.assert_allclose(scale_wh, (48, 64))


class AffineTransformTest(parameterized.TestCase):

  def test_region_corners_map_to_output_corners(self):
    # Crop 40x80 px around (100, 50) into a 20x40 output: a factor 1/2, no rotation.
    matrix = geometry.get_affine_transform((100, 50), (40, 80), 0, (20, 40))
    chex.assert_shape(matrix, (2, 3))
    self.assertEqual(matrix.dtype, np.float64)
    corners = np.array([[80, 10], [120, 90], [100, 50], [120, 10]])
    np.testing.assert_allclose(geometry.affine_transform_points(corners, matrix),
                               [[0, 0], [20, 40], [10, 20], [20, 0]], atol=1e-4)
    np.testing.assert_allclose(matrix, [[0.5, 0, -40], [0, 0.5, -5]], atol=1e-5)

  def test_rotation_90_by_hand(self):
    # Region 40x40 around (100, 50) into 20x20. With +90 deg, the source "up" direction
    # becomes +x: the point 20 px right of the centre goes to the output top-centre
    # (10, 0), and the point 20 px above the centre goes to the left-middle (0, 10).
    matrix = geometry.get_affine_transform((100, 50), (40, 40), 90, (20, 20))
    points = np.array([[120, 50], [100, 30], [100, 50], [100, 70]])
    np.testing.assert_allclose(geometry.affine_transform_points(points, matrix),
                               [[10, 0], [0, 10], [10, 10], [20, 10]], atol=1e-4)

  def test_shift_moves_region_by_fraction_of_scale(self):
    # shift (0.25, 0): the region centre moves 0.25 * 40 = 10 px right.
    matrix = geometry.get_affine_transform((100, 50), (40, 40), 0, (20, 20), shift=(0.25, 0))
    np.testing.assert_allclose(geometry.affine_transform_points([110, 50], matrix), [10, 10],
                               atol=1e-4)

  @parameterized.parameters((0.0, (0, 0)), (37.0, (0.1, -0.2)), (-120.0, (0, 0.05)))
  def test_affine_then_inverse_is_identity(self, rotation, shift):
    rng = np.random.default_rng(0)
    points = rng.uniform(-50, 400, (3, 5, 2))
    args = ((213.5, 160.25), (150.0, 200.0), rotation, (48, 64), shift)
    forward = geometry.get_affine_transform(*args)
    backward = geometry.get_affine_transform(*args, inverse=True)
    round_trip = geometry.affine_transform_points(
        geometry.affine_transform_points(points, forward), backward)
    chex.assert_shape(round_trip, (3, 5, 2))
    np.testing.assert_allclose(round_trip, points, atol=1e-3)

  def test_matches_hrnet_fixture(self):
    # Matrices from HRNet's own get_affine_transform (scale in units of 200 px).
    fixture = np.load(FIXTURE)
    for i in range(len(fixture["affine_matrix"])):
      matrix = geometry.get_affine_transform(
          fixture["affine_center"][i], fixture["affine_scale_200"][i] * 200,
          fixture["affine_rotation"][i], fixture["affine_output_wh"][i],
          shift=fixture["affine_shift"][i], inverse=bool(fixture["affine_inverse"][i]))
      np.testing.assert_allclose(matrix, fixture["affine_matrix"][i], rtol=1e-7, atol=1e-7)


class WarpImageTest(absltest.TestCase):

  def test_pixel_lands_where_the_matrix_sends_it(self):
    image = np.zeros((100, 120, 3), np.uint8)
    image[40, 60] = (255, 128, 7)
    # 20x20 region around pixel (x=60, y=40) into a 20x20 output: identity scale.
    matrix = geometry.get_affine_transform((60, 40), (20, 20), 0, (20, 20))
    crop = geometry.warp_image(image, matrix, (20, 20))
    chex.assert_shape(crop, (20, 20, 3))
    np.testing.assert_array_equal(crop[10, 10], (255, 128, 7))
    self.assertEqual(int(crop.sum()), 255 + 128 + 7)


if __name__ == "__main__":
  absltest.main()
