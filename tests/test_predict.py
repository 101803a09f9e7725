"""`python -m jaxpose.predict` on a run trained for two steps on the smoke config's synthetic
data: PNGs of the images' size with the skeletons drawn, a COCO results json, and one-line
errors for bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest

from conftest import REPO
from configs import default as default_config
from jaxpose import predict
from jaxpose import train
from jaxpose import visualize
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import pipeline
from jaxpose.errors import UserError

COCO = keypoints_lib.COCO
K = COCO.num_keypoints


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """The two predict runs compile the same step: the second reads it from a disk cache."""
  saved = {key: getattr(jax.config, key) for key in (
      "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")}
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield
  for key, value in saved.items():
    jax.config.update(key, value)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synthetic_cache):
  workdir = tmp_path_factory.mktemp("run")
  config = default_config.get_config("smoke")
  config.data.synthetic.cache_dir = str(synthetic_cache)
  config.train.total_steps = 2
  config.optim.decay_steps = (1,)
  # Two steps leave heatmap maxima far below HRNet's 0.2: draw every keypoint found.
  config.eval.keypoint_score_threshold = 0.0
  # XLA compiles the init's threefry random numbers ~3x slower than "rbg" ones (25 s vs 8 s
  # measured here under load); which generator drew the initial weights does not matter here.
  saved = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  try:
    train.run(config, workdir, "train")
  finally:
    jax.config.update("jax_default_prng_impl", saved)
  return workdir


def _read_rgb(path) -> np.ndarray:
  return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _distance_to_segment(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Distance of each point [N, 2] to the segment a-b."""
  ab = b - a
  t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
  return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


def _check_drawing(png_path, image_path, persons: list[np.ndarray]) -> None:
  """The PNG is the image with the persons drawn: same size; the prediction colour on every
  drawn keypoint inside the image; every changed pixel on a limb or dot (within 5 px: radius 3,
  line width 2, anti-aliasing) or in the score label above a person's top-most keypoint."""
  drawn, image = _read_rgb(png_path), _read_rgb(image_path)
  assert drawn.shape == image.shape
  changed = np.any(drawn != image, axis=-1)
  assert changed.any()
  height, width = image.shape[:2]
  pixels = np.stack(np.nonzero(changed)[::-1], axis=1).astype(np.float64)  # (x, y)
  explained = np.zeros(len(pixels), bool)
  for keypoints in persons:
    shown = keypoints[:, 2] > 0.0
    assert shown.any()
    for x, y in keypoints[shown, :2]:
      col, row = int(round(x)), int(round(y))
      if 0 <= col < width and 0 <= row < height:
        np.testing.assert_allclose(drawn[row, col], visualize.PREDICTION_COLOR, atol=2)
      explained |= np.hypot(pixels[:, 0] - x, pixels[:, 1] - y) <= 5
    for a, b in COCO.skeleton:
      if shown[a] and shown[b]:
        explained |= _distance_to_segment(pixels, keypoints[a, :2], keypoints[b, :2]) <= 5
    top_x, top_y = keypoints[shown][np.argmin(keypoints[shown, 1]), :2]
    explained |= ((pixels[:, 0] >= top_x) & (pixels[:, 0] <= top_x + 40)
                  & (pixels[:, 1] >= top_y - 25) & (pixels[:, 1] <= max(top_y, 25)))
  assert explained.all(), pixels[~explained][:5]


def test_split_images(run_dir, tmp_path):
  written = predict.run(run_dir, tmp_path, split="val", num_images=3)
  config = predict.load_run_config(run_dir)
  ground_truth = pipeline.open_split(config, "val")
  paths = {r.image_id: r.image_path for r in ground_truth.records}
  image_ids = sorted(paths)[:3]
  assert [p.name for p in written] == [f"{Path(paths[i]).stem}.png" for i in image_ids]
  results = json.loads((tmp_path / "results.json").read_text())
  assert {r["image_id"] for r in results} == set(image_ids)
  for image_id, png in zip(image_ids, written):
    persons = [np.reshape(r["keypoints"], (K, 3)) for r in results if r["image_id"] == image_id]
    _check_drawing(png, paths[image_id], persons)


