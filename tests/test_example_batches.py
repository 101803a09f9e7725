"""`example_batches` (what `bench step` feeds) has exactly the structure of each kind's real
train batch: the same keys, shapes and dtypes as one batch of the config's own pipeline."""

import pytest

from configs import default, samkr_coco, sadinet_mpii, san_2d, san_h36m
from jaxpose import example_batches
from jaxpose import families

SMOKE_CONFIGS = {
    "topdown": default.get_config("smoke"),
    "bottomup": samkr_coco.get_config("smoke"),
    "topdown_rle": sadinet_mpii.get_config("smoke"),
    "integral": san_h36m.get_config("smoke"),
    "integral_2d": san_2d.get_config("smoke"),
}


@pytest.mark.parametrize("kind", sorted(SMOKE_CONFIGS))
def test_example_batch_matches_the_pipeline(kind, tmp_path):
  config = SMOKE_CONFIGS[kind]
  config.data.synthetic.cache_dir = str(tmp_path)
  assert families.kind_of(config) == kind
  family = families.for_config(config)
  source = family.open_split(config, config.data.train_split)
  real = next(iter(family.train_dataset(config, source, 2)))
  example = example_batches.example_batch(kind, config, 2)
  assert {k: (v.shape, v.dtype) for k, v in example.items()} == {
      k: (v.shape, v.dtype) for k, v in real.items()}
