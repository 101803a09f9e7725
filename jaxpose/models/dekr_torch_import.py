"""Official PyTorch DEKR state_dicts -> flax variables for `jaxpose.models.dekr`.

Keys are those of `PoseHigherResolutionNet.state_dict()` in HRNet/DEKR @7a30313
(`lib/models/hrnet_dekr.py`, e.g. the released `pose_dekr_hrnetw32_coco.pth`). The backbone
keys are pose_hrnet's (stem, `layer1`, `transition{1,2,3}`, `stage{2,3,4}.{m}.branches` /
`fuse_layers`, at the top level), so backbone paths go through `hrnet_torch_import.torch_key`;
head paths through the table below (see the `dekr.py` docstring), in the unrolled layout
(`scan_branches=False`, `scan_modules=False`: one entry per keypoint and per HR module);
`convert` stacks them as the model scans them (`dekr.scanned_layout`). `weights.convert` reports
missing, extra and mis-shaped keys together.

Tensors: conv and deformable-conv `weight` [O, I, kh, kw] -> `kernel` [kh, kw, I, O]; BN as
in `hrnet_torch_import`. Each AdaptBlock's buffer `regular_matrix` (the 3x3 grid, [2, 9]) is
a constant in jaxpose: it is checked against `dekr.REGULAR_GRID` and dropped; a wrong value,
or a grid without its block (or the reverse), is an error naming the key.

The optional SWAHR scale head (`DEKR(scale_head=True)`) takes SWAHR's names for its first
(and, at DEKR's single resolution, only) scale branch, `conv_scale_layers.0.{0,1,3}` (conv,
BN, depthwise conv; greatlog/SWAHR-HumanPose @7555826): no official DEKR checkpoint has one,
so a state_dict holding `conv_scale_layers.0.0.weight` is inferred to have the head.
"""

import re
from typing import Any, Mapping

import numpy as np

from jaxpose import weights
from jaxpose.models import dekr
from jaxpose.models import hrnet
from jaxpose.models import hrnet_torch_import
from jaxpose.models import layers

# Flax path component of a head layer -> torch key fragment, first full match wins.
_HEAD_RULES = (
    (re.compile(r"transition_(heatmap|offset)_conv"), r"transition_\1.0"),
    (re.compile(r"transition_(heatmap|offset)_bn"), r"transition_\1.1"),
    (re.compile(r"head_heatmap_block(\d+)"), r"head_heatmap.0.\1"),
    (re.compile(r"head_heatmap_final"), "head_heatmap.1"),
    (re.compile(r"offset_feature(\d+)_block(\d+)"), r"offset_feature_layers.\1.\2"),
    (re.compile(r"offset_final(\d+)"), r"offset_final_layer.\1"),
)
_STAGE_KEY = re.compile(r"stage(\d+)\.(\d+)\.branches\.0\.(\d+)\.conv1\.weight")
_HEATMAP_BLOCK_KEY = re.compile(r"head_heatmap\.0\.(\d+)\.conv1\.weight")
_OFFSET_BLOCK_KEY = re.compile(r"offset_feature_layers\.0\.(\d+)\.adapt_conv\.weight")
_OFFSET_FINAL_KEY = re.compile(r"offset_final_layer\.(\d+)\.weight")
_GRID_SUFFIX, _ADAPT_SUFFIX = "regular_matrix", "adapt_conv.weight"
# `dekr.HeatmapScaleHead` children -> indices in SWAHR's nn.Sequential (2 is the ReLU).
_SCALE_HEAD, _SCALE_HEAD_KEY = "heatmap_scale_head", "conv_scale_layers.0"
_SCALE_HEAD_LAYERS = {"conv": "0", "bn": "1", "depthwise_conv": "3"}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """Official torch key of one flax variable, e.g. ("offset_feature3_block1", "adapt_conv",
  "kernel") in "params" -> "offset_feature_layers.3.1.adapt_conv.weight"."""
  if path[0] == "backbone":
    return hrnet_torch_import.torch_key(collection, path)
  if path[0] == _SCALE_HEAD:  # its child names ("bn") also occur in AdaptBlocks: no rule
    return ".".join([_SCALE_HEAD_KEY, _SCALE_HEAD_LAYERS[path[1]],
                     weights.LEAF_NAMES[collection, path[-1]]])
  return weights.rewrite_path(_HEAD_RULES, collection, path)


def kernel_axes(path: tuple[str, ...]):
  """Every DEKR kernel (Conv2d and torchvision DeformConv2d alike) is [O, I, kh, kw] in torch;
  the depthwise conv's [C, 1, 9, 9] becomes flax's grouped-conv kernel [9, 9, 1, C] the same way."""
  return hrnet_torch_import.kernel_axes(path)


