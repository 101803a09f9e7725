"""Train and predict steps of the integral family (SAN): L1 on soft-argmax coordinates.

The train step is `step.make_train_step`'s with the loss swapped: SAN's weighted L1 on
`aux["coords"]` (`losses.integral_l1`, integral-human-pose's `L1JointLocationLoss`), reading
`coords_target` and `target_weight` [B, K, 2 | 3] from `integral_pipeline` (or [B, K, 2]
from `integral2d_step`, the 2D family). A 2D sample (z weight 0) sends no gradient through
its depth expectation.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpose import step as step_lib
from jaxpose.codecs import integral
from jaxpose.losses import integral_l1


def make_train_step(model: nn.Module, tx: optax.GradientTransformation
                    ) -> Callable[[step_lib.TrainState, step_lib.Batch, jax.Array],
                                  tuple[step_lib.TrainState, step_lib.Metrics]]:
  """Returns `train_step(state, batch, rng) -> (state, metrics)` for an integral model."""

  def train_step(state: step_lib.TrainState, batch: step_lib.Batch, rng: jax.Array):
    dropout_rng = jax.random.fold_in(rng, state.step)
    images = step_lib.normalize_images(batch["image"])

    def loss_fn(params):
      (_, aux), updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      per_sample = integral_l1.integral_l1_per_sample(
          aux["coords"], batch["coords_target"], batch["target_weight"])
      return per_sample.mean(), (per_sample, updates["batch_stats"])

    grads, (per_sample, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    new_state, streak = step_lib.apply_gradients(state, grads, batch_stats, tx)
    metrics = dict(
        loss_sum=per_sample.sum(),
        num_samples=jnp.asarray(per_sample.shape[0], jnp.float32),
        labelled_joints=(batch["target_weight"][..., 0] > 0).sum().astype(jnp.float32),
        grad_norm=optax.tree.norm(grads),
        nonfinite_streak=streak.astype(jnp.float32),
        data_fingerprint=(batch["image"].astype(jnp.float32).sum()
                          + batch["coords_target"].sum()),
        skipped_samples=(batch["skipped"].sum().astype(jnp.float32) if "skipped" in batch
                         else jnp.zeros((), jnp.float32)),
    )
    return new_state, metrics

  return train_step


def make_predict_step(model: nn.Module, input_wh: tuple[int, int],
                      flip_index: np.ndarray | None) -> Callable[[Any, jax.Array], jax.Array]:
  """Returns `predict_step(variables, images_uint8) -> coords` [B, K, 2 | 3] in crop pixels
  (x, y; z root-relative, scaled like x: `integral.decode`).

  With `flip_index`, averaged with the mirrored input's prediction mirrored back, in crop
  pixels (integral-human-pose `validNet` flip test).
  """

  def predict_step(variables, images_uint8: jax.Array) -> jax.Array:
    images = step_lib.normalize_images(images_uint8)
    _, aux = model.apply(variables, images, train=False)
    coords = integral.decode(aux["coords"], input_wh)
    if flip_index is None:
      return coords
    _, flipped_aux = model.apply(variables, images[:, :, ::-1], train=False)
    flipped = integral.flip_back(integral.decode(flipped_aux["coords"], input_wh), flip_index,
                                 input_wh[0])
    return 0.5 * (coords + flipped)

  return predict_step
