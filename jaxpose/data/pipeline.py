"""Grain input pipelines: source -> host shard -> shuffle -> repeat -> transforms -> batch.

The train pipeline yields dicts of numpy arrays with a fixed shape (one compile):
`image` uint8 [B, H, W, 3], `heatmaps` float32 [B, h, w, K], `target_weight` float32 [B, K].
Images stay uint8 until the device; normalisation happens inside the jitted step.
"""

import dataclasses
import os
from pathlib import Path

import grain
import jax
import ml_collections

from jaxpose.data import coco
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import synthetic
from jaxpose.data import transforms
from jaxpose.errors import UserError

HEATMAP_STRIDE = 4  # SimpleBaseline/HRNet heads predict at 1/4 of the input resolution

TRAIN_KEYS = ("image", "heatmaps", "target_weight")
EVAL_KEYS = ("image", "center_xy", "scale_wh", "image_id", "annotation_id")


@dataclasses.dataclass(frozen=True)
class SplitFiles:
  annotation_file: Path
  image_dir: Path


def split_files(data_config: ml_collections.ConfigDict, split: str) -> SplitFiles:
  """Where a split lives on disk; generates the synthetic dataset on first use."""
  if data_config.source == "synthetic":
    s = data_config.synthetic
    root = Path(os.path.expanduser(s.cache_dir)) / (
        f"synthetic-coco-v{synthetic.FORMAT_VERSION}-seed{s.seed}-n{s.num_train_images}-{s.num_val_images}"
        f"-{s.image_size}px")
    paths = synthetic.ensure_synthetic_dataset(
        root, num_train_images=s.num_train_images, num_val_images=s.num_val_images,
        seed=s.seed, image_size_hw=(s.image_size, s.image_size))
    if split == "train":
      return SplitFiles(paths.train_annotations, paths.train_images_dir)
    return SplitFiles(paths.val_annotations, paths.val_images_dir)
  if data_config.source == "coco":
    if not data_config.root:
      raise UserError("config key data.root: set it to the COCO folder (with annotations/)")
    root = Path(os.path.expanduser(data_config.root))
    return SplitFiles(root / "annotations" / f"person_keypoints_{split}.json", root / split)
  raise UserError(f"config key data.source: unknown source {data_config.source!r}; "
                  "known: ['coco', 'synthetic']")


def open_split(config: ml_collections.ConfigDict, split: str) -> coco.CocoPersonBoxes:
  files = split_files(config.data, split)
  spec = keypoints_lib.get_spec(config.data.keypoints)
  return coco.CocoPersonBoxes(files.annotation_file, files.image_dir, spec)


def input_and_heatmap_wh(config: ml_collections.ConfigDict) -> tuple[tuple[int, int], tuple[int, int]]:
  height, width = config.input.size_hw
  return (width, height), (width // HEATMAP_STRIDE, height // HEATMAP_STRIDE)


def _read_options(config) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=config.input.read_threads,
                           prefetch_buffer_size=config.input.prefetch_batches * config.input.batch_size)


def train_dataset(config: ml_collections.ConfigDict, source: coco.CocoPersonBoxes,
                  local_batch_size: int) -> grain.IterDataset:
  """An endless, augmented, batched train stream for this process's shard of `source`."""
  input_wh, heatmap_wh = input_and_heatmap_wh(config)
  spec, aug = source.spec, config.augment
  ds = grain.MapDataset.source(source)[jax.process_index()::jax.process_count()]
  if len(ds) < local_batch_size:
    raise UserError(f"{source.annotation_file}: {len(ds)} persons on this host, fewer than "
                    f"the per-host batch size {local_batch_size}")
  # Shuffle gets its own seed, and before repeat so each epoch is a fresh permutation.
  ds = ds.shuffle(seed=config.seed).repeat().seed(config.seed + 1)
  ds = ds.map(transforms.DecodeImage())
  ds = ds.map(transforms.BoxToCenterScale(input_wh, aug.box_padding))
  if aug.half_body_prob > 0:
    ds = ds.random_map(transforms.RandomHalfBody(
        tuple(int(i) for i in spec.upper_body_ids), input_wh, aug.half_body_prob,
        aug.half_body_min_joints))
  ds = ds.random_map(transforms.RandomScaleRotate(
      aug.scale_factor, aug.rotation_factor, aug.rotation_prob))
  if aug.flip:
    ds = ds.random_map(transforms.RandomFlip(tuple(int(i) for i in spec.flip_index)))
  ds = ds.map(transforms.AffineCrop(input_wh))
  ds = ds.map(transforms.EncodeHeatmaps(input_wh, heatmap_wh, config.input.heatmap_sigma))
  ds = ds.map(transforms.KeepKeys(TRAIN_KEYS))
  ds = ds.batch(local_batch_size, drop_remainder=True)
  iter_ds = ds.to_iter_dataset(_read_options(config))
  if config.input.num_workers > 0:
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.input.num_workers))
  return iter_ds


def eval_dataset(config: ml_collections.ConfigDict, source: coco.CocoPersonBoxes,
                 batch_size: int) -> grain.IterDataset:
  """Every person of `source` once, in order, centre-cropped without augmentation.

  The last batch may be short; the evaluator pads it to the compiled batch size.
  """
  input_wh, _ = input_and_heatmap_wh(config)
  ds = grain.MapDataset.source(source)
  ds = ds.map(transforms.DecodeImage())
  ds = ds.map(transforms.BoxToCenterScale(input_wh, config.augment.box_padding))
  ds = ds.map(transforms.AffineCrop(input_wh))
  ds = ds.map(transforms.KeepKeys(EVAL_KEYS))
  ds = ds.batch(batch_size, drop_remainder=False)
  return ds.to_iter_dataset(_read_options(config))
