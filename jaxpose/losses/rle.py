"""The RLE residual log-likelihood loss and SADI-Net's combined loss, per sample.

`rle_per_sample` is the official `RLELoss` (Jeff-sjtu/res-loglikelihood-regression @203dc31,
`rlepose/models/criterion.py`, with `nf_loss` from `rlepose/models/regression_nf.py`
`RegressFlow.forward`; Li et al., arXiv:2107.11291v1 Sec. 3.3); SADI-Net's eq. 4 is this
loss. `sadinet_terms` / `sadinet_per_sample` are SADI-Net's eq. 6-8 (Gao et al., IEEE
Access 2023, Sec. III-E) with the Table V alternatives (`CHI_MODES`).

Coordinates: RLE's normalised image coordinates uv = xy_input / input_wh - 0.5 (x before
y; the official `_integral_target_generator`), so the input crop spans [-0.5, 0.5).
Symbols: B batch, S stacks, K keypoints, h x w heatmap size.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp

# The official `RLELoss.amp`: the Gaussian normaliser inside its `logQ` term.
_AMP = 1.0 / math.sqrt(2.0 * math.pi)

# How eq. 8's chi mixes the H1 and H2 heatmap losses (SADI-Net Table V, Sec. IV-E3):
#   "sigma":         (1 - sigma_hat) L(H1) + sigma_hat L(H2)   (eq. 8, chi = sigma, default)
#   "sum":           L(H1) + L(H2)                             (Table V, first row)
#   "sigma_swapped": sigma_hat L(H1) + (1 - sigma_hat) L(H2)   (Sec. IV-E3, unstable)
CHI_MODES = ("sigma", "sum", "sigma_swapped")


def uv_from_xy(keypoints_xy: jax.Array, input_wh: Sequence[int]) -> jax.Array:
  """[..., 2] input-pixel points -> RLE's normalised uv (x / w - 0.5, y / h - 0.5)."""
  return keypoints_xy / jnp.asarray(input_wh, jnp.float32) - 0.5


def _per_coordinate_weight(target_weight: jax.Array) -> jax.Array:
  """[B, K] (jaxpose) or [B, K, 2] (official `target_uv_weight`) -> [B, K, 2] float32."""
  target_weight = target_weight.astype(jnp.float32)
  return target_weight if target_weight.ndim == 3 else jnp.repeat(target_weight[..., None], 2, -1)


def rle_per_sample(mu_hat: jax.Array, sigma_hat: jax.Array, log_phi: jax.Array,
                   target_uv: jax.Array, target_weight: jax.Array) -> jax.Array:
  """The official RLE loss of each sample: [B]; its batch mean is `RLELoss()(output, labels)`.

  mu_hat, sigma_hat, target_uv: [B, K, 2] (normalised uv); log_phi: [B, K], the flow's log
  density at bar_mu = (mu_hat - target_uv) / sigma_hat (`RegressFlowHead`); target_weight:
  [B, K] or [B, K, 2]. Per joint and coordinate c the official code sums
    nf_loss   = (log sigma_c - log_phi) * w_x
    Q_logprob = (log(sigma_c sqrt(2 pi)) + |target_c - mu_c| / (sqrt(2) sigma_c + 1e-9)) * w_c
  (log_phi is broadcast over both coordinates, so it enters twice, as officially), then
  `loss.sum() / len(loss)`: the sum over joints and coordinates divided by B. When every
  weight is 0 the official `loss.sum()` branch gives 0, as the mean of these zeros does.
  """
  weight = _per_coordinate_weight(target_weight)
  sigma_hat = sigma_hat.astype(jnp.float32)
  nf_loss = (jnp.log(sigma_hat) - log_phi[..., None]) * weight[..., :1]
  log_q = (jnp.log(sigma_hat / _AMP)
           + jnp.abs(target_uv - mu_hat) / (math.sqrt(2.0) * sigma_hat + 1e-9))
  return (nf_loss + log_q * weight).sum(axis=(1, 2))


