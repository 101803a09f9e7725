"""The bottom-up (DEKR / SAMKR) train and predict steps, pure functions jitted by the trainer.

Same contract as `jaxpose.step`: the state is `step.TrainState`, images arrive uint8 and are
normalised inside (`step.normalize_images`), metrics leave as sums and counts with the
top-down names (`loss_sum`, `num_samples`, `labelled_joints`, `grad_norm`,
`data_fingerprint`, `skipped_samples`) plus the loss terms (`heatmap_loss_sum`,
`offset_loss_sum`, `scale_loss_sum`), each a batch loss times the batch size so that
`loss_sum / num_samples` is the mean batch loss over any number of steps.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpose import step as step_lib
from jaxpose.codecs import bottomup_decode
from jaxpose.losses import bottomup as bottomup_losses

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _sum_or_zero(batch: Batch, key: str) -> jax.Array:
  """Batches built by hand (bench, tests) may carry no counts."""
  return batch[key].sum().astype(jnp.float32) if key in batch else jnp.zeros((), jnp.float32)


def make_bottomup_train_step(
    model: nn.Module, tx: optax.GradientTransformation,
    loss_config: bottomup_losses.LossConfig | Mapping[str, Any],
) -> Callable[[step_lib.TrainState, Batch, jax.Array], tuple[step_lib.TrainState, Metrics]]:
  """Returns `train_step(state, batch, rng) -> (state, metrics)` for a bottom-up `model`.

  batch: `bottomup_pipeline.TRAIN_KEYS` (image uint8 [B, S, S, 3], the codec's targets,
  `labelled_joints`, `skipped`). loss_config: `losses.bottomup.LossConfig` or the config's
  `loss` block. The loss is over the whole global batch (DEKR's offset normaliser counts
  the positive weights of every image), so BatchNorm and the losses see the same batch on
  any number of devices.
  """
  loss_config = bottomup_losses.LossConfig.from_mapping(loss_config)

  def train_step(state: step_lib.TrainState, batch: Batch, rng: jax.Array
                 ) -> tuple[step_lib.TrainState, Metrics]:
    dropout_rng = jax.random.fold_in(rng, state.step)
    images = step_lib.normalize_images(batch["image"])

    def loss_fn(params):
      (outputs, aux), updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      terms = bottomup_losses.bottomup_losses(outputs, aux, batch, loss_config)
      return terms["total"], (terms, updates["batch_stats"])

    grads, (terms, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    new_state, streak = step_lib.apply_gradients(state, grads, batch_stats, tx)
    batch_size = jnp.asarray(batch["image"].shape[0], jnp.float32)
    metrics = dict(
        loss_sum=terms["total"] * batch_size,
        heatmap_loss_sum=terms["heatmap"] * batch_size,
        offset_loss_sum=terms["offset"] * batch_size,
        scale_loss_sum=terms["scale"] * batch_size,
        num_samples=batch_size,
        labelled_joints=_sum_or_zero(batch, "labelled_joints"),
        grad_norm=optax.tree.norm(grads),
        # A cheap digest of what the step consumed: equal across runs iff the batches are.
        data_fingerprint=(batch["image"].astype(jnp.float32).sum() + batch["heatmaps"].sum()
                          + batch["offsets"].sum()),
        # Images that could not be read (all loss weights zero; jaxpose.data.faults).
        skipped_samples=_sum_or_zero(batch, "skipped"),
        nonfinite_streak=streak.astype(jnp.float32),
    )
    return new_state, metrics

  return train_step


def make_bottomup_predict_step(
    model: nn.Module, flip_index: Sequence[int] | np.ndarray | None, *, max_people: int = 30,
    center_threshold: float = 0.01, nms_distance: float = 0.05, nms_min_joints: int = 8,
    stride: int = 4,
) -> Callable[[Any, jax.Array, jax.Array], dict[str, jax.Array]]:
  """Returns `predict_step(variables, images_uint8, input_wh) -> poses`, DEKR's single-scale test.

  images_uint8: [B, H, W, 3], each image at the top left of a padded canvas;
  input_wh: [B, 2] the (w, h) of each image on it (multiples of `stride`). With
  `flip_index` ([K], `KeypointSpec.flip_index`) the flipped pass is averaged in as DEKR
  (`bottomup_decode.flip_test_input`, `merge_flip_test`). Centre-heatmap values outside
  each image are zeroed first, so no person is found in the padding. Then
  `bottomup_decode.decode` (options as there; defaults: DEKR's COCO yaml).

  Returns: keypoints [B, N, K, 3] (x, y in network-input pixels, score), scores [B, N],
  valid [B, N]; N = `max_people`.
  """
  flip_index = None if flip_index is None else tuple(int(i) for i in flip_index)

  def outputs(variables, images):
    (heatmaps, offsets), _ = model.apply(variables, images, train=False)
    return heatmaps.astype(jnp.float32), offsets.astype(jnp.float32)

  def predict_step(variables, images_uint8: jax.Array, input_wh: jax.Array) -> dict[str, jax.Array]:
    images = step_lib.normalize_images(images_uint8)
    heatmaps, offsets = outputs(variables, images)
    if flip_index is None:
      poses = bottomup_decode.poses_from_offsets(offsets)
    else:
      heatmaps_flipped, offsets_flipped = outputs(
          variables, bottomup_decode.flip_test_input(images))
      heatmaps, poses = bottomup_decode.merge_flip_test(heatmaps, offsets, heatmaps_flipped,
                                                        offsets_flipped, flip_index)
    height, width = heatmaps.shape[1:3]
    inside_x = jnp.arange(width)[None, :] * stride < input_wh[:, :1]  # [B, w]
    inside_y = jnp.arange(height)[None, :] * stride < input_wh[:, 1:]  # [B, h]
    inside = inside_y[:, :, None] & inside_x[:, None, :]
    heatmaps = heatmaps.at[..., -1].multiply(inside.astype(heatmaps.dtype))
    return bottomup_decode.decode(heatmaps, poses, max_people=max_people,
                                  center_threshold=center_threshold, nms_distance=nms_distance,
                                  nms_min_joints=nms_min_joints, stride=stride)

  return predict_step
