"""Bottom-up (DEKR / SAMKR) losses: keypoint and centre heatmaps, offsets, SWAHR's scale maps.

DEKR: Geng et al., arXiv:2104.02300 (v1), Sec. 3.3; equal to the official `HeatmapLoss`,
`OffsetsLoss` and `MultiLossFactory` (HRNet/DEKR @7a30313, `lib/core/loss.py`), factors from
its COCO and CrowdPose yamls (LOSS.HEATMAPS_LOSS_FACTOR 1.0, LOSS.OFFSETS_LOSS_FACTOR 0.03).
SWAHR: Luo et al., "Rethinking the Heatmap Regression for Bottom-up Human Pose Estimation",
CVPR 2021, arXiv:2012.15175, Sec. 3 (scale-adaptive SAHR and weight-adaptive WAHR); equal
to the official `HeatmapLoss` and
`ScaleLoss` as `MultiLossFactory` and `do_train` combine them (greatlog/SWAHR-HumanPose
@7555826, `lib/core/loss.py`, `lib/core/trainer.py`). SAMKR (Sec. III-C, IV-A) trains its
W32 model with SWAHR's heatmap loss and its W48 model with DEKR's; both with DEKR's offsets.

Every loss is one scalar for the whole (global) batch, as the official code computes it on
the batch DataParallel gathers: the offset loss is normalised by the batch's count of
positive weights, so it does not split into per-sample terms.

Symbols: B batch, h x w heatmap size, C heatmap channels (K keypoints + the centre, last),
K keypoints. Arrays are channels last, as `jaxpose.codecs.bottomup` writes the targets.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxpose.errors import UserError

# DEKR `OffsetsLoss.smooth_l1_loss`'s default: quadratic below 1/9 of a heatmap pixel.
OFFSET_SMOOTH_L1_BETA = 1.0 / 9.0
# WAHR's exponent gamma (`gt ** 0.01` in the official loss).
_SWAHR_GAMMA = 0.01
HEATMAP_LOSSES = ("dekr", "swahr")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How a bottom-up model learns (the config's `loss` block).

  heatmap_loss: "dekr" (weighted MSE) or "swahr" (scale- and weight-adaptive; the model
    must return `aux["heatmap_scales"]`, one scale map per heatmap channel).
  heatmap_factor, offset_factor: DEKR's LOSS.HEATMAPS_LOSS_FACTOR / OFFSETS_LOSS_FACTOR.
  scale_factor: weight of SWAHR's scale regulariser (1 in SWAHR, where it is unweighted).
  """
  heatmap_loss: str = "dekr"
  heatmap_factor: float = 1.0
  offset_factor: float = 0.03
  scale_factor: float = 1.0

  def __post_init__(self):
    if self.heatmap_loss not in HEATMAP_LOSSES:
      raise UserError(f"config key loss.heatmap_loss: unknown {self.heatmap_loss!r}; "
                      f"known: {list(HEATMAP_LOSSES)}")

  @classmethod
  def from_mapping(cls, values: "LossConfig | Mapping[str, Any]") -> "LossConfig":
    """A `LossConfig` from itself or from the config's `loss` block (unknown keys raise)."""
    if isinstance(values, LossConfig):
      return values
    values = dict(values)
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(values) - known):
      raise UserError(f"config key loss.{unknown[0]}: unknown; known: {sorted(known)}")
    return cls(**values)


def heatmap_loss(heatmaps_pred: jax.Array, heatmaps_target: jax.Array,
                 weights: jax.Array) -> jax.Array:
  """DEKR's heatmap loss: mean over B, h, w, C of (pred - target)^2 x weight.

  heatmaps_pred, heatmaps_target: [B, h, w, C] (centre channel included); weights: the
  codec's `heatmap_weights` [B, h, w, C] (1 near labelled joints, DEKR's background weight
  0.1 elsewhere, 0 in crowd / unlabelled regions). The official mean of means over equal
  axes is this plain mean.
  """
  squared = jnp.square(heatmaps_pred.astype(jnp.float32) - heatmaps_target)
  return jnp.mean(squared * weights)


def smooth_l1(difference: jax.Array, beta: float = OFFSET_SMOOTH_L1_BETA) -> jax.Array:
  """0.5 d^2 / beta for |d| < beta, else |d| - 0.5 beta (elementwise)."""
  distance = jnp.abs(difference)
  return jnp.where(distance < beta, 0.5 * jnp.square(distance) / beta, distance - 0.5 * beta)


