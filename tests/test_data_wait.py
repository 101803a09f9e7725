"""`train.DataWaitMeter`: how long the loop waited for each batch, and whether the device sat
idle for it (the figures `bench train` and every log row report)."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpose import mesh as mesh_lib
from jaxpose import train


@jax.jit
def _slow_step(x):
  for _ in range(40):  # ~0.1-0.5 s of matmuls on this CPU: still running when checked
    x = jnp.tanh(x @ x) * 0.5
  return x


def _batches(delay_seconds: float, mesh):
  """Global batches on the mesh (what `DevicePrefetch` yields), each `delay_seconds` late."""
  while True:
    time.sleep(delay_seconds)
    yield mesh_lib.put_batch({"image": np.zeros((jax.device_count(), 2), np.uint8)}, mesh)


@pytest.fixture(scope="module")
def mesh():
  return mesh_lib.make_data_mesh()


def test_a_batch_after_a_finished_step_is_late(mesh):
  meter = train.DataWaitMeter()
  finished = {"loss": jax.block_until_ready(jnp.ones(3))}
  for _ in range(3):
    meter.next_batch(_batches(0.02, mesh), [finished])
  figures = meter.take()
  assert figures["data_late_fraction"] == 1.0
  assert figures["data_seconds_per_step"] >= 0.02


def test_a_batch_while_the_step_runs_is_not_late(mesh):
  x = jnp.ones((512, 512), jnp.float32) / 512
  jax.block_until_ready(_slow_step(x))  # compile outside the check
  meter = train.DataWaitMeter()
  running = {"loss": _slow_step(x)}
  meter.next_batch(_batches(0.0, mesh), [running])
  still_running = not running["loss"].is_ready()
  jax.block_until_ready(running)
  assert still_running, "the control failed: the step finished before the check"
  assert meter.take()["data_late_fraction"] == 0.0


def test_no_step_queued_is_not_counted_and_take_resets(mesh):
  meter = train.DataWaitMeter()
  meter.next_batch(_batches(0.0, mesh), [])  # after a log step's fetch: idle on purpose
  assert meter.take() == {"data_seconds_per_step": pytest.approx(0.0, abs=0.05),
                          "data_late_fraction": 0.0}
  assert meter.take() == {"data_seconds_per_step": 0.0, "data_late_fraction": 0.0}