def test_own_images_whole_image_boxes(run_dir, tmp_path):
  config = predict.load_run_config(run_dir)
  records = pipeline.open_split(config, "val").records
  images = [records[0].image_path, records[-1].image_path]
  written = predict.run(run_dir, tmp_path / "out", images=images)
  assert len(written) == 2
  results = json.loads((tmp_path / "out" / "results.json").read_text())
  # One whole-image box per image, ids 1..N in the order given.
  assert sorted(r["image_id"] for r in results) == [1, 2]
  for result, png, image in zip(sorted(results, key=lambda r: r["image_id"]), written, images):
    _check_drawing(png, image, [np.reshape(result["keypoints"], (K, 3))])


def test_split_boxes_keep_the_first_images_only(run_dir, tmp_path):
  config = predict.load_run_config(run_dir)
  image_ids = sorted({r.image_id for r in pipeline.open_split(config, "val").records})
  boxes = [dict(image_id=image_ids[i], category_id=1, bbox=[10, 20, 30, 60], score=0.5 + i / 10)
           for i in (0, 2, 3)]  # the fourth image is not among the first three
  (tmp_path / "boxes.json").write_text(json.dumps(boxes))
  source, image_list = predict._split_persons(config, "val", 3, str(tmp_path / "boxes.json"))
  assert [image_id for image_id, _ in image_list] == image_ids[:3]
  assert [r.image_id for r in source.records] == [image_ids[0], image_ids[2]]
  np.testing.assert_allclose(source.scores, [0.5, 0.7])


def test_own_images_with_boxes_number_the_images(run_dir, tmp_path):
  config = predict.load_run_config(run_dir)
  records = pipeline.open_split(config, "val").records
  images = [records[0].image_path, records[-1].image_path]
  boxes = [dict(image_id=2, category_id=1, bbox=[5, 6, 70, 90], score=0.8),
           dict(image_id=1, category_id=1, bbox=[1, 2, 30, 40], score=0.3)]
  (tmp_path / "boxes.json").write_text(json.dumps(boxes))
  source, image_list = predict._image_persons(config, images, str(tmp_path / "boxes.json"))
  assert image_list == [(1, images[0]), (2, images[1])]
  assert [(r.image_id, r.image_path) for r in source.records] == [(2, images[1]), (1, images[0])]
  np.testing.assert_array_equal(source.records[0].box_xywh, [5, 6, 70, 90])
  (tmp_path / "boxes.json").write_text(json.dumps(boxes + [dict(boxes[0], image_id=3)]))
  with pytest.raises(UserError, match=r"entry 2 \(image_id 3\): image_id is not an image of "
                     r"--images \(ids 1 to 2, in the order listed\)"):
    predict._image_persons(config, images, str(tmp_path / "boxes.json"))


def _error_line(capsys, argv) -> str:
  with pytest.raises(SystemExit) as exit_info:
    predict.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  return err


def test_missing_image_is_named(run_dir, tmp_path, capsys):
  err = _error_line(capsys, ["--workdir", str(run_dir), "--images", str(tmp_path / "nope.jpg"),
                             "--out", str(tmp_path / "out")])
  assert f"--images {tmp_path / 'nope.jpg'}: cannot read the file" in err


def test_workdir_without_checkpoint_or_config_is_named(run_dir, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  err = _error_line(capsys, ["--workdir", str(empty), "--split", "val", "--out", str(tmp_path)])
  assert err == (f"jaxpose.predict: error: --workdir {empty}: no config.json; not a jaxpose run "
                 "directory")
  shutil.copy(run_dir / "config.json", empty / "config.json")
  # The module entry point, in a fresh process: the same one line, and nothing created.
  result = subprocess.run([sys.executable, "-m", "jaxpose.predict", "--workdir", str(empty),
                           "--split", "val", "--out", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip() == (f"jaxpose.predict: error: --workdir {empty}: no checkpoint in "
                                   f"{empty / 'checkpoints'}; train first")
  assert not (empty / "checkpoints").exists()
