"""Grain input pipelines: source -> shuffle -> repeat -> transforms -> (mix) -> batch -> shard.

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
from jaxpose.data import mixture
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


def open_component(config: ml_collections.ConfigDict, name: str):
  """The train split of `data.mixture.<name>`, in its own layout (`keypoints`): a source of
  `sources.SOURCES` under its root (`mixture.component_root`), or for "synthetic" jaxpose's
  synthetic persons in the MPII or COCO layout (generated on first use)."""
  block = config.data.mixture[name]
  spec = keypoints_lib.get_spec(block.keypoints)
  synthetic_layouts = ("mpii", "coco")
  if block.source == "synthetic" and block.keypoints not in synthetic_layouts:
    raise UserError(f"config key data.mixture.{name}.keypoints: synthetic data comes in the "
                    f"layouts {list(synthetic_layouts)}, not {block.keypoints!r}")
  if block.source == "synthetic" and block.keypoints == "coco":
    files = split_files(block, block.train_split)
    return coco.CocoPersonBoxes(files.annotation_file, files.image_dir, spec)
  if block.source in ("synthetic", "mpii"):
    # HRNet's annot/<split>.json or mmpose's mpii_<split>.json, as the main MPII (`open_split`).
    root = mpii_root(block) if block.source == "synthetic" else mixture.component_root(config, name)
    return mpii.MpiiPersons(mpii.split_annotation_file(root, block.train_split), root / "images",
                            spec)
  return sources.open_source(block.source, mixture.component_root(config, name),
                             block.train_split, spec)


def train_components(config: ml_collections.ConfigDict, source, local_batch_size: int
                     ) -> list[mixture.Component]:
  """The main dataset (`source`, already open) and the `data.mixture` datasets, opened."""
  if len(source) < local_batch_size * jax.process_count():
    raise UserError(f"{source.annotation_file}: {len(source)} persons, fewer than the global "
                    f"batch size {local_batch_size * jax.process_count()}")
  components = [mixture.Component(mixture.MAIN, source, mixture.main_weight(config), config.seed)]
  for name, block in mixture.extra_blocks(config).items():
    components.append(mixture.Component(f"data.mixture.{name}", open_component(config, name),
                                        float(block.weight),
                                        mixture.component_seed(config.seed, name)))
  return components


def _augmented(config: ml_collections.ConfigDict, component: mixture.Component,
               spec: keypoints_lib.KeypointSpec, keys: tuple[str, ...]) -> grain.MapDataset:
  """One component's stream through the top-down transforms, in the main layout `spec`."""
  input_wh, heatmap_wh = input_and_heatmap_wh(config)
  aug = config.augment
  ds = mixture.record_stream(component, spec)
  ds = ds.map(transforms.DecodeImage())
  ds = ds.map(center_scale.crop_frame(component.source, input_wh, aug.box_padding))
  if aug.half_body_prob > 0:
    ds = ds.random_map(transforms.RandomHalfBody(
        tuple(int(i) for i in spec.upper_body_ids), input_wh, aug.half_body_prob,
        aug.half_body_min_joints))
  if aug.translate_factor > 0:  # SAN's +-2 %; HRNet/SimpleBaseline do not translate
    ds = ds.random_map(transforms.RandomTranslate(aug.translate_factor))
  ds = ds.random_map(transforms.RandomScaleRotate(
      aug.scale_factor, aug.rotation_factor, aug.rotation_prob))
  if aug.flip:
    ds = ds.random_map(transforms.RandomFlip(tuple(int(i) for i in spec.flip_index)))
  ds = ds.map(transforms.AffineCrop(input_wh))
  ds = ds.map(transforms.EncodeHeatmaps(input_wh, heatmap_wh, config.input.heatmap_sigma))
  ds = ds.map(transforms.MaskSkipped())
  return ds.map(transforms.KeepKeys(tuple(keys)))


def train_dataset(config: ml_collections.ConfigDict, source: coco.CocoPersonBoxes,
                  local_batch_size: int, keys: tuple[str, ...] = TRAIN_KEYS
                  ) -> grain.IterDataset:
  """An endless, augmented, batched train stream: this process's rows of each global batch.

  `source` is the main dataset; with `data.mixture`, every batch also holds the extra
  datasets in the weights' proportions, remapped to the main layout (`mixture`). Global
  batches, and so training, are the same for any number of processes with the same global
  batch size (`mixture.mix_batch_shard`). `keys`: what a batch holds (`TRAIN_KEYS`, or
  `RLE_TRAIN_KEYS` for the RLE family).
  """
  components = train_components(config, source, local_batch_size)
  streams = [_augmented(config, c, source.spec, keys) for c in components]
  return mixture.mix_batch_shard(config, streams, [c.weight for c in components],
                                 local_batch_size)


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
