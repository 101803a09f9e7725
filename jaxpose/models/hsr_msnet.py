"""HSRNet and HSR-MSNet: a DetNet-style stride-16 backbone (+ MSNet blocks) under a deconv head.

"HSR-MSNet: High Spatial Resolution and Multiscale Networks" for top-down human pose
estimation (`/work/shared/papers/hsr-msnet.txt`): Sec. 3.2 and Figs. 3-6 (HSRNet), Sec. 3.3
and Fig. 7(b) (the MSNet block, Eqs. (1)-(2) of Sec. 3.3; their bodies are lost in the text
extraction and are numbered here in order of appearance), Sec. 4.2 (depths 59/110/161).
The backbone is DetNet (Li et al., arXiv:1804.06215 v1, Sec. 3.2), ported from the DetNet
implementation the paper itself links (guoruoqian/DetNet_pytorch @735e2c5,
`lib/model/fpn/detnet_backbone.py`: `DetNet`, `BottleneckA`, `BottleneckB`); the head is the
official SimpleBaseline head (leoxiaobin/deep-high-resolution-net.pytorch @6f69e46,
`lib/models/pose_resnet.py`) with two deconvolutions instead of three:

  stem    7x7/2 conv (64) + BN + ReLU + 3x3/2 max-pool: [B, H, W, 3] -> H/4  (ResNet stage 1)
  layer1  64 planes, stride 1                 -> [B, H/4, W/4, 256]          (stage 2)
  layer2  128 planes, first block strides 2   -> [B, H/8, W/8, 512]          (stage 3)
  layer3  256 planes, first block strides 2   -> [B, H/16, W/16, 1024]       (stage 4)
  layer4  DetNet stage 5: 256 planes, 3x3 dilation 2, no stride -> [B, H/16, W/16, 1024]
  layer5  DetNet stage 6: the same            -> [B, H/16, W/16, 1024]
  head    2 x (stride-2 deconv 256, kernel 4, 3 or 2, no bias -> BN -> ReLU) -> H/4,
          1x1 conv with bias -> K heatmaps [B, H/4, W/4, K]

layer1-3 hold torchvision Bottlenecks (`resnet.Bottleneck`, HSRNet) or MSNet blocks
(`MSNetBlock`, HSR-MSNet); layer4-5 open with DetNet's bottleneck C (official
`BottleneckB`: 1x1 conv-BN projection shortcut although the shape is kept) followed by
bottlenecks D (official `BottleneckA`: identity shortcut). Block counts per layer:
59 = (3, 4, 6, 3, 3) as DetNet-59; 110 and 161 keep DetNet's (3, 3) in layer4-5 under
ResNet-101's (3, 4, 23) and ResNet-152's (3, 8, 36): depth = 3 * blocks + 2.

Layer names map onto the torch keys of that assembly (DetNet keys at the top level, as
pose_resnet keeps its ResNet; `torch_key` below):

  flax                                         torch
  backbone/conv1, bn1                          conv1, bn1
  backbone/layer{s}_{n}/conv{1,2,3}, bn{1,2,3} layer{s}.{n}.conv{1,2,3}, bn{1,2,3}
  backbone/layer{s}_{n}/downsample_conv, _bn   layer{s}.{n}.downsample.0, downsample.1
  backbone/layer{4,5}_0/extra_conv, extra_bn   layer{4,5}.0.extra_conv.0, extra_conv.1
  backbone/layer{s}_{n}/convs_{i}, bns_{i}     layer{s}.{n}.convs.{i}, bns.{i}  (MSNet; the
                                               Res2Net keys, so Res2Net weights can seed them)
  backbone/layer{s}_{n}/se/fc{1,2}             layer{s}.{n}.se.fc{1,2}  (MSNet; torch Linear)
  deconv{i}, deconv{i}_bn                      deconv_layers.{3 i}, deconv_layers.{3 i + 1}
  final_layer                                  final_layer
"""

import functools
import math
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpose import weights
from jaxpose.models import fast_grad
from jaxpose.models import layers
from jaxpose.models import resnet
from jaxpose.models import simple_baseline

# DetNet `__init__` (as torchvision): conv weights N(0, 2 / (kh kw out)), i.e. kaiming normal
# fan_out; BN scale 1 / bias 0 (the flax defaults). Head: pose_resnet `init_weights`,
# N(0, 0.001^2), bias 0. SE: torch's Linear default, U(+-1/sqrt(fan_in)) for kernel and bias.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_se_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

