"""Tests for `python -m jaxpose.tools.summary` (parameter and MAC counts).

Golden numbers: the hand formulas in each test, and the official `get_model_summary`
(leoxiaobin/deep-high-resolution-net.pytorch @6f69e46, `lib/utils/utils.py`), run unchanged
under torch 2.13 on CPU on the official `pose_hrnet` W32/W48 and `pose_resnet` 50 at
1x3x256x192 (script outside the repo). It printed 7.119964599609375, 14.614151000976562 and
8.9912109375 "GFLOPs", i.e. 7,645,003,776, 15,691,825,152 and 9,654,239,232 multiply-adds
(x 2^30); the HRNets have no transposed conv, so those are also their true MACs, and
pose_resnet 50's true MACs are 4,017,094,656 (convs) + 5,637,144,576 / 4 (deconvs, counted
4x by that convention) = 5.43 G. The other rows are the papers' figures (DEKR Table 1,
Res2Net-50 26w4s on ImageNet, Stacked Hourglass at K = 16).
"""

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl.testing import absltest
from absl.testing import parameterized

from jaxpose import models
from jaxpose.models import fast_grad
from jaxpose.models import layers
from jaxpose import macs
from jaxpose.tools import summary

REPO = Path(__file__).resolve().parent.parent
RELATIVE_TOLERANCE = 0.005

# (preset, H, W, K, params in M, true GMACs or None, official get_model_summary multiply-adds
# or None). SAMKR's GMACs: the official get_model_summary on official DEKR with ULSAM
# attached (45.714 G, the DEKR convention equals true MACs for a model without transposed
# convs); its params: the paper's 29.6 / 65.7 M, counted exactly with the composed torch code.
ACCEPTANCE = (
    ("simplebaseline_r50", 256, 192, 17, 34.00, 5.43, 9_654_239_232),
    ("hrnet_w32", 256, 192, 17, 28.54, 7.65, 7_645_003_776),
    ("hrnet_w48", 256, 192, 17, 63.60, 15.69, 15_691_825_152),
    ("dekr_w32", 512, 512, 17, 29.56, 45.39, None),
    ("dekr_w48", 640, 640, 17, 65.68, 141.5, None),
    ("hourglass_8", 256, 256, 16, 25.43, None, None),
    ("res2net50_26w4s", 224, 224, 17, 25.70, 4.26, None),
    ("samkr_w32", 512, 512, 17, 29.58, 45.71, None),
    ("samkr_w48", 640, 640, 17, 65.71, None, None),
)


@functools.cache
def _preset_summary(name: str, height: int, width: int, num_keypoints: int) -> summary.Summary:
  module, _ = summary.build_model(name, num_keypoints)
  return summary.summarize_module(module, height, width, name)


def _assert_relative(test: absltest.TestCase, actual: float, expected: float, what: str):
  test.assertLessEqual(abs(actual / expected - 1), RELATIVE_TOLERANCE,
                       f"{what}: {actual} vs expected {expected}")


class _ConvThenDense(nn.Module):
  """3x3 conv 3 -> 8 (with bias, padding 1), global mean, Dense 8 -> 4."""

  @nn.compact
  def __call__(self, images, *, train: bool):
    del train
    x = nn.Conv(8, (3, 3), padding=1, name="conv")(images)
    return nn.Dense(4, name="dense")(x.mean(axis=(1, 2)))


class _Wrap(nn.Module):
  """Applies one layer built by `make` (modules take no `train`)."""
  make: Callable[[], nn.Module]

  @nn.compact
  def __call__(self, images, *, train: bool):
    del train
    return self.make()(images)


class _MatmulInitialised(nn.Module):
  """images [1, H, W, 3] @ w [3, 5], where w's initializer itself does a 3x3 @ 3x5 matmul."""

  @nn.compact
  def __call__(self, images, *, train: bool):
    del train
    init = lambda key, shape: jax.random.normal(key, (3, 3)) @ jax.random.normal(key, shape)
    return images @ self.param("w", init, (3, 5))


