"""Tests for DEKR's bottom-up targets (jaxpose.codecs.bottomup) and training warp
(jaxpose.data.bottomup_transforms): hand cases and parity with the official code.

Golden numbers in `fixtures/dekr_targets_official.npz` come from running the official DEKR
code (HRNet/DEKR @7a30313: `CocoKeypoints.get_mask` / `get_joints` (`CrowdPoseKeypoints`
for the last case), `RandomAffineTransform` + `RandomHorizontalFlip` with their random draws
replaced by the parameters in `dekr_targets_cases.json`, `HeatmapGenerator`,
`OffsetGenerator`) on 10 seeded images (input 128, output 32); the script is kept outside
the repo (BUILD_NOTES.md gives the recipe).
"""

import json
from pathlib import Path

import chex
import grain
import numpy as np
from absl.testing import absltest

from jaxpose.codecs import bottomup
from jaxpose.data import bottomup_transforms
from jaxpose.data import keypoints as keypoints_lib

FIXTURES = Path(__file__).parent / "fixtures"
# DEKR's FLIP_CONFIG['CROWDPOSE'].
CROWDPOSE_FLIP_INDEX = (1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13)


def _channels_last(array: np.ndarray) -> np.ndarray:
  return np.transpose(array, (1, 2, 0))


class OfficialParityTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.spec = json.loads((FIXTURES / "dekr_targets_cases.json").read_text())
    with np.load(FIXTURES / "dekr_targets_official.npz") as data:
      cls.official = dict(data)

  def _case_inputs(self, case):
    num_keypoints = case["num_keypoints"]
    persons = bottomup.select_training_persons(case["annotations"])
    keypoints = np.array([a["keypoints"] for a in persons], np.float64)
    keypoints = keypoints.reshape(-1, num_keypoints, 3)
    if case["crowdpose"]:  # DEKR's CrowdPose reader: every person gets a centre, nothing is masked
      joints, area = bottomup.persons_with_centers(keypoints)
      valid = np.ones((case["height"], case["width"]), bool)
    else:
      joints, area = bottomup.persons_with_centers(keypoints, [a["area"] for a in persons])
      valid = bottomup.valid_region_mask(case["annotations"], case["height"], case["width"])
    return joints, area, valid

  def test_persons_centres_areas_and_masks(self):
    for index, case in enumerate(self.spec["cases"]):
      with self.subTest(case=index):
        joints, area, valid = self._case_inputs(case)
        chex.assert_trees_all_close(joints, self.official[f"{index}/raw_joints"], rtol=0, atol=1e-9)
        chex.assert_trees_all_close(area, self.official[f"{index}/raw_area"], rtol=1e-12)
        np.testing.assert_array_equal(valid, self.official[f"{index}/raw_mask"])

  def test_warp_and_targets(self):
    input_size, output_size = self.spec["input_size"], self.spec["output_size"]
    for index, case in enumerate(self.spec["cases"]):
      with self.subTest(case=index):
        official = {k.split("/", 1)[1]: v for k, v in self.official.items()
                    if k.startswith(f"{index}/")}
        joints, area, valid = self._case_inputs(case)
        flip_index = (CROWDPOSE_FLIP_INDEX if case["crowdpose"] else keypoints_lib.COCO.flip_index)
        p = case["params"]
        params = bottomup_transforms.AffineParams(p["rotation_deg"], p["scale"],
                                                  tuple(p["translation_xy"]), p["flip"])
        record = {"image": official["source_image"], "joints": joints, "person_area": area,
                  "valid_mask": valid}
        warped = bottomup_transforms.affine_flip(record, params, input_size, output_size,
                                                 np.asarray(flip_index))
        chex.assert_shape(warped["image"], (input_size, input_size, 3))
        grey_levels = np.abs(warped["image"].astype(int) - official["image"].astype(int))
        self.assertLessEqual(grey_levels.max(), 1)
        chex.assert_trees_all_close(warped["joints"], official["joints"], rtol=0, atol=1e-9)
        chex.assert_trees_all_close(warped["person_area"], official["area"], rtol=1e-12)
        np.testing.assert_array_equal(warped["valid_mask"], official["valid_mask"])

        # DEKR's CrowdPose centre heatmap takes SIGMA (its `idx < 17`): configs pass it explicitly.
        center_sigma = case["sigma"] if case["crowdpose"] else case["center_sigma"]
        targets = bottomup.encode(warped["joints"], warped["person_area"], warped["valid_mask"],
                                  output_size, sigma=case["sigma"], center_sigma=center_sigma,
                                  background_weight=case["background_weight"],
                                  radius=case["radius"])
        for key in ("heatmaps", "heatmap_weights", "offsets", "offset_weights"):
          self.assertEqual(targets[key].dtype, np.float32)
          chex.assert_trees_all_close(targets[key], _channels_last(official[key]), rtol=0,
                                      atol=1e-5)

  def test_fixture_exercises_the_rules(self):
    # Guards the fixture itself: drawn centres, offsets, flips, masks and the (0, 0) centre.
    cases = self.spec["cases"]
    self.assertGreaterEqual(sum(c["params"]["flip"] for c in cases), 3)
    written = sum((self.official[f"{i}/offset_weights"] > 0).sum() for i in range(len(cases)))
    self.assertGreater(written, 5000)
    self.assertTrue(any((self.official[f"{i}/valid_mask"] == 0).any() for i in range(len(cases))))
    joints_1 = self.official["1/joints"]  # the unlabelled person's centre lands inside the map
    self.assertTrue(any(v == 1 and 0 <= x < 32 and 0 <= y < 32 for x, y, v in joints_1[:, -1]))


