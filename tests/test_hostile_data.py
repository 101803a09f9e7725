"""Hostile data: each fault kind is skipped and counted or rejected with a one-line message,
and a run on a dataset full of them trains to the end with exact skip counts.

Expected numbers come from the planted dataset's json (`hostile_dataset`) or by hand,
never from jaxpose's own counters.
"""

import json
import logging
import os
import subprocess
import sys

import chex
import cv2
import numpy as np
import pytest

from configs import default
from conftest import REPO, SMOKE
from hostile_dataset import make_hostile_dataset
from jaxpose import train
from jaxpose.data import coco
from jaxpose.data import image_io
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import pipeline
from jaxpose.errors import DatasetError
from test_coco_reader import _keypoints, write_coco

SPEC = keypoints_lib.COCO


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
  return make_hostile_dataset(tmp_path_factory.mktemp("hostile") / "coco")


def _hostile_config(hostile, batch_size=2):
  config = default.get_config("smoke")
  config.data.source = "coco"
  config.data.root = str(hostile.root)
  config.input.batch_size = batch_size
  return config


def _warnings(caplog, text: str) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.levelno == logging.WARNING and text in r.getMessage()]


# --- images: decoded, converted or refused by `image_io.read_image` -------------------------

def _jpeg(tmp_path, name="a.jpg", size_hw=(24, 32)):
  pixels = np.random.default_rng(0).integers(0, 255, (*size_hw, 3), dtype=np.uint8)
  path = tmp_path / name
  cv2.imwrite(str(path), pixels)
  return path


@pytest.mark.parametrize("cut", [2, 100, "half"])
def test_truncated_jpeg_is_a_fault_even_when_libjpeg_only_warns(tmp_path, cut):
  path = _jpeg(tmp_path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-cut])
  if cut == 2:  # cut just the end-of-image marker: OpenCV still returns the whole image
    assert cv2.imread(str(path)) is not None
  image, problem = image_io.read_image(str(path), (32, 24))
  assert image is None and problem[0] == "corrupt_image" and "truncated JPEG" in problem[1]


@pytest.mark.parametrize("content", [b"", b"\xff\xd8\xff\xe0 not really a jpeg", b"GIF89a?"])
def test_unreadable_bytes_are_a_fault(tmp_path, content):
  path = tmp_path / "broken.jpg"
  path.write_bytes(content)
  assert image_io.read_image(str(path))[1][0] == "corrupt_image"
  assert image_io.read_image(str(tmp_path / "vanished.jpg"))[1][0] == "corrupt_image"


def test_colour_modes_are_converted_not_faults(tmp_path):
  rng = np.random.default_rng(1)
  gray = rng.integers(0, 255, (5, 7), dtype=np.uint8)
  bgr = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
  cv2.imwrite(str(tmp_path / "gray.png"), gray)
  cv2.imwrite(str(tmp_path / "bgra.png"), np.dstack([bgr, np.zeros((5, 7), np.uint8)]))
  cv2.imwrite(str(tmp_path / "deep.png"), bgr.astype(np.uint16) * 257)  # v * 257 >> 8 == v
  expected_rgb = bgr[..., ::-1]
  for name, expected in (("gray.png", np.repeat(gray[..., None], 3, -1)),
                         ("bgra.png", expected_rgb), ("deep.png", expected_rgb)):
    image, problem = image_io.read_image(str(tmp_path / name), (7, 5))
    assert problem is None, name
    chex.assert_shape(image, (5, 7, 3))
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, expected, err_msg=name)


@pytest.mark.parametrize("actual_hw", [(1, 1), (32, 24)])
def test_image_of_another_size_than_annotated_is_a_fault(tmp_path, actual_hw):
  path = _jpeg(tmp_path, size_hw=actual_hw)
  _, problem = image_io.read_image(str(path), (32, 24))
  assert problem[0] == "image_size_mismatch"
  height, width = actual_hw
  assert f"decoded size {width}x{height} differs from the annotated 32x24" in problem[1]


# --- annotations: per-person checks at open --------------------------------------------------

def _person(ann_id, bbox, keypoints, iscrowd=0, area=None):
  return dict(id=ann_id, image_id=1, category_id=1, bbox=bbox, iscrowd=iscrowd,
              area=float(bbox[2] * bbox[3]) if area is None else area, keypoints=keypoints)


def _open_with(tmp_path, bad: dict):
  """A 64x48 image with one good person (id 1) and `bad` (id 2)."""
  good = _person(1, [5, 5, 30, 30], _keypoints(4))
  path = write_coco(tmp_path, annotations=[good, bad],
                    images=[dict(id=1, file_name="a.jpg", width=64, height=48)])
  # allow_nan is json's default: NaN is written as the bare token that json.loads accepts.
  return coco.CocoPersonBoxes(path, tmp_path / "val", SPEC)


