"""Integral-regression predictions -> original image pixels -> Human3.6M camera space (mm).

The host-side half of integral decoding (SAN, Applied Sciences 11(4):1826, 2021, Sec. 3.4,
which builds on Sun et al., "Integral Human Pose Regression", ECCV 2018, arXiv:1711.08229).
`integral.soft_argmax_3d` gives normalised (x, y, z) per joint inside the crop; this module
follows the official JimmySuen/integral-human-pose @ad3f875 test path from there:

  1. `normalised_to_crop_px`: crop (network-input) pixels, `loss/integral.py:
     get_joint_location_result` (x, y as `integral.decode`; z * w, root-relative, in the
     crop's pixel units). The official flip test averages here, in crop pixels.
  2. `crop_to_image`: x, y through the inverse crop affine, `common/utility/
     image_processing_cv.py: trans_coords_from_patch_to_org`;
  3. `depth_to_mm`: z * rect_3d_width / w, `trans_coords_from_patch_to_org_3d` (the crop's
     width spans a 2000 mm cube of depth around the root: `config_pytorch.py` rect_3d_width);
  4. `image_to_camera`: pinhole back-projection with the frame's intrinsics at the absolute
     depth, `dataset/hm36.py: CamBackProj` (= RLE's `pixel2cam`);
  5. `decode_to_camera` chains 2-4 as `hm36.evaluate` does: the predicted root-relative depth
     plus the ground-truth root depth (the protocol gives the root depth; the network only
     predicts relative depth), back-projection, then the predicted root subtracted.

Everything here is numpy float64, as the official evaluation: at a 5 m depth a float32
carries 0.5 mm steps, larger than the agreement the parity tests ask for.

Crop convention: `scale_wh` = (width, height) in image pixels of the region that fills the
`input_wh` crop. The official patch affine maps the box's width AND height separately
(`gen_trans_from_patch_cv`), so a box of another aspect ratio than the input is stretched;
jaxpose's top-down crop (`geometry.get_affine_transform`, HRNet's) uses the width alone. For
a box already widened to the input's aspect ratio (`geometry.box_to_center_scale`) the two
are the same map, rotation included.

RLE (Jeff-sjtu/res-loglikelihood-regression @203dc31, `rlepose/datasets/h36m.py: evaluate`)
differs only in where it stops: its decoder already returns image pixels through HRNet's
width-only affine and a depth normalised by `bbox_3d_shape[0]` = 2000 mm (z_mm = z * 2000,
= `depth_to_mm` of z * w), then the same root-depth sum, `pixel2cam` and root subtraction.
"""

from collections.abc import Sequence

import cv2
import numpy as np

# Official `rect_3d_width`: the depth in mm that the crop's width stands for.
RECT_3D_WIDTH_MM = 2000.0


def normalised_to_crop_px(coords: np.ndarray, input_wh: Sequence[int]) -> np.ndarray:
  """Normalised [B, K, 2 | 3] (`integral.soft_argmax_3d`) -> crop pixels, float64.

  (x + 0.5) * w, (y + 0.5) * h, z * w: `integral.decode` on the host in float64, as the
  official `get_joint_location_result` casts to float64 before scaling.
  """
  coords = np.asarray(coords, np.float64)
  width, height = input_wh
  scale = np.array([width, height, width][:coords.shape[-1]], np.float64)
  offset = np.array([0.5, 0.5, 0.0][:coords.shape[-1]])
  return (coords + offset) * scale


def _rotated(vector: np.ndarray, rotation_rad: float) -> np.ndarray:
  """A float32 2-vector turned by `rotation_rad`, computed in float64 and stored as float32
  (official `rotate_2d`), so the affine's point triples agree bit for bit."""
  x, y = np.asarray(vector, np.float32).astype(np.float64)
  sin, cos = np.sin(rotation_rad), np.cos(rotation_rad)
  return np.array([x * cos - y * sin, x * sin + y * cos], np.float32)


