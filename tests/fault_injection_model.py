"""A three-layer top-down model for the tests that restart or break training many times.

The fault tests exercise the trainer, the optimiser and the checkpoints, not a network:
ResNet-18's 11 M parameters would make every restart trace for seconds and write 135 MB
per checkpoint (params and Adam's two moments). This model has the same interface (params,
BatchNorm statistics, heatmaps at 1/4 of the input) at a few thousand parameters.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

NAME = "fault_injection_tiny"


class TinyPoseNet(nn.Module):
  """Two stride-2 conv-BN-ReLU layers and a 1x1 conv: images [B, H, W, 3] -> heatmaps
  [B, H/4, W/4, K] float32, aux {}. The width is `num_deconv_filters[0]`, so the smoke
  config's `model.options` apply unchanged."""
  num_keypoints: int
  num_deconv_filters: Sequence[int] = (16,)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
    x = images.astype(self.dtype)
    for i in range(2):
      x = nn.Conv(self.num_deconv_filters[0], (3, 3), strides=2, use_bias=False,
                  dtype=self.dtype, name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                       name=f"bn{i}")(x)
      x = nn.relu(x)
    heatmaps = nn.Conv(self.num_keypoints, (1, 1), dtype=self.dtype, name="final_layer")(x)
    return heatmaps.astype(jnp.float32), {}


def register(models_module) -> None:
  """Makes `--config.model.name=fault_injection_tiny` a known top-down model."""
  models_module.MODELS[NAME] = TinyPoseNet
  models_module.KINDS[NAME] = "topdown"
