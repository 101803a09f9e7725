"""SADI-Net: stacked hourglass of RFM units, spatial fusion (SFM) and distribution learning (DLM).

Gao, Zhu, Zhuang, Wang, Li, "Spatial Attention-based Distribution Integration Network for
Human Pose Estimation", IEEE Access 2023 (doi 10.1109/ACCESS.2023.0322000), Sec. III and
Fig. 2-5. No official code is public; each part follows the code of the baseline it names:

  RFM       (Sec. III-B, eq. 1, Fig. 3) torchvision's BasicBlock (two 3x3 conv-BN) plus a
            parallel dilated 3x3 conv-BN, their sum through squeeze-and-excitation (Hu et
            al., arXiv:1709.01507), identity or 1x1 conv-BN shortcut, ReLU.
  backbone  princeton-vl/pytorch_stacked_hourglass @ceedc14 (`jaxpose/models/hourglass.py`:
            its ConvBlock, layer names and wiring) with every `Residual` replaced by an RFM;
            intermediate supervision: the heatmaps H1 of every stack, [B, S, H/4, W/4, K].
  SFM       (Sec. III-C, eq. 2-3, Fig. 4) F1..F4: the last stack's hourglass outputs at
            H/4, H/8, H/16, H/32 (the "8, 16, 32 and 64 pixel" scales of a 256 input; the
            hourglass fuses up1 + upsampled low branch at each of them), each 1x1 conv-BN-ReLU
            to 64/128/256/512 channels (`adapt{n}`). Global attention: G_n = bilinear
            upsample to H/4 of a 1x1 conv-BN-ReLU to 256 (`project{n}`); U_n = 1x1 conv to one
            channel (`logit{n}`); W = softmax over n at each pixel (eq. 2, so sum_n W_n = 1,
            eq. 3); the fused map sum_n W_n G_n is average-pooled to F_n's size and 1x1
            conv-BN-ReLU'd to F_n's channels (`restore{n}`).
  head      (Sec. III-C "classification head", Fig. 5) HRNet-Image-Classification @f760c98
            `cls_hrnet.py` `_make_head`: a Bottleneck per scale to 128/256/512/1024 channels
            (`incre{n}`), 3x3 stride-2 conv-BN-ReLU to the next scale (`downsample{n}`), sum,
            then the local attention (each merged map times its softmax along the columns,
            i.e. over H), 1x1 conv-BN-ReLU to 2048 (`final`), global average pool.
  DLM       (Sec. III-D, eq. 4-5) the head of the official RLE `RegressFlow`
            (`jaxpose/models/realnvp.py`: mu_hat, sigma_hat from the 2048-d feature, RealNVP
            flow G); eq. 5's normalisation is RLE's x_bar = (mu_hat - x) / sigma_hat. H2 is the
            learned density P(x) ~ Q(x_bar) G(x_bar) / sigma_hat on the heatmap grid (Q the
            official RLE `logQ` at unit scale), divided by its maximum over the map so that,
            like the Gaussian targets, its peak is 1 (`learned_heatmaps`).

Output: `SADINet(images [B, H, W, 3], train=..., target_uv=None)` -> (H1 [B, S, H/4, W/4, K]
float32, aux) with aux "mu_hat", "sigma_hat" [B, K, 2] (RLE's normalised uv = xy_input /
input_wh - 0.5), "h2" [B, H/4, W/4, K], "feature" [B, 2048], "sfm_weights" [B, H/4, W/4, 4]
(float32) and, given `target_uv` [B, K, 2], "log_phi" [B, K] for the RLE loss
(`jaxpose/losses/rle.py`). H and W must be multiples of 64.

Parameter tree: backbone/ (pre0_conv, pre{1,3,4}_residual; stacks/ (stacks 0 .. S-2, every
leaf with a leading axis S - 1: hourglass/{up1, low1, low2, low3} nested as in hourglass.py,
features_residual, features_conv, outs, merge_preds, merge_features); the last stack's
hourglass{S-1}, features{S-1}_residual, features{S-1}_conv, outs{S-1}; with
`scan_stacks=False` every stack named so, as in hourglass.py); RFM children conv1, bn1,
conv2, bn2, dilated_conv, dilated_bn, se/{fc1, fc2}, downsample_conv, downsample_bn; sfm/
(adapt{n}, project{n}, logit{n}, restore{n}); head/ (incre{n}, downsample{n},
downsample{n}_bn, final, final_bn); dlm/ (fc_coord, fc_sigma, flow) with the official RLE
key table in realnvp.py.
"""

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpose.models import fast_grad
from jaxpose.models import hourglass
from jaxpose.models import hrnet
from jaxpose.models import layers
from jaxpose.models import realnvp