def crop_to_image_matrix(center_xy: Sequence[float], scale_wh: Sequence[float],
                         input_wh: Sequence[int], rotation_deg: float = 0.0) -> np.ndarray:
  """The [2, 3] float64 affine from crop pixels to image pixels.

  Official `gen_trans_from_patch_cv(..., scale=1, rot, inv=True)`: the box centre, the centre
  plus half the box height "down" and plus half the box width "right" (both turned by
  `rotation_deg`) correspond to the crop's centre, bottom-centre and right-centre.
  """
  rotation_rad = np.pi * rotation_deg / 180
  box_w, box_h = (float(v) for v in scale_wh)
  input_w, input_h = (float(v) for v in input_wh)
  image = np.zeros((3, 2), np.float32)
  image[0] = np.asarray(center_xy, np.float64)
  image[1] = image[0] + _rotated(np.array([0.0, box_h * 0.5], np.float32), rotation_rad)
  image[2] = image[0] + _rotated(np.array([box_w * 0.5, 0.0], np.float32), rotation_rad)
  crop = np.zeros((3, 2), np.float32)
  crop[0] = [input_w * 0.5, input_h * 0.5]
  crop[1] = crop[0] + np.array([0.0, input_h * 0.5], np.float32)
  crop[2] = crop[0] + np.array([input_w * 0.5, 0.0], np.float32)
  return cv2.getAffineTransform(crop, image)


