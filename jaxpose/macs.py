"""True multiply-accumulates of a jaxpr: what `jaxpose.tools.summary` reports for a model
and `jaxpose.bench` turns into model FLOPs for the MFU (rules in summary's docstring).

A recursive walk entering every sub-jaxpr: jit, custom_jvp/custom_vjp calls (their forward;
under `jax.grad` the backward pass is ordinary equations and counts too), remat, scan bodies
times their length, the largest `cond` branch, `while` bodies once with a note. Only
`conv_general_dilated` and `dot_general` count; the dot_generals of interpolation do not.
XLA's own cost analysis is no substitute where a program loops: it counts a loop body once.
"""

import math
from collections.abc import Iterable
from typing import Any

from jax.extend import core

# jits whose dot_generals apply interpolation weights: jax.image.resize / scale_and_translate,
# and the bilinear sampling of `jaxpose.models.deform_conv` (torchvision's deform_conv2d and
# the official counts include only the deformable conv's matmul, not its sampling).
_INTERPOLATION_JITS = frozenset(
    {"_resize", "resize", "_scale_and_translate", "scale_and_translate", "_sample_columns"})


def conv_macs(eqn: core.JaxprEqn) -> int:
  """True MACs of one `conv_general_dilated` (module docstring)."""
  lhs_shape, rhs_shape = (v.aval.shape for v in eqn.invars[:2])
  lhs_spec, rhs_spec, _ = eqn.params["dimension_numbers"]
  in_per_group = rhs_shape[rhs_spec[1]]
  kernel_area = math.prod(rhs_shape[d] for d in rhs_spec[2:])
  if any(d > 1 for d in eqn.params["lhs_dilation"]):
    # Transposed conv: each input element meets each tap once per output channel of its group.
    input_positions = lhs_shape[lhs_spec[0]] * math.prod(lhs_shape[d] for d in lhs_spec[2:])
    return input_positions * in_per_group * rhs_shape[rhs_spec[0]] * kernel_area
  return math.prod(eqn.outvars[0].aval.shape) * in_per_group * kernel_area


def dot_general_macs(eqn: core.JaxprEqn) -> int:
  """Output elements x contracted elements of one `dot_general`."""
  (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
  lhs_shape = eqn.invars[0].aval.shape
  return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in lhs_contracting)


def _as_jaxpr(value: Any) -> core.Jaxpr | None:
  if isinstance(value, core.ClosedJaxpr):
    return value.jaxpr
  return value if isinstance(value, core.Jaxpr) else None


def jaxpr_macs(jaxpr: core.Jaxpr | core.ClosedJaxpr, notes: list[str] | None = None) -> int:
  """True MACs of a jaxpr, recursing into sub-jaxprs; approximations are appended to `notes`."""
  return eqns_macs(_as_jaxpr(jaxpr).eqns, [] if notes is None else notes)


def eqns_macs(eqns: Iterable[core.JaxprEqn], notes: list[str]) -> int:
  """True MACs of a sequence of jaxpr equations (see `jaxpr_macs`)."""
  total = 0
  for eqn in eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += conv_macs(eqn)
    elif name == "dot_general":
      total += dot_general_macs(eqn)
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_macs(eqn.params["jaxpr"], notes)
    elif name == "cond":
      branches = [jaxpr_macs(branch, notes) for branch in eqn.params["branches"]]
      if len(set(branches)) > 1:
        notes.append(f"cond with branches of {branches} MACs: the largest is counted")
      total += max(branches)
    elif name == "while":
      body = (jaxpr_macs(eqn.params["body_jaxpr"], notes)
              + jaxpr_macs(eqn.params["cond_jaxpr"], notes))
      if body:
        notes.append(f"while loop of unknown trip count: its {body} MACs are counted once")
      total += body
    elif name in ("pjit", "jit") and eqn.params.get("name") in _INTERPOLATION_JITS:
      continue
    else:
      # jit, custom_jvp_call / custom_vjp_call (only `call_jaxpr`, the forward, is a jaxpr
      # there: the fwd/bwd rules are thunks), remat, shard_map, closed_call, ...
      for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
          if _as_jaxpr(item) is not None:
            total += jaxpr_macs(item, notes)
  return total
