"""Human3.6M reader on a small json in the RLE code's format.

The file is written with the full frame schema of the 3DMPPE-era annotations the RLE json
derives from: images {id, file_name, width, height, subject, action_name, action_idx,
subaction_idx, cam_idx, frame_idx, cam_param {R, t, f, c}}, annotations {id, image_id,
bbox, keypoints_world, keypoints_cam, keypoints_img, keypoints_vis}. Golden boxes and
joints come from RLE's own `H36m._load_jsons` (@203dc31) run on the same file
(tests/fixtures/h36m_reader_rle_labels.npz; recipe in /work/parity/h36m/make_fixture.py).
"""

import json

import chex
import cv2
import numpy as np
import pytest

from conftest import REPO
from jaxpose.data import h36m
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError

SPEC = keypoints_lib.H36M
FIXTURE = REPO / "tests" / "fixtures" / "h36m_reader_rle_labels.npz"
# (subject, action, subaction, camera, frame); S9 act 5 subact 2 is one RLE blocks.
FRAMES = [(1, 2, 1, 1, 0), (5, 3, 2, 2, 64), (6, 16, 1, 4, 128), (7, 9, 2, 3, 5),
          (8, 14, 1, 1, 320), (9, 5, 2, 1, 0), (9, 6, 1, 2, 64), (11, 16, 2, 4, 640)]
# A standing person in RLE's joint order, mm, world frame with z up.
_TEMPLATE = np.array([
    (0, 0, 950), (-130, 0, 940), (-130, 20, 500), (-130, 40, 80), (130, 0, 940),
    (130, 20, 500), (130, 40, 80), (0, 10, 1180), (0, 10, 1420), (0, 60, 1530),
    (0, 0, 1640), (180, 0, 1400), (300, 0, 1150), (320, 20, 900), (-180, 0, 1400),
    (-300, 0, 1150), (-320, 20, 900)], np.float64)


def _camera(camera: int, rng) -> dict:
  """A camera 5 m from the origin looking at it (x right, y down, z forward), as in H36M."""
  angle = (camera - 1) * np.pi / 2 + rng.uniform(-0.2, 0.2)
  forward = np.array([-np.cos(angle), -np.sin(angle), 0.0])
  right = np.array([-forward[1], forward[0], 0.0])
  down = np.cross(forward, right)
  R = np.stack([right, down, forward])
  position = -5000 * forward + np.array([0, 0, 1500])
  return {"R": R.tolist(), "t": position.tolist(),
          "f": [1145.0 + camera, 1144.0 - camera], "c": [512.5 + camera, 515.0 - camera]}


def h36m_frames() -> dict:
  """The json object: one frame per FRAMES entry, deterministic."""
  rng = np.random.default_rng(0)
  images, annotations = [], []
  for i, (subject, action, subaction, camera, frame) in enumerate(FRAMES):
    folder = f"s_{subject:02d}_act_{action:02d}_subact_{subaction:02d}_ca_{camera:02d}"
    cam = _camera(camera, rng)
    world = _TEMPLATE + rng.uniform(-40, 40, _TEMPLATE.shape) + [rng.uniform(-500, 500),
                                                                   rng.uniform(-500, 500), 0]
    R, t, f, c = (np.array(cam[k]) for k in "Rtfc")
    joint_cam = (world - t) @ R.T
    joint_img = joint_cam[:, :2] / joint_cam[:, 2:] * f + c
    lo, hi = joint_img.min(0), joint_img.max(0)
    size = (hi - lo - 1) * 1.2
    bbox = [*((lo + hi) / 2 - size / 2), *size]  # the 3DMPPE script's get_bbox
    if i == 2:
      bbox[0] = -37.5  # hangs off the left edge: RLE clips it
    images.append(dict(id=i, file_name=f"{folder}/{folder}_{frame + 1:06d}.jpg", width=1000,
                       height=1002, subject=subject, action_name=h36m.ACTIONS[action - 2],
                       action_idx=action, subaction_idx=subaction, cam_idx=camera,
                       frame_idx=frame, cam_param=cam))
    annotations.append(dict(id=i, image_id=i, bbox=bbox, keypoints_world=world.tolist(),
                            keypoints_cam=joint_cam.tolist(), keypoints_img=joint_img.tolist(),
                            keypoints_vis=[True] * 17))
  return {"images": images, "annotations": annotations}