def joints_mse_per_joint(heatmaps: jax.Array, target_heatmaps: jax.Array,
                         target_weight: jax.Array) -> jax.Array:
  """SimpleBaseline's `JointsMSELoss` (use_target_weight) per sample and joint: [B, K].

  heatmaps: [B, h, w, K] or [B, S, h, w, K] (every stack against the same target, averaged:
  intermediate supervision); target_heatmaps: [B, h, w, K]; target_weight: [B, K].
  0.5 * mean over (stacks and) pixels of (w_k (pred - target))^2; the mean over K equals
  `jaxpose.step.joints_mse_per_sample`.
  """
  if heatmaps.ndim == 5:
    target_heatmaps = target_heatmaps[:, None]
  weight = target_weight.astype(jnp.float32).reshape(
      target_weight.shape[0], *[1] * (heatmaps.ndim - 2), -1)
  squared = jnp.square((heatmaps.astype(jnp.float32) - target_heatmaps) * weight)
  return 0.5 * squared.mean(axis=tuple(range(1, heatmaps.ndim - 1)))


def sadinet_terms(heatmaps: jax.Array, aux: dict[str, jax.Array], target_heatmaps: jax.Array,
                  target_weight: jax.Array, target_uv: jax.Array, *, chi: str = "sigma",
                  rle_weight: float = 1.0) -> dict[str, jax.Array]:
  """SADI-Net's loss terms per sample, each [B]; "total" is what the trainer averages.

  heatmaps: H1, [B, S, h, w, K] (`SADINet` output); aux: the model's aux dict with
  "h2" [B, h, w, K], "mu_hat", "sigma_hat" [B, K, 2] and "log_phi" [B, K] (the model must
  be called with `target_uv`); target_heatmaps [B, h, w, K], target_weight [B, K],
  target_uv [B, K, 2] (`uv_from_xy`).

  total = mean_k [(1 - chi_k) L_k(H1) + chi_k L_k(H2)] + rle_weight * L_rle   (eq. 8, 4)
  with L_k the joint's heatmap MSE and chi_k the joint's sigma_hat averaged over x and y
  (the official RLE confidence is 1 - that mean), taken as a constant (stop-gradient): chi
  weighs the two heatmap losses, it is not a way for the network to lower the loss by moving
  sigma. L_rle (eq. 4) trains the regression head and the flow, as in RLE; the MSE on H2
  also reaches them through the rendering. `chi` picks a Table V variant (`CHI_MODES`).
  Also returned: "h1", "h2" (unmixed means over joints), "rle", "heatmaps" (the mixed sum).
  """
  if chi not in CHI_MODES:
    raise ValueError(f"unknown chi mode {chi!r}; valid: {', '.join(CHI_MODES)}")
  if "log_phi" not in aux:
    raise ValueError("aux has no 'log_phi': call the model with target_uv=... to get the flow "
                     "density at the ground truth (the RLE loss needs it)")
  loss_h1 = joints_mse_per_joint(heatmaps, target_heatmaps, target_weight)
  loss_h2 = joints_mse_per_joint(aux["h2"], target_heatmaps, target_weight)
  sigma = jax.lax.stop_gradient(aux["sigma_hat"].astype(jnp.float32).mean(axis=-1))  # [B, K]
  if chi == "sigma":
    mixed = (1.0 - sigma) * loss_h1 + sigma * loss_h2
  elif chi == "sigma_swapped":
    mixed = sigma * loss_h1 + (1.0 - sigma) * loss_h2
  else:
    mixed = loss_h1 + loss_h2
  rle = rle_per_sample(aux["mu_hat"], aux["sigma_hat"], aux["log_phi"], target_uv, target_weight)
  heatmap_loss = mixed.mean(axis=-1)
  return {"total": heatmap_loss + rle_weight * rle, "heatmaps": heatmap_loss,
          "h1": loss_h1.mean(axis=-1), "h2": loss_h2.mean(axis=-1), "rle": rle}


def sadinet_per_sample(heatmaps: jax.Array, aux: dict[str, jax.Array],
                       target_heatmaps: jax.Array, target_weight: jax.Array,
                       target_uv: jax.Array, *, chi: str = "sigma",
                       rle_weight: float = 1.0) -> jax.Array:
  """`sadinet_terms(...)["total"]`: SADI-Net's loss per sample, [B]."""
  return sadinet_terms(heatmaps, aux, target_heatmaps, target_weight, target_uv, chi=chi,
                       rle_weight=rle_weight)["total"]
