"""Convolution and max-pooling in the formulations XLA's CPU backend runs fastest.

Forward values are `nn.Conv`'s / `nn.max_pool`'s (and PyTorch's); a 1x1 convolution runs as
a matmul, equal to float rounding. Per shape, measured op by op on CPU (BUILD_NOTES,
performance; jax 0.10 with its YNN kernels):

- 1x1 kernels: forward, input and weight gradients are matmuls (1.5-3x faster than XLA's
  1x1 convolution and its weight-gradient convolution).
- stride 1, k x k: XLA's own weight-gradient convolution; the input gradient a stride-1
  convolution of the output gradient with the flipped kernel.
- strided k x k (the stem, downsampling convs): the weight gradient as one matmul of the
  shifted input views ("patches", [B*Ho*Wo, kh*kw*C]) with the output gradient (XLA's
  convolution for it is 1.2-5x slower here); the input gradient is the output gradient times
  the kernel matrix, scattered back through the transposed slicing (pads, no lhs dilation).
  The input the patches read is `materialize`d first (see there and the backward).
- max-pool gradient: XLA's select-and-scatter is slow on CPU (148 ms for 3x3/2 on
  [32, 64, 48, 64]). Here the gradient goes to the first maximum of each window, as
  PyTorch's MaxPool2d does, through one-hot masks of the window taps.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


def _window_views(x: jax.Array, window_hw: tuple[int, int], stride: int, padding: Padding,
                  dilation: int, pad_value: float) -> list[jax.Array]:
  """The kh*kw strided views of padded `x` [B, H, W, C], one per window tap, row-major."""
  padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)), constant_values=pad_value)
  batch, height, width, channels = padded.shape
  kh, kw = window_hw
  out_h = (height - dilation * (kh - 1) - 1) // stride + 1
  out_w = (width - dilation * (kw - 1) - 1) // stride + 1
  return [lax.slice(padded, (0, i * dilation, j * dilation, 0),
                    (batch, i * dilation + stride * (out_h - 1) + 1,
                     j * dilation + stride * (out_w - 1) + 1, channels), (1, stride, stride, 1))
          for i in range(kh) for j in range(kw)]


def materialize(x: jax.Array, witness: jax.Array) -> jax.Array:
  """Identity that, on CPU, makes XLA write `x` to memory; elsewhere plain identity.

  XLA's CPU fusion copies chains of cheap element-wise ops into every consumer. Between two
  convolutions of a residual network nothing else is written to memory, so the BatchNorm /
  ReLU / residual-add chain grows with depth, and each consumer (the next block, the weight
  gradient's shifted views, the backward pass) recomputes it from the start: program size,
  compile time and step time grow quadratically. 32 HRNet BasicBlocks in a row: compile
  35.8 s and step 4.0-4.7 s without this fence, 5.8 s and 2.0 s with it (BUILD_NOTES,
  performance). The price is a copy of `x` each way, so it is used where it was measured to
  pay: HRNet's blocks and modules, the hourglass's residuals, SADI-Net's RFMs and the input
  of every patches weight gradient (`conv2d`'s backward); not ResNet's block outputs, whose short
  chains over wide maps ran 15% slower fenced. A `lax.cond` is a boundary fusion cannot
  cross; its predicate must be a runtime value, or XLA folds the branch away: `witness` is
  any scalar the step reads anyway (a parameter of the block: replicated, so no device talks
  to another). Both branches return `x` bit for bit, `witness` NaN or not (the second is
  written `x * 1` so that XLA does not merge two identical branches before fusing).
  `optimization_barrier` does not work here: the CPU pipeline drops it before fusion.
  """
  def through_cond(x, witness):
    return jax.lax.cond(witness == witness, lambda v: v, lambda v: v * 1, x)

  return jax.lax.platform_dependent(x, witness.reshape(-1)[0], cpu=through_cond,
                                    default=lambda x, _: x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, dilation: int
           ) -> jax.Array:
  """x [B, H, W, C], kernel [kh, kw, C, O] -> [B, Ho, Wo, O]: `lax.conv_general_dilated`'s
  values, a 1x1 kernel as a matmul (equal to float rounding)."""
  if _is_pointwise(kernel, padding):
    # XLA CPU runs a 1x1 convolution 1.5-3x slower than the same matmul (R50's 256 -> 64 at
    # [8, 64, 48]: 16.3 ms against 5.6 ms; BUILD_NOTES, performance).
    return jnp.einsum("bhwc,co->bhwo", x[:, ::stride, ::stride, :], kernel[0, 0])
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  rhs_dilation=(dilation, dilation), dimension_numbers=_DIMENSIONS)


def _is_pointwise(kernel: jax.Array, padding: Padding) -> bool:
  return kernel.shape[:2] == (1, 1) and all(side == 0 for pair in padding for side in pair)


def correlate_over_batch(signal: jax.Array, response: jax.Array, strides: tuple[int, int],
                         padding: Padding, response_dilation: int) -> jax.Array:
  """signal [B, H, W, C], response [B, h, w, O] -> out [kh, kw, C, O], with d the dilation:
  out[i, j, c, o] = sum over b, h, w of padded_signal[b, i * strides[0] + h * d,
  j * strides[1] + w * d, c] * response[b, h, w, o]. The weight gradient of a convolution
  (`conv2d`) or of a transposed one (`layers.deconv2x`).

  One convolution written out in NHWC, the channels as its batch and `response` as its
  kernel, accumulated in float32. XLA computes a weight gradient in another layout
  (`f01b_i01o->01bf`) and rewrites it to this form before running it, except inside a loop
  (a scanned stage), where the unrewritten form ran ~100x slower (HRNet's step: 37.2 s).
  """
  out = lax.conv_general_dilated(
      signal.transpose(3, 1, 2, 0), response.astype(signal.dtype).transpose(1, 2, 0, 3),
      strides, padding, rhs_dilation=(response_dilation, response_dilation),
      dimension_numbers=_DIMENSIONS, preferred_element_type=jnp.float32)
  return out.transpose(1, 2, 0, 3)


def _conv2d_forward(x, kernel, stride, padding, dilation):
  return conv2d(x, kernel, stride, padding, dilation), (x, kernel)


def _conv2d_backward(stride, padding, dilation, residuals, grad_out):
  x, kernel = residuals
  kh, kw, _, out_channels = kernel.shape
  if stride == 1 and kh * kw > 1:
    # Stride 1: XLA's own weight-gradient convolution is the faster one here (3x3, 32 -> 32
    # channels on [8, 64, 48]: 6.4 ms against 35.7 ms for the patches below, whose nine-view
    # concatenation dominated HRNet's step).
    grad_kernel = correlate_over_batch(x, grad_out, (dilation, dilation), padding, 1)
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    pads = tuple((dilation * (k - 1) - lo, dilation * (k - 1) - hi)
                 for k, (lo, hi) in zip((kh, kw), padding))
    grad_x = lax.conv_general_dilated(grad_out, flipped.astype(grad_out.dtype), (1, 1), pads,
                                      rhs_dilation=(dilation, dilation),
                                      dimension_numbers=_DIMENSIONS)
    return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)
  # Strided and 1x1 kernels: the weight gradient as one matmul of the shifted input views
  # ("patches") with the output gradient. It reads x transposed. Unfenced, XLA fuses the
  # whole element-wise chain that produced x (BatchNorm, ReLU, a stage's residual adds) into
  # that transposing copy and recomputes it in a cache-hostile order: 70 ms for one
  # [8, 64, 48, 256] ResNet input against 3 ms for a copy. Fenced, the chain is written once
  # in its own order. SimpleBaseline-R50's step: 3.10-3.15 s -> 2.60-2.80 s (BUILD_NOTES).
  x = materialize(x, kernel)
  views = lambda x: jnp.concatenate(_window_views(x, (kh, kw), stride, padding, dilation, 0.0), -1)
  patches, views_transpose = jax.vjp(views, x)
  grad_kernel = jnp.einsum("bhwk,bhwo->ko", patches, grad_out.astype(patches.dtype),
                           preferred_element_type=jnp.float32).reshape(kernel.shape)
  # The input gradient: the output gradient times the kernel matrix, scattered back through
  # the transposed slicing (pads, no lhs dilation; for a 1x1 kernel a plain matmul).
  grad_patches = jnp.einsum("bhwo,ko->bhwk", grad_out,
                            kernel.reshape(-1, out_channels).astype(grad_out.dtype))
  (grad_x,) = views_transpose(grad_patches.astype(patches.dtype))
  return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


conv2d.defvjp(_conv2d_forward, _conv2d_backward)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x: jax.Array, window: int, stride: int, padding: Padding) -> jax.Array:
  """x [B, H, W, C] -> [B, Ho, Wo, C]; padding with -inf, as torch's MaxPool2d."""
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                           ((0, 0), padding[0], padding[1], (0, 0)))


def _max_pool_forward(x, window, stride, padding):
  out = max_pool(x, window, stride, padding)
  return out, (x, out)


def _max_pool_backward(window, stride, padding, residuals, grad_out):
  x, out = residuals
  views_fn = lambda x: _window_views(x, (window, window), stride, padding, 1, -jnp.inf)
  views, views_transpose = jax.vjp(views_fn, x)
  taken = jnp.zeros(out.shape, bool)
  grads = []
  for view in views:  # the first tap equal to the maximum takes the whole gradient
    is_first_max = (view == out) & ~taken
    taken = taken | is_first_max
    grads.append(jnp.where(is_first_max, grad_out, 0).astype(x.dtype))
  (grad_x,) = views_transpose(grads)
  return (grad_x,)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)
