"""SAN: ResNet + self-attention + deconvolution head + integral regression, 2D or 3D. NHWC.

"Self-Attention Network for Human Pose Estimation" (SAN), Applied Sciences 11(4):1826
(2021), Sec. 3.2-3.5 and Fig. 1-2. No official SAN code is public; every part it names
follows the code it builds on:

  backbone   ResNet-50 / ResNet-152 conv1..conv5, no FC (Sec. 3.2): `resnet.ResNet`, the
             torchvision layout, so ImageNet weights load through `torch_import`.
  attention  `SelfAttention` after conv5 (Sec. 3.3, eq. 1-4): the SAGAN block
             (Zhang et al., arXiv:1805.08318; heykeetae/Self-Attention-GAN @8714a54
             `sagan_models.py: Self_Attn`, which SAN's eq. 1-4 restate).
  head       3 x (4x4 stride-2 deconv, no bias -> BN -> ReLU) of 256 filters and a 1x1 conv
             with bias to K (2D) or K * D (3D) maps (Sec. 3.5): the `DeconvHead` of
             JimmySuen/integral-human-pose @ad3f875 `common_pytorch/base_modules/
             deconv_head.py` (= SimpleBaseline's head), weights N(0, 0.001^2).
  integral   soft-argmax of the maps, eq. 5-6: `jaxpose.codecs.integral`.

Output size: input / 4, e.g. 64x64 for ResNet-50 at 256x256 (Table 1 a-d). The paper's
"72 x 72 for ResNet-152" with input "288 x 384" is the official integral-human-pose R152
config (`patch_width: 288, patch_height: 384, depth_dim: 72`): heatmaps 72 wide x 96 high
with 72 depth bins, i.e. 72 x 72 is the x-z plane; its `get_joint_location_result` assumes
depth bins == heatmap width, hence `san_r152_3d` has D = 72 and `san_r50_3d` D = 64.

Flax names and their PyTorch counterparts (the backbone rows are `torch_import`'s rules, so a
torchvision ImageNet state_dict converted for `resnet.ResNet(depth)` drops in under
"backbone"):

  flax                                   torch
  backbone/...                           torchvision resnet{50,152} keys (see resnet.py)
  attention/{query,key,value}_conv       SAGAN Self_Attn {query,key,value}_conv (with bias)
  attention/delta  (shape [])            SAGAN Self_Attn gamma (shape [1])
  deconv{i}, deconv{i}_bn                integral-human-pose head.features.{3i, 3i+1}
  final_layer                            integral-human-pose head.features.9
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose.codecs import integral
from jaxpose.models import layers
from jaxpose.models import resnet
from jaxpose.models import simple_baseline

# The head is `simple_baseline.deconv_head`, whose init (deconv and final conv weights
# N(0, 0.001^2), final bias 0, BN 1 / 0) is also integral-human-pose's `DeconvHead`'s.


def _torch_conv_inits(fan_in: int) -> tuple[Any, Any]:
  """torch `nn.Conv2d` default init (SAGAN keeps it): kaiming-uniform(a = sqrt(5)) weights
  and bias, both U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"), bias_init


