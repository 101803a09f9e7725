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
The 3D transforms are `transforms_3d`'s. With `data.mixture`, 2D datasets (MPII, COCO) join
each batch remapped to the Human3.6M joints (`mixture`), their depth weighted 0.
"""

import os
from pathlib import Path

import grain
import jax
import ml_collections

from jaxpose.data import center_scale
from jaxpose.data import faults
from jaxpose.data import h36m
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import mixture
from jaxpose.data import pipeline
from jaxpose.data import synthetic_h36m
from jaxpose.data import transforms
from jaxpose.data import transforms_3d
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


def _read_options(config: ml_collections.ConfigDict) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=config.input.read_threads,
                           prefetch_buffer_size=config.input.prefetch_batches * config.input.batch_size)


def input_wh(config: ml_collections.ConfigDict) -> tuple[int, int]:
  height, width = config.input.size_hw
  return width, height


def _augmented(config: ml_collections.ConfigDict, component: mixture.Component,
               spec: keypoints_lib.KeypointSpec) -> grain.MapDataset:
  """One component's stream through the 3D transforms, in the main layout `spec`. A 2D
  component (no root joint: MPII, COCO) gets depth 0 with weight 0 (`transforms_3d.NoDepth`)."""
  wh, aug = input_wh(config), config.augment
  has_depth = component.source.spec.root_index is not None
  ds = mixture.record_stream(component, spec)
  ds = ds.map(transforms.DecodeImage())
  ds = ds.map(center_scale.crop_frame(component.source, wh, aug.box_padding))
  ds = ds.map(transforms_3d.RootRelativeDepth() if has_depth else transforms_3d.NoDepth())
  if aug.translate_factor > 0:
    ds = ds.random_map(transforms.RandomTranslate(aug.translate_factor))
  ds = ds.random_map(transforms.RandomScaleRotate(
      aug.scale_factor, aug.rotation_factor, aug.rotation_prob))
  if aug.flip:
    ds = ds.random_map(transforms_3d.RandomFlip3D(tuple(int(i) for i in spec.flip_index)))
  ds = ds.map(transforms.AffineCrop(wh))
  ds = ds.map(transforms_3d.EncodeIntegral(wh, has_depth=has_depth))
  ds = ds.map(transforms.MaskSkipped())
  return ds.map(transforms.KeepKeys(TRAIN_KEYS))


def train_dataset(config: ml_collections.ConfigDict, source: h36m.Human36MFrames,
                  local_batch_size: int) -> grain.IterDataset:
  """The endless augmented train stream of the main dataset and `data.mixture` (remapped to
  the main layout, mixed in the weights' proportions), split over processes as
  `pipeline.train_dataset`."""
  components = pipeline.train_components(config, source, local_batch_size)
  streams = [_augmented(config, c, source.spec) for c in components]
  return mixture.mix_batch_shard(config, streams, [c.weight for c in components],
                                 local_batch_size)


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
