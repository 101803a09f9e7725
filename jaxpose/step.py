"""The train and predict steps: pure functions of (state, batch, rng), jitted by the trainer.

Everything the step carries lives in `TrainState`; metrics leave as sums and counts so the
host can average them exactly over any number of steps or devices.
"""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxpose.codecs import heatmap as heatmap_codec

# ImageNet statistics in RGB order, as torchvision and the official pose code normalise.
_PIXEL_MEAN = jnp.array([0.485, 0.456, 0.406], jnp.float32) * 255.0
_PIXEL_STD = jnp.array([0.229, 0.224, 0.225], jnp.float32) * 255.0

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
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                           batch_stats=batch_stats, opt_state=opt_state)
    metrics = dict(
        loss_sum=per_sample.sum(),
        num_samples=jnp.asarray(per_sample.shape[0], jnp.float32),
        labelled_joints=(batch["target_weight"] > 0).sum().astype(jnp.float32),
        grad_norm=optax.tree.norm(grads),
        # A cheap digest of what the step consumed: equal across runs iff the batches are.
        data_fingerprint=batch["image"].astype(jnp.float32).sum() + batch["heatmaps"].sum(),
    )
    return new_state, metrics

  return train_step


def make_predict_step(model: nn.Module, flip_index: jax.Array | None
                      ) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]:
  """Returns `predict_step(variables, images_uint8) -> (xy, scores)`.

  xy: [B, K, 2] heatmap-pixel coordinates after the quarter-pixel refinement; scores: [B, K]
  heatmap maxima. With `flip_index`, averages with the flipped input's heatmaps flipped back
  and shifted one pixel, as the official SimpleBaseline/HRNet test does.
  """

  def predict_step(variables, images_uint8: jax.Array) -> tuple[jax.Array, jax.Array]:
    images = normalize_images(images_uint8)
    heatmaps, _ = model.apply(variables, images, train=False)
    heatmaps = final_heatmaps(heatmaps).astype(jnp.float32)
    if flip_index is not None:
      flipped, _ = model.apply(variables, images[:, :, ::-1], train=False)
      flipped = final_heatmaps(flipped).astype(jnp.float32)
      flipped = heatmap_codec.flip_heatmaps_back(flipped, flip_index)
      heatmaps = 0.5 * (heatmaps + flipped)
    xy, scores = heatmap_codec.decode_argmax(heatmaps)
    return heatmap_codec.refine_quarter_offset(heatmaps, xy), scores

  return predict_step