_STEM_CHANNELS = 64  # the official PoseNet stem, as hourglass.py
_STEM_RESIDUAL_CHANNELS = 128
_HOURGLASS_DEPTH = 4  # four poolings: the four SFM scales H/4 .. H/32
_INPUT_DIVISOR = 4 * 2**_HOURGLASS_DEPTH
# torchvision BasicBlock / HRNet-Image-Classification conv init: kaiming normal, fan_out.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _upsample_nearest_2x(x: jax.Array) -> jax.Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _average_pool(x: jax.Array, factor: int) -> jax.Array:
  """[B, H, W, C] -> [B, H / factor, W / factor, C], mean over factor x factor blocks."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


class SqueezeExcitation(nn.Module):
  """SE gate (arXiv:1709.01507 Sec. 3): x * sigmoid(fc2(relu(fc1(mean_hw x)))); [B, H, W, C]."""
  reduction: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    squeezed = x.mean(axis=(1, 2))
    hidden = nn.Dense(max(1, channels // self.reduction), dtype=self.dtype,
                      param_dtype=jnp.float32, name="fc1")(squeezed)
    gate = nn.sigmoid(nn.Dense(channels, dtype=self.dtype, param_dtype=jnp.float32,
                               name="fc2")(nn.relu(hidden)))
    return x * gate[:, None, None, :].astype(x.dtype)


class RFM(nn.Module):
  """Receptive fortified module, SADI-Net Sec. III-B, eq. 1, Fig. 3(a); [B, H, W, C] -> features.

  relu(SE(bn2(conv2(relu(bn1(conv1 x)))) + dilated_bn(dilated_conv x)) + shortcut(x)): the
  BasicBlock's two 3x3 convs and, in parallel, a 3x3 conv with dilation b (eq. 1: output
  [i, j] sums input [i + b m, j + b n] w[m, n]; padding b keeps the size). The shortcut is
  the identity, or a 1x1 conv-BN when C != features. Same call signature as
  `hourglass.Residual`, so it can stand in for it.
  """
  features: int
  dilation: int = 2
  se_reduction: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    def conv(features, kernel_size, name, dilation=1):
      return layers.conv2d(features, kernel_size, dilation=dilation, kernel_init=_conv_init,
                           dtype=self.dtype, name=name)

    def bn(name):
      return layers.batch_norm(train, self.dtype, name)

    y = nn.relu(bn("bn1")(conv(self.features, 3, "conv1")(x)))
    y = bn("bn2")(conv(self.features, 3, "conv2")(y))
    dilated = bn("dilated_bn")(conv(self.features, 3, "dilated_conv", self.dilation)(x))
    y = SqueezeExcitation(self.se_reduction, dtype=self.dtype, name="se")(y + dilated)
    if x.shape[-1] != self.features:
      x = bn("downsample_bn")(conv(self.features, 1, "downsample_conv")(x))
    return layers.fenced(self, nn.relu(y + x))


class RFMHourglass(nn.Module):
  """One hourglass of `depth` poolings built from `unit` (princeton-vl `Hourglass`, no
  `increase`): [B, H, W, C] -> (same shape, levels). levels: the output of this hourglass
  and of each nested one, [B, H / 2**n, W / 2**n, C] for n = 0 .. depth - 1."""
  depth: int
  unit: Callable[..., nn.Module]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, list[jax.Array]]:
    channels = x.shape[-1]
    unit = functools.partial(self.unit, channels, dtype=self.dtype)
    up1 = unit(name="up1")(x, train=train)
    low = unit(name="low1")(fast_grad.max_pool(x, 2, 2, ((0, 0), (0, 0))), train=train)
    if self.depth > 1:
      low, inner = RFMHourglass(self.depth - 1, self.unit, self.dtype, name="low2")(
          low, train=train)
    else:
      low, inner = unit(name="low2")(low, train=train), []
    low = unit(name="low3")(low, train=train)
    out = up1 + _upsample_nearest_2x(low)
    return out, [out, *inner]


class RFMStackedHourglass(nn.Module):
  """The official PoseNet wiring with `unit` for every residual: images [B, H, W, 3] ->
  (H1 [B, S, H/4, W/4, K] float32, the last stack's hourglass levels H/4 .. H/32).

  With `scan_stacks` the first S - 1 stacks, identical, run as one `nn.scan` over stacked
  parameters (`hourglass.run_stacks`): XLA compiles one stack instead of S - 1, so the
  paper's 8 x 256 network compiles in minutes rather than a quarter of an hour (BUILD_NOTES).
  Without it the tree is the official PoseNet's (`hourglass{s}`, `outs{s}`, ...);
  `hourglass.scanned_layout` maps it onto the scanned one."""
  num_stacks: int
  num_keypoints: int
  width: int
  unit: Callable[..., nn.Module]
  remat: bool = False  # recompute each stack's hourglass in the backward pass
  scan_stacks: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, list[jax.Array]]:
    unit = functools.partial(self.unit, dtype=self.dtype)
    block = functools.partial(hourglass.ConvBlock, dtype=self.dtype)
    x = block(_STEM_CHANNELS, 7, stride=2, bn=True, name="pre0_conv")(
        images.astype(self.dtype), train=train)
    x = unit(_STEM_RESIDUAL_CHANNELS, name="pre1_residual")(x, train=train)
    x = fast_grad.max_pool(x, 2, 2, ((0, 0), (0, 0)))
    x = unit(_STEM_RESIDUAL_CHANNELS, name="pre3_residual")(x, train=train)
    x = unit(self.width, name="pre4_residual")(x, train=train)

    def stack(x, *, suffix, merge):
      hourglass_module = RFMHourglass(_HOURGLASS_DEPTH, self.unit, self.dtype,
                                      name=f"hourglass{suffix}")
      y, levels = layers.apply_block(hourglass_module, x, train=train, remat=self.remat)
      y = unit(self.width, name=f"features{suffix}_residual")(y, train=train)
      features = block(self.width, bn=True, name=f"features{suffix}_conv")(y, train=train)
      heatmaps = block(self.num_keypoints, relu=False, name=f"outs{suffix}")(features,
                                                                             train=train)
      if merge:
        x = (x + block(self.width, relu=False, name=f"merge_preds{suffix}")(heatmaps,
                                                                           train=train)
             + block(self.width, relu=False, name=f"merge_features{suffix}")(features,
                                                                             train=train))
      return x, heatmaps, levels

    stack_heatmaps, levels = hourglass.run_stacks(stack, x, self.num_stacks, self.scan_stacks)
    return jnp.stack(stack_heatmaps, axis=1).astype(jnp.float32), levels


class SpatialFusion(nn.Module):
  """SFM global attention, SADI-Net Sec. III-C, eq. 2-3, Fig. 4.

  levels: N maps [B, H / 2**n, W / 2**n, C_in] -> (N maps [B, H / 2**n, W / 2**n,
  channels[n]], weights [B, H, W, N] float32). F_n = adapt_n(level n); G_n = upsample to
  H x W of project_n(F_n); U_n = logit_n(G_n); W = softmax_n(U) (eq. 2), so that
  sum_n W_n = 1 at every pixel (eq. 3); output n = restore_n(avg_pool(sum_n W_n G_n)).
  """
  channels: Sequence[int] = (64, 128, 256, 512)
  attention_channels: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, levels: Sequence[jax.Array], *, train: bool
               ) -> tuple[list[jax.Array], jax.Array]:
    if len(levels) != len(self.channels):
      raise ValueError(f"SpatialFusion has channels for {len(self.channels)} scales "
                       f"{tuple(self.channels)}, got {len(levels)} feature maps")
    conv_bn = functools.partial(hrnet.ConvBN, kernel_size=1, dtype=self.dtype)
    batch, height, width = levels[0].shape[:3]
    features, grids, logits = [], [], []
    for n, (level, channels) in enumerate(zip(levels, self.channels), 1):
      f = conv_bn(channels, name=f"adapt{n}")(level, train=train)
      g = conv_bn(self.attention_channels, name=f"project{n}")(f, train=train)
      g = jax.image.resize(g, (batch, height, width, g.shape[-1]), "bilinear").astype(g.dtype)
      logits.append(layers.Conv2d(1, 1, use_bias=True, dtype=self.dtype, name=f"logit{n}")(g))
      features.append(f)
      grids.append(g)
    weights = jax.nn.softmax(jnp.concatenate(logits, axis=-1).astype(jnp.float32), axis=-1)
    fused = sum(weights[..., n:n + 1].astype(self.dtype) * g for n, g in enumerate(grids))
    outputs = [conv_bn(f.shape[-1], name=f"restore{n}")(
        _average_pool(fused, height // f.shape[1]), train=train)
               for n, f in enumerate(features, 1)]
    return outputs, weights


def local_attention(x: jax.Array) -> jax.Array:
  """SADI-Net local attention (Sec. III-C, Fig. 5) on a merged two-scale map [B, H, W, C]:
  x times its softmax along the columns (over H, per column and channel; each column of
  the weighting map sums to 1)."""
  weights = jax.nn.softmax(x.astype(jnp.float32), axis=1)
  return x * weights.astype(x.dtype)


class ClassificationHead(nn.Module):
  """HRNet classification head with local attention: N maps [B, H / 2**n, W / 2**n, C_n]
  -> feature [B, feature_dim] float32. `planes` are the Bottleneck planes (outputs 4x)."""
  planes: Sequence[int] = (32, 64, 128, 256)
  feature_dim: int = 2048
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], *, train: bool) -> jax.Array:
    def conv_bn_relu(x, out, kernel_size, stride, name):
      x = layers.Conv2d(out, kernel_size, stride=stride, padding=kernel_size // 2, use_bias=True,
                        kernel_init=_conv_init, dtype=self.dtype, name=name)(x)
      return nn.relu(layers.batch_norm(train, self.dtype, f"{name}_bn")(x))

    bottleneck = functools.partial(hrnet.Bottleneck, dtype=self.dtype)
    y = bottleneck(self.planes[0], name="incre1")(features[0], train=train)
    for n in range(1, len(features)):
      down = conv_bn_relu(y, self.planes[n] * 4, 3, 2, f"downsample{n}")
      # Summation order of the official `incre_modules[i+1](y_list[i+1]) + downsamp(y)`.
      y = bottleneck(self.planes[n], name=f"incre{n + 1}")(features[n], train=train) + down
      y = local_attention(y)
    y = conv_bn_relu(y, self.feature_dim, 1, 1, "final")
    return y.astype(jnp.float32).mean(axis=(1, 2))


def heatmap_grid_uv(height: int, width: int) -> jax.Array:
  """[h * w, 2] RLE uv of the heatmap pixels, row-major: pixel (x, y) sits at the input point
  (x, y) * stride (the MSRA codec's convention), i.e. uv = (x / w - 0.5, y / h - 0.5)."""
  ys, xs = jnp.meshgrid(jnp.arange(height) / height - 0.5, jnp.arange(width) / width - 0.5,
                        indexing="ij")
  return jnp.stack([xs, ys], axis=-1).reshape(-1, 2).astype(jnp.float32)


def learned_heatmaps(grid_log_phi: jax.Array, mu_hat: jax.Array, sigma_hat: jax.Array,
                     heatmap_hw: tuple[int, int]) -> jax.Array:
  """H2 (SADI-Net Sec. III-D): the DLM density on the heatmap grid, peak 1; [B, h, w, K].

  grid_log_phi [B, K, h*w] = log G(x_bar) at x_bar = (mu_hat - p) / sigma_hat for the pixels
  p of `heatmap_grid_uv`; mu_hat, sigma_hat [B, K, 2]. log P(p) = log G(x_bar) + sum_c log
  Q(x_bar_c) - sum_c log sigma_c with the official RLE Q, log Q(r) = -log sqrt(2 pi) -
  |r| / sqrt(2); the terms constant over the map cancel in the division by the map's maximum.
  """
  height, width = heatmap_hw
  bar = (mu_hat[:, :, None] - heatmap_grid_uv(height, width)) / sigma_hat[:, :, None]
  log_p = grid_log_phi - jnp.abs(bar).sum(axis=-1) / math.sqrt(2.0)
  heatmaps = jnp.exp(log_p - log_p.max(axis=-1, keepdims=True))
  return heatmaps.reshape(*heatmaps.shape[:2], height, width).transpose(0, 2, 3, 1)


class SADINet(nn.Module):
  """SADI-Net: images [B, H, W, 3] -> (H1 [B, S, H/4, W/4, K], aux); see the module docstring.

  `target_uv` [B, K, 2] (training) adds aux["log_phi"], the flow density at the ground
  truth that the RLE loss needs (the official RegressFlow takes labels the same way).
  """
  num_keypoints: int
  num_stacks: int = 8
  width: int = 256
  dilation: int = 2
  se_reduction: int = 16
  sfm_channels: Sequence[int] = (64, 128, 256, 512)
  attention_channels: int = 256
  head_planes: Sequence[int] = (32, 64, 128, 256)
  feature_dim: int = 2048
  # "rfm": the paper's RFM units; "bottleneck": the official hourglass's pre-activation
  # bottleneck `Residual` in their place, Table IV's "Hourglass + SFM-DLM" row.
  residual_unit: str = "rfm"
  remat: bool = False  # each stack's hourglass recomputed in the backward pass
  scan_stacks: bool = True  # the S - 1 merging stacks as one nn.scan (RFMStackedHourglass)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool, target_uv: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    if self.num_stacks < 1:
      raise ValueError(f"num_stacks must be >= 1, got {self.num_stacks}")
    if len(self.sfm_channels) != _HOURGLASS_DEPTH or len(self.head_planes) != _HOURGLASS_DEPTH:
      raise ValueError(f"sfm_channels and head_planes need one entry per hourglass scale "
                       f"({_HOURGLASS_DEPTH}), got {self.sfm_channels}, {self.head_planes}")
    height, width = images.shape[1:3]
    if height % _INPUT_DIVISOR or width % _INPUT_DIVISOR:
      raise ValueError(f"SADINet needs H and W divisible by {_INPUT_DIVISOR}, got images of "
                       f"shape {images.shape} (NHWC); e.g. 256x256, 64x64, 128x64.")
    if self.residual_unit == "rfm":
      unit = functools.partial(RFM, dilation=self.dilation, se_reduction=self.se_reduction)
    elif self.residual_unit == "bottleneck":
      unit = hourglass.Residual
    else:
      raise ValueError(f"residual_unit must be 'rfm' or 'bottleneck', got {self.residual_unit!r}")
    heatmaps, levels = RFMStackedHourglass(self.num_stacks, self.num_keypoints, self.width, unit,
                                           self.remat, self.scan_stacks, self.dtype,
                                           name="backbone")(images, train=train)
    fused, sfm_weights = SpatialFusion(self.sfm_channels, self.attention_channels, self.dtype,
                                       name="sfm")(levels, train=train)
    feature = ClassificationHead(self.head_planes, self.feature_dim, self.dtype,
                                 name="head")(fused, train=train)
    heatmap_hw = heatmaps.shape[2:4]
    dlm = realnvp.RegressFlowHead(self.num_keypoints, name="dlm")(
        feature, target_uv=target_uv, grid_uv=heatmap_grid_uv(*heatmap_hw))
    aux = {"mu_hat": dlm["mu_hat"], "sigma_hat": dlm["sigma_hat"], "feature": feature,
           "h2": learned_heatmaps(dlm["grid_log_phi"], dlm["mu_hat"], dlm["sigma_hat"],
                                  heatmap_hw),
           "sfm_weights": sfm_weights}
    if target_uv is not None:
      aux["log_phi"] = dlm["log_phi"]
    return heatmaps, aux


# The paper gives no stack count or width (Sec. IV-C); the defaults are the official
# stacked hourglass's MPII setting (8 stacks of width 256, as `hourglass_8`), K = 16 MPII
# joints (LSP: pass num_keypoints=14). `sadinet_tiny` is for tests and smoke runs.
sadinet = functools.partial(SADINet, num_keypoints=16, num_stacks=8, width=256)
sadinet_tiny = functools.partial(SADINet, num_stacks=2, width=16, se_reduction=4,
                                 sfm_channels=(8, 16, 32, 64), attention_channels=16,
                                 head_planes=(4, 8, 16, 32), feature_dim=64)
