"""Top-down transform parity with HRNet's `JointsDataset.__getitem__` on 50 samples.

`fixtures/jointsdataset_parity.npz` holds what the official code (leoxiaobin/
deep-high-resolution-net.pytorch @6f69e46, `lib/dataset/JointsDataset.py` + `coco.py` +
`lib/utils/transforms.py`, run unchanged, train branch, COCO yaml augmentation with
ROT_FACTOR 45) produced on jaxpose's synthetic COCO data with its random draws scripted
from a seeded generator: per sample the crop (uint8, RGB, 40x32), the targets (sigma 2,
10x8 heatmaps), target_weight, and the parameters HRNet derived from its draws (half-body
attempt and coin, scale multiplier, rotation, flip). The scripts are outside the repo
(/work/parity/jointsdataset/make_fixture.py). Here jaxpose's transforms run with those
parameters through their deterministic `apply` methods on the same JPEG bytes, which the
test regenerates (`synthetic` is a pure function of its seed) and checks by SHA-256.
"""

import hashlib
from pathlib import Path

import chex
import numpy as np
import pytest

from jaxpose.data import coco
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import synthetic
from jaxpose.data import transforms

FIXTURE = Path(__file__).parent / "fixtures" / "jointsdataset_parity.npz"
SYNTHETIC = dict(num_train_images=40, num_val_images=0, seed=7, image_size_hw=(144, 112))
SPEC = keypoints_lib.COCO


def _data_sha256(root: Path) -> str:
  digest = hashlib.sha256()
  for path in sorted([root / "annotations" / "person_keypoints_train.json",
                      *(root / "train").glob("*.jpg")]):
    digest.update(path.name.encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


@pytest.fixture(scope="module")
def official():
  return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def ours(official, tmp_path_factory):
  """jaxpose's crop, heatmaps [h, w, K], target_weight and the crop frame, per sample."""
  root = tmp_path_factory.mktemp("parity") / "synthetic"
  paths = synthetic.generate_coco_synthetic(root, **SYNTHETIC)
  assert _data_sha256(root) == str(official["data_sha256"]), (
      "the regenerated synthetic JPEGs differ from the fixture's (another OpenCV/libjpeg?)")
  source = coco.CocoPersonBoxes(paths.train_annotations, paths.train_images_dir, SPEC)
  by_annotation = {int(source[i]["annotation_id"]): i for i in range(len(source))}

  input_wh = tuple(int(v) for v in official["image_wh"])
  heatmap_wh = tuple(int(v) for v in official["heatmap_wh"])
  half_body = transforms.RandomHalfBody(tuple(int(i) for i in SPEC.upper_body_ids), input_wh)
  flip = transforms.RandomFlip(tuple(int(i) for i in SPEC.flip_index))
  outputs = []
  for n, annotation_id in enumerate(official["annotation_id"]):
    record = source[by_annotation[int(annotation_id)]]
    record = transforms.DecodeImage().map(record)
    record = transforms.BoxToCenterScale(input_wh, padding=1.25).map(record)
    if official["half_body_attempt"][n]:
      record = half_body.apply(record, prefer_upper=bool(official["prefer_upper"][n]))
    record = transforms.RandomScaleRotate.apply(
        record, official["scale_multiplier"][n], official["rotation_deg"][n])
    if official["flip"][n]:
      record = flip.apply(record)
    record = transforms.AffineCrop(input_wh).map(record)
    record = transforms.EncodeHeatmaps(input_wh, heatmap_wh, float(official["sigma"])).map(record)
    outputs.append(record)
  return {key: np.stack([r[key] for r in outputs])
          for key in ("image", "heatmaps", "target_weight", "keypoints", "center_xy", "scale_wh")}


def test_fixture_covers_the_augmentations(official):
  chex.assert_shape(official["crop"], (50, 40, 32, 3))
  assert official["flip"].sum() >= 10
  assert (official["rotation_deg"] != 0).sum() >= 10
  assert official["half_body_attempt"].sum() >= 5
  assert (official["half_body_attempt"] & official["prefer_upper"]).sum() >= 2
  assert (official["half_body_attempt"] & ~official["prefer_upper"]).sum() >= 2
  assert (official["target_weight"] == 0).sum() >= 10  # unlabelled or far outside the crop
  x, y = official["joints"][..., 0], official["joints"][..., 1]
  outside = (x < 0) | (x >= 32) | (y < 0) | (y >= 40)
  assert (outside & (official["target_weight"] > 0)).sum() >= 10  # outside, Gaussian still drawn


def test_crop_frame_equals_hrnet(official, ours):
  # HRNet's meta center/scale after augmentation (scale in px = its scale * 200).
  chex.assert_trees_all_close(ours["center_xy"].astype(np.float64), official["center"],
                              atol=1e-3, rtol=0)
  chex.assert_trees_all_close(ours["scale_wh"].astype(np.float64), official["scale_px"],
                              atol=0, rtol=1e-6)


def test_crops_within_one_grey_level(official, ours):
  chex.assert_shape(ours["image"], official["crop"].shape)
  difference = np.abs(ours["image"].astype(np.int16) - official["crop"].astype(np.int16))
  assert difference.max() <= 1, f"max |crop difference| {difference.max()} grey levels"


def test_labelled_keypoints_in_input_pixels_equal_hrnet(official, ours):
  labelled = official["target_weight"] > 0
  chex.assert_trees_all_close(ours["keypoints"][..., :2][labelled].astype(np.float64),
                              official["joints"][labelled], atol=1e-3, rtol=0)


def test_heatmap_targets_within_1e_5(official, ours):
  expected = np.transpose(official["heatmaps"], (0, 2, 3, 1))  # HRNet's [K, h, w] -> [h, w, K]
  chex.assert_shape(ours["heatmaps"], expected.shape)
  chex.assert_trees_all_close(ours["heatmaps"], expected, atol=1e-5, rtol=0)
  np.testing.assert_array_equal(ours["target_weight"], official["target_weight"])
