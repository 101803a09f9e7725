"""Res2Net: multi-scale residual blocks inside a ResNet-50/101 layout, NHWC.

Gao, Cheng, Zhao, Zhang, Yang, Torr, "Res2Net: A New Multi-scale Backbone Architecture",
TPAMI 2019, arXiv:1904.01169 (v1), Sec. 3.1, Fig. 2 and Eq. (1). Ported layer for layer
from the official `res2net.py` (Res2Net/Res2Net-PretrainedModels @219c8c6, `Bottle2neck`,
`Res2Net`, the `res2net50_26w_4s`-style constructors):

  stem     7x7/2 conv (64) + BN + ReLU + 3x3/2 max-pool (padding 1): [B, H, W, 3] -> H/4
  layer1-4 blocks at 64, 128, 256, 512 planes; the first block of layer2-4 strides 2
           -> [B, H/32, W/32, 2048] after layer4 (stage s: H / 2**(s+1), 256 * 2**(s-1))
  head     global average pool + fc to `num_classes` (ImageNet: 1000)

`Bottle2neck` (Eq. 1): a 1x1 conv-BN-ReLU to `width * scale` channels, with
width = floor(planes * base_width / 64), split into `scale` groups x_1..x_s of `width`
channels; y_i = ReLU(BN(3x3 conv(x_i + y_{i-1}))) for i < s (no y_{i-1} term for i = 1)
and y_s = x_s (Eq. 1 passes the first split through and convolves the rest; the official
code, and so this port, passes the last); the y_i are concatenated, 1x1 conv-BN to
4 * planes, plus the shortcut, ReLU. The first block of every layer (official stype
'stage', layer1 included) differs: its 3x3 convs carry the layer's stride and see only
their own split (no y_{i-1} term), its last split is a 3x3 average pool with that stride
and padding 1 (torch `AvgPool2d` keeps count_include_pad=True by default: border windows
divide by 9, padded zeros included), and its shortcut is a 1x1 conv-BN with the stride
(`downsample`). With scale 1 the block is a plain bottleneck whose one 3x3 conv sees the
whole width.

Layer names map one to one onto the official keys (`jaxpose/models/res2net_torch_import.py`):

  flax                                     torch
  conv1, bn1, fc                           conv1, bn1, fc
  layer{s}_{n}/conv1, bn1, conv3, bn3      layer{s}.{n}.conv1, bn1, conv3, bn3
  layer{s}_{n}/convs_{i}, bns_{i}          layer{s}.{n}.convs.{i}, bns.{i}
  layer{s}_{n}/downsample_conv, _bn        layer{s}.{n}.downsample.0, downsample.1
"""

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose.models import fast_grad
from jaxpose.models import layers

# Official init: every conv kaiming normal, fan_out, ReLU gain (std sqrt(2 / fan_out)); BN
# scale 1 / bias 0 (the flax defaults). The fc keeps torch's Linear default:
# kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_fc_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

_STEM_CHANNELS = 64
_STAGE_PLANES = (64, 128, 256, 512)
_EXPANSION = 4


def _conv(features: int, kernel_size: int, dtype: Any, name: str, *,
          stride: int = 1) -> layers.Conv2d:
  return layers.conv2d(features, kernel_size, stride=stride, kernel_init=_conv_init,
                       dtype=dtype, name=name)


def _avg_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """torch `AvgPool2d(3, stride, padding=1)`: zero padding counted, every window / 9."""
  return nn.avg_pool(x, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                     count_include_pad=True)


