"""The integral (SAN 3D) family: pipeline targets, train step, camera-space evaluation.

Golden numbers are hand computations: depth targets z_mm / (2000 x scale) (integral-human-
pose's `get_single_patch_sample`), L1 sums (`integral_l1` on the model's own outputs), MPJPE
of a pose shifted by a known offset, and the exact inverse of the crop (ground truth pushed
through the crop and `decode_to_camera` comes back unchanged).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import san_h36m
from jaxpose import geometry
from jaxpose import integral_step
from jaxpose import mesh as mesh_lib
from jaxpose import step as step_lib
from jaxpose import train
from jaxpose.codecs import integral
from jaxpose.codecs import integral_camera
from jaxpose.data import integral_pipeline
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import transforms_3d
from jaxpose.evaluation import h36m_eval
from jaxpose.evaluation import integral as integral_eval
from jaxpose.losses import integral_l1

SPEC = keypoints_lib.H36M


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  config = san_h36m.get_config("smoke")
  config.data.synthetic.cache_dir = str(tmp_path_factory.mktemp("san_cache"))
  return config


@pytest.fixture(scope="module")
def source(config):
  return integral_pipeline.open_split(config, "train")


@pytest.fixture(scope="module")
def model(config):
  return train.build_model(config)


def test_depth_target_is_root_relative_mm_over_2000_times_scale():
  record = dict(keypoints=np.array([[10.0, 20.0, 2], [30.0, 40.0, 2]], np.float32),
                depth_mm=np.array([0.0, -300.0], np.float32),
                scale_wh=np.array([150.0, 150.0], np.float32),
                box_scale_wh=np.array([100.0, 100.0], np.float32))
  out = transforms_3d.EncodeIntegral((64, 64)).map(record)
  # x / w - 0.5, y / h - 0.5, z_mm / (2000 * 1.5) (the crop is 1.5x the box).
  expected = np.array([[10 / 64 - 0.5, 20 / 64 - 0.5, 0.0], [30 / 64 - 0.5, 40 / 64 - 0.5, -0.1]])
  chex.assert_trees_all_close(out["coords_target"], expected.astype(np.float32), atol=1e-6)
  chex.assert_trees_all_close(out["target_weight"], np.ones((2, 3), np.float32))


def test_flip_swaps_depths_of_left_and_right(source):
  record = transforms_3d.RootRelativeDepth().map(
      {**source[0], "image": np.zeros((64, 64, 3), np.uint8), "center_xy": np.float32([30, 30]),
       "scale_wh": np.float32([40, 40])})
  flipped = transforms_3d.RandomFlip3D(tuple(SPEC.flip_index), probability=1.0).random_map(
      record, np.random.default_rng(0))
  right_knee, left_knee = SPEC.names.index("right_knee"), SPEC.names.index("left_knee")
  assert flipped["depth_mm"][left_knee] == record["depth_mm"][right_knee]
  assert flipped["depth_mm"][0] == 0.0  # the root stays the root
  assert flipped["keypoints"][left_knee, 0] == 63 - record["keypoints"][right_knee, 0]  # 64 px wide


def test_train_batches(config, source):
  batch = next(iter(integral_pipeline.train_dataset(config, source, 4)))
  chex.assert_shape(batch["image"], (4, 32, 32, 3))
  chex.assert_shape([batch["coords_target"], batch["target_weight"]], (4, 17, 3))
  assert batch["image"].dtype == np.uint8
  # The root's depth target is exactly 0 (depth is root-relative).
  chex.assert_trees_all_close(batch["coords_target"][:, 0, 2], np.zeros(4, np.float32))
  # Augmented crops keep the figure near the crop: targets within the normalised range.
  assert np.all(np.abs(batch["coords_target"]) < 0.8)


@pytest.fixture(scope="module")
def compiled(config, model, fast_compiles):
  """(initial state, jitted train step) with Adam, shared by the step tests."""
  tx = optax.adam(1e-2)
  init = functools.partial(step_lib.create_train_state, model, tx,
                           input_hw=tuple(config.input.size_hw))
  state = jax.jit(init)(jax.random.key(0))
  return state, jax.jit(integral_step.make_train_step(model, tx))


def _batch(config, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  height, width = config.input.size_hw
  return dict(image=rng.integers(0, 256, (4, height, width, 3), dtype=np.uint8),
              coords_target=rng.uniform(-0.3, 0.3, (4, 17, 3)).astype(np.float32),
              target_weight=np.ones((4, 17, 3), np.float32), skipped=np.zeros(4, np.int32))


def test_step_loss_is_integral_l1_of_the_model_outputs_and_falls(model, config, compiled):
  state, train_step = compiled
  batch = _batch(config)
  (_, aux), _ = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
      {"params": state.params, "batch_stats": state.batch_stats},
      step_lib.normalize_images(jnp.asarray(batch["image"])))
  expected = np.abs(np.asarray(aux["coords"]) - batch["coords_target"]).sum()
  losses = []
  for _ in range(10):
    state, metrics = train_step(state, batch, jax.random.key(1))
    losses.append(float(metrics["loss_sum"]) / float(metrics["num_samples"]))
  chex.assert_trees_all_close(losses[0], expected / 4, rtol=1e-4)
  assert float(metrics["labelled_joints"]) == 4 * 17
  assert losses[-1] < 0.92 * losses[0], losses  # 7.73 -> 6.79 measured


def test_2d_samples_send_no_gradient_through_depth(config, compiled):
  """With z weight 0 on two samples, their z targets change neither the gradient nor the
  update of the step; a depth-supervised sample's z target changes both."""
  state, train_step = compiled
  batch = _batch(config)
  batch["target_weight"][2:, :, 2] = 0.0
  other = {**batch, "coords_target": batch["coords_target"].copy()}
  other["coords_target"][2:, :, 2] += 0.25
  new_a, metrics_a = train_step(state, batch, jax.random.key(1))
  new_b, metrics_b = train_step(state, other, jax.random.key(1))
  assert float(metrics_a["grad_norm"]) == float(metrics_b["grad_norm"])
  chex.assert_trees_all_equal(new_a.params, new_b.params)
  other["coords_target"][0, :, 2] += 0.25
  _, metrics_c = train_step(state, other, jax.random.key(1))
  assert float(metrics_a["grad_norm"]) != float(metrics_c["grad_norm"])