_STEM_CHANNELS = 64
_RESNET_PLANES = (64, 128, 256)  # layer1-3, as ResNet
_DETNET_PLANES = 256  # layer4-5: 4 x 256 = 1024 channels (DetNet Sec. 3.2)
_EXPANSION = 4

# Blocks per layer1..5; depth = 3 * sum + 2 (stem conv and the classifier's fc).
STAGE_SIZES = {59: (3, 4, 6, 3, 3), 110: (3, 4, 23, 3, 3), 161: (3, 8, 36, 3, 3)}


def _conv(features: int, kernel_size: int, dtype: Any, name: str, *, stride: int = 1,
          dilation: int = 1) -> layers.Conv2d:
  return layers.conv2d(features, kernel_size, stride=stride, dilation=dilation,
                       kernel_init=_conv_init, dtype=dtype, name=name)


def _se_bias_init(key, shape, dtype, fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class SqueezeExcitation(nn.Module):
  """SE block (Hu et al., arXiv:1709.01507 v4, Eqs. (2)-(4), ratio r): [B, H, W, C] -> same.

  z = mean over H, W (squeeze, in float32); s = sigmoid(W2 ReLU(W1 z + b1) + b2) with
  W1: C -> max(1, C // r), W2: -> C (the SENet reference's 1x1 convs with bias); output
  x * s per channel. HSR-MSNet Sec. 3.3 puts it before the residual addition (Fig. 7(b)).
  """
  reduction: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    hidden = max(1, channels // self.reduction)
    squeezed = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                              kernel_init=_se_kernel_init)
    s = nn.relu(dense(hidden, bias_init=functools.partial(_se_bias_init, fan_in=channels),
                      name="fc1")(squeezed))
    s = dense(channels, bias_init=functools.partial(_se_bias_init, fan_in=hidden),
              name="fc2")(s)
    gate = nn.sigmoid(s.astype(jnp.float32))
    return x * gate[:, None, None, :].astype(x.dtype)


class MSNetBlock(nn.Module):
  """MSNet block (HSR-MSNet Sec. 3.3, Fig. 7(b)); [B, H, W, C] -> [B, H/s, W/s, 4 planes].

  A Res2Net bottleneck (`res2net.Bottle2neck`: 1x1 conv-BN-ReLU to `width * scale`
  channels, width = floor(planes * base_width / 64), split into x_1..x_scale) with the
  paper's three changes, in our reading (BUILD_NOTES rows "MSNet"):
    * the added convolution: every split gets its own 3x3 conv-BN-ReLU, the one Res2Net
      passes through (or average-pools in a stage's first block) included, so Eq. (1) reads
      y_1 = K_1(x_1), y_i = K_i(x_i + y_{i-1}) for 1 < i <= scale;
    * the smaller convolutions in place of the stride-2 one: in a stage's first block the
      `scale` split convs (width channels each) all carry the stride and see only their own
      split (parallel, as Res2Net's stype 'stage' blocks), replacing ResNet's single
      stride-2 3x3 conv and Res2Net's average-pooled split;
    * Eq. (2): out = ReLU(shortcut(x) + SE(BN(1x1 conv(concat(y_1..y_scale))))), with
      `SqueezeExcitation` before the residual addition; the shortcut is the identity or, when
      the stride or width changes, a 1x1 strided conv-BN.
  scale = 1, base_width = 64: the one split conv is ResNet's 3x3 and the block is a
  torchvision `resnet.Bottleneck` with SE before the addition (SE-ResNet's block).
  """
  planes: int
  stride: int = 1
  base_width: int = 26
  scale: int = 4
  first_in_stage: bool = False
  se_reduction: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out_channels = self.planes * _EXPANSION
    reshapes = self.stride != 1 or x.shape[-1] != out_channels
    if reshapes and not self.first_in_stage:
      raise ValueError(f"an MSNet block that is not first in its stage keeps its input: got "
                       f"stride {self.stride}, {x.shape[-1]} -> {out_channels} channels")
    width = int(math.floor(self.planes * (self.base_width / 64.0)))
    y = _conv(width * self.scale, 1, self.dtype, "conv1")(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(y))

    outputs = []
    for i, split in enumerate(jnp.split(y, self.scale, axis=-1)):
      if i > 0 and not self.first_in_stage:
        split = split + outputs[-1]  # hierarchical fusion, Eq. (1)
      split = _conv(width, 3, self.dtype, f"convs_{i}", stride=self.stride)(split)
      outputs.append(nn.relu(layers.batch_norm(train, self.dtype, f"bns_{i}")(split)))
    y = _conv(out_channels, 1, self.dtype, "conv3")(jnp.concatenate(outputs, axis=-1))
    y = layers.batch_norm(train, self.dtype, "bn3")(y)
    y = SqueezeExcitation(self.se_reduction, self.dtype, name="se")(y)

    if reshapes:
      x = _conv(out_channels, 1, self.dtype, "downsample_conv", stride=self.stride)(x)
      x = layers.batch_norm(train, self.dtype, "downsample_bn")(x)
    return nn.relu(y + x)


class DetNetBottleneck(nn.Module):
  """DetNet's dilated bottleneck, HSR-MSNet Fig. 6: [B, H, W, C] -> [B, H, W, 4 planes].

  1x1 conv-BN-ReLU -> 3x3 conv (dilation 2, padding 2, stride 1)-BN-ReLU -> 1x1 conv-BN,
  + shortcut, ReLU. `project_shortcut`: bottleneck C (official `BottleneckB`, first in
  each DetNet stage), whose shortcut is a 1x1 conv-BN (`extra_conv`) even though the
  shape is kept; otherwise bottleneck D (official `BottleneckA`), identity shortcut.
  """
  planes: int = _DETNET_PLANES
  project_shortcut: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out_channels = self.planes * _EXPANSION
    if not self.project_shortcut and x.shape[-1] != out_channels:
      raise ValueError(f"bottleneck D needs {out_channels} input channels, got {x.shape[-1]}")
    y = _conv(self.planes, 1, self.dtype, "conv1")(x)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(y))
    y = _conv(self.planes, 3, self.dtype, "conv2", dilation=2)(y)
    y = nn.relu(layers.batch_norm(train, self.dtype, "bn2")(y))
    y = _conv(out_channels, 1, self.dtype, "conv3")(y)
    y = layers.batch_norm(train, self.dtype, "bn3")(y)
    if self.project_shortcut:
      x = _conv(out_channels, 1, self.dtype, "extra_conv")(x)
      x = layers.batch_norm(train, self.dtype, "extra_bn")(x)
    return nn.relu(y + x)


