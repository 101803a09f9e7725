"""Every model family trains the same on 4 devices as on 1 (the spine's sharding test, per
family): `sharded_families_check.py` runs in a subprocess with 4 simulated CPU devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

# Differences are relative to the step's own change of the variables. Float reduction order
# alone moves one step's params by up to ~3e-3 of the update in these tiny random-init
# models (ReLU / max-pool / bilinear-floor decisions flip on rounding): the control run,
# the same batch reordered on one device, shows the same size. So the 4-device run must be
# within 10x the control, and within an absolute bound no reduction-order effect reaches;
# a per-device BatchNorm or a mis-sharded batch differs by O(1).
CONTROL_FACTOR, ABSOLUTE_BOUND = 10.0, 1e-2
FAMILIES = ("simplebaseline", "hrnet", "hourglass", "dekr", "res2net")


def test_four_devices_match_one_device_for_every_family():
  # Few optimisations: compiling 10 gradient programs dominates this test's time.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  script = Path(__file__).parent / "sharded_families_check.py"
  # Two processes side by side (compiling is mostly single-threaded), the families split
  # into halves of similar compile time.
  halves = (("hrnet", "dekr"), ("simplebaseline", "hourglass", "res2net"))
  processes = [subprocess.Popen([sys.executable, str(script), *half], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for half in halves]
  differences = {}
  for process in processes:
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    differences.update(json.loads(stdout.strip().splitlines()[-1]))
  assert sorted(differences) == sorted(FAMILIES)
  for family, runs in differences.items():
    for part in ("params", "batch_stats"):
      sharded, control = runs[f"{part}_four_devices"], runs[f"{part}_reordered_batch"]
      assert sharded <= ABSOLUTE_BOUND, f"{family} {part}: 4 devices differ by {sharded:.2e}"
      assert sharded <= max(CONTROL_FACTOR * control, 1e-5), (
          f"{family} {part}: 4 devices differ by {sharded:.2e}, reordering by {control:.2e}")
