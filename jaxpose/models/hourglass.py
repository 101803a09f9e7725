"""Stacked hourglass networks for single-person pose estimation, NHWC.

Newell, Yang, Deng, "Stacked Hourglass Networks for Human Pose Estimation", ECCV 2016,
arXiv:1603.06937 (v2), Sec. 3. Ported layer for layer from the PyTorch implementation in
the authors' lab repository (princeton-vl/pytorch_stacked_hourglass @ceedc14,
`models/posenet.py` `PoseNet`, `models/layers.py` `Conv`, `Residual`, `Hourglass`):

  stem     7x7/2 conv (64, bias) + BN + ReLU, Residual 64 -> 128, 2x2/2 max-pool,
           Residual 128 -> 128, Residual 128 -> width: [B, H, W, 3] -> [B, H/4, W/4, width]
  stack s  a depth-4 hourglass, Residual + 1x1 conv-BN-ReLU (`features`), 1x1 conv to K
           heatmaps (`outs`); between stacks x <- x + 1x1(heatmaps) + 1x1(features)
           (`merge_preds`, `merge_features`)
  output   the heatmaps of every stack, [B, num_stacks, H/4, W/4, K] (intermediate supervision)

Every conv has a bias. `Residual` is pre-activation (BN -> ReLU -> conv, three times,
widths out/2, out/2, out) plus either the identity or, when the width changes, a 1x1 conv
(`skip_layer`). The official `Residual` also creates `skip_layer` when the width does not
change and never uses it; jaxpose does not create it, and the importer drops those keys.
An hourglass of depth n: `up1` = Residual(f, f) at full size; `low1` = Residual(f, f +
increase) after a 2x2 max-pool, `low2` = an hourglass of depth n - 1 (a Residual at depth
1), `low3` = Residual back to f, nearest 2x upsample, summed with `up1`. As in the official
code, only the outermost hourglass widens by `increase` (the recursion drops the
argument). The official `bn` argument of `PoseNet`/`Hourglass` is never read, so it has no
field here.

Layer names map onto the official keys (`jaxpose/models/hourglass_torch_import.py`):

  flax                                     torch
  pre0_conv/conv, bn                       pre.0.conv, pre.0.bn
  pre{1,3,4}_residual                      pre.{1,3,4}
  Residual bn{1,2,3}                       bn{1,2,3}
  Residual conv{1,2,3}, skip_layer         conv{1,2,3}.conv, skip_layer.conv
  hourglass{s}/up1, low1, low2, low3       hgs.{s}.0.up1, low1, low2, low3 (low2 nests)
  features{s}_residual                     features.{s}.0
  features{s}_conv/conv, bn                features.{s}.1.conv, features.{s}.1.bn
  outs{s}/conv                             outs.{s}.conv
  merge_preds{s}/conv, merge_features{s}/conv   merge_preds.{s}.conv.conv, ...

That is the unrolled layout (`scan_stacks=False`). By default stacks 0 .. S-2 run as one
`nn.scan` and live under `stacks/` with the index dropped (`stacks/hourglass`, `stacks/outs`,
..., leaves stacked on a leading axis of S - 1); `scanned_layout` maps the one onto the other.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose.models import fast_grad
from jaxpose.models import layers

_STEM_CHANNELS = 64
_STEM_RESIDUAL_CHANNELS = 128
_HOURGLASS_DEPTH = 4  # PoseNet builds `Hourglass(4, ...)`: four 2x poolings inside
# Stem stride 4 times the hourglass's 2**4: every pooled map must have an even size so that
# the nearest 2x upsample matches `up1` (the official code fails on the addition otherwise).
_INPUT_DIVISOR = 4 * 2**_HOURGLASS_DEPTH

# torch's default Conv2d init (the official code keeps it): kaiming_uniform(a=sqrt(5)) is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the kernel, and the same bound for the bias.
_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _bias_init(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


def _conv(x: jax.Array, features: int, kernel_size: int, dtype: Any, name: str, *,
          stride: int = 1) -> jax.Array:
  """The official `nn.Conv2d(..., padding=(k - 1) // 2, bias=True)` applied to `x`."""
  fan_in = x.shape[-1] * kernel_size * kernel_size
  conv = layers.Conv2d(features, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
                       use_bias=True, kernel_init=_kernel_init, bias_init=_bias_init(fan_in),
                       dtype=dtype, name=name)
  return conv(x)


def _upsample_nearest_2x(x: jax.Array) -> jax.Array:
  """[B, H, W, C] -> [B, 2H, 2W, C], torch `Upsample(scale_factor=2, mode='nearest')`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ConvBlock(nn.Module):
  """Official `Conv`: conv with bias [-> BN] [-> ReLU]; [B, H, W, C] -> [B, H/s, W/s, features]."""
  features: int
  kernel_size: int = 1
  stride: int = 1
  bn: bool = False
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = _conv(x, self.features, self.kernel_size, self.dtype, "conv", stride=self.stride)
    if self.bn:
      x = layers.batch_norm(train, self.dtype, "bn")(x)
    return nn.relu(x) if self.relu else x


