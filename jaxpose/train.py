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
from jaxpose import config_check
from jaxpose import device_prefetch
from jaxpose import families
from jaxpose import mesh as mesh_lib
from jaxpose import metrics_log
from jaxpose import models
from jaxpose import optim
from jaxpose import preemption
from jaxpose import pretrained
from jaxpose import step as step_lib
from jaxpose import workdir as workdir_lib
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import mixture
from jaxpose.errors import Preempted, TrainingDiverged, UserError

MODES = ("train", "eval", "train_and_eval")


def build_model(config: ml_collections.ConfigDict):
  spec = keypoints_lib.get_spec(config.data.keypoints)
  families.for_config(config)  # a model no family trains fails here, naming the ones it can
  options = dict(config.model.options)
  if config.model.get("remat", False):
    if not models.supports_remat(config.model.name):
      raise UserError(f"config key model.remat: {config.model.name} has no rematerialisation; "
                      f"models with it: {', '.join(models.names_with_remat())}")
    options["remat"] = True
  return models.build(config.model.name, num_keypoints=spec.num_keypoints,
                      dtype=jnp.dtype(config.model.dtype), **options)


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


class _Progress:
  """Turns fetched metric sums into a log row and a progress line."""

  def __init__(self, total_steps: int, start_step: int, schedule,
               dataset_counts: dict[str, float]):
    self.total_steps, self.schedule = total_steps, schedule
    self.dataset_counts = dataset_counts
    self.last_time, self.last_step = time.perf_counter(), start_step

  def row(self, step: int, fetched: list[dict]) -> dict[str, float]:
    sums = {k: float(sum(float(m[k]) for m in fetched)) for k in fetched[0] if k != "grad_norm"}
    # Loss and gradient norm of the applied updates; a skipped non-finite one
    # (optim.skip_nonfinite_updates) is counted instead.
    applied = [m for m in fetched if float(m.get("nonfinite_streak", 0)) == 0]
    applied_samples = sum(float(m["num_samples"]) for m in applied)
    now = time.perf_counter()
    seconds_per_step = (now - self.last_time) / max(step - self.last_step, 1)
    self.last_time, self.last_step = now, step
    return dict(
        loss=(sum(float(m["loss_sum"]) for m in applied) / applied_samples if applied
              else float("nan")),
        grad_norm=(float(np.mean([float(m["grad_norm"]) for m in applied])) if applied
                   else float("nan")),
        nonfinite_updates_skipped=float(len(fetched) - len(applied)),
        labelled_joints_per_sample=sums["labelled_joints"] / sums["num_samples"],
        learning_rate=float(self.schedule(step)),
        images_per_second=sums["num_samples"] / len(fetched) / seconds_per_step,
        seconds_per_step=seconds_per_step,
        data_fingerprint=sums["data_fingerprint"],
        # Samples of these steps whose image failed to read (exact over hosts and workers).
        skipped_samples=sums["skipped_samples"],
        **self.dataset_counts,
    )

  def line(self, step: int, row: dict[str, float]) -> str:
    eta = (self.total_steps - step) * row["seconds_per_step"]
    return (f"step {step:>6}/{self.total_steps}  loss {row['loss']:.6f}  lr {row['learning_rate']:.2e}  "
            f"{row['images_per_second']:.1f} img/s  data {row.get('data_seconds_per_step', 0):.3f} s"
            f"/step  eta {eta / 60:.1f} min")


