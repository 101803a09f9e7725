"""Small layers shared by the jaxpose model families, with PyTorch-equal semantics.

`Deconv2x` is the stride-2 transposed convolution of the SimpleBaseline head, written as
a sub-pixel (phase) decomposition: XLA on CPU computes the weight gradient of
`nn.ConvTranspose` (an lhs-dilated convolution) 25-50x slower than PyTorch (11.5 s against
0.4 s fwd+bwd for 256 -> 256, 4x4, on [8, 32, 24, 256], 2 cores); the decomposition is a few
slices and one matmul per output phase, its weight gradient one ordinary convolution (about
1.2x PyTorch's time).
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose.models import fast_grad


def batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """torch `BatchNorm2d` defaults: running-average momentum 0.1 (flax 0.9), eps 1e-5.

  Normalises with the biased batch variance in train mode, as torch does; torch updates
  its running variance with the unbiased one, flax with the biased one (a factor
  n / (n - 1), n = B * H * W, on the running average only). Two-pass variance (not flax's
  default E[x^2] - E[x]^2), whose cancellation error grows on small feature maps.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      use_fast_variance=False, dtype=dtype, param_dtype=jnp.float32, name=name)


class Conv2d(nn.Module):
  """`torch.nn.Conv2d` in NHWC with `nn.Conv`'s parameters (`kernel` [kh, kw, C, O], `bias`).

  The forward is `lax.conv_general_dilated`; the gradient is `fast_grad.conv2d`'s, which
  avoids XLA CPU's slow weight-gradient convolution.
  """
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  use_bias: bool = False
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.kernel_size, x.shape[-1], self.features),
                        self.param_dtype)
    pad = ((self.padding, self.padding), (self.padding, self.padding))
    y = fast_grad.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, pad,
                         self.dilation)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(self.dtype)
    return y


def _call_in_mode(module: nn.Module, x: Any, train: bool) -> Any:
  return module(x, train=train)


def fenced(module: nn.Module, outputs: Any) -> Any:
  """Each array of `outputs`, `materialize`d with the first parameter `module` has created
  as the witness; a block calls it on its own output (`return fenced(self, out)`).
  Unchanged if the module has no parameters."""
  params = jax.tree.leaves(module.variables.get("params", {}))
  if not params:
    return outputs
  return jax.tree.map(lambda y: fast_grad.materialize(y, params[0]), outputs)


def apply_block(module: nn.Module, x: Any, *, train: bool, remat: bool) -> Any:
  """`module(x, train=train)`; with `remat`, the block's activations are not kept for the
  backward pass but recomputed there from its input (flax `nn.remat`, i.e. `jax.checkpoint`),
  trading about one more forward pass for the memory of the block's intermediates. The
  parameter tree, values and gradients are unchanged (tests/test_remat.py). `train` is static:
  BatchNorm's branch on it is Python control flow."""
  if not remat:
    return module(x, train=train)
  return nn.remat(_call_in_mode, static_argnums=(2,))(module, x, train)


class _ScanBody(nn.Module):
  """`body(carry, x)` as a module, so that `nn.scan` can stack what it creates."""
  body: Callable[[Any, Any], tuple[Any, Any]]

  @nn.compact
  def __call__(self, carry: Any, x: Any) -> tuple[Any, Any]:
    return self.body(carry, x)


def scan_repeated(body: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any,
                  length: int, name: str) -> tuple[Any, Any]:
  """`length` identical blocks as one `nn.scan`: returns (final carry, stacked outputs).

  `body(carry, x)` -> (carry, y) is called once per step with x = xs[i] (None for no xs) and
  builds its modules in a scope `name` of the calling module, under the names it gives them;
  every variable they create (params, batch_stats, sown intermediates) is stacked on a
  leading axis of `length`, params initialised independently per step. XLA compiles the body
  once instead of `length` times (MaxText's `scan_layers`; BUILD_NOTES, "Scanned stacks").
  `stacked_layout` maps the variables of the unrolled blocks onto this layout.
  """
  scanned = nn.scan(_ScanBody, variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                    split_rngs={"params": True}, length=length)
  return scanned(body, name=name)(carry, xs)


