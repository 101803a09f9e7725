"""HRNet: high-resolution network for top-down pose estimation, NHWC.

Sun, Xiao, Liu, Wang, "Deep High-Resolution Representation Learning for Human Pose
Estimation", CVPR 2019, arXiv:1902.09212 (v1), Sec. 3 and Fig. 1. Ported layer for layer
from the official `pose_hrnet` (leoxiaobin/deep-high-resolution-net.pytorch @6f69e46,
`lib/models/pose_hrnet.py`, COCO configs `experiments/coco/hrnet/w{32,48}_*.yaml`):

  stem      two 3x3 stride-2 convs (64 channels) + BN + ReLU: [B, H, W, 3] -> [B, H/4, W/4, 64]
  layer1    4 Bottlenecks with 64 planes -> 256 channels
  stage 2-4 a transition adds one branch at half the resolution (branch b has `width * 2**b`
            channels at H/2**(b+2)), then `num_modules` HighResolutionModules: BasicBlocks
            per branch, then every branch receives the sum of all branches (exchange unit)
  head      1x1 conv (`FINAL_CONV_KERNEL: 1`, with bias) on branch 0 -> K heatmaps at H/4

H and W must be multiples of 32: the lowest branch is at H/32 and the fuse units upsample
it by exact integer factors, so e.g. 64x48 inputs are rejected (branch 3 would be 2x2 but
has to match branch 2's 4x3 after a 2x upsample; the official code fails there too).

Layer names follow the official PyTorch module paths so that checkpoint conversion
(`jaxpose/models/hrnet_torch_import.py`) is a fixed rewrite of each path component:

  flax                                  torch
  backbone/conv1, bn1, conv2, bn2       conv1, bn1, conv2, bn2
  backbone/layer1_block{n}/...          layer1.{n}....
  .../downsample/{conv,bn}              ....downsample.{0,1}
  backbone/transition{t}/branch{i}      transition{t}.{i}            (conv-BN-ReLU, same size)
  backbone/transition{t}/branch{i}_down{k}   transition{t}.{i}.{k}   (3x3 stride-2 chain)
  backbone/stage{s}_module{m}/branch{b}_block{n}   stage{s}.{m}.branches.{b}.{n}
  backbone/stage{s}_module{m}/fuse{i}_from{j}      stage{s}.{m}.fuse_layers.{i}.{j}   (j > i)
  backbone/stage{s}_module{m}/fuse{i}_from{j}_down{k}  stage{s}.{m}.fuse_layers.{i}.{j}.{k}
  ConvBN children conv, bn              Sequential indices 0, 1
  final_layer                           final_layer

That is the unrolled tree (`scan_modules=False`). By default a stage of three or more modules
runs all but its last as one `nn.scan` (`scanned_modules`), their variables stacked on a
leading axis under `stage{s}_modules/stage{s}_module/...` (row m = module m); the last module
keeps its name. `scanned_layout` maps the unrolled tree onto that; the importer converts
through the unrolled one.
"""

import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpose.models import layers

# Official `init_weights`: every conv ~ N(0, 0.001^2), conv biases 0, BN scale 1 / bias 0
# (the flax BatchNorm defaults).
_conv_init = nn.initializers.normal(stddev=0.001)

_STEM_CHANNELS = 64
_LAYER1_PLANES = 64
_LAYER1_BLOCKS = 4
_BOTTLENECK_EXPANSION = 4


class StageSpec(NamedTuple):
  """One HRNet stage (official `STAGE{2,3,4}` yaml block, BASIC blocks, SUM fusion)."""
  num_modules: int  # HighResolutionModules in sequence (NUM_MODULES)
  num_branches: int  # parallel resolutions after this stage's transition (NUM_BRANCHES)
  num_blocks: int  # BasicBlocks per branch per module (NUM_BLOCKS, equal in all configs)


# The official COCO W32/W48 configs (and the paper's Sec. 4.1 network): stage 2 has one
# module, stage 3 four, stage 4 three; four BasicBlocks per branch everywhere.
OFFICIAL_STAGES = (StageSpec(1, 2, 4), StageSpec(4, 3, 4), StageSpec(3, 4, 4))


