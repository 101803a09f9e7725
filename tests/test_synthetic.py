"""The synthetic COCO-format dataset: schema, labels true to the pixels, determinism, caching."""

import json
import os

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO as CocoApi

from jaxpose.data import synthetic, synthetic_render
from jaxpose.data.keypoints import COCO
from jaxpose.errors import DatasetError

IMAGE_SIZE_HW = (256, 256)
SMALL = dict(num_train_images=4, num_val_images=2, image_size_hw=IMAGE_SIZE_HW)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return synthetic.generate_coco_synthetic(tmp_path_factory.mktemp("synthetic") / "data", seed=0, **SMALL)


def _rendered_images(count: int, seed: int = 0):
  """The train split's first `count` images, rendered in memory with the generator's rngs."""
  return [synthetic_render.render_image(np.random.default_rng([seed, 0, i]), IMAGE_SIZE_HW)
          for i in range(count)]


def _tree_bytes(root) -> dict:
  return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_layout_and_pycocotools_load(dataset):
  assert sorted(p.name for p in dataset.root.iterdir()) == ["COMPLETE", "annotations", "train", "val"]
  assert sorted(p.name for p in dataset.train_images_dir.iterdir()) == [
      f"{i:012d}.jpg" for i in range(1, 5)]
  for annotation_file, num_images in ((dataset.train_annotations, 4), (dataset.val_annotations, 2)):
    api = CocoApi(str(annotation_file))
    assert sorted(api.getImgIds()) == list(range(1, num_images + 1))
    assert api.getCatIds(catNms=["person"]) == [1]
    assert len(api.getAnnIds()) >= num_images  # every image has at least one figure drawn


def test_schema_fields_and_types(dataset):
  data = json.loads(dataset.train_annotations.read_text())
  assert {"info", "licenses", "images", "annotations", "categories"} <= set(data)
  (category,) = data["categories"]
  assert category["id"] == 1 and category["name"] == "person" and category["supercategory"] == "person"
  assert category["keypoints"] == list(COCO.names)
  assert category["skeleton"] == [[a + 1, b + 1] for a, b in COCO.skeleton]
  assert min(pair for link in category["skeleton"] for pair in link) == 1  # 1-based in json
  images = {image["id"]: image for image in data["images"]}
  for image in images.values():
    assert (image["height"], image["width"]) == IMAGE_SIZE_HW
    decoded = cv2.imread(str(dataset.train_images_dir / image["file_name"]))
    assert decoded.shape == (*IMAGE_SIZE_HW, 3)
  assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
  for ann in data["annotations"]:
    assert ann["image_id"] in images and ann["category_id"] == 1 and ann["iscrowd"] == 0
    assert isinstance(ann["area"], float) and all(isinstance(v, float) for v in ann["bbox"])
    assert isinstance(ann["segmentation"], list)
    keypoints = np.array(ann["keypoints"], float)
    assert keypoints.shape == (3 * COCO.num_keypoints,)
    visibility = keypoints[2::3]
    assert set(visibility) <= {0.0, 1.0, 2.0}
    assert ann["num_keypoints"] == np.count_nonzero(visibility > 0) >= 3
    assert np.all(keypoints[0::3][visibility == 0] == 0) and np.all(keypoints[1::3][visibility == 0] == 0)
    x, y, w, h = ann["bbox"]
    height, width = IMAGE_SIZE_HW
    assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width and y + h <= height
    assert 0 < ann["area"] <= w * h


def test_json_matches_the_in_memory_render(dataset):
  data = json.loads(dataset.train_annotations.read_text())
  expected = [(image_id, p) for image_id, r in enumerate(_rendered_images(4), 1) for p in r.persons]
  assert len(data["annotations"]) == len(expected)
  for ann, (image_id, person) in zip(data["annotations"], expected):
    assert ann["image_id"] == image_id
    np.testing.assert_array_equal(np.reshape(ann["keypoints"], (-1, 3)), person.keypoints)
    assert ann["bbox"] == list(person.box_xywh) and ann["area"] == person.area


def test_labels_are_true_to_the_owner_mask():
  rendered = _rendered_images(40)
  counts = np.zeros(3, int)
  for image in rendered:
    height, width = image.owner.shape
    for person in image.persons:
      xy, visibility = person.keypoints[:, :2], person.keypoints[:, 2]
      counts += np.bincount(visibility.astype(int), minlength=3)
      pixel = np.floor(xy + 0.5).astype(int)
      inside = (pixel[:, 0] >= 0) & (pixel[:, 0] < width) & (pixel[:, 1] >= 0) & (pixel[:, 1] < height)
      assert np.all(inside[visibility > 0])
      assert np.all(xy[visibility == 0] == 0)  # COCO writes unlabelled keypoints as (0, 0, 0)
      owner_at_keypoint = image.owner[np.clip(pixel[:, 1], 0, height - 1), np.clip(pixel[:, 0], 0, width - 1)]
      assert np.all(owner_at_keypoint[visibility == 2] == person.figure_id)  # on its own pixels
      assert np.all(owner_at_keypoint[visibility == 1] != person.figure_id)  # covered
      assert np.all(owner_at_keypoint[visibility == 2] != 0)  # never background
      ys, xs = np.nonzero(image.owner == person.figure_id)
      assert person.box_xywh == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
      assert person.area == len(xs)
      x, y, w, h = person.box_xywh
      visible = xy[visibility == 2]
      assert np.all((visible >= (x - 0.5, y - 0.5)) & (visible < (x + w - 0.5, y + h - 0.5)))
      assert np.count_nonzero(visibility) >= 3
  # The scenes do exercise occluders, occlusion and truncation; most keypoints stay visible.
  assert sum(np.any(image.owner == 255) for image in rendered) >= 5
  assert counts[0] > 0 and counts[1] > 0 and counts[2] > 0.7 * counts.sum()


