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
    self._check_model_fits(step, abstract_state)
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

  def _check_model_fits(self, step: int, abstract_state) -> None:
    """A checkpoint of another model (a workdir reused with a changed config) is refused
    with the missing, unexpected and mis-shaped parameter names listed."""
    saved = ocp.StandardCheckpointer().metadata(self.directory / str(step) / "state").item_metadata
    problems = []
    for collection in ("params", "batch_stats"):
      have = _shapes(dict(saved).get(collection, {}), collection)
      want = _shapes(getattr(abstract_state, collection), collection)
      problems += [f"missing {k} {want[k]}" for k in sorted(want.keys() - have.keys())]
      problems += [f"unexpected {k} {have[k]}" for k in sorted(have.keys() - want.keys())]
      problems += [f"{k}: saved {have[k]}, model {want[k]}"
                   for k in sorted(want.keys() & have.keys()) if have[k] != want[k]]
    if problems:
      shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
      raise UserError(f"{self.directory}/{step}: the checkpoint does not fit this config's model "
                      f"({len(problems)} differences: {shown}); use another --workdir, or the "
                      f"config it was trained with ({self.directory.parent}/config.json)")

  def restore_state_only(self, step: int, abstract_state):
    self._check_model_fits(step, abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def _shapes(tree, prefix: str) -> dict[str, tuple[int, ...]]:
  """`prefix/a/b/kernel` -> shape, for every leaf of a params-like tree of arrays or metadata."""
  def name(key) -> str:
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join([prefix, *map(name, path)]): tuple(leaf.shape) for path, leaf in leaves}
