"""A tiny DEKR trains on synthetic multi-person images and is evaluated end to end.

The model: DEKR (jaxpose.models.dekr) at width 4 with one 4-branch HRNet stage, K = 17 (the
synthetic data is COCO-format), 2 offset channels per keypoint and no AdaptBlock (their
deformable convolutions would double the compile; `test_dekr.py` checks them against the
official code). Parameters are drawn as DEKR's own `init_weights` (every conv N(0, 0.001^2),
biases 0, BatchNorm 1 / 0) with numpy, which skips compiling `model.init`. Everything runs
through the real path: synthetic COCO files on disk -> `coco_images` -> the bottom-up train
pipeline -> `make_bottomup_train_step`; val images -> `evaluation.bottomup.evaluate` ->
pycocotools.
"""

import functools
import json
import tempfile
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl.testing import absltest

from jaxpose import bottomup_step
from jaxpose import mesh as mesh_lib
from jaxpose import step as step_lib
from jaxpose.data import bottomup_pipeline
from jaxpose.evaluation import bottomup as bottomup_eval
from jaxpose.evaluation import coco_eval
from jaxpose.models import dekr
from jaxpose.models import hrnet

INPUT = 64
STEPS = 8
# Test-only: XLA's backend optimisations are most of the compile and change values only by
# rounding (as test_dekr.py).
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _config(cache_dir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      seed=0,
      data=dict(source="synthetic", keypoints="coco", root="", train_split="train",
                val_split="val", synthetic=dict(num_train_images=8, num_val_images=2,
                                                image_size=128, seed=0, cache_dir=cache_dir)),
      input=dict(size_hw=(INPUT, INPUT), batch_size=4, num_workers=0, read_threads=1,
                 prefetch_batches=1),
      augment=dict(max_rotation=30.0, min_scale=0.75, max_scale=1.5, max_translate=0.2,
                   flip_probability=0.5),
      targets=dict(sigma=2.0, center_sigma=4.0, background_weight=0.1, offset_radius=4),
      loss=dict(heatmap_loss="dekr", heatmap_factor=1.0, offset_factor=0.03, scale_factor=1.0),
      eval=dict(batch_size=2, flip_test=True, input_size=INPUT, canvas_size=INPUT,
                max_people=30, center_threshold=0.01, nms_distance=0.05, nms_min_joints=8,
                num_visualize=1, rescore_model=""),
  ))