class HeatmapHandTest(absltest.TestCase):

  def test_one_keypoint_and_one_centre(self):
    joints = np.array([[[10.0, 12.0, 2.0], [20.0, 5.0, 1.0]]])  # K = 1 plus the centre
    heatmaps, weights = bottomup.encode_heatmaps(joints, 32, sigma=2.0, center_sigma=4.0,
                                                 background_weight=0.1)
    chex.assert_shape((heatmaps, weights), (32, 32, 2))
    self.assertEqual(heatmaps[12, 10, 0], 1.0)
    np.testing.assert_allclose(heatmaps[12, 11, 0], np.exp(-1 / 8), rtol=1e-7)
    np.testing.assert_allclose(heatmaps[13, 12, 0], np.exp(-5 / 8), rtol=1e-7)
    np.testing.assert_allclose(heatmaps[5, 21, 1], np.exp(-1 / 32), rtol=1e-7)  # centre sigma 4
    # Window x in [floor(10 - 7), ceil(10 + 8)) = [3, 18): weight 1 inside, 0.1 outside.
    self.assertEqual(weights[12, 3, 0], 1.0)
    self.assertEqual(weights[12, 17, 0], 1.0)
    self.assertAlmostEqual(float(weights[12, 18, 0]), 0.1, places=7)
    self.assertEqual(heatmaps[12, 18, 0], 0.0)
    self.assertEqual(int((weights[:, :, 0] == 1).sum()), 15 * 15)

  def test_overlapping_persons_take_the_maximum(self):
    joints = np.array([[[10.0, 10.0, 1.0], [0, 0, 0]], [[12.0, 10.0, 1.0], [0, 0, 0]]])
    heatmaps, _ = bottomup.encode_heatmaps(joints, 32, sigma=2.0, center_sigma=4.0)
    self.assertEqual(heatmaps[10, 10, 0], 1.0)
    self.assertEqual(heatmaps[10, 12, 0], 1.0)
    np.testing.assert_allclose(heatmaps[10, 11, 0], np.exp(-1 / 8), rtol=1e-7)

  def test_unlabelled_or_outside_joints_draw_nothing(self):
    joints = np.array([[[10.0, 10.0, 0.0], [32.0, 3.0, 1.0]]])
    heatmaps, weights = bottomup.encode_heatmaps(joints, 32, sigma=2.0, center_sigma=4.0)
    self.assertEqual(heatmaps.max(), 0.0)
    np.testing.assert_allclose(weights, 0.1)


