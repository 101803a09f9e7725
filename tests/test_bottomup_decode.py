"""Tests for DEKR's bottom-up inference (jaxpose.codecs.bottomup_decode) and the test-time
resize (jaxpose.data.bottomup_transforms.ResizeKeepAspect): hand cases and parity.

Golden numbers in `fixtures/dekr_decode_official.npz` come from the official DEKR code
(HRNet/DEKR @7a30313: `get_multi_stage_outputs` with a stand-in model returning the outputs
below, `aggregate_results`, `pose_nms`, `get_final_preds`, `get_multi_scale_size`,
`resize_align_multi_scale`; its flip-test input shift run with `.clone()`, which torch now
requires) on seeded network outputs. `network_outputs` is a verbatim copy of the fixture
script's generator; the fixture stores checksums of its outputs, so a drift fails loudly.
"""

import json
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from jaxpose.codecs import bottomup_decode
from jaxpose.data import bottomup_transforms
from jaxpose.data import keypoints as keypoints_lib

FIXTURES = Path(__file__).parent / "fixtures"
COCO_FLIP_INDEX = keypoints_lib.COCO.flip_index
CROWDPOSE_FLIP_INDEX = np.array([1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13])


# --- verbatim copy of the fixture script's generator ------------------------------------------
def network_outputs(seed, height, width, flip_index, num_persons, center_peak=1.0):
  """Seeded DEKR-like outputs (channels first, as torch): a scene of persons, and its mirror
  (with fresh noise) as the outputs of the flipped pass. Returns four float32 arrays."""
  rng = np.random.default_rng(seed)
  flip_index = np.asarray(flip_index)
  num_keypoints = len(flip_index)
  centers = rng.uniform([2, 2], [width - 3, height - 3], (num_persons, 2))
  keypoints = centers[:, None] + rng.normal(0, 3.0, (num_persons, num_keypoints, 2))
  if num_persons > 1:  # a near-duplicate of person 0, 3 px away: its pose must be suppressed
    centers[1] = centers[0] + [3.0, 1.0]
    keypoints[1] = keypoints[0] + rng.normal(0, 0.3, (num_keypoints, 2))
  peaks = rng.uniform(0.5, 1.0, num_persons) * center_peak
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)

  def one_pass(centers, keypoints):
    d2 = (xs[None] - centers[:, 0, None, None]) ** 2 + (ys[None] - centers[:, 1, None, None]) ** 2
    center_map = ((peaks[:, None, None] * np.exp(-d2 / 8)).max(0)
                  + rng.uniform(0, 0.02 * center_peak, (height, width)))
    heat = np.exp(-((xs[None, None] - keypoints[..., 0, None, None]) ** 2
                    + (ys[None, None] - keypoints[..., 1, None, None]) ** 2) / 4.5)  # [P, K, h, w]
    heat = (heat.max(0) * rng.uniform(0.6, 1.0, (num_keypoints, 1, 1))
            + rng.uniform(0, 0.05, (num_keypoints, height, width)))
    owner = d2.argmin(0)  # each pixel regresses its nearest person
    target = keypoints[owner]  # [h, w, K, 2]
    offsets = np.stack([xs, ys], -1)[:, :, None] - target + rng.normal(0, 0.3, target.shape)
    offsets = offsets.reshape(height, width, 2 * num_keypoints).transpose(2, 0, 1)
    return (np.concatenate([heat, center_map[None]]).astype(np.float32), offsets.astype(np.float32))

  heatmaps, offsets = one_pass(centers, keypoints)
  mirrored_centers = centers.copy()
  mirrored_centers[:, 0] = width - 1 - centers[:, 0]
  mirrored = keypoints[:, flip_index].copy()
  mirrored[..., 0] = width - 1 - mirrored[..., 0]
  heatmaps_flipped, offsets_flipped = one_pass(mirrored_centers, mirrored)
  return heatmaps, offsets, heatmaps_flipped, offsets_flipped