def _per_sample(values, batch: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
  array = np.asarray(values, np.float64)
  if array.shape == shape:
    array = np.broadcast_to(array, (batch,) + shape)
  if array.shape != (batch,) + shape:
    raise ValueError(f"{name} has shape {list(array.shape)}; expected {list(shape)} or "
                     f"[{batch}, {', '.join(map(str, shape))}] for a batch of {batch}")
  return array


def crop_to_image(coords_crop_px: np.ndarray, center_xy: np.ndarray, scale_wh: np.ndarray,
                  input_wh: Sequence[int], rotation_deg: float | np.ndarray = 0.0) -> np.ndarray:
  """Crop-pixel coordinates -> original-image pixels; depth (a third column) unchanged.

  Official `trans_coords_from_patch_to_org` (rotation 0, as its test path) for x, y.

  Args:
    coords_crop_px: [B, K, 2 | 3] (x, y[, z]) in crop pixels.
    center_xy, scale_wh: [B, 2] (or [2] for all) crop centre and box size in image pixels.
    input_wh: (w, h) of the crop.
    rotation_deg: scalar or [B]; the crop's rotation, as given to the forward crop.

  Returns:
    [B, K, 2 | 3] float64.
  """
  coords = np.asarray(coords_crop_px, np.float64)
  if coords.ndim != 3 or coords.shape[-1] not in (2, 3):
    raise ValueError(f"coords_crop_px has shape {list(coords.shape)}; expected [B, K, 2 | 3]")
  batch = coords.shape[0]
  centers = _per_sample(center_xy, batch, "center_xy", (2,))
  scales = _per_sample(scale_wh, batch, "scale_wh", (2,))
  rotations = _per_sample(rotation_deg, batch, "rotation_deg", ())
  matrices = np.stack([crop_to_image_matrix(c, s, input_wh, r)
                       for c, s, r in zip(centers, scales, rotations)])  # [B, 2, 3]
  image = coords.copy()
  image[..., :2] = (np.einsum("bkj,bij->bki", coords[..., :2], matrices[:, :, :2])
                    + matrices[:, None, :, 2])
  return image


def depth_to_mm(z_crop_px: np.ndarray, input_w: int,
                rect_3d_width_mm: float = RECT_3D_WIDTH_MM) -> np.ndarray:
  """Root-relative depth in crop pixels -> mm: z / input_w * rect_3d_width_mm
  (official `trans_coords_from_patch_to_org_3d`; the target was z_mm / 2000 * w)."""
  return np.asarray(z_crop_px, np.float64) / input_w * rect_3d_width_mm


def image_to_camera(xy_image: np.ndarray, z_mm: np.ndarray, focal_xy: np.ndarray,
                    principal_xy: np.ndarray) -> np.ndarray:
  """Pinhole back-projection: X = (u - c_x) / f_x * Z, Y = (v - c_y) / f_y * Z.

  Official `CamBackProj` (integral-human-pose) = `pixel2cam` (RLE).

  Args:
    xy_image: [B, K, 2] image pixels.
    z_mm: [B, K] absolute depth (camera Z) in mm.
    focal_xy, principal_xy: [B, 2] (or [2] for all) intrinsics in pixels.

  Returns:
    [B, K, 3] float64 camera-space (X, Y, Z) in mm.
  """
  xy_image = np.asarray(xy_image, np.float64)
  z_mm = np.asarray(z_mm, np.float64)
  if xy_image.ndim != 3 or xy_image.shape[-1] != 2 or z_mm.shape != xy_image.shape[:2]:
    raise ValueError(f"xy_image {list(xy_image.shape)} and z_mm {list(z_mm.shape)}; "
                     "expected [B, K, 2] and [B, K]")
  batch = xy_image.shape[0]
  focal = _per_sample(focal_xy, batch, "focal_xy", (2,))[:, None, :]
  principal = _per_sample(principal_xy, batch, "principal_xy", (2,))[:, None, :]
  xy_camera = (xy_image - principal) / focal * z_mm[..., None]
  return np.concatenate([xy_camera, z_mm[..., None]], axis=-1)


def decode_to_camera(coords_crop_px: np.ndarray, center_xy: np.ndarray, scale_wh: np.ndarray,
                     input_wh: Sequence[int], focal_xy: np.ndarray, principal_xy: np.ndarray,
                     root_depth_mm: np.ndarray, root_index: int = 0,
                     rect_3d_width_mm: float = RECT_3D_WIDTH_MM) -> np.ndarray:
  """Crop-pixel (x, y, z) predictions -> root-relative camera-space joints in mm.

  The official Human3.6M evaluation (`net_modules.py: evalNet` then `hm36.py: evaluate`):
  x, y to the image (`crop_to_image`), z to mm (`depth_to_mm`) plus the ground-truth root
  depth, back-projected with the frame's intrinsics (`image_to_camera`), and the predicted
  root subtracted. The result and root-relative ground truth feed `h36m_eval` directly.

  Args:
    coords_crop_px: [B, K, 3] crop pixels (after any flip averaging), z root-relative.
    center_xy, scale_wh: [B, 2] the crop's centre and box size in image pixels.
    input_wh: (w, h) of the crop.
    focal_xy, principal_xy: [B, 2] intrinsics (Human3.6M records `focal_xy`, `principal_xy`).
    root_depth_mm: [B] ground-truth camera Z of the root (`joints_cam_mm[root_index, 2]`).
    root_index: the root joint (pelvis, 0 in the Human3.6M layout).
    rect_3d_width_mm: depth in mm spanned by the crop's width (official 2000).

  Returns:
    [B, K, 3] float64, the root joint at the origin.
  """
  coords = np.asarray(coords_crop_px, np.float64)
  if coords.ndim != 3 or coords.shape[-1] != 3:
    raise ValueError(f"coords_crop_px has shape {list(coords.shape)}; expected [B, K, 3]")
  root_depth = _per_sample(root_depth_mm, coords.shape[0], "root_depth_mm", ())
  image = crop_to_image(coords, center_xy, scale_wh, input_wh)
  z_mm = depth_to_mm(image[..., 2], input_wh[0], rect_3d_width_mm) + root_depth[:, None]
  camera = image_to_camera(image[..., :2], z_mm, focal_xy, principal_xy)
  return camera - camera[:, root_index:root_index + 1]