class OffsetHandTest(absltest.TestCase):

  def test_window_values_and_weight(self):
    # Centre (10.6, 12.2) -> pixel (10, 12); radius 2 -> x in [8, 12), y in [10, 14).
    joints = np.array([[[8.5, 9.25, 2.0], [10.6, 12.2, 1.0]]])
    offsets, weights = bottomup.encode_offsets(joints, [400.0], 32, radius=2)
    chex.assert_shape((offsets, weights), (32, 32, 2))
    written = weights[:, :, 0] > 0
    self.assertEqual(int(written.sum()), 16)
    self.assertTrue(written[10:14, 8:12].all())
    np.testing.assert_allclose(offsets[11, 9], [9 - 8.5, 11 - 9.25])
    np.testing.assert_allclose(weights[11, 9], [1 / 20, 1 / 20])

  def test_smaller_person_keeps_shared_pixels(self):
    big = [[5.0, 5.0, 1.0], [10.0, 10.0, 1.0]]
    small = [[20.0, 20.0, 1.0], [11.0, 10.0, 1.0]]
    for order in ([big, small], [small, big]):
      areas = [900.0, 100.0] if order[0] is big else [100.0, 900.0]
      offsets, weights = bottomup.encode_offsets(np.array(order), areas, 32, radius=2)
      # Pixel (10, 10) lies in both windows (x in [8, 12) and [9, 13)): the small person's.
      np.testing.assert_allclose(offsets[10, 10], [10 - 20.0, 10 - 20.0])
      np.testing.assert_allclose(weights[10, 10, 0], 0.1)
      np.testing.assert_allclose(offsets[10, 8], [8 - 5.0, 10 - 5.0])  # only the big one's

  def test_person_without_centre_writes_nothing(self):
    joints = np.array([[[5.0, 5.0, 1.0], [10.0, 10.0, 0.0]]])
    offsets, weights = bottomup.encode_offsets(joints, [100.0], 32)
    self.assertEqual(np.abs(offsets).max(), 0.0)
    self.assertEqual(weights.max(), 0.0)


