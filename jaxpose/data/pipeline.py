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
import numpy as np

from jaxpose.data import center_scale
from jaxpose.data import coco
from jaxpose.data import faults
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import mpii
from jaxpose.data import sources
from jaxpose.data import synthetic
from jaxpose.data import synthetic_mpii
from jaxpose.data import tfds_source
from jaxpose.data import transforms
from jaxpose.errors import UserError

HEATMAP_STRIDE = 4  # SimpleBaseline/HRNet heads predict at 1/4 of the input resolution

# `skipped`: 1 for a sample whose image could not be used (zero target weight; see
# `transforms.DecodeImage`); the train step sums it into `skipped_samples`.
TRAIN_KEYS = ("image", "heatmaps", "target_weight", "skipped")
# The RLE family (SADI-Net) also needs the joints in input-crop pixels, `keypoints` [B, K, 3].
RLE_TRAIN_KEYS = TRAIN_KEYS + ("keypoints",)
EVAL_KEYS = ("image", "center_xy", "scale_wh", "record_index", "skipped")


@dataclasses.dataclass(frozen=True)
class SplitFiles:
  annotation_file: Path
  image_dir: Path


def _synthetic_coco(data_config: ml_collections.ConfigDict) -> synthetic.SyntheticPaths:
  s = data_config.synthetic
  root = Path(os.path.expanduser(s.cache_dir)) / (
      f"synthetic-coco-v{synthetic.FORMAT_VERSION}-seed{s.seed}-n{s.num_train_images}-{s.num_val_images}"
      f"-{s.image_size}px")
  return synthetic.ensure_synthetic_dataset(
      root, num_train_images=s.num_train_images, num_val_images=s.num_val_images,
      seed=s.seed, image_size_hw=(s.image_size, s.image_size))


def mpii_root(data_config: ml_collections.ConfigDict) -> Path:
  """The folder in HRNet's MPII layout (annot/, images/): `data.root` for source "mpii"; for
  "synthetic" the MPII relabelling of the synthetic set (`synthetic_mpii`), made on first use."""
  if data_config.source == "synthetic":
    coco_paths = _synthetic_coco(data_config)
    root = coco_paths.root.with_name(
        f"synthetic-mpii-v{synthetic_mpii.FORMAT_VERSION}-from-{coco_paths.root.name}")
    return synthetic_mpii.ensure_synthetic_mpii(coco_paths, root).root
  if not data_config.root:
    raise UserError("config key data.root: set it to the MPII folder (with annot/, images/)")
  return Path(os.path.expanduser(data_config.root))


def split_files(data_config: ml_collections.ConfigDict, split: str) -> SplitFiles:
  """Where a split lives on disk; generates the synthetic dataset on first use."""
  if data_config.source == "synthetic":
    paths = _synthetic_coco(data_config)
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
  spec = keypoints_lib.get_spec(config.data.keypoints)
  if config.data.source == "tfds":
    # Made by `python -m jaxpose.data.prepare`; records equal the raw reader's (+ image_bytes).
    return tfds_source.TfdsSource(config.data.tfds_dir, split, spec)
  if spec.dataset == "mpii" and config.data.source in ("mpii", "synthetic"):
    root = mpii_root(config.data)
    return mpii.MpiiPersons(mpii.split_annotation_file(root, split), root / "images", spec,
                            with_joints=split != "test")
  if config.data.source == "lsp":
    source = sources.open_source("lsp", config.data.root, split, spec)
    # The LSP reader skips nothing; the trainer logs the (zero) counts of every source.
    source.scan = faults.AnnotationScan(source.annotation_file, records=source.records)
    return source
  files = split_files(config.data, split)
  return coco.CocoPersonBoxes(files.annotation_file, files.image_dir, spec)


def scan_split(config: ml_collections.ConfigDict, split: str) -> faults.AnnotationScan:
  """Every annotation problem of a split, collected without raising (for
  `python -m jaxpose.data.check`); `open_split` runs the same checks."""
  files = split_files(config.data, split)
  spec = keypoints_lib.get_spec(config.data.keypoints)
  return coco.scan_annotations(files.annotation_file, files.image_dir, spec)


def input_and_heatmap_wh(config: ml_collections.ConfigDict) -> tuple[tuple[int, int], tuple[int, int]]:
  height, width = config.input.size_hw
  return (width, height), (width // HEATMAP_STRIDE, height // HEATMAP_STRIDE)


def _read_options(config) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=config.input.read_threads,
                           prefetch_buffer_size=config.input.prefetch_batches * config.input.batch_size)


