"""`jaxpose.model_flops`: matmul and convolution FLOPs of a jaxpr, counted by hand here."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxpose import model_flops
from jaxpose.models import fast_grad
from jaxpose.models import sadinet


def _count(fn, *args) -> int:
  return model_flops.count_jaxpr(jax.make_jaxpr(fn)(*args))


def test_matmul_inside_a_scan_counts_every_iteration():
  x, w = jnp.ones((4, 8)), jnp.ones((8, 6))
  step = lambda carry, _: (carry, carry @ w)
  fn = lambda x: lax.scan(step, x, None, length=5)[1]
  assert _count(fn, x) == 5 * 2 * 4 * 8 * 6


def test_batched_dot_general():
  a, b = jnp.ones((3, 4, 5)), jnp.ones((3, 5, 7))
  assert _count(lambda a, b: jnp.einsum("bij,bjk->bik", a, b), a, b) == 2 * 3 * 4 * 5 * 7


def test_grouped_strided_dilated_convolution():
  x = jnp.ones((2, 17, 13, 8))  # NHWC
  kernel = jnp.ones((3, 3, 2, 12))  # HWIO, 4 groups of 2 input channels
  conv = lambda x, k: lax.conv_general_dilated(
      x, k, (2, 2), ((2, 2), (2, 2)), rhs_dilation=(2, 2), feature_group_count=4,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  out_h, out_w = (17 + 4 - 5) // 2 + 1, (13 + 4 - 5) // 2 + 1  # effective kernel 5
  assert conv(x, kernel).shape == (2, out_h, out_w, 12)
  assert _count(conv, x, kernel) == 2 * (2 * out_h * out_w * 12) * (3 * 3 * 2)


def test_cond_counts_its_costliest_branch():
  x = jnp.ones((4, 4))
  fn = lambda p, x: lax.cond(p, lambda x: x @ x @ x, lambda x: x @ x, x)
  assert _count(fn, True, x) == 2 * (2 * 4 * 4 * 4)


def test_gradient_of_fast_grad_conv_is_three_convolutions():
  # Forward conv, weight gradient (patches^T @ dy), input gradient (flipped-kernel conv):
  # each 2 * B * H * W * O * 3 * 3 * C FLOPs.
  x, kernel = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 5))
  loss = lambda k, x: fast_grad.conv2d(x, k, 1, ((1, 1), (1, 1)), 1).sum()
  forward = 2 * (2 * 8 * 8 * 5) * (3 * 3 * 4)
  assert _count(lambda k, x: loss(k, x), kernel, x) == forward
  assert _count(jax.value_and_grad(loss), kernel, x) == 3 * forward


def test_scanned_sadinet_stacks_count_as_the_unrolled_ones():
  images = np.zeros((1, 64, 64, 3), np.float32)
  counts = []
  for scan in (True, False):
    model = sadinet.sadinet_tiny(num_keypoints=4, num_stacks=3, scan_stacks=scan)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               images)
    counts.append(_count(functools.partial(model.apply, train=False), variables, images))
  assert counts[0] == counts[1] > 0
