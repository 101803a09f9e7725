"""`python -m jaxpose.launch`: train and/or evaluate a config in a workdir.

  python -m jaxpose.launch                                          # configs/default.py
  python -m jaxpose.launch --config configs/default.py:smoke --workdir /tmp/smoke
  python -m jaxpose.launch --config configs/default.py --config.optim.base_lr=2e-3
  python -m jaxpose.launch --workdir runs/default --mode eval

Re-running the same command resumes from the workdir's latest checkpoint.
"""

import os
import sys
from pathlib import Path

from absl import flags, logging

from jaxpose import cli as cli_lib

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory for checkpoints, metrics.jsonl, results and the resolved "
    "config (default: runs/<config name>[-<args>]).")
_MODE = flags.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"],
                          "What to run.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 in a multi-process run "
    "(jax.distributed), with --num_processes and --process_id; default: $JAX_COORDINATOR_ADDRESS, "
    "or found by JAX under SLURM, Cloud TPU pods and Open MPI.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run "
                                      "(default: $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process "
                                   "run (default: $JAX_PROCESS_ID).")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", "~/.cache/jaxpose/xla", "JAX's persistent compilation cache: "
    "a resumed, repeated or --mode eval run of the same config and shapes loads its compiled "
    "steps instead of compiling them again. Empty: off. $JAX_COMPILATION_CACHE_DIR, if set, "
    "wins.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 30, "Multi-process runs: after this long without a process's "
    "heartbeat the others stop (with the last complete checkpoint named).")


def _fail(message: str) -> None:
  cli_lib.fail("jaxpose", message)


def _default_workdir(config_arg: str) -> str:
  path, _, args = config_arg.partition(":")
  name = Path(path).stem + (f"-{args.replace(',', '-').replace('=', '')}" if args else "")
  return os.path.join("runs", name)


def main(argv: list[str], config_flag) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; see --help")
  if not flags.FLAGS["verbosity"].present:
    # Progress lines are printed; library INFO chatter (orbax, pycocotools) stays hidden.
    logging.set_verbosity(logging.WARNING)
  config_arg = flags.FLAGS["config"].config_filename
  workdir = _WORKDIR.value or _default_workdir(config_arg)
  from jaxpose import distributed  # pylint: disable=g-import-not-at-top
  try:
    cluster = distributed.find_cluster(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:
    _fail(str(e))
  if cluster and distributed.SUPERVISED_ENV not in os.environ:
    distributed.supervise(cluster, workdir)  # runs this command again as its child
  # Before XLA's first allocation: reuse its per-step buffers instead of page-faulting them.
  from jaxpose import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.keep_freed_memory_mapped()
  # Imported after flag parsing, so `--help` and flag errors stay fast.
  import jax  # pylint: disable=g-import-not-at-top
  if _COMPILATION_CACHE.value and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_COMPILATION_CACHE.value))
  if cluster:
    distributed.initialize(cluster, _HEARTBEAT_TIMEOUT.value)
    print(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} "
          f"local of {jax.device_count()} devices ({jax.devices()[0].platform})", flush=True)
  from jaxpose import train  # pylint: disable=g-import-not-at-top
  from jaxpose.errors import Preempted, TrainingDiverged, UserError  # pylint: disable=g-import-not-at-top

  try:
    train.run(config_flag.value, workdir, _MODE.value)
  except (UserError, TrainingDiverged) as e:
    _fail(str(e))
  except Preempted as e:  # a scheduler's SIGTERM: the checkpoint is written, not a failure
    print(str(e), flush=True)
    sys.exit(0)


def cli() -> None:
  cli_lib.run("jaxpose", main)


if __name__ == "__main__":
  cli()
