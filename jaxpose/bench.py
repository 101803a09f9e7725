"""`python -m jaxpose.bench {step,train,infer,data,profile} --config CONFIG [--batch N] ...`.

Prints one JSON object of figures. `step` compiles the config's real train step and times
it on random inputs of the config's shapes; `train` feeds that step from the config's real
input pipeline, as the trainer does, and says whether the step waited for data; `infer` does
the same for the eval forward pass (flip test included when the config asks for it); `data`
times the input pipeline alone; `profile` traces the train step with `jax.profiler` and
prints where its time goes, XLA op by op.

`step` and `infer` also print what XLA's `memory_analysis` says one device needs (the
temporaries, arguments and outputs of the compiled program), and with `--compile_only` stop
there, so a step too big for this host can still be sized for an accelerator. On GPU and
TPU they print the model FLOPs utilisation: the matmul and convolution FLOPs of the traced
program per device (`model_gflops_per_step`, `jaxpose.macs`: loops counted per
iteration) over the measured step time, divided by the device's dense bfloat16 peak
(`PEAK_TFLOPS`, or `--peak_tflops`), the convention of PaLM's and MaxText's MFU.
`gflops_per_step` is XLA's own cost analysis, which counts a loop body once.
"""

import functools
import glob
import gzip
import json
import os
import resource
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

import configs
from jaxpose import bottomup_step
from jaxpose import device_prefetch
from jaxpose import example_batches
from jaxpose import families
from jaxpose import host_memory
from jaxpose import macs
from jaxpose import integral_step
from jaxpose import mesh as mesh_lib
from jaxpose import optim
from jaxpose import step as step_lib
from jaxpose import trace_ops
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
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "step/infer: compile and report compile time and XLA's memory "
    "analysis without running (for a step that does not fit this host).")
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "profile: where to write the trace (TensorBoard's profile plugin or "
    "ui.perfetto.dev read it); default a new folder under /tmp.")
_TOP = flags.DEFINE_integer("top", 25, "profile: how many of the slowest ops to print.")
_PEAK_TFLOPS = flags.DEFINE_float(
    "peak_tflops", None, "Peak TFLOP/s of one device, for the MFU (default: PEAK_TFLOPS by "
    "the device kind; on CPU no MFU is printed).")

# Dense bfloat16 peak TFLOP/s of one JAX device, by `device_kind` (first match wins, so the
# longer names come first). TPU v2/v3 show each of a chip's two cores as a device.
PEAK_TFLOPS = (
    ("TPU v6 lite", 918.0), ("TPU v5 lite", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0),
    ("TPU v4", 275.0), ("TPU v3", 61.5), ("TPU v2", 22.5),
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0),
)


def _peak_host_memory_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Flops(NamedTuple):
  """FLOPs per call on one device: `model`, the matmuls and convolutions of the traced
  program with every loop iteration counted (2 x `macs.jaxpr_macs`: the backward
  pass is in the traced step; what the MFU divides); `xla`,
  XLA's cost analysis of the compiled program (element-wise ops included, a loop body
  counted once) or None."""
  model: float
  xla: float | None


def _compile(jitted, *args) -> tuple[Any, float, Flops]:
  """(the compiled executable, seconds to trace, lower and compile it, its FLOPs per call).
  Timed here, not at the first call: the executable is what the timed calls run, so
  nothing compiles twice or hides in the first step."""
  start = time.perf_counter()
  traced = jitted.trace(*args)
  compiled = traced.lower().compile()
  seconds = time.perf_counter() - start
  try:
    cost = compiled.cost_analysis()
  except Exception:  # cost analysis is best-effort and backend-dependent
    cost = None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla = float(cost.get("flops", 0.0)) if cost else None
  # The jaxpr is the global program; data parallelism splits it evenly over the devices.
  model = 2 * macs.jaxpr_macs(traced.jaxpr) / jax.device_count()
  return compiled, seconds, Flops(model, xla)


def peak_tflops(device_kind: str) -> float | None:
  """The dense bfloat16 peak of a device of this `device_kind`, or None if unknown."""
  for name, tflops in PEAK_TFLOPS:
    if name in device_kind:
      return tflops
  return None


