"""Grain input pipelines for bottom-up (DEKR / SAMKR) models: whole images, fixed shapes.

Train: source (`coco_images.CocoImages`, one record per image) -> shuffle -> repeat ->
decode -> `PersonsWithCenters` -> `RandomAffineFlip` -> `EncodeTargets` -> fixed-shape keys
-> batch, this process taking its rows of each global batch (as `pipeline.train_dataset`).
Batches: `image` uint8 [B, S, S, 3], `heatmaps` / `heatmap_weights` float32 [B, S/4, S/4,
K + 1], `offsets` / `offset_weights` float32 [B, S/4, S/4, 2K], `labelled_joints` and
`skipped` int32 [B].

Eval: every image once, resized keeping its aspect ratio as DEKR's test
(`bottomup_transforms.inference_size`: short side `eval.input_size`, sides rounded up to 64)
and padded at the right and bottom with black (DEKR's own border fill) to one canvas
`eval.canvas_size` square, so the predict step compiles once. An image whose resized size
exceeds the canvas is resized with a smaller short side (64 less at a time) until it fits,
and flagged `shrunk`. Batches: `image` [B, C, C, 3], `input_wh` [B, 2] (the resized image's
size, at the canvas' top left), `center_xy` / `scale_wh` [B, 2] (its map back to the
original, `bottomup_decode.to_image_coordinates`), `record_index`, `skipped`, `shrunk` [B].

Config keys read: `seed`, `data.*` (as `pipeline.split_files`; `data.source` "crowdpose"
reads DEKR's layout `json/crowdpose_<split>.json` + `images/`), `input.size_hw` (square),
`input.batch_size`, `input.read_threads`, `input.prefetch_batches`, `input.num_workers`,
`augment.{max_rotation, min_scale, max_scale, max_translate, flip_probability}`,
`targets.{sigma, center_sigma, background_weight, offset_radius}`,
`eval.{input_size, canvas_size}`.
"""

import dataclasses
import os
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np

from jaxpose.data import bottomup_transforms
from jaxpose.data import coco_images
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import pipeline
from jaxpose.data import transforms
from jaxpose.errors import DatasetError, UserError

HEATMAP_STRIDE = 4  # DEKR's heads predict at 1/4 of the input (OUTPUT_SIZE = INPUT_SIZE / 4)
# The eval resize rounds sides up to multiples of 64 (DEKR `get_multi_scale_size`).
_SIZE_STEP = 64
_PAD_VALUE = 0  # black, as DEKR's warp fills the border of its rounded-up input

TRAIN_KEYS = ("image", "heatmaps", "heatmap_weights", "offsets", "offset_weights",
              "labelled_joints", "skipped")
EVAL_KEYS = ("image", "input_wh", "center_xy", "scale_wh", "record_index", "skipped", "shrunk")


def split_files(data_config: ml_collections.ConfigDict, split: str) -> pipeline.SplitFiles:
  """Where a split lives: `pipeline.split_files`, plus DEKR's CrowdPose layout."""
  if data_config.source != "crowdpose":
    return pipeline.split_files(data_config, split)
  if not data_config.root:
    raise UserError("config key data.root: set it to the CrowdPose folder (with json/, images/)")
  root = Path(os.path.expanduser(data_config.root))
  return pipeline.SplitFiles(root / "json" / f"crowdpose_{split}.json", root / "images")


def open_split(config: ml_collections.ConfigDict, split: str, *, for_eval: bool = False
               ) -> coco_images.CocoImages:
  """The image-level source of `split`; `for_eval` keeps images without annotations too."""
  files = split_files(config.data, split)
  spec = keypoints_lib.get_spec(config.data.keypoints)
  return coco_images.CocoImages(files.annotation_file, files.image_dir, spec,
                                require_annotations=not for_eval)


def input_size(config: ml_collections.ConfigDict) -> int:
  """The square train input side (`input.size_hw`), checked."""
  height, width = config.input.size_hw
  if height != width or height % 32:
    raise UserError(f"config key input.size_hw: bottom-up training crops squares whose side is a "
                    f"multiple of 32, not {tuple(config.input.size_hw)}")
  return int(height)


@dataclasses.dataclass(frozen=True)
class BlankSkipped(grain.transforms.Map):
  """For a record with `skipped` 1 (its image failed, `transforms.DecodeImage`): a grey image
  of the annotated size, no persons and a zero `valid_mask`, so every loss weight of the
  sample is 0. Reads `skipped`, `image_wh`; writes `image`, `keypoints`, `segmentation_area`
  (when present), `valid_mask`. Other records pass unchanged."""

  def map(self, record: dict) -> dict:
    if not record["skipped"]:
      return record
    width, height = (int(v) for v in record["image_wh"])
    num_keypoints = record["keypoints"].shape[1]
    blank = {**record, "image": np.full((height, width, 3), 128, np.uint8),
             "keypoints": np.zeros((0, num_keypoints, 3), np.float32),
             "valid_mask": np.zeros((height, width), bool)}
    if "segmentation_area" in record:
      blank["segmentation_area"] = np.zeros(0, np.float32)
    return blank


@dataclasses.dataclass(frozen=True)
class CountLabelledJoints(grain.transforms.Map):
  """Reads `joints` [P, K + 1, 3] (output pixels, after the warp); writes `labelled_joints`
  int32: the keypoints (centres not counted) that draw a heatmap, labelled and inside the
  `output_size` square, as `bottomup.encode_heatmaps` tests them."""
  output_size: int

  def map(self, record: dict) -> dict:
    keypoints = np.asarray(record["joints"])[:, :-1]
    x, y, v = keypoints[..., 0], keypoints[..., 1], keypoints[..., 2]
    inside = (v > 0) & (x >= 0) & (y >= 0) & (x < self.output_size) & (y < self.output_size)
    return {**record, "labelled_joints": np.int32(np.count_nonzero(inside))}


