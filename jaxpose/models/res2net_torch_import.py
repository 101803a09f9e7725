"""Official PyTorch Res2Net state_dicts -> flax variables for `jaxpose.models.res2net`.

Keys are those of `Res2Net.state_dict()` in Res2Net/Res2Net-PretrainedModels @219c8c6
(`res2net.py`; e.g. the released `res2net50_26w_4s-06e79181.pth`). Every flax path is
rewritten into one torch key by the per-component table below, and `weights.convert`
reports missing, extra and mis-shaped keys together.

Tensors: conv `weight` [O, I, kh, kw] -> `kernel` [kh, kw, I, O]; Linear `fc.weight`
[out, in] -> Dense `kernel` [in, out] (a transpose; `weights.LEAF_NAMES` already maps
`kernel` to `weight`, so only the axes differ); BN `weight`, `bias`, `running_mean`,
`running_var` -> params `scale`, `bias`, batch_stats `mean`, `var`. `num_batches_tracked`
is dropped: flax BatchNorm uses a fixed momentum and never reads it.
"""

import re
from typing import Any, Mapping

import numpy as np

from jaxpose import weights
from jaxpose.models import res2net

# Flax path component -> torch key fragment, first full match wins. See the table in the
# `jaxpose/models/res2net.py` docstring.
_COMPONENT_RULES = (
    (re.compile(r"layer(\d)_(\d+)"), r"layer\1.\2"),
    (re.compile(r"(convs|bns)_(\d+)"), r"\1.\2"),
    (re.compile(r"downsample_conv"), "downsample.0"),
    (re.compile(r"downsample_bn"), "downsample.1"),
)
_BLOCK_KEY = re.compile(r"layer(\d)\.(\d+)\.conv1\.weight")
_LINEAR_AXES = ((1, 0), (1, 0))  # torch Linear [out, in] <-> flax Dense [in, out]


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """Official torch key of one flax variable, e.g. ("layer2_0", "bns_1", "var") in
  "batch_stats" -> "layer2.0.bns.1.running_var"."""
  return weights.rewrite_path(_COMPONENT_RULES, collection, path)


def kernel_axes(path: tuple[str, ...]):
  """(torch -> flax, flax -> torch) axis permutations of the kernel at `path`; None if none."""
  if path[-1] != "kernel":
    return None
  return _LINEAR_AXES if path[:-1] == ("fc",) else weights.CONV_AXES


def infer_model(state_dict: Mapping[str, Any]) -> res2net.Res2Net:
  """The `Res2Net` a state_dict was saved from: blocks per stage, base width, scale, classes.

  Without `fc.weight` the model is the classifier-free `num_classes=None` variant.
  """
  weights.require_keys(state_dict, ("layer1.0.conv1.weight", "layer1.0.convs.0.weight"),
                       "Res2Net")
  blocks = [0, 0, 0, 0]
  for key in state_dict:
    if match := _BLOCK_KEY.fullmatch(key):
      stage, block = int(match[1]), int(match[2])
      blocks[stage - 1] = max(blocks[stage - 1], block + 1)
  if min(blocks) == 0:
    raise ValueError(f"state_dict has blocks {blocks} per stage; Res2Net needs all of "
                     "layer1-4")
  # layer1 has 64 planes, so its split width is floor(64 * base_width / 64) = base_width,
  # and its conv1 maps to width * scale channels.
  width = int(np.shape(state_dict["layer1.0.convs.0.weight"])[0])
  scale = int(np.shape(state_dict["layer1.0.conv1.weight"])[0]) // width
  num_classes = int(np.shape(state_dict["fc.weight"])[0]) if "fc.weight" in state_dict else None
  return res2net.Res2Net(stage_sizes=tuple(blocks), base_width=width, scale=scale,
                         num_classes=num_classes)


def convert(state_dict: Mapping[str, Any], model: res2net.Res2Net | None = None
            ) -> dict[str, Any]:
  """Maps an official Res2Net state_dict to {"params": ..., "batch_stats": ...} float32.

  state_dict: torch key -> array (numpy or anything `np.asarray` accepts).
  model: the module the variables are for; default `infer_model(state_dict)`. For an
    ImageNet checkpoint under a `num_classes=None` backbone, drop `fc.weight` and `fc.bias`
    first (they would be reported as extra).
  Raises ValueError listing every missing, extra and mis-shaped torch key.
  """
  return weights.convert(state_dict, model or infer_model(state_dict), torch_key, kernel_axes)
