"""Official PyTorch HRNet state_dicts -> flax variables for `jaxpose.models.hrnet`.

Keys are those of leoxiaobin/deep-high-resolution-net.pytorch `lib/models/pose_hrnet.py`
(`PoseHighResolutionNet.state_dict()`, e.g. the released `pose_hrnet_w32_256x192.pth`);
the backbone keys are shared by HigherHRNet and DEKR checkpoints. The map runs from the
flax side: the expected variable tree comes from `jax.eval_shape(model.init)`, every flax
path is rewritten into one torch key by the per-component table below, so a missing,
extra or mis-shaped key is found by set difference and reported all at once.

Tensors: conv `weight` [O, I, kh, kw] -> `kernel` [kh, kw, I, O]; BN `weight`, `bias`,
`running_mean`, `running_var` -> params `scale`, `bias`, batch_stats `mean`, `var`.
`num_batches_tracked` is dropped: flax BatchNorm uses a fixed momentum and never reads it.
"""

import functools
import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose.models import hrnet

# Flax path component -> torch key fragment, first full match wins. See the table in the
# `jaxpose/models/hrnet.py` docstring.
_COMPONENT_RULES = (
    (re.compile(r"layer1_block(\d+)"), r"layer1.\1"),
    (re.compile(r"stage(\d+)_module(\d+)"), r"stage\1.\2"),
    (re.compile(r"branch(\d+)_block(\d+)"), r"branches.\1.\2"),
    (re.compile(r"fuse(\d+)_from(\d+)_down(\d+)"), r"fuse_layers.\1.\2.\3"),
    (re.compile(r"fuse(\d+)_from(\d+)"), r"fuse_layers.\1.\2"),
    (re.compile(r"branch(\d+)_down(\d+)"), r"\1.\2"),
    (re.compile(r"branch(\d+)"), r"\1"),
    (re.compile(r"conv"), "0"),  # ConvBN children: Sequential(Conv2d, BatchNorm2d, ReLU)
    (re.compile(r"bn"), "1"),
    (re.compile(r"backbone"), ""),  # pose_hrnet keeps backbone layers at the top level
)
_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_STAGE_KEY = re.compile(r"stage(\d+)\.(\d+)\.branches\.0\.(\d+)\.")


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """Official torch key of one flax variable, e.g. ("backbone", "layer1_block0",
  "downsample", "conv", "kernel") in "params" -> "layer1.0.downsample.0.weight"."""
  parts = []
  for component in path[:-1]:
    for pattern, replacement in _COMPONENT_RULES:
      if pattern.fullmatch(component):
        component = pattern.sub(replacement, component)
        break
    if component:
      parts.append(component)
  parts.append(_LEAF_NAMES[collection, path[-1]])
  return ".".join(parts)


def infer_model(state_dict: Mapping[str, Any]) -> hrnet.HRNet:
  """The `HRNet` a pose_hrnet state_dict was saved from: width, keypoints and stage spec."""
  needed = ("transition1.0.0.weight", "final_layer.weight")
  absent = [key for key in needed if key not in state_dict]
  if absent:
    raise ValueError(f"cannot infer the HRNet layout: state_dict lacks {absent}; pass "
                     "`model=` explicitly")
  modules, blocks = {}, {}
  for key in state_dict:
    match = _STAGE_KEY.match(key)
    if match:
      stage, module, block = (int(g) for g in match.groups())
      modules[stage] = max(modules.get(stage, 0), module + 1)
      blocks[stage] = max(blocks.get(stage, 0), block + 1)
  if sorted(modules) != [2, 3, 4]:
    raise ValueError(f"expected stages 2, 3, 4 in the state_dict, found {sorted(modules)}")
  stages = tuple(hrnet.StageSpec(modules[s], s, blocks[s]) for s in (2, 3, 4))
  return hrnet.HRNet(width=int(np.shape(state_dict["transition1.0.0.weight"])[0]),
                     num_keypoints=int(np.shape(state_dict["final_layer.weight"])[0]),
                     stages=stages)


def _torch_shape(leaf_name: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if leaf_name == "kernel":
    return tuple(flax_shape[i] for i in (3, 2, 0, 1))
  return tuple(flax_shape)


def _to_flax(leaf_name: str, tensor: np.ndarray) -> np.ndarray:
  if leaf_name == "kernel":
    return np.transpose(tensor, (2, 3, 1, 0))
  return tensor


def hrnet_from_torch(state_dict: Mapping[str, Any],
                     model: hrnet.HRNet | hrnet.HRNetBackbone | None = None) -> dict[str, Any]:
  """Maps an official PyTorch state_dict to {"params": ..., "batch_stats": ...} float32.

  state_dict: torch key -> array (numpy or anything `np.asarray` accepts).
  model: the module the variables are for; default `infer_model(state_dict)`. Pass an
    `HRNetBackbone(width, multi_scale_output=True)` to load the backbone of a checkpoint
    whose stage-4 fuses into every branch (HigherHRNet/DEKR); head keys are then extra.
  Raises ValueError listing every missing, extra and mis-shaped torch key.
  """
  if model is None:
    model = infer_model(state_dict)
  # Parameter shapes do not depend on the input size; 32x32 is the smallest valid input.
  init = functools.partial(model.init, train=False)
  expected = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))

  used, missing, misshaped = set(), [], []
  variables = {}
  for collection in ("params", "batch_stats"):
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected[collection]))
    converted = {}
    for path, spec in flat.items():
      key = torch_key(collection, path)
      if key not in state_dict:
        missing.append(key)
        continue
      used.add(key)
      tensor = np.asarray(state_dict[key], dtype=np.float32)
      expected_shape = _torch_shape(path[-1], spec.shape)
      if tensor.shape != expected_shape:
        misshaped.append(f"{key}: got {tensor.shape}, expected {expected_shape}")
        continue
      converted[path] = _to_flax(path[-1], tensor)
    variables[collection] = flax.traverse_util.unflatten_dict(converted)

  extra = sorted(key for key in state_dict
                 if key not in used and not key.endswith("num_batches_tracked"))
  if missing or extra or misshaped:
    lines = [f"state_dict does not match {type(model).__name__}(width={model.width}, ...):"]
    for title, keys in (("missing", missing), ("extra", extra), ("mis-shaped", misshaped)):
      if keys:
        lines.append(f"  {len(keys)} {title}: " + "; ".join(sorted(keys)))
    raise ValueError("\n".join(lines))
  return variables