def _kp_with(index, x, y, v=2):
  values = _keypoints(3)
  values[3 * index: 3 * index + 3] = [x, y, v]
  return values


@pytest.mark.parametrize("bad, kind", [
    (_person(2, [70, 5, 10, 10], _keypoints(3)), "box_outside_image"),  # right of the image
    # Wholly left of the image: HRNet's clip (x1 = 0, x2 = x1 + w - 1) would slide it inside.
    (_person(2, [-100, 5, 50, 10], _keypoints(3)), "box_outside_image"),
    (_person(2, [5, 5, 0, 10], _keypoints(3)), "box_zero_area"),
    (_person(2, [5, 5, 10, 10], _keypoints(3), area=0.0), "box_zero_area"),
    (_person(2, [5, float("nan"), 10, 10], _keypoints(3)), "box_not_finite"),
    (_person(2, [5, 5, 10, 10], _kp_with(4, float("nan"), 3.0)), "keypoints_not_finite"),
    (_person(2, [5, 5, 10, 10], _kp_with(4, None, 3.0)), "keypoints_not_finite"),  # JSON null
    (_person(2, [5, 5, 10, 10], _kp_with(4, 65.0, 3.0)), "keypoints_out_of_range"),
    (_person(2, [5, 5, 10, 10], _kp_with(4, 3.0, -0.6)), "keypoints_out_of_range"),
    (_person(2, [5, 5, 10, 10], _kp_with(4, 3.0, 3.0, v=3)), "keypoints_out_of_range"),
])
def test_faulty_person_is_skipped_counted_and_warned(tmp_path, caplog, bad, kind):
  caplog.set_level(logging.WARNING)
  source = _open_with(tmp_path, bad)
  assert [r.annotation_id for r in source.records] == [1]
  [fault] = source.scan.skipped
  assert (fault.kind, fault.entry, fault.persons) == (kind, "annotations[1] (id 2)", 1)
  assert source.scan.skipped_persons == 1 and source.scan.filtered_persons == 0
  assert _warnings(caplog, "annotations[1] (id 2)")


@pytest.mark.parametrize("bad, kind", [
    (_person(2, [5, 5, 10, 10], [0] * 3 * SPEC.num_keypoints), "no_labelled_keypoints"),
    (_person(2, [5, 5, 10, 10], _keypoints(3), iscrowd=1), "crowd"),
])
def test_persons_hrnet_drops_are_filtered_not_faults(tmp_path, bad, kind):
  source = _open_with(tmp_path, bad)
  assert [r.annotation_id for r in source.records] == [1]
  assert source.scan.skipped == [] and dict(source.scan.filtered) == {kind: 1}


def test_keypoints_on_the_image_border_are_kept(tmp_path):
  # Pixel-centre convention reaches -0.5; pixel-corner convention reaches width/height.
  values = _kp_with(0, -0.5, 48.0)
  values[3:6] = [64.0, -0.5, 1]
  source = _open_with(tmp_path, _person(2, [5, 5, 10, 10], values))
  assert [r.annotation_id for r in source.records] == [1, 2]


@pytest.mark.parametrize("content, message", [
    ("", "person_keypoints_val.json: annotation file is empty"),
    ("  \n", "person_keypoints_val.json: annotation file is empty"),
    ("[]", "expected a JSON object at the top level, found list"),
    ('{"images": [], "categories": []}', "missing top-level list 'annotations'"),
])
def test_unusable_annotation_file_is_rejected_in_one_line(tmp_path, content, message):
  path = write_coco(tmp_path)
  path.write_text(content)
  with pytest.raises(DatasetError, match=message) as raised:
    coco.CocoPersonBoxes(path, tmp_path / "val", SPEC)
  assert "\n" not in str(raised.value)


def test_file_without_usable_persons_is_rejected(tmp_path):
  only_crowd = [_person(1, [5, 5, 10, 10], _keypoints(3), iscrowd=1)]
  with pytest.raises(DatasetError, match=r"no usable person \(1 annotations: 1 filtered"):
    coco.CocoPersonBoxes(write_coco(tmp_path, annotations=only_crowd), tmp_path / "val", SPEC)


