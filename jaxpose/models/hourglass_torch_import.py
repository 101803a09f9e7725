"""Official PyTorch stacked-hourglass state_dicts -> flax variables for `hourglass`.

Keys are those of `PoseNet.state_dict()` in princeton-vl/pytorch_stacked_hourglass
@ceedc14 (`models/posenet.py`, `models/layers.py`). Its released MPII checkpoints
(`checkpoint.pt`, README "Pretrained Models") store the state_dict of the training wrapper
`Trainer(DataParallel(PoseNet))` (`task/pose.py`), i.e. every key prefixed `model.module.`;
`strip_wrapper_prefix` removes it, and `infer_model` and `convert` apply it. Every flax path
is rewritten into one torch key by the per-component table below, and `weights.convert`
reports missing, extra and mis-shaped keys together.

Dropped knowingly (besides `num_batches_tracked`): `<residual>.skip_layer.conv.weight` and
`.bias` of every official `Residual` whose input and output widths are equal. The official
module creates that 1x1 conv but never runs it (`need_skip` is False), so jaxpose has no
such parameter. A skip conv is dropped only if its own residual's `conv1` and `conv3` keys
say the widths are equal; any other unexpected key is an error.

A model with `scan_stacks` (the default) receives stacks 0 .. S-2 stacked under `stacks/`
(`hourglass.scanned_layout`); the key table below is that of the unrolled layout.

Tensors: conv `weight` [O, I, kh, kw] -> `kernel` [kh, kw, I, O], conv `bias` as is; BN
`weight`, `bias`, `running_mean`, `running_var` -> params `scale`, `bias`, batch_stats
`mean`, `var`.
"""

import re
from typing import Any, Mapping

import numpy as np

from jaxpose import weights
from jaxpose.models import hourglass
from jaxpose.models import layers

# Flax path component -> torch key fragment, first full match wins. See the table in the
# `jaxpose/models/hourglass.py` docstring.
_COMPONENT_RULES = (
    (re.compile(r"pre(\d)_(conv|residual)"), r"pre.\1"),
    (re.compile(r"hourglass(\d+)"), r"hgs.\1.0"),  # each hourglass sits in a Sequential
    (re.compile(r"features(\d+)_residual"), r"features.\1.0"),
    (re.compile(r"features(\d+)_conv"), r"features.\1.1"),
    (re.compile(r"outs(\d+)"), r"outs.\1"),
    (re.compile(r"merge_(preds|features)(\d+)"), r"merge_\1.\2.conv"),  # Merge wraps a Conv
    (re.compile(r"(conv\d|skip_layer)"), r"\1.conv"),  # Residual's convs are `Conv` wrappers
)
_SKIP_KEY = re.compile(r"(.*)\.skip_layer\.conv\.(weight|bias)")
_OUTS_KEY = re.compile(r"outs\.(\d+)\.conv\.weight")
_WRAPPER_PREFIX = "model.module."  # Trainer.model -> DataParallel.module -> PoseNet


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """Official torch key of one flax variable, e.g. ("hourglass0", "low2", "low2", "up1",
  "conv3", "kernel") in "params" -> "hgs.0.0.low2.low2.up1.conv3.conv.weight"."""
  return weights.rewrite_path(_COMPONENT_RULES, collection, path)


def kernel_axes(path: tuple[str, ...]):
  """Every hourglass kernel is a Conv2d weight."""
  return weights.CONV_AXES if path[-1] == "kernel" else None


def strip_wrapper_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The PoseNet keys of a state_dict saved by the official trainer (`model.module.` off)."""
  return {key.removeprefix(_WRAPPER_PREFIX): value for key, value in state_dict.items()}


def unused_skip_keys(state_dict: Mapping[str, Any]) -> list[str]:
  """The `skip_layer` keys of residuals whose input width equals their output width."""
  unused = []
  for key in state_dict:
    match = _SKIP_KEY.fullmatch(key)
    if not match:
      continue
    conv1, conv3 = f"{match[1]}.conv1.conv.weight", f"{match[1]}.conv3.conv.weight"
    if conv1 in state_dict and conv3 in state_dict:
      in_width, out_width = np.shape(state_dict[conv1])[1], np.shape(state_dict[conv3])[0]
      if in_width == out_width:
        unused.append(key)
  return unused


def infer_model(state_dict: Mapping[str, Any]) -> hourglass.StackedHourglass:
  """The `StackedHourglass` a PoseNet state_dict was saved from: stacks, width, K, increase."""
  state_dict = strip_wrapper_prefix(state_dict)
  needed = ("pre.4.conv3.conv.weight", "outs.0.conv.weight", "hgs.0.0.low1.conv3.conv.weight")
  weights.require_keys(state_dict, needed, "StackedHourglass")
  num_stacks = 1 + max(int(m[1]) for key in state_dict if (m := _OUTS_KEY.fullmatch(key)))
  width = int(np.shape(state_dict["pre.4.conv3.conv.weight"])[0])
  low_width = int(np.shape(state_dict["hgs.0.0.low1.conv3.conv.weight"])[0])
  return hourglass.StackedHourglass(
      num_stacks=num_stacks, width=width,
      num_keypoints=int(np.shape(state_dict["outs.0.conv.weight"])[0]),
      increase=low_width - width)


def convert(state_dict: Mapping[str, Any],
            model: hourglass.StackedHourglass | None = None) -> dict[str, Any]:
  """Maps an official PoseNet state_dict to {"params": ..., "batch_stats": ...} float32.

  state_dict: torch key -> array (numpy or anything `np.asarray` accepts), PoseNet keys
    with or without the official trainer's `model.module.` prefix.
  model: the module the variables are for; default `infer_model(state_dict)`.
  Raises ValueError listing every missing, extra and mis-shaped torch key (the unused
  same-width `skip_layer` keys excepted, see the module docstring).
  """
  state_dict = strip_wrapper_prefix(state_dict)
  unused = set(unused_skip_keys(state_dict))
  used = {key: value for key, value in state_dict.items() if key not in unused}
  model = model or infer_model(state_dict)
  # The torch keys name each stack (`hgs.{s}`), as the unrolled layout does; a model with
  # scanned stacks gets the same variables stacked (`hourglass.scanned_layout`).
  # Four poolings after the stride-4 stem: 64x64 is the smallest input the model takes.
  variables = weights.convert(used, layers.unrolled(model), torch_key, kernel_axes,
                              input_hw=(64, 64))
  if not model.scan_stacks:
    return variables
  return {collection: hourglass.scanned_layout(tree, model.num_stacks)
          for collection, tree in variables.items()}
