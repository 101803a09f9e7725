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

import re
from typing import Any, Mapping

import numpy as np

from jaxpose import weights
from jaxpose.models import hrnet
from jaxpose.models import layers

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
_STAGE_KEY = re.compile(r"stage(\d+)\.(\d+)\.branches\.0\.(\d+)\.")


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """Official torch key of one flax variable, e.g. ("backbone", "layer1_block0",
  "downsample", "conv", "kernel") in "params" -> "layer1.0.downsample.0.weight"."""
  return weights.rewrite_path(_COMPONENT_RULES, collection, path)


def infer_model(state_dict: Mapping[str, Any]) -> hrnet.HRNet:
  """The `HRNet` a pose_hrnet state_dict was saved from: width, keypoints and stage spec."""
  weights.require_keys(state_dict, ("transition1.0.0.weight", "final_layer.weight"), "HRNet")
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


def kernel_axes(path: tuple[str, ...]):
  """Every HRNet kernel is a Conv2d weight."""
  return weights.CONV_AXES if path[-1] == "kernel" else None


def hrnet_from_torch(state_dict: Mapping[str, Any],
                     model: hrnet.HRNet | hrnet.HRNetBackbone | None = None) -> dict[str, Any]:
  """Maps an official PyTorch state_dict to {"params": ..., "batch_stats": ...} float32.

  state_dict: torch key -> array (numpy or anything `np.asarray` accepts).
  model: the module the variables are for; default `infer_model(state_dict)`. Pass an
    `HRNetBackbone(width, multi_scale_output=True)` to load the backbone of a checkpoint
    whose stage-4 fuses into every branch (HigherHRNet/DEKR); head keys are then extra.
  Raises ValueError listing every missing, extra and mis-shaped torch key. Converts through
  the unrolled layout (the official per-module keys), then stacks the scanned modules of a
  model with `scan_modules` (`hrnet.scanned_layout`).
  """
  model = model or infer_model(state_dict)
  variables = weights.convert(state_dict, layers.unrolled(model), torch_key, kernel_axes)
  if isinstance(model, hrnet.HRNetBackbone):
    return {collection: hrnet.scanned_layout(tree, model.stages) if model.scan_modules else tree
            for collection, tree in variables.items()}
  return hrnet.backbone_scanned_layout(variables, model)
