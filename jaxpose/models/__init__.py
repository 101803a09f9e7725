"""Model families and the presets a config can name.

`MODELS` maps a preset name to a module constructor (a `functools.partial` of the family's
module with its size fields bound); `build(name, **overrides)` fills the remaining fields,
e.g. `build("simplebaseline_r50", num_keypoints=17, dtype=jnp.bfloat16)`.
"""

import dataclasses
from typing import Any

import flax.linen as nn

from jaxpose.models import dekr
from jaxpose.models import hourglass
from jaxpose.models import hrnet
from jaxpose.models import hsr_msnet
from jaxpose.models import res2net
from jaxpose.models import sadinet
from jaxpose.models import samkr
from jaxpose.models import san
from jaxpose.models import simple_baseline

MODELS = {
    "simplebaseline_r18": simple_baseline.simple_baseline_r18,
    "simplebaseline_r34": simple_baseline.simple_baseline_r34,
    "simplebaseline_r50": simple_baseline.simple_baseline_r50,
    "simplebaseline_r101": simple_baseline.simple_baseline_r101,
    "simplebaseline_r152": simple_baseline.simple_baseline_r152,
    "hrnet_w18": hrnet.hrnet_w18,
    "hrnet_w32": hrnet.hrnet_w32,
    "hrnet_w48": hrnet.hrnet_w48,
    "hourglass_1": hourglass.hourglass_1,
    "hourglass_2": hourglass.hourglass_2,
    "hourglass_4": hourglass.hourglass_4,
    "hourglass_8": hourglass.hourglass_8,
    "hsrnet59": hsr_msnet.hsrnet59,
    "hsrnet110": hsr_msnet.hsrnet110,
    "hsrnet161": hsr_msnet.hsrnet161,
    "hsr_msnet59": hsr_msnet.hsr_msnet59,
    "hsr_msnet110": hsr_msnet.hsr_msnet110,
    "hsr_msnet161": hsr_msnet.hsr_msnet161,
    "sadinet": sadinet.sadinet,
    "san_r50": san.san_r50,
    "san_r152": san.san_r152,
    "san_r50_3d": san.san_r50_3d,
    "san_r152_3d": san.san_r152_3d,
    "dekr_w32": dekr.dekr_w32,
    "dekr_w48": dekr.dekr_w48,
    "samkr_w32": samkr.samkr_w32,
    "samkr_w48": samkr.samkr_w48,
    # ImageNet classifiers: backbones for the paper models, not pose models themselves.
    "res2net50_26w4s": res2net.res2net50_26w4s,
    "res2net101_26w4s": res2net.res2net101_26w4s,
}


# What each preset's output is and how it learns, so a trainer can refuse a model it cannot
# train: "topdown" -> (heatmaps [B, h, w, K] or [B, S, h, w, K], aux), heatmap MSE;
# "topdown_rle" -> the same plus RLE outputs in aux (SADI-Net's combined loss);
# "integral" -> (volumetric logits, aux["coords"] [B, K, 3]) for soft-argmax L1 on Human3.6M
# (SAN 3D); "integral_2d" -> (heatmap logits, aux["coords"] [B, K, 2]), the same loss on
# top-down person crops (SAN on MPII / COCO); "bottomup" -> ((heatmaps with the center map
# last, offsets), aux); "classifier" -> (logits, aux). The first matching prefix wins.
_KIND_BY_PREFIX = (("dekr", "bottomup"), ("samkr", "bottomup"), ("res2net", "classifier"),
                   ("san_r50_3d", "integral"), ("san_r152_3d", "integral"), ("san_", "integral_2d"),
                   ("sadinet", "topdown_rle"))
KINDS = {name: next((kind for prefix, kind in _KIND_BY_PREFIX if name.startswith(prefix)),
                    "topdown") for name in MODELS}


def build(name: str, **overrides: Any) -> nn.Module:
  """The preset `name` with its fields overridden; raises KeyError listing valid names."""
  if name not in MODELS:
    raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
  return MODELS[name](**overrides)


def supports_remat(name: str) -> bool:
  """Whether the preset has the `remat` field (`layers.apply_block`): config key model.remat."""
  constructor = MODELS[name]
  module = getattr(constructor, "func", constructor)
  return "remat" in {field.name for field in dataclasses.fields(module)}


def names_with_remat() -> list[str]:
  return sorted(name for name in MODELS if supports_remat(name))