def test_visible_keypoints_sit_on_figure_pixels_in_the_jpeg(dataset):
  """At a v=2 keypoint the JPEG no longer shows the background.

  Checked on the written pixels, independently of the owner mask: the background is the
  first thing `render_image` draws from the image's rng, so `_draw_background` with a
  fresh copy of that rng reproduces it exactly. Within 1 px of a visible keypoint some
  pixel must differ from it by more than noise + JPEG error (the threshold); figure
  colours are random, so a single pixel could match the background by chance.
  """
  data = json.loads(dataset.train_annotations.read_text())
  checked = 0
  for image_id in range(1, 5):
    jpeg = cv2.imread(str(dataset.train_images_dir / f"{image_id:012d}.jpg")).astype(int)
    background = synthetic_render._draw_background(
        np.random.default_rng([0, 0, image_id - 1]), *IMAGE_SIZE_HW).astype(int)
    for ann in (a for a in data["annotations"] if a["image_id"] == image_id):
      keypoints = np.reshape(ann["keypoints"], (-1, 3))
      for x, y in np.floor(keypoints[keypoints[:, 2] == 2, :2] + 0.5).astype(int):
        window = (slice(max(y - 1, 0), y + 2), slice(max(x - 1, 0), x + 2))
        assert np.abs(jpeg[window] - background[window]).max() > 40, (image_id, x, y)
        checked += 1
  assert checked >= 20


def test_left_side_of_the_person_is_on_the_image_right():
  """Figures face the camera within +-25 degrees of yaw and +-30 of roll (COCO's convention)."""
  index = {name: i for i, name in enumerate(COCO.names)}
  checked = 0
  for rendered in _rendered_images(20):
    for person in rendered.persons:
      kp = person.keypoints
      for joint in ("shoulder", "hip", "eye"):
        left, right = kp[index[f"left_{joint}"]], kp[index[f"right_{joint}"]]
        if left[2] > 0 and right[2] > 0:
          assert left[0] > right[0], (joint, left, right)
          checked += 1
  assert checked > 20


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path, dataset):
  again = synthetic.generate_coco_synthetic(tmp_path / "again", seed=0, **SMALL)
  other = synthetic.generate_coco_synthetic(tmp_path / "other", seed=1, **SMALL)
  reference = _tree_bytes(dataset.root)
  assert _tree_bytes(again.root) == reference
  other_bytes = _tree_bytes(other.root)
  assert other_bytes.keys() == reference.keys()
  for name in ("annotations/person_keypoints_train.json", "train/000000000001.jpg", "val/000000000001.jpg"):
    assert other_bytes[name] != reference[name], name


def test_ensure_reuses_a_complete_dataset(tmp_path):
  root = tmp_path / "cache"
  paths = synthetic.ensure_synthetic_dataset(root, seed=0, **SMALL)
  files = [paths.train_annotations, paths.val_annotations, paths.train_images_dir / "000000000001.jpg"]
  before = [os.stat(f).st_mtime_ns for f in files]
  inode_before = os.stat(root).st_ino
  assert synthetic.ensure_synthetic_dataset(root, seed=0, **SMALL) == paths
  assert [os.stat(f).st_mtime_ns for f in files] == before
  assert os.stat(root).st_ino == inode_before


def test_ensure_regenerates_a_partial_directory(tmp_path):
  root = tmp_path / "cache"
  (root / "train").mkdir(parents=True)
  (root / "train" / "000000000001.jpg").write_bytes(b"truncated")
  paths = synthetic.ensure_synthetic_dataset(root, seed=0, **SMALL)
  assert json.loads((root / "COMPLETE").read_text())["seed"] == 0
  assert cv2.imread(str(paths.train_images_dir / "000000000001.jpg")) is not None
  assert len(list(paths.train_images_dir.iterdir())) == 4
  assert CocoApi(str(paths.val_annotations)).getImgIds()
  assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # no temp or trash left over


def test_ensure_refuses_other_parameters_and_foreign_folders(tmp_path):
  root = tmp_path / "cache"
  synthetic.ensure_synthetic_dataset(root, seed=0, **SMALL)
  with pytest.raises(DatasetError, match="generated with"):
    synthetic.ensure_synthetic_dataset(root, seed=1, **SMALL)
  foreign = tmp_path / "holiday_photos"
  foreign.mkdir()
  (foreign / "beach.jpg").write_bytes(b"precious")
  with pytest.raises(DatasetError, match="refusing to delete"):
    synthetic.ensure_synthetic_dataset(foreign, seed=0, **SMALL)
  assert (foreign / "beach.jpg").read_bytes() == b"precious"


def test_a_crash_mid_generation_leaves_nothing_behind(tmp_path, monkeypatch):
  calls = []

  def render_then_crash(rng, image_size_hw):
    calls.append(1)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return synthetic_render.render_image(rng, image_size_hw)

  monkeypatch.setattr(synthetic, "render_image", render_then_crash)
  with pytest.raises(KeyboardInterrupt):
    synthetic.ensure_synthetic_dataset(tmp_path / "cache", seed=0, **SMALL)
  assert len(calls) == 3
  assert list(tmp_path.iterdir()) == []
