"""Detected person boxes: the results-json reader, its errors, and evaluation with them.

Expected values are HRNet's rules applied by hand (`_load_coco_person_detection_results`:
category 1 only, score >= IMAGE_THRE, boxes not clipped; `evaluate`: score = box score x
mean keypoint score above IN_VIS_THRE).
"""

import json
import re
from pathlib import Path

import cv2
import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from jaxpose import mesh as mesh_lib
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError, UserError
from jaxpose.evaluation import detections
from jaxpose.evaluation import topdown

COCO = keypoints_lib.COCO
K = COCO.num_keypoints
IMAGES = [dict(id=7, file_name="seven.jpg", width=80, height=60),
          dict(id=8, file_name="eight.jpg", width=80, height=60),
          dict(id=9, file_name="nobody.jpg", width=80, height=60)]  # no labelled person
DETECTIONS = [
    dict(image_id=7, category_id=1, bbox=[10.0, 5.0, 20.0, 40.0], score=0.9),
    dict(image_id=7, category_id=1, bbox=[-20.0, 10.0, 40.0, 30.0], score=0.7),  # left of the image
    dict(image_id=8, category_id=3, bbox=[1.0, 1.0, 9.0, 9.0], score=0.99),  # a car: ignored
    dict(image_id=8, category_id=1, bbox=[50.0, 20.0, 25.0, 35.0], score=0.2),  # low score
    dict(image_id=9, category_id=1, bbox=[30.0, 10.0, 20.0, 45.0], score=0.6),
]


def _write_split(root: Path) -> Path:
  """A COCO keypoints val split in the official layout: annotations/ json and val/ images."""
  (root / "annotations").mkdir(parents=True)
  (root / "val").mkdir()
  for image in IMAGES:
    cv2.imwrite(str(root / "val" / image["file_name"]), np.full((60, 80, 3), 90, np.uint8))
  keypoints = []
  for k in range(K):
    keypoints += [20.0 + k, 10.0 + 2 * k, 2]
  annotations = [dict(id=100 + i, image_id=image_id, category_id=1, bbox=[15, 8, 20, 40],
                      area=800.0, iscrowd=0, num_keypoints=K, keypoints=keypoints)
                 for i, image_id in enumerate((7, 8))]
  categories = [dict(id=1, name="person", keypoints=list(COCO.names),
                     skeleton=[[a + 1, b + 1] for a, b in COCO.skeleton])]
  path = root / "annotations" / "person_keypoints_val.json"
  path.write_text(json.dumps(dict(images=IMAGES, annotations=annotations, categories=categories)))
  return path


def _write_json(path: Path, value) -> Path:
  path.write_text(json.dumps(value))
  return path


@pytest.fixture
def split(tmp_path):
  return _write_split(tmp_path / "coco")


def _boxes(split, detections_file, threshold=0.0):
  return detections.split_detection_boxes(detections_file, split, split.parent.parent / "val",
                                          COCO, threshold)


def test_keeps_person_boxes_unclipped_with_their_scores(split, tmp_path):
  boxes = _boxes(split, _write_json(tmp_path / "det.json", DETECTIONS))
  assert [r.image_id for r in boxes.records] == [7, 7, 8, 9]  # file order, the car dropped
  np.testing.assert_array_equal(boxes.scores, [0.9, 0.7, 0.2, 0.6])
  np.testing.assert_array_equal(boxes.records[1].box_xywh, [-20, 10, 40, 30])  # not clipped
  record = boxes[3]
  assert record["image_path"].endswith("val/nobody.jpg")
  np.testing.assert_array_equal(record["image_wh"], [80, 60])
  assert record["keypoints"].shape == (K, 3) and not record["keypoints"].any()
  assert record["box_score"] == np.float32(0.6)


def test_score_threshold_drops_lower_boxes(split, tmp_path):
  boxes = _boxes(split, _write_json(tmp_path / "det.json", DETECTIONS), threshold=0.6)
  np.testing.assert_array_equal(boxes.scores, [0.9, 0.7, 0.6])  # >= threshold kept, as HRNet


def test_empty_file_gives_no_boxes(split, tmp_path):
  assert len(_boxes(split, _write_json(tmp_path / "det.json", []))) == 0


@pytest.mark.parametrize("entry, message", [
    (dict(image_id=12, category_id=1, bbox=[0, 0, 5, 5], score=0.5),
     r"entry 1 \(image_id 12\): image_id is not an image of the annotation file .*"
     r"person_keypoints_val.json"),
    (dict(image_id=7, category_id=1, bbox=[0, 0, 5], score=0.5),
     r"entry 1 \(image_id 7\): bbox \[0, 0, 5\] is not 4 finite numbers"),
    (dict(image_id=7, category_id=1, bbox=[0, 0, 0, 5], score=0.5),
     r"entry 1 \(image_id 7\): bbox .* has no area"),
    (dict(image_id=7, category_id=1, bbox=[0, 0, 5, 5], score=float("nan")),
     r"entry 1 \(image_id 7\): score nan is not a finite number"),
    (dict(image_id=7, bbox=[0, 0, 5, 5], score=0.5),
     r"entry 1 \(image_id 7\): missing field\(s\) \['category_id'\]"),
    ("a string", "entry 1: expected an object"),
])
def test_bad_entry_is_named(split, tmp_path, entry, message):
  path = _write_json(tmp_path / "det.json", [DETECTIONS[0], entry])
  with pytest.raises(DatasetError, match=f"{re.escape(str(path))}: {message}"):
    _boxes(split, path)


