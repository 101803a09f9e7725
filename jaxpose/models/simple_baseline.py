"""SimpleBaseline: a ResNet followed by deconvolutions, for top-down pose estimation, NHWC.

Xiao, Wu, Wei, "Simple Baselines for Human Pose Estimation and Tracking", ECCV 2018,
arXiv:1804.06208 (v2), Sec. 2 and Fig. 1(c). Ported from the official `PoseResNet`
(leoxiaobin/deep-high-resolution-net.pytorch @6f69e46, `lib/models/pose_resnet.py`,
configs `experiments/coco/resnet/res{50,101,152}_*.yaml`):

  backbone  ResNet-{18,...,152}: [B, H, W, 3] -> [B, H/32, W/32, C]   (`resnet.ResNet`)
  deconv    `num_deconv_layers` x (stride-2 transposed conv, no bias -> BN -> ReLU)
            -> [B, H/4, W/4, num_deconv_filters[-1]] for the default 3 layers
  head      1x1 conv with bias (`FINAL_CONV_KERNEL: 1`) -> K heatmaps

Layer names and their official PyTorch keys (`jaxpose/models/torch_import.py`):

  flax                   torch
  backbone/...           (top level; see `jaxpose/models/resnet.py`)
  deconv{i}              deconv_layers.{3 i}     (ConvTranspose2d)
  deconv{i}_bn           deconv_layers.{3 i + 1} (BatchNorm2d)
  final_layer            final_layer
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpose.models import layers
from jaxpose.models import resnet

# Official `init_weights`: deconv and final conv weights ~ N(0, 0.001^2), final bias 0,
# BN scale 1 / bias 0 (the flax defaults).
_head_init = nn.initializers.normal(stddev=0.001)


class SimpleBaseline(nn.Module):
  """Top-down SimpleBaseline: images [B, H, W, 3] -> heatmaps [B, H/4, W/4, K].

  (H/4 for the default 3 deconv layers; H * 2**n / 32 for n layers.)

  `images` are normalised floats; H and W must be multiples of 32 (the official network
  would silently return a map of the wrong size, e.g. 16x16 for a 64x48 input).
  Returns (heatmaps float32, aux) with aux["backbone"] the ResNet features
  [B, H/32, W/32, C] in `dtype`.

  Each deconvolution is `layers.Deconv2x` (= torch ConvTranspose2d, stride 2, kernel
  `deconv_kernel` in {2, 3, 4} with the official padding rules).
  """
  depth: int
  num_keypoints: int
  num_deconv_layers: int = 3
  num_deconv_filters: Sequence[int] = (256, 256, 256)
  deconv_kernel: int = 4
  remat: bool = False  # the backbone's blocks recomputed in the backward pass
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    if len(self.num_deconv_filters) != self.num_deconv_layers:
      raise ValueError(f"num_deconv_filters {tuple(self.num_deconv_filters)} needs one entry per "
                       f"deconv layer (num_deconv_layers={self.num_deconv_layers})")
    height, width = images.shape[1:3]
    if height % 32 or width % 32:
      raise ValueError(f"SimpleBaseline needs H and W divisible by 32, got images of shape "
                       f"{images.shape} (NHWC); e.g. 256x192, 384x288, 64x64, 96x64.")

    features = resnet.ResNet(self.depth, remat=self.remat, dtype=self.dtype,
                             name="backbone")(images, train=train)
    heatmaps = deconv_head(features, self.num_deconv_filters, self.deconv_kernel,
                           self.num_keypoints, train=train, dtype=self.dtype)
    return heatmaps.astype(jnp.float32), {"backbone": features}


def deconv_head(x: jax.Array, num_deconv_filters: Sequence[int], deconv_kernel: int,
                num_outputs: int, *, train: bool, dtype: Any) -> jax.Array:
  """SimpleBaseline's head: per entry of `num_deconv_filters` a stride-2 `Deconv2x` + BN +
  ReLU, then a 1x1 conv with bias to `num_outputs` maps; [B, h, w, C] -> [B, h * 2**n,
  w * 2**n, num_outputs] in `dtype`.

  Call it inside a compact `__call__`: the layers join the calling module under the names
  `deconv{i}`, `deconv{i}_bn`, `final_layer`, so the official `deconv_layers.*` /
  `final_layer.*` keys map onto every model that uses it (SimpleBaseline, HSR-MSNet, SAN).
  """
  for i, filters in enumerate(num_deconv_filters):
    x = layers.Deconv2x(filters, deconv_kernel, kernel_init=_head_init, dtype=dtype,
                        name=f"deconv{i}")(x)
    x = nn.relu(layers.batch_norm(train, dtype, f"deconv{i}_bn")(x))
  return layers.conv2d(num_outputs, 1, use_bias=True, kernel_init=_head_init, dtype=dtype,
                       name="final_layer")(x)


# The official COCO/MPII configs (`experiments/coco/resnet/res{50,101,152}_*_d256x3_*.yaml`:
# 3 x 256 filters, kernel 4, no deconv bias) are the defaults; 18 and 34 are the smaller
# torchvision depths under the same head.
simple_baseline_r18 = functools.partial(SimpleBaseline, depth=18)
simple_baseline_r34 = functools.partial(SimpleBaseline, depth=34)
simple_baseline_r50 = functools.partial(SimpleBaseline, depth=50)
simple_baseline_r101 = functools.partial(SimpleBaseline, depth=101)
simple_baseline_r152 = functools.partial(SimpleBaseline, depth=152)
