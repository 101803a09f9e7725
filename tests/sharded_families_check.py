"""Run as a script under XLA_FLAGS=--xla_force_host_platform_device_count=4 (by
`test_sharded_families.py`): for a small member of every model family, one SGD step on a
4-device data mesh and on a 1-device mesh from the same state and global batch. Prints one
JSON line {family: {"<params|batch_stats>_<four_devices|reordered_batch>": max difference to
the 1-device run / max change}}: the 4-device run, and as the control for float rounding, the
1-device run on the same batch with its samples reversed.

Top-down families go through the trainer's own `step.make_train_step` (heatmap MSE); DEKR
(bottom-up) and Res2Net (classifier) have no trainer yet, so they take the same jitted,
sharded step shape with a squared-output loss: what is tested is that the model computes
the same thing split over devices (BatchNorm statistics over the global batch included).
"""

import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType

from jaxpose import mesh as mesh_lib
from jaxpose import step as step_lib
from jaxpose.models import dekr, hourglass, hrnet, res2net, simple_baseline

BATCH, HW, KEYPOINTS = 8, (64, 64), 2
# One step from one shared state: a second step would compare chaos, not sharding (ties in
# max-pool windows of ReLU zeros and HRNet's N(0, 0.001^2) init turn the first step's
# float-rounding differences into O(1e-2) relative gradient differences, measured).
LEARNING_RATE = 1e-3
TINY_HRNET = (hrnet.StageSpec(1, 2, 1), hrnet.StageSpec(1, 3, 1), hrnet.StageSpec(1, 4, 1))
FAMILIES = {
    "simplebaseline": (simple_baseline.SimpleBaseline(depth=18, num_keypoints=KEYPOINTS,
                                                      num_deconv_filters=(8, 8, 8)), True),
    "hrnet": (hrnet.HRNet(width=4, num_keypoints=KEYPOINTS, stages=TINY_HRNET), True),
    "hourglass": (hourglass.StackedHourglass(num_stacks=1, width=4, num_keypoints=KEYPOINTS), True),
    "dekr": (dekr.DEKR(width=4, heatmap_channels=8, num_keypoints=KEYPOINTS, stages=TINY_HRNET,
                       offset_channels_per_keypoint=4), False),
    "res2net": (res2net.Res2Net(stage_sizes=(1, 1, 1, 1), base_width=4, num_classes=5), False),
}


def _squared_output_step(model, tx):
  """The trainer's step shape with loss = mean of every output squared."""

  def train_step(state, batch, rng):
    del rng
    images = step_lib.normalize_images(batch["image"])

    def loss_fn(params):
      outputs, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                     images, train=True, mutable=["batch_stats"])
      leaves = jax.tree.leaves(outputs[0])
      loss = sum(jnp.mean(jnp.square(leaf)) for leaf in leaves)
      return loss, updates["batch_stats"]

    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return step_lib.TrainState(step=state.step + 1,
                               params=optax.apply_updates(state.params, updates),
                               batch_stats=batch_stats, opt_state=opt_state), {}

  return train_step


def _batch(heatmap_hw: tuple[int, int]) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return dict(image=rng.integers(0, 256, (BATCH, *HW, 3), dtype=np.uint8),
              heatmaps=rng.random((BATCH, *heatmap_hw, KEYPOINTS), np.float32),
              target_weight=np.ones((BATCH, KEYPOINTS), np.float32))


def _train(model, topdown: bool, initial_state, devices, batches) -> list:
  """One step from `initial_state` on each of `batches`, on a mesh over `devices`."""
  mesh = jax.make_mesh((len(devices),), (mesh_lib.DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)
  replicated = mesh_lib.replicated(mesh)
  make_step = step_lib.make_train_step if topdown else _squared_output_step
  train_step = jax.jit(make_step(model, optax.sgd(LEARNING_RATE)),
                       in_shardings=(replicated, mesh_lib.batch_sharding(mesh), replicated),
                       out_shardings=(replicated, replicated))
  state = jax.device_put(initial_state, replicated)
  return [jax.device_get(train_step(state, mesh_lib.put_batch(batch, mesh), jax.random.key(1))[0])
          for batch in batches]


def _max_difference(part: str, initial, reference, other) -> float:
  """max |reference - other| over all leaves of `part`, relative to the step's largest change
  of `part` (per-leaf ratios are meaningless for leaves whose gradient is ~1e-9 of the
  largest, e.g. deep BatchNorm biases)."""
  before, after_a, after_b = (jax.tree.leaves(getattr(s, part)) for s in (initial, reference, other))
  update = max(float(np.abs(a - a0).max()) for a, a0 in zip(after_a, before))
  return max(float(np.abs(a - b).max()) for a, b in zip(after_a, after_b)) / update


def main() -> None:
  assert jax.device_count() == 4, "run with --xla_force_host_platform_device_count=4"
  batch = _batch((HW[0] // 4, HW[1] // 4))
  # The same samples in reverse order: the same step mathematically (the loss and the
  # BatchNorm statistics are symmetric in the samples), other float reduction orders.
  reversed_batch = {key: value[::-1] for key, value in batch.items()}
  differences = {}
  names = sys.argv[1:] or list(FAMILIES)  # a subset, so that halves can run side by side
  for family in names:
    model, topdown = FAMILIES[family]
    start = time.perf_counter()
    # One host copy of the initial state for every run (an RBG key is not sharding-invariant,
    # so initialising under each mesh could start the runs apart).
    initial_state = jax.device_get(jax.jit(functools.partial(
        step_lib.create_train_state, model, optax.sgd(LEARNING_RATE), input_hw=HW))(
            jax.random.key(0, impl="rbg")))
    one, one_reversed = _train(model, topdown, initial_state, jax.devices()[:1],
                               [batch, reversed_batch])
    (four,) = _train(model, topdown, initial_state, jax.devices(), [batch])
    print(f"{family}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    differences[family] = {
        f"{part}_{runs}": _max_difference(part, initial_state, one, other)
        for part in ("params", "batch_stats")
        for runs, other in (("four_devices", four), ("reordered_batch", one_reversed))}
  print(json.dumps(differences), flush=True)


if __name__ == "__main__":
  sys.exit(main())