def test_bad_files_are_named(split, tmp_path):
  with pytest.raises(DatasetError, match="missing.json: detection results file not found"):
    _boxes(split, tmp_path / "missing.json")
  (tmp_path / "bad.json").write_text("[{")
  with pytest.raises(DatasetError, match="bad.json: not valid JSON"):
    _boxes(split, tmp_path / "bad.json")
  with pytest.raises(DatasetError, match="object.json: expected a JSON list of detections"):
    _boxes(split, _write_json(tmp_path / "object.json", {"annotations": []}))
  (split.parent.parent / "val" / "nobody.jpg").unlink()
  with pytest.raises(DatasetError, match="nobody.jpg: image listed in .* is missing on disk"):
    _boxes(split, _write_json(tmp_path / "det.json", DETECTIONS))


class CentrePeak(nn.Module):
  """Every keypoint's heatmap peaks at 0.6 on the heatmap centre, whatever the input: each
  prediction lands on its crop's centre with keypoint scores 0.6."""

  def __call__(self, images, train: bool = False):
    del train
    batch, height, width, _ = images.shape
    heatmaps = jnp.zeros((batch, height // 4, width // 4, K))
    return heatmaps.at[:, height // 8, width // 8, :].set(0.6), {}


def _eval_config(split_file: Path, person_boxes: str):
  config = default_config.get_config("smoke")
  config.data.source = "coco"
  config.data.root = str(split_file.parent.parent)
  config.eval.batch_size = 2
  config.eval.flip_test = False
  config.eval.num_visualize = 1
  config.eval.person_boxes = person_boxes
  return config


def test_evaluate_with_detected_boxes(split, tmp_path):
  config = _eval_config(split, str(_write_json(tmp_path / "det.json", DETECTIONS)))
  metrics = topdown.evaluate(config, CentrePeak(), {}, mesh_lib.make_data_mesh(), tmp_path, 3)
  assert 0.0 <= metrics["AP"] <= 1.0 and metrics["skipped_samples"] == 0.0
  results = json.loads((tmp_path / "results_val_step3.json").read_text())
  # Per image by descending score; score = box score x 0.6 (every keypoint is above 0.2).
  assert [(r["image_id"], round(r["score"], 6)) for r in results] == [
      (7, 0.54), (7, 0.42), (8, 0.12), (9, 0.36)]
  # Keypoints on the centre of the unclipped box: (-20 + 40 / 2, 10 + 30 / 2) = (0, 25).
  keypoints = np.reshape(results[1]["keypoints"], (K, 3))
  np.testing.assert_allclose(keypoints, np.tile([0.0, 25.0, 0.6], (K, 1)), atol=1e-4)
  assert (tmp_path / "predictions_val_step3.png").is_file()


def test_evaluate_with_ground_truth_boxes_scores_one_per_box(split, tmp_path):
  metrics = topdown.evaluate(_eval_config(split, "gt"), CentrePeak(), {},
                             mesh_lib.make_data_mesh(), tmp_path, 1)
  results = json.loads((tmp_path / "results_val_step1.json").read_text())
  assert [(r["image_id"], round(r["score"], 6)) for r in results] == [(7, 0.6), (8, 0.6)]
  assert metrics["skipped_samples"] == 0.0


def test_evaluate_without_boxes_scores_zero(split, tmp_path):
  config = _eval_config(split, str(_write_json(tmp_path / "det.json", [])))
  metrics = topdown.evaluate(config, CentrePeak(), {}, mesh_lib.make_data_mesh(), tmp_path, 1)
  assert metrics["AP"] == 0.0 and metrics["AR"] == 0.0
  assert json.loads((tmp_path / "results_val_step1.json").read_text()) == []


def test_bad_test_time_options_name_the_key(split):
  config = _eval_config(split, "gt")
  config.eval.decode = "subpixel"
  with pytest.raises(UserError, match=r"config key eval.decode: unknown 'subpixel'; known: "
                     r"\['quarter', 'dark'\]"):
    topdown.predict_options(config)
  config.eval.decode = "dark"
  config.eval.multi_scale = (1.0, 0.0)
  with pytest.raises(UserError, match="config key eval.multi_scale: .* must be positive"):
    topdown.predict_options(config)
  config.eval.multi_scale = (1.0, 1.5)
  assert topdown.predict_options(config) == dict(scales=(1.0, 1.5), decode="dark",
                                                 dark_blur_kernel_size=5)  # sigma 1 (smoke)