# The fields by which a model turns `scan_repeated` on (hourglass stacks, DEKR/SAMKR keypoint
# branches, HRNet stage modules).
SCAN_SWITCHES = ("scan_stacks", "scan_branches", "scan_modules")


def unrolled(module: nn.Module) -> nn.Module:
  """`module` with every scan switch it has turned off: the same function and parameters in
  the unrolled layout, whose names are the official per-block ones (what the importers and
  `tools.summary` read)."""
  switches = {field: False for field in SCAN_SWITCHES if getattr(module, field, False)}
  return module.clone(**switches) if switches else module


def stacked_layout(tree: dict[str, Any], names: Sequence[str], count: int, scope: str
                   ) -> dict[str, Any]:
  """One variable collection from the unrolled layout to `scan_repeated`'s.

  Block i's entries `name.format(i)` (for each of `names` present in the tree, i < `count`)
  become `tree[scope][name.format("")]`, their leaves stacked on axis 0 in block order;
  every other entry is kept. Unchanged if no block entry is present.
  """
  blocks = [{name.format(""): tree[name.format(i)] for name in names if name.format(i) in tree}
            for i in range(count)]
  if not count or not blocks[0]:
    return dict(tree)
  taken = {name.format(i) for name in names for i in range(count)}
  out = {key: value for key, value in tree.items() if key not in taken}
  out[scope] = jax.tree.map(lambda *leaves: np.stack(leaves), *blocks)
  return out