# -----------------------------------------------------------------------------------------------


def _checksum(array):
  array = np.asarray(array, np.float64)
  return np.array([array.sum(), np.square(array).sum(),
                   array.reshape(-1)[:: max(1, array.size // 7)][:7].sum()])


def _nhwc(array):
  return jnp.asarray(np.transpose(array, (1, 2, 0)))[None]


class OfficialParityTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    spec = json.loads((FIXTURES / "dekr_decode_cases.json").read_text())
    cls.cases = [dict(zip(spec["fields"], case)) for case in spec["cases"]]
    with np.load(FIXTURES / "dekr_decode_official.npz") as data:
      cls.official = dict(data)

  def test_decode_matches_official(self):
    for index, case in enumerate(self.cases):
      name = case["name"]
      with self.subTest(case=name):
        official = {k.split("/", 1)[1]: v for k, v in self.official.items()
                    if k.startswith(name + "/")}
        crowdpose = case["dataset"].startswith("crowd")
        flip_index = CROWDPOSE_FLIP_INDEX if crowdpose else COCO_FLIP_INDEX
        outputs = network_outputs(100 + index, case["height"], case["width"], flip_index,
                                  case["persons"], case["center_peak"])
        np.testing.assert_allclose(np.stack([_checksum(a) for a in outputs]),
                                   official["checksum_inputs"], rtol=1e-12,
                                   err_msg="regenerated network outputs differ from the fixture's")
        heatmaps, offsets, heatmaps_flipped, offsets_flipped = map(_nhwc, outputs)
        if case["flip"]:
          heatmaps, poses = bottomup_decode.merge_flip_test(heatmaps, offsets, heatmaps_flipped,
                                                            offsets_flipped, flip_index)
        else:
          poses = bottomup_decode.poses_from_offsets(offsets)
        row = case["height"] // 2
        chex.assert_trees_all_close(heatmaps[0, row, :24, -1], official["merged_center_row"],
                                    atol=1e-6)
        chex.assert_trees_all_close(poses[0, row, :24].reshape(24, -1), official["merged_pose_row"],
                                    atol=1e-5)

        if "candidates" in official:
          self._check_candidates(official, heatmaps, poses)
        result = bottomup_decode.decode(heatmaps, poses, nms_min_joints=7 if crowdpose else 8)
        chex.assert_shape(result["keypoints"], (1, 30, len(flip_index), 3))
        kept = int(result["valid"][0].sum())
        self.assertEqual(kept, len(official["scores"]))
        np.testing.assert_array_equal(result["valid"][0], np.arange(30) < kept)
        chex.assert_trees_all_close(result["keypoints"][0, :kept], official["poses"], atol=1e-4)
        chex.assert_trees_all_close(result["scores"][0, :kept], official["scores"], atol=1e-6)

        size_wh, center, scale_wh = bottomup_transforms.inference_size(
            case["image_height"], case["image_width"], case["input_size"])
        self.assertEqual(size_wh, (4 * case["width"], 4 * case["height"]))
        chex.assert_trees_all_close((center, scale_wh), (official["center"], official["scale"]),
                                    rtol=1e-12)
        image_poses = bottomup_decode.to_image_coordinates(
            np.asarray(result["keypoints"][0, :kept]), center, scale_wh, size_wh)
        chex.assert_trees_all_close(image_poses, official["image_poses"], atol=1e-4)
        if case["flip"]:
          probe = np.random.default_rng(7 + index).uniform(0, 1, (1, 3, 5, 11)).astype(np.float32)
          flipped = bottomup_decode.flip_test_input(jnp.asarray(probe.transpose(0, 2, 3, 1)))
          chex.assert_trees_all_close(flipped[0], official["probe_flipped"], atol=0)

  def test_fixture_exercises_nms_and_pool_sizes(self):
    # Guards the fixture: suppressions happen and all three centre-pool sizes occur.
    suppressed = [len(self.official[f"{c['name']}/scores"]) < 30 for c in self.cases]
    self.assertTrue(all(suppressed))
    sizes = {bottomup_decode.center_pool_size(c["height"], c["width"]) for c in self.cases}
    self.assertEqual(sizes, {3, 5, 7})
    self.assertEqual(len(self.official["coco_empty/scores"]), 0)

  def _check_candidates(self, official, heatmaps, poses):
    """DEKR's pre-NMS candidates (`aggregate_results`) from the merged maps, in numpy:
    3 x 3 peaks of the centre map, the top 30, their poses x 4."""
    center = np.asarray(heatmaps[0, :, :, -1])
    padded = np.pad(center, 1, constant_values=-np.inf)
    pooled = np.max([padded[dy:dy + center.shape[0], dx:dx + center.shape[1]]
                     for dy in range(3) for dx in range(3)], axis=0)
    peaks = np.where(pooled == center, center, 0).reshape(-1)
    top = np.argsort(-peaks, kind="stable")[:30]
    chex.assert_trees_all_close(peaks[top], official["candidates"][:, 0, 2], atol=1e-6)
    candidate_poses = 4 * np.asarray(poses[0]).reshape(len(peaks), -1, 2)[top]
    chex.assert_trees_all_close(candidate_poses, official["candidates"][:, :, :2], atol=1e-4)

  def test_resize_keep_aspect(self):
    resized = bottomup_transforms.ResizeKeepAspect(input_size=64).map(
        {"image": self.official["resize/source"]})
    chex.assert_shape(resized["image"], self.official["resize/resized"].shape)
    grey_levels = np.abs(resized["image"].astype(int) - self.official["resize/resized"].astype(int))
    self.assertLessEqual(grey_levels.max(), 1)
    chex.assert_trees_all_close((resized["center_xy"], resized["scale_wh"]),
                                (self.official["resize/center"], self.official["resize/scale"]),
                                rtol=1e-12)


def _single_person_outputs(keypoints_xy, center_xy, height=16, width=32, peak=0.8):
  """Heatmaps with one centre peak and keypoint peaks of 0.5; offsets pointing exactly at
  `keypoints_xy` [K, 2] (heatmap pixels) from every pixel."""
  num_keypoints = len(keypoints_xy)
  heatmaps = np.zeros((1, height, width, num_keypoints + 1), np.float32)
  heatmaps[0, center_xy[1], center_xy[0], -1] = peak
  for k, (x, y) in enumerate(keypoints_xy):
    heatmaps[0, int(y), int(x), k] = 0.5
  ys, xs = np.mgrid[0:height, 0:width]
  location = np.stack([xs, ys], -1)[:, :, None, :].astype(np.float32)
  offsets = (location - np.asarray(keypoints_xy, np.float32)).reshape(1, height, width, -1)
  return jnp.asarray(heatmaps), jnp.asarray(offsets)


# `decode` and `merge_flip_test` are jitted where they are defined (static shapes and
# options), so the tests below call them directly, with few distinct shapes: each new one
# compiles.
class DecodeHandTest(absltest.TestCase):

  def test_exact_offsets_decode_to_the_keypoints(self):
    keypoints_xy = np.array([[4.0, 3.0], [10.0, 12.0], [20.0, 7.0]])
    heatmaps, offsets = _single_person_outputs(keypoints_xy, center_xy=(12, 8))
    result = bottomup_decode.decode(heatmaps, bottomup_decode.poses_from_offsets(offsets),
                                    nms_min_joints=1)
    np.testing.assert_array_equal(result["valid"][0], np.arange(30) < 1)
    # Input pixels = 4 x heatmap pixels; joint score = centre 0.8 x heat 0.5 at the joint.
    chex.assert_trees_all_close(result["keypoints"][0, 0, :, :2], 4 * keypoints_xy, atol=1e-6)
    chex.assert_trees_all_close(result["keypoints"][0, 0, :, 2], np.full(3, 0.4), atol=1e-7)
    chex.assert_trees_all_close(result["scores"][0, 0], 0.4, atol=1e-7)

    # Image 256 x 128 -> network input 128 x 64 (short side 64): image = 2 x input pixels.
    size_wh, center, scale_wh = bottomup_transforms.inference_size(128, 256, 64)
    self.assertEqual(size_wh, (128, 64))
    image_xy = bottomup_decode.to_image_coordinates(np.asarray(result["keypoints"][0, :1]),
                                                    center, scale_wh, size_wh)
    chex.assert_trees_all_close(image_xy[0, :, :2], 8 * keypoints_xy, atol=1e-4)
    entries = bottomup_decode.coco_results(42, image_xy, np.asarray(result["scores"][0, :1]))
    self.assertEqual(len(entries), 1)
    self.assertEqual((entries[0]["image_id"], entries[0]["category_id"]), (42, 1))
    np.testing.assert_allclose(entries[0]["keypoints"], image_xy[0].reshape(-1))
    self.assertAlmostEqual(entries[0]["score"], 0.4, places=6)

  def test_no_centre_above_threshold_gives_no_pose(self):
    heatmaps, offsets = _single_person_outputs(np.array([[4.0, 3.0], [1.0, 2.0], [3.0, 3.0]]),
                                               (5, 5), peak=0.01)
    result = bottomup_decode.decode(heatmaps, bottomup_decode.poses_from_offsets(offsets),
                                    nms_min_joints=1)
    self.assertFalse(np.asarray(result["valid"]).any())
    self.assertEqual(bottomup_decode.coco_results(1, np.zeros((0, 1, 3)), np.zeros(0)), [])

  def test_pose_nms_skips_a_group_whose_best_is_taken(self):
    # Three joints per pose, shifted in y by 0, 4, 8, 12: area 10^2, threshold 0.5 x 10 = 5,
    # so neighbours (|dy| = 4) are duplicates and poses two apart (8) are not.
    base = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 0.0]])
    poses = jnp.asarray(np.stack([base + [0.0, y] for y in (0, 4, 8, 12)]))
    heat = jnp.array([0.1, 0.9, 0.5, 0.3])
    pose_nms = jax.jit(bottomup_decode.pose_nms, static_argnums=(3, 4))
    kept, count = pose_nms(poses, heat, jnp.ones(4, bool), 0.5, 2)
    # i=0 keeps 1 (best of {0, 1}); i=2's best is 1, already taken: skipped without
    # suppressing 2 or 3; i=3 keeps 2 (best of {2, 3}).
    self.assertEqual(int(count), 2)
    np.testing.assert_array_equal(kept, [1, 2, -1, -1])
    kept, count = pose_nms(poses, heat, jnp.array([True, True, True, False]), 0.5, 2)
    np.testing.assert_array_equal(kept[:int(count)], [1])  # pose 3 invalid: nothing keeps 2

  def test_centre_pool_size_thresholds(self):
    self.assertEqual([bottomup_decode.center_pool_size(h, w) for h, w in
                      [(128, 272), (128, 274), (300, 300), (300, 302)]], [3, 5, 5, 7])


class FlipTest(absltest.TestCase):

  def test_flip_test_input_shift(self):
    image = jnp.arange(6.0).reshape(1, 1, 6, 1)
    np.testing.assert_array_equal(bottomup_decode.flip_test_input(image)[0, 0, :, 0],
                                  [2.0, 1.0, 0.0, 2.0, 1.0, 0.0])

  def _mirror_outputs(self, heatmaps, offsets, flip_index):
    """What an exactly flip-equivariant network predicts on the flipped input."""
    width = heatmaps.shape[2]
    heat_index = np.concatenate([flip_index, [len(flip_index)]])
    poses = bottomup_decode.poses_from_offsets(offsets)[:, :, ::-1][:, :, :, flip_index]
    poses = poses.at[..., 0].set(width - 1 - poses[..., 0])
    location = bottomup_decode.poses_from_offsets(jnp.zeros_like(offsets))
    offsets_flipped = (location - poses).reshape(offsets.shape)
    return heatmaps[:, :, ::-1, heat_index], offsets_flipped

  def test_equivariant_flipped_pass_changes_nothing(self):
    rng = np.random.default_rng(3)
    heatmaps = jnp.asarray(rng.uniform(0, 1, (1, 32, 48, 18)), jnp.float32)
    offsets = jnp.asarray(rng.normal(0, 4, (1, 32, 48, 34)), jnp.float32)
    merged = bottomup_decode.merge_flip_test(
        heatmaps, offsets, *self._mirror_outputs(heatmaps, offsets, COCO_FLIP_INDEX),
        COCO_FLIP_INDEX)
    chex.assert_trees_all_close(merged, (heatmaps, bottomup_decode.poses_from_offsets(offsets)),
                                atol=1e-5)

  def test_symmetric_input_gives_mirror_symmetric_poses(self):
    # A horizontally symmetric image holds mirror pairs of persons and gives the same outputs
    # on the image and on its mirror; the flip test must then decode a mirror-closed set:
    # every pose's mirror (x -> 4 (w - 1) - x in input pixels, left and right swapped) is
    # decoded too, with the same score.
    rng = np.random.default_rng(5)
    height, width = 32, 48
    # Poses on a half-pixel grid: x 4 they are integers, so DEKR's floor() in the heat
    # lookup treats a pose and its mirror alike.
    people = [np.round(2 * (np.array(c, np.float64) + rng.normal(0, 2, (17, 2)))) / 2
              for c in [(6, 9), (14, 22)]]
    for pose in list(people):
      mirror = pose[COCO_FLIP_INDEX].copy()
      mirror[:, 0] = width - 1 - mirror[:, 0]
      people.append(mirror)
    centers = [(6, 9), (14, 22), (width - 1 - 6, 9), (width - 1 - 14, 22)]
    heatmaps = np.zeros((1, height, width, 18), np.float32)
    heatmaps[0, :, :, :17] = rng.uniform(0, 1, (height, width, 17))
    offsets = np.zeros((1, height, width, 34), np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    location = np.stack([xs, ys], -1)[:, :, None, :]
    owner = np.argmin([(xs - cx) ** 2 + (ys - cy) ** 2 for cx, cy in centers], axis=0)
    for p, (cx, cy) in enumerate(centers):
      heatmaps[0, cy, cx, -1] = [0.9, 0.6, 0.9, 0.6][p]
      offsets[0][owner == p] = (location - people[p])[owner == p].reshape(-1, 34)
    heatmaps, offsets = jnp.asarray(heatmaps), jnp.asarray(offsets)
    merged = bottomup_decode.merge_flip_test(heatmaps, offsets, heatmaps, offsets, COCO_FLIP_INDEX)
    result = bottomup_decode.decode(*merged)
    kept = int(result["valid"][0].sum())
    self.assertEqual(kept, 4)
    found = np.asarray(result["keypoints"][0, :kept])
    scores = np.asarray(result["scores"][0, :kept])
    chex.assert_trees_all_close(np.sort(found[..., 0].sum(-1)),
                                np.sort([4 * p[:, 0].sum() for p in people]), atol=1e-3)
    mirrored = found[:, COCO_FLIP_INDEX].copy()
    mirrored[..., 0] = 4 * (width - 1) - mirrored[..., 0]
    for pose in mirrored:
      match = np.abs(found - pose).max(axis=(1, 2)) < 1e-5  # coordinates and joint scores
      self.assertEqual(int(match.sum()), 1)
      np.testing.assert_allclose(scores[match][0], pose[:, 2].mean(), rtol=1e-5)


if __name__ == "__main__":
  absltest.main()
