"""Tests for jaxpose.codecs.integral_camera: integral predictions -> image -> camera space (mm).

Golden numbers: hand computations below, and `fixtures/integral_camera_official.npz`, made by
RUNNING the official code unchanged (torch, matplotlib and registry modules stubbed; numpy's
removed np.float / np.int aliases restored) by /work/parity/integral_camera/make_fixture.py
(outside the repo: it imports the official code):
  square/, san/   JimmySuen/integral-human-pose @ad3f875 `trans_coords_from_patch_to_org_3d`
                  then `hm36.evaluate` (its per-sample root-relative `pred` and `gt`, and its
                  hm36_17j MPJPE) on seeded frames: ground truth and 2000 mm-cube crop boxes
                  from the official `from_worldjt_to_imagejt`, every other box rescaled in w
                  and h independently; 18 joints (the official layout with thorax); crops
                  256x256 (official) and 288x384 (SAN); random crop-pixel predictions.
  rotated/        the official `gen_trans_from_patch_cv(..., rot, inv=True)` + `trans_point2d`.
  rle/            Jeff-sjtu/res-loglikelihood-regression @203dc31 `pixel2cam` and
                  `H36m.evaluate` (its saved root-relative `joint_cam`) on random 'uvd'.
"""

from pathlib import Path

import chex
import numpy as np
from absl.testing import absltest

from jaxpose import geometry
from jaxpose.codecs import integral
from jaxpose.codecs import integral_camera
from jaxpose.evaluation import h36m_eval

FIXTURE = Path(__file__).parent / "fixtures" / "integral_camera_official.npz"
RTOL = 1e-6  # the parity bound (relative); measured agreement is ~1e-15


def _load_fixture() -> dict[str, np.ndarray]:
  with np.load(FIXTURE) as data:
    return {key: data[key] for key in data.files}


def _input_wh(fixture: dict[str, np.ndarray], group: str) -> tuple[int, int]:
  return tuple(int(v) for v in fixture[f"{group}/input_wh"])


