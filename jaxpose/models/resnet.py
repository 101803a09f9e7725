"""ResNet-18/34/50/101/152 backbone in the torchvision layout, NHWC.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385 (v1), Table 1 for the depths. The layout is torchvision's `resnet.py`
("ResNet v1.5": a Bottleneck strides on its 3x3 conv, not its first 1x1), which is also the
backbone of the official SimpleBaseline (`lib/models/pose_resnet.py` in
leoxiaobin/deep-high-resolution-net.pytorch @6f69e46):

  stem    7x7/2 conv (64) + BN + ReLU + 3x3/2 max-pool (padding 1): [B, H, W, 3] -> H/4
  layer1  blocks at 64 planes, stride 1                   -> [B, H/4, W/4, 64 * e]
  layer2  128 planes, the first block strides 2           -> H/8, 128 * e
  layer3  256 planes                                      -> H/16, 256 * e
  layer4  512 planes                                      -> H/32, 512 * e
  (e = 1 for BasicBlock depths 18/34, 4 for Bottleneck depths 50/101/152)

Layer names map one to one onto the PyTorch keys of torchvision and pose_resnet
(`jaxpose/models/torch_import.py`):

  flax                                   torch
  conv1, bn1                             conv1, bn1
  layer{s}_{n}/conv{1,2,3}, bn{1,2,3}    layer{s}.{n}.conv{1,2,3}, bn{1,2,3}
  layer{s}_{n}/downsample_conv, _bn      layer{s}.{n}.downsample.0, downsample.1
"""

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpose.models import fast_grad
from jaxpose.models import layers

# torchvision `ResNet._init_weights`: kaiming normal, fan_out, ReLU gain (std sqrt(2 / fan_out),
# untruncated); BN scale 1 / bias 0 are the flax defaults.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

_STEM_CHANNELS = 64
_STAGE_PLANES = (64, 128, 256, 512)


class ResNetLayout(NamedTuple):
  """Block type and blocks per stage of one depth (arXiv:1512.03385v1 Table 1)."""
  bottleneck: bool
  stage_sizes: tuple[int, int, int, int]


LAYOUTS = {
    18: ResNetLayout(bottleneck=False, stage_sizes=(2, 2, 2, 2)),
    34: ResNetLayout(bottleneck=False, stage_sizes=(3, 4, 6, 3)),
    50: ResNetLayout(bottleneck=True, stage_sizes=(3, 4, 6, 3)),
    101: ResNetLayout(bottleneck=True, stage_sizes=(3, 4, 23, 3)),
    152: ResNetLayout(bottleneck=True, stage_sizes=(3, 8, 36, 3)),
}


def _conv(features: int, kernel_size: int, dtype: Any, name: str, *, stride: int = 1,
          dilation: int = 1) -> nn.Conv:
  return layers.conv2d(features, kernel_size, stride=stride, dilation=dilation,
                       kernel_init=_conv_init, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN, identity or projection shortcut: [B, H, W, C] -> [B, H/s, W/s, planes].

  The projection (`downsample_conv`, `downsample_bn`: 1x1 stride-s conv-BN) is used when the
  stride or the width changes, as in torchvision `_make_layer`.
  """
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = _conv(self.planes, 3, self.dtype, "conv1", stride=self.stride)(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.planes, 3, self.dtype, "conv2")(y)
    y = layers.batch_norm(train, self.dtype, "bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = _conv(self.planes, 1, self.dtype, "downsample_conv", stride=self.stride)(x)
      x = layers.batch_norm(train, self.dtype, "downsample_bn")(x)
    return nn.relu(y + x)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride s, dilation d) -> 1x1 conv-BN: [B, H, W, C] -> [B, H/s, W/s, 4 planes].

  The first block of a dilated stage uses the previous stage's dilation on its 3x3 conv
  (`dilation` is set by the caller, as torchvision's `previous_dilation`).
  """
  planes: int
  stride: int = 1
  dilation: int = 1
  dtype: Any = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out_channels = self.planes * self.expansion
    y = _conv(self.planes, 1, self.dtype, "conv1")(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.planes, 3, self.dtype, "conv2", stride=self.stride, dilation=self.dilation)(y)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn2")(y))
    y = _conv(out_channels, 1, self.dtype, "conv3")(y)
    y = layers.batch_norm(train, self.dtype, "bn3")(y)
    if self.stride != 1 or x.shape[-1] != out_channels:
      x = _conv(out_channels, 1, self.dtype, "downsample_conv", stride=self.stride)(x)
      x = layers.batch_norm(train, self.dtype, "downsample_bn")(x)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ResNet backbone without the classifier: images [B, H, W, 3] -> [B, H/32, W/32, C].

  C = 512 (depth 18, 34) or 2048 (50, 101, 152). Returns the layer4 features in `dtype`.
  `replace_stride_with_dilation[i]` replaces the stride 2 of layer{i+2} by dilation, as
  torchvision's argument of that name (output stride 16 or 8); Bottleneck depths only.
  """
  depth: int
  replace_stride_with_dilation: Sequence[bool] = (False, False, False)
  remat: bool = False  # recompute each residual block in the backward pass (`layers.apply_block`)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
    if self.depth not in LAYOUTS:
      raise ValueError(f"ResNet depth must be one of {sorted(LAYOUTS)}, got {self.depth}")
    layout = LAYOUTS[self.depth]
    if len(self.replace_stride_with_dilation) != 3:
      raise ValueError("replace_stride_with_dilation needs one flag for each of layer2-4, got "
                       f"{self.replace_stride_with_dilation}")
    if any(self.replace_stride_with_dilation) and not layout.bottleneck:
      # torchvision raises too: its BasicBlock has no dilation.
      raise ValueError(f"dilation needs a Bottleneck ResNet (50/101/152), got depth {self.depth}")

    x = images.astype(self.dtype)
    x = _conv(_STEM_CHANNELS, 7, self.dtype, "conv1", stride=2)(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(x))
    x = fast_grad.max_pool(x, 3, 2, ((1, 1), (1, 1)))

    dilation = 1
    for stage, (planes, num_blocks) in enumerate(zip(_STAGE_PLANES, layout.stage_sizes)):
      stride = 1 if stage == 0 else 2
      previous_dilation = dilation
      if stage > 0 and self.replace_stride_with_dilation[stage - 1]:
        dilation, stride = dilation * stride, 1
      for n in range(num_blocks):
        name = f"layer{stage + 1}_{n}"
        block_stride = stride if n == 0 else 1
        if layout.bottleneck:
          block_dilation = previous_dilation if n == 0 else dilation
          block = Bottleneck(planes, block_stride, block_dilation, dtype=self.dtype, name=name)
        else:
          block = BasicBlock(planes, block_stride, dtype=self.dtype, name=name)
        x = layers.apply_block(block, x, train=train, remat=self.remat)
    return x