def write_h36m(root, data=None, name="Sample_64_test_Human36M_protocol_2.json"):
  data = h36m_frames() if data is None else data
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  for image in data["images"]:
    path = root / "images" / image["file_name"]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.zeros((2, 2, 3), np.uint8))
  path = root / "annotations" / name
  path.write_text(json.dumps(data))
  return path


@pytest.mark.parametrize("protocol, split, subjects", [
    (1, "train", [1, 5, 6, 7, 8]), (1, "test", [9, 11]),
    (2, "train", [1, 5, 6, 7, 8, 9]), (2, "test", [11])])
def test_protocol_splits_and_rle_labels(tmp_path, protocol, split, subjects):
  golden = np.load(FIXTURE)
  source = h36m.Human36MFrames(write_h36m(tmp_path), tmp_path / "images", SPEC, protocol, split)
  # S9 act 5 subact 2 (frame 5) is blocked, as RLE does.
  expected = [i for i, frame in enumerate(FRAMES) if frame[0] in subjects and i != 5]
  assert [r["annotation_id"] for r in source.records] == expected
  rle_rows = [int(np.nonzero(golden["image_id"] == i)[0][0]) for i in expected]
  for record, row in zip(source.records, rle_rows):
    assert record["image_path"].endswith(str(golden["file_name"][row]))
    xmin, ymin, xmax, ymax = golden["bbox_xyxy"][row]
    chex.assert_trees_all_close(record["box_xywh"], np.array([xmin, ymin, xmax - xmin, ymax - ymin],
                                                             np.float32), rtol=1e-6)
    chex.assert_trees_all_close(record["keypoints"][:, :2],
                                golden["joint_img"][row][:17, :2].astype(np.float32), rtol=1e-6)
    chex.assert_trees_all_close(record["joints_cam_mm"],
                                golden["joint_cam"][row][:17].astype(np.float32), rtol=1e-6)
    chex.assert_trees_all_close((record["focal_xy"], record["principal_xy"]),
                                (golden["f"][row], golden["c"][row]))
    assert record["subject"] == FRAMES[record["annotation_id"]][0]
    assert record["action"] == FRAMES[record["annotation_id"]][1]
    assert record["root_index"] == 0
    np.testing.assert_array_equal(record["keypoints"][:, 2], 2)
    np.testing.assert_array_equal(record["image_wh"], [1000, 1002])


def test_clipped_box_by_hand(tmp_path):
  data = h36m_frames()
  record = h36m.Human36MFrames(write_h36m(tmp_path, data), tmp_path / "images", SPEC, 1,
                               "train").records[2]
  x, y, w, h = data["annotations"][2]["bbox"]
  # RLE: x2 = x + (w - 1) before clipping x to 0.
  chex.assert_trees_all_close(record["box_xywh"],
                              np.array([0, y, -37.5 + w - 1, h - 1], np.float32), rtol=1e-6)


def test_camera_parameters_may_sit_in_the_annotation(tmp_path):
  """RLE merges each image with its annotation, so either may hold a field."""
  data = h36m_frames()
  for image, annotation in zip(data["images"], data["annotations"]):
    annotation["cam_param"] = image.pop("cam_param")
  moved = h36m.Human36MFrames(write_h36m(tmp_path / "a", data), tmp_path / "a" / "images", SPEC,
                              1, "test")
  original = h36m.Human36MFrames(write_h36m(tmp_path / "b"), tmp_path / "b" / "images", SPEC, 1,
                                 "test")
  chex.assert_trees_all_close([r["joints_cam_mm"] for r in moved.records],
                              [r["joints_cam_mm"] for r in original.records])


