"""The COCO reader on small files in the official schema, including the failure messages."""

import json

import cv2
import numpy as np
import pytest

from jaxpose.data import coco
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError

K = keypoints_lib.COCO.num_keypoints


def _keypoints(labelled: int) -> list[float]:
  values = []
  for k in range(K):
    values += [10.0 + k, 20.0 + k, 2] if k < labelled else [0, 0, 0]
  return values


def write_coco(root, annotations=None, images=None):
  """Writes `annotations/person_keypoints_val.json` and the images it lists under `val/`."""
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  (root / "val").mkdir(exist_ok=True)
  images = images if images is not None else [
      dict(id=1, file_name="a.jpg", width=64, height=48),
      dict(id=2, file_name="b.jpg", width=64, height=48)]
  for image in images:
    cv2.imwrite(str(root / "val" / image["file_name"]), np.zeros((48, 64, 3), np.uint8))
  if annotations is None:
    annotations = [
        dict(id=10, image_id=1, category_id=1, bbox=[5, 5, 30, 30], area=900.0, iscrowd=0,
             num_keypoints=5, keypoints=_keypoints(5), segmentation=[]),
        dict(id=11, image_id=1, category_id=1, bbox=[0, 0, 10, 10], area=100.0, iscrowd=1,
             num_keypoints=5, keypoints=_keypoints(5), segmentation=[]),  # crowd: dropped
        dict(id=12, image_id=2, category_id=1, bbox=[-4, 40, 100, 20], area=400.0, iscrowd=0,
             num_keypoints=3, keypoints=_keypoints(3), segmentation=[]),  # clipped
        dict(id=13, image_id=2, category_id=1, bbox=[1, 1, 5, 5], area=25.0, iscrowd=0,
             num_keypoints=0, keypoints=_keypoints(0), segmentation=[]),  # unlabelled: dropped
    ]
  data = dict(info={}, licenses=[], images=images, annotations=annotations, categories=[dict(
      id=1, name="person", supercategory="person", keypoints=list(keypoints_lib.COCO.names),
      skeleton=[[a + 1, b + 1] for a, b in keypoints_lib.COCO.skeleton])])
  path = root / "annotations" / "person_keypoints_val.json"
  path.write_text(json.dumps(data))
  return path


def test_reads_persons_and_clips_boxes_as_hrnet(tmp_path):
  source = coco.CocoPersonBoxes(write_coco(tmp_path), tmp_path / "val", keypoints_lib.COCO)
  assert [r.annotation_id for r in source.records] == [10, 12]
  # HRNet: x1 = max(0, x), x2 = min(width - 1, x1 + max(0, w - 1)) -> [0, 40, 63, 7]
  np.testing.assert_array_equal(source.records[1].box_xywh, [0, 40, 63, 7])
  record = source[0]
  assert record["keypoints"].shape == (K, 3)
  assert record["image_path"].endswith("val/a.jpg")


def test_missing_file_is_named(tmp_path):
  with pytest.raises(DatasetError, match="nope.json: annotation file not found"):
    coco.CocoPersonBoxes(tmp_path / "nope.json", tmp_path, keypoints_lib.COCO)


def test_invalid_json_is_named(tmp_path):
  path = write_coco(tmp_path)
  path.write_text(path.read_text()[:-5])
  with pytest.raises(DatasetError, match="person_keypoints_val.json: not valid JSON"):
    coco.CocoPersonBoxes(path, tmp_path / "val", keypoints_lib.COCO)


def test_missing_field_names_the_entry(tmp_path):
  bad = dict(id=7, image_id=1, category_id=1, area=1.0, iscrowd=0, keypoints=_keypoints(2))
  with pytest.raises(DatasetError, match=r"annotations\[0\] \(id 7\): missing field\(s\) \['bbox'\]"):
    coco.CocoPersonBoxes(write_coco(tmp_path, annotations=[bad]), tmp_path / "val",
                         keypoints_lib.COCO)


def test_wrong_keypoint_count_is_named(tmp_path):
  bad = dict(id=7, image_id=1, category_id=1, bbox=[0, 0, 5, 5], area=1.0, iscrowd=0,
             keypoints=[1.0, 2.0, 2])
  with pytest.raises(DatasetError, match="has 3 values, expected 51"):
    coco.CocoPersonBoxes(write_coco(tmp_path, annotations=[bad]), tmp_path / "val",
                         keypoints_lib.COCO)


def test_missing_image_is_named(tmp_path):
  path = write_coco(tmp_path)
  (tmp_path / "val" / "b.jpg").unlink()
  with pytest.raises(DatasetError, match="b.jpg: image listed in .* is missing on disk"):
    coco.CocoPersonBoxes(path, tmp_path / "val", keypoints_lib.COCO)


def test_duplicate_image_id_skips_the_persons_on_it(tmp_path):
  images = [dict(id=1, file_name="a.jpg", width=64, height=48),
            dict(id=2, file_name="b.jpg", width=64, height=48),
            dict(id=1, file_name="b.jpg", width=64, height=48)]
  source = coco.CocoPersonBoxes(write_coco(tmp_path, images=images), tmp_path / "val",
                                keypoints_lib.COCO)
  # Person 10 is on the ambiguous id 1; 12 (image 2) stays; 11 (crowd) and 13 are filtered.
  assert [r.annotation_id for r in source.records] == [12]
  [fault] = source.scan.skipped
  assert (fault.kind, fault.entry, fault.persons) == ("duplicate_image_id", "images[2] (id 1)", 1)
  assert "repeats the id of images[0] (id 1)" in fault.message
  assert dict(source.scan.filtered) == {"crowd": 1, "no_labelled_keypoints": 1}