class HSRNet(nn.Module):
  """HSRNet / HSR-MSNet backbone: images [B, H, W, 3] -> (features, stages).

  features: [B, H/16, W/16, 1024] (layer5) in `dtype`; stages: the outputs of layer1-5,
  strides 4, 8, 16, 16, 16 and widths 256, 512, 1024, 1024, 1024. `multiscale` picks
  MSNet blocks (with `base_width`, `scale`, `se_reduction`) for layer1-3.
  """
  stage_sizes: Sequence[int]
  multiscale: bool = False
  base_width: int = 26
  scale: int = 4
  se_reduction: int = 16
  remat: bool = False  # recompute each block in the backward pass (`layers.apply_block`)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, list[jax.Array]]:
    if len(self.stage_sizes) != 5 or min(self.stage_sizes) < 1:
      raise ValueError(f"stage_sizes needs 5 positive block counts (layer1-5), got "
                       f"{tuple(self.stage_sizes)}; presets: {STAGE_SIZES}")
    x = images.astype(self.dtype)
    x = _conv(_STEM_CHANNELS, 7, self.dtype, "conv1", stride=2)(x)
    x = nn.relu(layers.batch_norm(train, self.dtype, "bn1")(x))
    x = fast_grad.max_pool(x, 3, 2, ((1, 1), (1, 1)))

    stages = []
    for stage, (planes, num_blocks) in enumerate(zip(_RESNET_PLANES, self.stage_sizes[:3])):
      for n in range(num_blocks):
        stride = 2 if stage > 0 and n == 0 else 1
        name = f"layer{stage + 1}_{n}"
        if self.multiscale:
          block = MSNetBlock(planes, stride, self.base_width, self.scale, first_in_stage=n == 0,
                             se_reduction=self.se_reduction, dtype=self.dtype, name=name)
        else:
          block = resnet.Bottleneck(planes, stride, dtype=self.dtype, name=name)
        x = layers.apply_block(block, x, train=train, remat=self.remat)
      stages.append(x)
    for stage, num_blocks in zip((4, 5), self.stage_sizes[3:]):
      for n in range(num_blocks):
        block = DetNetBottleneck(_DETNET_PLANES, project_shortcut=n == 0, dtype=self.dtype,
                                 name=f"layer{stage}_{n}")
        x = layers.apply_block(block, x, train=train, remat=self.remat)
      stages.append(x)
    return x, stages