class SelfAttention(nn.Module):
  """Self-attention over all spatial positions with a zero-initialised gate; SAN eq. 1-4.

  x: [B, H, W, C] -> (o [B, H, W, C] in x's dtype, attention [B, N, N] float32), N = H * W
  in row-major (h, w) order. Paper symbols -> code:
    eq. 1  W_q = beta_q x, W_k = beta_k x (1x1 convs to C / `reduction`), W_v = beta_v x (C)
    eq. 2  A = W_q^T W_k: energy[b, i, j] = <q[b, i], k[b, j]>, WITHOUT the 1/sqrt(d_k) of
           scaled dot-product attention (the paper drops it on purpose; SAGAN has none)
    eq. 3  row softmax: attention[b, i, :] sums to 1; out[b, i] = sum_j attention[b, i, j] v[b, j]
    eq. 4  o = delta * out + x, scalar delta initialised to 0, so the block starts as the
           identity (exactly: 0 * out + x == x for finite out).
  Attention runs within each image (eq. 1's batch axis is not attended over: SAGAN does
  not, and batch-mixing would make eval outputs depend on the batch). The energies and
  the softmax are float32 whatever `dtype` is: unscaled 256-d dot products overflow bf16.
  """
  reduction: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    batch, height, width, channels = x.shape
    if channels % self.reduction:
      raise ValueError(f"SelfAttention needs channels divisible by reduction={self.reduction}, "
                       f"got input of shape {x.shape} (NHWC)")
    kernel_init, bias_init = _torch_conv_inits(channels)

    def conv1x1(features: int, name: str) -> jax.Array:
      y = layers.Conv2d(features, 1, use_bias=True, kernel_init=kernel_init,
                        bias_init=bias_init, dtype=self.dtype, name=name)(x)
      return y.reshape(batch, height * width, features)

    query = conv1x1(channels // self.reduction, "query_conv")
    key = conv1x1(channels // self.reduction, "key_conv")
    value = conv1x1(channels, "value_conv")
    energy = jnp.einsum("bic,bjc->bij", query.astype(jnp.float32), key.astype(jnp.float32))
    attention = jax.nn.softmax(energy, axis=-1)
    attended = jnp.einsum("bij,bjc->bic", attention.astype(self.dtype), value)
    delta = self.param("delta", nn.initializers.zeros, (), jnp.float32)
    attended = attended.reshape(x.shape).astype(x.dtype)
    return delta.astype(x.dtype) * attended + x, attention


class SAN(nn.Module):
  """Top-down SAN: images [B, H, W, 3] -> (heatmap logits, aux); H, W multiples of 32.

  2D (`depth_bins` = 0): logits [B, H/4, W/4, K], aux["coords"] [B, K, 2].
  3D (`depth_bins` = D > 0): volumetric logits [B, H/4, W/4, K * D], channel k * D + d
  (joint-major; reshape to [B, h, w, K, D] for a volume; kept rank 4 so nothing mistakes
  it for stacked [B, S, h, w, K] heatmaps), aux["coords"] [B, K, 3].
  Coordinates are the integral (soft-argmax, eq. 5-6) expectations normalised to
  [-0.5, 0.5) as `jaxpose.codecs.integral` documents (`integral.decode` -> input pixels,
  `integral.to_heatmap_xy` -> heatmap pixels); the L1 loss reads them
  (`jaxpose.losses.integral_l1`). Heatmaps are float32 logits, not probabilities: an
  argmax decoder must not treat a negative maximum as "no detection".
  aux also holds "backbone" (conv5 features [B, H/32, W/32, C], `dtype`) and "attention"
  ([B, N, N] float32, N = H/32 * W/32).
  """
  depth: int
  num_keypoints: int
  depth_bins: int = 0
  num_deconv_layers: int = 3
  num_deconv_filters: Sequence[int] = (256, 256, 256)
  deconv_kernel: int = 4
  remat: bool = False  # the backbone's blocks recomputed in the backward pass
  attention_reduction: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    if len(self.num_deconv_filters) != self.num_deconv_layers:
      raise ValueError(f"num_deconv_filters {tuple(self.num_deconv_filters)} needs one entry per "
                       f"deconv layer (num_deconv_layers={self.num_deconv_layers})")
    if self.depth_bins < 0:
      raise ValueError(f"depth_bins must be 0 (2D) or the number of depth bins, got "
                       f"{self.depth_bins}")
    height, width = images.shape[1:3]
    if height % 32 or width % 32:
      raise ValueError(f"SAN needs H and W divisible by 32, got images of shape {images.shape} "
                       "(NHWC); e.g. 256x256, 384x288, 64x64.")

    features = resnet.ResNet(self.depth, remat=self.remat, dtype=self.dtype,
                             name="backbone")(images, train=train)
    x, attention = SelfAttention(self.attention_reduction, dtype=self.dtype,
                                 name="attention")(features)
    maps_per_joint = max(self.depth_bins, 1)
    heatmaps = simple_baseline.deconv_head(x, self.num_deconv_filters, self.deconv_kernel,
                                           self.num_keypoints * maps_per_joint, train=train,
                                           dtype=self.dtype).astype(jnp.float32)
    if self.depth_bins:
      coords = integral.soft_argmax_3d(heatmaps, self.num_keypoints)
    else:
      coords = integral.soft_argmax_2d(heatmaps)
    return heatmaps, {"coords": coords, "backbone": features, "attention": attention}


# Sec. 3.5 / Table 1: ResNet-50 at 256x256 -> 64x64 maps, ResNet-152 at 288x384 (w x h) ->
# 72 x 96; 3D depth bins = heatmap width, as the official configs (64 and 72).
san_r50 = functools.partial(SAN, depth=50)
san_r152 = functools.partial(SAN, depth=152)
san_r50_3d = functools.partial(SAN, depth=50, depth_bins=64)
san_r152_3d = functools.partial(SAN, depth=152, depth_bins=72)
