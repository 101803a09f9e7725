"""Random train batches with exactly the keys, shapes and dtypes of each kind's pipeline.

`python -m jaxpose.bench step` times a config's real train step on these, so it needs no
dataset on disk; `tests/test_example_batches.py` holds each equal in structure to a batch
of the real pipeline, so the two cannot drift apart. Values are plausible, not meaningful:
uint8 images, targets in [0, 1), joints inside the input crop, every joint labelled.
"""

from typing import Callable

import ml_collections
import numpy as np

from jaxpose.data import keypoints as keypoints_lib

Batch = dict[str, np.ndarray]
HEATMAP_STRIDE = 4  # every kind's heads predict at 1/4 of the input (asserted by the test)


def _common(config: ml_collections.ConfigDict, batch_size: int, rng: np.random.Generator
            ) -> tuple[Batch, int, int, int]:
  height, width = config.input.size_hw
  num_keypoints = keypoints_lib.get_spec(config.data.keypoints).num_keypoints
  batch = dict(image=rng.integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8),
               skipped=np.zeros(batch_size, np.int32))
  return batch, height, width, num_keypoints


def _topdown(config, batch_size, rng) -> Batch:
  batch, height, width, k = _common(config, batch_size, rng)
  h, w = height // HEATMAP_STRIDE, width // HEATMAP_STRIDE
  return dict(batch, heatmaps=rng.random((batch_size, h, w, k), np.float32),
              target_weight=np.ones((batch_size, k), np.float32))


def _topdown_rle(config, batch_size, rng) -> Batch:
  batch = _topdown(config, batch_size, rng)
  height, width = config.input.size_hw
  k = batch["target_weight"].shape[1]
  xy = rng.random((batch_size, k, 2), np.float32) * np.array([width, height], np.float32)
  return dict(batch, keypoints=np.concatenate([xy, np.ones((batch_size, k, 1), np.float32)], -1))


def _bottomup(config, batch_size, rng) -> Batch:
  batch, height, width, k = _common(config, batch_size, rng)
  h, w = height // HEATMAP_STRIDE, width // HEATMAP_STRIDE
  maps = lambda channels: rng.random((batch_size, h, w, channels), np.float32)
  return dict(batch, heatmaps=maps(k + 1), heatmap_weights=np.ones((batch_size, h, w, k + 1),
                                                                    np.float32),
              offsets=(maps(2 * k) - 0.5) * w, offset_weights=maps(2 * k),
              labelled_joints=np.full(batch_size, k, np.int32))


def _integral(config, batch_size, rng) -> Batch:
  batch, _, _, k = _common(config, batch_size, rng)
  return dict(batch, coords_target=rng.random((batch_size, k, 3), np.float32) - 0.5,
              target_weight=np.ones((batch_size, k, 3), np.float32))


def _integral_2d(config, batch_size, rng) -> Batch:
  batch, _, _, k = _common(config, batch_size, rng)
  return dict(batch, coords_target=rng.random((batch_size, k, 2), np.float32) - 0.5,
              target_weight=np.ones((batch_size, k, 2), np.float32))


_BY_KIND: dict[str, Callable[..., Batch]] = {
    "topdown": _topdown, "topdown_rle": _topdown_rle, "bottomup": _bottomup,
    "integral": _integral, "integral_2d": _integral_2d}


def example_batch(kind: str, config: ml_collections.ConfigDict, batch_size: int,
                  seed: int = 0) -> Batch:
  """A random train batch of `batch_size` for a model of `kind` (`families.kind_of`)."""
  return _BY_KIND[kind](config, batch_size, np.random.default_rng(seed))
