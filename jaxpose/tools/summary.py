"""`python -m jaxpose.tools.summary`: parameters and multiply-accumulates of a model preset.

  python -m jaxpose.tools.summary --model hrnet_w32                   # 256x192, K = 17
  python -m jaxpose.tools.summary --model dekr_w32 --input 512x512 --json

Everything is counted at batch 1 on the eval-mode forward, traced once with
`jax.make_jaxpr` (no compilation) inside `init_with_output(..., train=False)`, for any flax
module in `jaxpose.models.MODELS` whose `__call__(images, *, train)` takes NHWC float32
images (`summarize_module` says how initializers are told apart from the forward):

- parameters: the `params` collection only (not `batch_stats`), in M = 1e6.
- MACs (true multiply-accumulates, in G = 1e9): a recursive walk of the jaxpr, entering
  every sub-jaxpr (jit, custom_jvp/custom_vjp calls, whose forward is counted once, remat;
  scan bodies times their length; the largest `cond` branch; `while` bodies once, with a
  note, since their trip count is unknown). Two primitives count:
  `conv_general_dilated`: output elements x (input channels / feature groups) x kernel
    area; with lhs dilation (a transposed conv such as `nn.ConvTranspose`) it is input
    elements x output channels x kernel area instead, so the inserted zeros are not counted;
  `dot_general` (dense layers, einsums, matmuls): output elements x contracted elements
    (batch dimensions appear once, in the output).
  Elementwise ops, normalisation and pooling count nothing, and neither do the dot_generals
  inside `jax.image.resize` (jit `_resize`) or the bilinear sampling of a deformable conv
  (`deform_conv._sample_columns`): interpolation is resampling, not a layer, and no
  official counter includes it (a deformable conv counts its matmul, as a conv would).
  `layers.Deconv2x` (a transposed conv as four phase matmuls) needs no rule: along each
  axis every kernel tap belongs to exactly one output phase, so its matmuls contract
  H x W x C_in x k^2 per output channel in total, the true transposed-conv cost for every
  kernel size; for k = 3 some phase taps read the zero rows padded around the input, which
  is what the formula counts too (every input element meets every tap; products that land
  outside the cropped output are included).
- The HRNet `get_model_summary` convention (leoxiaobin/deep-high-resolution-net.pytorch
  @6f69e46, `lib/utils/utils.py`; HRNet/DEKR @7a30313 counts the same way). It puts a
  forward hook on every torch module and adds, for each module whose class name contains
  "Conv" and that has a `weight`, weight elements x output height x width (the batch
  size never enters; `tools/train.py` uses batch 1), and for each `nn.Linear` output
  elements x input features. That is one multiply-add per MAC for ordinary, grouped and
  deformable convolutions and linear layers (bias, BatchNorm, pooling and interpolation
  count nothing), but a stride-s `ConvTranspose2d` counts weight x *output* area, s^2
  times its true cost when the output is s times the input (4x for the SimpleBaseline
  head), since it counts the zeros of the equivalent dilated convolution. The HRNet copy
  prints the sum divided by 1024^3 as "Total Multiply Adds (For Convolution and Linear
  Layers only): X GFLOPs"; the DEKR copy prints the raw integer, without the unit. The
  papers' "GFLOPs" columns are these figures: pose_hrnet W32 256x192 7.12
  (7,645,003,776 / 2^30), pose_resnet 50 8.99 (9,654,239,232 / 2^30); DEKR's README 45.4
  (W32, 512x512) and 141.5 (W48, 640x640) are the raw sums / 1e9.
  Here it is reproduced per flax module, like the torch hooks: every `__call__` of a
  module that owns a parameter of rank >= 3 (a conv kernel) adds its elements x the
  spatial size of the module's output; a rank-2 parameter (a Dense kernel [in, out]) adds
  output elements x in. Parameters of rank <= 1 (biases, BatchNorm) add nothing.
  `hrnet_convention_gmacs` is that sum / 1e9 (comparable with `gmacs`),
  `hrnet_convention_printed` the sum / 2^30 that `get_model_summary` prints. (Its
  parameter total adds only Conv, BatchNorm and Linear modules' parameters: the full
  count for every official model checked, so it is not reported separately.)
"""

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import flags
from flax.core import meta
from jax.extend import core

