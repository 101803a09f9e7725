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

Implementation: the 2 x 2 corner window of every (output pixel, group, tap) is read with one
gather from the zero-ringed image, blended with its bilinear weights into [B*Ho*Wo, T*C]
columns, and one matmul with the kernel as [T*C, O] gives the output. The gradient is JAX's:
the gather's transpose is a scatter-add into the input, the offset gradient flows through the
bilinear weights (floor has zero derivative), both equal to torchvision's
(`deformable_col2im{,_coord}_kernel`) for samples inside (-1, H) x (-1, W); no convolution is
involved, so XLA CPU's slow conv weight-gradient is
never hit. Convolution groups (torchvision's weight [O, C / groups, kh, kw]) are not
supported: no jaxpose model uses them.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxpose.models import fast_grad

IntPair = int | tuple[int, int]


def _pair(value: IntPair) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


# A named sub-computation, so `jaxpose.tools.summary` can leave the bilinear blend (sampling,
# not convolution, as torchvision's FLOP counts do) out of the MACs.
@jax.jit
def _sample_columns(x: jax.Array, y_coords: jax.Array, x_coords: jax.Array,
                    witness: jax.Array) -> jax.Array:
  """Bilinear samples of x [B, H, W, G, Cg] at coords [B, N, G, T] -> [B, N, G, T, Cg].

  torchvision's `bilinear_interpolate`: 0 outside (-1, H) x (-1, W), out-of-image corners 0.
  The image gets a one-pixel ring of zeros, so a sample inside (-1, H) x (-1, W) reads its
  2 x 2 corner window in one gather slice (out-of-image corners read the ring's zeros) and only
  samples wholly outside need a mask. The windows and the weights are `materialize`d (witness:
  any parameter, here the kernel) and blended by element-wise multiply-adds: unfenced, XLA CPU
  fused the coordinate arithmetic and the gather into each of the blend's consumers (forward
  and backward) and recomputed them there; a batched einsum over the corners instead
  materialised and transposed a [.., 4, Cg] tensor. SAMKR's synthetic train step (17 branches
  x 2 adaptive convs): 5.8 s -> 3.7 s under the profiler (BUILD_NOTES, performance).
  """
  batch, height, width, groups, group_channels = x.shape
  inside = (y_coords > -1) & (y_coords < height) & (x_coords > -1) & (x_coords < width)
  # Samples outside contribute 0 anyway; clipping keeps floor() and the int cast finite.
  y_coords = jnp.clip(y_coords, -1.0, float(height))
  x_coords = jnp.clip(x_coords, -1.0, float(width))
  y_low, x_low = jnp.floor(y_coords), jnp.floor(x_coords)
  frac_y, frac_x = y_coords - y_low, x_coords - x_low
  # torchvision's corner weights, zero for a sample wholly outside; [B N G T, 1] each.
  inside = inside.reshape(-1, 1).astype(x.dtype)
  frac_y = frac_y.reshape(-1, 1).astype(x.dtype)
  frac_x = frac_x.reshape(-1, 1).astype(x.dtype)
  high_y, high_x = frac_y * inside, frac_x
  low_y, low_x = (1 - frac_y) * inside, 1 - frac_x
  weights = fast_grad.materialize(jnp.concatenate(
      [low_y * low_x, low_y * high_x, high_y * low_x, high_y * high_x], axis=1), witness)

  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
  # Window start in the padded image: floor + 1, in [0, H + 1]; H + 1 only for a sample
  # wholly outside (weight 0), so clipping it to H changes nothing.
  start_y = jnp.clip(y_low.astype(jnp.int32) + 1, 0, height)
  start_x = jnp.clip(x_low.astype(jnp.int32) + 1, 0, width)
  batch_index = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None, None, None],
                                 start_y.shape)
  group_index = jnp.broadcast_to(jnp.arange(groups, dtype=jnp.int32)[None, None, :, None],
                                 start_y.shape)
  indices = jnp.stack([batch_index, start_y, start_x, group_index], axis=-1).reshape(-1, 4)
  windows = lax.gather(
      padded, indices,
      lax.GatherDimensionNumbers(offset_dims=(1, 2, 3), collapsed_slice_dims=(0, 3),
                                 start_index_map=(0, 1, 2, 3)),
      slice_sizes=(1, 2, 2, 1, group_channels),
      mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS).reshape(-1, 4, group_channels)
  windows = fast_grad.materialize(windows, witness)
  # torchvision's sum order, w00 v00 + w01 v01 + w10 v10 + w11 v11 (a jnp.sum over the window
  # axes became a YNN reduction that fused, and recomputed, its broadcasts: slower).
  columns = (weights[:, 0:1] * windows[:, 0] + weights[:, 1:2] * windows[:, 1]
             + weights[:, 2:3] * windows[:, 2] + weights[:, 3:4] * windows[:, 3])
  return columns.reshape(y_coords.shape + (group_channels,))


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
                            x_coords.reshape(coords_shape), weight)  # [B, Ho * Wo, G, T, Cg]
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