class Residual(nn.Module):
  """Pre-activation bottleneck residual; [B, H, W, C] -> [B, H, W, features].

  (BN -> ReLU -> 1x1 to features // 2) -> (BN -> ReLU -> 3x3) -> (BN -> ReLU -> 1x1 to
  features), plus x, or plus a 1x1 conv of x (`skip_layer`) when C != features.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    mid = self.features // 2
    y = x
    for i, (width, kernel_size) in enumerate(((mid, 1), (mid, 3), (self.features, 1)), 1):
      y = nn.relu(layers.batch_norm(train, self.dtype, f"bn{i}")(y))
      y = _conv(y, width, kernel_size, self.dtype, f"conv{i}")
    if x.shape[-1] != self.features:
      x = _conv(x, self.features, 1, self.dtype, "skip_layer")
    return layers.fenced(self, y + x)


class Hourglass(nn.Module):
  """One hourglass of `depth` poolings; [B, H, W, C] -> same shape.

  H and W must be divisible by 2**depth. The lower branch runs at C + increase channels.
  """
  depth: int
  increase: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    channels = x.shape[-1]
    low_channels = channels + self.increase
    up1 = Residual(channels, dtype=self.dtype, name="up1")(x, train=train)
    low = fast_grad.max_pool(x, 2, 2, ((0, 0), (0, 0)))
    low = Residual(low_channels, dtype=self.dtype, name="low1")(low, train=train)
    if self.depth > 1:
      # increase=0: the official recursion `Hourglass(n - 1, nf, bn=bn)` does not pass it on.
      low = Hourglass(self.depth - 1, dtype=self.dtype, name="low2")(low, train=train)
    else:
      low = Residual(low_channels, dtype=self.dtype, name="low2")(low, train=train)
    low = Residual(channels, dtype=self.dtype, name="low3")(low, train=train)
    return up1 + _upsample_nearest_2x(low)


# The per-stack module names of the official PoseNet loop (`{}` is the stack index).
STACK_NAMES = ("hourglass{}", "features{}_residual", "features{}_conv", "outs{}",
               "merge_preds{}", "merge_features{}")


def run_stacks(stack_fn: Callable[..., Any], x: jax.Array, num_stacks: int, scan: bool
               ) -> tuple[list[jax.Array], Any]:
  """Runs the stacks of an hourglass network from the stem's output `x`; returns (each
  stack's heatmaps, the last stack's other output).

  `stack_fn(x, suffix=, merge=)` -> (next input, heatmaps, other) builds one stack in the
  calling module, its submodules named `STACK_NAMES` with `suffix`. Stacks 0 .. S-2 merge
  into the next and are identical; with `scan` they run as one `nn.scan` over parameters
  stacked on a leading axis of S - 1 (`stacks/hourglass`, `stacks/outs`, ...), so XLA
  compiles one of them instead of S - 1 (hourglass_8's train step: see BUILD_NOTES); without
  it, stack s is `hourglass{s}`, `outs{s}`, ... as in the official code. The last stack is
  `hourglass{S-1}`, ... either way. `scanned_layout` turns the one tree into the other.
  """
  merging = num_stacks - 1
  if scan and merging:
    merge = lambda x, _: stack_fn(x, suffix="", merge=True)[:2]
    x, stacked = layers.scan_repeated(merge, x, None, merging, "stacks")
    stack_heatmaps = list(stacked)
  else:
    stack_heatmaps = []
    for s in range(merging):
      x, heatmaps, _ = stack_fn(x, suffix=str(s), merge=True)
      stack_heatmaps.append(heatmaps)
  _, heatmaps, other = stack_fn(x, suffix=str(merging), merge=False)
  return stack_heatmaps + [heatmaps], other


def scanned_layout(tree: dict[str, Any], num_stacks: int) -> dict[str, Any]:
  """One variable collection of a stacked network (params or batch_stats of the module that
  called `run_stacks`) from the unrolled layout (stack s under `hourglass{s}`, `outs{s}`,
  ...) to the scanned one (stacks 0 .. S-2 under `stacks/`, each leaf stacked on axis 0)."""
  return layers.stacked_layout(tree, STACK_NAMES, num_stacks - 1, "stacks")


class StackedHourglass(nn.Module):
  """Stacked hourglass network: images [B, H, W, 3] -> heatmaps [B, S, H/4, W/4, K].

  S = num_stacks, K = num_keypoints; H and W must be multiples of 64. Returns
  (heatmaps float32, aux) with aux["features"] the last stack's `features` map
  [B, H/4, W/4, width] in `dtype`. Stack s's heatmaps are `heatmaps[:, s]`; the last
  stack's are the prediction, all of them are supervised (arXiv:1603.06937v2 Sec. 3).
  The official `PoseNet` takes the same NHWC images and returns [B, S, K, H/4, W/4].
  """
  num_stacks: int
  num_keypoints: int
  width: int = 256
  increase: int = 0
  remat: bool = False  # recompute each stack's hourglass in the backward pass
  scan_stacks: bool = True  # stacks 0 .. S-2 as one nn.scan (`run_stacks`)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    if self.num_stacks < 1:
      raise ValueError(f"num_stacks must be >= 1, got {self.num_stacks}")
    height, width = images.shape[1:3]
    if height % _INPUT_DIVISOR or width % _INPUT_DIVISOR:
      raise ValueError(f"StackedHourglass needs H and W divisible by {_INPUT_DIVISOR}, got "
                       f"images of shape {images.shape} (NHWC); e.g. 256x256, 64x64, 128x64.")
    x = images.astype(self.dtype)
    x = ConvBlock(_STEM_CHANNELS, 7, stride=2, bn=True, dtype=self.dtype,
                  name="pre0_conv")(x, train=train)
    x = Residual(_STEM_RESIDUAL_CHANNELS, dtype=self.dtype, name="pre1_residual")(x, train=train)
    x = fast_grad.max_pool(x, 2, 2, ((0, 0), (0, 0)))
    x = Residual(_STEM_RESIDUAL_CHANNELS, dtype=self.dtype, name="pre3_residual")(x, train=train)
    x = Residual(self.width, dtype=self.dtype, name="pre4_residual")(x, train=train)

    def stack(x, *, suffix, merge):
      hourglass = Hourglass(_HOURGLASS_DEPTH, self.increase, dtype=self.dtype,
                            name=f"hourglass{suffix}")
      y = layers.apply_block(hourglass, x, train=train, remat=self.remat)
      y = Residual(self.width, dtype=self.dtype, name=f"features{suffix}_residual")(
          y, train=train)
      features = ConvBlock(self.width, bn=True, dtype=self.dtype,
                           name=f"features{suffix}_conv")(y, train=train)
      heatmaps = ConvBlock(self.num_keypoints, relu=False, dtype=self.dtype,
                           name=f"outs{suffix}")(features, train=train)
      if merge:
        # Summation order as the official `x + merge_preds(preds) + merge_features(feature)`.
        x = (x + ConvBlock(self.width, relu=False, dtype=self.dtype,
                           name=f"merge_preds{suffix}")(heatmaps, train=train)
             + ConvBlock(self.width, relu=False, dtype=self.dtype,
                         name=f"merge_features{suffix}")(features, train=train))
      return x, heatmaps, features

    stack_heatmaps, features = run_stacks(stack, x, self.num_stacks, self.scan_stacks)
    return jnp.stack(stack_heatmaps, axis=1).astype(jnp.float32), {"features": features}


# The paper's network (arXiv:1603.06937v2 Sec. 3) is 8 stacks at width 256; the official
# MPII config (`task/pose.py`) trains the same (nstack 8, inp_dim 256, oup_dim 16). At K=16
# hourglass_8 has 25,434,112 parameters (the official PoseNet has 32,819,328, of which
# 7,385,216 are unused same-width `skip_layer` convs).
hourglass_1 = functools.partial(StackedHourglass, num_stacks=1)
hourglass_2 = functools.partial(StackedHourglass, num_stacks=2)
hourglass_3 = functools.partial(StackedHourglass, num_stacks=3)
hourglass_4 = functools.partial(StackedHourglass, num_stacks=4)
hourglass_5 = functools.partial(StackedHourglass, num_stacks=5)
hourglass_6 = functools.partial(StackedHourglass, num_stacks=6)
hourglass_7 = functools.partial(StackedHourglass, num_stacks=7)
hourglass_8 = functools.partial(StackedHourglass, num_stacks=8)
