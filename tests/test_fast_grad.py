"""fast_grad: same forward as lax, gradients equal to lax autodiff (conv) or to PyTorch's
first-maximum rule (max-pool), checked on small seeded inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax import lax

from jaxpose.models import fast_grad

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, kernel, stride, padding, dilation):
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  rhs_dilation=(dilation, dilation), dimension_numbers=_DIMENSIONS)


class Conv2dGradientTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(
      dict(kernel_size=3, stride=1, dilation=1),
      dict(kernel_size=3, stride=2, dilation=1),
      dict(kernel_size=1, stride=2, dilation=1),
      dict(kernel_size=1, stride=1, dilation=1),
      dict(kernel_size=7, stride=2, dilation=1),
      dict(kernel_size=3, stride=1, dilation=2),
  )
  def test_matches_lax_autodiff(self, kernel_size, stride, dilation):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 8, 3)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((kernel_size, kernel_size, 3, 4)), jnp.float32)
    pad = dilation * (kernel_size // 2)
    padding = ((pad, pad), (pad, pad))
    weights = jnp.asarray(rng.standard_normal(_lax_conv(x, kernel, stride, padding, dilation).shape))

    def loss(conv):
      return lambda x, k: jnp.sum(conv(x, k, stride, padding, dilation) * weights)

    expected = jax.grad(loss(_lax_conv), argnums=(0, 1))(x, kernel)
    actual = self.variant(jax.grad(loss(fast_grad.conv2d), argnums=(0, 1)))(x, kernel)
    chex.assert_trees_all_close(actual, expected, atol=1e-4, rtol=1e-5)
    # A 1x1 kernel runs as a matmul: the same sums, accumulated in another order.
    chex.assert_trees_all_close(fast_grad.conv2d(x, kernel, stride, padding, dilation),
                                _lax_conv(x, kernel, stride, padding, dilation), atol=1e-5)


class MaxPoolGradientTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_example_with_ties_goes_to_the_first_maximum(self):
    # One 3x3/2 window with padding 1 on a 2x2 map of equal values: the output's single
    # pixel sees all four inputs; PyTorch gives the gradient to the first one (row-major).
    x = jnp.ones((1, 2, 2, 1))
    grad = self.variant(jax.grad(lambda x: fast_grad.max_pool(x, 3, 2, ((1, 1), (1, 1))).sum()))(x)
    chex.assert_trees_all_close(grad[0, :, :, 0], jnp.array([[1.0, 0.0], [0.0, 0.0]]))

  @chex.variants(with_jit=True, without_jit=True)
  def test_distinct_values_match_lax_autodiff(self):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.permutation(2 * 7 * 6 * 3).reshape(2, 7, 6, 3), jnp.float32)
    pool = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                       ((0, 0), (1, 1), (1, 1), (0, 0)))
    weights = jnp.asarray(rng.standard_normal(pool(x).shape), jnp.float32)
    expected = jax.grad(lambda x: jnp.sum(pool(x) * weights))(x)
    actual = self.variant(jax.grad(
        lambda x: jnp.sum(fast_grad.max_pool(x, 3, 2, ((1, 1), (1, 1))) * weights)))(x)
    chex.assert_trees_all_close(actual, expected)
    chex.assert_trees_all_close(fast_grad.max_pool(x, 3, 2, ((1, 1), (1, 1))), pool(x))
