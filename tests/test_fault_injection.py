"""kill -9 at 20 seeded moments of a smoke run, across start-up, training and checkpoint
writes (issue #10 parts 1 and 2): every kill leaves a latest checkpoint that restores to
exactly the uninterrupted run's state at that step (a half-written step is ignored), and
the chain of re-runs ends bitwise equal to the uninterrupted run: params, BatchNorm
statistics, Adam's moments and the data iterator's position.

SIGTERM (finish the step, checkpoint it, exit 0, resume exactly) is
`tests/test_launch.py::test_sigterm_checkpoints_the_current_step_and_exits_zero`.

Restarts are made cheap: the runs are forked from a server that has imported JAX and the
other libraries once (`tests/fault_injection_zygote.py`; each run is still a separate
process killed with SIGKILL), the compiled steps come from JAX's persistent compilation
cache in a temporary directory, and the smoke config runs at 32x32, batch 2, a checkpoint
every step.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fault_injection_model
from conftest import REPO, SMOKE, read_metrics

ZYGOTE = Path(__file__).with_name("fault_injection_zygote.py")
NUM_KILLS = 20
TOTAL_STEPS = 20
_OVERRIDES = (f"--config.model.name={fault_injection_model.NAME}",
              f"--config.train.total_steps={TOTAL_STEPS}",
              "--config.train.checkpoint_every_steps=1", "--config.train.log_every_steps=1",
              "--config.optim.decay_steps=(8,)", "--config.input.batch_size=2",
              "--config.input.size_hw=(32,32)")
_TMP_MARK = ".orbax-checkpoint-tmp"


class _Zygote:
  """The fork server: `spawn` starts one `jaxpose.launch` run, `wait` returns its exit code."""

  def __init__(self, env: dict[str, str]):
    self.process = subprocess.Popen([sys.executable, str(ZYGOTE)], cwd=REPO, env=env, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert json.loads(self.process.stdout.readline()) == {"ready": True}

  def spawn(self, argv: list[str], log: Path) -> int:
    self.process.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
    self.process.stdin.flush()
    return json.loads(self.process.stdout.readline())["pid"]

  def exited(self, timeout: float) -> bool:
    return bool(select.select([self.process.stdout], [], [], timeout)[0])

  def wait(self) -> int:
    return json.loads(self.process.stdout.readline())["exit"]

  def close(self) -> None:
    self.process.stdin.close()
    try:
      self.process.wait(timeout=60)
    except subprocess.TimeoutExpired:  # still waiting for a run: a failed test left it
      self.process.kill()


def _scan(checkpoints: Path) -> tuple[set[int], set[tuple[int, int]]]:
  """Committed steps, and orbax's temporary (uncommitted) step directories as (step, inode):
  orbax reuses a leftover directory's name when it writes that step again."""
  if not checkpoints.exists():
    return set(), set()
  steps, tmps = set(), set()
  for entry in os.scandir(checkpoints):
    if entry.name.isdigit():
      steps.add(int(entry.name))
    elif _TMP_MARK in entry.name:
      tmps.add((int(entry.name.split(".")[0]), entry.inode()))
  return steps, tmps


class _Timeline:
  """Polls a run's checkpoint directory: when each of its writes began, when each step
  committed (leftovers of earlier runs excluded)."""

  def __init__(self, checkpoints: Path):
    self.checkpoints, self.start = checkpoints, time.monotonic()
    self.committed_before, self.tmps_before = _scan(checkpoints)
    self.write_began: dict[tuple[int, int], float] = {}
    self.committed: dict[int, float] = {}

  def poll(self) -> None:
    steps, tmps = _scan(self.checkpoints)
    now = time.monotonic() - self.start
    for tmp in tmps - self.tmps_before:
      self.write_began.setdefault(tmp, now)
    for step in steps - self.committed_before:
      self.committed.setdefault(step, now)

  def unfinished_writes(self) -> set[int]:
    """Steps whose write this run began and left uncommitted (call after it ended)."""
    steps, tmps = _scan(self.checkpoints)
    return {step for step, inode in tmps - self.tmps_before if step not in steps}


