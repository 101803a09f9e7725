"""Tests for jaxpose.models.deform_conv against torchvision's deformable-convolution semantics.

Two independent references, since torchvision does not import beside the torch used for
fixtures:
1. `_literal_deform_conv2d` below: plain Python loops transcribing torchvision's CPU kernel
   (pytorch/vision `torchvision/csrc/ops/cpu/deform_conv2d_kernel.cpp`,
   `deformable_im2col_kernel` + `bilinear_interpolate`), float64, NHWC.
2. `fixtures/dekr_tiny.npz` `deform/<case>/*`: outputs of a pure-tensor-op torch
   `deform_conv2d` (/work/parity/dekr/ref_deform_conv.py, written from the same C++ kernel,
   run under torch 2.13). Before producing any fixture, that script asserts its reference
   equals its own literal-loop transcription on these cases (<= 1e-12 relative in float64,
   <= 1e-5 in float32); the same reference stands in for `torchvision.ops.DeformConv2d`
   when the official DEKR model is run for `tests/test_dekr.py`. Chain: C++ kernel ->
   literal loops -> torch reference -> fixture -> jaxpose.
Plus a hand-computed boundary case (samples at y = -1, -0.999, H - 0.5, H, ...).
"""

import functools
import math
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax import test_util as jtu

from jaxpose.models import deform_conv

FIXTURE = Path(__file__).parent / "fixtures" / "dekr_tiny.npz"
FIXTURE_CASES = ("basic", "strided", "no_pad_k2")
_jit_deform_conv2d = jax.jit(deform_conv.deform_conv2d,
                             static_argnames=("stride", "padding", "dilation", "offset_groups"))


def _literal_deform_conv2d(x, offset, kernel, bias=None, stride=1, padding=0, dilation=1,
                           mask=None):
  """torchvision's definition as loops; x [B, H, W, C], offset [B, Ho, Wo, 2GT], kernel
  [kh, kw, C, O], mask [B, Ho, Wo, GT]; float64 [B, Ho, Wo, O]."""
  x, offset, kernel = (np.asarray(a, np.float64) for a in (x, offset, kernel))
  batch, height, width, channels = x.shape
  kh, kw, _, out_channels = kernel.shape
  groups = offset.shape[-1] // (2 * kh * kw)
  out_h, out_w = offset.shape[1:3]

  def sample(b, c, y, xx):
    if y <= -1 or y >= height or xx <= -1 or xx >= width:
      return 0.0
    y0, x0 = math.floor(y), math.floor(xx)
    value = 0.0
    for row, col in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
      if 0 <= row < height and 0 <= col < width:
        value += (1 - abs(y - row)) * (1 - abs(xx - col)) * x[b, row, col, c]
    return value

  out = np.zeros((batch, out_h, out_w, out_channels))
  for b in range(batch):
    for oy in range(out_h):
      for ox in range(out_w):
        for c in range(channels):
          g = c // (channels // groups)
          for i in range(kh):
            for j in range(kw):
              t = i * kw + j
              dy, dx = offset[b, oy, ox, g * 2 * kh * kw + 2 * t: g * 2 * kh * kw + 2 * t + 2]
              m = 1.0 if mask is None else mask[b, oy, ox, g * kh * kw + t]
              s = sample(b, c, oy * stride - padding + i * dilation + dy,
                         ox * stride - padding + j * dilation + dx)
              out[b, oy, ox] += m * s * kernel[i, j, c]
  return out if bias is None else out + bias


