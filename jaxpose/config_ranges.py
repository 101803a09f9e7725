"""The allowed values of a config's numeric keys, one row per key (`config_check` reads it).

A key of any kind's schema (`configs.common.schema(kind)`) with a range gets a row; keys
without one accept any finite value. Each kind's config holds only some of these keys.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Range:
  """Allowed values of a number: low <= x (low < x if low_open) and x <= high."""
  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False

  def __contains__(self, value) -> bool:
    above = value > self.low if self.low_open else value >= self.low
    return above and value <= self.high

  def __str__(self) -> str:
    if self.high == math.inf:
      return f"{'>' if self.low_open else '>='} {self.low:g}"
    return f"in [{self.low:g}, {self.high:g}]"


POSITIVE, AT_LEAST_1, NON_NEGATIVE, PROBABILITY = (
    Range(0, low_open=True), Range(1), Range(0), Range(0, 1))
# Ranges of the numeric keys of `common.schema()` that have one (others: any finite value).
RANGES = {
    "seed": NON_NEGATIVE,
    "data.synthetic.num_train_images": AT_LEAST_1,
    "data.synthetic.num_val_images": AT_LEAST_1,
    "data.synthetic.image_size": AT_LEAST_1,
    "data.synthetic.seed": NON_NEGATIVE,
    "data.weight": POSITIVE,  # `data.mixture.<name>.weight` likewise (`config_check`)
    "input.size_hw": AT_LEAST_1,
    "input.heatmap_sigma": POSITIVE,
    "input.batch_size": AT_LEAST_1,
    "input.num_workers": NON_NEGATIVE,
    "input.read_threads": AT_LEAST_1,
    "input.prefetch_batches": NON_NEGATIVE,
    "input.device_prefetch": NON_NEGATIVE,
    "augment.scale_factor": NON_NEGATIVE,
    "augment.rotation_factor": NON_NEGATIVE,
    "augment.rotation_prob": PROBABILITY,
    "augment.half_body_prob": PROBABILITY,
    "augment.half_body_min_joints": NON_NEGATIVE,
    "augment.box_padding": POSITIVE,
    "optim.base_lr": POSITIVE,
    "optim.base_batch_size": AT_LEAST_1,
    "optim.decay_factor": POSITIVE,
    "optim.warmup_steps": NON_NEGATIVE,
    "optim.max_consecutive_nonfinite_updates": AT_LEAST_1,
    "train.total_steps": AT_LEAST_1,
    "train.total_epochs": POSITIVE,
    "train.log_every_steps": AT_LEAST_1,
    "train.checkpoint_every_steps": AT_LEAST_1,
    "train.keep_checkpoints": AT_LEAST_1,
    "train.eval_every_steps": NON_NEGATIVE,
    "eval.batch_size": AT_LEAST_1,
    "eval.keypoint_score_threshold": PROBABILITY,
    "eval.oks_nms_threshold": PROBABILITY,
    "eval.num_visualize": NON_NEGATIVE,
    "eval.box_score_threshold": PROBABILITY,
    "eval.multi_scale": POSITIVE,
    # Bottom-up blocks (`common.bottomup_*`).
    "augment.max_rotation": NON_NEGATIVE,
    "augment.min_scale": POSITIVE,
    "augment.max_scale": POSITIVE,
    "augment.max_translate": NON_NEGATIVE,
    "augment.flip_probability": PROBABILITY,
    "targets.sigma": POSITIVE,
    "targets.center_sigma": POSITIVE,
    "targets.background_weight": NON_NEGATIVE,
    "targets.offset_radius": NON_NEGATIVE,
    "loss.heatmap_factor": NON_NEGATIVE,
    "loss.offset_factor": NON_NEGATIVE,
    "loss.scale_factor": NON_NEGATIVE,
    "eval.input_size": AT_LEAST_1,
    "eval.canvas_size": AT_LEAST_1,
    "eval.max_people": AT_LEAST_1,
    "eval.center_threshold": PROBABILITY,
    "eval.nms_distance": NON_NEGATIVE,
    "eval.nms_min_joints": NON_NEGATIVE,
    # Integral (SAN) blocks (`common.integral_*`).
    "augment.translate_factor": NON_NEGATIVE,
    "data.protocol": Range(1, 2),
    # topdown_rle (SADI-Net) `loss` block (`common.sadinet_loss`).
    "loss.rle_weight": NON_NEGATIVE,
}
