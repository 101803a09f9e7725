"""The trainer: builds everything from the config, runs the jitted step, checkpoints, evaluates.

`run(config, workdir, mode)` is what `python -m jaxpose.launch` calls; it is importable and
testable on its own.
"""

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxpose import checkpoint as checkpoint_lib
from jaxpose import mesh as mesh_lib
from jaxpose import metrics_log
from jaxpose import models
from jaxpose import optim
from jaxpose import preemption
from jaxpose import pretrained
from jaxpose import step as step_lib
from jaxpose import workdir as workdir_lib
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import pipeline
from jaxpose.errors import Preempted, TrainingDiverged, UserError
from jaxpose.evaluation import topdown

MODES = ("train", "eval", "train_and_eval")


def build_model(config: ml_collections.ConfigDict):
  spec = keypoints_lib.get_spec(config.data.keypoints)
  if config.model.name not in models.MODELS:
    raise UserError(f"config key model.name: unknown model {config.model.name!r}; "
                    f"known: {sorted(models.MODELS)}")
  if models.KINDS[config.model.name] != "topdown":
    topdown = sorted(name for name, kind in models.KINDS.items() if kind == "topdown")
    raise UserError(f"config key model.name: {config.model.name!r} is a "
                    f"{models.KINDS[config.model.name]} model; this trainer trains top-down "
                    f"heatmap models: {topdown}")
  return models.build(config.model.name, num_keypoints=spec.num_keypoints,
                      dtype=jnp.dtype(config.model.dtype), **config.model.options)


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def _global_batch_size(config, key: str) -> int:
  size = config[key].batch_size
  if size % jax.device_count():
    raise UserError(f"config key {key}.batch_size: {size} is not divisible by the "
                    f"{jax.device_count()} devices")
  return size


class _Progress:
  """Turns fetched metric sums into a log row and a progress line."""

  def __init__(self, total_steps: int, start_step: int, schedule):
    self.total_steps, self.schedule = total_steps, schedule
    self.last_time, self.last_step = time.perf_counter(), start_step

  def row(self, step: int, fetched: list[dict]) -> dict[str, float]:
    sums = {k: float(sum(float(m[k]) for m in fetched)) for k in fetched[0] if k != "grad_norm"}
    now = time.perf_counter()
    seconds_per_step = (now - self.last_time) / max(step - self.last_step, 1)
    self.last_time, self.last_step = now, step
    return dict(
        loss=sums["loss_sum"] / sums["num_samples"],
        grad_norm=float(np.mean([float(m["grad_norm"]) for m in fetched])),
        labelled_joints_per_sample=sums["labelled_joints"] / sums["num_samples"],
        learning_rate=float(self.schedule(step)),
        images_per_second=sums["num_samples"] / len(fetched) / seconds_per_step,
        seconds_per_step=seconds_per_step,
        data_fingerprint=sums["data_fingerprint"],
    )

  def line(self, step: int, row: dict[str, float]) -> str:
    eta = (self.total_steps - step) * row["seconds_per_step"]
    return (f"step {step:>6}/{self.total_steps}  loss {row['loss']:.6f}  lr {row['learning_rate']:.2e}  "
            f"{row['images_per_second']:.1f} img/s  eta {eta / 60:.1f} min")


