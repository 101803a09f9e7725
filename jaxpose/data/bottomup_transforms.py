"""Bottom-up (whole-image) transforms for grain, as the official DEKR code (HRNet/DEKR @7a30313).

Training: `PersonsWithCenters` -> `RandomAffineFlip` (`RandomAffineTransform` then
`RandomHorizontalFlip` of `lib/dataset/transforms/transforms.py`) -> `EncodeTargets`
(`jaxpose.codecs.bottomup`). Inference: `ResizeKeepAspect` (`lib/utils/transforms.py:
resize_align_multi_scale` at scale 1).

Record keys read from the image-level source: `image` [H, W, 3] uint8 RGB, `keypoints`
[P, K, 3] (x, y, v) in image pixels for the persons DEKR trains on
(`bottomup.select_training_persons`), `segmentation_area` [P] (COCO `area`; omit for
CrowdPose), `valid_mask` [H, W] bool (`bottomup.valid_region_mask`; omit for CrowdPose,
which masks nothing). Points are (x, y) pixels; the network input is `input_size` square,
the heatmaps `output_size` square.

Augmentation units: DEKR's region is 200 x `scale` pixels with `scale` = short image side /
200 x U(MIN_SCALE, MAX_SCALE), and its translation bound is MAX_TRANSLATE x `scale` pixels;
here the region is `short side x scale factor` pixels and the bound a fraction of it,
`max_translate` = MAX_TRANSLATE / 200 = 0.2.
"""

import dataclasses

import cv2
import grain
import numpy as np

from jaxpose import geometry
from jaxpose.codecs import bottomup

# As jaxpose.data.transforms: grain parallelises records; cv2's own pool would oversubscribe.
cv2.setNumThreads(0)


@dataclasses.dataclass(frozen=True)
class AffineParams:
  """One draw of DEKR's augmentation.

  rotation_deg: positive turns the content counter-clockwise on screen (DEKR `aug_rot`).
  scale: region side / short image side (DEKR `aug_scale`); > 1 zooms out.
  translation_xy: integer pixels added to the region centre (DEKR `dx`, `dy`).
  flip: mirror after the warp.
  """
  rotation_deg: float
  scale: float
  translation_xy: tuple[int, int]
  flip: bool


def region_to_square_matrix(center_xy: np.ndarray, region_size: float, size: int,
                            rotation_deg: float) -> np.ndarray:
  """[3, 3] map of the square region (side `region_size`, centred at `center_xy`, rotated)
  onto a `size` x `size` image: DEKR `RandomAffineTransform._get_affine_matrix` with
  `200 * scale = region_size` (scale, then rotation by -rotation_deg about the output centre)."""
  zoom = size / region_size
  matrix = np.array([[zoom, 0.0, size * (-center_xy[0] / region_size + 0.5)],
                     [0.0, zoom, size * (-center_xy[1] / region_size + 0.5)],
                     [0.0, 0.0, 1.0]])
  if rotation_deg != 0:
    angle = -rotation_deg * np.pi / 180
    sin, cos = np.sin(angle), np.cos(angle)
    rotation = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    to_origin = np.eye(3)
    to_origin[:2, 2] = -size / 2
    back = np.eye(3)
    back[:2, 2] = size / 2
    matrix = back @ (rotation @ (to_origin @ matrix))
  return matrix


def affine_flip(record: dict, params: AffineParams, input_size: int, output_size: int,
                flip_index: np.ndarray) -> dict:
  """DEKR's training warp with explicit parameters (the deterministic half of `RandomAffineFlip`).

  Reads `image`, `joints` [P, K + 1, 3] (image pixels, centre last), `person_area` [P],
  `valid_mask` [H, W] (optional). Writes `image` [input_size, input_size, 3] (cv2 bilinear,
  border 0), `joints` in output pixels (flipped as x -> output_size - 1 - x, rows permuted
  by `flip_index` plus the centre), `person_area` times (input_size / region)^2, and
  `valid_mask` [output_size, output_size] float32 (warped at 255 levels, > 0.5; outside the
  image counts as ignored, as DEKR's zero border does).
  """
  image = record["image"]
  height, width = image.shape[:2]
  center = np.array([width / 2, height / 2]) + np.asarray(params.translation_xy, np.float64)
  region_size = min(height, width) * params.scale

  output_matrix = region_to_square_matrix(center, region_size, output_size, params.rotation_deg)[:2]
  input_matrix = region_to_square_matrix(center, region_size, input_size, params.rotation_deg)[:2]
  valid = record.get("valid_mask")
  if valid is None:
    valid = np.ones((height, width), bool)
  valid = cv2.warpAffine((np.asarray(valid, np.float64) * 255).astype(np.uint8), output_matrix,
                         (output_size, output_size)) / 255
  valid = (valid > 0.5).astype(np.float32)
  joints = np.array(record["joints"], np.float64)
  joints[:, :, :2] = geometry.affine_transform_points(joints[:, :, :2], output_matrix)
  area = np.asarray(record["person_area"], np.float64) * (input_size / region_size) ** 2
  image = cv2.warpAffine(image, input_matrix, (input_size, input_size))

  if params.flip:
    image = np.ascontiguousarray(image[:, ::-1])
    valid = np.ascontiguousarray(valid[:, ::-1])
    joints = joints[:, list(flip_index) + [joints.shape[1] - 1]]
    joints[:, :, 0] = output_size - joints[:, :, 0] - 1
  return {**record, "image": image, "joints": joints, "person_area": area, "valid_mask": valid}


