"""SADI-Net end to end on MPII-format data: the synthetic MPII layout, MPII crops, the RLE train
step and PCKh scoring in the top-down evaluator.

Golden numbers are hand computations: the head geometry of a figure placed by hand (and the
renderer's own head, which `synthetic_mpii` must recover), PCKh of predictions moved by a
chosen fraction of the head size, the crop of a bright square at the annotated centre, and
`losses.rle.sadinet_per_sample` (tested against the official RLE code in test_rle.py) on the
model's own outputs.
"""

import json
import math

import chex
import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import scipy.io
import flax.linen as nn

from configs import common
from configs import sadinet_mpii
from jaxpose import mesh as mesh_lib
from jaxpose import rle_step
from jaxpose import step as step_lib
from jaxpose.codecs import heatmap as heatmap_codec
from jaxpose.data import center_scale
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import mpii
from jaxpose.data import pipeline
from jaxpose.data import synthetic
from jaxpose.data import synthetic_mpii
from jaxpose.data import synthetic_render
from jaxpose.evaluation import mpii_eval
from jaxpose.evaluation import topdown
from jaxpose.losses import rle
from jaxpose.models import sadinet

COCO = {name: i for i, name in enumerate(keypoints_lib.COCO.names)}
MPII = keypoints_lib.MPII.names


@pytest.fixture(autouse=True)
def _fast_compiles():
  # These steps run a few times; XLA's optimisations would cost more than they save.
  previous = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


def _upright_figure(height_px: float = 100.0) -> np.ndarray:
  """COCO-17 labels [17, 3] of an upright figure whose shoulder centre is (50, 50): the head
  centre sits (NECK + R) h = 12.5 px above it (R h = 8 px), the ears 0.05 R h = 0.4 px below
  the centre, the eyes 0.4 px above it."""
  keypoints = np.zeros((17, 3))
  keypoints[:, 2] = 2
  keypoints[:, :2] = (50.0, 80.0)  # limbs: anywhere labelled
  keypoints[COCO["left_shoulder"], :2] = (61.0, 50.0)
  keypoints[COCO["right_shoulder"], :2] = (39.0, 50.0)
  keypoints[COCO["left_ear"], :2] = (55.0, 37.9)
  keypoints[COCO["right_ear"], :2] = (45.0, 37.9)
  keypoints[COCO["left_eye"], :2] = (54.0, 37.1)  # 0.05 R h = 0.4 px above the centre
  keypoints[COCO["right_eye"], :2] = (46.0, 37.1)
  keypoints[COCO["left_hip"], :2] = (57.0, 80.0)
  keypoints[COCO["right_hip"], :2] = (43.0, 80.0)
  return keypoints


def test_head_joints_of_a_hand_placed_figure():
  joints, labelled, head_box = synthetic_mpii.mpii_joints(_upright_figure(), (200, 200))
  chex.assert_shape(joints, (16, 2))
  # h = 100: centre (50, 37.5), R h = 8 -> top (50, 29.5), neck (50, 45.5), box +-8.
  chex.assert_trees_all_close(joints[MPII.index("head_top")], np.array([50.0, 29.5]), atol=1e-9)
  chex.assert_trees_all_close(joints[MPII.index("upper_neck")], np.array([50.0, 45.5]), atol=1e-9)
  chex.assert_trees_all_close(joints[MPII.index("thorax")], np.array([50.0, 50.0]))
  chex.assert_trees_all_close(joints[MPII.index("pelvis")], np.array([50.0, 80.0]))
  chex.assert_trees_all_close(joints[MPII.index("left_shoulder")], np.array([61.0, 50.0]))
  chex.assert_trees_all_close(head_box, np.array([[42.0, 29.5], [58.0, 45.5]]), atol=1e-9)
  assert labelled.all()
  # The head top leaves a 40-px-high image: unlabelled; an unlabelled ear: no head at all.
  assert not synthetic_mpii.mpii_joints(_upright_figure(), (200, 40))[1][MPII.index("pelvis")]
  no_ear = _upright_figure()
  no_ear[COCO["left_ear"]] = 0
  assert synthetic_mpii.mpii_joints(no_ear, (200, 200)) is None


def test_head_joints_follow_the_renderers_drawn_head():
  rng = np.random.default_rng(0)
  for _ in range(20):
    height = rng.uniform(60, 220)
    figure = synthetic_render._to_image(  # pylint: disable=protected-access
        synthetic_render._sample_figure(rng), height, rng.uniform(-0.5, 0.5),  # pylint: disable=protected-access
        np.array([300.0, 300.0]))
    keypoints = np.concatenate([figure["keypoints"], np.full((17, 1), 2.0)], axis=1)
    joints, _, _ = synthetic_mpii.mpii_joints(keypoints, (600, 600))
    angle = figure["head_angle"]
    down = np.array([-math.sin(angle), math.cos(angle)])
    radius = synthetic_render._HEAD_RADII[1] * height  # pylint: disable=protected-access
    # Exact for any yaw, up to the json's 0.01 px rounding of the marks.
    np.testing.assert_allclose(joints[MPII.index("head_top")],
                               figure["head_centre"] - radius * down, atol=0.05)
    np.testing.assert_allclose(joints[MPII.index("upper_neck")],
                               figure["head_centre"] + radius * down, atol=0.05)


