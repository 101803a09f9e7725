"""bfloat16 compute (`model.dtype`) trains to float32's accuracy (#8 part 3).

The task is small enough to learn in a hundred steps and hard enough to fail: one bright
6x6 square on a dark noisy 64x64 image; SimpleBaseline-R18 (jaxpose's bfloat16 path:
`layers.conv2d` through `fast_grad`, the sub-pixel deconvolutions, BatchNorm) regresses its
heatmap from scratch with the real train step, and a held-out set is scored by the share of
argmax predictions within one heatmap pixel of the truth. Parameters, BatchNorm statistics
and the optimiser state stay float32 in both runs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpose import models
from jaxpose import step as step_lib

_SIZE, _STRIDE, _STEPS, _BATCH = 64, 4, 120, 8


def _square_task(count: int, seed: int):
  """uint8 images with one bright square each, their Gaussian heatmaps and centres
  (heatmap pixels), hand-built so no jaxpose code defines the answer."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 60, (count, _SIZE, _SIZE, 3), dtype=np.uint8)
  centres = rng.integers(4, _SIZE - 4, (count, 2))  # (x, y) in input pixels
  for image, (x, y) in zip(images, centres):
    image[y - 3:y + 3, x - 3:x + 3] = 255
  side = _SIZE // _STRIDE
  grid_x, grid_y = np.meshgrid(np.arange(side), np.arange(side))
  heat_xy = (centres + 0.5) / _STRIDE - 0.5
  heatmaps = np.exp(-((grid_x - heat_xy[:, :1, None]) ** 2
                      + (grid_y - heat_xy[:, 1:, None]) ** 2) / 2)
  return images, heatmaps[..., None].astype(np.float32), heat_xy


def _train_and_score(dtype) -> tuple[float, set]:
  model = models.build("simplebaseline_r18", num_keypoints=1, num_deconv_filters=(32, 32, 32),
                       dtype=dtype)
  tx = optax.adam(1e-3)
  state = jax.jit(lambda key: step_lib.create_train_state(model, tx, key, (_SIZE, _SIZE)))(
      jax.random.key(0))
  train_step = jax.jit(step_lib.make_train_step(model, tx))
  images, heatmaps, _ = _square_task(64, seed=0)
  for i in range(_STEPS):
    rows = slice((i % 8) * _BATCH, (i % 8 + 1) * _BATCH)
    batch = dict(image=images[rows], heatmaps=heatmaps[rows],
                 target_weight=np.ones((_BATCH, 1), np.float32))
    state, _ = train_step(state, batch, jax.random.key(1))
  test_images, _, truth = _square_task(32, seed=1)
  predicted, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                             step_lib.normalize_images(test_images), train=False)
  flat = np.asarray(predicted[..., 0], np.float32).reshape(len(truth), -1).argmax(1)
  side = _SIZE // _STRIDE
  argmax_xy = np.stack([flat % side, flat // side], 1)
  accuracy = float(np.mean(np.abs(argmax_xy - truth).max(1) <= 1.0))
  dtypes = {leaf.dtype for leaf in jax.tree.leaves((state.params, state.batch_stats,
                                                     state.opt_state))
            if jnp.issubdtype(leaf.dtype, jnp.floating)}
  return accuracy, dtypes


@pytest.mark.slow  # two from-scratch trainings: 4.7 min on a 2-core CPU beside a training run
def test_bfloat16_trains_to_float32_accuracy():
  accuracy_f32, dtypes_f32 = _train_and_score(jnp.float32)
  accuracy_bf16, dtypes_bf16 = _train_and_score(jnp.bfloat16)
  assert dtypes_f32 == dtypes_bf16 == {jnp.dtype(jnp.float32)}
  assert accuracy_f32 >= 0.8, accuracy_f32  # the task is learned at all
  assert abs(accuracy_bf16 - accuracy_f32) <= 0.1, (accuracy_bf16, accuracy_f32)
