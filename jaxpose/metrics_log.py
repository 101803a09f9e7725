"""`WORKDIR/metrics.jsonl`: one JSON object per line with `step` and named metrics.

Written by process 0 only. On resume, rows past the restored step are dropped, so the file
never shows two different values for one step.
"""

import json
import math
from pathlib import Path

import jax


class MetricsLog:

  def __init__(self, workdir: Path):
    self.path = Path(workdir) / "metrics.jsonl"
    self.enabled = jax.process_index() == 0

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not self.path.exists():
      return
    rows = [line for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    tmp = self.path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    tmp.replace(self.path)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step)}
    for name, value in metrics.items():
      value = float(value)
      row[name] = value if math.isfinite(value) else str(value)
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