class HSRMSNet(nn.Module):
  """Top-down HSRNet / HSR-MSNet: images [B, H, W, 3] -> (heatmaps [B, H/4, W/4, K], aux).

  (H/4 for the default two deconv layers: H / 16 * 2**len(num_deconv_filters).)
  `images` are normalised floats; H and W must be multiples of 16. heatmaps are float32;
  aux["backbone"] is the layer5 output [B, H/16, W/16, 1024] and aux["stages"] the layer1-5
  outputs, in `dtype`. Each deconvolution is `layers.Deconv2x` (torch ConvTranspose2d,
  stride 2, `deconv_kernel` 4, 3 or 2 as the options of the paper's Table 1, with
  pose_resnet's padding rules).
  """
  stage_sizes: Sequence[int]
  num_keypoints: int
  multiscale: bool = False
  deconv_kernel: int = 4
  num_deconv_filters: Sequence[int] = (256, 256)
  base_width: int = 26
  scale: int = 4
  se_reduction: int = 16
  remat: bool = False  # the backbone's blocks recomputed in the backward pass
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    height, width = images.shape[1:3]
    if height % 16 or width % 16:
      raise ValueError(f"HSRMSNet needs H and W divisible by 16, got images of shape "
                       f"{images.shape} (NHWC); e.g. 256x192, 384x288, 64x48.")
    features, stages = HSRNet(self.stage_sizes, self.multiscale, self.base_width, self.scale,
                              self.se_reduction, self.remat, self.dtype,
                              name="backbone")(images, train=train)
    heatmaps = simple_baseline.deconv_head(features, self.num_deconv_filters,
                                           self.deconv_kernel, self.num_keypoints, train=train,
                                           dtype=self.dtype)
    return heatmaps.astype(jnp.float32), {"backbone": features, "stages": stages}


# Sec. 4.2 / Tables 1-2: HSRNet-59/110/161 (plain DetNet-style backbone) and
# HSR-MSNet-59/110/161 (MSNet blocks in layer1-3; base width 26, scale 4 as Res2Net-50's
# released 26w4s, the paper gives neither). Full-size parameters at K = 17, kernel 4: see
# tests/test_hsr_msnet.py (HSRNet equal to the official DetNet + pose_resnet assembly).
hsrnet59 = functools.partial(HSRMSNet, stage_sizes=STAGE_SIZES[59])
hsrnet110 = functools.partial(HSRMSNet, stage_sizes=STAGE_SIZES[110])
hsrnet161 = functools.partial(HSRMSNet, stage_sizes=STAGE_SIZES[161])
hsr_msnet59 = functools.partial(HSRMSNet, stage_sizes=STAGE_SIZES[59], multiscale=True)
hsr_msnet110 = functools.partial(HSRMSNet, stage_sizes=STAGE_SIZES[110], multiscale=True)
hsr_msnet161 = functools.partial(HSRMSNet, stage_sizes=STAGE_SIZES[161], multiscale=True)


# Torch key map (the docstring table), for `weights.convert(state_dict, model, torch_key,
# kernel_axes)`. First full match wins per flax path component.
_COMPONENT_RULES = (
    (re.compile(r"backbone"), ""),
    (re.compile(r"layer(\d)_(\d+)"), r"layer\1.\2"),
    (re.compile(r"(convs|bns)_(\d+)"), r"\1.\2"),
    (re.compile(r"downsample_conv"), "downsample.0"),
    (re.compile(r"downsample_bn"), "downsample.1"),
    (re.compile(r"extra_conv"), "extra_conv.0"),
    (re.compile(r"extra_bn"), "extra_conv.1"),
    (re.compile(r"deconv(\d+)"), lambda m: f"deconv_layers.{3 * int(m[1])}"),
    (re.compile(r"deconv(\d+)_bn"), lambda m: f"deconv_layers.{3 * int(m[1]) + 1}"),
)
_DECONV = re.compile(r"deconv\d+")
_LINEAR_AXES = ((1, 0), (1, 0))  # torch Linear [out, in] <-> flax Dense [in, out]


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """Torch key of one flax variable, e.g. ("backbone", "layer4_0", "extra_bn", "var") in
  "batch_stats" -> "layer4.0.extra_conv.1.running_var"."""
  return weights.rewrite_path(_COMPONENT_RULES, collection, path)


def kernel_axes(path: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
  """(torch -> flax, flax -> torch) axis permutations of the kernel at `path`; None if none."""
  if path[-1] != "kernel":
    return None
  if len(path) >= 2 and _DECONV.fullmatch(path[-2]):
    return (2, 3, 0, 1), (2, 3, 0, 1)  # ConvTranspose2d [I, O, kh, kw] <-> [kh, kw, I, O]
  if path[-2] in ("fc1", "fc2"):
    return _LINEAR_AXES
  return weights.CONV_AXES
