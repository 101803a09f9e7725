"""SAMKR: DEKR-style bottom-up keypoint regression with subspace attention, NHWC.

Chen, Zhou, Liu, Zhang, "SAMKR: Bottom-up Keypoint Regression Pose Estimation Method Based
On Subspace Attention Module" (Sec. III-A/B, Eqs. 1-9, Figs. 1-2; variants Sec. III-C and
Tables 1-2). Everything but the offset branches is DEKR (`jaxpose.models.dekr`, HRNet/DEKR
@7a30313); the attention is ULSAM's `SubSpace` (Saini et al., WACV 2020, arXiv:2006.15102,
official Nandan91/ULSAM @9a07d68, `ulsam.py`), one per regression branch:

  backbone  HRNet, branches upsampled and concatenated: F^x [B, H/4, W/4, 15 * width] (DEKR)
  heatmaps  DEKR's heatmap head -> K + 1 maps, the centre heatmap last
  offsets   1x1 conv-BN-ReLU to k x c channels (m = k c), Chunk into k branches (Eq. 1);
            per branch: DEKR's AdaptBlocks (adaptive convolution, Eqs. 2, 7-8), then
            `SubspaceAttention` (Eqs. 3-5, 9), then a 1x1 conv with bias to the branch's
            2 offset channels; the k pairs are concatenated (Eq. 6). With `single_branch`
            (Table 1 row 1, "c = m") there is one branch of c channels whose last conv
            gives all 2k channels.

The paper names the variants g_SAMKR_c (g subspaces of s = c / g channels in each branch of
c channels); `VARIANTS` holds every row of Tables 1-2, the default is 8_SAMKR_16. Outputs
are DEKR's: heatmaps [B, H/4, W/4, K + 1] and offsets [B, H/4, W/4, 2K], (x, y) of pixel
minus keypoint for keypoint j at channels (2j, 2j + 1), in heatmap pixels.

No official SAMKR code exists; the reading of the paper (recorded in BUILD_NOTES.md):
DEKR's two AdaptBlocks per branch are the "AW" of Eq. 2 (29.58 M / 65.71 M parameters for
W32 / W48, the paper's 29.6 M / 65.7 M; one AdaptBlock, `offset_blocks=1`, would give
29.53 M, though its 44.84 / 140.77 GMACs are nearer the paper's 44.9 / 140.9 GFLOPs than the
45.73 / 142.17 of two: see BUILD_NOTES.md), and the SAM is
ULSAM's `SubSpace` as released: depthwise 1x1 conv with bias, BN, ReLU, 3x3 max-pool
(stride 1, padding 1), pointwise 1x1 conv (with bias) to one channel, BN, ReLU, softmax over
the H W positions, out = attention * x + x. Eq. 9 shows neither BN nor ReLU. The released BNs
use torch momentum 0.9 (flax 0.1), kept. Initialisation is DEKR's `init_weights` (it visits
every nn.Conv2d of the network, so it would reach the SAM's too): conv weights N(0, 0.001^2),
biases 0, BN 1 / 0, so every attention map starts almost uniform.

Layer names: DEKR's (`dekr.py` docstring; `dekr_torch_import` maps them) plus one
`offset_attention{j}` per branch (`offset_branches/offset_attention`, stacked, with DEKR's
default `scan_branches`). Its parameters stack ULSAM's g `SubSpace`s (a depthwise
1x1 conv is a per-channel scale: stored and applied as one, not as a grouped conv; the g
per-subspace BNs are one BN over the channels, since BN is per channel). Keys of the
composed torch model (official DEKR with ULSAM appended to each `offset_feature_layers[j]`
Sequential, index b = number of AdaptBlocks), `convert_torch` below:

  flax offset_attention{j}/...        torch offset_feature_layers.{j}.{b}.subspaces.{i}....
  dws_scale [C], dws_bias [C]         conv_dws.weight [s, 1, 1, 1], conv_dws.bias [s]
  bn_dws/{scale, bias, mean, var} [C] bn_dws.{weight, bias, running_mean, running_var} [s]
  point_kernel [g, s], point_bias [g] conv_point.weight [1, s, 1, 1], conv_point.bias [1]
  bn_point/{...} [g]                  bn_point.{...} [1]
  (subspace i holds channels [i s, (i + 1) s); row i of the [g, ...] arrays)
"""

