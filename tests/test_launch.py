"""End-to-end: `python -m jaxpose.launch` stops cleanly on SIGTERM and names the culprit of
bad input (a whole train-and-eval run, sharding and resuming: tests/test_multihost.py and
tests/test_fault_injection.py)."""

import json
import os
import signal
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import SMOKE, launch, read_metrics

_METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR")


def _final_params(workdir, step):
  """The params saved at `step`, restored onto this test process's one CPU device."""
  import jax  # pylint: disable=g-import-not-at-top
  path = workdir / "checkpoints" / str(step) / "state"
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        dict(checkpointer.metadata(path).item_metadata))
  return checkpointer.restore(path, target)["params"]


def _assert_trees_close(a, b, rtol, atol=0.0):
  """Leafwise |a - b| <= atol + rtol |b|, and the whole tree's ||a - b|| <= rtol ||b||."""
  import jax  # pylint: disable=g-import-not-at-top
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  squared_diff = squared_norm = 0.0
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
    squared_diff += float(np.sum((x - y) ** 2))
    squared_norm += float(np.sum(y ** 2))
  assert squared_diff <= rtol**2 * squared_norm


# Four simulated devices against one, and two processes against one: tests/test_multihost.py.


def _wait_for_checkpoint(workdir, process, timeout=300.0):
  """Polls until orbax has committed some step; returns the committed steps."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
    if steps:
      return steps
    if process.poll() is not None:
      raise AssertionError(f"run ended before any checkpoint:\n{process.stdout.read()}")
    time.sleep(0.01)
  raise AssertionError("no checkpoint appeared")


_RESUME_OVERRIDES = ("--config.train.total_steps=20", "--config.train.checkpoint_every_steps=5",
                     "--config.optim.decay_steps=(12,)")


# SIGKILL at 20 moments of training and checkpointing, each resumed bit-exactly (which also
# covers resuming from a SIGTERM's checkpoint): tests/test_fault_injection.py.


def test_sigterm_checkpoints_the_current_step_and_exits_zero(tmp_path, synthetic_cache):
  terminated = tmp_path / "terminated"
  compilation_cache = tmp_path / "xla"  # its own, so only this run can have filled it
  process = launch(terminated, *_RESUME_OVERRIDES, f"--compilation_cache_dir={compilation_cache}",
                   cache_dir=synthetic_cache, popen=True)
  _wait_for_checkpoint(terminated, process)  # training is under way
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 0, output
  stopped = [line for line in output.splitlines() if line.startswith("SIGTERM: stopped after")]
  assert stopped, output
  step = int(stopped[0].split()[4])
  assert 5 <= step < 20, stopped[0]
  # The step it stopped at is committed (not only the periodic ones) and is the newest, and
  # the log ends there.
  committed = sorted(int(p.name) for p in (terminated / "checkpoints").glob("*")
                     if p.name.isdigit())
  assert committed[-1] == step, (committed, step)
  assert read_metrics(terminated)[-1]["step"] == step
  # `--compilation_cache_dir` kept the compiled programs for the next run of the same config.
  assert any(name.startswith("jit_train_step") for name in os.listdir(compilation_cache)), (
      os.listdir(compilation_cache) if compilation_cache.exists() else "no cache directory")


@pytest.mark.parametrize("override, culprit", [
    ("--config.train.total_stps=3", "total_stps"),
    ("--config.train.total_steps=abc", "total_steps"),
    (f"--config={SMOKE[:-len(':smoke')]}:smok", "unknown config argument 'smok'"),
])
def test_bad_config_key_is_one_line(tmp_path, synthetic_cache, override, culprit):
  result = launch(tmp_path, override, cache_dir=synthetic_cache, check=False)
  assert result.returncode != 0
  assert culprit in result.stderr
  assert "Traceback" not in result.stderr


def test_unwritable_workdir_is_named(tmp_path, synthetic_cache):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  result = launch(blocker / "run", cache_dir=synthetic_cache, check=False)
  assert result.returncode != 0
  assert f"{blocker}/run" in result.stderr and "Traceback" not in result.stderr


def _ensure_synthetic_data(synthetic_cache):
  """Writes the smoke config's synthetic dataset into the session cache (in-process: cheaper
  than a launch)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from jaxpose.data import pipeline  # pylint: disable=g-import-not-at-top
  config = default.get_config("smoke")
  config.data.synthetic.cache_dir = str(synthetic_cache)
  pipeline.split_files(config.data, "val")


def _broken_coco(tmp_path, synthetic_cache, breakage):
  """A copy of the synthetic val split as a COCO folder, broken in one way."""
  root = tmp_path / "coco"
  (root / "annotations").mkdir(parents=True)
  source = next(synthetic_cache.glob("synthetic-coco-*"))
  annotations = json.loads((source / "annotations" / "person_keypoints_val.json").read_text())
  os.symlink(source / "val", root / "val2017")
  ann_file = root / "annotations" / "person_keypoints_val2017.json"
  if breakage == "invalid_json":
    ann_file.write_text(json.dumps(annotations)[:-20])
  else:
    annotated_image = annotations["annotations"][0]["image_id"]
    for image in annotations["images"]:
      if image["id"] == annotated_image:
        image["file_name"] = "does_not_exist.jpg"
    ann_file.write_text(json.dumps(annotations))
  return root


@pytest.mark.parametrize("breakage, culprit", [
    ("invalid_json", "person_keypoints_val2017.json: not valid JSON"),
    ("missing_image", "does_not_exist.jpg"),
])
def test_bad_dataset_is_named(tmp_path, synthetic_cache, breakage, culprit):
  _ensure_synthetic_data(synthetic_cache)
  root = _broken_coco(tmp_path, synthetic_cache, breakage)
  result = launch(tmp_path / "run", "--config.data.source=coco", f"--config.data.root={root}",
                  "--config.data.train_split=val2017", "--config.data.val_split=val2017",
                  cache_dir=synthetic_cache, check=False)
  assert result.returncode != 0
  assert culprit in result.stderr, result.stderr
  assert "Traceback" not in result.stderr
