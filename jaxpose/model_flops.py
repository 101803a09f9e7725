"""Model FLOPs of a traced program: the multiply-adds of its matmuls and convolutions.

The MFU convention (PaLM, MaxText) divides model FLOPs by time, and counts matmuls and
convolutions only. XLA's `cost_analysis` of a compiled program is no substitute where the
program loops: it counts a `while` body once, so a model whose stacks run as an `nn.scan`
(SADI-Net's hourglass stacks) would report a seventh of its FLOPs. Here the jaxpr is walked
instead, every `scan` body counted `length` times; a `cond` counts its costliest branch and a
`while_loop`, whose trip count is not static, its body once (jaxpose's models have none).
"""

import math
from typing import Any

import jax
from jax.extend import core as jax_core


def _dot_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
  contracted = math.prod(lhs[d] for d in lhs_contract)
  batch = math.prod(lhs[d] for d in lhs_batch)
  lhs_free = math.prod(n for d, n in enumerate(lhs) if d not in (*lhs_contract, *lhs_batch))
  rhs_free = math.prod(n for d, n in enumerate(rhs) if d not in (*rhs_contract, *rhs_batch))
  return 2 * batch * lhs_free * rhs_free * contracted


def _conv_flops(eqn) -> int:
  # Each output element is a dot over one kernel window of the input features of its group:
  # rhs.size / rhs[out-feature dim] multiply-adds (the kernel's I dim is already per group).
  rhs = eqn.invars[1].aval.shape
  out = eqn.outvars[0].aval.shape
  rhs_out_dim = eqn.params["dimension_numbers"].rhs_spec[0]
  return 2 * math.prod(out) * math.prod(rhs) // rhs[rhs_out_dim]


def _sub_jaxprs(eqn) -> list[tuple[Any, int]]:
  """(jaxpr, times it runs) of each program an equation calls; cond: its costliest branch."""
  params = eqn.params
  if eqn.primitive.name == "scan":
    return [(params["jaxpr"], params["length"])]
  if eqn.primitive.name == "cond":
    branch = max(params["branches"], key=count_jaxpr)
    return [(branch, 1)]
  if eqn.primitive.name == "while":
    return [(params["body_jaxpr"], 1), (params["cond_jaxpr"], 1)]
  return [(value, 1) for value in params.values()
          if isinstance(value, (jax_core.Jaxpr, jax_core.ClosedJaxpr))]


def count_jaxpr(jaxpr) -> int:
  """Matmul and convolution FLOPs (2 per multiply-add) of a (closed) jaxpr."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  flops = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      flops += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      flops += _conv_flops(eqn)
    else:
      flops += sum(times * count_jaxpr(sub) for sub, times in _sub_jaxprs(eqn))
  return flops


def per_device(traced: jax.stages.Traced, num_devices: int) -> float:
  """Model FLOPs per call of a traced jitted function, per device of a data-parallel mesh
  (the jaxpr is the global program; data parallelism divides it evenly)."""
  return count_jaxpr(traced.jaxpr) / num_devices
