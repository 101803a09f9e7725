"""Checkpoints of the train state and the grain iterator, through orbax.

orbax writes each step into a temporary directory and renames it on commit, so a process
killed mid-write leaves no step that restores wrongly: the half-written one is ignored.
"""

from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from jaxpose.errors import UserError


class Checkpointer:
  """Saves and restores (train state, data iterator) pairs under `workdir/checkpoints`."""

  def __init__(self, workdir: Path, keep: int):
    self.directory = Path(workdir).absolute() / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

  def restore(self, step: int, abstract_state, data_iterator):
    """Returns the state at `step` with the shardings of `abstract_state`; rewinds the iterator.

    Any device count restores (orbax reshards the arrays onto `abstract_state`'s shardings,
    and each process's share of a global batch does not depend on its devices); the input
    pipeline's position is saved per process, so the process count must be the one that
    wrote the checkpoint.
    """
    args = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iterator is not None:
      self._check_process_count(step)
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]

  def _check_process_count(self, step: int) -> None:
    written = sorted((self.directory / str(step) / "data").glob("process_*-of-*.json"))
    counts = {p.stem.rpartition("-of-")[2] for p in written}
    if written and counts != {str(jax.process_count())}:
      raise UserError(
          f"{self.directory}/{step}: written by {'/'.join(sorted(counts))} processes, resumed with "
          f"{jax.process_count()}; the input pipeline's position is saved per process, so "
          f"resume with the same process count (any device count works), or evaluate it "
          f"with --mode eval")

  def restore_state_only(self, step: int, abstract_state):
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