class PersonsWithCentersTest(absltest.TestCase):

  def test_centre_area_and_small_persons(self):
    keypoints = np.array([[[10.0, 20.0, 2.0], [30.0, 40.0, 1.0], [0.0, 0.0, 0.0]],
                          [[50.0, 60.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    joints, area = bottomup.persons_with_centers(keypoints, segmentation_area=[5000.0, 500.0])
    chex.assert_shape(joints, (2, 4, 3))
    np.testing.assert_allclose(joints[0, -1], [20.0, 30.0, 1.0])
    np.testing.assert_allclose(joints[1, -1], [0.0, 0.0, 0.0])  # area < 32^2: no centre
    # Box over every keypoint position and the origin: (30 - 0)^2 + (40 - 0)^2.
    np.testing.assert_allclose(area, [30.0**2 + 40.0**2, 50.0**2 + 60.0**2])
    joints, _ = bottomup.persons_with_centers(keypoints)  # CrowdPose: every person
    np.testing.assert_allclose(joints[1, -1], [50.0, 60.0, 1.0])

  def test_training_persons_and_mask(self):
    square = [[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]]
    annotations = [
        {"iscrowd": 0, "num_keypoints": 3, "segmentation": square},
        {"iscrowd": 0, "num_keypoints": 0, "segmentation": square},
        {"iscrowd": 1, "num_keypoints": 0, "segmentation": {"counts": [12 * 10, 12 * 2, 12 * 4],
                                                             "size": [12, 16]}},
    ]
    selected = bottomup.select_training_persons(annotations)
    self.assertEqual([a["num_keypoints"] for a in selected], [3, 0])
    valid = bottomup.valid_region_mask(annotations, 12, 16)
    chex.assert_shape(valid, (12, 16))
    self.assertFalse(valid[5, 5])  # inside the unlabelled person's polygon
    self.assertFalse(valid[0, 10])  # crowd RLE: columns 10 and 11 (column-major runs)
    self.assertTrue(valid[0, 12])
    self.assertTrue(valid[10, 0])


class AffineHandTest(absltest.TestCase):

  def _record(self, size=64):
    image = np.zeros((size, size, 3), np.uint8)
    image[10:20, 40:50] = 255
    joints = np.array([[[48.0, 32.0, 2.0], [32.0, 32.0, 1.0]]])
    return {"image": image, "joints": joints, "person_area": np.array([100.0])}

  def test_identity_region(self):
    params = bottomup_transforms.AffineParams(0.0, 1.0, (0, 0), False)
    out = bottomup_transforms.affine_flip(self._record(), params, 64, 16, np.array([0]))
    np.testing.assert_array_equal(out["image"], self._record()["image"])
    np.testing.assert_allclose(out["joints"][0, :, :2], [[12.0, 8.0], [8.0, 8.0]])
    np.testing.assert_allclose(out["person_area"], [100.0])
    np.testing.assert_array_equal(out["valid_mask"], np.ones((16, 16), np.float32))

  def test_rotation_is_counter_clockwise_and_flip_mirrors(self):
    params = bottomup_transforms.AffineParams(90.0, 1.0, (0, 0), False)
    out = bottomup_transforms.affine_flip(self._record(), params, 64, 16, np.array([0]))
    np.testing.assert_allclose(out["joints"][0, 0, :2], [8.0, 4.0], atol=1e-12)  # right -> up
    params = bottomup_transforms.AffineParams(0.0, 2.0, (8, 0), True)
    out = bottomup_transforms.affine_flip(self._record(), params, 64, 16, np.array([0]))
    # Region 128 px centred at (40, 32): x -> (x - 40) / 8 + 8, then flipped to 15 - x.
    np.testing.assert_allclose(out["joints"][0, :, 0], [15 - 9.0, 15 - 7.0])
    np.testing.assert_allclose(out["person_area"], [100.0 / 4])
    self.assertEqual(out["valid_mask"][8, 0], 0.0)  # outside the image: ignored
    self.assertEqual(out["valid_mask"][8, 8], 1.0)


class GrainTransformsTest(absltest.TestCase):

  def test_pipeline_record(self):
    rng = np.random.default_rng(0)
    keypoints = np.concatenate([rng.uniform(10, 90, (2, 17, 2)), np.full((2, 17, 1), 2.0)], -1)
    record = {"image": rng.integers(0, 256, (80, 100, 3), dtype=np.uint8), "keypoints": keypoints,
              "segmentation_area": np.array([4000.0, 3000.0]),
              "valid_mask": np.ones((80, 100), bool)}
    random_affine = bottomup_transforms.RandomAffineFlip(
        input_size=64, output_size=16, flip_index=tuple(keypoints_lib.COCO.flip_index))
    dataset = (grain.MapDataset.source([record] * 3).seed(7)
               .map(bottomup_transforms.PersonsWithCenters()).random_map(random_affine)
               .map(bottomup_transforms.EncodeTargets(output_size=16)))
    first, again = dataset[0], dataset[0]
    chex.assert_shape(first["image"], (64, 64, 3))
    chex.assert_shape((first["heatmaps"], first["heatmap_weights"]), (16, 16, 18))
    chex.assert_shape((first["offsets"], first["offset_weights"]), (16, 16, 34))
    np.testing.assert_array_equal(first["heatmaps"], again["heatmaps"])  # rng from grain only
    self.assertFalse(np.array_equal(first["image"], dataset[1]["image"]))

  def test_draws_follow_dekr_order_and_ranges(self):
    random_affine = bottomup_transforms.RandomAffineFlip(input_size=64, output_size=16,
                                                         flip_index=(0,))
    record = {"image": np.zeros((50, 80, 3), np.uint8), "joints": np.array([[[40.0, 25.0, 1.0],
                                                                             [40.0, 25.0, 1.0]]]),
              "person_area": np.array([100.0])}
    for seed in range(20):
      out = random_affine.random_map(record, np.random.default_rng(seed))
      draws = np.random.default_rng(seed)
      scale = draws.random() * 0.75 + 0.75
      rotation = (draws.random() * 2 - 1) * 30
      bound = 0.2 * 50 * scale
      translation = tuple(int(draws.integers(int(-bound), int(bound))) for _ in range(2))
      flip = draws.random() < 0.5
      self.assertTrue(0.75 <= scale < 1.5 and -30 <= rotation <= 30)
      self.assertTrue(all(abs(t) <= bound for t in translation))
      expected = bottomup_transforms.affine_flip(
          record, bottomup_transforms.AffineParams(rotation, scale, translation, flip), 64, 16,
          np.array([0]))
      np.testing.assert_array_equal(out["joints"], expected["joints"])


if __name__ == "__main__":
  absltest.main()
