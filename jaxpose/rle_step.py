"""The train step of the "topdown_rle" family (SADI-Net): heatmap MSE on H1 and H2 plus RLE.

The batch is the top-down one (`pipeline.RLE_TRAIN_KEYS`) with the joints' input-crop
pixels `keypoints` [B, K, 3] besides `heatmaps` and `target_weight`: they become the RLE
target uv = xy / input_wh - 0.5 (`losses.rle.uv_from_xy`), which the model needs to return
the flow density at the ground truth. The loss is `losses.rle.sadinet_terms` (SADI-Net
eq. 4, 6-8; `loss.chi` picks the Table V variant). Prediction needs nothing new: the model's
first output is H1 [B, S, h, w, K], which `step.make_predict_step` reads as any stacked
hourglass's heatmaps.

`loss.dlm` False trains on L(H1) alone: no gradient reaches the SFM, the head or the flow,
so the backbone learns exactly as the RFM-only row of Table III (they are still computed).
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxpose import step as step_lib
from jaxpose.errors import UserError
from jaxpose.losses import rle


def make_rle_train_step(model: nn.Module, tx: optax.GradientTransformation,
                        loss_config: ml_collections.ConfigDict
                        ) -> Callable[[step_lib.TrainState, step_lib.Batch, jax.Array],
                                      tuple[step_lib.TrainState, step_lib.Metrics]]:
  """`train_step(state, batch, rng) -> (state, metrics)` for a "topdown_rle" model.

  loss_config: the config's `loss` block (`configs.common.sadinet_loss`): `chi` (one of
  `rle.CHI_MODES`), `rle_weight`, `dlm`. Metrics: the trainer's sums plus `h1_sum`,
  `h2_sum`, `rle_sum` (per-sample terms summed over the batch, unweighted) and `sigma_sum`
  (the mean sigma_hat of labelled joints, summed over samples).
  """
  if loss_config.chi not in rle.CHI_MODES:
    raise UserError(f"config key loss.chi: unknown {loss_config.chi!r}; known: {rle.CHI_MODES}")
  chi, rle_weight, dlm = loss_config.chi, float(loss_config.rle_weight), bool(loss_config.dlm)

  def train_step(state: step_lib.TrainState, batch: step_lib.Batch, rng: jax.Array
                 ) -> tuple[step_lib.TrainState, step_lib.Metrics]:
    dropout_rng = jax.random.fold_in(rng, state.step)
    images = step_lib.normalize_images(batch["image"])
    input_wh = (images.shape[2], images.shape[1])
    target_uv = rle.uv_from_xy(batch["keypoints"][..., :2].astype(jnp.float32), input_wh)
    target_weight = batch["target_weight"].astype(jnp.float32)

    def loss_fn(params):
      (heatmaps, aux), updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True,
          target_uv=target_uv, mutable=["batch_stats"], rngs={"dropout": dropout_rng})
      terms = rle.sadinet_terms(heatmaps, aux, batch["heatmaps"], target_weight, target_uv,
                                chi=chi, rle_weight=rle_weight)
      per_sample = terms["total"] if dlm else terms["h1"]
      labelled = (target_weight > 0).astype(jnp.float32)
      sigma = (aux["sigma_hat"].mean(axis=-1) * labelled).sum(-1) / jnp.maximum(labelled.sum(-1), 1)
      return per_sample.mean(), (per_sample, terms, sigma, updates["batch_stats"])

    grads, (per_sample, terms, sigma, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    new_state, streak = step_lib.apply_gradients(state, grads, batch_stats, tx)
    metrics = dict(
        loss_sum=per_sample.sum(),
        num_samples=jnp.asarray(per_sample.shape[0], jnp.float32),
        labelled_joints=(target_weight > 0).sum().astype(jnp.float32),
        grad_norm=optax.tree.norm(grads),
        nonfinite_streak=streak.astype(jnp.float32),
        data_fingerprint=(batch["image"].astype(jnp.float32).sum() + batch["heatmaps"].sum()
                          + batch["keypoints"].astype(jnp.float32).sum()),
        skipped_samples=(batch["skipped"].sum().astype(jnp.float32) if "skipped" in batch
                         else jnp.zeros((), jnp.float32)),
        h1_sum=terms["h1"].sum(), h2_sum=terms["h2"].sum(), rle_sum=terms["rle"].sum(),
        sigma_sum=sigma.sum(),
    )
    return new_state, metrics

  return train_step