def _conv(features: int, kernel_size: int, stride: int, dtype: Any, name: str) -> layers.Conv2d:
  """Bias-free conv with PyTorch's symmetric `padding=kernel_size // 2` (`layers.conv2d`:
  flax "SAME" would pad stride-2 convs on even inputs only at the end, and its weight
  gradient takes XLA CPU's slow path)."""
  return layers.conv2d(features, kernel_size, stride=stride, kernel_init=_conv_init,
                       dtype=dtype, name=name)


def _upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """[B, H, W, C] -> [B, H * factor, W * factor, C], torch `Upsample(mode='nearest')`."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class ConvBN(nn.Module):
  """Conv (no bias) -> BatchNorm [-> ReLU]; torch `Sequential(Conv2d, BatchNorm2d[, ReLU])`.

  [B, H, W, C_in] -> [B, H / stride, W / stride, features].
  """
  features: int
  kernel_size: int
  stride: int = 1
  relu: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = _conv(self.features, self.kernel_size, self.stride, self.dtype, name="conv")(x)
    x = layers.batch_norm(train, self.dtype, name="bn")(x)
    return nn.relu(x) if self.relu else x


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN with an identity shortcut (He et al. 2016); [B, H, W, C] -> same.

  HRNet branches never change width inside a stage, so no projection shortcut is needed.
  """
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    channels = x.shape[-1]
    y = _conv(channels, 3, 1, self.dtype, name="conv1")(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, name="bn1")(y))
    y = _conv(channels, 3, 1, self.dtype, name="conv2")(y)
    y = layers.batch_norm(train, self.dtype, name="bn2")(y)
    return layers.fenced(self, nn.relu(y + x))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4 channels) conv-BN, stride 1; [B, H, W, C] -> [B, H, W, 4 * planes].

  The shortcut is a 1x1 conv-BN (`downsample`) when C != 4 * planes, as in torch ResNet.
  """
  planes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out_channels = self.planes * _BOTTLENECK_EXPANSION
    y = _conv(self.planes, 1, 1, self.dtype, name="conv1")(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, name="bn1")(y))
    y = _conv(self.planes, 3, 1, self.dtype, name="conv2")(y)
    y = nn.relu(layers.batch_norm(train, self.dtype, name="bn2")(y))
    y = _conv(out_channels, 1, 1, self.dtype, name="conv3")(y)
    y = layers.batch_norm(train, self.dtype, name="bn3")(y)
    if x.shape[-1] != out_channels:
      x = ConvBN(out_channels, 1, relu=False, dtype=self.dtype, name="downsample")(x, train=train)
    return layers.fenced(self, nn.relu(y + x))


class Transition(nn.Module):
  """Adapts the previous stage's branches to the next stage's (official `transition{t}`).

  features: list of [B, H / 2**b, W / 2**b, C_b] -> list of `len(out_channels)` such maps.
  A kept branch whose width changes gets a 3x3 conv-BN-ReLU (`branch{i}`); each new branch
  is made from the lowest-resolution input by a chain of 3x3 stride-2 conv-BN-ReLUs
  (`branch{i}_down{k}`) whose last step sets the new width.
  """
  out_channels: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], *, train: bool) -> list[jax.Array]:
    num_inputs = len(features)
    outputs = []
    for i, channels in enumerate(self.out_channels):
      if i < num_inputs:
        x = features[i]
        if x.shape[-1] != channels:
          x = ConvBN(channels, 3, dtype=self.dtype, name=f"branch{i}")(x, train=train)
      else:
        # The official forward feeds new branches from `y_list[-1]`, the lowest resolution.
        x = features[-1]
        num_steps = i + 1 - num_inputs
        for k in range(num_steps):
          step_channels = channels if k == num_steps - 1 else x.shape[-1]
          x = ConvBN(step_channels, 3, stride=2, dtype=self.dtype,
                     name=f"branch{i}_down{k}")(x, train=train)
      outputs.append(x)
    return outputs


class HighResolutionModule(nn.Module):
  """BasicBlocks on every branch, then the exchange unit (arXiv:1902.09212v1 Sec. 3).

  features: list of N maps [B, H / 2**b, W / 2**b, C_b] -> list of N maps (or only branch 0
  when `multi_scale_output` is False, as in the last module of the pose network).
  Output i = ReLU(sum_j f_ij(x_j)) with f_ii = identity; for j > i a 1x1 conv-BN to C_i and
  a nearest 2**(j-i) upsample (`fuse{i}_from{j}`); for j < i, i - j 3x3 stride-2 conv-BNs,
  ReLU after all but the last, the last one mapping to C_i (`fuse{i}_from{j}_down{k}`).
  """
  num_blocks: int
  multi_scale_output: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], *, train: bool) -> list[jax.Array]:
    branches = []
    for b, x in enumerate(features):
      for n in range(self.num_blocks):
        x = BasicBlock(dtype=self.dtype, name=f"branch{b}_block{n}")(x, train=train)
      branches.append(x)
    if len(branches) == 1:
      return branches

    num_outputs = len(branches) if self.multi_scale_output else 1
    fused = []
    for i in range(num_outputs):
      channels = branches[i].shape[-1]
      total = None
      # Summation order j = 0, 1, ... as in the official forward (float rounding parity).
      for j, x in enumerate(branches):
        if j > i:
          x = ConvBN(channels, 1, relu=False, dtype=self.dtype,
                     name=f"fuse{i}_from{j}")(x, train=train)
          x = _upsample_nearest(x, 2**(j - i))
        elif j < i:
          for k in range(i - j):
            is_last = k == i - j - 1
            x = ConvBN(channels if is_last else x.shape[-1], 3, stride=2, relu=not is_last,
                       dtype=self.dtype, name=f"fuse{i}_from{j}_down{k}")(x, train=train)
        total = x if total is None else total + x
      fused.append(nn.relu(total))
    return layers.fenced(self, fused)


class HRNetBackbone(nn.Module):
  """Stem, layer1 and stages 2-4: images [B, H, W, 3] -> list of branch features.

  Branch b is [B, H / 2**(b+2), W / 2**(b+2), width * 2**b]. With `multi_scale_output`
  False the last module fuses into branch 0 only and the list has one entry (official
  pose_hrnet); True keeps every branch (HigherHRNet / DEKR backbones, `concat_branches`).
  """
  width: int
  stages: Sequence[StageSpec] = OFFICIAL_STAGES
  multi_scale_output: bool = True
  remat: bool = False  # recompute each layer1 block and HR module in the backward pass
  # A stage's modules but the last as one nn.scan (`scanned_modules`): a third less memory
  # for HRNet-W32's CPU train step (BUILD_NOTES).
  scan_modules: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> list[jax.Array]:
    # A config writes stages as plain (num_modules, num_branches, num_blocks) triples.
    stages = tuple(StageSpec(*spec) for spec in self.stages)
    # Stem /4, then one stride-2 step per extra branch; fuse units upsample by exact powers
    # of two, so every branch size must divide evenly (32 for the 4-branch networks).
    total_stride = 4 * 2**(max(spec.num_branches for spec in stages) - 1)
    height, width = images.shape[1:3]
    if height % total_stride or width % total_stride:
      raise ValueError(f"HRNet needs H and W divisible by {total_stride}, got images of shape "
                       f"{images.shape} (NHWC); e.g. 256x192, 384x288, 64x64, 96x64.")
    x = images.astype(self.dtype)
    x = _conv(_STEM_CHANNELS, 3, 2, self.dtype, name="conv1")(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, name="bn1")(x))
    x = _conv(_STEM_CHANNELS, 3, 2, self.dtype, name="conv2")(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, name="bn2")(x))
    for n in range(_LAYER1_BLOCKS):
      x = layers.apply_block(Bottleneck(_LAYER1_PLANES, dtype=self.dtype, name=f"layer1_block{n}"),
                             x, train=train, remat=self.remat)

    features = [x]
    for s, spec in enumerate(stages):
      channels = tuple(self.width * 2**b for b in range(spec.num_branches))
      features = Transition(channels, dtype=self.dtype,
                            name=f"transition{s + 1}")(features, train=train)
      scanned = scanned_modules(spec.num_modules) if self.scan_modules else 0
      if scanned:
        name = f"stage{s + 2}_module"
        def body(carry, _, num_blocks=spec.num_blocks, name=name):
          module = HighResolutionModule(num_blocks, dtype=self.dtype, name=name)
          return tuple(layers.apply_block(module, list(carry), train=train, remat=self.remat)), None
        carry, _ = layers.scan_repeated(body, tuple(features), None, scanned, name + "s")
        features = list(carry)
      for m in range(scanned, spec.num_modules):
        is_last_module = s == len(stages) - 1 and m == spec.num_modules - 1
        module = HighResolutionModule(
            spec.num_blocks, multi_scale_output=self.multi_scale_output or not is_last_module,
            dtype=self.dtype, name=f"stage{s + 2}_module{m}")
        features = layers.apply_block(module, features, train=train, remat=self.remat)
    return features


def scanned_modules(num_modules: int) -> int:
  """How many of a stage's modules `scan_modules` runs as one scan: all but the last (which
  may differ: pose HRNet's last module fuses into branch 0 only), if that is two or more."""
  return num_modules - 1 if num_modules >= 3 else 0


