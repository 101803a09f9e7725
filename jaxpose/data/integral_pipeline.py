"""Grain pipelines of the integral family (SAN 3D): Human3.6M frames -> crops -> integral targets.

Train batches: `image` uint8 [B, H, W, 3], `coords_target` float32 [B, K, 3] and
`target_weight` float32 [B, K, 3] (`codecs.integral.encode`: x / w - 0.5, y / h - 0.5,
z / w with z the root-relative depth in crop pixels), `skipped` int32 [B].
Eval batches: `image`, `center_xy`, `scale_wh`, `record_index`, `skipped`.

The crop follows integral-human-pose @ad3f875 (`common/utility/image_processing_cv.py:
get_single_patch_sample`) on RLE's boxes (`h36m.py`): the box widened to the input's aspect
ratio without extra padding (`augment.box_padding` 1.0), then scale, rotation, flip and
translation drawn per sample. Depth follows the same function: the root-relative camera depth
in mm, divided by the 2000 mm the unaugmented crop's width stands for times the scale
multiplier, in crop-width units (`joints[:, 2] / (rect_3d_width * scale) * patch_width`).
"""

import dataclasses
import os
from pathlib import Path

import grain
import jax
import ml_collections
import numpy as np

from jaxpose.codecs import integral
from jaxpose.codecs import integral_camera
from jaxpose.data import faults
from jaxpose.data import h36m
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import pipeline
from jaxpose.data import synthetic_h36m
from jaxpose.data import transforms
from jaxpose.errors import UserError

TRAIN_KEYS = ("image", "coords_target", "target_weight", "skipped")
EVAL_KEYS = ("image", "center_xy", "scale_wh", "record_index", "skipped")
SPLITS = ("train", "test")
# The protocol number -> the number in RLE's file names (they count the other way).
_RLE_FILE_PROTOCOL = {1: 2, 2: 1}


def split_files(config: ml_collections.ConfigDict, split: str) -> tuple[Path, Path]:
  """(annotation json, image folder) of a split; generates the synthetic data on first use."""
  if split not in SPLITS:
    raise UserError(f"config key data.train_split / data.val_split: {split!r}; Human3.6M "
                    f"splits are {list(SPLITS)}")
  data = config.data
  if data.source == "synthetic":
    s = data.synthetic
    root = Path(os.path.expanduser(s.cache_dir)) / (
        f"synthetic-h36m-v{synthetic_h36m.FORMAT_VERSION}-seed{s.seed}-n{s.num_train_images}-"
        f"{s.num_val_images}-{s.image_size}px")
    synthetic_h36m.ensure_synthetic_h36m(root, num_train_frames=s.num_train_images,
                                         num_test_frames=s.num_val_images, seed=s.seed,
                                         image_size=s.image_size)
    return root / "annotations" / synthetic_h36m.ANNOTATION_FILE, root / "images"
  if data.source == "h36m":
    if not data.root:
      raise UserError("config key data.root: set it to the Human3.6M folder (annotations/, "
                      "images/) of the RLE download")
    root = Path(os.path.expanduser(data.root))
    rle = _RLE_FILE_PROTOCOL[data.protocol]
    name = (f"Sample_trainmin_train_Human36M_protocol_{rle}.json" if split == "train"
            else f"Sample_64_test_Human36M_protocol_{rle}.json")
    return root / "annotations" / name, root / "images"
  raise UserError(f"config key data.source: unknown source {data.source!r}; known: "
                  "['h36m', 'synthetic']")


def open_split(config: ml_collections.ConfigDict, split: str) -> h36m.Human36MFrames:
  if config.data.protocol not in h36m.PROTOCOL_SUBJECTS:
    raise UserError(f"config key data.protocol: {config.data.protocol!r}; known: "
                    f"{sorted(h36m.PROTOCOL_SUBJECTS)}")
  annotation_file, image_dir = split_files(config, split)
  source = h36m.Human36MFrames(annotation_file, image_dir,
                               keypoints_lib.get_spec(config.data.keypoints),
                               config.data.protocol, split)
  # The reader rejects a bad frame outright (nothing skipped or filtered): an empty scan
  # keeps the families' contract.
  source.scan = faults.AnnotationScan(Path(annotation_file))
  return source


@dataclasses.dataclass(frozen=True)
class RootRelativeDepth(grain.transforms.Map):
  """Reads `joints_cam_mm`, `root_index`, `scale_wh`; adds `depth_mm` [K] (camera Z minus the
  root's) and `box_scale_wh` (the crop size before augmentation, for the depth units)."""

  def map(self, record: dict) -> dict:
    depth = record["joints_cam_mm"][:, 2] - record["joints_cam_mm"][record["root_index"], 2]
    return {**record, "depth_mm": depth.astype(np.float32),
            "box_scale_wh": np.asarray(record["scale_wh"], np.float32)}