def conv2d(features: int, kernel_size: int, *, stride: int = 1, dilation: int = 1,
           use_bias: bool = False, kernel_init: Any, dtype: Any, name: str) -> Conv2d:
  """`torch.nn.Conv2d(..., padding=dilation * (kernel_size // 2))` in NHWC, float32 params.

  Explicit symmetric padding: flax "SAME" pads a stride-2 conv on an even input only at
  the end, shifting every output by half a pixel against PyTorch weights.
  """
  return Conv2d(features, kernel_size, stride=stride, padding=dilation * (kernel_size // 2),
                dilation=dilation, use_bias=use_bias, kernel_init=kernel_init, dtype=dtype,
                name=name)


def deconv_padding(kernel_size: int) -> tuple[int, int]:
  """(padding, output_padding) of a stride-2 ConvTranspose2d whose output is exactly 2H.

  torch's output size is 2 (H - 1) - 2 padding + kernel_size + output_padding; asking for
  2H with output_padding in {0, 1} gives padding = (k - 1) // 2, output_padding =
  2 + 2 padding - k: (1, 0) for k=4, (1, 1) for k=3, (0, 0) for k=2. These are the rules of
  `PoseResNet._get_deconv_cfg` in leoxiaobin/deep-high-resolution-net.pytorch @6f69e46
  (`lib/models/pose_resnet.py`), extended to any kernel size >= 2.
  """
  if kernel_size < 2:
    raise ValueError(f"Deconv2x needs kernel_size >= 2, got {kernel_size}")
  padding = (kernel_size - 1) // 2
  return padding, 2 + 2 * padding - kernel_size


def _phase_taps(kernel_size: int, padding: int, phase: int) -> list[tuple[int, int]]:
  """(kernel tap k, input offset d) pairs that reach output index 2m + phase from input m - d.

  A transposed conv sends input index h through tap k to output 2h - padding + k, so the
  output 2m + phase receives the taps with k = 2d + phase + padding from input h = m - d.
  """
  return [(k, (k - phase - padding) // 2) for k in range(kernel_size)
          if (k - phase - padding) % 2 == 0]


class Deconv2x(nn.Module):
  """Stride-2 transposed conv, bias-free: [B, H, W, C_in] -> [B, 2H, 2W, features].

  Equals `torch.nn.ConvTranspose2d(C_in, features, kernel_size, stride=2, padding=p,
  output_padding=op, bias=False)` with (p, op) = `deconv_padding(kernel_size)`, i.e.
  out[b, 2h - p + ky, 2w - p + kx, o] += x[b, h, w, i] * kernel[ky, kx, i, o], outputs
  outside [0, 2H) x [0, 2W) dropped (a scatter; no kernel flip).

  Parameter `kernel`: [kh, kw, C_in, features], float32, with
  kernel[ky, kx, i, o] = torch_weight[i, o, ky, kx], i.e.
  `kernel = torch_weight.permute(2, 3, 0, 1)` (torch's ConvTranspose2d weight is
  [in, out, kh, kw]).

  Each of the four output phases (row parity r, column parity s) gathers the taps that hit
  it (`_phase_taps`), concatenates the shifted input views along channels and applies one
  matmul: [B, H, W, taps * C_in] x [taps * C_in, features]. The phases are then interleaved
  with a reshape. Same FLOPs as the direct form and no dilated convolution in the forward or
  the input gradient; the weight gradient is one convolution (`deconv2x`'s backward).
  """
  features: int
  kernel_size: int = 4
  kernel_init: Any = nn.initializers.normal(stddev=0.001)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    padding, _ = deconv_padding(k)
    kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                        self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    return deconv2x(x, kernel, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def deconv2x(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  """`Deconv2x`'s transposed convolution, x [B, H, W, C_in], kernel [k, k, C_in, O]."""
  return _deconv2x_phases(x, kernel, padding)


def _deconv2x_phases(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
  batch, height, width, _ = x.shape
  k, features = kernel.shape[0], kernel.shape[-1]
  taps = [_phase_taps(k, padding, phase) for phase in (0, 1)]
  offsets = [d for phase_taps in taps for _, d in phase_taps]
  # Input index m - d must exist for every output row m in [0, H): pad max(d) rows before
  # and max(-d) after; the zero rows stand for the taps that fall outside the input.
  pad_before, pad_after = max(0, max(offsets)), max(0, -min(offsets))
  x_padded = jnp.pad(x, ((0, 0), (pad_before, pad_after), (pad_before, pad_after), (0, 0)))

  phase_rows = []
  for row_taps in taps:
    phase_cols = []
    for col_taps in taps:
      views, weights = [], []
      for ky, dy in row_taps:
        for kx, dx in col_taps:
          top, left = pad_before - dy, pad_before - dx
          views.append(x_padded[:, top:top + height, left:left + width, :])
          weights.append(kernel[ky, kx])
      phase = jnp.einsum("bhwi,io->bhwo", jnp.concatenate(views, axis=-1),
                         jnp.concatenate(weights, axis=0))
      phase_cols.append(phase)
    phase_rows.append(jnp.stack(phase_cols, axis=3))  # [B, H, W, 2 (s), C_out]
  # [B, H, 2 (r), W, 2 (s), C_out] -> [B, 2H, 2W, C_out]: out[2m + r, 2n + s] = phase[r][s][m, n].
  out = jnp.stack(phase_rows, axis=2)
  return out.reshape(batch, 2 * height, 2 * width, features)


def _deconv2x_forward(x, kernel, padding):
  return deconv2x(x, kernel, padding), (x, kernel)


def _deconv2x_backward(padding, residuals, grad_out):
  x, kernel = residuals
  # The input gradient: the transpose of the phase matmuls.
  input_transpose = jax.linear_transpose(lambda x: _deconv2x_phases(x, kernel, padding), x)
  (grad_x,) = input_transpose(grad_out)
  # The weight gradient, kernel[ky, kx, i, o] <- sum over b, h, w of
  # x[b, h, w, i] * grad_out[b, 2h - p + ky, 2w - p + kx, o]: the output gradient correlated
  # with the input dilated by 2. Autodiff of the phases took 85 / 38 / 149 ms for
  # SimpleBaseline-R50's three deconvs at batch 8, this 42 / 23 / 89 ms (BUILD_NOTES).
  k = kernel.shape[0]
  grad_kernel = fast_grad.correlate_over_batch(
      grad_out, x, (1, 1), ((padding, k - 2 - padding),) * 2, 2).transpose(0, 1, 3, 2)
  return grad_x, grad_kernel.astype(kernel.dtype)


deconv2x.defvjp(_deconv2x_forward, _deconv2x_backward)