class Bottle2neck(nn.Module):
  """Res2Net bottleneck (Eq. 1); [B, H, W, C] -> [B, H/stride, W/stride, 4 * planes].

  `first_in_stage` is the official stype 'stage' (see the module docstring): parallel
  splits, the stride on every 3x3 conv and on the average-pooled last split, and a 1x1
  conv-BN shortcut. Otherwise splits are hierarchical and the shortcut is the identity.
  """
  planes: int
  stride: int = 1
  base_width: int = 26
  scale: int = 4
  first_in_stage: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not self.first_in_stage and (self.stride != 1 or x.shape[-1] != self.planes * _EXPANSION):
      raise ValueError(f"a block that is not first in its stage keeps its input: got stride "
                       f"{self.stride}, {x.shape[-1]} -> {self.planes * _EXPANSION} channels")
    width = int(math.floor(self.planes * (self.base_width / 64.0)))
    num_convs = 1 if self.scale == 1 else self.scale - 1
    y = _conv(width * self.scale, 1, self.dtype, "conv1")(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(y))

    splits = jnp.split(y, self.scale, axis=-1)
    outputs = []
    for i in range(num_convs):
      split = splits[i] if i == 0 or self.first_in_stage else outputs[-1] + splits[i]
      split = _conv(width, 3, self.dtype, f"convs_{i}", stride=self.stride)(split)
      outputs.append(nn.relu(layers.batch_norm(train, self.dtype, f"bns_{i}")(split)))
    if self.scale > 1:
      last = splits[num_convs]
      outputs.append(_avg_pool_3x3(last, self.stride) if self.first_in_stage else last)
    y = jnp.concatenate(outputs, axis=-1)
    y = _conv(self.planes * _EXPANSION, 1, self.dtype, "conv3")(y)
    y = layers.batch_norm(train, self.dtype, "bn3")(y)

    if self.first_in_stage and (self.stride != 1 or x.shape[-1] != self.planes * _EXPANSION):
      x = _conv(self.planes * _EXPANSION, 1, self.dtype, "downsample_conv", stride=self.stride)(x)
      x = layers.batch_norm(train, self.dtype, "downsample_bn")(x)
    return nn.relu(y + x)


def _fc_bias_init(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


class Res2Net(nn.Module):
  """Res2Net classifier or backbone: images [B, H, W, 3] -> (outputs, aux).

  outputs: logits [B, num_classes] float32; with `num_classes=None` (no fc layer) the
  globally average-pooled layer4 features [B, 2048] float32 instead.
  aux["stages"]: the outputs of layer1-4, [B, H / 2**(s+1), W / 2**(s+1), 256 * 2**(s-1)]
  for s = 1..4, in `dtype` (the multi-scale features a pose head builds on).
  H and W need not be multiples of 32: every stride-2 step rounds up, as in torch.
  """
  stage_sizes: Sequence[int]
  base_width: int = 26
  scale: int = 4
  num_classes: int | None = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool
               ) -> tuple[jax.Array, dict[str, list[jax.Array]]]:
    if len(self.stage_sizes) != 4 or min(self.stage_sizes) < 1:
      raise ValueError(f"stage_sizes needs 4 positive block counts, got {self.stage_sizes}")
    if self.scale < 1:
      raise ValueError(f"scale must be >= 1, got {self.scale}")
    x = images.astype(self.dtype)
    x = _conv(_STEM_CHANNELS, 7, self.dtype, "conv1", stride=2)(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(x))
    x = fast_grad.max_pool(x, 3, 2, ((1, 1), (1, 1)))

    stages = []
    for stage, (planes, num_blocks) in enumerate(zip(_STAGE_PLANES, self.stage_sizes)):
      for n in range(num_blocks):
        stride = 2 if stage > 0 and n == 0 else 1
        x = Bottle2neck(planes, stride, self.base_width, self.scale, first_in_stage=n == 0,
                        dtype=self.dtype, name=f"layer{stage + 1}_{n}")(x, train=train)
      stages.append(x)

    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.num_classes is None:
      return pooled, {"stages": stages}
    fan_in = pooled.shape[-1]
    logits = nn.Dense(self.num_classes, kernel_init=_fc_kernel_init,
                      bias_init=_fc_bias_init(fan_in), dtype=self.dtype,
                      param_dtype=jnp.float32, name="fc")(pooled)
    return logits.astype(jnp.float32), {"stages": stages}


# The official ImageNet models (the `res2net.py` constructors with released weights):
# ResNet-50/101 block counts (arXiv:1512.03385v1 Table 1), base width w and scale s in the
# names. Parameters at 1000 classes, equal to the official torch models' sum of numel:
# 26w4s 25,699,120; 101_26w4s 45,206,688; 48w2s 25,287,304; 14w8s 25,059,816;
# 26w6s 37,051,448; 26w8s 48,403,776.
res2net50_26w4s = functools.partial(Res2Net, stage_sizes=(3, 4, 6, 3), base_width=26, scale=4)
res2net101_26w4s = functools.partial(Res2Net, stage_sizes=(3, 4, 23, 3), base_width=26, scale=4)
res2net50_48w2s = functools.partial(Res2Net, stage_sizes=(3, 4, 6, 3), base_width=48, scale=2)
res2net50_14w8s = functools.partial(Res2Net, stage_sizes=(3, 4, 6, 3), base_width=14, scale=8)
res2net50_26w6s = functools.partial(Res2Net, stage_sizes=(3, 4, 6, 3), base_width=26, scale=6)
res2net50_26w8s = functools.partial(Res2Net, stage_sizes=(3, 4, 6, 3), base_width=26, scale=8)
