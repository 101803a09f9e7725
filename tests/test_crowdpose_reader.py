"""CrowdPose reader on a small file in the schema of the official `crowdpose_val.json`
(Jeff-sjtu/CrowdPose @86fe5e1): images {file_name, id, height, width, crowdIndex},
annotations {num_keypoints, iscrowd, keypoints, image_id, bbox, category_id, id} (no
area, no segmentation), one person category whose skeleton is COCO's."""

import json

import chex
import cv2
import numpy as np
import pytest

from jaxpose.data import crowdpose
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError

SPEC = keypoints_lib.CROWDPOSE
# The official category, verbatim.
CATEGORY = {"supercategory": "person", "id": 1, "name": "person",
            "keypoints": ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
                          "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                          "right_knee", "left_ankle", "right_ankle", "head", "neck"],
            "skeleton": [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13],
                         [6, 7], [6, 8], [7, 9], [8, 10], [9, 11]]}


def _keypoints(labelled: int) -> list[int]:
  values = []
  for k in range(14):  # head and neck are v = 1 in CrowdPose's files, the rest mostly 2
    labelled_k = k < labelled or k >= 12
    values += [10 + 3 * k, 20 + 2 * k, 1 if k >= 12 else 2] if labelled_k else [0, 0, 0]
  return values


def write_crowdpose(root, images=None, annotations=None, category=CATEGORY):
  (root / "json").mkdir(parents=True, exist_ok=True)
  (root / "images").mkdir(exist_ok=True)
  images = images if images is not None else [
      {"file_name": "114203.jpg", "id": 114203, "height": 100, "width": 120, "crowdIndex": 0.76},
      {"file_name": "104173.jpg", "id": 104173, "height": 100, "width": 120, "crowdIndex": 0.05}]
  for image in images:
    cv2.imwrite(str(root / "images" / image["file_name"]), np.zeros((100, 120, 3), np.uint8))
  if annotations is None:
    annotations = [
        {"num_keypoints": 14, "iscrowd": 0, "keypoints": _keypoints(14), "image_id": 114203,
         "bbox": [5.5, 8.25, 60.0, 70.0], "category_id": 1, "id": 100016},
        {"num_keypoints": 0, "iscrowd": 1, "keypoints": [0] * 42, "image_id": 114203,
         "bbox": [0, 0, 50, 50], "category_id": 1, "id": 100017},  # crowd region: dropped
        {"num_keypoints": 0, "iscrowd": 0, "keypoints": [0] * 42, "image_id": 104173,
         "bbox": [10, 10, 30, 30], "category_id": 1, "id": 100018},  # nothing labelled: dropped
        {"num_keypoints": 5, "iscrowd": 0, "keypoints": _keypoints(3), "image_id": 104173,
         "bbox": [-6.0, 40.0, 150.0, 80.0], "category_id": 1, "id": 100031},  # clipped
    ]
  data = {"images": images, "annotations": annotations, "categories": [category]}
  path = root / "json" / "crowdpose_val.json"
  path.write_text(json.dumps(data))
  return path


def test_records_filters_boxes_and_crowd_index(tmp_path):
  source = crowdpose.CrowdPoseBoxes(write_crowdpose(tmp_path), tmp_path / "images", SPEC)
  assert [r["annotation_id"] for r in (source[0], source[1])] == [100016, 100031]
  assert len(source) == 2
  first, second = source[0], source[1]
  chex.assert_trees_all_close((first["crowd_index"], second["crowd_index"]),
                              (np.float32(0.76), np.float32(0.05)))
  chex.assert_shape(first["keypoints"], (14, 3))
  np.testing.assert_array_equal(first["keypoints"][12:, 2], [1, 1])
  np.testing.assert_array_equal(first["keypoints"], np.reshape(_keypoints(14), (14, 3)))
  # HRNet's clip: x1 = max(0, x), x2 = min(W - 1, x1 + max(0, w - 1)):
  # [-6, 40, 150, 80] in 120x100 -> x1 0, x2 119, y1 40, y2 99 -> [0, 40, 119, 59].
  chex.assert_trees_all_close(second["box_xywh"], np.array([0, 40, 119, 59], np.float32))
  # No area in CrowdPose files: the box's w * h.
  chex.assert_trees_all_close(first["area"], np.float32(60.0 * 70.0))
  assert first["image_path"].endswith("images/114203.jpg")


def test_missing_crowd_index_is_named(tmp_path):
  images = [{"file_name": "114203.jpg", "id": 114203, "height": 100, "width": 120}]
  annotations = [{"num_keypoints": 14, "iscrowd": 0, "keypoints": _keypoints(14),
                  "image_id": 114203, "bbox": [5, 8, 60, 70], "category_id": 1, "id": 1}]
  with pytest.raises(DatasetError, match=r"crowdpose_val.json: images\[0\] \(id 114203\): missing "
                     "field 'crowdIndex'"):
    crowdpose.CrowdPoseBoxes(write_crowdpose(tmp_path, images, annotations), tmp_path / "images",
                             SPEC)
  images[0]["crowdIndex"] = 1.5
  with pytest.raises(DatasetError, match=r"images\[0\] \(id 114203\): 'crowdIndex' 1.5 is not a "
                     r"number in \[0, 1\]"):
    crowdpose.CrowdPoseBoxes(write_crowdpose(tmp_path, images, annotations), tmp_path / "images",
                             SPEC)


def test_unknown_keypoint_layout_is_named(tmp_path):
  renamed = dict(CATEGORY, keypoints=CATEGORY["keypoints"][:12] + ["top_head", "neck"])
  with pytest.raises(DatasetError, match="crowdpose_val.json: categories: person keypoints .* are "
                     "not layout 'crowdpose'"):
    crowdpose.CrowdPoseBoxes(write_crowdpose(tmp_path, category=renamed), tmp_path / "images", SPEC)
  with pytest.raises(DatasetError,
                     match="person category has 14 keypoints, layout 'coco' expects 17"):
    crowdpose.CrowdPoseBoxes(write_crowdpose(tmp_path), tmp_path / "images", keypoints_lib.COCO)


def test_missing_file_field_and_image_are_named(tmp_path):
  with pytest.raises(DatasetError, match="crowdpose_test.json: annotation file not found"):
    crowdpose.CrowdPoseBoxes(tmp_path / "crowdpose_test.json", tmp_path, SPEC)
  bad = [{"num_keypoints": 14, "iscrowd": 0, "keypoints": _keypoints(14), "image_id": 114203,
          "category_id": 1, "id": 7}]
  with pytest.raises(DatasetError,
                     match=r"annotations\[0\] \(id 7\): missing field\(s\) \['bbox'\]"):
    crowdpose.CrowdPoseBoxes(write_crowdpose(tmp_path, annotations=bad), tmp_path / "images", SPEC)
  path = write_crowdpose(tmp_path)
  (tmp_path / "images" / "104173.jpg").unlink()
  with pytest.raises(DatasetError, match="104173.jpg: image listed in .* is missing on disk"):
    crowdpose.CrowdPoseBoxes(path, tmp_path / "images", SPEC)