def memory_figures(compiled) -> dict[str, float]:
  """What XLA's `memory_analysis` says the compiled program needs on one device, in MB
  (empty where the backend does not say)."""
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # best-effort and backend-dependent, like the cost analysis
    return {}
  if analysis is None:
    return {}
  fields = dict(temp_mb="temp_size_in_bytes", argument_mb="argument_size_in_bytes",
                output_mb="output_size_in_bytes", alias_mb="alias_size_in_bytes")
  return {name: round(getattr(analysis, field) / 2**20, 1) for name, field in fields.items()
          if hasattr(analysis, field)}


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


def _compiled_step(config, batch_size: int):
  """(train state, random batch of the pipeline's shapes on the mesh, rng, `_compile` of the
  config's train step on them): what `step` times and `profile` traces."""
  mesh, state, train_step = _state_and_step(config)
  batch = mesh_lib.put_batch(
      example_batches.example_batch(families.kind_of(config), config, batch_size), mesh)
  rng = jax.random.key(1)
  return state, batch, rng, _compile(train_step, state, batch, rng)


def bench_step(config, batch_size: int, steps: int, compile_only: bool = False,
               peak: float | None = None) -> dict:
  """The config's own train step (its family's: top-down, RLE, bottom-up or integral) on a
  random batch of the pipeline's shapes (`example_batches`)."""
  state, batch, rng, (compiled, compile_seconds, flops) = _compiled_step(config, batch_size)
  if compile_only:
    return _figures("step", config, batch_size, compile_seconds, None, flops, compiled)
  holder = {"state": state}

  def run_step(batch, rng):
    holder["state"], metrics = compiled(holder["state"], batch, rng)
    return metrics

  seconds = _time(run_step, lambda: (batch, rng), steps)
  return _figures("step", config, batch_size, compile_seconds, seconds, flops, compiled, peak)


