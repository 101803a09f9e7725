"""The image-level COCO / CrowdPose reader and the bottom-up grain pipelines.

Data: small files the tests write in the official COCO schema (a crowd region as a
compressed RLE, an unlabelled person as a polygon, a person with a keypoint off the image,
a truncated JPEG) and CrowdPose's (14 keypoints, no area or segmentation). Expected records
and masks are hand-derived; expected targets are the codec's on the same (deterministic)
affine, since the pipeline's job is the wiring: which record, warp and keys reach a batch.
"""

import json
import tempfile
from pathlib import Path

import chex
import cv2
import ml_collections
import numpy as np
from absl.testing import absltest

from jaxpose import geometry
from jaxpose.codecs import bottomup
from jaxpose.codecs import bottomup_decode
from jaxpose.data import bottomup_pipeline
from jaxpose.data import bottomup_transforms
from jaxpose.data import coco_images
from jaxpose.data import image_io
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError

COCO = keypoints_lib.COCO
K = COCO.num_keypoints


def _keypoints(points: dict[int, tuple[float, float]], num_keypoints: int = K) -> list[float]:
  values = [0.0] * (3 * num_keypoints)
  for k, (x, y) in points.items():
    values[3 * k:3 * k + 3] = [x, y, 2]
  return values


def _crowd_rle(height: int, width: int) -> dict:
  """Rows 0-9, columns 50-63 as COCO stores crowd regions: uncompressed RLE, run lengths
  of alternating 0s and 1s down the columns (column-major)."""
  mask = np.zeros((height, width), np.uint8)
  mask[0:10, 50:64] = 1
  flat = mask.T.reshape(-1)
  changes = np.flatnonzero(np.diff(flat)) + 1
  runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
  counts = ([0] if flat[0] else []) + runs.tolist()
  return {"size": [height, width], "counts": counts}


def _annotation(id_: int, image_id: int, keypoints: list[float], **fields) -> dict:
  labelled = sum(1 for v in keypoints[2::3] if v > 0)
  return dict(id=id_, image_id=image_id, category_id=1, keypoints=keypoints, iscrowd=0,
              num_keypoints=labelled, bbox=[0.0, 0.0, 10.0, 10.0], area=2000.0,
              segmentation=[[0, 0, 10, 0, 10, 10, 0, 10]], **fields)


def write_coco(root, annotations=None, images=None) -> tuple:
  """annotations/person_keypoints_train.json and train/ images; returns (json path, images dir).

  Image 1 (64x48): a1 (3 keypoints, area 2000), a2 (area 500: no centre), a3 crowd RLE,
  a4 unlabelled person (polygon x 10-20, y 30-40), a5 a keypoint at x = 100 (skipped, box
  x 30-40, y 5-15 masked). Image 2 (32x32): only a crowd region. Image 3: no annotation.
  Image 4 (32x32): one person, its JPEG truncated.
  """
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  (root / "train").mkdir(exist_ok=True)
  rng = np.random.default_rng(0)
  images = images if images is not None else [
      dict(id=1, file_name="1.png", width=64, height=48),
      dict(id=2, file_name="2.png", width=32, height=32),
      dict(id=3, file_name="3.png", width=32, height=32),
      dict(id=4, file_name="4.jpg", width=32, height=32)]
  for image in images:
    pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
    path = root / "train" / image["file_name"]
    cv2.imwrite(str(path), pixels)
    if image["file_name"] == "4.jpg":
      path.write_bytes(path.read_bytes()[:200])
  if annotations is None:
    annotations = [
        _annotation(11, 1, _keypoints({0: (10, 12), 5: (14, 30), 16: (20, 40)})),
        _annotation(12, 1, _keypoints({1: (40, 20), 2: (44, 24)}), ),
        dict(id=13, image_id=1, category_id=1, keypoints=[0] * (3 * K), iscrowd=1,
             num_keypoints=0, bbox=[50, 0, 14, 10], area=140, segmentation=_crowd_rle(48, 64)),
        dict(_annotation(14, 1, [0] * (3 * K)), area=150.0,
             segmentation=[[10, 30, 20, 30, 20, 40, 10, 40]]),
        dict(_annotation(15, 1, _keypoints({0: (100, 10), 1: (35, 10)})), bbox=[30, 5, 10, 10]),
        dict(id=21, image_id=2, category_id=1, keypoints=[0] * (3 * K), iscrowd=1,
             num_keypoints=0, bbox=[0, 0, 8, 8], area=64, segmentation=[[0, 0, 8, 0, 8, 8, 0, 8]]),
        _annotation(41, 4, _keypoints({0: (10, 10), 1: (12, 12)})),
    ]
    annotations[1]["area"] = 500.0
  data = dict(info={}, licenses=[], images=images, annotations=annotations, categories=[dict(
      id=1, name="person", supercategory="person", keypoints=list(COCO.names),
      skeleton=[[a + 1, b + 1] for a, b in COCO.skeleton])])
  path = root / "annotations" / "person_keypoints_train.json"
  path.write_text(json.dumps(data))
  return path, root / "train"


