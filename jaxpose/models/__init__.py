"""Model families and the presets a config can name.

`MODELS` maps a preset name to a module constructor (a `functools.partial` of the family's
module with its size fields bound); `build(name, **overrides)` fills the remaining fields,
e.g. `build("simplebaseline_r50", num_keypoints=17, dtype=jnp.bfloat16)`.
"""

from typing import Any

import flax.linen as nn

from jaxpose.models import dekr
from jaxpose.models import hourglass
from jaxpose.models import hrnet
from jaxpose.models import res2net
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
    "dekr_w32": dekr.dekr_w32,
    "dekr_w48": dekr.dekr_w48,
    # ImageNet classifiers: backbones for the paper models, not pose models themselves.
    "res2net50_26w4s": res2net.res2net50_26w4s,
    "res2net101_26w4s": res2net.res2net101_26w4s,
}


# What each preset's output is, so a trainer can refuse a model it cannot train:
# "topdown" -> (heatmaps [B, h, w, K] or [B, S, h, w, K], aux); "bottomup" -> ((heatmaps with
# the center map last, offsets), aux); "classifier" -> (logits, aux).
KINDS = {name: ("bottomup" if name.startswith("dekr") else
                "classifier" if name.startswith("res2net") else "topdown") for name in MODELS}


def build(name: str, **overrides: Any) -> nn.Module:
  """The preset `name` with its fields overridden; raises KeyError listing valid names."""
  if name not in MODELS:
    raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
  return MODELS[name](**overrides)