def _dekr_init(model: dekr.DEKR, seed: int) -> dict:
  """Variables of `model` drawn as DEKR's `init_weights` (module docstring)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jnp.zeros((1, INPUT, INPUT, 3)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(0.0, 0.001, leaf.shape).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


class BottomUpTrainTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.directory = tempfile.TemporaryDirectory()
    cls.config = _config(cls.directory.name)
    cls.model = dekr.DEKR(width=4, heatmap_channels=8, num_keypoints=17,
                          offset_channels_per_keypoint=2, offset_blocks=0,
                          stages=(hrnet.StageSpec(1, 4, 1),))
    source = bottomup_pipeline.open_split(cls.config, "train")
    cls.batch = next(iter(bottomup_pipeline.train_dataset(cls.config, source, 4)))
    variables = _dekr_init(cls.model, seed=0)
    # A high rate: the test shows the step learns, not DEKR's recipe (Adam 1e-3).
    tx = optax.adam(1e-2)
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                                batch_stats=variables["batch_stats"],
                                opt_state=tx.init(variables["params"]))
    train_step = jax.jit(
        chex.assert_max_traces(n=1)(
            bottomup_step.make_bottomup_train_step(cls.model, tx, cls.config.loss)),
        donate_argnums=0, compiler_options=_FAST_COMPILE)
    cls.metrics = []
    for _ in range(STEPS):  # one batch again and again: its loss must fall
      state, metrics = train_step(state, cls.batch, jax.random.key(1))
      cls.metrics.append(jax.device_get(metrics))
    cls.state = state

  @classmethod
  def tearDownClass(cls):
    cls.directory.cleanup()
    super().tearDownClass()

  def test_metrics_are_sums_and_the_loss_falls(self):
    first, last = self.metrics[0], self.metrics[-1]
    self.assertEqual(set(first), {"loss_sum", "heatmap_loss_sum", "offset_loss_sum",
                                  "scale_loss_sum", "num_samples", "labelled_joints",
                                  "grad_norm", "data_fingerprint", "skipped_samples",
                                  "nonfinite_streak"})
    self.assertEqual(first["nonfinite_streak"], 0)  # optim.skip_nonfinite_updates is off
    self.assertEqual(first["num_samples"], 4)
    self.assertEqual(first["labelled_joints"], self.batch["labelled_joints"].sum())
    self.assertGreater(first["labelled_joints"], 0)  # multi-person images with joints in view
    self.assertEqual(first["scale_loss_sum"], 0)  # DEKR's loss has no scale term
    chex.assert_trees_all_close(first["loss_sum"],
                                first["heatmap_loss_sum"] + first["offset_loss_sum"], rtol=1e-6)
    losses = [float(m["loss_sum"]) / 4 for m in self.metrics]
    self.assertTrue(all(np.isfinite(losses)), losses)
    self.assertLess(losses[-1], 0.7 * losses[0], losses)
    self.assertLess(float(last["offset_loss_sum"]), float(first["offset_loss_sum"]))
    self.assertLess(float(last["heatmap_loss_sum"]), float(first["heatmap_loss_sum"]))
    self.assertEqual(int(self.state.step), STEPS)

  def test_evaluator_scores_the_val_images(self):
    workdir = Path(self.directory.name) / "run"
    workdir.mkdir()
    variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
    metrics = bottomup_eval.evaluate(self.config, self.model, variables,
                                     mesh_lib.make_data_mesh(), workdir, step=STEPS)
    for name in coco_eval.STAT_NAMES:
      self.assertTrue(0 <= metrics[name] <= 1 or metrics[name] == -1, (name, metrics[name]))
    self.assertEqual(metrics["skipped_samples"], 0)
    self.assertEqual(metrics["eval_images_shrunk"], 0)
    results = json.loads((workdir / f"results_val_step{STEPS}.json").read_text())
    self.assertTrue(all(r["image_id"] in (1, 2) and len(r["keypoints"]) == 3 * 17
                        for r in results))
    self.assertTrue((workdir / f"predictions_val_step{STEPS}.png").is_file())


class _FixedOutputs(nn.Module):
  """A stand-in model: fixed heatmaps and offsets whatever the image (K = 3, 16 x 16 maps).

  Centre peaks 0.9 at pixel (x 2, y 2) and 0.8 at (12, 4); every pixel's pose puts
  keypoint k at (x + 2k, y + k) (offsets are pixel minus keypoint).
  """

  @nn.compact
  def __call__(self, images, *, train: bool):
    batch = images.shape[0]
    heatmaps = np.zeros((batch, 16, 16, 4), np.float32)
    heatmaps[:, 2, 2, 3], heatmaps[:, 4, 12, 3] = 0.9, 0.8
    offsets = np.zeros((batch, 16, 16, 6), np.float32)
    offsets[..., 0::2] = -2.0 * np.arange(3)
    offsets[..., 1::2] = -1.0 * np.arange(3)
    return (jnp.asarray(heatmaps), jnp.asarray(offsets)), {}


class PredictStepTest(absltest.TestCase):

  def test_no_person_is_found_in_the_canvas_padding(self):
    predict_step = jax.jit(bottomup_step.make_bottomup_predict_step(
        _FixedOutputs(), None, max_people=4, nms_min_joints=1))
    images = np.zeros((2, 64, 64, 3), np.uint8)
    # Image 0 is 32 wide on the 64-wide canvas: heatmap columns 8-15 are padding.
    poses = jax.device_get(predict_step({}, images, np.array([[32, 64], [64, 64]], np.int32)))
    np.testing.assert_array_equal(poses["valid"].sum(axis=1), [1, 2])
    expected_xy = 4.0 * np.array([[2, 2], [4, 3], [6, 4]])  # stride 4 x (2 + 2k, 2 + k)
    np.testing.assert_array_equal(poses["keypoints"][0, 0, :, :2], expected_xy)


if __name__ == "__main__":
  absltest.main()
