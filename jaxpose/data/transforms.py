"""Top-down transforms for grain, one job each, in the order HRNet's `JointsDataset` applies them.

Every transform is a frozen dataclass: a `grain.transforms.Map` (deterministic) or
`RandomMap` (randomness only from the `rng` grain hands it, derived from the seed and the
record index, so augmentation does not depend on worker count or order).

Record keys (produced by `CocoPersonBoxes`): `image_path`, `image_id`, `annotation_id`,
`box_xywh` [4], `keypoints` [K, 3] (x, y, v; image pixels), `area`, `image_wh` [2] (the
annotated size; optional for readers whose format has none). Coordinates are x before
y, in pixels; `scale_wh` is the (width, height) in source pixels of the region cropped to
the network input (HRNet's `scale * 200`).
"""

import dataclasses

import cv2
import grain
import numpy as np

from jaxpose import geometry
from jaxpose.codecs import heatmap as heatmap_codec
from jaxpose.data import faults
from jaxpose.data import image_io

# grain already decodes and warps records in parallel threads (or worker processes); cv2's
# own thread pool on top oversubscribes the cores the jitted step needs (measured on 2 cores:
# 16.4 -> 20.8 img/s for the default run with cv2 single-threaded).
cv2.setNumThreads(0)

# HRNet's half-body coin is `np.random.randn() < 0.5`, i.e. upper body with p = Phi(0.5).
_UPPER_BODY_PROBABILITY = 0.6914624612740131


# Samples whose image failed get mid-grey pixels: close to the ImageNet mean, so they are
# near zero after normalisation and barely move BatchNorm statistics.
_SKIPPED_FILL = 128
_warn_once = faults.WarnOnce()


@dataclasses.dataclass(frozen=True)
class DecodeImage(grain.transforms.Map):
  """Reads `image_path`, or decodes `image_bytes` when present (and drops it), into
  `image`: uint8 [H, W, 3] RGB (checked against `image_wh` when present), and `skipped`:
  int32 0, or 1 if the image is unusable (`image_io.read_image` / `decode_image`).

  An unusable file does not raise (that would end a long run): the record keeps its slot
  with a 1x1 placeholder image, `MaskSkipped` blanks it after the crop, and the file is
  warned about once per process.
  """

  def map(self, record: dict) -> dict:
    path = record["image_path"]
    expected_wh = tuple(record["image_wh"]) if "image_wh" in record else None
    if "image_bytes" in record:  # a prepared TFDS record (`tfds_source.TfdsSource`)
      image, problem = image_io.decode_image(record["image_bytes"], expected_wh)
      record = {k: v for k, v in record.items() if k != "image_bytes"}  # not carried on
    else:
      image, problem = image_io.read_image(path, expected_wh)
    if problem is None:
      return {**record, "image": image, "skipped": np.int32(0)}
    _warn_once(faults.Fault(problem[0], path, f"image id {record.get('image_id')}", problem[1]),
               "its samples are skipped (zero target weight, counted in skipped_samples)")
    return {**record, "image": np.full((1, 1, 3), _SKIPPED_FILL, np.uint8),
            "skipped": np.int32(1)}


@dataclasses.dataclass(frozen=True)
class MaskSkipped(grain.transforms.Map):
  """For a record with `skipped` 1: fills `image` with grey and zeroes `heatmaps` and
  `target_weight` (when present), so the sample adds nothing to the loss. Other records
  pass unchanged."""

  def map(self, record: dict) -> dict:
    if not record["skipped"]:
      return record
    masked = {**record, "image": np.full_like(record["image"], _SKIPPED_FILL)}
    for key in ("heatmaps", "target_weight"):
      if key in record:
        masked[key] = np.zeros_like(record[key])
    return masked


@dataclasses.dataclass(frozen=True)
class BoxToCenterScale(grain.transforms.Map):
  """Reads `box_xywh`; adds `center_xy`, `scale_wh` (box at the input aspect ratio, padded)."""
  input_wh: tuple[int, int]
  padding: float = 1.25

  def map(self, record: dict) -> dict:
    aspect_ratio = self.input_wh[0] / self.input_wh[1]
    center, scale = geometry.box_to_center_scale(record["box_xywh"], aspect_ratio, self.padding)
    return {**record, "center_xy": np.asarray(center, np.float32),
            "scale_wh": np.asarray(scale, np.float32), "rotation_deg": np.float32(0.0)}


@dataclasses.dataclass(frozen=True)
class RandomHalfBody(grain.transforms.RandomMap):
  """With `probability`, re-centres on the upper or the lower body (HRNet `half_body_transform`).

  Reads `keypoints`, `center_xy`, `scale_wh`; may rewrite `center_xy`, `scale_wh`. Applies only
  when more than `min_joints` keypoints are labelled, as the official code.
  """
  upper_body_ids: tuple[int, ...]
  input_wh: tuple[int, int]
  probability: float = 0.3
  min_joints: int = 8

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    labelled = record["keypoints"][:, 2] > 0
    if labelled.sum() <= self.min_joints or rng.random() >= self.probability:
      return record
    return self.apply(record, prefer_upper=rng.random() < _UPPER_BODY_PROBABILITY)

  def apply(self, record: dict, prefer_upper: bool) -> dict:
    """The half-body crop once the coins are thrown: the upper body if `prefer_upper` and it
    has more than two labelled keypoints, else the lower body (or the upper when the lower
    has too few); unchanged if fewer than two are left."""
    labelled = record["keypoints"][:, 2] > 0
    is_upper = np.zeros(len(labelled), bool)
    is_upper[list(self.upper_body_ids)] = True
    upper = record["keypoints"][labelled & is_upper, :2]
    lower = record["keypoints"][labelled & ~is_upper, :2]
    if prefer_upper and len(upper) > 2:
      selected = upper
    else:
      selected = lower if len(lower) > 2 else upper
    if len(selected) < 2:
      return record
    center = selected.mean(axis=0)
    width, height = selected.max(axis=0) - selected.min(axis=0)
    aspect_ratio = self.input_wh[0] / self.input_wh[1]
    if width > aspect_ratio * height:
      height = width / aspect_ratio
    elif width < aspect_ratio * height:
      width = height * aspect_ratio
    scale = np.array([width, height], np.float32) * 1.5
    return {**record, "center_xy": center.astype(np.float32), "scale_wh": scale}


