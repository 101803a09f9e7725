"""DEKR: bottom-up pose estimation by disentangled keypoint regression, NHWC.

Geng, Sun, Xiao, Zhang, Wang, "Bottom-Up Human Pose Estimation via Disentangled Keypoint
Regression", CVPR 2021, arXiv:2104.02300 (v1), Sec. 3.2 (adaptive activation, multi-branch
regression). Ported layer for layer from the official `PoseHigherResolutionNet`
(HRNet/DEKR @7a30313, `lib/models/hrnet_dekr.py`, blocks in `lib/models/conv_block.py`,
COCO configs `experiments/coco/w{32,48}/*.yaml`):

  backbone  HRNet (`hrnet.HRNetBackbone`, every stage keeps all four branches) -> branches
            1-3 bilinearly upsampled to H/4 and concatenated: [B, H/4, W/4, 15 * width]
  heatmap   1x1 conv-BN-ReLU to `heatmap_channels`, `heatmap_blocks` (dilated) BasicBlocks,
            a `final_conv_kernel` conv with bias -> K + 1 maps (K keypoints, then the centre)
  offsets   1x1 conv-BN-ReLU to K * P channels (P = `offset_channels_per_keypoint`); keypoint
            j takes channels [j P, (j + 1) P) through `offset_blocks` AdaptBlocks and its own
            conv with bias to 2 channels; the K pairs are concatenated
  AdaptBlock  (adaptive activation) a 3x3 conv predicts a 2x2 matrix M per pixel, another a
            translation t; the 3x3 deformable conv samples tap g (a regular-grid point, as
            (dy, dx)) at M g + t, i.e. its offsets are (M - I) g + t; then BN, + input, ReLU

  scale head  (`scale_head=True`, off in the presets) SWAHR's scale branch (Luo et al.,
            arXiv:2012.15175, Sec. 3.2; greatlog/SWAHR-HumanPose @7555826,
            `lib/models/pose_higher_hrnet.py`, `conv_scale_layers`): 1x1 conv with bias -> K + 1,
            BN, ReLU, 9x9 depthwise conv with bias, zeroed at init, on the features the final
            heatmap conv reads -> aux["heatmap_scales"] [B, H/4, W/4, K + 1], the scale s of
            heatmap channel c's SAHR target t^(1 + s) at channel c (`losses.bottomup`)

Outputs (official channel order): heatmaps [B, H/4, W/4, K + 1], the centre heatmap last;
offsets [B, H/4, W/4, 2K], keypoint j at channels (2j, 2j + 1) = (x, y) of pixel minus
keypoint, in heatmap pixels (the official `OffsetGenerator`; poses are locations - offsets).

The official code runs K separate per-keypoint branches (no grouped or depthwise convs).
jaxpose runs the same K branches, by default (`scan_branches`) as one `nn.scan` over their
parameters stacked on a leading axis of K under `offset_branches/` (names without the index:
`offset_branches/offset_feature_block{n}/...`, `offset_branches/offset_final`), so XLA
compiles one branch instead of K (SAMKR's synthetic train step: 85 s -> 48 s, BUILD_NOTES);
`scan_branches=False` gives the unrolled tree below, one entry per keypoint, and
`scanned_layout` maps it onto the scanned one. Layer names of the unrolled tree and their
official keys (`jaxpose/models/dekr_torch_import.py`; backbone rows in `hrnet.py`):

  flax                                           torch
  backbone/...                                   (pose_hrnet backbone keys, top level)
  transition_{heatmap,offset}_conv, _bn          transition_{heatmap,offset}.{0,1}
  head_heatmap_block{n}/{conv1,bn1,conv2,bn2}    head_heatmap.0.{n}.{conv1,bn1,conv2,bn2}
  head_heatmap_final                             head_heatmap.1
  offset_feature{j}_block{n}/{transform_matrix_conv, translation_conv, adapt_conv, bn}
                                                 offset_feature_layers.{j}.{n}.(same)
  offset_final{j}                                offset_final_layer.{j}
  (constant `REGULAR_GRID`)                     offset_feature_layers.{j}.{n}.regular_matrix
  heatmap_scale_head/{conv,bn,depthwise_conv}   conv_scale_layers.0.{0,1,3} (SWAHR's names)
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose.models import deform_conv
from jaxpose.models import hrnet
from jaxpose.models import layers

# Official `init_weights`: every nn.Conv2d ~ N(0, 0.001^2) with bias 0, BatchNorm 1 / 0 (the
# flax defaults). The deformable conv is not an nn.Conv2d and keeps torchvision's init
# (`deform_conv.DeformConv2d`'s default); the AdaptBlock's matrix and translation convs are
# zeroed (weights and, through the first loop, biases: M = 0 at init, see BUILD_NOTES).
_conv_init = nn.initializers.normal(stddev=0.001)

# The 3x3 taps in row-major order as (dy, dx): the official buffer `regular_matrix` [2, 9],
# transposed. Integers, so (M - I) g is computed without rounding in either framework.
REGULAR_GRID = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], np.float32)


def _conv(features: int, kernel_size: int, dtype: Any, name: str, *, dilation: int = 1,
          use_bias: bool = False, kernel_init: Any = _conv_init) -> layers.Conv2d:
  return layers.conv2d(features, kernel_size, dilation=dilation, use_bias=use_bias,
                       kernel_init=kernel_init, dtype=dtype, name=name)


def affine_offsets(matrix: jax.Array, translation: jax.Array) -> jax.Array:
  """Deformable-conv offsets of a per-pixel affine map of the 3x3 grid (DEKR adaptive activation).

  matrix: [B, H, W, 4], M row-major (M = [[m0, m1], [m2, m3]] acting on (dy, dx));
  translation: [B, H, W, 2] as (dy, dx). Returns [B, H, W, 18]: for tap t (row-major) the
  pair (2t, 2t + 1) = M g_t - g_t + translation, (dy, dx) as `deform_conv.deform_conv2d`
  reads them; equal to the official AdaptBlock's `matmul(M, regular_matrix) - regular_matrix`
  then `+= translation` on the even (dy) and odd (dx) channels.
  """
  grid = jnp.asarray(REGULAR_GRID, matrix.dtype)
  matrix = matrix.reshape(*matrix.shape[:-1], 2, 2)
  offsets = jnp.einsum("...rc,tc->...tr", matrix, grid) - grid
  offsets = offsets + translation[..., None, :]
  return offsets.reshape(*offsets.shape[:-2], 2 * len(REGULAR_GRID))


class BasicBlock(nn.Module):
  """Two dilated 3x3 conv-BN with an identity shortcut; [B, H, W, C] -> same.

  The official head block (`conv_block.BasicBlock`, padding = dilation). DEKR's heads never
  change width, so the official `downsample` branch is never built.
  """
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    channels = x.shape[-1]
    y = _conv(channels, 3, self.dtype, "conv1", dilation=self.dilation)(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(y))
    y = _conv(channels, 3, self.dtype, "conv2", dilation=self.dilation)(y)
    y = layers.batch_norm(train, self.dtype, "bn2")(y)
    return nn.relu(y + x)


class AdaptBlock(nn.Module):
  """Adaptive convolution (arXiv:2104.02300v1 Sec. 3.2, adaptive activation); [B, H, W, C].

  3x3 convs predict M (4 channels) and t (2 channels) per pixel; a 3x3 deformable conv
  (padding = dilation = `dilation`, no bias) samples at the offsets `affine_offsets(M, t)`;
  then BN, the identity shortcut and ReLU. As in the official block the offsets do not scale
  with the dilation: the deformed tap is dilation * g + (M - I) g + t.
  """
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    zeros = nn.initializers.zeros
    matrix = _conv(4, 3, self.dtype, "transform_matrix_conv", use_bias=True, kernel_init=zeros)(x)
    translation = _conv(2, 3, self.dtype, "translation_conv", use_bias=True, kernel_init=zeros)(x)
    offsets = affine_offsets(matrix, translation)
    y = deform_conv.DeformConv2d(x.shape[-1], 3, padding=self.dilation, dilation=self.dilation,
                                 dtype=self.dtype, name="adapt_conv")(x, offsets)
    y = layers.batch_norm(train, self.dtype, "bn")(y)
    return nn.relu(y + x)


class HeatmapScaleHead(nn.Module):
  """SWAHR's scale branch: features [B, h, w, C_in] -> scales [B, h, w, `num_maps`] (compute dtype).

  1x1 conv with bias -> BN -> ReLU -> 9x9 depthwise conv with bias (padding 4), as one
  `conv_scale_layers[i]` of the official `PoseHigherResolutionNet` (SWAHR @7555826). Its
  `init_weights` gives the 1x1 conv N(0, 0.001^2) weights and zero bias (every Conv2d) and
  then zeroes the depthwise conv's weight and bias, so the scales start at exactly 0 (SAHR's
  target t^(1 + s) starts as the plain heatmap t) and only the depthwise conv gets a gradient
  on the first step.
  """
  num_maps: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = _conv(self.num_maps, 1, self.dtype, "conv", use_bias=True)(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn")(y))
    # Depthwise (groups = channels): XLA's grouped conv, ~0.6 s fwd+bwd at W32's
    # [8, 128, 128, 18] on 2 cores; `layers.Conv2d`'s fast gradient has no groups.
    return nn.Conv(self.num_maps, (9, 9), padding=4, feature_group_count=self.num_maps,
                   kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros,
                   dtype=self.dtype, param_dtype=jnp.float32, name="depthwise_conv")(y)


class DEKR(nn.Module):
  """DEKR: images [B, H, W, 3] -> ((heatmaps, offsets), aux); H, W multiples of 32.

  heatmaps [B, H/4, W/4, K + 1] (centre last) and offsets [B, H/4, W/4, 2K], float32 (see
  the module docstring for channel order). aux["features"]: the concatenated backbone
  branches [B, H/4, W/4, 15 * width] both heads read; with `scale_head`,
  aux["heatmap_scales"] [B, H/4, W/4, K + 1] float32 (SWAHR's scale maps, heatmap order).
  """
  width: int
  heatmap_channels: int  # HEAD_HEATMAP.NUM_CHANNELS
  num_keypoints: int = 17
  stages: Sequence[hrnet.StageSpec] = hrnet.OFFICIAL_STAGES
  heatmap_blocks: int = 1  # HEAD_HEATMAP.NUM_BLOCKS
  heatmap_dilation: int = 1  # HEAD_HEATMAP.DILATION_RATE
  offset_channels_per_keypoint: int = 15  # HEAD_OFFSET.NUM_CHANNELS_PERKPT
  offset_blocks: int = 2  # HEAD_OFFSET.NUM_BLOCKS
  offset_dilation: int = 1  # HEAD_OFFSET.DILATION_RATE
  final_conv_kernel: int = 1  # FINAL_CONV_KERNEL (1 or 3) of both heads' last convs
  # SWAHR's scale branch for its scale-adaptive heatmap loss (SAMKR-W32); not in DEKR.
  scale_head: bool = False
  # Recompute the backbone's blocks and modules, and each keypoint's offset branch, in the
  # backward pass (GPU/TPU; XLA's CPU compiler folds the recomputation back, BUILD_NOTES).
  remat: bool = False
  # The K keypoint branches as one nn.scan (`run_branches`): one compiled branch, not K.
  scan_branches: bool = True
  scan_modules: bool = True  # HRNetBackbone's: a stage's modules but the last as one scan
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool
               ) -> tuple[tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
    features = hrnet.HRNetBackbone(self.width, self.stages, multi_scale_output=True,
                                   remat=self.remat, scan_modules=self.scan_modules,
                                   dtype=self.dtype, name="backbone")(
                                       images, train=train)
    features = hrnet.concat_branches(features)

    x = _conv(self.heatmap_channels, 1, self.dtype, "transition_heatmap_conv")(features)
    x = nn.relu(layers.batch_norm(train, self.dtype, "transition_heatmap_bn")(x))
    for n in range(self.heatmap_blocks):
      x = BasicBlock(self.heatmap_dilation, self.dtype, name=f"head_heatmap_block{n}")(
          x, train=train)
    heatmaps = _conv(self.num_keypoints + 1, self.final_conv_kernel, self.dtype,
                     "head_heatmap_final", use_bias=True)(x)
    aux = {"features": features}
    if self.scale_head:
      # SWAHR reads the features its final heatmap conv reads; here, the heatmap head's.
      scales = HeatmapScaleHead(self.num_keypoints + 1, self.dtype, name="heatmap_scale_head")(
          x, train=train)
      aux["heatmap_scales"] = scales.astype(jnp.float32)

    offsets = self.offset_head(features, train=train)
    return (heatmaps.astype(jnp.float32), offsets.astype(jnp.float32)), aux

  def offset_head(self, features: jax.Array, *, train: bool) -> jax.Array:
    """Offsets [B, H/4, W/4, 2K] (compute dtype) from the concatenated features; called by
    `__call__`'s compact scope."""
    per_keypoint = self.offset_channels_per_keypoint
    x = _conv(self.num_keypoints * per_keypoint, 1, self.dtype, "transition_offset_conv")(features)
    x = nn.relu(layers.batch_norm(train, self.dtype, "transition_offset_bn")(x))
    return self.run_branches(x, self.num_keypoints, train=train)

  @nn.nowrap
  def offset_branch(self, x: jax.Array, suffix: str, *, train: bool) -> jax.Array:
    """One keypoint's regression branch, [B, h, w, c] -> [B, h, w, 2 K / branches], its
    modules named with `suffix` (the branch index, or "" inside the scan). Not wrapped by
    flax, so the modules belong to the scope that calls it; SAMKR overrides it."""
    for n in range(self.offset_blocks):
      block = AdaptBlock(self.offset_dilation, self.dtype, name=f"offset_feature{suffix}_block{n}")
      x = layers.apply_block(block, x, train=train, remat=self.remat)
    return _conv(2, self.final_conv_kernel, self.dtype, f"offset_final{suffix}", use_bias=True)(x)

  def run_branches(self, x: jax.Array, branches: int, *, train: bool) -> jax.Array:
    """`offset_branch` on each of `branches` equal channel chunks of x (in order), outputs
    concatenated in the same order. With `scan_branches` (and more than one branch) the
    branches run as one `nn.scan` over parameters stacked under `offset_branches/` (names
    without the index, `branch_names`): XLA compiles one branch instead of K."""
    channels = x.shape[-1] // branches
    if not self.scan_branches or branches == 1:
      return jnp.concatenate([self.offset_branch(x[..., j * channels:(j + 1) * channels], str(j),
                                                 train=train) for j in range(branches)], axis=-1)
    chunks = jnp.moveaxis(x.reshape(*x.shape[:-1], branches, channels), -2, 0)
    branch = lambda carry, chunk: (carry, self.offset_branch(chunk, "", train=train))
    _, outputs = layers.scan_repeated(branch, None, chunks, branches, "offset_branches")
    outputs = jnp.moveaxis(outputs, 0, -2)
    return outputs.reshape(*outputs.shape[:-2], branches * outputs.shape[-1])


def branch_names(offset_blocks: int) -> tuple[str, ...]:
  """The per-branch module names of the unrolled layout, `{}` the branch index (SAMKR's
  attention included)."""
  return ("offset_final{}", "offset_attention{}",
          *(f"offset_feature{{}}_block{n}" for n in range(offset_blocks)))


def scanned_layout(variables: dict[str, Any], model: DEKR) -> dict[str, Any]:
  """Variables of `model.clone(scan_branches=False, scan_modules=False)` -> those of `model`:
  with `scan_branches`, each branch's entries move under `offset_branches/` stacked in branch
  order (`layers.stacked_layout`), with `scan_modules` the backbone's too
  (`hrnet.backbone_scanned_layout`). The importers convert through the unrolled layout, which
  carries the official per-keypoint and per-module keys."""
  variables = hrnet.backbone_scanned_layout(variables, model)
  branches = 1 if getattr(model, "single_branch", False) else model.num_keypoints
  if not model.scan_branches or branches == 1:
    return variables
  names = branch_names(model.offset_blocks)
  return {collection: layers.stacked_layout(tree, names, branches, "offset_branches")
          for collection, tree in variables.items()}


# The official COCO models (experiments/coco/w32/w32_4x_reg03_bs10_512_adam_lr1e-3_coco_x140
# and w48/w48_4x_reg03_bs5_640_..., K = 17; CrowdPose uses the same heads with K = 14):
# HRNet stages (1, 4, 3) modules of 4 BasicBlocks, heatmap head `width` channels with one
# BasicBlock, offset head 15 channels per keypoint with two AdaptBlocks, 1x1 final convs.
# 29,561,182 and 65,684,590 parameters, equal to the official torch models (the DEKR README
# rounds to 29.6M and 65.7M).
dekr_w32 = functools.partial(DEKR, width=32, heatmap_channels=32)
dekr_w48 = functools.partial(DEKR, width=48, heatmap_channels=48)