class CountTest(parameterized.TestCase):

  def test_conv_and_dense_by_hand(self):
    result = summary.summarize_module(_ConvThenDense(), 8, 8)
    conv = 8 * 8 * 8 * (3 * 3 * 3)  # output elements x (in channels x kernel area)
    dense = 4 * 8
    self.assertEqual(result.macs, conv + dense)
    self.assertEqual(result.hrnet_convention_macs, conv + dense)
    self.assertEqual(result.params, (3 * 3 * 3 * 8 + 8) + (8 * 4 + 4))

  def test_grouped_conv(self):
    depthwise = lambda: nn.Conv(8, (3, 3), padding=1, feature_group_count=4, use_bias=False)
    result = summary.summarize_module(_Wrap(lambda: nn.Sequential([nn.Dense(8), depthwise()])),
                                      5, 6)
    dense = 5 * 6 * 8 * 3
    grouped = 5 * 6 * 8 * (8 // 4 * 9)  # output elements x (in channels / groups) x area
    self.assertEqual(result.macs, dense + grouped)
    self.assertEqual(result.hrnet_convention_macs, dense + grouped)

  def test_custom_vjp_conv_is_counted_once(self):
    x = jnp.zeros((1, 6, 5, 4))
    kernel = jnp.zeros((3, 3, 4, 7))
    closed = jax.make_jaxpr(lambda x, k: fast_grad.conv2d(x, k, 1, ((1, 1), (1, 1)), 1))(x, kernel)
    self.assertIn("custom_vjp_call", [eqn.primitive.name for eqn in closed.jaxpr.eqns])
    self.assertEqual(macs.jaxpr_macs(closed), 6 * 5 * 7 * (4 * 9))
    # The same conv inside a module (layers.Conv2d), stride 2: 3x3 output positions.
    result = summary.summarize_module(_Wrap(lambda: layers.Conv2d(7, 3, stride=2, padding=1)), 6, 5)
    self.assertEqual(result.macs, 3 * 3 * 7 * (3 * 9))
    self.assertEqual(result.hrnet_convention_macs, result.macs)

  @parameterized.parameters(4, 3, 2)
  def test_transposed_conv_true_cost(self, kernel_size):
    height, width, features = 5, 7, 4
    true_macs = (height * width * 3) * features * kernel_size**2  # input elements x O x area
    # torch's ConvTranspose2d rule: weight elements x output area (2H x 2W).
    hrnet_macs = (kernel_size**2 * 3 * features) * (2 * height) * (2 * width)
    deconv = summary.summarize_module(
        _Wrap(lambda: layers.Deconv2x(features, kernel_size)), height, width)
    self.assertEqual((deconv.macs, deconv.hrnet_convention_macs), (true_macs, hrnet_macs))
    # The lhs-dilated form (nn.ConvTranspose, "SAME": output 2H x 2W) counts the same.
    dilated = summary.summarize_module(
        _Wrap(lambda: nn.ConvTranspose(features, (kernel_size,) * 2, strides=(2, 2),
                                       use_bias=False)), height, width)
    self.assertEqual((dilated.macs, dilated.hrnet_convention_macs), (true_macs, hrnet_macs))

  def test_initializer_macs_are_not_counted(self):
    result = summary.summarize_module(_MatmulInitialised(), 4, 6)
    self.assertEqual(result.macs, 4 * 6 * 5 * 3)
    self.assertEqual(result.hrnet_convention_macs, 4 * 6 * 5 * 3)
    self.assertEqual(result.notes, (f"{3 * 5 * 3} MACs feed the initial variables and are not "
                                    "counted",))

  def test_interpolation_is_not_counted(self):
    resize = lambda x: jax.image.resize(x, (1, 8, 8, 4), "bilinear")
    self.assertEqual(macs.jaxpr_macs(jax.make_jaxpr(resize)(jnp.zeros((1, 4, 4, 4)))), 0)

  def test_scan_body_counts_times_length(self):
    def repeated_matmul(x, w):
      return jax.lax.scan(lambda carry, _: (carry @ w, None), x, None, length=3)[0]
    closed = jax.make_jaxpr(repeated_matmul)(jnp.zeros((2, 5)), jnp.zeros((5, 5)))
    self.assertEqual(macs.jaxpr_macs(closed), 3 * (2 * 5 * 5))

  @parameterized.named_parameters((row[0], *row) for row in ACCEPTANCE)
  def test_acceptance(self, name, height, width, num_keypoints, params_m, gmacs, official):
    self.assertIn(name, models.MODELS)
    result = _preset_summary(name, height, width, num_keypoints)
    _assert_relative(self, result.params / 1e6, params_m, f"{name} params (M)")
    if gmacs is not None:
      _assert_relative(self, result.macs / 1e9, gmacs, f"{name} GMACs")
    if official is not None:
      self.assertEqual(result.hrnet_convention_macs, official)
    self.assertEqual(result.notes, ())


def _run_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxpose.tools.summary", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


class CliTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("unknown_model", ["--model", "no_such_model"],
       "unknown model 'no_such_model'; valid names: "),
      ("bad_input", ["--model", "hrnet_w32", "--input", "256"], "--input must be HxW"),
  )
  def test_user_error_is_one_line(self, args, expected):
    result = _run_cli(*args)
    self.assertEqual(result.returncode, 2)
    self.assertEqual(result.stdout, "")
    lines = result.stderr.strip().splitlines()
    self.assertLen(lines, 1, result.stderr)
    self.assertIn(expected, lines[0])
    if "valid names" in expected:
      self.assertIn("hrnet_w32", lines[0])

  def test_json_output_parses(self):
    result = _run_cli("--model", "simplebaseline_r18", "--input", "64x64", "--num_keypoints", "5",
                      "--json")
    self.assertEqual(result.returncode, 0, result.stderr)
    data = json.loads(result.stdout)
    expected = _preset_summary("simplebaseline_r18", 64, 64, 5)
    self.assertEqual((data["model"], data["input"], data["num_keypoints"]),
                     ("simplebaseline_r18", [64, 64], 5))
    self.assertEqual((data["params"], data["macs"], data["hrnet_convention_macs"]),
                     (expected.params, expected.macs, expected.hrnet_convention_macs))
    self.assertAlmostEqual(data["gmacs"], expected.macs / 1e9, places=4)
    self.assertAlmostEqual(data["hrnet_convention_printed"],
                           expected.hrnet_convention_macs / 2**30, places=4)


if __name__ == "__main__":
  absltest.main()
