"""The "integral_2d" family (SAN on MPII / COCO): top-down person crops, soft-argmax L1.

SAN (Applied Sciences 11(4):1826, 2021) Sec. 3.4 and 4.3 trains its 2D results by integral
regression, as integral-human-pose (Sun et al., arXiv:1711.08229) does: the L1 loss on the
soft-argmax coordinates aux["coords"] [B, K, 2] (normalised as `codecs.integral` documents).

Training: the top-down pipeline (`pipeline.train_dataset`: the same person crops and
augmentation as every top-down model) keeps the joints in input-crop pixels (`TRAIN_KEYS`);
`EncodeIntegralTargets` turns each batch's `keypoints` into the regression targets with
`codecs.integral.encode` (x / w - 0.5, y / h - 0.5; weight 1 on x and y of a labelled
joint), and the step is the integral family's (`integral_step.make_train_step`:
integral-human-pose's `L1JointLocationLoss`, sum over joints and coordinates / B). A joint
that augmentation moves out of the crop keeps its weight, as integral-human-pose's
`get_single_patch_sample` keeps `joints_vis` (HRNet's heatmap codec would drop it); a
sample whose image could not be read (`skipped`) gets weight 0.

Evaluation: `evaluation.topdown` with `make_predict_step` in place of the heatmap argmax,
so crops, flip test, the inverse affine, PCKh and OKS AP are the top-down ones.
"""

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxpose import integral_step
from jaxpose.codecs import integral
from jaxpose.data import pipeline

# What the top-down pipeline keeps of each sample: no heatmaps, the joints in crop pixels.
TRAIN_KEYS = ("image", "keypoints", "skipped")


@dataclasses.dataclass(frozen=True)
class EncodeIntegralTargets(grain.transforms.Map):
  """A batch's crop-pixel `keypoints` [B, K, 3] (x, y, labelled) and `skipped` [B] ->
  `coords_target`, `target_weight` [B, K, 2] float32 (`integral.encode`, x and y only; a
  skipped sample's weights 0); `image` and `skipped` pass through, `keypoints` is dropped."""
  input_wh: tuple[int, int]

  def map(self, batch: dict) -> dict:
    encoded = [integral.encode(keypoints[:, :2], keypoints[:, 2], self.input_wh)
               for keypoints in batch["keypoints"]]
    targets = np.stack([target for target, _ in encoded])
    weights = np.stack([weight for _, weight in encoded])
    weights *= (batch["skipped"] == 0).astype(np.float32)[:, None, None]
    return dict(image=batch["image"], coords_target=targets, target_weight=weights,
                skipped=batch["skipped"])


def train_dataset(config: ml_collections.ConfigDict, source, local_batch_size: int
                  ) -> grain.IterDataset:
  """`pipeline.train_dataset` (mixtures included) with integral targets: batches of `image`
  uint8 [B, H, W, 3], `coords_target` and `target_weight` [B, K, 2], `skipped` [B]."""
  input_wh, _ = pipeline.input_and_heatmap_wh(config)
  batches = pipeline.train_dataset(config, source, local_batch_size, keys=TRAIN_KEYS)
  return batches.map(EncodeIntegralTargets(input_wh))


def make_predict_step(model: nn.Module, input_wh: tuple[int, int], heatmap_wh: tuple[int, int],
                      flip_index: Sequence[int] | np.ndarray | None
                      ) -> Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]:
  """`predict_step(variables, images_uint8) -> (xy, scores)` with `step.make_predict_step`'s
  contract, for `evaluation.topdown`.

  xy [B, K, 2]: the soft-argmax coordinates in heatmap pixels of `heatmap_wh` (input pixels
  x heatmap_wh / input_wh, the frame `heatmap.heatmap_to_image_xy` maps back to the image);
  with `flip_index`, averaged with the mirrored crop's prediction mirrored back in input
  pixels (integral-human-pose `validNet`: x -> w - 1 - x). scores [B, K]: 1, as
  integral-human-pose's `get_joint_location_result` (the coordinates carry no confidence).
  """
  predict_input_xy = integral_step.make_predict_step(model, input_wh, flip_index)
  to_heatmap = np.asarray(heatmap_wh, np.float32) / np.asarray(input_wh, np.float32)

  def predict_step(variables, images_uint8: jax.Array) -> tuple[jax.Array, jax.Array]:
    xy = predict_input_xy(variables, images_uint8)[..., :2] * to_heatmap
    return xy, jnp.ones(xy.shape[:2], jnp.float32)

  return predict_step