from jaxpose import cli as cli_lib
from jaxpose import models
from jaxpose.macs import eqns_macs, jaxpr_macs
from jaxpose.models import layers

_MODEL = flags.DEFINE_string("model", None,
                             "Model preset name (see python -m jaxpose.models --list).")
_INPUT = flags.DEFINE_string("input", "256x192", "Input size HxW (pixels).")
_NUM_KEYPOINTS = flags.DEFINE_integer("num_keypoints", 17, "Keypoints K of the heatmap head.",
                                      lower_bound=1)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")

@dataclasses.dataclass(frozen=True)
class Summary:
  """Counts for one model at batch 1; `notes` lists anything counted approximately."""
  model: str
  input_hw: tuple[int, int]
  params: int
  macs: int
  hrnet_convention_macs: int
  notes: tuple[str, ...] = ()

  def as_dict(self) -> dict[str, Any]:
    return {"model": self.model, "input": list(self.input_hw), "batch": 1,
            "params": self.params, "params_m": round(self.params / 1e6, 4),
            "macs": self.macs, "gmacs": round(self.macs / 1e9, 4),
            "hrnet_convention_macs": self.hrnet_convention_macs,
            "hrnet_convention_gmacs": round(self.hrnet_convention_macs / 1e9, 4),
            "hrnet_convention_printed": round(self.hrnet_convention_macs / 2**30, 4),
            "notes": list(self.notes)}


def _first_array(tree: Any) -> jax.Array | None:
  leaves = [x for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "shape") and x.ndim >= 2]
  return leaves[0] if leaves else None


def _hrnet_convention_interceptor(entries: list[int]):
  """A flax method interceptor adding each module call's `get_model_summary` figure to `entries`."""

  def interceptor(next_fun, args, kwargs, context):
    output = next_fun(*args, **kwargs)
    if context.method_name != "__call__":
      return output
    params = meta.unbox(context.module.variables.get("params", {}))
    own = [v for v in params.values() if not isinstance(v, Mapping) and hasattr(v, "ndim")]
    out = _first_array(output)
    if out is None:
      return output
    for param in own:
      if param.ndim >= 3:  # conv kernel [*spatial, in, out] x output spatial size (NHWC)
        entries.append(param.size * math.prod(out.shape[1:-1]))
      elif param.ndim == 2:  # Dense kernel [in, out]: output elements x in
        entries.append(out.size * param.shape[0])
    return output

  return interceptor


def _variable_eqns(jaxpr: core.Jaxpr, variable_outvars: list[Any]) -> set[int]:
  """Indices of the top-level equations that the returned variables depend on."""
  live = {v for v in variable_outvars if isinstance(v, core.Var)}
  needed = set()
  for index in reversed(range(len(jaxpr.eqns))):
    eqn = jaxpr.eqns[index]
    if any(v in live for v in eqn.outvars):
      needed.add(index)
      live.update(v for v in eqn.invars if isinstance(v, core.Var))
  return needed