@dataclasses.dataclass(frozen=True)
class RandomScaleRotate(grain.transforms.RandomMap):
  """Scales `scale_wh` by clip(N(1, s), 1-s, 1+s); sets `rotation_deg` to clip(N(0, r), -2r, 2r)
  with probability `rotation_prob` (HRNet's train branch)."""
  scale_factor: float = 0.35
  rotation_factor: float = 40.0
  rotation_prob: float = 0.6

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    s, r = self.scale_factor, self.rotation_factor
    scale = np.clip(rng.standard_normal() * s + 1, 1 - s, 1 + s)
    rotation = np.clip(rng.standard_normal() * r, -2 * r, 2 * r)
    if rng.random() > self.rotation_prob:
      rotation = 0.0
    return self.apply(record, scale, rotation)

  @staticmethod
  def apply(record: dict, scale_multiplier: float, rotation_deg: float) -> dict:
    """Multiplies `scale_wh` by `scale_multiplier` and sets `rotation_deg` (the drawn values)."""
    return {**record, "scale_wh": (record["scale_wh"] * scale_multiplier).astype(np.float32),
            "rotation_deg": np.float32(rotation_deg)}


@dataclasses.dataclass(frozen=True)
class RandomTranslate(grain.transforms.RandomMap):
  """Shifts `center_xy` by U(-f, f) x `scale_wh` per axis (SAN Sec. 3.5: +-2%; the sampler of
  mmpose's `RandomBBoxTransform` shift, applied always). HRNet has no translation."""
  factor: float = 0.02

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    shift = rng.uniform(-self.factor, self.factor, 2) * record["scale_wh"]
    return {**record, "center_xy": (record["center_xy"] + shift).astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class RandomFlip(grain.transforms.RandomMap):
  """Mirrors `image`, `keypoints` (swapping left/right by `flip_index`) and `center_xy`
  with probability 0.5, using HRNet's pixel convention x -> width - 1 - x."""
  flip_index: tuple[int, ...]
  probability: float = 0.5

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    if rng.random() >= self.probability:
      return record
    return self.apply(record)

  def apply(self, record: dict) -> dict:
    """The mirroring itself, once the coin says flip."""
    # cv2.flip, not np.ascontiguousarray(image[:, ::-1]): the same bytes, but the numpy copy
    # of a negative-stride view took 3 ms for a 640x640 image (0.05 ms here), as long as
    # decoding it.
    image = cv2.flip(record["image"], 1)
    width = image.shape[1]
    keypoints = record["keypoints"][list(self.flip_index)].copy()
    keypoints[:, 0] = np.where(keypoints[:, 2] > 0, width - 1 - keypoints[:, 0], keypoints[:, 0])
    center = record["center_xy"].copy()
    center[0] = width - 1 - center[0]
    return {**record, "image": image, "keypoints": keypoints, "center_xy": center}


@dataclasses.dataclass(frozen=True)
class AffineCrop(grain.transforms.Map):
  """Warps `image` to the [H, W] network input around `center_xy`/`scale_wh`/`rotation_deg`
  (cv2.warpAffine, bilinear) and maps labelled `keypoints` into input pixels."""
  input_wh: tuple[int, int]

  def map(self, record: dict) -> dict:
    matrix = geometry.get_affine_transform(
        record["center_xy"], record["scale_wh"], float(record["rotation_deg"]), self.input_wh)
    image = geometry.warp_image(record["image"], matrix, self.input_wh)
    keypoints = record["keypoints"].copy()
    labelled = keypoints[:, 2] > 0
    keypoints[labelled, :2] = geometry.affine_transform_points(keypoints[labelled, :2], matrix)
    return {**record, "image": image, "keypoints": keypoints}


@dataclasses.dataclass(frozen=True)
class EncodeHeatmaps(grain.transforms.Map):
  """Adds `heatmaps` [h, w, K] and `target_weight` [K] from input-space `keypoints`
  (the MSRA Gaussian codec, HRNet `generate_target`)."""
  input_wh: tuple[int, int]
  heatmap_wh: tuple[int, int]
  sigma: float

  def map(self, record: dict) -> dict:
    heatmaps, target_weight = heatmap_codec.encode(
        record["keypoints"][:, :2], record["keypoints"][:, 2], self.input_wh, self.heatmap_wh,
        self.sigma)
    return {**record, "heatmaps": heatmaps, "target_weight": target_weight}


@dataclasses.dataclass(frozen=True)
class KeepKeys(grain.transforms.Map):
  """Drops every key but `keys`, so batches hold only arrays the consumer needs."""
  keys: tuple[str, ...]

  def map(self, record: dict) -> dict:
    return {k: np.asarray(record[k]) for k in self.keys}
