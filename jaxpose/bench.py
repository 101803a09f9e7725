"""`python -m jaxpose.bench {step,infer,data} --config CONFIG [--batch N] [--steps N]`.

Prints one JSON object of figures. `step` compiles the config's real train step and times
it on random inputs of the config's shapes; `infer` does the same for the eval forward pass
(flip test included when the config asks for it); `data` times the input pipeline alone.
"""

import functools
import json
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

import configs
from jaxpose import host_memory
from jaxpose import mesh as mesh_lib
from jaxpose import optim
from jaxpose import step as step_lib
from jaxpose import train
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", configs.DEFAULT_CONFIG_FILE, "Config file.",
                                          lock_config=True)
_BATCH = flags.DEFINE_integer("batch", None, "Global batch size (default: the config's).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after compilation and one warm-up.")


def _peak_host_memory_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _random_batch(config, batch_size: int, num_keypoints: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  height, width = config.input.size_hw
  _, (heatmap_w, heatmap_h) = pipeline.input_and_heatmap_wh(config)
  return dict(
      image=rng.integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8),
      heatmaps=rng.random((batch_size, heatmap_h, heatmap_w, num_keypoints), np.float32),
      target_weight=np.ones((batch_size, num_keypoints), np.float32))


def _time(fn, args_fn, steps: int) -> tuple[float, float]:
  """Returns (compile seconds, steady-state seconds per call)."""
  start = time.perf_counter()
  out = fn(*args_fn())
  jax.block_until_ready(out)
  compile_seconds = time.perf_counter() - start
  out = fn(*args_fn())  # warm-up
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(*args_fn())
  jax.block_until_ready(out)
  return compile_seconds, (time.perf_counter() - start) / steps


def bench_step(config, batch_size: int, steps: int) -> dict:
  mesh = mesh_lib.make_data_mesh()
  replicated = mesh_lib.replicated(mesh)
  spec = keypoints_lib.get_spec(config.data.keypoints)
  model = train.build_model(config)
  tx = optim.build_optimizer(config, optax.constant_schedule(config.optim.base_lr))
  state = jax.jit(functools.partial(step_lib.create_train_state, model, tx,
                                    input_hw=tuple(config.input.size_hw)),
                  out_shardings=replicated)(jax.random.key(0))
  batch = mesh_lib.put_batch(_random_batch(config, batch_size, spec.num_keypoints), mesh)
  train_step = jax.jit(step_lib.make_train_step(model, tx),
                       in_shardings=(replicated, mesh_lib.batch_sharding(mesh), replicated),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  rng = jax.random.key(1)
  flops = _flops(train_step, state, batch, rng)
  holder = {"state": state}

  def run_step(batch, rng):
    holder["state"], metrics = train_step(holder["state"], batch, rng)
    return metrics

  compile_seconds, seconds = _time(run_step, lambda: (batch, rng), steps)
  return _figures("step", config, batch_size, compile_seconds, seconds, flops)


def bench_infer(config, batch_size: int, steps: int) -> dict:
  mesh = mesh_lib.make_data_mesh()
  spec = keypoints_lib.get_spec(config.data.keypoints)
  model = train.build_model(config)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jnp.zeros((1, *config.input.size_hw, 3)))
  flip_index = spec.flip_index if config.eval.flip_test else None
  predict = jax.jit(step_lib.make_predict_step(model, flip_index),
                    in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)),
                    out_shardings=mesh_lib.replicated(mesh))
  images = mesh_lib.put_batch(
      {"image": _random_batch(config, batch_size, spec.num_keypoints)["image"]}, mesh)["image"]
  flops = _flops(predict, variables, images)
  compile_seconds, seconds = _time(predict, lambda: (variables, images), steps)
  return _figures("infer", config, batch_size, compile_seconds, seconds, flops)


def bench_data(config, batch_size: int, steps: int) -> dict:
  source = pipeline.open_split(config, config.data.train_split)
  iterator = iter(pipeline.train_dataset(config, source, batch_size))
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


def _flops(jitted, *args) -> float | None:
  try:
    cost = jitted.lower(*args).compile().cost_analysis()
  except Exception:  # cost analysis is best-effort and backend-dependent
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else None


def _figures(kind, config, batch_size, compile_seconds, seconds, flops) -> dict:
  figures = dict(kind=kind, model=config.model.name, input_hw=list(config.input.size_hw),
                 batch_size=batch_size, devices=jax.device_count(),
                 platform=jax.devices()[0].platform, compile_seconds=round(compile_seconds, 3),
                 seconds_per_step=round(seconds, 4), images_per_second=round(batch_size / seconds, 2),
                 peak_host_memory_mb=round(_peak_host_memory_mb(), 1))
  if flops:
    figures["tflops_per_second"] = round(flops / seconds / 1e12, 4)
  return figures


_KINDS = {"step": bench_step, "infer": bench_infer, "data": bench_data}


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
