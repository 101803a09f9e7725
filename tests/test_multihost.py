"""Data-parallel and multi-host training: 1 device, 4 simulated devices, and 2 processes x 2
CPU devices on localhost (jax.distributed).

The two-process run must compute what one process with the same 4 devices computes (same
global batches, same losses, same params, same eval metrics), checkpoint and resume, and
stop within 60 s, naming itself and the last complete checkpoint, when its peer is killed.
"""

import concurrent.futures
import json
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, SMOKE, launch, read_metrics, subprocess_env
from test_launch import _METRIC_NAMES, _assert_trees_close, _final_params

# Plain SGD: under Adam, float reduction-order noise in the gradient sums (another device
# count's, or gloo's instead of XLA's in-process one) is amplified to O(lr) in parameters whose
# gradient is near zero (m / sqrt(v) is about its sign), which says nothing about the
# sharding (measured: 7e-5 relative after 5 Adam steps on 4 vs 1 devices, 1.3e-5 in the
# step-3 loss of 2 processes vs 1).
_OVERRIDES = ("--config.optim.name=sgd", "--config.optim.base_lr=0.05",
              "--config.train.checkpoint_every_steps=3", "--config.optim.decay_steps=(2,)")


def _assert_a_complete_run(workdir, stdout: str, steps: int) -> None:
  """What a train_and_eval run leaves: a row per step, the eval row, the results json, the
  prediction picture, the resolved config and the progress lines."""
  rows = read_metrics(workdir)
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train_rows)
  eval_row = rows[-1]
  assert eval_row["step"] == steps
  for name in _METRIC_NAMES:  # pycocotools gives -1 for an area range with no persons
    assert 0.0 <= eval_row[name] <= 1.0 or (name in ("APm", "APl") and eval_row[name] == -1)
  assert (workdir / f"results_val_step{steps}.json").exists()
  assert (workdir / f"predictions_val_step{steps}.png").stat().st_size > 1000
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["name"] == "simplebaseline_r18"
  assert f"step {steps:>6}/{steps}" in stdout


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_processes(workdir, *overrides, cache_dir, mode="train", num_processes=2,
                     heartbeat_seconds=None) -> list[subprocess.Popen]:
  """`python -m jaxpose.launch` once per process, 2 CPU devices each, as a pod would run it."""
  port = _free_port()
  processes = []
  for index in range(num_processes):
    env = subprocess_env(cache_dir, devices=2)
    command = [sys.executable, "-m", "jaxpose.launch", "--config", SMOKE, "--workdir",
               str(workdir), "--mode", mode, f"--config.data.synthetic.cache_dir={cache_dir}",
               f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
               f"--process_id={index}", *overrides]
    if heartbeat_seconds:
      command.append(f"--heartbeat_timeout_seconds={heartbeat_seconds}")
    log = open(workdir.parent / f"{workdir.name}-process{index}.log", "w")  # pylint: disable=consider-using-with
    processes.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=log,
                                      stderr=subprocess.STDOUT, text=True))
  return processes


def _log(workdir, index) -> str:
  return (workdir.parent / f"{workdir.name}-process{index}.log").read_text()


def _run_processes(workdir, *overrides, cache_dir, mode="train") -> None:
  processes = _start_processes(workdir, *overrides, cache_dir=cache_dir, mode=mode)
  for index, process in enumerate(processes):
    assert process.wait(timeout=600) == 0, _log(workdir, index)


