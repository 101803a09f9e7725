"""Synthetic Human3.6M frames: the RLE json schema the reader opens, protocol splits, and
projections checked by hand (a joint on the optical axis lands on the principal point)."""

import json

import chex
import numpy as np
import pytest

from jaxpose.data import h36m
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import synthetic_h36m
from jaxpose.errors import DatasetError

SPEC = keypoints_lib.H36M


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("h36m") / "synthetic"
  synthetic_h36m.ensure_synthetic_h36m(root, num_train_frames=10, num_test_frames=4, seed=3,
                                       image_size=64)
  return root


def _open(root, protocol, split, annotation_file=None):
  return h36m.Human36MFrames(annotation_file or root / "annotations" / synthetic_h36m.ANNOTATION_FILE,
                             root / "images", SPEC, protocol, split)


def test_files_follow_the_rle_schema(dataset):
  data = json.loads((dataset / "annotations" / synthetic_h36m.ANNOTATION_FILE).read_text())
  assert len(data["images"]) == len(data["annotations"]) == 14
  image, annotation = data["images"][0], data["annotations"][0]
  assert {"file_name", "width", "height", "id"} <= set(image)
  assert {"image_id", "bbox", "cam_param", "keypoints_world"} <= set(annotation)
  assert sorted(annotation["cam_param"]) == ["R", "c", "f", "t"]
  assert np.shape(annotation["keypoints_world"]) == (17, 3)
  for image in data["images"]:
    folder, name = image["file_name"].split("/")
    assert name.startswith(folder) and (dataset / "images" / image["file_name"]).is_file()
    # The blocked S9 sequences are never written (the reader would drop them).
    assert not any(b in folder for b in h36m.BLOCKED_SEQUENCES)


@pytest.mark.parametrize("protocol,split,subjects,count", [
    (1, "train", {1, 5, 6, 7, 8}, 10), (1, "test", {9, 11}, 4),
    (2, "train", {1, 5, 6, 7, 8, 9}, 12), (2, "test", {11}, 2)])
def test_protocol_splits(dataset, protocol, split, subjects, count):
  frames = _open(dataset, protocol, split)
  assert {int(r["subject"]) for r in frames.records} == subjects
  assert len(frames) == count


def test_frames_are_plausible(dataset):
  for record in _open(dataset, 1, "train").records:
    joints = record["joints_cam_mm"]
    assert np.all(joints[:, 2] > 3000)  # in front of the camera, metres away
    thigh = np.linalg.norm(joints[SPEC.names.index("right_knee")]
                           - joints[SPEC.names.index("right_hip")])
    assert 350 < thigh < 550  # mm, near Human3.6M's 442 x [0.9, 1.1]
    x, y, w, h = record["box_xywh"]
    xy = record["keypoints"][:, :2]
    assert np.all(xy >= [x, y]) and np.all(xy <= [x + w + 1, y + h + 1])


def test_projection_by_hand(dataset, tmp_path):
  """Joints moved onto the optical axis (and 500 mm right / 250 mm down of it at 5 m) project
  to c and to c + f * (0.1, 0.05): the reader and the writer agree on R, t, f, c."""
  data = json.loads((dataset / "annotations" / synthetic_h36m.ANNOTATION_FILE).read_text())
  camera = data["annotations"][0]["cam_param"]
  R, t = np.array(camera["R"]), np.array(camera["t"])
  world = np.array(data["annotations"][0]["keypoints_world"])
  world[0] = t + 5000 * R[2]  # R's rows are the camera's x, y, z axes in the world
  world[1] = t + 5000 * R[2] + 500 * R[0] + 250 * R[1]
  data["annotations"][0]["keypoints_world"] = world.tolist()
  edited = tmp_path / "edited.json"
  edited.write_text(json.dumps(data))
  record = next(r for r in _open(dataset, 1, "train", edited).records if r["annotation_id"] == 0)
  f, c = np.array(camera["f"]), np.array(camera["c"])
  chex.assert_trees_all_close(record["keypoints"][0, :2], c.astype(np.float32), atol=1e-3)
  chex.assert_trees_all_close(record["keypoints"][1, :2], (c + f * [0.1, 0.05]).astype(np.float32),
                              atol=1e-3)
  chex.assert_trees_all_close(record["joints_cam_mm"][0], np.float32([0, 0, 5000]), atol=1e-2)


def test_regeneration_is_identical_and_other_params_refused(dataset, tmp_path):
  again = tmp_path / "again"
  synthetic_h36m.ensure_synthetic_h36m(again, num_train_frames=10, num_test_frames=4, seed=3,
                                       image_size=64)
  name = synthetic_h36m.ANNOTATION_FILE
  assert (again / "annotations" / name).read_bytes() == (dataset / "annotations" / name).read_bytes()
  with pytest.raises(DatasetError, match="delete it"):
    synthetic_h36m.ensure_synthetic_h36m(again, num_train_frames=11, num_test_frames=4, seed=3,
                                         image_size=64)


def test_nearer_limbs_are_painted_brighter_and_thicker():
  """The depth cue: the same bone, drawn nearer the camera than the root, is brighter."""
  rng = np.random.default_rng(0)
  frame = synthetic_h36m.render_frame(rng, 128, "x")
  camera = (frame.joints_world_mm - frame.camera_position_mm) @ frame.rotation.T
  projected = camera[:, :2] / camera[:, 2:] * frame.focal_xy + frame.principal_xy
  images = []
  for shift in (-500.0, 500.0):  # the whole body nearer / farther, the root kept
    moved = camera.copy()
    moved[1:, 2] += shift
    image = np.zeros((128, 128, 3), np.uint8)
    synthetic_h36m._paint(image, projected, moved, float(frame.focal_xy[0]))
    images.append(image.astype(np.float64).sum())
  assert images[0] > 1.3 * images[1]
