"""`python -m jaxpose.data.check`: lists every planted fault and nothing else; exit codes."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, SMOKE
from hostile_dataset import EMPTY_SPLIT, make_hostile_dataset
from jaxpose.data import faults

# `file: entry: what [kind]`, or `file: what [kind]` for a whole-file fault.
_FAULT_LINE = re.compile(r"^(?P<where>.*?): (?P<message>[^:]*) \[(?P<kind>[a-z_]+)\]$")


def _check(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "jaxpose.data.check", "--config", SMOKE, *args],
                        env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def _listed_faults(stdout: str) -> set[tuple[str, str, str]]:
  """(kind, file, entry) of every fault line; entries have no ': ', paths here neither."""
  listed = set()
  for line in stdout.splitlines():
    match = _FAULT_LINE.match(line)
    if match and match["kind"] in faults.FAULT_KINDS:
      file, _, entry = match["where"].partition(": ")
      listed.add((match["kind"], file, entry))
  return listed


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
  return make_hostile_dataset(tmp_path_factory.mktemp("hostile") / "coco")


def test_lists_every_planted_fault_and_nothing_else(hostile):
  result = _check("--config.data.source=coco", f"--config.data.root={hostile.root}")
  assert result.returncode == 1, result.stderr
  planted = {(f.kind, f.file, f.entry) for f in hostile.faults}
  assert _listed_faults(result.stdout) == planted
  # Colour modes are converted, and filtered persons are not faults: neither is listed.
  for path in hostile.converted_images:
    assert path not in result.stdout
  summary = result.stdout[result.stdout.index("summary:"):]
  assert re.search(r"no_labelled_keypoints +- +1 +filtered", summary), summary
  corrupt = [f for f in hostile.by_split("train") if f.kind == "corrupt_image"]
  assert re.search(rf"corrupt_image +{len(corrupt)} +{sum(f.persons for f in corrupt)} ", summary)
  assert f"{len(planted)} fault(s)" in summary
  # Per split: persons passing the start-up checks, from the planted json alone.
  assert f"{hostile.usable_train_persons} persons on" in summary


def test_split_flag_and_an_empty_annotation_file(hostile):
  result = _check("--config.data.source=coco", f"--config.data.root={hostile.root}",
                  f"--config.data.val_split={EMPTY_SPLIT}", "--split=val")
  assert result.returncode == 1
  assert _listed_faults(result.stdout) == {
      ("unreadable_annotation_file", str(hostile.empty_file), "")}
  assert "person_keypoints_train.json" not in result.stdout


def test_clean_dataset_exits_zero(tmp_path):
  result = _check(f"--config.data.synthetic.cache_dir={tmp_path}")
  assert result.returncode == 0, result.stdout + result.stderr
  assert _listed_faults(result.stdout) == set()
  assert result.stdout.rstrip().endswith("0 fault(s)")


@pytest.mark.parametrize("args, culprit", [
    (("--split=tain",), "--split=tain"),
    (("--config.data.sourse=coco",), "sourse"),
    (("--config.data.source=coco",), "data.root"),
])
def test_bad_command_line_is_one_line_and_exit_two(args, culprit):
  result = _check(*args)
  assert result.returncode == 2
  assert culprit in result.stderr and "Traceback" not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