@pytest.fixture(scope="module")
def synthetic_sets(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic")
  coco_paths = synthetic.generate_coco_synthetic(
      root / "coco", num_train_images=4, num_val_images=6, seed=3, image_size_hw=(128, 128))
  return coco_paths, synthetic_mpii.ensure_synthetic_mpii(coco_paths, root / "mpii")


def test_synthetic_mpii_files_in_the_official_schema(synthetic_sets):
  coco_paths, paths = synthetic_sets
  entries = json.loads(paths.val_annotations.read_text())
  assert entries and all(set(e) == {"image", "center", "scale", "joints", "joints_vis"}
                         for e in entries)
  coco = json.loads(coco_paths.val_annotations.read_text())
  persons = mpii.MpiiPersons(paths.val_annotations, paths.image_dir, keypoints_lib.MPII)
  assert len(persons) == len(entries) <= len(coco["annotations"])
  ground_truth = mpii_eval.read_gt_valid(paths.gt_valid)
  raw = scipy.io.loadmat(str(paths.gt_valid))
  chex.assert_shape(raw["pos_gt_src"], (16, 2, len(entries)))
  for record, entry, missing in zip(persons.records, entries, ground_truth.joint_missing):
    np.testing.assert_array_equal(missing, np.asarray(entry["joints_vis"]) == 0)
    # The person's COCO annotation: the crop frame is its box's middle and 1.25 x its longer
    # side (after HRNet's shift), and same-name joints keep their (0-based) position.
    image_id = int(entry["image"][:-4]) - 500_000_000
    matches = []
    for a in coco["annotations"]:
      x, y, w, h = a["bbox"]
      if a["image_id"] == image_id and np.allclose(
          record["center_xy"], [x + (w - 1) / 2, y + (h - 1) / 2], atol=2e-3):
        matches.append(a)
    assert len(matches) == 1
    chex.assert_trees_all_close(record["scale_wh"],
                                np.full(2, 1.25 * max(matches[0]["bbox"][2:]), np.float32),
                                rtol=1e-5)
    coco_keypoints = np.asarray(matches[0]["keypoints"]).reshape(17, 3)
    for name in ("right_ankle", "left_wrist", "right_shoulder"):
      if entry["joints_vis"][MPII.index(name)]:
        chex.assert_trees_all_close(record["keypoints"][MPII.index(name), :2],
                                    coco_keypoints[COCO[name], :2].astype(np.float32), atol=1e-3)
  # Ground-truth predictions score 100; moved by 0.4 head sizes: 100 at 0.5, 0 at 0.1.
  truth = ground_truth.joints_xy - 1.0  # gt_valid is 1-based, predictions 0-based
  assert mpii_eval.evaluate_gt_valid(paths.gt_valid, truth)["Mean"] == 100.0
  sizes = mpii_eval.head_sizes(ground_truth.head_boxes)
  moved = truth + 0.4 * sizes[:, None, None] * np.array([0.6, 0.8])
  table = mpii_eval.evaluate_gt_valid(paths.gt_valid, moved)
  assert table["Mean"] == 100.0 and table["Mean@0.1"] == 0.0


def test_mpii_record_is_cropped_around_its_own_center(tmp_path):
  (tmp_path / "annot").mkdir()
  (tmp_path / "images").mkdir()
  image = np.zeros((200, 200, 3), np.uint8)
  image[78:83, 118:123] = 255  # a white 5x5 square around (120, 80), 0-based
  cv2.imwrite(str(tmp_path / "images" / "000000001.jpg"), image)
  scale = 0.5  # HRNet: centre y += 15 * scale, scale *= 1.25, then 1-based -> 0-based
  entry = dict(image="000000001.jpg", center=[121.0, 81.0 - 15 * scale], scale=scale,
               joints=[[121.0, 81.0]] * 16, joints_vis=[1] * 16)
  (tmp_path / "annot" / "valid.json").write_text(json.dumps([entry]))
  source = mpii.MpiiPersons(mpii.split_annotation_file(tmp_path, "valid"), tmp_path / "images",
                            keypoints_lib.MPII)
  assert isinstance(center_scale.crop_frame(source, (64, 64), 1.25),
                    center_scale.UseGivenCenterScale)
  config = sadinet_mpii.get_config("smoke")
  batch = next(iter(pipeline.eval_dataset(config, source, 1)))
  crop = batch["image"][0]
  chex.assert_shape(crop, (64, 64, 3))
  # 125 px -> 64 px: the square covers ~2.6 px around the crop's centre (31.5, 31.5).
  assert crop[31:33, 31:33].min() > 150 and crop[:20, :20].max() < 20
  chex.assert_trees_all_close(batch["center_xy"][0], np.array([120.0, 80.0], np.float32))


_TINY = dict(num_stacks=1, width=8, se_reduction=4, sfm_channels=(4, 8, 8, 8),
             attention_channels=8, head_planes=(2, 2, 2, 2), feature_dim=16)


# SADI-Net's train step takes 3-13 minutes to compile on this 2-core CPU even at its tiny
# size (BUILD_NOTES, Tests); `pytest -m slow` runs it.
@pytest.mark.slow
def test_rle_step_loss_is_sadinet_loss_and_falls():
  model = sadinet.SADINet(num_keypoints=16, **_TINY)
  tx = optax.adam(3e-3)
  state = step_lib.create_train_state(model, tx, jax.random.key(0), (64, 64))
  rng = np.random.default_rng(0)
  keypoints = np.concatenate([rng.uniform(8, 56, (2, 16, 2)), np.full((2, 16, 1), 2.0)], -1)
  keypoints[1, 3] = 0  # an unlabelled joint
  heatmaps, weight = [], []
  for person in keypoints:
    h, w = heatmap_codec.encode(person[:, :2], person[:, 2], (64, 64), (16, 16), 1.0)
    heatmaps.append(h)
    weight.append(w)
  batch = dict(image=rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8),
               heatmaps=np.stack(heatmaps), target_weight=np.stack(weight),
               keypoints=keypoints.astype(np.float32), skipped=np.zeros(2, np.int32))
  loss_config = ml_collections.ConfigDict(common.sadinet_loss())
  train_step = jax.jit(chex.assert_max_traces(
      rle_step.make_rle_train_step(model, tx, loss_config), n=1))
  # The loss by hand: the model's outputs into losses.rle at the step's parameters.
  target_uv = rle.uv_from_xy(jnp.asarray(keypoints[..., :2], jnp.float32), (64, 64))

  @jax.jit
  def reference(variables):
    (h1, aux), _ = model.apply(variables, step_lib.normalize_images(batch["image"]), train=True,
                               target_uv=target_uv, mutable=["batch_stats"])
    return rle.sadinet_per_sample(h1, aux, jnp.asarray(batch["heatmaps"]),
                                  jnp.asarray(batch["target_weight"]), target_uv)

  expected = reference({"params": state.params, "batch_stats": state.batch_stats})
  losses = []
  for _ in range(4):
    state, metrics = train_step(state, batch, jax.random.key(1))
    losses.append(float(metrics["loss_sum"]) / float(metrics["num_samples"]))
    if len(losses) == 1:
      chex.assert_trees_all_close(metrics["loss_sum"], expected.sum(), rtol=1e-4)
      assert float(metrics["labelled_joints"]) == float((batch["target_weight"] > 0).sum())
  assert losses[-1] < losses[0], losses