def _read_options(config) -> grain.ReadOptions:
  return grain.ReadOptions(
      num_threads=config.input.read_threads,
      prefetch_buffer_size=config.input.prefetch_batches * config.input.batch_size)


def train_dataset(config: ml_collections.ConfigDict, source: coco_images.CocoImages,
                  local_batch_size: int) -> grain.IterDataset:
  """An endless, augmented, batched train stream: this process's rows of each global batch
  (every process walks the same stream and takes every `process_count`-th local batch)."""
  size = input_size(config)
  output_size = size // HEATMAP_STRIDE
  aug, targets = config.augment, config.targets
  ds = grain.MapDataset.source(source)
  if len(ds) < local_batch_size * jax.process_count():
    raise UserError(f"{source.annotation_file}: {len(ds)} images, fewer than the global batch "
                    f"size {local_batch_size * jax.process_count()}")
  # Shuffle gets its own seed, and before repeat so each epoch is a fresh permutation.
  ds = ds.shuffle(seed=config.seed).repeat().seed(config.seed + 1)
  ds = ds.map(transforms.DecodeImage())
  ds = ds.map(BlankSkipped())
  ds = ds.map(bottomup_transforms.PersonsWithCenters())
  ds = ds.random_map(bottomup_transforms.RandomAffineFlip(
      size, output_size, tuple(int(i) for i in source.spec.flip_index),
      max_rotation=aug.max_rotation, min_scale=aug.min_scale, max_scale=aug.max_scale,
      max_translate=aug.max_translate, flip_probability=aug.flip_probability))
  ds = ds.map(bottomup_transforms.EncodeTargets(
      output_size, sigma=targets.sigma, center_sigma=targets.center_sigma,
      background_weight=targets.background_weight, radius=targets.offset_radius))
  ds = ds.map(CountLabelledJoints(output_size))
  ds = ds.map(transforms.KeepKeys(TRAIN_KEYS))
  ds = ds.batch(local_batch_size, drop_remainder=True)[jax.process_index()::jax.process_count()]
  iter_ds = ds.to_iter_dataset(_read_options(config))
  if config.input.num_workers > 0:
    iter_ds = iter_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=config.input.num_workers))
  return iter_ds


def fitting_input_size(height: int, width: int, input_size: int, canvas_size: int) -> int:
  """The largest short side <= `input_size` (64 less at a time) whose DEKR inference size
  fits the canvas; `input_size` itself whenever it fits."""
  size = input_size
  while size > _SIZE_STEP:
    size_wh, _, _ = bottomup_transforms.inference_size(height, width, size)
    if max(size_wh) <= canvas_size:
      return size
    size -= _SIZE_STEP
  return size


@dataclasses.dataclass(frozen=True)
class ResizeWithinCanvas(grain.transforms.Map):
  """`bottomup_transforms.ResizeKeepAspect` at `input_size`, or at the largest smaller size
  that fits `canvas_size` (`fitting_input_size`). Reads `image`; writes `image`,
  `center_xy`, `scale_wh`, `input_wh` [2] int32 (the resized size) and `shrunk` int32."""
  input_size: int
  canvas_size: int

  def map(self, record: dict) -> dict:
    height, width = record["image"].shape[:2]
    size = fitting_input_size(height, width, self.input_size, self.canvas_size)
    resized = bottomup_transforms.ResizeKeepAspect(size).map(record)
    resized_h, resized_w = resized["image"].shape[:2]
    if max(resized_h, resized_w) > self.canvas_size:
      raise DatasetError(f"{record['image_path']}: a {width}x{height} image does not fit the "
                         f"eval canvas {self.canvas_size} even at input size {size}; raise "
                         "eval.canvas_size")
    return {**resized, "input_wh": np.array([resized_w, resized_h], np.int32),
            "shrunk": np.int32(size != self.input_size)}


@dataclasses.dataclass(frozen=True)
class PadToCanvas(grain.transforms.Map):
  """Reads `image` [h, w, 3] (h, w <= `canvas_size`); writes it at the top left of a black
  `canvas_size` square, so the network-input pixel frame is unchanged."""
  canvas_size: int

  def map(self, record: dict) -> dict:
    image = record["image"]
    canvas = np.full((self.canvas_size, self.canvas_size, image.shape[2]), _PAD_VALUE, image.dtype)
    canvas[:image.shape[0], :image.shape[1]] = image
    return {**record, "image": canvas}


def eval_dataset(config: ml_collections.ConfigDict, source: coco_images.CocoImages,
                 global_batch_size: int) -> grain.IterDataset:
  """Every image of `source` once, in order, resized and padded to the canvas; this
  process's rows of each global batch. Records are padded to whole global batches
  (`record_index` -1 on padding, as `pipeline.eval_dataset`)."""
  canvas, size = config.eval.canvas_size, config.eval.input_size
  if canvas % 32 or canvas < size:
    raise UserError(f"config key eval.canvas_size: {canvas} must be a multiple of 32 and at "
                    f"least eval.input_size {size}")
  num_batches = -(-len(source) // global_batch_size)
  ds = grain.MapDataset.source(pipeline.PaddedToBatches(source, num_batches * global_batch_size))
  ds = ds.map(transforms.DecodeImage())
  ds = ds.map(ResizeWithinCanvas(size, canvas))
  ds = ds.map(PadToCanvas(canvas))
  ds = ds.map(transforms.KeepKeys(EVAL_KEYS))
  local_batch_size = global_batch_size // jax.process_count()
  ds = ds.batch(local_batch_size)[jax.process_index()::jax.process_count()]
  return ds.to_iter_dataset(_read_options(config))