def _run(zygote, workdir, argv, trigger=None, timeout=300.0):
  """Runs to the end, or until `trigger(timeline)` says kill; returns (exit code, timeline)."""
  log = workdir.with_suffix(".log")
  pid = zygote.spawn(argv, log)
  timeline = _Timeline(workdir / "checkpoints")
  timed_out = False
  while not zygote.exited(0.002):
    timeline.poll()
    timed_out = time.monotonic() - timeline.start > timeout
    if timed_out or (trigger is not None and trigger(timeline)):
      os.kill(pid, signal.SIGKILL)
      break
  code = zygote.wait()
  assert not timed_out, f"no exit and no kill after {timeout} s:\n{log.read_text()}"
  if trigger is None:
    assert code == 0, log.read_text()
  return code, timeline


def _at_time(anchor_commits: int, delay: float):
  """Kill `delay` s after the run's `anchor_commits`-th new checkpoint (0: after its start)."""
  def trigger(timeline):
    if anchor_commits == 0:
      anchor = 0.0
    elif len(timeline.committed) >= anchor_commits:
      anchor = sorted(timeline.committed.values())[anchor_commits - 1]
    else:
      return False
    return time.monotonic() - timeline.start >= anchor + delay
  return trigger


def _in_write(nth_write: int, delay: float):
  """Kill `delay` s after the run's `nth_write`-th checkpoint write began."""
  def trigger(timeline):
    began = sorted(timeline.write_began.values())
    return (len(began) >= nth_write
            and time.monotonic() - timeline.start >= began[nth_write - 1] + delay)
  return trigger


def _choose_kill(rng: np.random.Generator, done: int, step_period: float, write_time: float,
                 startup: float):
  """A seeded kill moment for a run resuming after step `done`: (kind, trigger).

  "start": during start-up or the restore, before the run's first checkpoint write;
  "train": within one step (and its checkpoint) after the run's first new checkpoint;
  "write": within one checkpoint write's duration after the 1st or 2nd write began.
  The latter two fire within about two new checkpoints, so a run 4 steps from the end is
  only killed at start-up: the chain never finishes early.
  """
  kind = str(rng.choice(["start", "train", "write"], p=[0.2, 0.35, 0.45]))
  if kind == "train" and done + 4 < TOTAL_STEPS:
    return kind, _at_time(1, float(rng.uniform(0, step_period)))
  if kind == "write" and done + 4 < TOTAL_STEPS:
    return kind, _in_write(int(rng.integers(1, 3)), float(rng.uniform(0, write_time)))
  return "start", _at_time(0, float(rng.uniform(0, startup)))