class _CentrePeak(nn.Module):
  """A stand-in model: every joint's heatmap peaks at the crop's centre pixel."""
  num_keypoints: int = 16

  @nn.compact
  def __call__(self, images, *, train: bool):
    b, h, w = images.shape[:3]
    y, x = jnp.meshgrid(jnp.arange(h // 4), jnp.arange(w // 4), indexing="ij")
    peak = jnp.exp(-((x - w // 8) ** 2 + (y - h // 8) ** 2) / 2.0)
    heatmaps = jnp.broadcast_to(peak[None, None, :, :, None], (b, 1, h // 4, w // 4, 16))
    return heatmaps + 0 * self.param("unused", nn.initializers.zeros, ()), {}


def test_evaluator_scores_mpii_with_pckh(synthetic_sets, tmp_path):
  coco_paths, paths = synthetic_sets
  config = sadinet_mpii.get_config("smoke")
  config.data.source, config.data.root = "mpii", str(paths.root)
  config.eval.flip_test = False
  model = _CentrePeak()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  metrics = topdown.evaluate(config, model, variables, mesh_lib.make_data_mesh(), tmp_path, 0)
  assert {"PCKh@0.5", "PCKh@0.1", "PCKh@0.5_Head", "PCKh@0.5_Ankle", "PCKh@0.1_Wrist"} <= set(metrics)
  # Every joint predicted at its person's crop centre (64 px input -> 16 px maps, peak 8).
  persons = mpii.MpiiPersons(paths.val_annotations, paths.image_dir, keypoints_lib.MPII)
  centres = np.stack([r["center_xy"] for r in persons.records])
  expected = mpii_eval.evaluate_gt_valid(paths.gt_valid, np.repeat(centres[:, None], 16, 1))
  assert metrics["PCKh@0.5"] == pytest.approx(expected["Mean"] / 100)
  assert metrics["PCKh@0.1_Hip"] == pytest.approx(expected["Hip@0.1"] / 100, nan_ok=True)
