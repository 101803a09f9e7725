"""`fast_grad.materialize` / `fenced`: an exact identity whose CPU lowering keeps XLA from
copying a residual chain into every consumer (the fused programs stop growing with depth)."""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose.models import hrnet
from jaxpose.models import fast_grad


def test_identity_in_value_and_gradient_for_any_witness():
  x = jnp.array([[-0.0, 0.0, 1.5, -2.25], [jnp.inf, -jnp.inf, jnp.nan, 3e-39]], jnp.float32)
  for witness in (jnp.float32(0.3), jnp.float32(jnp.nan), jnp.ones((2, 3))):
    out = jax.jit(fast_grad.materialize)(x, witness)
    # Bit for bit: signed zeros, infinities, NaN and a subnormal come back unchanged.
    np.testing.assert_array_equal(np.asarray(out).view(np.uint32), np.asarray(x).view(np.uint32))
  grad = jax.grad(lambda v: jnp.sum(fast_grad.materialize(v, jnp.float32(2.0)) * v))(x[:1])
  chex.assert_trees_all_close(grad, 2 * x[:1])


class _Chain(nn.Module):
  depth: int

  @nn.compact
  def __call__(self, x, *, train):
    for n in range(self.depth):
      x = hrnet.BasicBlock(name=f"block{n}")(x, train=train)
    return x


def _largest_fusion_and_conditionals(depth: int) -> tuple[int, int]:
  model = _Chain(depth)
  x = jnp.ones((2, 8, 8, 4))
  variables = model.init(jax.random.key(0), x, train=False)

  def loss(params):
    y, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(y ** 2)

  text = jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()
  computations = re.split(r"\n(?=\S)", text)
  largest = max(c.count("\n") for c in computations if c.startswith("%fused"))
  return largest, len(re.findall(r" conditional\(", text))


def test_fused_programs_do_not_grow_with_depth_on_cpu():
  if jax.default_backend() != "cpu":  # other backends lower `materialize` to the identity
    return
  shallow, fences_shallow = _largest_fusion_and_conditionals(2)
  deep, fences_deep = _largest_fusion_and_conditionals(6)
  # Per BasicBlock: one fence on its output in the forward pass and one in the backward
  # pass (its two 3x3 stride-1 convolutions' weight gradients are convolutions, which read
  # their input from memory; only the patches of strided ones are fenced).
  assert (fences_shallow, fences_deep) == (2 * 2, 6 * 2)
  # Without the fences the largest fusion grows with the chain (measured: 78 lines at 4
  # blocks, 146 at 8, 282 at 16); with them it is one block's worth at any depth.
  assert deep == shallow, (shallow, deep)
