"""Weighted mixtures of datasets in one batch (issue #4 part 4): the train pipelines' ends.

A train stream is a list of components: the main dataset (`data.*`, weight `data.weight`)
and the extra ones under `data.mixture` (SAN: Human3.6M + MPII (+ COCO); SADI-Net: LSP +
LSP-extended + MPII). Each component is its own record stream, `record_stream`: its source,
its records remapped to the main dataset's keypoint layout (`RemapKeypoints`), shuffled with
its own seed, repeated, seeded for augmentation; the family's pipeline then appends its
transforms. `mix_batch_shard` interleaves the augmented streams with grain's
`MapDataset.mix` in the weights' proportions BEFORE batching (every batch holds each
component at its share, and each record keeps its own index, so augmentation does not
depend on workers), then batches and takes this process's rows as a single dataset does.
One dataset is the one-component case: no remap, no mix, the same stream as before.

Remap, then flip: every transform after `RemapKeypoints` (half body, flip, targets) works
in the main layout with the main layout's flip permutation, as integral-human-pose @ad3f875
does (`core/loader.py: mpii_hm36_Dataset` remaps MPII into Human3.6M at load and flips with
Human3.6M's pairs). The two orders agree: `keypoints.layout_map` maps left to left and
right to right (tested), and a joint the source lacks has visibility 0 on either side.
"""

import dataclasses
import os
import zlib
from pathlib import Path
from typing import Any, Sequence

import grain
import jax
import ml_collections
import numpy as np

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import UserError

MAIN = "data"  # the main dataset's name in messages: its keys are data.*


@dataclasses.dataclass(frozen=True)
class Component:
  """One dataset of a mixture. name: its config path ("data" or "data.mixture.<key>");
  source: random-access records in its own layout (`source.spec`); seed: its shuffle seed
  (augmentation: seed + 1)."""
  name: str
  source: Any
  weight: float
  seed: int


@dataclasses.dataclass(frozen=True)
class RemapKeypoints(grain.transforms.Map):
  """Reads `keypoints` [K_src, 3] (and `joints_cam_mm` [K_src, 3], `root_index` for 3D
  records); writes them in the target layout, [K, 3]: joint k is source joint
  `source_index[k]`, or (0, 0, 0) with visibility 0 where that is -1, so it never trains.
  `root_index`: the target layout's root, for 3D records (None for 2D ones)."""
  source_index: tuple[int, ...]
  root_index: int | None = None

  def map(self, record: dict) -> dict:
    index = np.asarray(self.source_index)
    mapped = index >= 0
    out = dict(record)
    for key in ("keypoints", "joints_cam_mm") if self.root_index is not None else ("keypoints",):
      values = np.zeros((len(index), 3), record[key].dtype)
      values[mapped] = record[key][index[mapped]]
      out[key] = values
    if self.root_index is not None:
      out["root_index"] = self.root_index
    return out


def remap_for(source_spec: keypoints_lib.KeypointSpec, target_spec: keypoints_lib.KeypointSpec,
              name: str) -> RemapKeypoints | None:
  """The remap from a component's layout to the main one; None when they are the same.
  UserError naming the component if no joint maps, or a 3D layout's root does not."""
  if source_spec.names == target_spec.names:
    return None
  index = keypoints_lib.layout_map(source_spec, target_spec)
  if not (index >= 0).any():
    raise UserError(f"config key {name}.keypoints: layout {source_spec.dataset!r} shares no "
                    f"joint with the main layout {target_spec.dataset!r}")
  root_index = None
  if source_spec.root_index is not None and target_spec.root_index is not None:
    if index[target_spec.root_index] != source_spec.root_index:
      raise UserError(f"config key {name}.keypoints: layout {source_spec.dataset!r} has no "
                      f"joint for the root of {target_spec.dataset!r}, so no root-relative depth")
    root_index = target_spec.root_index
  return RemapKeypoints(tuple(int(i) for i in index), root_index)


def component_seed(seed: int, name: str) -> int:
  """An extra component's shuffle seed from `config.seed` and its name alone, so adding or
  renaming one component leaves the other streams as they were."""
  return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0] >> 1)


def extra_blocks(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """`data.mixture` by name, sorted; {} for a config without the key (written before
  mixtures existed: `configs.common.schema` lets it be absent)."""
  if "mixture" not in config.data:
    return {}
  return {name: config.data.mixture[name] for name in sorted(config.data.mixture)}


def main_weight(config: ml_collections.ConfigDict) -> float:
  """`data.weight`; 1 for a config without the key (it matters only beside a mixture)."""
  return float(config.data.weight) if "weight" in config.data else 1.0


def main_share(config: ml_collections.ConfigDict) -> float:
  """The main dataset's fraction of every batch, weight / sum of weights."""
  weights = [float(block.weight) for block in extra_blocks(config).values()]
  return main_weight(config) / (main_weight(config) + sum(weights))


def component_root(config: ml_collections.ConfigDict, name: str) -> Path:
  """`data.mixture.<name>.root`; a relative one is taken from `data.root` (so "../mpii"
  beside "/data/h36m" is /data/mpii: integral-human-pose's yamls name each dataset's folder
  under one data directory)."""
  root = os.path.expanduser(config.data.mixture[name].root)
  if not root:
    raise UserError(f"config key data.mixture.{name}.root: empty; set it to the dataset's "
                    "folder (absolute, or relative to data.root)")
  if os.path.isabs(root):
    return Path(root)
  if not config.data.root:
    raise UserError(f"config key data.mixture.{name}.root: {root!r} is relative to data.root, "
                    "which is empty")
  return Path(os.path.expanduser(config.data.root)) / root


def record_stream(component: Component, target_spec: keypoints_lib.KeypointSpec
                  ) -> grain.MapDataset:
  """Source -> remap to `target_spec` -> shuffle -> repeat -> seed: an endless stream to
  append the family's transforms to. The main dataset's stream is the single-dataset one."""
  ds = grain.MapDataset.source(component.source)
  remap = remap_for(component.source.spec, target_spec, component.name)
  if remap is not None:
    ds = ds.map(remap)
  # Shuffle gets its own seed, and before repeat so each epoch is a fresh permutation.
  return ds.shuffle(seed=component.seed).repeat().seed(component.seed + 1)


def mix_batch_shard(config: ml_collections.ConfigDict, streams: Sequence[grain.MapDataset],
                    weights: Sequence[float], local_batch_size: int) -> grain.IterDataset:
  """The augmented component streams mixed in proportion to `weights`, batched, this
  process's rows of each global batch, prefetched (by `input.num_workers` processes).

  Every process walks the same mixed stream (random access: nothing is decoded twice) and
  takes every `process_count`-th local batch: process p reads rows [p*b, (p+1)*b) of each
  global batch, so training is the same for any process count at one global batch size.
  """
  ds = streams[0] if len(streams) == 1 else grain.MapDataset.mix(list(streams), list(weights))
  ds = ds.batch(local_batch_size, drop_remainder=True)[jax.process_index()::jax.process_count()]
  iter_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=config.input.read_threads,
      prefetch_buffer_size=config.input.prefetch_batches * config.input.batch_size))
  if config.input.num_workers > 0:
    iter_ds = iter_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=config.input.num_workers))
  return iter_ds