class OfficialParityTest(chex.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.fixture = _load_fixture()

  def _close(self, actual, expected):
    # Relative to the case's magnitude: the root joint's root-relative value is exactly 0.
    chex.assert_trees_all_close(actual, expected, rtol=RTOL,
                                atol=RTOL * float(np.abs(expected).max()))

  def test_crop_to_image_and_depth_match_trans_coords_from_patch_to_org_3d(self):
    f = self.fixture
    for group in ("square", "san"):
      with self.subTest(group=group):
        input_wh = _input_wh(f, group)
        coords = f[f"{group}/coords_crop_px"]
        image = integral_camera.crop_to_image(coords, f[f"{group}/center_xy"],
                                              f[f"{group}/scale_wh"], input_wh)
        chex.assert_shape(image, coords.shape)
        self._close(image[..., :2], f[f"{group}/official_image"][..., :2])
        np.testing.assert_array_equal(image[..., 2], coords[..., 2])  # depth untouched
        self._close(integral_camera.depth_to_mm(coords[..., 2], input_wh[0]),
                    f[f"{group}/official_image"][..., 2])

  def test_rotated_crop_matches_gen_trans_from_patch_cv_inverse(self):
    f = self.fixture
    image = integral_camera.crop_to_image(
        f["rotated/coords_crop_px"], f["rotated/center_xy"], f["rotated/scale_wh"],
        _input_wh(f, "rotated"), f["rotated/rotation_deg"])
    self._close(image, f["rotated/official_image"])

  def test_decode_to_camera_matches_hm36_evaluate(self):
    f = self.fixture
    for group in ("square", "san"):
      with self.subTest(group=group):
        camera = integral_camera.decode_to_camera(
            f[f"{group}/coords_crop_px"], f[f"{group}/center_xy"], f[f"{group}/scale_wh"],
            _input_wh(f, group), f[f"{group}/focal_xy"], f[f"{group}/principal_xy"],
            f[f"{group}/root_depth_mm"], root_index=0)
        chex.assert_shape(camera, f[f"{group}/coords_crop_px"].shape)
        self._close(camera, f[f"{group}/official_camera_root_relative"])
        # End to end with jaxpose's MPJPE on the 17 scored joints (thorax, 17, left out).
        mpjpe = h36m_eval.mpjpe_per_frame(
            camera[:, :17], f[f"{group}/official_gt_root_relative"][:, :17]).mean()
        self.assertAlmostEqual(float(mpjpe), float(f[f"{group}/official_mpjpe_17j"]),
                               delta=RTOL * float(f[f"{group}/official_mpjpe_17j"]))

  def test_image_to_camera_matches_rle_pixel2cam_and_evaluate(self):
    f = self.fixture
    uvd = f["rle/uvd"]
    # RLE's depth is normalised by bbox_3d_shape[0] = 2000 mm: z * w crop pixels for ours.
    z_mm = integral_camera.depth_to_mm(uvd[..., 2] * 256, 256) + f["rle/root_depth_mm"][:, None]
    camera = integral_camera.image_to_camera(uvd[..., :2], z_mm, f["rle/focal_xy"],
                                             f["rle/principal_xy"])
    chex.assert_shape(camera, uvd.shape)
    self._close(camera, f["rle/pixel2cam"])
    root_relative = (camera - camera[:, :1])[:, :17]
    self._close(root_relative, f["rle/official_joint_cam_root_relative"])


class HandComputedTest(chex.TestCase):

  def test_skeleton_round_trip_through_encode_recovers_camera_joints(self):
    # A 17-joint skeleton (mm, root-relative, y down, z away from the camera) placed with its
    # root at (120, -80, 4800) in front of a camera with known intrinsics.
    skeleton = np.array([
        [0, 0, 0], [-130, 10, 20], [-140, 450, 60], [-150, 880, 110], [130, -10, -20],
        [150, 440, -90], [160, 870, -40], [0, -230, 10], [0, -480, 30], [10, -560, -90],
        [5, -660, -20], [170, -430, 40], [330, -250, 160], [420, -40, 230], [-170, -430, -30],
        [-340, -260, -150], [-430, -50, -240]], np.float64)
    camera_joints = skeleton + np.array([120.0, -80.0, 4800.0])
    focal, principal = np.array([1145.0, 1143.5]), np.array([512.5, 515.25])
    image = camera_joints[:, :2] / camera_joints[:, 2:] * focal + principal
    # Crop by hand: a 480 x 470 px box (not the input's aspect ratio) around (541, 496), near
    # the projected root (541.125, 496.19), onto a 256 x 256 input; depth as the official
    # target, z / 2000 mm * w. The official affine is solved from float32 point triples
    # (centre, centre + half box), which for an arbitrary box costs ~1e-7 of its size
    # (~1e-4 mm here); this box's triples are exact in float32, so only `encode`'s float32
    # targets limit the round trip (2e-5 mm).
    input_wh, center, box = (256, 256), np.array([541.0, 496.0]), np.array([480.0, 470.0])
    crop_xy = (image - center) * np.array(input_wh) / box + np.array(input_wh) / 2
    crop_z = (camera_joints[:, 2] - camera_joints[0, 2]) / 2000.0 * input_wh[0]
    keypoints = np.concatenate([crop_xy, crop_z[:, None]], axis=1)

    targets, _ = integral.encode(keypoints, np.ones(17), input_wh)  # float32, as trained
    coords = integral_camera.normalised_to_crop_px(targets[None], input_wh)
    chex.assert_trees_all_close(coords[0], keypoints, rtol=0, atol=1e-5)
    recovered = integral_camera.decode_to_camera(
        coords, center[None], box[None], input_wh, focal[None], principal[None],
        np.array([camera_joints[0, 2]]))
    chex.assert_shape(recovered, (1, 17, 3))
    chex.assert_trees_all_close(recovered[0], skeleton, rtol=0, atol=1e-4)

  def test_crop_to_image_quarter_turn(self):
    # Box 100 x 60 at (300, 200), 50 x 30 input (2 image px per crop px), rotated by 90
    # degrees: the crop's +x axis is the image's +y axis, the crop's +y is the image's -x.
    center, box, input_wh = np.array([300.0, 200.0]), np.array([100.0, 60.0]), (50, 30)
    crop = np.array([[[25.0, 15.0, 7.0], [35.0, 15.0, -3.0], [25.0, 20.0, 0.5]]])
    expected = np.array([[[300.0, 200.0, 7.0], [300.0, 220.0, -3.0], [290.0, 200.0, 0.5]]])
    image = integral_camera.crop_to_image(crop, center, box, input_wh, rotation_deg=90.0)
    chex.assert_trees_all_close(image, expected, rtol=0, atol=1e-9)

  def test_image_to_camera_and_depth_to_mm(self):
    # u = c_x -> X = 0; u = c_x + f_x -> X = Z; v = c_y - f_y / 2 -> Y = -Z / 2.
    xy = np.array([[[500.0, 400.0], [1500.0, 200.0]]])
    camera = integral_camera.image_to_camera(xy, np.array([[3000.0, 4000.0]]),
                                             np.array([1000.0, 400.0]), np.array([500.0, 400.0]))
    chex.assert_trees_all_close(camera, np.array([[[0.0, 0.0, 3000.0],
                                                   [4000.0, -2000.0, 4000.0]]]),
                                rtol=0, atol=1e-9)
    # Half the crop width of depth is half the 2000 mm cube.
    self.assertEqual(float(integral_camera.depth_to_mm(128.0, 256)), 1000.0)
    self.assertEqual(float(integral_camera.depth_to_mm(-72.0, 288, 3000.0)), -750.0)

  def test_normalised_to_crop_px(self):
    coords = np.array([[[0.0, 0.0, 0.0], [-0.5, 0.5, 0.25]]])
    expected = np.array([[[144.0, 192.0, 0.0], [0.0, 384.0, 72.0]]])
    crop = integral_camera.normalised_to_crop_px(coords, (288, 384))
    chex.assert_trees_all_close(crop, expected, rtol=0, atol=0)
    self.assertEqual(crop.dtype, np.float64)
    chex.assert_trees_all_close(np.asarray(integral.decode(coords, (288, 384))), crop)


class PropertyTest(chex.TestCase):

  def test_equals_jaxpose_crop_inverse_when_box_has_the_input_aspect(self):
    # HRNet's crop (geometry.get_affine_transform) reads only the box width; with the box at
    # the input's aspect ratio the official two-axis patch affine is the same map.
    rng = np.random.default_rng(0)
    input_wh = (192, 256)
    points = rng.uniform(-10, 260, (3, 6, 2))
    for rotation in (0.0, 30.0, -75.0):
      centers = rng.uniform(100, 900, (3, 2))
      widths = rng.uniform(80, 400, 3)
      boxes = np.stack([widths, widths * input_wh[1] / input_wh[0]], axis=-1)
      image = integral_camera.crop_to_image(points, centers, boxes, input_wh, rotation)
      expected = np.stack([
          geometry.affine_transform_points(p, geometry.get_affine_transform(
              c, b, rotation, input_wh, inverse=True))
          for p, c, b in zip(points, centers, boxes)])
      # Each side rounds its own float32 point triples: ~1e-7 of coordinates near 1000 px.
      chex.assert_trees_all_close(image, expected, rtol=0, atol=1e-3)

  def test_bad_shapes_raise(self):
    with self.assertRaisesRegex(ValueError, "coords_crop_px"):
      integral_camera.crop_to_image(np.zeros((2, 3)), np.zeros(2), np.ones(2), (4, 4))
    with self.assertRaisesRegex(ValueError, "center_xy"):
      integral_camera.crop_to_image(np.zeros((2, 3, 2)), np.zeros((3, 2)), np.ones(2), (4, 4))
    with self.assertRaisesRegex(ValueError, "z_mm"):
      integral_camera.image_to_camera(np.zeros((1, 3, 2)), np.zeros((1, 2)), np.ones(2),
                                      np.zeros(2))
    with self.assertRaisesRegex(ValueError, "root_depth_mm"):
      integral_camera.decode_to_camera(np.zeros((2, 3, 3)), np.zeros(2), np.ones(2), (4, 4),
                                       np.ones(2), np.zeros(2), np.ones(3))


if __name__ == "__main__":
  absltest.main()
