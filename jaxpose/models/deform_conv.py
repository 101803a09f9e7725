"""Deformable convolution (v1, and v2 with a modulation mask) in NHWC, by gathers and a matmul.

Dai et al., "Deformable Convolutional Networks", ICCV 2017, arXiv:1703.06211 (v3), Eq. (2)
(sampling at p + p_n + offset) and Eqs. (3)-(4) (bilinear kernel); Zhu et al., "Deformable
ConvNets v2", CVPR 2019, arXiv:1811.11168 (v2), Eq. (1) (the modulation `mask`).
Values equal those of `torchvision.ops.deform_conv2d` (pytorch/vision, CPU kernel
`torchvision/csrc/ops/cpu/deform_conv2d_kernel.cpp`):

  out[b, oy, ox, o] = bias[o] + sum_{tap (i, j), c} kernel[i, j, c, o] * mask[b, oy, ox, g*T + t]
                      * sample(x[b, :, :, c], y, x)
  y = oy * stride - padding + i * dilation + offset[b, oy, ox, g*2T + 2t]
  x = ox * stride - padding + j * dilation + offset[b, oy, ox, g*2T + 2t + 1]

with T = kh * kw taps in row-major order (t = i * kw + j), g = c // (C / G) the offset group of
channel c, and the offset channels laid out as torchvision's: per group, per tap, (dy, dx).
`sample` is bilinear with zero padding, torchvision's boundary rule: a sample with y <= -1,
y >= H, x <= -1 or x >= W is 0; otherwise each of the 4 corners (floor(y) + {0, 1},
floor(x) + {0, 1}) outside the image contributes 0.

Implementation: the 4 corners of every (output pixel, group, tap) are read with one flat
gather, combined with their bilinear weights into [B*Ho*Wo, T*C] columns, and one matmul with
the kernel as [T*C, O] gives the output. The gradient is JAX's: the gather's transpose is a
scatter-add into the input, the offset gradient flows through the bilinear weights (floor has
zero derivative), both equal to torchvision's (`deformable_col2im{,_coord}_kernel`) for samples
inside (-1, H) x (-1, W); no convolution is involved, so XLA CPU's slow conv weight-gradient is
never hit. Convolution groups (torchvision's weight [O, C / groups, kh, kw]) are not
supported: no jaxpose model uses them.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

IntPair = int | tuple[int, int]


def _pair(value: IntPair) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


# A named sub-computation, so `jaxpose.tools.summary` can leave the bilinear blend (sampling,
# not convolution, as torchvision's FLOP counts do) out of the MACs.
@jax.jit
def _sample_columns(x: jax.Array, y_coords: jax.Array, x_coords: jax.Array) -> jax.Array:
  """Bilinear samples of x [B, H, W, G, Cg] at coords [B, N, G, T] -> [B, N, G, T, Cg].

  torchvision's `bilinear_interpolate`: 0 outside (-1, H) x (-1, W), out-of-image corners 0.
  Ho and Wo are merged (N = Ho * Wo) to keep every array at rank <= 6: jaxlib 0.10.2 on CPU
  segfaults on some 7-D broadcast-reduce programs with a unit axis (G = 1 is one).
  """
  batch, height, width, groups, group_channels = x.shape
  inside = (y_coords > -1) & (y_coords < height) & (x_coords > -1) & (x_coords < width)
  # Samples outside contribute 0 anyway; clipping keeps floor() and the int cast finite.
  y_coords = jnp.clip(y_coords, -1.0, float(height))
  x_coords = jnp.clip(x_coords, -1.0, float(width))
  y_low, x_low = jnp.floor(y_coords), jnp.floor(x_coords)
  frac_y, frac_x = y_coords - y_low, x_coords - x_low

  rows = jnp.stack([y_low, y_low, y_low + 1, y_low + 1], axis=-1)  # corner order: 00 01 10 11
  cols = jnp.stack([x_low, x_low + 1, x_low, x_low + 1], axis=-1)
  weights = jnp.stack([(1 - frac_y) * (1 - frac_x), (1 - frac_y) * frac_x,
                       frac_y * (1 - frac_x), frac_y * frac_x], axis=-1)
  in_image = (rows >= 0) & (rows <= height - 1) & (cols >= 0) & (cols <= width - 1)
  weights = jnp.where(in_image & inside[..., None], weights, 0.0)

  # One flat gather over (batch, pixel, group) rows of Cg channels.
  rows = jnp.clip(rows, 0, height - 1).astype(jnp.int32)
  cols = jnp.clip(cols, 0, width - 1).astype(jnp.int32)
  batch_index = jnp.arange(batch, dtype=jnp.int32).reshape(batch, 1, 1, 1, 1)
  group_index = jnp.arange(groups, dtype=jnp.int32).reshape(1, 1, groups, 1, 1)
  flat_index = ((batch_index * height + rows) * width + cols) * groups + group_index
  corners = jnp.take(x.reshape(-1, group_channels), flat_index, axis=0, mode="clip")
  # [B, N, G, T, 4, Cg] weighted over the 4 corners
  return jnp.einsum("bngtk,bngtkc->bngtc", weights.astype(x.dtype), corners)


def deform_conv2d(x: jax.Array, offset: jax.Array, weight: jax.Array,
                  bias: jax.Array | None = None, *, stride: IntPair = 1, padding: IntPair = 0,
                  dilation: IntPair = 1, offset_groups: int = 1,
                  mask: jax.Array | None = None) -> jax.Array:
  """Deformable conv, torchvision semantics, NHWC (see the module docstring).

  x: [B, H, W, C]. offset: [B, Ho, Wo, 2 * offset_groups * kh * kw], (dy, dx) per tap.
  weight: [kh, kw, C, O] (torch's [O, C, kh, kw] transposed by (2, 3, 1, 0)). bias: [O].
  mask: [B, Ho, Wo, offset_groups * kh * kw] modulation (DCNv2), or None for all ones.
  Returns [B, Ho, Wo, O] with Ho = (H + 2 padding - dilation (kh - 1) - 1) // stride + 1.
  Coordinates are computed in float32 whatever the compute dtype, as sub-pixel positions
  need the precision; the samples and the matmul run in x's dtype.
  """
  (stride_h, stride_w), (pad_h, pad_w) = _pair(stride), _pair(padding)
  dil_h, dil_w = _pair(dilation)
  batch, height, width, channels = x.shape
  kh, kw, weight_channels, out_channels = weight.shape
  taps = kh * kw
  out_h = (height + 2 * pad_h - dil_h * (kh - 1) - 1) // stride_h + 1
  out_w = (width + 2 * pad_w - dil_w * (kw - 1) - 1) // stride_w + 1
  if weight_channels != channels or channels % offset_groups:
    raise ValueError(f"deform_conv2d: x has {channels} channels, weight {weight.shape} expects "
                     f"{weight_channels}; channels must be divisible by offset_groups="
                     f"{offset_groups} (conv groups are not supported)")
  expected = (batch, out_h, out_w, 2 * offset_groups * taps)
  if offset.shape != expected:
    raise ValueError(f"deform_conv2d: offset has shape {offset.shape}, expected {expected} "
                     f"(B, Ho, Wo, 2 * offset_groups * kh * kw)")
  if mask is not None and mask.shape != expected[:3] + (offset_groups * taps,):
    raise ValueError(f"deform_conv2d: mask has shape {mask.shape}, expected "
                     f"{expected[:3] + (offset_groups * taps,)}")

  offset = offset.astype(jnp.float32).reshape(batch, out_h, out_w, offset_groups, taps, 2)
  tap_i = jnp.repeat(jnp.arange(kh), kw)  # row-major taps, t = i * kw + j
  tap_j = jnp.tile(jnp.arange(kw), kh)
  # Integer base positions first, then the offset, in float32 as torchvision computes them.
  base_y = (jnp.arange(out_h)[:, None] * stride_h - pad_h) + tap_i[None, :] * dil_h  # [Ho, T]
  base_x = (jnp.arange(out_w)[:, None] * stride_w - pad_w) + tap_j[None, :] * dil_w  # [Wo, T]
  y_coords = base_y[None, :, None, None, :].astype(jnp.float32) + offset[..., 0]
  x_coords = base_x[None, None, :, None, :].astype(jnp.float32) + offset[..., 1]
  coords_shape = (batch, out_h * out_w, offset_groups, taps)

  grouped = x.reshape(batch, height, width, offset_groups, channels // offset_groups)
  columns = _sample_columns(grouped, y_coords.reshape(coords_shape),
                            x_coords.reshape(coords_shape))  # [B, Ho * Wo, G, T, Cg]
  if mask is not None:
    columns = columns * mask.reshape(coords_shape)[..., None].astype(columns.dtype)
  # Column order (tap, channel) matches weight.reshape(T * C, O); channel = g * Cg + c.
  columns = jnp.swapaxes(columns, 2, 3).reshape(batch, out_h, out_w, taps * channels)
  out = jnp.einsum("bhwk,ko->bhwo", columns,
                   weight.reshape(taps * channels, out_channels).astype(columns.dtype))
  if bias is not None:
    out = out + bias.astype(out.dtype)
  return out


class DeformConv2d(nn.Module):
  """`torchvision.ops.DeformConv2d` in NHWC: params `kernel` [kh, kw, C, O], optional `bias`.

  __call__(x [B, H, W, C], offset [B, Ho, Wo, 2 G kh kw], mask=None) -> [B, Ho, Wo, O]; the
  number of offset groups G is read from the offset's channels, as torchvision does. The
  default kernel init is torchvision's (kaiming_uniform with a = sqrt(5): U(+-1 / sqrt(fan_in)));
  the bias starts at 0 (torchvision draws it from the same uniform).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  use_bias: bool = False
  kernel_init: Any = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, offset: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        self.param_dtype)
    offset_groups, remainder = divmod(offset.shape[-1], 2 * k * k)
    if remainder or offset_groups == 0:
      raise ValueError(f"DeformConv2d: offset has {offset.shape[-1]} channels, not a positive "
                       f"multiple of 2 * {k} * {k}")
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    return deform_conv2d(x.astype(self.dtype), offset, kernel.astype(self.dtype), bias,
                         stride=self.stride, padding=self.padding, dilation=self.dilation,
                         offset_groups=offset_groups, mask=mask)