def train_dataset(config: ml_collections.ConfigDict, source: coco.CocoPersonBoxes,
                  local_batch_size: int, keys: tuple[str, ...] = TRAIN_KEYS
                  ) -> grain.IterDataset:
  """An endless, augmented, batched train stream: this process's rows of each global batch.

  Every process walks the same shuffled, augmented stream (a random-access MapDataset, so
  nothing is decoded twice) and takes every `process_count`-th local batch of it: process p
  reads rows [p*b, (p+1)*b) of each global batch. Global batches, and so training, are the
  same for any number of processes with the same global batch size. `keys`: what a batch
  holds (`TRAIN_KEYS`, or `RLE_TRAIN_KEYS` for the RLE family).
  """
  input_wh, heatmap_wh = input_and_heatmap_wh(config)
  spec, aug = source.spec, config.augment
  ds = grain.MapDataset.source(source)
  if len(ds) < local_batch_size * jax.process_count():
    raise UserError(f"{source.annotation_file}: {len(ds)} persons, fewer than the global "
                    f"batch size {local_batch_size * jax.process_count()}")
  # Shuffle gets its own seed, and before repeat so each epoch is a fresh permutation.
  ds = ds.shuffle(seed=config.seed).repeat().seed(config.seed + 1)
  ds = ds.map(transforms.DecodeImage())
  ds = ds.map(center_scale.crop_frame(source, input_wh, aug.box_padding))
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
  ds = ds.map(transforms.MaskSkipped())
  ds = ds.map(transforms.KeepKeys(tuple(keys)))
  ds = ds.batch(local_batch_size, drop_remainder=True)[jax.process_index()::jax.process_count()]
  iter_ds = ds.to_iter_dataset(_read_options(config))
  if config.input.num_workers > 0:
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.input.num_workers))
  return iter_ds


class PaddedToBatches:
  """`source` padded to `length` records by repeating its last one, each record carrying its
  `record_index` (-1 on padding), so every process runs the same number of full batches."""

  def __init__(self, source, length: int):
    self.source, self.length = source, length

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict:
    real = index < len(self.source)
    record = self.source[index if real else len(self.source) - 1]
    return {**record, "record_index": np.int32(index if real else -1)}


@dataclasses.dataclass(frozen=True)
class PyramidCrop(grain.transforms.Map):
  """Multi-scale testing: `image` becomes [S, H, W, 3], crop s covering `scale_wh *
  scale_factors[s]` around `center_xy` (each as `transforms.AffineCrop`); `center_xy` and
  `scale_wh` keep the base crop, the frame the predictions are mapped back from."""
  input_wh: tuple[int, int]
  scale_factors: tuple[float, ...]

  def map(self, record: dict) -> dict:
    crop = transforms.AffineCrop(self.input_wh)
    images = [crop.map({**record, "scale_wh": record["scale_wh"] * np.float32(s)})["image"]
              for s in self.scale_factors]
    return {**record, "image": np.stack(images)}


def eval_dataset(config: ml_collections.ConfigDict, source: coco.CocoPersonBoxes,
                 global_batch_size: int, crop_scales: tuple[float, ...] = ()) -> grain.IterDataset:
  """Every person of `source` once, in order, centre-cropped without augmentation: this
  process's rows of each global batch (as `train_dataset` splits them).

  The record list is padded to whole global batches; padded rows have `record_index` -1 and
  are dropped after the predictions are gathered. With `crop_scales` (multi-scale testing)
  `image` is [S, H, W, 3] per person (`PyramidCrop`).
  """
  input_wh, _ = input_and_heatmap_wh(config)
  num_batches = -(-len(source) // global_batch_size)
  ds = grain.MapDataset.source(PaddedToBatches(source, num_batches * global_batch_size))
  ds = ds.map(transforms.DecodeImage())
  ds = ds.map(center_scale.crop_frame(source, input_wh, config.augment.box_padding))
  if crop_scales:
    ds = ds.map(PyramidCrop(input_wh, tuple(float(s) for s in crop_scales)))
  else:
    ds = ds.map(transforms.AffineCrop(input_wh))
  ds = ds.map(transforms.MaskSkipped())
  ds = ds.map(transforms.KeepKeys(EVAL_KEYS))
  local_batch_size = global_batch_size // jax.process_count()
  ds = ds.batch(local_batch_size)[jax.process_index()::jax.process_count()]
  return ds.to_iter_dataset(_read_options(config))
