"""Model families and the presets a config can name.

`MODELS` maps a preset name to a module constructor (a `functools.partial` of the family's
module with its size fields bound); `build(name, **overrides)` fills the remaining fields,
e.g. `build("simplebaseline_r50", num_keypoints=17, dtype=jnp.bfloat16)`.
"""

from typing import Any

import flax.linen as nn

from jaxpose.models import hrnet
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
}


def build(name: str, **overrides: Any) -> nn.Module:
  """The preset `name` with its fields overridden; raises KeyError listing valid names."""
  if name not in MODELS:
    raise KeyError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
  return MODELS[name](**overrides)