def bench_train(config, batch_size: int, steps: int, peak: float | None = None) -> dict:
  """The trainer's loop without logs or checkpoints: the config's real input pipeline
  (`input.num_workers`, `read_threads`, `prefetch_batches`, `device_prefetch`) feeding its
  train step, at most `train.max_steps_in_flight()` steps in flight. Reports whether the
  step waited for data: `data_late_fraction` is the share of steps whose batch arrived after
  the step before had finished (`train.DataWaitMeter`); `step_waited_for_data` is true when
  that share is over 5 %."""
  mesh, state, train_step = _state_and_step(config)
  family = families.for_config(config)
  source = family.open_split(config, config.data.train_split)
  iterator = device_prefetch.DevicePrefetch(
      iter(family.train_dataset(config, source, batch_size // jax.process_count())), mesh,
      config.input.get("device_prefetch", device_prefetch.DEFAULT_DEPTH))
  rng = jax.random.key(1)
  first = next(iterator)
  compiled, compile_seconds, flops = _compile(train_step, state, first, rng)
  state, metrics = compiled(state, first, rng)  # warm-up, and the workers fill their queues
  jax.block_until_ready(metrics)
  pending, meter = [], train.DataWaitMeter()
  start = time.perf_counter()
  for _ in range(steps):
    batch = meter.next_batch(iterator, pending)
    train.wait_for_steps_in_flight(pending)
    state, metrics = compiled(state, batch, rng)
    pending.append(metrics)
  jax.block_until_ready(pending[-1])
  seconds = (time.perf_counter() - start) / steps
  waits = meter.take()
  figures = _figures("train", config, batch_size, compile_seconds, seconds, flops, compiled,
                     peak)
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


def bench_infer(config, batch_size: int, steps: int, compile_only: bool = False,
                peak: float | None = None) -> dict:
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
  if compile_only:
    return _figures("infer", config, batch_size, compile_seconds, None, flops, compiled)
  seconds = _time(compiled, lambda: (variables, batch), steps)
  return _figures("infer", config, batch_size, compile_seconds, seconds, flops, compiled, peak)


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


def _figures(kind, config, batch_size, compile_seconds, seconds, flops: Flops, compiled,
             peak: float | None = None) -> dict:
  """The printed figures; `seconds` None for a compile-only run. `flops` per device;
  `peak` overrides `PEAK_TFLOPS` for the MFU, which is of the model FLOPs."""
  device = jax.devices()[0]
  figures = dict(kind=kind, model=config.model.name, input_hw=list(config.input.size_hw),
                 batch_size=batch_size, devices=jax.device_count(), platform=device.platform,
                 device_kind=device.device_kind, compile_seconds=round(compile_seconds, 3))
  if seconds is not None:
    figures.update(seconds_per_step=round(seconds, 4),
                   images_per_second=round(batch_size / seconds, 2))
  figures["peak_host_memory_mb"] = round(_peak_host_memory_mb(), 1)
  figures.update({f"xla_{name}": mb for name, mb in memory_figures(compiled).items()})
  if flops.xla:
    figures["gflops_per_step"] = round(flops.xla / 1e9, 2)
  figures["model_gflops_per_step"] = round(flops.model / 1e9, 2)
  if flops.model and seconds is not None:
    tflops = flops.model / seconds / 1e12
    figures["tflops_per_second"] = round(tflops, 4)
    peak = peak or (peak_tflops(device.device_kind) if device.platform != "cpu" else None)
    if peak:
      figures.update(mfu=round(tflops / peak, 4), peak_tflops=peak)
  return figures


def bench_profile(config, batch_size: int, steps: int, profile_dir: str | None = None,
                  top: int = 25) -> dict:
  """`steps` train steps of the config (as `step`: random batch, one in flight) traced by
  `jax.profiler`: the trace goes to `profile_dir`; printed are the wall time per traced
  step, the `top` slowest ops of the compiled program and the time by op kind. Each op
  named in `slowest_ops` can be looked up in the program's HLO, written beside the trace."""
  state, batch, rng, (compiled, compile_seconds, flops) = _compiled_step(config, batch_size)
  state, metrics = compiled(state, batch, rng)  # warm-up, outside the trace
  jax.block_until_ready(metrics)
  profile_dir = profile_dir or os.path.join("/tmp", f"jaxpose_profile_{os.getpid()}")
  os.makedirs(profile_dir, exist_ok=True)
  hlo_text = compiled.as_text()
  with open(os.path.join(profile_dir, "train_step.hlo.txt"), "w", encoding="utf-8") as f:
    f.write(hlo_text)
  start = time.perf_counter()
  with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
    for _ in range(steps):
      state, metrics = compiled(state, batch, rng)
      jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / steps
  trace_files = sorted(glob.glob(os.path.join(profile_dir, "**", "perfetto_trace.json.gz"),
                                 recursive=True), key=os.path.getmtime)
  if not trace_files:
    raise RuntimeError(f"jax.profiler wrote no perfetto_trace.json.gz under {profile_dir}")
  with gzip.open(trace_files[-1], "rt", encoding="utf-8") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  ops, kinds = trace_ops.op_times(events, trace_ops.hlo_instruction_names(hlo_text), steps)
  figures = _figures("profile", config, batch_size, compile_seconds, seconds, flops, compiled)
  figures.update(profile_dir=profile_dir, trace=trace_files[-1],
                 ms_per_step_by_kind=kinds, slowest_ops=ops[:top])
  return figures


_KINDS = {"step": bench_step, "train": bench_train, "infer": bench_infer, "data": bench_data,
          "profile": bench_profile}


def main(argv: list[str]) -> None:
  host_memory.keep_freed_memory_mapped()  # as `jaxpose.launch` does
  if len(argv) != 2 or argv[1] not in _KINDS:
    print(f"usage: python -m jaxpose.bench {{{','.join(_KINDS)}}} --config CONFIG "
          "[--batch N] [--steps N]", file=sys.stderr)
    sys.exit(2)
  config = _CONFIG.value
  batch_size = _BATCH.value or config.input.batch_size
  options = {}
  if argv[1] in ("step", "infer"):
    options["compile_only"] = _COMPILE_ONLY.value
  elif _COMPILE_ONLY.value:
    print(f"--compile_only applies to step and infer, not {argv[1]}", file=sys.stderr)
    sys.exit(2)
  if argv[1] == "profile":
    options.update(profile_dir=_PROFILE_DIR.value, top=_TOP.value)
  elif argv[1] != "data":
    options["peak"] = _PEAK_TFLOPS.value
  print(json.dumps(_KINDS[argv[1]](config, batch_size, _STEPS.value, **options)), flush=True)


if __name__ == "__main__":
  app.run(main)