def scanned_layout(tree: dict[str, Any], stages: Sequence[StageSpec]) -> dict[str, Any]:
  """One variable collection of an `HRNetBackbone` from the unrolled layout (module m of
  stage s under `stage{s}_module{m}`) to `scan_modules`' (the scanned modules of stage s
  under `stage{s}_modules/stage{s}_module`, each leaf stacked on axis 0)."""
  for s, spec in enumerate(StageSpec(*spec) for spec in stages):
    name = f"stage{s + 2}_module"
    count = scanned_modules(spec.num_modules)
    tree = layers.stacked_layout(tree, (name + "{}",), count, name + "s")
  return tree


def backbone_scanned_layout(variables: dict[str, Any], model: Any) -> dict[str, Any]:
  """Variables of a network with an HRNet `backbone` (HRNet, DEKR, SAMKR), the backbone in
  the unrolled layout -> `model`'s (`scanned_layout` if it has `scan_modules`)."""
  if not getattr(model, "scan_modules", False):
    return variables
  return {collection: {**tree, "backbone": scanned_layout(tree["backbone"], model.stages)}
          if "backbone" in tree else tree for collection, tree in variables.items()}


def concat_branches(features: Sequence[jax.Array]) -> jax.Array:
  """Upsamples every branch to branch 0's size and concatenates channels (DEKR input).

  features: list of [B, H_b, W_b, C_b] -> [B, H_0, W_0, sum_b C_b], branch 0 first.
  Bilinear with half-pixel centres, i.e. torch `F.upsample(..., mode='bilinear')` with the
  default `align_corners=False`, as in HRNet/DEKR @7a30313 `lib/models/hrnet_dekr.py`.
  """
  batch, height, width = features[0].shape[:3]
  upsampled = [features[0]]
  for x in features[1:]:
    shape = (batch, height, width, x.shape[-1])
    upsampled.append(jax.image.resize(x, shape, method="bilinear").astype(x.dtype))
  return jnp.concatenate(upsampled, axis=-1)


