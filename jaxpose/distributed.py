"""Multi-process runs on JAX's own multi-controller runtime (`jax.distributed`).

Every process runs the same `python -m jaxpose.launch` command. Which processes form the job
comes from, in order: `--coordinator_address/--num_processes/--process_id` (or the
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` environment variables), or
JAX's cluster detection (SLURM, Cloud TPU pods, Open MPI) when it sees a cluster of more than
one process. Nothing else is jaxpose's own: the mesh spans `jax.devices()`, the global batch is
built with `jax.make_array_from_process_local_data`, orbax coordinates the checkpoint commit.

Failing fast: when a process dies, JAX's coordination service notices the missing heartbeats
(`--heartbeat_timeout_seconds`) and terminates the others from C++, with a message that
names the dead process but not the one ending. So a multi-process trainer runs as a child of
a small supervisor (this module's `supervise`), which says which process stopped, why, and
which checkpoint is the last complete one.
"""

import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

SUPERVISED_ENV = "JAXPOSE_SUPERVISED_CHILD"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclasses.dataclass(frozen=True)
class Cluster:
  """What `jax.distributed.initialize` is given; None fields are left to JAX's detection."""
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None

  @property
  def label(self) -> str:
    """`index/count` for messages, from the explicit values or the scheduler's variables."""
    index = self.process_id
    if index is None:
      index = os.environ.get("SLURM_PROCID", os.environ.get("TPU_WORKER_ID",
                                                            os.environ.get("OMPI_COMM_WORLD_RANK", "?")))
    count = self.num_processes
    if count is None:
      count = os.environ.get("SLURM_NTASKS", os.environ.get("OMPI_COMM_WORLD_SIZE", "?"))
    return f"{index}/{count}"


def _env_int(name: str) -> int | None:
  text = os.environ.get(name)
  if text is None:
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(f"environment variable {name}={text!r}: expected an integer") from None


def find_cluster(coordinator_address: str | None, num_processes: int | None,
                 process_id: int | None) -> Cluster | None:
  """The multi-process job this process belongs to, or None for a single-process run."""
  explicit = Cluster(coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"),
                     num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES"),
                     process_id if process_id is not None else _env_int("JAX_PROCESS_ID"))
  given = [v is not None for v in dataclasses.astuple(explicit)]
  if any(given) and not all(given):
    raise ValueError("--coordinator_address, --num_processes and --process_id (or "
                     "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) go together; "
                     "set all three or none")
  if all(given):
    return explicit if explicit.num_processes > 1 else None
  if _env_int("SLURM_NTASKS") not in (None, 1) and "SLURM_JOB_ID" in os.environ:
    return Cluster(None, None, None)
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):  # a multi-host Cloud TPU slice
    return Cluster(None, None, None)
  if _env_int("OMPI_COMM_WORLD_SIZE") not in (None, 1):
    return Cluster(None, None, None)
  return None


def initialize(cluster: Cluster, heartbeat_timeout_seconds: int) -> None:
  """Joins the job. Must run before anything touches a JAX backend."""
  import jax  # pylint: disable=g-import-not-at-top
  # CPU processes exchange collectives through gloo (the GPU and TPU backends have their own).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(cluster.coordinator_address, cluster.num_processes,
                             cluster.process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_seconds)


def _last_complete_checkpoint(workdir: str) -> str:
  # orbax commits a step by renaming its temporary directory to the bare step number.
  directory = Path(workdir).absolute() / "checkpoints"
  steps = sorted(int(p.name) for p in directory.glob("*") if p.name.isdigit()) if directory.is_dir() else []
  return f"{directory}/{steps[-1]}" if steps else "none"


def _die_with_parent() -> None:
  """In the child, before exec: a SIGKILLed supervisor takes its trainer with it (Linux), so
  killing a process of the job kills all of it, as the other processes will see."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  except (AttributeError, OSError):  # not Linux: the supervisor's own death goes unnoticed
    pass


def supervise(cluster: Cluster, workdir: str) -> NoReturn:
  """Runs this same command as a child and exits with its code; if the child did not end
  cleanly (0, or 2 for the one-line user errors), says which process stopped and why."""
  child = subprocess.Popen([sys.executable, "-m", "jaxpose.launch", *sys.argv[1:]],
                           env={**os.environ, SUPERVISED_ENV: "1"}, preexec_fn=_die_with_parent)
  for signum in (signal.SIGTERM, signal.SIGINT):  # a scheduler's preemption signal is the child's
    signal.signal(signum, lambda s, _: child.send_signal(s))
  code = child.wait()
  if code in (0, 2):
    sys.exit(code)
  how = (f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}")
  print(f"jaxpose: error: process {cluster.label}: the trainer {how}. If another process "
        f"died or a collective timed out, its log says why (JAX stops the survivors after "
        f"the heartbeat timeout). Last complete checkpoint: "
        f"{_last_complete_checkpoint(workdir)}; re-run the same command on every process to "
        f"resume from it.", file=sys.stderr, flush=True)
  sys.exit(1)