def summarize_module(module: Any, height: int, width: int, name: str = "") -> Summary:
  """Counts for `module` (a flax module with `__call__(images, *, train)`) on [1, H, W, 3].

  One trace of `init_with_output(..., train=False)`: it runs the eval-mode forward while
  it creates the variables, at half the cost of tracing init and then apply (apply
  re-traces every initializer to check the parameter shapes). The initializers are the
  equations the returned variables depend on; the forward is everything else. MACs that
  feed the variables (an initializer with a matmul, data-dependent init) are left out,
  with a note. Raises whatever the module raises for an input it cannot take.
  """
  # An `nn.scan` creates its variables and runs its forward in one equation, which the split
  # below cannot tell apart, and calls its modules once: count the unrolled network (the same
  # function and parameters, tests/test_sadinet.py, test_bench.py, test_dekr.py).
  module = layers.unrolled(module)
  images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  init = lambda x: module.init_with_output(jax.random.key(0), x, train=False)
  entries: list[int] = []
  with nn.intercept_methods(_hrnet_convention_interceptor(entries)):
    closed, (output, variables) = jax.make_jaxpr(init, return_shape=True)(images)
  params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(variables.get("params", {})))
  jaxpr = closed.jaxpr
  initializers = _variable_eqns(jaxpr, jaxpr.outvars[len(jax.tree_util.tree_leaves(output)):])
  notes: list[str] = []
  macs = eqns_macs((e for i, e in enumerate(jaxpr.eqns) if i not in initializers), notes)
  if skipped_macs := eqns_macs((e for i, e in enumerate(jaxpr.eqns) if i in initializers), []):
    notes.append(f"{skipped_macs} MACs feed the initial variables and are not counted")
  return Summary(name or type(module).__name__, (height, width), params, macs, sum(entries),
                 tuple(dict.fromkeys(notes)))


def build_model(name: str, num_keypoints: int) -> tuple[Any, list[str]]:
  """`models.build(name, num_keypoints=K)`; a preset without that field is built without it."""
  constructor = models.MODELS[name]
  module_class = getattr(constructor, "func", constructor)
  if dataclasses.is_dataclass(module_class) and "num_keypoints" not in {
      f.name for f in dataclasses.fields(module_class)}:
    return models.build(name), [f"{name} has no num_keypoints field: --num_keypoints ignored"]
  return models.build(name, num_keypoints=num_keypoints), []


def parse_input(text: str) -> tuple[int, int]:
  """'256x192' -> (256, 192); raises ValueError naming the expected form."""
  match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
  if not match or min(int(match[1]), int(match[2])) < 1:
    raise ValueError(f"--input must be HxW with positive integers, e.g. 256x192; got {text!r}")
  return int(match[1]), int(match[2])


def format_text(summary: Summary) -> str:
  height, width = summary.input_hw
  hrnet = summary.hrnet_convention_macs
  lines = [
      f"model       {summary.model}, input 1x{height}x{width}x3 (batch 1, eval mode)",
      f"parameters  {summary.params:,} = {summary.params / 1e6:.2f} M (params collection)",
      f"MACs        {summary.macs:,} = {summary.macs / 1e9:.2f} G (true multiply-accumulates: "
      "conv, transposed conv, dense/einsum)",
      f"HRNet get_model_summary convention: {hrnet:,} multiply-adds = {hrnet / 1e9:.2f} G; "
      f"printed as {hrnet / 2**30:.2f} \"GFLOPs\" (/1024^3), the papers' figure",
  ]
  return "\n".join(lines + [f"note        {note}" for note in summary.notes])


def _fail(message: str) -> None:
  cli_lib.fail("jaxpose.tools.summary", message)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; see --help")
  if not _MODEL.value:
    _fail(f"--model is required; valid names: {', '.join(sorted(models.MODELS))}")
  if _MODEL.value not in models.MODELS:
    _fail(f"unknown model {_MODEL.value!r}; valid names: {', '.join(sorted(models.MODELS))}")
  try:
    height, width = parse_input(_INPUT.value)
  except ValueError as e:
    _fail(str(e))
  module, notes = build_model(_MODEL.value, _NUM_KEYPOINTS.value)
  try:
    summary = summarize_module(module, height, width, _MODEL.value)
  except ValueError as e:  # the model rejects this input size, e.g. not a multiple of 32
    _fail(f"{_MODEL.value} cannot run on input {height}x{width}: {str(e).splitlines()[0]}")
  summary = dataclasses.replace(summary, notes=tuple(notes) + summary.notes)
  if _JSON.value:
    num_keypoints = getattr(module, "num_keypoints", None)  # None: the preset has no such field
    print(json.dumps({**summary.as_dict(), "num_keypoints": num_keypoints}))
  else:
    print(format_text(summary))


def cli() -> None:
  cli_lib.run_without_config("jaxpose.tools.summary", main)


if __name__ == "__main__":
  cli()
