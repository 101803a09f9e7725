"""`python -m jaxpose.bench {step,train,infer,data} --config CONFIG [--batch N] [--steps N]`.

Prints one JSON object of figures. `step` compiles the config's real train step and times
it on random inputs of the config's shapes; `train` feeds that step from the config's real
input pipeline, as the trainer does, and says whether the step waited for data; `infer` does the same for the eval forward pass
(flip test included when the config asks for it); `data` times the input pipeline alone.
"""

import functools
import json
import os
import resource
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

import configs
from jaxpose import bottomup_step
from jaxpose import example_batches
from jaxpose import families
from jaxpose import host_memory
from jaxpose import integral_step
from jaxpose import mesh as mesh_lib
from jaxpose import optim
from jaxpose import step as step_lib
from jaxpose import train
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import integral_pipeline
from jaxpose.data import pipeline
from jaxpose.evaluation import bottomup as bottomup_eval
from jaxpose.evaluation import topdown as topdown_eval

_CONFIG = config_flags.DEFINE_config_file("config", configs.DEFAULT_CONFIG_FILE, "Config file.",
                                          lock_config=True)
_BATCH = flags.DEFINE_integer("batch", None, "Global batch size (default: the config's).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after compilation and one warm-up.")


def _peak_host_memory_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _compile(jitted, *args) -> tuple[Any, float, float | None]:
  """(the compiled executable, seconds to trace, lower and compile it, its FLOPs per call
  from XLA's cost analysis or None). Timed here, not at the first call: the executable is
  what the timed calls run, so nothing compiles twice or hides in the first step."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  try:
    cost = compiled.cost_analysis()
  except Exception:  # cost analysis is best-effort and backend-dependent
    cost = None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return compiled, seconds, (float(cost.get("flops", 0.0)) if cost else None)


def _time(fn, args_fn, steps: int) -> float:
  """Steady-state seconds per call, after one warm-up call, with at most as many calls in
  flight as the trainer allows (`train.max_steps_in_flight()`): on XLA's CPU client a queue
  is slower, not faster (R50 train step: 3.98 s per step queued 4 deep, 2.10 s one at a
  time)."""
  jax.block_until_ready(fn(*args_fn()))
  pending = []
  start = time.perf_counter()
  for _ in range(steps):
    train.wait_for_steps_in_flight(pending)
    pending.append(fn(*args_fn()))
  jax.block_until_ready(pending)
  return (time.perf_counter() - start) / steps


def _state_and_step(config):
  """The mesh, a fresh train state and the config's jitted train step, as the trainer builds
  them (constant learning rate: the schedule does not change the step's cost)."""
  mesh = mesh_lib.make_data_mesh()
  replicated = mesh_lib.replicated(mesh)
  model = train.build_model(config)
  tx = optim.build_optimizer(config, optax.constant_schedule(config.optim.base_lr))
  state = jax.jit(functools.partial(step_lib.create_train_state, model, tx,
                                    input_hw=tuple(config.input.size_hw)),
                  out_shardings=replicated)(jax.random.key(0))
  train_step = jax.jit(families.for_config(config).make_train_step(model, tx, config),
                       in_shardings=(replicated, mesh_lib.batch_sharding(mesh), replicated),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  return mesh, state, train_step


def bench_step(config, batch_size: int, steps: int) -> dict:
  """The config's own train step (its family's: top-down, RLE, bottom-up or integral) on a
  random batch of the pipeline's shapes (`example_batches`)."""
  mesh, state, train_step = _state_and_step(config)
  kind = families.kind_of(config)
  batch = mesh_lib.put_batch(example_batches.example_batch(kind, config, batch_size), mesh)
  rng = jax.random.key(1)
  compiled, compile_seconds, flops = _compile(train_step, state, batch, rng)
  holder = {"state": state}

  def run_step(batch, rng):
    holder["state"], metrics = compiled(holder["state"], batch, rng)
    return metrics

  seconds = _time(run_step, lambda: (batch, rng), steps)
  return _figures("step", config, batch_size, compile_seconds, seconds, flops)


def bench_train(config, batch_size: int, steps: int) -> dict:
  """The trainer's loop without logs or checkpoints: the config's real input pipeline
  (`input.num_workers`, `read_threads`, `prefetch_batches`) feeding its train step, at most
  `train.max_steps_in_flight()` steps in flight. Reports whether the step waited for data:
  `data_late_fraction` is the share of steps whose batch arrived after the step before had
  finished (`train.DataWaitMeter`); `step_waited_for_data` is true when that share is
  over 5 %."""
  mesh, state, train_step = _state_and_step(config)
  family = families.for_config(config)
  source = family.open_split(config, config.data.train_split)
  iterator = iter(family.train_dataset(config, source, batch_size // jax.process_count()))
  rng = jax.random.key(1)
  first = mesh_lib.put_batch(next(iterator), mesh)
  compiled, compile_seconds, flops = _compile(train_step, state, first, rng)
  state, metrics = compiled(state, first, rng)  # warm-up, and the workers fill their queues
  jax.block_until_ready(metrics)
  pending, meter = [], train.DataWaitMeter()
  start = time.perf_counter()
  for _ in range(steps):
    batch = meter.next_batch(iterator, mesh, pending)
    train.wait_for_steps_in_flight(pending)
    state, metrics = compiled(state, batch, rng)
    pending.append(metrics)
  jax.block_until_ready(pending[-1])
  seconds = (time.perf_counter() - start) / steps
  waits = meter.take()
  figures = _figures("train", config, batch_size, compile_seconds, seconds, flops)
  figures.update(data_seconds_per_step=round(waits["data_seconds_per_step"], 4),
                 data_late_fraction=round(waits["data_late_fraction"], 3),
                 step_waited_for_data=waits["data_late_fraction"] > 0.05,
                 num_workers=config.input.num_workers, read_threads=config.input.read_threads)
  return figures


def _predict_fn(kind: str, config, model, flip_index):
  """`predict(variables, batch)`: the forward pass and decoding the kind's evaluator runs."""
  if kind == "bottomup":
    predict = bottomup_step.make_bottomup_predict_step(model, flip_index,
                                                       **bottomup_eval.predict_options(config))
    return lambda variables, batch: predict(variables, batch["image"], batch["input_wh"])
  if kind == "integral":
    predict = integral_step.make_predict_step(model, integral_pipeline.input_wh(config), flip_index)
  else:
    predict = topdown_eval.make_predict_step(config, model, flip_index,
                                             topdown_eval.predict_options(config))
  return lambda variables, batch: predict(variables, batch["image"])


def bench_infer(config, batch_size: int, steps: int) -> dict:
  """The evaluator's forward pass (flip test and multi-scale as the config asks; bottom-up:
  with grouping, on the eval canvas) on random images."""
  mesh = mesh_lib.make_data_mesh()
  kind = families.kind_of(config)
  spec = keypoints_lib.get_spec(config.data.keypoints)
  model = train.build_model(config)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jnp.zeros((1, *config.input.size_hw, 3)))
  flip_index = spec.flip_index if config.eval.flip_test else None
  predict = jax.jit(_predict_fn(kind, config, model, flip_index),
                    in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)),
                    out_shardings=mesh_lib.replicated(mesh))
  rng = np.random.default_rng(0)
  if kind == "bottomup":  # the evaluator's square canvas, each image filling it
    size = int(config.eval.canvas_size)
    batch = dict(image=rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
                 input_wh=np.full((batch_size, 2), size, np.int32))
  else:
    height, width = config.input.size_hw
    scales = len(config.eval.multi_scale) if kind != "integral" else 0
    shape = (batch_size, scales, height, width, 3) if scales else (batch_size, height, width, 3)
    batch = dict(image=rng.integers(0, 256, shape, dtype=np.uint8))
  batch = mesh_lib.put_batch(batch, mesh)
  compiled, compile_seconds, flops = _compile(predict, variables, batch)
  seconds = _time(compiled, lambda: (variables, batch), steps)
  return _figures("infer", config, batch_size, compile_seconds, seconds, flops)


def bench_data(config, batch_size: int, steps: int) -> dict:
  family = families.for_config(config)
  source = family.open_split(config, config.data.train_split)
  iterator = iter(family.train_dataset(config, source, batch_size))
  next(iterator)
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(iterator)
  seconds = (time.perf_counter() - start) / steps
  # CPU time of this process (all its threads; worker processes not included): with
  # num_workers=0 the whole cost of a batch, a figure that other load on the machine
  # disturbs far less than images/s.
  cpu_seconds = (time.process_time() - start_cpu) / steps
  return dict(kind="data", batch_size=batch_size, seconds_per_batch=round(seconds, 4),
              images_per_second=round(batch_size / seconds, 2),
              main_process_cpu_ms_per_image=round(1e3 * cpu_seconds / batch_size, 3),
              num_workers=config.input.num_workers, read_threads=config.input.read_threads,
              load_average_1min=round(os.getloadavg()[0], 2),
              peak_host_memory_mb=round(_peak_host_memory_mb(), 1))


def _figures(kind, config, batch_size, compile_seconds, seconds, flops) -> dict:
  figures = dict(kind=kind, model=config.model.name, input_hw=list(config.input.size_hw),
                 batch_size=batch_size, devices=jax.device_count(),
                 platform=jax.devices()[0].platform, compile_seconds=round(compile_seconds, 3),
                 seconds_per_step=round(seconds, 4), images_per_second=round(batch_size / seconds, 2),
                 peak_host_memory_mb=round(_peak_host_memory_mb(), 1))
  if flops:
    figures["tflops_per_second"] = round(flops / seconds / 1e12, 4)
  return figures


_KINDS = {"step": bench_step, "train": bench_train, "infer": bench_infer, "data": bench_data}


def main(argv: list[str]) -> None:
  host_memory.keep_freed_memory_mapped()  # as `jaxpose.launch` does
  if len(argv) != 2 or argv[1] not in _KINDS:
    print(f"usage: python -m jaxpose.bench {{{','.join(_KINDS)}}} --config CONFIG "
          "[--batch N] [--steps N]", file=sys.stderr)
    sys.exit(2)
  config = _CONFIG.value
  batch_size = _BATCH.value or config.input.batch_size
  print(json.dumps(_KINDS[argv[1]](config, batch_size, _STEPS.value)), flush=True)


if __name__ == "__main__":
  app.run(main)
