"""The train and predict steps: pure functions of (state, batch, rng), jitted by the trainer.

Everything the step carries lives in `TrainState`; metrics leave as sums and counts so the
host can average them exactly over any number of steps or devices.
"""

from collections.abc import Sequence
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpose import optim
from jaxpose.codecs import heatmap as heatmap_codec

# ImageNet statistics in RGB order, as torchvision and the official pose code normalise.
# numpy, not jnp: importing this module must not create a JAX backend (a process that forks
# workers, as tests/fault_injection_zygote.py, needs none to exist yet).
_PIXEL_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * np.float32(255.0)
_PIXEL_STD = np.array([0.229, 0.224, 0.225], np.float32) * np.float32(255.0)

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState


def normalize_images(images_uint8: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] RGB -> float32, ImageNet mean/std normalised."""
  return (images_uint8.astype(jnp.float32) - _PIXEL_MEAN) / _PIXEL_STD


def joints_mse_per_sample(heatmaps_pred: jax.Array, heatmaps_target: jax.Array,
                          target_weight: jax.Array) -> jax.Array:
  """SimpleBaseline's `JointsMSELoss` (use_target_weight=True), per sample.

  heatmaps_pred: [B, h, w, K], or [B, S, h, w, K] for S stacks with intermediate
  supervision (stacked hourglass: every stack is compared with the same target, and the
  stacks are averaged, as the official `PoseNet.calc_loss` followed by `torch.mean`);
  heatmaps_target: [B, h, w, K]; target_weight: [B, K]. Returns [B]: 0.5 * mean over
  (stacks,) joints and pixels of (w_k * (pred - target))^2, whose batch mean is the
  official loss.
  """
  if heatmaps_pred.ndim == 5:
    heatmaps_target = heatmaps_target[:, None]
  weight = target_weight.reshape(target_weight.shape[0], *[1] * (heatmaps_pred.ndim - 2), -1)
  squared = jnp.square((heatmaps_pred.astype(jnp.float32) - heatmaps_target) * weight)
  return 0.5 * squared.mean(axis=tuple(range(1, heatmaps_pred.ndim)))


def final_heatmaps(heatmaps: jax.Array) -> jax.Array:
  """The heatmaps a prediction is read from: the last stack's for [B, S, h, w, K] outputs
  (the official hourglass test reads the last stack), else the input."""
  return heatmaps[:, -1] if heatmaps.ndim == 5 else heatmaps


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       input_hw: tuple[int, int]) -> TrainState:
  dummy = jnp.zeros((1, *input_hw, 3), jnp.float32)
  variables = model.init(rng, dummy, train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def apply_gradients(state: TrainState, grads, batch_stats, tx: optax.GradientTransformation
                    ) -> tuple[TrainState, jax.Array]:
  """The optimiser update of every train step; returns the new state and the optimiser's
  count of non-finite updates skipped in a row (0 unless optim.skip_nonfinite_updates)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  # A skipped non-finite update also keeps the BatchNorm statistics of the batch that caused it.
  streak = optim.nonfinite_streak(opt_state)
  batch_stats = jax.tree.map(lambda old, new: jnp.where(streak > 0, old, new),
                             state.batch_stats, batch_stats)
  return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                    batch_stats=batch_stats, opt_state=opt_state), streak


def make_train_step(model: nn.Module, tx: optax.GradientTransformation
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """Returns `train_step(state, batch, rng) -> (state, metrics)` for `model` and optimiser `tx`."""

  def train_step(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    dropout_rng = jax.random.fold_in(rng, state.step)
    images = normalize_images(batch["image"])

    def loss_fn(params):
      (heatmaps, _), updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      per_sample = joints_mse_per_sample(heatmaps, batch["heatmaps"], batch["target_weight"])
      return per_sample.mean(), (per_sample, updates["batch_stats"])

    grads, (per_sample, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    new_state, streak = apply_gradients(state, grads, batch_stats, tx)
    metrics = dict(
        loss_sum=per_sample.sum(),
        num_samples=jnp.asarray(per_sample.shape[0], jnp.float32),
        labelled_joints=(batch["target_weight"] > 0).sum().astype(jnp.float32),
        grad_norm=optax.tree.norm(grads),
        nonfinite_streak=streak.astype(jnp.float32),
        # A cheap digest of what the step consumed: equal across runs iff the batches are.
        data_fingerprint=batch["image"].astype(jnp.float32).sum() + batch["heatmaps"].sum(),
        # Samples whose image could not be used (zero target weight; jaxpose.data.faults).
        # Batches built by hand (bench, tests) carry no flags and skip nothing.
        skipped_samples=(batch["skipped"].sum().astype(jnp.float32) if "skipped" in batch
                         else jnp.zeros((), jnp.float32)),
    )
    return new_state, metrics

  return train_step


def make_predict_step(
    model: nn.Module, flip_index: jax.Array | None, *, scales: Sequence[float] = (),
    decode: str = "quarter", dark_blur_kernel_size: int = 11,
    shift_flipped_heatmaps: bool = True,
) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]:
  """Returns `predict_step(variables, images_uint8) -> (xy, scores)`, the test-time recipe.

  xy: [B, K, 2] heatmap-pixel coordinates of the (base) crop; scores: [B, K] maxima of the
  averaged heatmaps. With `flip_index`, each crop's heatmaps are averaged with the flipped
  input's heatmaps flipped back (shifted one pixel right with `shift_flipped_heatmaps`, HRNet's
  TEST.SHIFT_HEATMAP). With `scales` (multi-scale testing), `images_uint8` is [B, S, H, W, 3],
  crop s covering `scale_wh * scales[s]`; each scale's (flip-averaged) heatmaps are resampled
  onto the base crop's heatmap grid (`heatmap.heatmaps_to_base_crop`) and the S maps averaged.
  Without `scales`, images are [B, H, W, 3]. `decode`: "quarter" (HRNet's quarter-pixel shift)
  or "dark" (DARK's Taylor step, `heatmap.refine_dark`) after the argmax.
  """
  if decode not in heatmap_codec.DECODERS:
    raise ValueError(f"decode {decode!r}: expected one of {list(heatmap_codec.DECODERS)}")

  def crop_heatmaps(variables, images_uint8: jax.Array) -> jax.Array:
    images = normalize_images(images_uint8)
    heatmaps, _ = model.apply(variables, images, train=False)
    heatmaps = final_heatmaps(heatmaps).astype(jnp.float32)
    if flip_index is None:
      return heatmaps
    flipped, _ = model.apply(variables, images[:, :, ::-1], train=False)
    flipped = final_heatmaps(flipped).astype(jnp.float32)
    flipped = heatmap_codec.flip_heatmaps_back(flipped, flip_index, shift_flipped_heatmaps)
    return 0.5 * (heatmaps + flipped)

  def predict_step(variables, images_uint8: jax.Array) -> tuple[jax.Array, jax.Array]:
    if not scales:
      heatmaps = crop_heatmaps(variables, images_uint8)
    else:
      total = None
      for i, scale in enumerate(scales):
        resampled = heatmap_codec.heatmaps_to_base_crop(
            crop_heatmaps(variables, images_uint8[:, i]), scale)
        total = resampled if total is None else total + resampled
      heatmaps = total / len(scales)
    xy, scores = heatmap_codec.decode_argmax(heatmaps)
    if decode == "dark":
      return heatmap_codec.refine_dark(heatmaps, xy, dark_blur_kernel_size), scores
    return heatmap_codec.refine_quarter_offset(heatmaps, xy), scores

  return predict_step