def train(config, workdir: Path, model, mesh, checkpointer, log) -> step_lib.TrainState:
  source = pipeline.open_split(config, config.data.train_split)
  global_batch_size = _global_batch_size(config, "input")
  if global_batch_size % jax.process_count():
    raise UserError(f"config key input.batch_size: {global_batch_size} is not divisible by "
                    f"the {jax.process_count()} processes")
  steps_per_epoch = max(len(source) // global_batch_size, 1)
  total_steps, boundaries = optim.resolve_steps(config, steps_per_epoch)
  schedule = optim.learning_rate_schedule(config, global_batch_size, boundaries)
  tx = optim.build_optimizer(config, schedule)

  replicated = mesh_lib.replicated(mesh)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  init_fn = functools.partial(step_lib.create_train_state, model, tx,
                              input_hw=tuple(config.input.size_hw))
  abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(init_fn, init_rng))

  data_iterator = iter(pipeline.train_dataset(
      config, source, global_batch_size // jax.process_count()))
  latest = checkpointer.latest_step()
  if latest is not None:
    state = checkpointer.restore(latest, abstract_state, data_iterator)
    log.truncate_after(latest)
    _say(f"resumed from {checkpointer.directory}/{latest}")
  else:
    # Only a new run starts from model.init_from (a resumed run keeps its trained weights);
    # the file is read first, so a wrong path or key fails before the init compiles.
    loaded = pretrained.read_init_from(config, model)
    state = jax.jit(init_fn, out_shardings=replicated)(init_rng)
    state = pretrained.put_into_state(loaded, state, tx, replicated)
    if config.model.init_from:
      _say(f"initialised {'the backbone' if config.model.init_backbone_only else 'all weights'}"
           f" from {config.model.init_from}")
  start_step = int(state.step)
  _say(f"training {config.model.name} for {total_steps} steps ({steps_per_epoch} steps/epoch, "
       f"global batch {global_batch_size}, {len(source)} persons) on {jax.device_count()} devices")

  train_step = jax.jit(
      step_lib.make_train_step(model, tx),
      in_shardings=(replicated, mesh_lib.batch_sharding(mesh), replicated),
      out_shardings=(replicated, replicated), donate_argnums=0)
  progress = _Progress(total_steps, start_step, schedule)
  with preemption.StopRequest() as stop:
    state = _train_loop(config, train_step, state, data_iterator, mesh, step_rng, start_step,
                        total_steps, progress, checkpointer, log, stop)
  checkpointer.wait()
  return state


def _train_loop(config, train_step, state, data_iterator, mesh, step_rng, start_step: int,
                total_steps: int, progress, checkpointer, log, stop) -> step_lib.TrainState:
  pending: list[dict] = []
  for step in range(start_step + 1, total_steps + 1):
    batch = mesh_lib.put_batch(next(data_iterator), mesh)
    state, metrics = train_step(state, batch, step_rng)
    pending.append(metrics)
    if step % config.train.log_every_steps == 0 or step == total_steps or stop.requested:
      fetched = jax.device_get(pending)
      pending = []
      row = progress.row(step, fetched)
      if not np.isfinite(row["loss"]) or not np.isfinite(row["grad_norm"]):
        last_good = checkpointer.latest_step()
        raise TrainingDiverged(
            f"non-finite loss ({row['loss']}) or gradient norm at step {step}; last good "
            f"checkpoint: {f'{checkpointer.directory}/{last_good}' if last_good else 'none'}")
      log.write(step, row)
      _say(progress.line(step, row))
    if step % config.train.checkpoint_every_steps == 0 or step == total_steps or stop.requested:
      checkpointer.save(step, state, data_iterator)
    if stop.requested and step < total_steps:
      checkpointer.wait()
      raise Preempted(f"SIGTERM: stopped after step {step} with a checkpoint in "
                      f"{checkpointer.directory}/{step}; re-run the same command to resume")
  return state


def restore_for_eval(config, model, mesh, checkpointer) -> step_lib.TrainState:
  latest = checkpointer.latest_step()
  if latest is None:
    raise UserError(f"--mode eval: no checkpoint in {checkpointer.directory}; train first")
  replicated = mesh_lib.replicated(mesh)
  # The optimiser state is restored too (its structure depends on the schedule), so build
  # the same transformation; its schedule values do not matter for evaluation.
  tx = optim.build_optimizer(config, lambda step: 0.0)
  init_fn = functools.partial(step_lib.create_train_state, model, tx,
                              input_hw=tuple(config.input.size_hw))
  abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      jax.eval_shape(init_fn, jax.random.key(0)))
  return checkpointer.restore_state_only(latest, abstract_state)


def run(config: ml_collections.ConfigDict, workdir: str | Path, mode: str = "train_and_eval"
        ) -> dict[str, float]:
  """Trains and/or evaluates `config` in `workdir`; returns the last eval metrics (or {})."""
  if mode not in MODES:
    raise UserError(f"--mode {mode!r}: expected one of {list(MODES)}")
  workdir = workdir_lib.prepare(workdir, config)
  mesh = mesh_lib.make_data_mesh()
  model = build_model(config)
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  log = metrics_log.MetricsLog(workdir)
  try:
    if mode == "eval":
      state = restore_for_eval(config, model, mesh, checkpointer)
    else:
      state = train(config, workdir, model, mesh, checkpointer, log)
    if mode == "train":
      return {}
    _global_batch_size(config, "eval")
    step = int(state.step)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    results = topdown.evaluate(config, model, variables, mesh, workdir, step)
    log.write(step, results)
    _say("eval step {}: {}".format(step, "  ".join(f"{k} {v:.4f}" for k, v in results.items())))
    _say(f"results in {workdir}: metrics.jsonl, results_val_step{step}.json, "
         f"predictions_val_step{step}.png")
    return results
  finally:
    checkpointer.close()