import dataclasses
import functools
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose.models import dekr
from jaxpose.models import dekr_torch_import
from jaxpose.models import layers

# DEKR's `init_weights` (see the module docstring).
_conv_init = nn.initializers.normal(stddev=0.001)


def _ulsam_batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """`layers.batch_norm` but with ULSAM's `BatchNorm2d(momentum=0.9)`: torch's momentum
  weights the new batch, flax's the old average, so flax momentum = 1 - 0.9."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.1, epsilon=1e-5,
                      use_fast_variance=False, dtype=dtype, param_dtype=jnp.float32, name=name)


class SubspaceAttention(nn.Module):
  """Subspace attention inside one keypoint branch; SAMKR Eqs. (3), (4), (5), (9).

  x: [B, H, W, C] -> same shape. C is split into `num_subspaces` (g) groups of s = C / g
  channels (Eq. 3, channel order kept); each group j gets one spatial softmax map
  A_j = softmax_{H W}(ReLU(BN(PW(maxpool3x3(ReLU(BN(DW(f_j)))))))) and becomes
  A_j * f_j + f_j (Eq. 9 with ULSAM's BN and ReLU); the groups are concatenated back (Eq. 5).
  The maps [B, H, W, g] (float32, each summing to 1 over H W) are sown as
  intermediates/attention.
  """
  num_subspaces: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    batch, height, width, channels = x.shape
    groups = self.num_subspaces
    if groups < 1 or channels % groups:
      raise ValueError(f"SubspaceAttention: {channels} channels do not split into "
                       f"num_subspaces={groups} equal subspaces (c = g x s)")
    size = channels // groups
    x = x.astype(self.dtype)

    # DW^1: a depthwise 1x1 conv is a per-channel affine map.
    scale = self.param("dws_scale", _conv_init, (channels,), jnp.float32)
    shift = self.param("dws_bias", nn.initializers.zeros, (channels,), jnp.float32)
    y = x * scale.astype(self.dtype) + shift.astype(self.dtype)
    y = nn.relu(_ulsam_batch_norm(train, self.dtype, "bn_dws")(y))
    y = nn.max_pool(y, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))  # pads with -inf

    # PW^1: subspace j's s channels -> its one attention logit map.
    kernel = self.param("point_kernel", _conv_init, (groups, size), jnp.float32)
    bias = self.param("point_bias", nn.initializers.zeros, (groups,), jnp.float32)
    logits = jnp.einsum("bhwgs,gs->bhwg", y.reshape(batch, height, width, groups, size),
                        kernel.astype(self.dtype)) + bias.astype(self.dtype)
    logits = nn.relu(_ulsam_batch_norm(train, self.dtype, "bn_point")(logits))

    # Softmax over the H W positions of each (image, subspace), in float32: H W is 16k at 512.
    logits = logits.astype(jnp.float32).reshape(batch, height * width, groups)
    attention = jax.nn.softmax(logits, axis=1).reshape(batch, height, width, groups)
    self.sow("intermediates", "attention", attention)
    subspaces = x.reshape(batch, height, width, groups, size)
    out = subspaces * attention[..., None].astype(self.dtype) + subspaces
    return out.reshape(batch, height, width, channels)


class SAMKR(dekr.DEKR):
  """SAMKR: images [B, H, W, 3] -> ((heatmaps, offsets), aux); H, W multiples of 32.

  DEKR's fields and outputs (heatmaps [B, H/4, W/4, K + 1] centre last, offsets
  [B, H/4, W/4, 2K], float32; aux["features"] the concatenated backbone branches), with
  `offset_channels_per_keypoint` the paper's c (channels of each regression branch; with
  `single_branch`, of the one branch, c = m), `num_subspaces` its g (s = c / g).
  """
  offset_channels_per_keypoint: int = 16  # c
  num_subspaces: int = 8  # g
  single_branch: bool = False  # Table 1 row 1: one branch of c = m channels for all keypoints

  def offset_head(self, features: jax.Array, *, train: bool) -> jax.Array:
    """Eqs. 1-9: F^x [B, h, w, C] -> offsets [B, h, w, 2K] in the compute dtype."""
    branches = 1 if self.single_branch else self.num_keypoints
    x = layers.conv2d(branches * self.offset_channels_per_keypoint, 1, kernel_init=_conv_init,
                      dtype=self.dtype, name="transition_offset_conv")(features)
    x = nn.relu(layers.batch_norm(train, self.dtype, "transition_offset_bn")(x))
    return self.run_branches(x, branches, train=train)  # Eq. 1 (chunks), Eq. 6 (concatenation)

  @nn.nowrap
  def offset_branch(self, x: jax.Array, suffix: str, *, train: bool) -> jax.Array:
    """One regression branch (`dekr.DEKR.offset_branch`'s contract), Eqs. 2-5, 7-9."""
    for n in range(self.offset_blocks):  # Eqs. 2, 7, 8
      block = dekr.AdaptBlock(self.offset_dilation, self.dtype,
                              name=f"offset_feature{suffix}_block{n}")
      x = layers.apply_block(block, x, train=train, remat=self.remat)
    attention = SubspaceAttention(self.num_subspaces, self.dtype, name=f"offset_attention{suffix}")
    x = layers.apply_block(attention, x, train=train, remat=self.remat)  # Eqs. 3-5, 9
    outputs = 2 * self.num_keypoints // (1 if self.single_branch else self.num_keypoints)
    return layers.conv2d(outputs, self.final_conv_kernel, use_bias=True, kernel_init=_conv_init,
                         dtype=self.dtype, name=f"offset_final{suffix}")(x)


# Every row of Tables 1 and 2 (g subspaces, c channels per branch; s = c / g). Table 2's
# last row is printed "12-SAMKR_24 | g 8 | c 24 | s 2", which breaks c = g x s: the name
# (and s = 2, the row group "s fixed at 2") say g = 12.
VARIANTS = {
    "8_SAMKR_272_single_branch": dict(num_subspaces=8, offset_channels_per_keypoint=272,
                                      single_branch=True),  # Table 1: c = m = 272, s = 34
    "1_SAMKR_16": dict(num_subspaces=1, offset_channels_per_keypoint=16),  # Table 1: g = 1
    "16_SAMKR_16": dict(num_subspaces=16, offset_channels_per_keypoint=16),  # Table 1: g = c
    "2_SAMKR_16": dict(num_subspaces=2, offset_channels_per_keypoint=16),
    "4_SAMKR_16": dict(num_subspaces=4, offset_channels_per_keypoint=16),
    "8_SAMKR_16": dict(num_subspaces=8, offset_channels_per_keypoint=16),  # the default
    "8_SAMKR_8": dict(num_subspaces=8, offset_channels_per_keypoint=8),
    "8_SAMKR_24": dict(num_subspaces=8, offset_channels_per_keypoint=24),
    "4_SAMKR_8": dict(num_subspaces=4, offset_channels_per_keypoint=8),
    "12_SAMKR_24": dict(num_subspaces=12, offset_channels_per_keypoint=24),
}

# The paper's models (Sec. IV-A: W32 at 512x512, W48 at 640x640; K = 17 for COCO, 14 for
# CrowdPose): DEKR's COCO heads (heatmap head `width` channels, 1 BasicBlock; 2 AdaptBlocks
# per branch) with 8_SAMKR_16. 29,582,568 and 65,710,056 parameters (paper: 29.6 M, 65.7 M).
samkr_w32 = functools.partial(SAMKR, width=32, heatmap_channels=32)
samkr_w48 = functools.partial(SAMKR, width=48, heatmap_channels=48)


_SUBSPACE_KEY = re.compile(r"subspaces\.(\d+)\.conv_point\.weight")


def sam_variables_from_torch(state_dict: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """One official `ULSAM` (keys `{prefix}subspaces.{i}....`) -> SubspaceAttention variables.

  Returns {"params": ..., "batch_stats": ...} float32 numpy (layout: module docstring).
  Raises ValueError naming the first missing key.
  """
  count = [int(m[1]) for key in state_dict
           if key.startswith(prefix) and (m := _SUBSPACE_KEY.fullmatch(key[len(prefix):]))]
  if not count:
    raise ValueError(f"no ULSAM keys {prefix}subspaces.<i>.conv_point.weight in the state_dict")

  def stacked(name: str) -> np.ndarray:
    keys = [f"{prefix}subspaces.{i}.{name}" for i in range(max(count) + 1)]
    if absent := [key for key in keys if key not in state_dict]:
      raise ValueError(f"ULSAM state_dict lacks {absent[0]}")
    return np.stack([np.asarray(state_dict[key], np.float32).reshape(-1) for key in keys])

  def norm(name: str, collection: str) -> dict[str, np.ndarray]:
    leaves = ({"scale": "weight", "bias": "bias"} if collection == "params" else
              {"mean": "running_mean", "var": "running_var"})
    return {leaf: stacked(f"{name}.{torch}").reshape(-1) for leaf, torch in leaves.items()}

  params = {"dws_scale": stacked("conv_dws.weight").reshape(-1),
            "dws_bias": stacked("conv_dws.bias").reshape(-1),
            "bn_dws": norm("bn_dws", "params"),
            "point_kernel": stacked("conv_point.weight"),
            "point_bias": stacked("conv_point.bias").reshape(-1),
            "bn_point": norm("bn_point", "params")}
  batch_stats = {"bn_dws": norm("bn_dws", "batch_stats"),
                 "bn_point": norm("bn_point", "batch_stats")}
  return {"params": params, "batch_stats": batch_stats}


def convert_torch(state_dict: Mapping[str, Any], model: SAMKR) -> dict[str, Any]:
  """State_dict of official DEKR + official ULSAM per branch (module docstring) -> variables.

  The DEKR keys go through `dekr_torch_import.convert` (which reports missing, extra and
  mis-shaped keys); the ULSAM ones through `sam_variables_from_torch`. `single_branch` has
  no DEKR counterpart and is rejected.
  """
  if model.single_branch:
    raise ValueError("convert_torch: single_branch SAMKR has no official DEKR layout")
  ulsam = re.compile(rf"offset_feature_layers\.\d+\.{model.offset_blocks}\.subspaces\..*")
  dekr_fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(dekr.DEKR)
                 if f.init and f.name not in ("parent", "name")}
  variables = dekr_torch_import.convert(  # official per-keypoint keys; stacked at the end
      {key: value for key, value in state_dict.items() if not ulsam.fullmatch(key)},
      layers.unrolled(dekr.DEKR(**dekr_fields)))
  expected = (model.num_subspaces, model.offset_channels_per_keypoint // model.num_subspaces)
  for j in range(model.num_keypoints):
    sam = sam_variables_from_torch(state_dict, f"offset_feature_layers.{j}.{model.offset_blocks}.")
    if (found := sam["params"]["point_kernel"].shape) != expected:
      raise ValueError(f"offset_attention{j}: the state_dict's ULSAM has {found[0]} subspaces "
                       f"of {found[1]} channels, the model num_subspaces={expected[0]} of "
                       f"{expected[1]}")
    for collection, tree in sam.items():
      variables[collection][f"offset_attention{j}"] = tree
  return dekr.scanned_layout(variables, model)