@dataclasses.dataclass(frozen=True)
class PersonsWithCenters(grain.transforms.Map):
  """Reads `keypoints`, `segmentation_area` (optional); writes `joints` [P, K + 1, 3] with
  DEKR's centre and `person_area` [P] (`bottomup.persons_with_centers`)."""

  def map(self, record: dict) -> dict:
    joints, area = bottomup.persons_with_centers(record["keypoints"],
                                                 record.get("segmentation_area"))
    return {**record, "joints": joints, "person_area": area}


@dataclasses.dataclass(frozen=True)
class RandomAffineFlip(grain.transforms.RandomMap):
  """DEKR's whole-image random rotation, scale, translation and flip (defaults: COCO configs).

  Draws, in DEKR's order: scale ~ U[min_scale, max_scale), rotation ~ U[-max_rotation,
  max_rotation), translation x then y ~ integers in [trunc(-t), trunc(t)) with
  t = max_translate x region side, flip with `flip_probability`; then `affine_flip`.
  `flip_index` is the keypoint permutation [K] (`KeypointSpec.flip_index`).
  """
  input_size: int
  output_size: int
  flip_index: tuple[int, ...]
  max_rotation: float = 30.0
  min_scale: float = 0.75
  max_scale: float = 1.5
  max_translate: float = 0.2
  flip_probability: float = 0.5

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    height, width = record["image"].shape[:2]
    scale = rng.random() * (self.max_scale - self.min_scale) + self.min_scale
    rotation = (rng.random() * 2 - 1) * self.max_rotation
    translation = (0, 0)
    if self.max_translate > 0:
      bound = self.max_translate * min(height, width) * scale
      translation = tuple(int(rng.integers(int(-bound), int(bound))) for _ in range(2))
    flip = bool(rng.random() < self.flip_probability)
    params = AffineParams(rotation, scale, translation, flip)
    return affine_flip(record, params, self.input_size, self.output_size,
                       np.asarray(self.flip_index))


@dataclasses.dataclass(frozen=True)
class EncodeTargets(grain.transforms.Map):
  """Reads `joints`, `person_area`, `valid_mask`; adds DEKR's `heatmaps`, `heatmap_weights`,
  `offsets`, `offset_weights` (`bottomup.encode`; defaults: the official configs)."""
  output_size: int
  sigma: float = 2.0
  center_sigma: float = 4.0
  background_weight: float = 0.1
  radius: int = 4

  def map(self, record: dict) -> dict:
    targets = bottomup.encode(record["joints"], record["person_area"], record["valid_mask"],
                              self.output_size, sigma=self.sigma, center_sigma=self.center_sigma,
                              background_weight=self.background_weight, radius=self.radius)
    return {**record, **targets}


def inference_size(height: int, width: int, input_size: int) -> tuple[tuple[int, int], np.ndarray,
                                                                      np.ndarray]:
  """Network input size for a whole image, DEKR `get_multi_scale_size(image, input_size, 1, 1)`.

  The short side becomes `input_size` rounded up to a multiple of 64, the long side keeps
  the aspect ratio, also rounded up to a multiple of 64.

  Returns:
    (w, h) of the network input, center_xy [2] (integer pixels, DEKR's int(w / 2 + 0.5)) and
    scale_wh [2] (the source region in pixels; its width fixes the warp, as in
    `geometry.get_affine_transform`).
  """
  center = np.array([int(width / 2.0 + 0.5), int(height / 2.0 + 0.5)], np.float64)
  short = int((input_size + 63) // 64 * 64)
  if width < height:
    size_wh = (short, int((short / width * height + 63) // 64 * 64))
    scale_wh = np.array([width, size_wh[1] / size_wh[0] * width], np.float64)
  else:
    size_wh = (int((short / height * width + 63) // 64 * 64), short)
    scale_wh = np.array([size_wh[0] / size_wh[1] * height, height], np.float64)
  return size_wh, center, scale_wh


@dataclasses.dataclass(frozen=True)
class ResizeKeepAspect(grain.transforms.Map):
  """Reads `image`; writes the resized `image` (see `inference_size`; cv2 bilinear), and
  `center_xy`, `scale_wh`, which `bottomup_decode.to_image_coordinates` inverts."""
  input_size: int = 512

  def map(self, record: dict) -> dict:
    height, width = record["image"].shape[:2]
    size_wh, center, scale_wh = inference_size(height, width, self.input_size)
    matrix = geometry.get_affine_transform(center, scale_wh, 0.0, size_wh)
    return {**record, "image": geometry.warp_image(record["image"], matrix, size_wh),
            "center_xy": center, "scale_wh": scale_wh}