def _tempdir(test: absltest.TestCase) -> Path:
  directory = tempfile.TemporaryDirectory()
  test.addCleanup(directory.cleanup)
  return Path(directory.name)


def _config(root, **augment) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      seed=3,
      data=dict(source="coco", keypoints="coco", root=str(root), train_split="train",
                val_split="train"),
      input=dict(size_hw=(64, 64), batch_size=3, num_workers=0, read_threads=1,
                 prefetch_batches=1),
      augment={**dict(max_rotation=30.0, min_scale=0.75, max_scale=1.5, max_translate=0.2,
                      flip_probability=0.5), **augment},
      targets=dict(sigma=2.0, center_sigma=4.0, background_weight=0.1, offset_radius=4),
      eval=dict(input_size=64, canvas_size=128),
  ))


class CocoImagesTest(absltest.TestCase):

  def test_records_masks_and_counts(self):
    root = _tempdir(self)
    annotation_file, image_dir = write_coco(root)
    source = coco_images.CocoImages(annotation_file, image_dir, COCO)
    # Image 3 has no annotation: DEKR trains only on images with some annotation.
    self.assertEqual([r.image_id for r in source.records], [1, 2, 4])
    first = source[0]
    # a1, a2 and the unlabelled a4 (non-crowd: DEKR trains on it); a5 skipped.
    chex.assert_shape(first["keypoints"], (3, K, 3))
    np.testing.assert_array_equal(first["keypoints"][0, 5], [14, 30, 2])
    np.testing.assert_array_equal(first["segmentation_area"], [2000, 500, 150])
    self.assertEqual(source[1]["keypoints"].shape, (0, K, 3))  # only a crowd region
    np.testing.assert_array_equal(source[1]["image_wh"], [32, 32])
    mask = first["valid_mask"]
    chex.assert_shape(mask, (48, 64))
    self.assertFalse(mask[0:10, 50:64].any())  # crowd RLE, exactly its pixels
    self.assertTrue(mask[10:, 50:64].all())
    self.assertFalse(mask[32:38, 12:18].any())  # unlabelled person's polygon
    self.assertFalse(mask[7:13, 32:38].any())  # the skipped person's box
    self.assertTrue(mask[20:28, 0:8].all() and mask[44:48, 24:48].all())
    self.assertEqual(source.scan.skipped_persons, 1)  # a5, keypoint off the image
    self.assertEqual(source.scan.filtered_persons, 2)  # the two crowd regions
    self.assertIn("annotations[4] (id 15)", str(source.scan.skipped[0]))
    # Evaluation keeps every image, as DEKR tests on all of val2017.
    eval_source = coco_images.CocoImages(annotation_file, image_dir, COCO,
                                         require_annotations=False)
    self.assertEqual([r.image_id for r in eval_source.records], [1, 2, 3, 4])

  def test_bad_files_name_the_entry(self):
    cases = [
        (lambda a: a[0].pop("num_keypoints"), r"annotations\[0\] \(id 11\): missing field\(s\) "
                                               r"\['num_keypoints'\]"),
        (lambda a: a[0].pop("area"), r"annotations\[0\] \(id 11\): missing field\(s\) \['area'\]"),
        (lambda a: a[2].update(segmentation={"counts": "x", "size": [1, 1]}),
         r"annotations\[2\] \(id 13\): 'segmentation'"),
        (lambda a: a[0].update(keypoints=[1, 2, 3]), r"annotations\[0\] \(id 11\): 'keypoints'"),
        (lambda a: a[0].update(image_id=99), r"annotations\[0\] \(id 11\): image_id 99"),
    ]
    for index, (corrupt, message) in enumerate(cases):
      root = _tempdir(self)
      annotation_file, image_dir = write_coco(root)
      data = json.loads(annotation_file.read_text())
      corrupt(data["annotations"])
      annotation_file.write_text(json.dumps(data))
      with self.subTest(case=index), self.assertRaisesRegex(DatasetError, message):
        coco_images.CocoImages(annotation_file, image_dir, COCO)
    root = _tempdir(self)
    annotation_file, image_dir = write_coco(root)
    (image_dir / "2.png").unlink()
    with self.assertRaisesRegex(DatasetError, "2.png: image listed in .* missing on disk"):
      coco_images.CocoImages(annotation_file, image_dir, COCO)

  def test_crowdpose_has_no_area_and_no_mask(self):
    spec = keypoints_lib.CROWDPOSE
    root = _tempdir(self)
    images = [dict(id=7, file_name="7.png", width=40, height=30, crowdIndex=0.3)]
    annotations = [
        dict(id=1, image_id=7, category_id=1, iscrowd=0, num_keypoints=2, bbox=[1, 1, 9, 9],
             keypoints=_keypoints({0: (5, 5), 13: (6, 2)}, spec.num_keypoints)),
        dict(id=2, image_id=7, category_id=1, iscrowd=1, num_keypoints=0, bbox=[0, 0, 9, 9],
             keypoints=[0] * (3 * spec.num_keypoints)),  # CrowdPose crowds: no segmentation
    ]
    (root / "annotations").mkdir()
    (root / "train").mkdir()
    cv2.imwrite(str(root / "train" / "7.png"), np.zeros((30, 40, 3), np.uint8))
    path = root / "annotations" / "crowdpose_train.json"
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=[dict(
        id=1, name="person", keypoints=list(spec.names), skeleton=[])])))
    source = coco_images.CocoImages(path, root / "train", spec)
    record = source[0]
    self.assertEqual(sorted(record), ["image_id", "image_path", "image_wh", "keypoints"])
    chex.assert_shape(record["keypoints"], (1, spec.num_keypoints, 3))
    self.assertEqual(source.scan.filtered_persons, 1)


