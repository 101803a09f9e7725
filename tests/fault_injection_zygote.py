"""A fork server for `tests/test_fault_injection.py`: `python -m jaxpose.launch` runs that
do not pay Python's imports on each of the test's twenty restarts.

Run as a script. It imports JAX, orbax, grain and the jaxpose modules that do not touch a
device (several seconds of the trainer's start-up on a loaded 2-core machine), registers
the tiny test model (`fault_injection_model.py`), then reads one JSON request per stdin
line, {"argv": [launch flags...], "log": path}, forks a child that runs
`jaxpose.launch.cli()` with those flags (stdout and stderr to `log`), prints {"pid": N},
waits for the child and prints {"exit": code} (negative: killed by that signal, as
`subprocess` reports it). Each child is a separate process, killed with a real SIGKILL.

Forking is safe only before JAX creates its backend (XLA's thread pools do not survive a
fork), so the server checks that none exists; `jaxpose.step` and `jaxpose.train`, which
build arrays at import, are imported by each child.
"""

import json
import os
import sys

from jax._src import xla_bridge

import fault_injection_model
import jaxpose.checkpoint  # noqa: F401  pylint: disable=unused-import
import jaxpose.config_check  # noqa: F401  pylint: disable=unused-import
import jaxpose.launch
import jaxpose.metrics_log  # noqa: F401  pylint: disable=unused-import
import jaxpose.preemption  # noqa: F401  pylint: disable=unused-import
import jaxpose.pretrained  # noqa: F401  pylint: disable=unused-import
import jaxpose.workdir  # noqa: F401  pylint: disable=unused-import
from jaxpose import models


def _run_child(request: dict) -> int:
  log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  os.dup2(log, 1)
  os.dup2(log, 2)
  os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
  sys.argv = ["jaxpose.launch", *request["argv"]]
  try:
    jaxpose.launch.cli()
    code = 0
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  return code


def main() -> None:
  if xla_bridge.backends_are_initialized():
    raise RuntimeError("a JAX backend exists before forking; the children would deadlock")
  fault_injection_model.register(models)
  print(json.dumps({"ready": True}), flush=True)
  for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
      os._exit(_run_child(request))  # pylint: disable=protected-access
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
  main()