@dataclasses.dataclass(frozen=True)
class RandomTranslate(grain.transforms.RandomMap):
  """Shifts `center_xy` by U(-f, f) x `scale_wh` per axis (SAN Sec. 3.5: +-2%)."""
  factor: float = 0.02

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    shift = rng.uniform(-self.factor, self.factor, 2) * record["scale_wh"]
    return {**record, "center_xy": (record["center_xy"] + shift).astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class RandomFlip3D(grain.transforms.RandomMap):
  """`transforms.RandomFlip` (image, 2D keypoints, centre) that also swaps `depth_mm` of
  left/right joints; depth itself is unchanged by a mirror (official `fliplr_joints`)."""
  flip_index: tuple[int, ...]
  probability: float = 0.5

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    if rng.random() >= self.probability:
      return record
    flipped = transforms.RandomFlip(self.flip_index).apply(record)
    return {**flipped, "depth_mm": record["depth_mm"][list(self.flip_index)]}


@dataclasses.dataclass(frozen=True)
class EncodeIntegral(grain.transforms.Map):
  """Reads crop-space `keypoints`, `depth_mm`, `scale_wh`, `box_scale_wh`; adds
  `coords_target` and `target_weight` [K, 3] (`integral.encode`, with depth)."""
  input_wh: tuple[int, int]
  rect_3d_width_mm: float = integral_camera.RECT_3D_WIDTH_MM

  def map(self, record: dict) -> dict:
    scale_multiplier = float(record["scale_wh"][0]) / float(record["box_scale_wh"][0])
    depth_px = record["depth_mm"] / (self.rect_3d_width_mm * scale_multiplier) * self.input_wh[0]
    keypoints = np.concatenate([record["keypoints"][:, :2], depth_px[:, None]], axis=1)
    targets, weights = integral.encode(keypoints, record["keypoints"][:, 2], self.input_wh,
                                       has_depth=True)
    return {**record, "coords_target": targets, "target_weight": weights}


def _read_options(config: ml_collections.ConfigDict) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=config.input.read_threads,
                           prefetch_buffer_size=config.input.prefetch_batches * config.input.batch_size)


def input_wh(config: ml_collections.ConfigDict) -> tuple[int, int]:
  height, width = config.input.size_hw
  return width, height


def train_dataset(config: ml_collections.ConfigDict, source: h36m.Human36MFrames,
                  local_batch_size: int) -> grain.IterDataset:
  """The endless augmented train stream, split over processes as `pipeline.train_dataset`."""
  wh, aug = input_wh(config), config.augment
  ds = grain.MapDataset.source(source)
  if len(ds) < local_batch_size * jax.process_count():
    raise UserError(f"{source.annotation_file}: {len(ds)} frames, fewer than the global batch "
                    f"size {local_batch_size * jax.process_count()}")
  ds = ds.shuffle(seed=config.seed).repeat().seed(config.seed + 1)
  ds = ds.map(transforms.DecodeImage())
  ds = ds.map(transforms.BoxToCenterScale(wh, aug.box_padding))
  ds = ds.map(RootRelativeDepth())
  if aug.translate_factor > 0:
    ds = ds.random_map(RandomTranslate(aug.translate_factor))
  ds = ds.random_map(transforms.RandomScaleRotate(
      aug.scale_factor, aug.rotation_factor, aug.rotation_prob))
  if aug.flip:
    ds = ds.random_map(RandomFlip3D(tuple(int(i) for i in source.spec.flip_index)))
  ds = ds.map(transforms.AffineCrop(wh))
  ds = ds.map(EncodeIntegral(wh))
  ds = ds.map(transforms.MaskSkipped())
  ds = ds.map(transforms.KeepKeys(TRAIN_KEYS))
  ds = ds.batch(local_batch_size, drop_remainder=True)[jax.process_index()::jax.process_count()]
  iter_ds = ds.to_iter_dataset(_read_options(config))
  if config.input.num_workers > 0:
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.input.num_workers))
  return iter_ds


def eval_dataset(config: ml_collections.ConfigDict, source: h36m.Human36MFrames,
                 global_batch_size: int) -> grain.IterDataset:
  """Every frame once, in order, centre-cropped; padded to whole global batches
  (`record_index` -1 on padding), this process's rows of each."""
  wh = input_wh(config)
  num_batches = -(-len(source) // global_batch_size)
  ds = grain.MapDataset.source(pipeline.PaddedToBatches(source, num_batches * global_batch_size))
  ds = ds.map(transforms.DecodeImage())
  ds = ds.map(transforms.BoxToCenterScale(wh, config.augment.box_padding))
  ds = ds.map(transforms.AffineCrop(wh))
  ds = ds.map(transforms.MaskSkipped())
  ds = ds.map(transforms.KeepKeys(EVAL_KEYS))
  ds = ds.batch(global_batch_size // jax.process_count())[jax.process_index()::jax.process_count()]
  return ds.to_iter_dataset(_read_options(config))
