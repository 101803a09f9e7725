"""Top-down crop geometry: person box -> (center, scale) -> affine crop and back.

Conventions (all of jaxpose):
  * points are (x, y) in pixels, x to the right, y down; images are [H, W, C];
  * `output_wh`, `scale_wh` are (width, height);
  * `scale_wh` is the size in source pixels of the region to crop. HRNet
    (leoxiaobin/deep-high-resolution-net.pytorch, `lib/utils/transforms.py`) stores
    scale in units of `pixel_std` = 200 px instead: HRNet's `scale * 200` equals our
    `scale_wh`.

The crop follows HRNet's `get_affine_transform` exactly: three point pairs (the box
centre, a point half a box width "above" it, rotated, and a third point at a right
angle) are handed to `cv2.getAffineTransform`. Like HRNet, only the crop *width*
`scale_wh[0]` enters the matrix; the crop height is `scale_wh[0] * output_h / output_w`,
so `box_to_center_scale` must already have widened the box to the output aspect ratio.
"""

from collections.abc import Sequence

import cv2
import numpy as np


def box_to_center_scale(
    box_xywh: Sequence[float], aspect_ratio_wh: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
  """Centre and padded size of a person box, grown to a width/height ratio.

  As HRNet `COCODataset._xywh2cs`, but `scale_wh` is in pixels (HRNet's scale * 200).

  Args:
    box_xywh: (x, y, w, h), top-left corner and size in pixels (COCO `bbox`).
    aspect_ratio_wh: width / height of the network input, e.g. 192 / 256.
    padding: factor applied to both sides after matching the aspect ratio.

  Returns:
    center_xy [2] float64 (box centre) and scale_wh [2] float64 (crop width, height).
  """
  x, y, w, h = (float(v) for v in box_xywh[:4])
  center_xy = np.array([x + 0.5 * w, y + 0.5 * h], np.float64)
  # Grow the short side (never shrink) so the crop has the input's aspect ratio.
  if w > aspect_ratio_wh * h:
    h = w / aspect_ratio_wh
  elif w < aspect_ratio_wh * h:
    w = h * aspect_ratio_wh
  scale_wh = np.array([w, h], np.float64) * padding
  return center_xy, scale_wh


def _rotate(vector_xy: np.ndarray, rotation_rad: float) -> np.ndarray:
  sin, cos = np.sin(rotation_rad), np.cos(rotation_rad)
  return np.array([vector_xy[0] * cos - vector_xy[1] * sin,
                   vector_xy[0] * sin + vector_xy[1] * cos])


def _right_angle_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """b plus (a - b) turned by 90 degrees: a third point fixing the affine (HRNet `get_3rd_point`)."""
  direction = a - b
  return b + np.array([-direction[1], direction[0]], np.float32)


def get_affine_transform(
    center_xy: Sequence[float],
    scale_wh: Sequence[float],
    rotation_deg: float,
    output_wh: Sequence[int],
    shift: Sequence[float] = (0.0, 0.0),
    inverse: bool = False,
) -> np.ndarray:
  """The [2, 3] matrix mapping the rotated crop region onto an output_wh image.

  Equal to HRNet `get_affine_transform(center, scale_wh / 200, rotation_deg, output_wh,
  shift, inv=inverse)`. `center_xy` maps to the output centre (output_w/2, output_h/2)
  and the point `scale_wh[0] / 2` above the centre, rotated by `rotation_deg` (positive
  = clockwise on screen, since y points down), maps to the output's top-centre (w/2, 0);
  so the content appears turned counter-clockwise in the output.
  `shift` moves the source region by a fraction of its size (x by shift[0] * scale_w,
  y by shift[1] * scale_h).

  Returns:
    [2, 3] float64; `inverse=True` gives the output -> source mapping.
  """
  center_xy = np.asarray(center_xy, np.float32)
  scale_wh = np.asarray(scale_wh, np.float32)
  shift = np.asarray(shift, np.float32)
  source_w = scale_wh[0]
  output_w, output_h = float(output_wh[0]), float(output_wh[1])

  up_source = _rotate(np.array([0.0, -0.5 * source_w]), np.pi * rotation_deg / 180)
  up_output = np.array([0.0, -0.5 * output_w], np.float32)

  # float32 point triples, as HRNet builds them, so the matrices agree to the last bits.
  source = np.zeros((3, 2), np.float32)
  output = np.zeros((3, 2), np.float32)
  source[0] = center_xy + scale_wh * shift
  source[1] = center_xy + up_source + scale_wh * shift
  output[0] = [0.5 * output_w, 0.5 * output_h]
  output[1] = np.array([0.5 * output_w, 0.5 * output_h]) + up_output
  source[2] = _right_angle_point(source[0], source[1])
  output[2] = _right_angle_point(output[0], output[1])

  if inverse:
    return cv2.getAffineTransform(output, source)
  return cv2.getAffineTransform(source, output)


def affine_transform_points(points_xy: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """Applies a [2, 3] affine matrix to points [..., 2] (x, y); returns [..., 2] float64."""
  points_xy = np.asarray(points_xy, np.float64)
  matrix = np.asarray(matrix, np.float64)
  return points_xy @ matrix[:, :2].T + matrix[:, 2]


def warp_image(image: np.ndarray, matrix: np.ndarray, output_wh: Sequence[int]) -> np.ndarray:
  """Crops/rotates an [H, W, C] image with a [2, 3] matrix into [output_h, output_w, C].

  Bilinear, border filled with 0, as HRNet's `cv2.warpAffine(..., flags=cv2.INTER_LINEAR)`.
  """
  return cv2.warpAffine(
      image, np.asarray(matrix, np.float64), (int(output_wh[0]), int(output_wh[1])),
      flags=cv2.INTER_LINEAR)
