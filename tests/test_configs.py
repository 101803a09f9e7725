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

from jaxpose import config_check
from jaxpose import models
from jaxpose import train
from jaxpose.data import keypoints

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
VARIANTS = {
    "default": [None, "smoke"],
    "hsr_msnet_coco": [None, "smoke", "depth=110,res=384", "depth=161,msnet=False,deconv_kernel=3",
                       "baseline=True,depth=50", "synthetic"],
    "samkr_coco": [None, "smoke", "synthetic", "baseline"],
    "san_h36m": [None, "smoke", "synthetic", "protocol=2,backbone=r152", "mix=mpii_coco",
                 "synthetic,mix=mpii"],
    "sadinet_mpii": [None, "smoke", "synthetic", "dataset=lsp", "variant=hourglass",
                     "variant=hourglass_sfm_dlm"],
    "san_2d": [None, "smoke", "synthetic", "backbone=r152", "dataset=coco",
               "dataset=coco,backbone=r152", "dataset=coco,synthetic"],
}


def test_every_config_file_is_listed():
  files = {p.stem for p in CONFIG_DIR.glob("*.py")} - {"__init__", "common"}
  assert files == set(VARIANTS)


@pytest.mark.parametrize("name,arg", [(n, a) for n, args in VARIANTS.items() for a in args])
def test_variant_builds_its_model(name, arg):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  if not config.data.root:  # a real dataset's folder: only its being set is checked here
    config.data.root = "/datasets/" + config.data.source
  config_check.validate(config)  # the schema of the model's kind, names, ranges, shapes
  model = train.build_model(config)  # raises on unknown models and kinds no family trains
  init = functools.partial(model.init_with_output, train=False)
  images = jax.ShapeDtypeStruct((1, *config.input.size_hw, 3), jnp.float32)
  (outputs, aux), _ = jax.eval_shape(init, jax.random.key(0), images)  # traced once
  height, width = config.input.size_hw
  num_keypoints = keypoints.get_spec(config.data.keypoints).num_keypoints
  kind = models.KINDS[config.model.name]
  if kind == "bottomup":  # keypoint heatmaps + the centre map, two offsets per keypoint
    heatmaps, offsets = outputs
    assert heatmaps.shape == (1, height // 4, width // 4, num_keypoints + 1)
    assert offsets.shape == (1, height // 4, width // 4, 2 * num_keypoints)
    if config.loss.heatmap_loss == "swahr":
      assert aux["heatmap_scales"].shape == heatmaps.shape
  elif kind == "topdown":  # [1, h, w, K], or [1, stacks, h, w, K] (stacked hourglass)
    assert outputs.shape[-3:] == (height // 4, width // 4, num_keypoints), outputs.shape
    assert outputs.ndim in (4, 5) and outputs.shape[0] == 1
  else:
    assert outputs.shape[-3:-1] == (height // 4, width // 4), (kind, outputs.shape)