def test_missing_protocol_subject_is_named(tmp_path):
  data = h36m_frames()
  keep = [i for i, frame in enumerate(FRAMES) if frame[0] != 11]
  data = {k: [v[i] for i in keep] for k, v in data.items()}
  with pytest.raises(DatasetError, match=r"protocol_2.json: no frames of subject\(s\) \[11\], "
                     r"which protocol 1 test uses \(subjects \[9, 11\]\)"):
    h36m.Human36MFrames(write_h36m(tmp_path, data), tmp_path / "images", SPEC, 1, "test")


def test_missing_file_and_fields_are_named(tmp_path):
  with pytest.raises(DatasetError, match="Sample_64_test_Human36M_protocol_1.json: annotation file "
                     "not found"):
    h36m.Human36MFrames(tmp_path / "Sample_64_test_Human36M_protocol_1.json", tmp_path, SPEC, 2,
                        "test")
  data = h36m_frames()
  del data["images"][3]["cam_param"]
  with pytest.raises(DatasetError, match=r"images\[3\] / annotations\[3\]: missing field\(s\) "
                     r"\['cam_param'\]"):
    h36m.Human36MFrames(write_h36m(tmp_path, data), tmp_path / "images", SPEC, 1, "train")
  data = h36m_frames()
  del data["images"][3]["cam_param"]["f"]
  with pytest.raises(DatasetError, match=r"images\[3\] / annotations\[3\] \(s_07.*\): 'cam_param' "
                     r"must hold \['R', 'c', 'f', 't'\]"):
    h36m.Human36MFrames(write_h36m(tmp_path, data), tmp_path / "images", SPEC, 1, "train")
  data = h36m_frames()
  data["annotations"].pop()
  with pytest.raises(DatasetError, match="8 images but 7 annotations"):
    h36m.Human36MFrames(write_h36m(tmp_path, data), tmp_path / "images", SPEC, 1, "train")


@pytest.mark.parametrize("field, value, message", [
    ("keypoints_world", [[0.0, 0.0, 0.0]] * 18,
     r"'keypoints_world' has shape \[18, 3\], layout 'h36m' expects \[17, 3\]"),
    ("bbox", [1.0, 2.0, 3.0], r"'bbox' has shape \[3\], expected \[4\]"),
    ("keypoints_world", [[0.0, "a", 0.0]] * 17, "'keypoints_world' holds non-numbers"),
    ("file_name", "frame_000001.jpg", "'file_name' does not name a Human3.6M sequence"),
])
def test_wrong_shapes_and_layouts_are_named(tmp_path, field, value, message):
  data = h36m_frames()
  target = "images" if field == "file_name" else "annotations"
  data[target][0][field] = value
  with pytest.raises(DatasetError, match=message):
    h36m.Human36MFrames(write_h36m(tmp_path, data), tmp_path / "images", SPEC, 1, "train")


def test_wrong_camera_shape_and_missing_image_are_named(tmp_path):
  data = h36m_frames()
  data["images"][0]["cam_param"]["R"] = [[1.0, 0.0], [0.0, 1.0]]
  with pytest.raises(DatasetError, match=r"'cam_param.R' has shape \[2, 2\], expected \[3, 3\]"):
    h36m.Human36MFrames(write_h36m(tmp_path, data), tmp_path / "images", SPEC, 1, "train")
  path = write_h36m(tmp_path)
  name = h36m_frames()["images"][7]["file_name"]
  (tmp_path / "images" / name).unlink()
  with pytest.raises(DatasetError, match=f"{name}: image listed in .* is missing on disk"):
    h36m.Human36MFrames(path, tmp_path / "images", SPEC, 2, "test")


def test_protocol_and_layout_arguments_are_checked(tmp_path):
  with pytest.raises(DatasetError, match="protocol 3 split 'train'; known: protocols"):
    h36m.Human36MFrames(tmp_path / "x.json", tmp_path, SPEC, 3, "train")
  with pytest.raises(DatasetError, match="layout 'coco' has no root joint"):
    h36m.Human36MFrames(tmp_path / "x.json", tmp_path, keypoints_lib.COCO, 1, "train")
