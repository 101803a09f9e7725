"""Every config file and variant resolves, names a registered model the trainer accepts, and
that model builds with the config's options at the config's input size (shapes only:
`jax.eval_shape`, no compile). The default config's smoke variant is trained end to end in
`test_launch.py`."""

import functools
import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from jaxpose import train

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
VARIANTS = {
    "default": [None, "smoke"],
    "hsr_msnet_coco": [None, "smoke", "depth=110,res=384", "depth=161,msnet=False,deconv_kernel=3",
                       "baseline=True,depth=50"],
}


def test_every_config_file_is_listed():
  files = {p.stem for p in CONFIG_DIR.glob("*.py")} - {"__init__", "common"}
  assert files == set(VARIANTS)


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in VARIANTS.items() for a in args])
def test_variant_builds_its_model(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  model = train.build_model(config)  # raises on unknown models and non-top-down kinds
  init = functools.partial(model.init, train=False)
  variables = jax.eval_shape(init, jax.random.key(0),
                             jnp.zeros((1, *config.input.size_hw, 3), jnp.float32))
  heatmaps, _ = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                               jnp.zeros((1, *config.input.size_hw, 3), jnp.float32))
  height, width = config.input.size_hw
  assert heatmaps.shape == (1, height // 4, width // 4, 17)
