"""3D transforms for grain (integral family, SAN): depth targets beside the top-down crop.

One job each, as `transforms.py`; randomness only from grain's per-record `rng`. They follow
integral-human-pose @ad3f875 `common/utility/image_processing_cv.py: get_single_patch_sample`
(see `integral_pipeline`). Keys added: `depth_mm` [K] (root-relative camera depth),
`box_scale_wh` [2] (the crop before augmentation), `coords_target`, `target_weight` [K, 3].
"""

import dataclasses

import grain
import numpy as np

from jaxpose.codecs import integral
from jaxpose.codecs import integral_camera
from jaxpose.data import transforms


@dataclasses.dataclass(frozen=True)
class RootRelativeDepth(grain.transforms.Map):
  """Reads `joints_cam_mm`, `root_index`, `scale_wh`; adds `depth_mm` [K] (camera Z minus the
  root's) and `box_scale_wh` (the crop size before augmentation, for the depth units)."""

  def map(self, record: dict) -> dict:
    depth = record["joints_cam_mm"][:, 2] - record["joints_cam_mm"][record["root_index"], 2]
    return {**record, "depth_mm": depth.astype(np.float32),
            "box_scale_wh": np.asarray(record["scale_wh"], np.float32)}


@dataclasses.dataclass(frozen=True)
class NoDepth(grain.transforms.Map):
  """For a 2D record (MPII, COCO mixed into a 3D run): reads `keypoints`, `scale_wh`; adds
  `depth_mm` zeros [K] and `box_scale_wh`, the keys `RootRelativeDepth` adds, so the same
  transforms follow. The zeros never train: `EncodeIntegral(has_depth=False)` gives them
  weight 0 (integral-human-pose's `joints_3d_vis[:, 2] = 0` for 2D data)."""

  def map(self, record: dict) -> dict:
    return {**record, "depth_mm": np.zeros(len(record["keypoints"]), np.float32),
            "box_scale_wh": np.asarray(record["scale_wh"], np.float32)}


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
  `coords_target` and `target_weight` [K, 3] (`integral.encode`); `has_depth` False for 2D
  records gives their depth weight 0."""
  input_wh: tuple[int, int]
  rect_3d_width_mm: float = integral_camera.RECT_3D_WIDTH_MM
  has_depth: bool = True

  def map(self, record: dict) -> dict:
    scale_multiplier = float(record["scale_wh"][0]) / float(record["box_scale_wh"][0])
    depth_px = record["depth_mm"] / (self.rect_3d_width_mm * scale_multiplier) * self.input_wh[0]
    keypoints = np.concatenate([record["keypoints"][:, :2], depth_px[:, None]], axis=1)
    targets, weights = integral.encode(keypoints, record["keypoints"][:, 2], self.input_wh,
                                       has_depth=self.has_depth)
    return {**record, "coords_target": targets, "target_weight": weights}
