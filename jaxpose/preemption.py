"""SIGTERM -> stop at the next step boundary with a checkpoint, instead of dying mid-step.

TPU and GPU schedulers send SIGTERM before they kill a preempted job. The handler only sets
a flag; the train loop reads it after each step, saves a checkpoint of that step, waits for
orbax to commit it and raises `errors.Preempted` (the CLI exits 0). A SIGKILL, or a second
signal during the save, can still interrupt: orbax writes each step to a temporary
directory and renames it on commit, so an interrupted save is ignored on restore and at
most the steps since the last committed checkpoint are lost.

With several processes (jax.distributed), a scheduler's SIGTERM may reach the processes at
different steps, and saving is collective, so the processes must agree on the step: JAX's
preemption service (started by `jax.distributed.initialize`) catches the signal and
`multihost_utils.reached_preemption_sync_point(step)` turns true at the same step on all of
them; this module then leaves SIGTERM to JAX.
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils


class StopRequest:
  """Context manager: while active, SIGTERM asks the train loop to stop; `reached(step)`,
  called once per step by every process, says whether to stop after that step.

  Signal handlers can only be installed from the main thread; elsewhere (e.g. a test
  runner's worker thread) a single-process manager does nothing and never stops.
  """

  def __init__(self, signum: int = signal.SIGTERM):
    self._signum = signum
    self._previous = None
    self._multi_process = jax.process_count() > 1
    self.requested = False

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if self._multi_process:
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __enter__(self) -> "StopRequest":
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(self._signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(self._signum, self._previous)