def test_collapsed_prediction_has_finite_pa_mpjpe():
  """An untrained model predicts every joint at one point; Procrustes then puts the pose on
  the target's centroid (scale 0): PA-MPJPE = mean distance of the joints to their centroid."""
  truth = np.random.default_rng(0).normal(0, 300, (2, 17, 3))
  metrics = h36m_eval.h36m_errors(np.zeros_like(truth), truth, ["Eating", "Eating"])
  centroid_distance = np.linalg.norm(truth - truth.mean(axis=1, keepdims=True), axis=-1).mean()
  chex.assert_trees_all_close(metrics["PA-MPJPE"], centroid_distance, rtol=1e-9)


def test_ground_truth_through_the_crop_decodes_to_itself(config):
  """Eval crops + official decoding invert the projection: joints mapped into a crop (x, y
  by the crop's affine, z = depth / 2000 x w) decode back to root-relative camera mm."""
  test = integral_pipeline.open_split(config, "test")
  batch = next(iter(integral_pipeline.eval_dataset(config, test, 4)))
  wh = integral_pipeline.input_wh(config)
  records = [test.records[i] for i in batch["record_index"]]
  crops = []
  for record, center, scale in zip(records, batch["center_xy"], batch["scale_wh"]):
    matrix = geometry.get_affine_transform(center, scale, 0.0, wh)
    xy = geometry.affine_transform_points(record["keypoints"][:, :2], matrix)
    depth = record["joints_cam_mm"][:, 2] - record["joints_cam_mm"][0, 2]
    crops.append(np.concatenate([xy, depth[:, None] / 2000 * wh[0]], axis=1))
  decoded = integral_camera.decode_to_camera(
      np.stack(crops), batch["center_xy"], batch["scale_wh"], wh,
      np.stack([r["focal_xy"] for r in records]), np.stack([r["principal_xy"] for r in records]),
      np.array([r["joints_cam_mm"][0, 2] for r in records]))
  truth = np.stack([r["joints_cam_mm"] - r["joints_cam_mm"][0] for r in records])
  chex.assert_trees_all_close(decoded, truth.astype(np.float64), atol=0.05)  # mm
  metrics = integral_eval.score(test, batch["record_index"], decoded)
  assert metrics["mpjpe_mm"] < 0.05


def test_score_of_a_known_offset(source):
  index = np.arange(4)
  truth = np.stack([source.records[i]["joints_cam_mm"] - source.records[i]["joints_cam_mm"][0]
                    for i in index]).astype(np.float64)
  shifted = truth.copy()
  shifted[:, 1:] += [30.0, 40.0, 0.0]  # every joint but the root 50 mm off
  metrics = integral_eval.score(source, index, shifted)
  chex.assert_trees_all_close(metrics["mpjpe_mm"], 50.0 * 16 / 17, rtol=1e-9)
  chex.assert_trees_all_close(metrics["mpjpe_all_frames_mm"], 50.0 * 16 / 17, rtol=1e-9)
  assert metrics["pa_mpjpe_mm"] < metrics["mpjpe_mm"]  # alignment removes part of a shift


def test_evaluate_reports_mpjpe(config, model, compiled, tmp_path):
  state, _ = compiled
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  metrics = integral_eval.evaluate(config, model, variables, mesh_lib.make_data_mesh(), tmp_path, 0)
  assert {"mpjpe_mm", "pa_mpjpe_mm", "mpjpe_all_frames_mm", "skipped_samples"} <= set(metrics)
  assert any(k.startswith("mpjpe_mm/") for k in metrics)
  assert 50 < metrics["mpjpe_mm"] < 2000 and metrics["skipped_samples"] == 0
  assert (tmp_path / "results_val_step0.json").is_file()
