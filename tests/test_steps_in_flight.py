"""The train loop bounds the steps queued on the device (`train.wait_for_steps_in_flight`):
XLA reserves each enqueued step's temporaries, so an unbounded queue multiplies memory."""

import jax
import jax.numpy as jnp
import pytest

from jaxpose import train


@jax.jit
def _slow_step(x):
  # ~tens of ms of matmuls on this CPU: long enough that dispatch runs ahead of it.
  for _ in range(12):
    x = jnp.tanh(x @ x) * 0.5
  return x


def _unfinished(pending) -> int:
  return sum(not leaf.is_ready() for leaf in jax.tree.leaves(pending))


def test_without_waiting_dispatch_runs_ahead():
  # The control: proves the device queue does grow, so the bounded test below can fail.
  x = jnp.ones((384, 384), jnp.float32) / 384
  jax.block_until_ready(_slow_step(x))  # compile outside the measurement
  pending = []
  for _ in range(8):
    x = _slow_step(x)
    pending.append(x)
  assert _unfinished(pending) > 2
  jax.block_until_ready(pending)


@pytest.mark.parametrize("limit", [1, 2])
def test_wait_before_dispatch_keeps_at_most_limit_steps_in_flight(limit):
  x = jnp.ones((384, 384), jnp.float32) / 384
  jax.block_until_ready(_slow_step(x))
  pending, worst = [], 0
  for _ in range(8):
    train.wait_for_steps_in_flight(pending, limit)
    worst = max(worst, _unfinished(pending))  # still running when the next is dispatched
    x = _slow_step(x)
    pending.append(x)
  assert worst <= limit - 1
  jax.block_until_ready(pending)

