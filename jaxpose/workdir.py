"""The run directory: checked for writability up front, holding the resolved config."""

import os
from pathlib import Path

import jax
import ml_collections

from jaxpose.errors import UserError


def prepare(workdir: str | Path, config: ml_collections.ConfigDict) -> Path:
  """Creates `workdir`, proves it is writable, and saves the resolved config in it."""
  workdir = Path(os.path.expanduser(str(workdir)))
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / ".write_probe"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise UserError(f"--workdir {workdir}: cannot write there ({e.strerror or e})") from None
  if jax.process_index() == 0:
    tmp = workdir / "config.json.tmp"
    tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    tmp.replace(workdir / "config.json")
  return workdir