def _random_case(seed, height=5, width=6, channels=4, kernel_size=3, stride=1, padding=1,
                 dilation=1, groups=1, use_mask=False):
  """Offsets in [-3, 3], a quarter of them whole (samples on pixel centres and on -1 / H)."""
  rng = np.random.default_rng(seed)
  out_h = (height + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1
  out_w = (width + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1
  taps = kernel_size * kernel_size
  offset = rng.uniform(-3, 3, (2, out_h, out_w, 2 * groups * taps))
  offset = np.where(rng.random(offset.shape) < 0.25, np.round(offset), offset)
  case = dict(x=rng.standard_normal((2, height, width, channels)).astype(np.float32),
              offset=offset.astype(np.float32),
              kernel=rng.standard_normal((kernel_size, kernel_size, channels, 3)).astype(
                  np.float32),
              bias=rng.standard_normal(3).astype(np.float32),
              stride=stride, padding=padding, dilation=dilation)
  if use_mask:
    case["mask"] = rng.uniform(0, 1, (2, out_h, out_w, groups * taps)).astype(np.float32)
  return case, groups


def _apply(case, groups, fn=deform_conv.deform_conv2d):
  static = {k: case[k] for k in ("stride", "padding", "dilation")}
  return fn(case["x"], case["offset"], case["kernel"], case["bias"], offset_groups=groups,
            mask=case.get("mask"), **static)


class DeformConv2dTest(chex.TestCase, parameterized.TestCase):

  @parameterized.named_parameters(
      ("basic", dict(seed=0)),
      ("stride2_dilation2_groups2_mask", dict(seed=1, height=7, stride=2, padding=2, dilation=2,
                                              groups=2, use_mask=True)),
      ("kernel2_no_padding_groups4", dict(seed=2, kernel_size=2, padding=0, groups=4)),
  )
  def test_equals_literal_loops(self, params):
    case, groups = _random_case(**params)
    static = ("stride", "padding", "dilation", "offset_groups")
    fn = jax.jit(deform_conv.deform_conv2d, static_argnames=static)
    expected = _literal_deform_conv2d(**case)
    chex.assert_trees_all_close(_apply(case, groups, fn), expected,
                                atol=2e-5 * np.abs(expected).max())

  @chex.variants(with_jit=True, without_jit=True)
  def test_boundary_rule_by_hand(self):
    # 1x1 kernel of weight 1 on a 3x4 image valued 1..12: output = the sample itself.
    image = np.arange(1, 13, dtype=np.float32).reshape(1, 3, 4, 1)
    offset = np.zeros((1, 3, 4, 2), np.float32)
    cases = {  # output pixel: ((dy, dx), expected sample)
        (0, 0): ((-0.5, 0.0), 0.5 * 1),  # y = -0.5: row -1 is outside, row 0 weighs 0.5
        (0, 1): ((-1.0, 0.0), 0.0),  # y = -1 exactly: the whole sample is 0
        (0, 2): ((-0.75, 0.0), 0.25 * 3),  # y = -0.75 > -1: row 0 weighs 0.25
        (2, 0): ((0.5, 0.0), 0.5 * 9),  # y = 2.5: row 3 = H is outside
        (2, 1): ((1.0, 0.0), 0.0),  # y = 3 = H: 0
        (1, 3): ((0.0, 0.75), 0.25 * 8),  # x = 3.75: column 4 = W outside
        (1, 1): ((0.25, 0.5), 0.375 * 6 + 0.375 * 7 + 0.125 * 10 + 0.125 * 11),
        (1, 0): ((0.0, -2.0), 0.0),  # x = -2: far outside
        (1, 2): ((-1.0, 1.0), 4.0),  # y = 0, x = 3 exactly: the pixel itself
    }
    for (row, col), (delta, _) in cases.items():
      offset[0, row, col] = delta
    out = self.variant(deform_conv.deform_conv2d)(image, offset, np.ones((1, 1, 1, 1), np.float32))
    expected = image.copy()
    for (row, col), (_, value) in cases.items():
      expected[0, row, col, 0] = value
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-6)

  def test_equals_torch_reference_fixture(self):
    with np.load(FIXTURE) as data:
      for name in FIXTURE_CASES:
        prefix = f"deform/{name}/"
        stride, padding, dilation = (int(v) for v in data[prefix + "geometry"])
        kernel = data[prefix + "weight"].transpose(2, 3, 1, 0)  # torch [O, C, kh, kw]
        offset = data[prefix + "offset_nhwc"]
        groups = offset.shape[-1] // (2 * kernel.shape[0] * kernel.shape[1])
        out = _jit_deform_conv2d(
            data[prefix + "input_nhwc"], offset, kernel,
            data[prefix + "bias"] if prefix + "bias" in data else None, stride=stride,
            padding=padding, dilation=dilation, offset_groups=groups,
            mask=data[prefix + "mask_nhwc"] if prefix + "mask_nhwc" in data else None)
        expected = data[prefix + "output_nhwc"]
        error = float(np.abs(np.asarray(out) - expected).max())
        self.assertLessEqual(error, 1e-5 * np.abs(expected).max(), name)

  def test_gradients_match_finite_differences(self):
    case, groups = _random_case(3, height=4, width=4, channels=2, groups=2, use_mask=True)
    # Keep every sample off integer coordinates, where bilinear sampling has kinks.
    frac = case["offset"] - np.floor(case["offset"])
    case["offset"] = np.floor(case["offset"]) + np.clip(frac, 0.2, 0.8)
    fn = functools.partial(deform_conv.deform_conv2d, stride=1, padding=1, offset_groups=groups)
    jtu.check_grads(jax.jit(lambda x, o, k, m: fn(x, o, k, mask=m)),
                    (case["x"], case["offset"], case["kernel"], case["mask"]), order=1,
                    modes=("rev",), eps=1e-2, atol=5e-2, rtol=5e-2)

  def test_samples_outside_get_no_gradient(self):
    x = jnp.ones((1, 3, 3, 1))
    offset = jnp.full((1, 3, 3, 2), 10.0)  # every sample far outside the image
    loss = lambda x, o: deform_conv.deform_conv2d(x, o, jnp.ones((1, 1, 1, 1))).sum()
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, offset)
    chex.assert_trees_all_equal(grads, (jnp.zeros_like(x), jnp.zeros_like(offset)))

  def test_module_params_init_and_dtype(self):
    module = deform_conv.DeformConv2d(5, 3, padding=1, use_bias=True, dtype=jnp.bfloat16)
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 4)).astype(np.float32)
    offset = jnp.zeros((2, 6, 6, 2 * 2 * 9))  # two offset groups, read from the channels
    out, variables = jax.jit(module.init_with_output)(jax.random.key(1, impl="rbg"), x, offset)
    kernel = variables["params"]["kernel"]
    chex.assert_shape(kernel, (3, 3, 4, 5))
    self.assertEqual((kernel.dtype, out.dtype), (jnp.float32, jnp.bfloat16))
    chex.assert_shape(out, (2, 6, 6, 5))
    # torchvision's init: U(+-1 / sqrt(C * kh * kw)).
    self.assertLessEqual(float(jnp.abs(kernel).max()), 1 / 6)
    self.assertGreater(float(jnp.abs(kernel).max()), 0.8 / 6)
    # Zero offsets: an ordinary 3x3 convolution with zero padding.
    conv = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    chex.assert_trees_all_close(out.astype(jnp.float32), conv, atol=3e-2, rtol=3e-2)

  def test_rejects_bad_offset_shape(self):
    with self.assertRaisesRegex(ValueError, r"offset has shape \(1, 4, 4, 16\), expected "
                                r"\(1, 4, 4, 18\)"):
      deform_conv.deform_conv2d(jnp.ones((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 16)),
                                jnp.ones((3, 3, 2, 1)), padding=1)
    with self.assertRaisesRegex(ValueError, "not a positive multiple of 2 \\* 3 \\* 3"):
      deform_conv.DeformConv2d(2).init(jax.random.key(0), jnp.ones((1, 4, 4, 2)),
                                       jnp.zeros((1, 2, 2, 10)))


if __name__ == "__main__":
  absltest.main()