class TrainPipelineTest(absltest.TestCase):

  def test_batches_hold_the_codec_targets_of_the_warped_images(self):
    root = _tempdir(self)
    write_coco(root)
    for flip in (False, True):
      # A deterministic augmentation (no rotation, scale 1, no shift; flip always or never),
      # so the expected targets follow from the record alone.
      config = _config(root, max_rotation=0.0, min_scale=1.0, max_scale=1.0, max_translate=0.0,
                       flip_probability=float(flip))
      source = bottomup_pipeline.open_split(config, "train")
      batch = next(iter(bottomup_pipeline.train_dataset(config, source, 3)))
      self.assertEqual(sorted(batch), sorted(bottomup_pipeline.TRAIN_KEYS))
      chex.assert_shape([batch["image"], batch["heatmaps"], batch["heatmap_weights"],
                         batch["offsets"], batch["offset_weights"]],
                        [(3, 64, 64, 3), (3, 16, 16, K + 1), (3, 16, 16, K + 1),
                         (3, 16, 16, 2 * K), (3, 16, 16, 2 * K)])
      self.assertEqual(batch["image"].dtype, np.uint8)
      for index in range(len(source)):
        record = source[index]
        image, problem = image_io.read_image(record["image_path"])
        if problem:  # 4.jpg, truncated: checked below, its row must carry no loss weight
          continue
        joints, area = bottomup.persons_with_centers(record["keypoints"],
                                                     record["segmentation_area"])
        warped = bottomup_transforms.affine_flip(
            dict(image=image, joints=joints, person_area=area, valid_mask=record["valid_mask"]),
            bottomup_transforms.AffineParams(0.0, 1.0, (0, 0), flip), 64, 16, COCO.flip_index)
        expected = bottomup.encode(warped["joints"], warped["person_area"],
                                   warped["valid_mask"], 16)
        row = next(i for i in range(3) if np.array_equal(batch["image"][i], warped["image"]))
        with self.subTest(flip=flip, image=record["image_id"]):
          chex.assert_trees_all_close({k: batch[k][row] for k in expected}, expected, atol=0)
          keypoints = warped["joints"][:, :-1]
          inside = (keypoints[..., 2] > 0) & np.all((keypoints[..., :2] >= 0)
                                                    & (keypoints[..., :2] < 16), axis=-1)
          self.assertEqual(batch["labelled_joints"][row], inside.sum())
          self.assertEqual(batch["skipped"][row], 0)
      skipped_row = int(np.argmax(batch["skipped"]))
      self.assertEqual(batch["skipped"].sum(), 1)
      self.assertEqual(batch["heatmap_weights"][skipped_row].max(), 0)
      self.assertEqual(batch["offset_weights"][skipped_row].max(), 0)