class HRNet(nn.Module):
  """Top-down HRNet pose network: images [B, H, W, 3] -> heatmaps [B, H/4, W/4, K].

  Returns (heatmaps float32, aux) with aux["features"] the fused branch-0 map
  [B, H/4, W/4, width] the heatmaps are read from.
  """
  width: int
  num_keypoints: int
  stages: Sequence[StageSpec] = OFFICIAL_STAGES
  remat: bool = False  # the backbone's blocks and modules recomputed in the backward pass
  scan_modules: bool = True  # HRNetBackbone's: a stage's modules but the last as one scan
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    backbone = HRNetBackbone(self.width, self.stages, multi_scale_output=False,
                             remat=self.remat, scan_modules=self.scan_modules, dtype=self.dtype,
                             name="backbone")
    features = backbone(images, train=train)
    heatmaps = layers.Conv2d(self.num_keypoints, 1, use_bias=True, kernel_init=_conv_init,
                             dtype=self.dtype, name="final_layer")(features[0])
    return heatmaps.astype(jnp.float32), {"features": features[0]}


# Widths of the paper's COCO models, arXiv:1902.09212v1 Table 1 and the official README
# (256x192, K=17: W32 28.5M params / 7.1 GFLOPs, W48 63.6M / 14.6 GFLOPs; this port has
# 28,536,113 and 63,595,745, equal to the torch models). W18 is the small width of the HRNet
# family paper (Wang et al., TPAMI 2020, arXiv:1908.07919): same layout, 9,318,215 params.
hrnet_w18 = functools.partial(HRNet, width=18)
hrnet_w32 = functools.partial(HRNet, width=32)
hrnet_w48 = functools.partial(HRNet, width=48)