def test_one_device_four_devices_and_two_processes_train_alike(tmp_path, synthetic_cache):
  """1 process x 1 device, 1 x 4 and 2 x 2 devices on the same global batches: the same
  losses and params (to 1e-5), and the same eval metrics for 1 x 4 and 2 x 2."""
  single, one, two = tmp_path / "single", tmp_path / "one", tmp_path / "two"

  # The single-device run and the four-device one (both its launches) also evaluate their
  # initial weights: that must leave training unchanged, and a resumed run must not repeat it.
  at_start = "--config.train.eval_at_start=True"

  def single_device():
    launch(single, *_OVERRIDES, "--config.train.total_steps=5", at_start, devices=1,
           cache_dir=synthetic_cache)

  def four_devices():
    # Each run: 3 steps, then the same command with 5 steps resumes from the step-3 checkpoint.
    launch(one, *_OVERRIDES, "--config.train.total_steps=3", at_start, devices=4,
           cache_dir=synthetic_cache)
    return launch(one, *_OVERRIDES, "--config.train.total_steps=5", at_start, devices=4,
                  cache_dir=synthetic_cache, mode="train_and_eval")

  # The two-process run puts each batch on the devices when the step asks for it; the others
  # read two ahead (the default): the same global batches, resumed at the same step, say
  # that read-ahead moves no checkpointed data position.
  no_read_ahead = "--config.input.device_prefetch=0"

  def two_processes():
    _run_processes(two, *_OVERRIDES, "--config.train.total_steps=3", no_read_ahead,
                   cache_dir=synthetic_cache)
    _run_processes(two, *_OVERRIDES, "--config.train.total_steps=5", no_read_ahead,
                   cache_dir=synthetic_cache, mode="train_and_eval")

  # The three are independent (own workdirs, own programs): run side by side, since start-up
  # and compiling are mostly single-threaded and the machine has more than one core.
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    runs = [pool.submit(f) for f in (single_device, four_devices, two_processes)]
    _, result, _ = [run.result() for run in runs]
  _assert_a_complete_run(one, result.stdout, steps=5)
  for index in (0, 1):
    assert f"process {index}/2: 2 local of 4 devices (cpu)" in _log(two, index)
  assert "resumed from" in _log(two, 0)
  assert (one / "checkpoints" / "3").is_dir() and (two / "checkpoints" / "3").is_dir()

  for workdir, eval_steps in ((single, [0]), (one, [0, 5])):
    rows = read_metrics(workdir)
    assert rows[0]["step"] == 0 and "AP" in rows[0], rows[0]  # before the first train row
    assert [r["step"] for r in rows if "AP" in r] == eval_steps, rows
  # Data parallelism computes the single-device step. atol: BatchNorm biases start at 0 and
  # move by ~1e-8 in 5 steps; their noise from another summation order is ~1e-10.
  train_single = [r for r in read_metrics(single) if "loss" in r]
  train_four = [r for r in read_metrics(one) if "loss" in r]
  np.testing.assert_allclose([r["loss"] for r in train_four],
                             [r["loss"] for r in train_single], rtol=1e-5)
  _assert_trees_close(_final_params(one, 5), _final_params(single, 5), rtol=1e-5, atol=1e-7)

  rows_one, rows_two = read_metrics(one), read_metrics(two)  # written by process 0 alone
  train_one = [r for r in rows_one if "loss" in r]
  train_two = [r for r in rows_two if "loss" in r]
  assert [r["step"] for r in train_two] == [1, 2, 3, 4, 5]
  # The same global batches (the pipeline splits each one between the processes)...
  assert [r["data_fingerprint"] for r in train_two] == [r["data_fingerprint"] for r in train_one]
  # ...give the same losses and params, up to the order of the cross-process sums.
  np.testing.assert_allclose([r["loss"] for r in train_two], [r["loss"] for r in train_one],
                             rtol=1e-5)
  _assert_trees_close(_final_params(two, 5), _final_params(one, 5), rtol=1e-5, atol=1e-7)
  eval_one, eval_two = rows_one[-1], rows_two[-1]
  for name in _METRIC_NAMES:  # every val person scored once: the gather lost and doubled none
    assert eval_two[name] == pytest.approx(eval_one[name], abs=1e-6), name
  # Each process checkpointed its own input-pipeline position.
  data_files = {p.name for p in (two / "checkpoints" / "5" / "data").iterdir()}
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= data_files, data_files

  # One process cannot resume the two processes' input pipelines (tests/test_checkpoint.py);
  # their params restore onto other device counts (test_killing_one_process_stops_the_other).


def test_killing_one_process_stops_the_other(tmp_path, synthetic_cache):
  workdir = tmp_path / "run"
  processes = _start_processes(
      workdir, "--config.train.total_steps=500", "--config.train.checkpoint_every_steps=2",
      cache_dir=synthetic_cache, heartbeat_seconds=10)
  deadline = time.time() + 900  # a loaded 2-core machine compiles the step for minutes
  while not any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")):
    assert time.time() < deadline and processes[0].poll() is None, _log(workdir, 0)
    time.sleep(0.1)
  processes[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  code = processes[0].wait(timeout=120)
  assert time.time() - killed_at < 60, "the surviving process did not stop within 60 s"
  output = _log(workdir, 0)
  assert code == 1, output
  message = [line for line in output.splitlines() if line.startswith("jaxpose: error: process 0/2")]
  assert message, output
  committed = sorted(int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit())
  assert f"Last complete checkpoint: {workdir / 'checkpoints'}/{committed[-1]}" in message[0]
  params = _final_params(workdir, committed[-1])  # intact and restorable
  assert all(np.isfinite(np.asarray(x)).all() for x in __import__("jax").tree.leaves(params))