def train(config, workdir: Path, model, mesh, checkpointer, log, evaluate=None
          ) -> step_lib.TrainState:
  """Trains to `train.total_steps`, resuming from the latest checkpoint; `evaluate(state)` is
  called every `train.eval_every_steps` steps before the last, and on a new run's initial
  state with `train.eval_at_start`."""
  family = families.for_config(config)
  source = family.open_split(config, config.data.train_split)
  # Persons left out when the split was opened: constant for the run, carried by every row.
  dataset_counts = dict(dataset_skipped_persons=float(source.scan.skipped_persons),
                        dataset_filtered_persons=float(source.scan.filtered_persons))
  global_batch_size = config.input.batch_size  # divisible by devices and processes (config_check)
  # With data.mixture the main dataset fills main_share of each batch: an epoch is one pass
  # over it (SADI-Net's LSP + LSP-extended + MPII weights make that one pass over all three).
  steps_per_epoch = max(int(len(source) / (global_batch_size * mixture.main_share(config))), 1)
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

  # Batches go onto the mesh `input.device_prefetch` steps ahead; checkpoints record the
  # position of the next batch a step reads, not of the read-ahead (`device_prefetch`).
  data_iterator = device_prefetch.DevicePrefetch(
      iter(family.train_dataset(config, source, global_batch_size // jax.process_count())),
      mesh, config.input.get("device_prefetch", device_prefetch.DEFAULT_DEPTH))
  latest = checkpointer.latest_step()
  if latest is not None:
    state = checkpointer.restore(latest, abstract_state, data_iterator)
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
    if evaluate is not None and config.train.eval_at_start:
      evaluate(state)
  start_step = int(state.step)
  _say(f"training {config.model.name} for {total_steps} steps ({steps_per_epoch} steps/epoch, "
       f"global batch {global_batch_size}, {len(source)} records) on {jax.device_count()} devices")

  train_step = jax.jit(
      family.make_train_step(model, tx, config),
      in_shardings=(replicated, mesh_lib.batch_sharding(mesh), replicated),
      out_shardings=(replicated, replicated), donate_argnums=0)
  progress = _Progress(total_steps, start_step, schedule, dataset_counts)
  with preemption.StopRequest() as stop:
    state = _train_loop(config, train_step, state, data_iterator, step_rng, start_step,
                        total_steps, progress, checkpointer, log, stop, evaluate)
  checkpointer.wait()
  return state


# Steps dispatched but not finished. XLA's CPU client reserves a step's temporaries when the
# step is enqueued, so an unbounded queue between log steps multiplies the step's memory:
# SAMKR's synthetic step (4.1 GB of temporaries) grew to 23 GB and was OOM-killed with 20
# steps queued. On GPU/TPU two keep the device busy while the host reads the next batch.
# On CPU the "device" is the host's own cores, and a step queued behind the running one
# slows it down (SimpleBaseline-R50, batch 8, 2 cores: 3.7-5.3 s per step with two in flight,
# 1.9-2.1 s with one); one in flight still overlaps the next batch's reading with the step,
# because the loop waits only just before it dispatches.
ACCELERATOR_STEPS_IN_FLIGHT = 2
CPU_STEPS_IN_FLIGHT = 1


def max_steps_in_flight() -> int:
  return CPU_STEPS_IN_FLIGHT if jax.default_backend() == "cpu" else ACCELERATOR_STEPS_IN_FLIGHT


def wait_for_steps_in_flight(pending: list, limit: int | None = None) -> None:
  """Call just before dispatching a step: blocks until at most `limit - 1` of the dispatched
  steps (`pending`: their outputs, oldest first) are unfinished, so at most `limit` run or
  wait once the next is dispatched (`limit` defaults to `max_steps_in_flight()`). A
  synchronisation only: nothing is copied to the host."""
  limit = limit or max_steps_in_flight()
  if len(pending) >= limit:
    jax.block_until_ready(pending[-limit])


class DataWaitMeter:
  """Times the loop's wait for each batch (read and put on the mesh) and counts the steps
  whose batch came too late: the step before had already finished (`is_ready`), so the
  device sat idle waiting for data. A step after a log step is not counted (the log step's
  fetch drained the queue on purpose)."""

  def __init__(self):
    self.seconds, self.steps, self.late_batches = 0.0, 0, 0

  def next_batch(self, data_iterator, pending: list) -> dict[str, jax.Array]:
    """The next batch of `data_iterator` (global batches on the mesh: `DevicePrefetch`)."""
    start = time.perf_counter()
    batch = next(data_iterator)
    self.seconds += time.perf_counter() - start
    self.steps += 1
    if pending and all(leaf.is_ready() for leaf in jax.tree.leaves(pending[-1])):
      self.late_batches += 1
    return batch

  def take(self) -> dict[str, float]:
    """Figures since the last call: `data_seconds_per_step` (mmpose's data_time) and
    `data_late_fraction` (steps the device waited for their batch / steps); then resets."""
    steps = max(self.steps, 1)
    figures = dict(data_seconds_per_step=self.seconds / steps,
                   data_late_fraction=self.late_batches / steps)
    self.__init__()
    return figures


def _train_loop(config, train_step, state, data_iterator, step_rng, start_step: int,
                total_steps: int, progress, checkpointer, log, stop, evaluate
                ) -> step_lib.TrainState:
  # Rows past the restored step, or any row for a new run (a run killed before its first
  # checkpoint leaves some), are steps this run computes and logs again.
  log.truncate_after(start_step)
  # Non-finite updates up to this many in a row were skipped by the optimiser, not applied.
  skip_limit = (config.optim.max_consecutive_nonfinite_updates
                if config.optim.skip_nonfinite_updates else 0)
  pending: list[jax.Array] = []  # metrics of steps not yet fetched from the device
  unlogged: list[dict] = []  # fetched metrics of steps since the last row
  data_wait = DataWaitMeter()
  for step in range(start_step + 1, total_steps + 1):
    batch = data_wait.next_batch(data_iterator, pending)
    wait_for_steps_in_flight(pending)
    state, metrics = train_step(state, batch, step_rng)
    pending.append(metrics)
    stopping = stop.reached(step)
    log_due = step % config.train.log_every_steps == 0 or step == total_steps or stopping
    checkpoint_due = (step % config.train.checkpoint_every_steps == 0 or step == total_steps
                      or stopping)
    # Checked before every checkpoint too, so no checkpoint holds a diverged state.
    if log_due or checkpoint_due:
      fetched = jax.device_get(pending)
      for fetched_step, m in enumerate(fetched, start=step - len(fetched) + 1):
        # A step without the streak metric cannot skip updates: its streak is 0.
        loss = float(m["loss_sum"]) / float(m["num_samples"])
        streak = int(m.get("nonfinite_streak", 0))
        if (np.isfinite(loss) and np.isfinite(m["grad_norm"])) or 0 < streak <= skip_limit:
          continue
        last_good = checkpointer.latest_step()
        in_a_row = (f", {streak} in a row (more than optim.max_consecutive_nonfinite_updates"
                    f" = {skip_limit})" if skip_limit else "")
        raise TrainingDiverged(
            f"non-finite loss ({loss}) or gradient norm ({float(m['grad_norm'])}) at step "
            f"{fetched_step}{in_a_row}; last good checkpoint: "
            f"{'none' if last_good is None else f'{checkpointer.directory}/{last_good}'}")
      unlogged += fetched
      pending = []
    if log_due:
      row = dict(progress.row(step, unlogged), **data_wait.take())
      unlogged = []
      log.write(step, row)
      _say(progress.line(step, row))
    if checkpoint_due:
      checkpointer.save(step, state, data_iterator)
    eval_every = config.train.eval_every_steps
    if evaluate is not None and eval_every and step % eval_every == 0 and step < total_steps:
      evaluate(state)
    if stopping and step < total_steps:
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
  config_check.validate(config)  # before the workdir is written or anything compiles
  workdir = workdir_lib.prepare(workdir, config)
  mesh = mesh_lib.make_data_mesh()
  model = build_model(config)
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  log = metrics_log.MetricsLog(workdir)

  def evaluate(state: step_lib.TrainState) -> dict[str, float]:
    step = int(state.step)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    results = families.for_config(config).evaluate(config, model, variables, mesh, workdir, step)
    log.write(step, results)
    _say("eval step {}: {}".format(step, "  ".join(f"{k} {v:.4f}" for k, v in results.items())))
    return results

  try:
    if mode == "eval":
      state = restore_for_eval(config, model, mesh, checkpointer)
    else:
      state = train(config, workdir, model, mesh, checkpointer, log, evaluate)
    if mode == "train":
      return {}
    results = evaluate(state)
    step = int(state.step)
    written = [name for name in ("metrics.jsonl", f"results_val_step{step}.json",
                                 f"predictions_val_step{step}.png")
               if (Path(workdir) / name).exists()]  # each family writes what it has
    _say(f"results in {workdir}: {', '.join(written)}")
    return results
  finally:
    checkpointer.close()
