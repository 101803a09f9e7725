"""Top-down transforms: each one alone on hand-checkable inputs, then the grain pipeline."""

import numpy as np
import pytest

from configs import default
from jaxpose.data import coco
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import pipeline
from jaxpose.data import transforms
from test_coco_reader import write_coco

SPEC = keypoints_lib.COCO
FLIP = tuple(int(i) for i in SPEC.flip_index)


def _record(width=64, height=48):
  rng = np.random.default_rng(0)
  keypoints = np.zeros((SPEC.num_keypoints, 3), np.float32)
  keypoints[:, :2] = rng.uniform(0, [width, height], (SPEC.num_keypoints, 2))
  keypoints[:, 2] = 2
  keypoints[3, 2] = 0
  return dict(image=rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
              keypoints=keypoints, center_xy=np.array([30.0, 20.0], np.float32),
              scale_wh=np.array([36.0, 48.0], np.float32), rotation_deg=np.float32(0))



def test_flip_swaps_sides_and_twice_is_identity():
  flip = transforms.RandomFlip(FLIP, probability=1.0)
  record = _record()
  once = flip.random_map(record, np.random.default_rng(0))
  # left_eye (1) at x becomes right_eye (2) at 63 - x (HRNet: width - 1 - x).
  assert once["keypoints"][2, 0] == pytest.approx(63 - record["keypoints"][1, 0])
  assert once["center_xy"][0] == pytest.approx(63 - 30.0)
  np.testing.assert_array_equal(once["image"][:, 0], record["image"][:, -1])
  twice = flip.random_map(once, np.random.default_rng(0))
  for key in ("image", "keypoints", "center_xy"):
    np.testing.assert_allclose(twice[key], record[key], atol=1e-5)


def test_affine_crop_maps_center_to_the_middle_of_the_input():
  record = _record()
  record["keypoints"][0, :2] = record["center_xy"]
  # A keypoint half a box-width right of the center lands on the input's right edge.
  record["keypoints"][1, :2] = record["center_xy"] + [18.0, 0.0]
  cropped = transforms.AffineCrop(input_wh=(24, 32)).map(record)
  assert cropped["image"].shape == (32, 24, 3)
  np.testing.assert_allclose(cropped["keypoints"][0, :2], [12.0, 16.0], atol=1e-4)
  np.testing.assert_allclose(cropped["keypoints"][1, :2], [24.0, 16.0], atol=1e-4)


def test_scale_rotate_stays_in_the_official_ranges():
  t = transforms.RandomScaleRotate(scale_factor=0.35, rotation_factor=40.0, rotation_prob=0.6)
  rng = np.random.default_rng(1)
  outs = [t.random_map(_record(), rng) for _ in range(300)]
  scales = np.array([o["scale_wh"][0] / 36.0 for o in outs])
  rotations = np.array([o["rotation_deg"] for o in outs])
  assert scales.min() >= 0.65 - 1e-6 and scales.max() <= 1.35 + 1e-6
  assert np.abs(rotations).max() <= 80.0
  assert 0.3 < np.mean(rotations == 0) < 0.5  # rotation applied with probability 0.6


def test_translate_shifts_the_centre_by_at_most_the_factor_of_the_box():
  t = transforms.RandomTranslate(factor=0.02)
  rng = np.random.default_rng(2)
  shifts = np.array([t.random_map(_record(), rng)["center_xy"] - [30.0, 20.0]
                     for _ in range(400)]) / [36.0, 48.0]  # in box sizes, per axis
  assert np.abs(shifts).max() <= 0.02 + 1e-6
  assert shifts.min(0).max() < -0.015 and shifts.max(0).min() > 0.015  # both ways, both axes
  assert np.abs(np.corrcoef(shifts.T)[0, 1]) < 0.2  # the axes are drawn independently


def test_san_2d_pipeline_translates_and_hrnet_default_does_not(tmp_path):
  # Every other augmentation off: the only randomness left is the translation, so the same
  # record's keypoints move between epochs by at most 2 % of the input (SAN Sec. 3.5).
  source = coco.CocoPersonBoxes(write_coco(tmp_path), tmp_path / "val", SPEC)
  moved = {}
  for factor in (0.0, 0.02):
    config = _smoke_config(read_threads=1)
    config.augment.update(flip=False, scale_factor=0.0, rotation_prob=0.0, half_body_prob=0.0,
                          translate_factor=factor)
    iterator = iter(pipeline.train_dataset(config, source, local_batch_size=2,
                                           keys=("keypoints", "annotation_id")))
    by_record = {}
    for _ in range(3 * len(source) // 2):  # three epochs: every person seen three times
      batch = next(iterator)
      for person, keypoints in zip(batch["annotation_id"], batch["keypoints"]):
        by_record.setdefault(int(person), []).append(keypoints[:, :2])
    moved[factor] = max(np.abs(np.stack(kps) - kps[0]).max() for kps in by_record.values()
                        if len(kps) > 1)
  assert moved[0.0] == 0.0
  assert 0.0 < moved[0.02] <= 2 * 0.02 * 64 + 1e-3  # two draws apart, 64-pixel input


def test_half_body_selects_a_body_half():
  t = transforms.RandomHalfBody(tuple(int(i) for i in SPEC.upper_body_ids), (48, 64),
                                probability=1.0, min_joints=8)
  out = t.random_map(_record(), np.random.default_rng(3))
  assert not np.allclose(out["center_xy"], [30.0, 20.0])
  # Box of the selected joints padded to the 3:4 aspect ratio, times 1.5.
  assert out["scale_wh"][0] / out["scale_wh"][1] == pytest.approx(48 / 64)


def test_corrupt_image_is_skipped_not_raised(tmp_path):
  path = tmp_path / "broken.jpg"
  path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  record = transforms.DecodeImage().map(dict(image_path=str(path), image_id=3))
  assert record["skipped"] == 1
  assert record["image"].dtype == np.uint8 and record["image"].shape[-1] == 3


def _smoke_config(read_threads):
  config = default.get_config("smoke")
  config.input.read_threads = read_threads
  config.input.batch_size = 2
  return config


def test_train_pipeline_shapes_and_determinism_across_thread_counts(tmp_path):
  source = coco.CocoPersonBoxes(write_coco(tmp_path), tmp_path / "val", SPEC)
  batches = []
  for threads in (1, 2):
    iterator = iter(pipeline.train_dataset(_smoke_config(threads), source, local_batch_size=2))
    batches.append([next(iterator) for _ in range(3)])
  first = batches[0][0]
  assert first["image"].shape == (2, 64, 64, 3) and first["image"].dtype == np.uint8
  assert first["heatmaps"].shape == (2, 16, 16, SPEC.num_keypoints)
  assert first["target_weight"].shape == (2, SPEC.num_keypoints)
  for a, b in zip(*batches):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_worker_processes_give_the_same_batches_as_threads(tmp_path):
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; jaxpose.launch parses them
  source = coco.CocoPersonBoxes(write_coco(tmp_path), tmp_path / "val", SPEC)
  # One image truncated: its samples are skipped, and the flags must agree as well.
  broken = tmp_path / "val" / "b.jpg"
  broken.write_bytes(broken.read_bytes()[:-2])
  streams = []
  for workers in (0, 2):
    config = _smoke_config(read_threads=1)
    config.input.num_workers = workers
    iterator = iter(pipeline.train_dataset(config, source, local_batch_size=2))
    streams.append([next(iterator) for _ in range(3)])
  assert sum(batch["skipped"].sum() for batch in streams[0]) == 3  # record 12 in each of 3 epochs
  for a, b in zip(*streams):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