def _count(pattern: re.Pattern, state_dict: Mapping[str, Any], group: int = 1) -> int:
  indices = [int(m[group]) for key in state_dict if (m := pattern.fullmatch(key))]
  return max(indices) + 1 if indices else 0


def infer_model(state_dict: Mapping[str, Any]) -> dekr.DEKR:
  """The `DEKR` a state_dict was saved from: widths, block counts, K, stage spec and whether
  it has SWAHR's scale head.

  Dilation rates are not stored in a state_dict; the official configs use 1 (the default),
  so pass `model=` to `convert` for any other.
  """
  needed = ("transition1.0.0.weight", "transition_heatmap.0.weight", "head_heatmap.1.weight",
            "offset_final_layer.0.weight")
  weights.require_keys(state_dict, needed, "DEKR")
  modules, blocks = {}, {}
  for key in state_dict:
    if match := _STAGE_KEY.fullmatch(key):
      stage, module, block = (int(g) for g in match.groups())
      modules[stage] = max(modules.get(stage, 0), module + 1)
      blocks[stage] = max(blocks.get(stage, 0), block + 1)
  if sorted(modules) != [2, 3, 4]:
    raise ValueError(f"expected stages 2, 3, 4 in the state_dict, found {sorted(modules)}")
  num_keypoints = int(np.shape(state_dict["head_heatmap.1.weight"])[0]) - 1
  num_offset_convs = _count(_OFFSET_FINAL_KEY, state_dict)
  if num_offset_convs != num_keypoints:
    raise ValueError(f"head_heatmap.1.weight gives {num_keypoints} keypoints (+ centre) but "
                     f"there are {num_offset_convs} offset_final_layer convs")
  final_shape = np.shape(state_dict["offset_final_layer.0.weight"])
  return dekr.DEKR(
      width=int(np.shape(state_dict["transition1.0.0.weight"])[0]),
      heatmap_channels=int(np.shape(state_dict["transition_heatmap.0.weight"])[0]),
      num_keypoints=num_keypoints,
      stages=tuple(hrnet.StageSpec(modules[s], s, blocks[s]) for s in (2, 3, 4)),
      heatmap_blocks=_count(_HEATMAP_BLOCK_KEY, state_dict),
      offset_channels_per_keypoint=int(final_shape[1]),
      offset_blocks=_count(_OFFSET_BLOCK_KEY, state_dict),
      final_conv_kernel=int(final_shape[-1]),
      scale_head=f"{_SCALE_HEAD_KEY}.0.weight" in state_dict)


def _grid_errors(state_dict: Mapping[str, Any]) -> list[str]:
  """Problems with the `regular_matrix` buffers: wrong value, or not paired with a block."""
  grids = {key[:-len(_GRID_SUFFIX)] for key in state_dict if key.endswith(_GRID_SUFFIX)}
  blocks = {key[:-len(_ADAPT_SUFFIX)] for key in state_dict if key.endswith(_ADAPT_SUFFIX)}
  errors = [f"extra: {prefix}{_GRID_SUFFIX} (no {prefix}{_ADAPT_SUFFIX})"
            for prefix in sorted(grids - blocks)]
  errors += [f"missing: {prefix}{_GRID_SUFFIX}" for prefix in sorted(blocks - grids)]
  expected = dekr.REGULAR_GRID.T
  for prefix in sorted(grids & blocks):
    value = np.asarray(state_dict[prefix + _GRID_SUFFIX], np.float32)
    if value.shape != expected.shape or not np.array_equal(value, expected):
      errors.append(f"wrong value: {prefix}{_GRID_SUFFIX} is not the 3x3 grid {expected.tolist()}")
  return errors


def convert(state_dict: Mapping[str, Any], model: dekr.DEKR | None = None) -> dict[str, Any]:
  """Maps an official DEKR state_dict to {"params": ..., "batch_stats": ...} float32.

  state_dict: torch key -> array (numpy or anything `np.asarray` accepts).
  model: the module the variables are for; default `infer_model(state_dict)`.
  Raises ValueError listing every missing, extra and mis-shaped torch key and every bad
  `regular_matrix` buffer.
  """
  grid_errors = _grid_errors(state_dict)
  kept = {key: value for key, value in state_dict.items() if not key.endswith(_GRID_SUFFIX)}
  model = model or infer_model(state_dict)
  try:  # through the unrolled layout, which has the official per-keypoint names
    variables = weights.convert(kept, layers.unrolled(model), torch_key, kernel_axes)
  except ValueError as error:
    if not grid_errors:
      raise
    raise ValueError("\n".join([str(error), "  regular_matrix buffers: " + "; ".join(grid_errors)]))
  if grid_errors:
    raise ValueError(f"state_dict does not match {type(model).__name__}:\n"
                     "  regular_matrix buffers: " + "; ".join(grid_errors))
  return dekr.scanned_layout(variables, model)