def _restore(step_dir: Path) -> dict:
  """A checkpoint as a re-run reads it: the train state restored by orbax onto this
  process's CPU, and the grain iterator's saved position (its JSON file's text)."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        dict(checkpointer.metadata(step_dir / "state").item_metadata))
  data = {p.name: p.read_text() for p in sorted((step_dir / "data").glob("*.json"))}
  assert data, f"{step_dir}/data holds no iterator state"
  return dict(state=checkpointer.restore(step_dir / "state", target), data=data)


def _assert_bitwise_equal(a: dict, b: dict, what: str) -> None:
  """Equal values leaf by leaf (chex names the first that differs) and equal bytes (which
  also tells -0.0 from 0.0 and NaN payloads apart)."""
  import chex  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  chex.assert_trees_all_equal(a["state"], b["state"], custom_message=what)
  assert a["data"] == b["data"], what
  as_bytes = lambda tree: jax.tree.map(lambda x: np.asarray(x).tobytes(), tree)
  assert as_bytes(a["state"]) == as_bytes(b["state"]), what


def _latest_step(checkpoints: Path) -> int | None:
  """The step a re-run would restore, as orbax finds it."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if not checkpoints.exists():
    return None
  manager = ocp.CheckpointManager(checkpoints, options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    return manager.latest_step()
  finally:
    manager.close()


@pytest.fixture
def zygote(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  server = _Zygote(env)
  yield server
  server.close()


def test_kill_9_at_20_moments_resumes_bitwise(tmp_path, synthetic_cache, zygote):
  started = time.monotonic()
  argv = ["--config", SMOKE, "--mode", "train",
          f"--config.data.synthetic.cache_dir={synthetic_cache}", *_OVERRIDES]
  straight = tmp_path / "straight"
  # The reference keeps every step, so each kill's latest checkpoint has its twin.
  _, timeline = _run(zygote, straight, [*argv, "--workdir", str(straight),
                                        f"--config.train.keep_checkpoints={TOTAL_STEPS}"])
  assert sorted(timeline.committed) == list(range(1, TOTAL_STEPS + 1))
  # Its pace sets the kill delays: one step and its checkpoint, one checkpoint write.
  step_period = float(np.median(np.diff(sorted(timeline.committed.values()))))
  write_time = float(np.median([timeline.committed[step] - began
                                for (step, _), began in timeline.write_began.items()
                                if step in timeline.committed]))
  reference = {}  # step -> the uninterrupted run's checkpoint, restored when first needed

  def assert_equals_reference(step, what):
    if step not in reference:
      reference[step] = _restore(straight / "checkpoints" / str(step))
    _assert_bitwise_equal(_restore(checkpoints / str(step)), reference[step], what)

  killed = tmp_path / "killed"
  checkpoints = killed / "checkpoints"
  rng = np.random.default_rng(10)
  startup = 3.0  # until the first chain run measures it: spawn -> its first checkpoint write
  report = []
  for kill in range(NUM_KILLS):
    before = _latest_step(checkpoints)
    done = before or 0
    kind, trigger = _choose_kill(rng, done, step_period, write_time, startup)
    code, timeline = _run(zygote, killed, [*argv, "--workdir", str(killed)], trigger)
    assert code == -signal.SIGKILL, (kill, kind, code, (killed.with_suffix(".log")).read_text())
    if timeline.write_began:
      startup = min(timeline.write_began.values())
    latest = _latest_step(checkpoints)
    steps, _ = _scan(checkpoints)
    # Nothing committed is lost (at most the step being written when the kill came), and a
    # half-written step is not taken for a checkpoint.
    assert (latest or 0) >= done, (kill, before, latest)
    assert latest is None or latest == max(steps)
    unfinished = timeline.unfinished_writes()
    assert all(step > (latest or 0) for step in unfinished), (unfinished, latest)
    mid_write = bool(unfinished)
    if latest is not None:
      assert_equals_reference(latest, f"kill {kill} ({kind}): checkpoint {latest}")
    report.append((kind, round(time.monotonic() - timeline.start, 2), before, latest,
                   mid_write))

  _run(zygote, killed, [*argv, "--workdir", str(killed)])
  assert _latest_step(checkpoints) == TOTAL_STEPS
  assert_equals_reference(TOTAL_STEPS, "the end of the chain")
  straight_rows, killed_rows = read_metrics(straight), read_metrics(killed)
  assert [r["step"] for r in killed_rows] == list(range(1, TOTAL_STEPS + 1))
  for a, b in zip(straight_rows, killed_rows):
    assert (a["data_fingerprint"], a["loss"]) == (b["data_fingerprint"], b["loss"]), a["step"]
  mid_writes = sum(r[-1] for r in report)
  (tmp_path / "report.json").write_text(json.dumps(dict(
      seconds=time.monotonic() - started, step_period=step_period, write_time=write_time,
      kills=report)))
  print(f"\n{NUM_KILLS} kills, {mid_writes} inside a checkpoint write; "
        f"{time.monotonic() - started:.1f} s; (kind, seconds after start, latest before, "
        f"latest after, mid-write): {report}")
  assert mid_writes >= 3, report
