"""SIGTERM -> stop at the next step boundary with a checkpoint, instead of dying mid-step.

TPU and GPU schedulers send SIGTERM before they kill a preempted job. The handler only sets
a flag; the train loop reads it after each step, saves a checkpoint of that step, waits for
orbax to commit it and raises `errors.Preempted` (the CLI exits 0). A SIGKILL, or a second
signal during the save, can still interrupt: orbax writes each step to a temporary
directory and renames it on commit, so an interrupted save is ignored on restore and at
most the steps since the last committed checkpoint are lost.

Single process only: with several processes each one stops on its own signal, which the
multi-host issue (#9) replaces with `multihost_utils.reached_preemption_sync_point`.
"""

import signal
import threading


class StopRequest:
  """Context manager: while active, SIGTERM sets `requested` instead of ending the process.

  Signal handlers can only be installed from the main thread; elsewhere (e.g. a test
  runner's worker thread) the manager does nothing and `requested` stays False.
  """

  def __init__(self, signum: int = signal.SIGTERM):
    self._signum = signum
    self._previous = None
    self.requested = False

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.requested = True

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(self._signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(self._signum, self._previous)
