"""Official PyTorch SimpleBaseline / ResNet state_dicts -> flax variables.

Keys are those of `PoseResNet.state_dict()` in leoxiaobin/deep-high-resolution-net.pytorch
@6f69e46 `lib/models/pose_resnet.py` (e.g. the released `pose_resnet_50_256x192.pth`); its
backbone keys equal torchvision's `resnet{18,...,152}` keys. The map runs from the flax
side: the expected variable tree comes from `jax.eval_shape(model.init)`, each flax path is
rewritten into one torch key (`torch_key`), so missing, extra and mis-shaped keys are found
by set difference and reported together.

Tensors: Conv2d `weight` [O, I, kh, kw] -> `kernel` [kh, kw, I, O]; ConvTranspose2d `weight`
[I, O, kh, kw] -> `Deconv2x` `kernel` [kh, kw, I, O]; BN `weight`, `bias`, `running_mean`,
`running_var` -> params `scale`, `bias`, batch_stats `mean`, `var`. `num_batches_tracked`
is dropped: flax BatchNorm uses a fixed momentum and never reads it.
"""

import re
from typing import Any, Mapping

import numpy as np

from jaxpose import weights
from jaxpose.models import resnet
from jaxpose.models import simple_baseline

# Flax path component -> torch key fragment, first full match wins; see the tables in the
# `resnet.py` and `simple_baseline.py` docstrings.
_COMPONENT_RULES = (
    (re.compile(r"backbone"), ""),  # pose_resnet keeps the ResNet layers at the top level
    (re.compile(r"layer(\d)_(\d+)"), r"layer\1.\2"),
    (re.compile(r"downsample_conv"), "downsample.0"),
    (re.compile(r"downsample_bn"), "downsample.1"),
    (re.compile(r"deconv(\d+)"), lambda m: f"deconv_layers.{3 * int(m[1])}"),
    (re.compile(r"deconv(\d+)_bn"), lambda m: f"deconv_layers.{3 * int(m[1]) + 1}"),
)
_DECONV = re.compile(r"deconv\d+")
_BLOCK_KEY = re.compile(r"layer(\d)\.(\d+)\.")
_DECONV_KEY = re.compile(r"deconv_layers\.(\d+)\.weight")


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """Official torch key of one flax variable, e.g. ("backbone", "layer1_0",
  "downsample_conv", "kernel") in "params" -> "layer1.0.downsample.0.weight"."""
  return weights.rewrite_path(_COMPONENT_RULES, collection, path)


def infer_model(state_dict: Mapping[str, Any]) -> simple_baseline.SimpleBaseline:
  """The `SimpleBaseline` a pose_resnet state_dict was saved from (depth, head, keypoints)."""
  weights.require_keys(state_dict, ("conv1.weight", "final_layer.weight"), "SimpleBaseline")
  blocks = [0, 0, 0, 0]
  for key in state_dict:
    match = _BLOCK_KEY.match(key)
    if match:
      stage, block = int(match[1]), int(match[2])
      blocks[stage - 1] = max(blocks[stage - 1], block + 1)
  layout = resnet.ResNetLayout("layer1.0.conv3.weight" in state_dict, tuple(blocks))
  depths = [depth for depth, known in resnet.LAYOUTS.items() if known == layout]
  if not depths:
    raise ValueError(f"state_dict holds a ResNet with {blocks} blocks per stage "
                     f"(bottleneck={layout.bottleneck}); known layouts: {resnet.LAYOUTS}")

  deconvs = sorted((int(m[1]), np.shape(value)) for key, value in state_dict.items()
                   if (m := _DECONV_KEY.fullmatch(key)) and len(np.shape(value)) == 4)
  kernels = {shape[2] for _, shape in deconvs}
  if len(kernels) > 1:
    raise ValueError(f"deconv layers with different kernel sizes {sorted(kernels)}; "
                     "SimpleBaseline uses one `deconv_kernel` for all")
  return simple_baseline.SimpleBaseline(
      depth=depths[0], num_keypoints=int(np.shape(state_dict["final_layer.weight"])[0]),
      num_deconv_layers=len(deconvs), num_deconv_filters=tuple(s[1] for _, s in deconvs),
      deconv_kernel=kernels.pop() if kernels else 4)


def kernel_axes(path: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
  """(torch -> flax, flax -> torch) axis permutations of the kernel at `path`; None if none."""
  if path[-1] != "kernel":
    return None
  if any(_DECONV.fullmatch(component) for component in path[:-1]):
    return (2, 3, 0, 1), (2, 3, 0, 1)  # ConvTranspose2d [I, O, kh, kw] <-> [kh, kw, I, O]
  return weights.CONV_AXES


def simple_baseline_from_torch(
    state_dict: Mapping[str, Any],
    model: simple_baseline.SimpleBaseline | resnet.ResNet | None = None) -> dict[str, Any]:
  """Maps an official PyTorch state_dict to {"params": ..., "batch_stats": ...} float32.

  state_dict: torch key -> array (numpy or anything `np.asarray` accepts).
  model: the module the variables are for; default `infer_model(state_dict)`. Pass a
    `resnet.ResNet(depth)` to load a torchvision ImageNet checkpoint into a backbone (drop
    its `fc.weight`, `fc.bias` first: they would be reported as extra), then place the
    result under "backbone" of a SimpleBaseline's variables.
  Raises ValueError listing every missing, extra and mis-shaped torch key.
  """
  return weights.convert(state_dict, model or infer_model(state_dict), torch_key, kernel_axes)