class EvalPipelineTest(absltest.TestCase):

  def test_canvas_padding_and_the_map_back_to_the_image(self):
    root = _tempdir(self)
    write_coco(root)
    config = _config(root)
    source = bottomup_pipeline.open_split(config, "train", for_eval=True)
    batches = list(bottomup_pipeline.eval_dataset(config, source, 3))
    self.assertLen(batches, 2)  # 4 images in whole global batches of 3
    for batch in batches:
      self.assertEqual(sorted(batch), sorted(bottomup_pipeline.EVAL_KEYS))
      chex.assert_shape(batch["image"], (3, 128, 128, 3))
    record_index = np.concatenate([b["record_index"] for b in batches])
    np.testing.assert_array_equal(record_index, [0, 1, 2, 3, -1, -1])
    first = batches[0]
    # 64x48 image, input 64: short side 64, long side 64 / 48 * 64 = 85.3 -> 128.
    np.testing.assert_array_equal(first["input_wh"][0], [128, 64])
    image, _ = image_io.read_image(source.records[0].image_path)
    resized = bottomup_transforms.ResizeKeepAspect(64).map({"image": image})
    np.testing.assert_array_equal(first["image"][0, :64, :128], resized["image"])
    self.assertEqual(first["image"][0, 64:].max(), 0)
    self.assertEqual(first["shrunk"].max(), 0)
    # A point of the image, mapped to the network input and back by the decoder's inverse.
    points = np.array([[[3.0, 4.0, 1.0], [60.5, 40.25, 1.0]]])
    forward = geometry.get_affine_transform(first["center_xy"][0], first["scale_wh"][0], 0.0,
                                            first["input_wh"][0])
    on_input = points.copy()
    on_input[..., :2] = geometry.affine_transform_points(points[..., :2], forward)
    back = bottomup_decode.to_image_coordinates(on_input, first["center_xy"][0],
                                                first["scale_wh"][0], first["input_wh"][0])
    chex.assert_trees_all_close(back, points.astype(np.float32), atol=1e-4)

  def test_an_image_too_wide_for_the_canvas_is_shrunk(self):
    # 200x80 at input 128: 320 wide, over the 256 canvas; at 64 it is 192 wide.
    record = {"image": np.zeros((80, 200, 3), np.uint8), "image_path": "wide.jpg"}
    resized = bottomup_pipeline.ResizeWithinCanvas(128, 256).map(record)
    np.testing.assert_array_equal(resized["input_wh"], [192, 64])
    self.assertEqual(resized["shrunk"], 1)
    padded = bottomup_pipeline.PadToCanvas(256).map(resized)
    chex.assert_shape(padded["image"], (256, 256, 3))
    with self.assertRaisesRegex(DatasetError, "wide.jpg: a 200x80 image does not fit"):
      bottomup_pipeline.ResizeWithinCanvas(64, 96).map(record)


if __name__ == "__main__":
  absltest.main()