def test_malformed_entries_are_all_found_and_the_first_is_named(tmp_path):
  bad = [dict(_person(1, [5, 5, 10, 10], _keypoints(3)), bbox="5 5 10 10"),
         _person(2, [5, 5, 10, 10], ["a"] * 51),
         dict(_person(3, [5, 5, 10, 10], _keypoints(3)), image_id=[1])]
  path = write_coco(tmp_path, annotations=bad)
  with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 1\): 'bbox' '5 5 10 10' is not 4 "
                     r"numbers \(and 2 more problem\(s\)"):
    coco.CocoPersonBoxes(path, tmp_path / "val", SPEC)
  scan = coco.scan_annotations(path, tmp_path / "val", SPEC)
  assert [(f.kind, f.entry) for f in scan.rejected] == [
      ("invalid_entry", f"annotations[{i}] (id {i + 1})") for i in range(3)]


# --- streaming: skipped samples keep their slot, exactly counted, deterministic --------------

def test_train_stream_masks_bad_images_and_is_deterministic(hostile, caplog):
  caplog.set_level(logging.WARNING)
  source = pipeline.open_split(_hostile_config(hostile), "train")
  bad_files = {f.file for f in hostile.by_split("train") if f.entry.startswith("image id")}
  bad_records = {i for i, r in enumerate(source.records) if r.image_path in bad_files}
  assert len(source) == hostile.usable_train_persons
  streams = []
  for threads in (1, 2):
    config = _hostile_config(hostile, batch_size=len(source))  # one batch = one epoch
    config.input.read_threads = threads
    streams.append(next(iter(pipeline.train_dataset(config, source, len(source)))))
  batch = streams[0]
  chex.assert_shape(batch["skipped"], (len(source),))
  assert batch["skipped"].sum() == len(bad_records)
  skipped = batch["skipped"] == 1
  assert not batch["target_weight"][skipped].any() and not batch["heatmaps"][skipped].any()
  assert (batch["image"][skipped] == 128).all()
  assert batch["target_weight"][~skipped].any(axis=1).all()  # every good sample has labels
  chex.assert_trees_all_equal(streams[0], streams[1])
  for path in bad_files:  # one warning per file, though read twice (1 and 2 threads)
    assert len(_warnings(caplog, path)) == 1, path


def _launch(workdir, *overrides: str) -> subprocess.CompletedProcess:
  """`python -m jaxpose.launch` on the smoke config. XLA at optimisation level 0: the run is
  mostly its compiles (init, step, predict), which this halves; the data path is unchanged."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
  command = [sys.executable, "-m", "jaxpose.launch", "--config", SMOKE, "--workdir", str(workdir),
             "--mode", "train_and_eval", *overrides]
  return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_corrupt_dataset_trains_to_the_end_with_exact_counts(hostile, tmp_path):
  """Acceptance (#10 part 3, #4): 5% truncated images plus one of each hostile annotation."""
  train_faults = hostile.by_split("train")
  at_open = sum(f.persons for f in train_faults if not f.entry.startswith("image id"))
  bad_images = [f for f in train_faults if f.entry.startswith("image id")]
  [val_fault] = hostile.by_split("val")
  # Whole epochs (grain repeats a fresh permutation), so every person is drawn exactly twice.
  persons = hostile.usable_train_persons
  batch_size = max(b for b in range(1, 9) if persons % b == 0)
  steps = 2 * persons // batch_size
  result = _launch(
      tmp_path, "--config.data.source=coco", f"--config.data.root={hostile.root}",
      f"--config.input.batch_size={batch_size}", f"--config.train.total_steps={steps}",
      "--config.train.log_every_steps=4", f"--config.train.checkpoint_every_steps={steps}",
      f"--config.optim.decay_steps=({steps // 2},)",
      # The data path under test does not depend on the input size or the flip test.
      "--config.input.size_hw=(32, 32)", "--config.eval.flip_test=False")
  assert result.returncode == 0, result.stderr[-3000:]

  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "loss" in r]
  assert train_rows[-1]["step"] == steps
  assert all(np.isfinite(r["loss"]) for r in train_rows)
  assert sum(r["skipped_samples"] for r in train_rows) == 2 * sum(f.persons for f in bad_images)
  assert {r["dataset_skipped_persons"] for r in train_rows} == {at_open}
  assert {r["dataset_filtered_persons"] for r in train_rows} == {1}
  assert rows[-1]["skipped_samples"] == val_fault.persons  # the eval row
  assert 0.0 <= rows[-1]["AP"] <= 1.0
  for fault in bad_images + [val_fault]:  # warned once, though read in both epochs
    assert result.stderr.count(f"{fault.file}: image id") == 1, fault.file


def test_empty_annotation_file_stops_training_at_start_up(hostile, tmp_path):
  config = _hostile_config(hostile)
  config.data.train_split = "empty"
  with pytest.raises(DatasetError, match=f"{hostile.empty_file}: annotation file is empty$"):
    train.run(config, tmp_path, mode="train")
