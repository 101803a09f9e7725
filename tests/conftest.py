"""Shared test helpers: every test runs on CPU, seeded, on tiny inputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE = f"{REPO}/configs/default.py:smoke"


def compilation_cache_dir(cache_dir: Path) -> Path:
  return Path(cache_dir).parent / "jax_compilation_cache"


def subprocess_env(cache_dir: Path, devices: int) -> dict[str, str]:
  """The environment of a launched run: CPU with `devices` simulated devices, JAX's
  persistent compilation cache beside the session's synthetic data, so the many launches
  of the same smoke programs compile each of them once per test session, and few XLA
  optimisations (compiling dominates these few-step runs; the runs a test compares all
  use the same setting)."""
  return {**os.environ,
          "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
          "JAX_PLATFORMS": "cpu",
          "JAX_COMPILATION_CACHE_DIR": str(compilation_cache_dir(cache_dir)),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def launch(workdir: Path, *overrides: str, devices: int = 1, cache_dir: Path, mode: str = "train",
           check: bool = True, popen: bool = False):
  """Runs `python -m jaxpose.launch` on the smoke config in a fresh process."""
  env = subprocess_env(cache_dir, devices)
  # The same cache, through launch's own flag (the variable would take precedence over it).
  compilation_cache = env.pop("JAX_COMPILATION_CACHE_DIR")
  command = [sys.executable, "-m", "jaxpose.launch", "--config", SMOKE, "--workdir", str(workdir),
             "--mode", mode, f"--config.data.synthetic.cache_dir={cache_dir}",
             f"--compilation_cache_dir={compilation_cache}", *overrides]
  if popen:
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"launch failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
  return result


def read_metrics(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# Each xdist worker is a JAX process that compiles with every core and holds a few GB; past
# four, more workers add memory more than speed.
MAX_TEST_WORKERS = 4


def pytest_xdist_auto_num_workers(config) -> int:
  """`-n auto` (pyproject addopts): one worker per core, at most MAX_TEST_WORKERS."""
  del config
  return max(1, min(MAX_TEST_WORKERS, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> Path:
  """One synthetic-data cache shared by every launch in the session."""
  return tmp_path_factory.mktemp("synthetic_cache")


@pytest.fixture(scope="module")
def fast_compiles():
  """Compiles with most XLA optimisations off, for tests whose compile dominates: they change
  values only by float rounding, and neither argument sizes nor program structure."""
  previous = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
