"""Per-op times from a `jax.profiler` trace, for `python -m jaxpose.bench profile`."""

import collections
import re


def hlo_instruction_names(hlo_text: str) -> set[str]:
  """The names of the instructions of an HLO module's text (`%name = ...`)."""
  return set(re.findall(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=", hlo_text, re.MULTILINE))


def op_times(trace_events: list[dict], instruction_names: set[str], steps: int
             ) -> tuple[list[dict], dict[str, float]]:
  """Per-step milliseconds of each XLA op in a Chrome/Perfetto trace, slowest first, and the
  same summed by kind (the op name without its `.N` suffix, e.g. `copy_bitcast_fusion`).
  Only complete events (`ph` "X") named after an instruction of the program count, so the
  runtime's own spans (executors, thread-pool waits, Python) are left out. On a CPU the
  ops of one step overlap in time, so the sum can exceed the step's wall time."""
  seconds, calls = collections.Counter(), collections.Counter()
  for event in trace_events:
    if event.get("ph") == "X" and event.get("name") in instruction_names:
      seconds[event["name"]] += event.get("dur", 0) / 1e6
      calls[event["name"]] += 1
  ops = [dict(op=name, kind=re.sub(r"\.\d+$", "", name),
              ms_per_step=round(1e3 * total / steps, 3), calls_per_step=calls[name] / steps)
         for name, total in seconds.most_common()]
  kinds = collections.Counter()
  for op in ops:
    kinds[op["kind"]] += op["ms_per_step"]
  return ops, {kind: round(ms, 3) for kind, ms in kinds.most_common()}