def offset_loss(offsets_pred: jax.Array, offsets_target: jax.Array,
                weights: jax.Array) -> jax.Array:
  """DEKR's offset loss: sum of weight x smooth-L1 (beta 1/9) / number of positive weights.

  offsets_*: [B, h, w, 2K] (x, y per keypoint, heatmap pixels); weights: the codec's
  `offset_weights` [B, h, w, 2K] (1 / sqrt(person area) near each centre, else 0). The
  count runs over every channel (x and y count separately) of the whole batch, and is 1
  when nothing is positive (so the loss is 0 there), as `OffsetsLoss`.
  """
  per_element = smooth_l1(offsets_pred.astype(jnp.float32) - offsets_target) * weights
  num_positive = jnp.maximum(jnp.sum(weights > 0), 1).astype(jnp.float32)
  return jnp.sum(per_element) / num_positive


def scale_adaptive_heatmap_loss(heatmaps_pred: jax.Array, heatmaps_target: jax.Array,
                                weights: jax.Array, scales: jax.Array
                                ) -> tuple[jax.Array, jax.Array]:
  """SWAHR's scale-adaptive heatmap loss and its scale regulariser, batch means.

  SAHR's target t^(1 + s) in the official second-order Taylor form:
    scaled = t + t ln(t) s + 0.5 t ln(t)^2 s^2, ln taken as 0 where t = 0;
  WAHR's weight: w_a = |1 - p| t^0.01 + |p| (1 - t^0.01);
    heatmap loss = mean((p - scaled)^2 w_a x weight);
  SAHR's regulariser: scale loss = mean(s^2 x weight).
  The scales count only where the target is positive (`MultiLossFactory` multiplies them by
  `target > 0` before both terms), so they are learnt only inside the Gaussians.

  Args:
    heatmaps_pred, heatmaps_target: [B, h, w, C].
    weights: broadcastable to [B, h, w, C]: SWAHR's image mask [B, h, w, 1], or, inside
      DEKR, the per-channel `heatmap_weights` (SAMKR keeps DEKR's targets and masks).
    scales: [B, h, w, C], the network's scale maps (SWAHR's `conv_scale_layers` output).

  Returns:
    (heatmap loss, scale loss), scalars; SWAHR trains on their sum.
  """
  target = heatmaps_target.astype(jnp.float32)
  pred = heatmaps_pred.astype(jnp.float32)
  scales = scales.astype(jnp.float32) * (target > 0)
  log_target = jnp.log(jnp.where(target > 0, target, target + 1))
  scaled = target + target * log_target * scales + 0.5 * target * jnp.square(log_target * scales)
  target_gamma = target**_SWAHR_GAMMA
  adaptive = jnp.abs(1 - pred) * target_gamma + jnp.abs(pred) * (1 - target_gamma)
  weights = jnp.broadcast_to(weights, target.shape)
  return (jnp.mean(jnp.square(pred - scaled) * adaptive * weights),
          jnp.mean(jnp.square(scales) * weights))


def bottomup_losses(outputs: tuple[jax.Array, jax.Array], aux: Mapping[str, jax.Array],
                    batch: Mapping[str, jax.Array], config: LossConfig) -> dict[str, jax.Array]:
  """All terms for one batch: {"heatmap", "offset", "scale", "total"} (factors applied).

  outputs: the model's (heatmaps [B, h, w, K + 1], offsets [B, h, w, 2K]); aux: its aux
  dict (`heatmap_scales` [B, h, w, K + 1] for SWAHR); batch: the codec's targets
  `heatmaps`, `heatmap_weights`, `offsets`, `offset_weights`. "scale" is 0 for DEKR.
  """
  heatmaps, offsets = outputs
  if config.heatmap_loss == "swahr":
    if "heatmap_scales" not in aux:
      raise UserError("config key loss.heatmap_loss: 'swahr' needs a model with SWAHR's scale "
                      "head (aux['heatmap_scales']); this model has none, use 'dekr'")
    heat, scale = scale_adaptive_heatmap_loss(heatmaps, batch["heatmaps"],
                                              batch["heatmap_weights"], aux["heatmap_scales"])
  else:
    heat = heatmap_loss(heatmaps, batch["heatmaps"], batch["heatmap_weights"])
    scale = jnp.zeros((), jnp.float32)
  offset = offset_loss(offsets, batch["offsets"], batch["offset_weights"])
  terms = dict(heatmap=config.heatmap_factor * heat, offset=config.offset_factor * offset,
               scale=config.scale_factor * scale)
  return {**terms, "total": terms["heatmap"] + terms["offset"] + terms["scale"]}
