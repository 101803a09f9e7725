"""MSRA Gaussian heatmap codec: keypoints <-> one Gaussian heatmap per keypoint.

The SimpleBaseline/HRNet target (Xiao et al., "Simple Baselines for Human Pose
Estimation and Tracking", arXiv:1804.06208; Sun et al., arXiv:1902.09212), following
the official code leoxiaobin/deep-high-resolution-net.pytorch: `encode` equals
`JointsDataset.generate_target` (gaussian), `decode_argmax` + `refine_quarter_offset` +
`heatmap_to_image_xy` equal `lib/core/inference.py: get_final_preds`, and
`flip_heatmaps_back` equals `lib/utils/transforms.py: flip_back` plus the flip-test shift
of `lib/core/function.py: validate`. The same functions serve the data pipeline (encode)
and the evaluator (decode), so targets and inference cannot drift (mmpose
`mmpose/codecs/msra_heatmap.py` pattern). Beside the quarter-pixel refinement,
`refine_dark` is DARK's (DarkPose `get_final_preds`), and `heatmaps_to_base_crop` brings a
multi-scale test's heatmaps into one crop's frame.

Symbols: B batch, K keypoints, H x W heatmap size, `input_wh` = (w, h) of the network
input, `heatmap_wh` = (W, H). Heatmaps are channels last, [B, H, W, K] ([H, W, K] for one
person). Points are (x, y).

Coordinate convention (HRNet's, kept for parity): heatmap pixel [y, x] sits at the
integer point (x, y), and an input-image point maps to the heatmap by dividing by the
stride `input_wh / heatmap_wh` with no half-pixel correction. This is the biased
convention that UDP (Huang et al., arXiv:1911.07524) corrects; the quarter-pixel shift
and the flip-test shift below partly compensate for it.
"""

from collections.abc import Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose import geometry

# The sub-pixel refinements after the argmax (config `eval.decode`): HRNet's quarter-pixel
# shift (`refine_quarter_offset`) and DARK's Taylor step (`refine_dark`).
DECODERS = ("quarter", "dark")


def encode(
    keypoints_xy: np.ndarray,
    visibility: np.ndarray,
    input_wh: Sequence[int],
    heatmap_wh: Sequence[int],
    sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
  """Renders one unnormalised Gaussian (peak 1) per keypoint.

  Equal to HRNet `JointsDataset.generate_target` (target_type 'gaussian'), transposed
  to channels last. For each keypoint: mu = int(xy / stride + 0.5) (Python int, i.e.
  truncation toward zero, so points slightly left of / above the image round to 0),
  the Gaussian is drawn in the window [mu - 3 sigma, mu + 3 sigma] (6 sigma + 1 pixels)
  clipped to the heatmap.

  Args:
    keypoints_xy: [K, 2] in input-image pixels (the cropped network input).
    visibility: [K]; > 0 means labelled (COCO v = 1 or 2).
    input_wh: (w, h) of the network input.
    heatmap_wh: (W, H) of the heatmap.
    sigma: Gaussian standard deviation in heatmap pixels (HRNet: 2 for 64x48).

  Returns:
    heatmaps [H, W, K] float32 and target_weight [K] float32, 1 for a labelled
    keypoint whose window touches the heatmap, else 0 (its heatmap is then all zero).
    HRNet quirk kept: a window ending exactly at the left/top edge (exclusive end
    mu + 3 sigma + 1 == 0) still counts as touching, so its weight stays 1 with an
    empty heatmap.
  """
  keypoints_xy = np.asarray(keypoints_xy, np.float64)
  visibility = np.asarray(visibility)
  heatmap_w, heatmap_h = int(heatmap_wh[0]), int(heatmap_wh[1])
  stride = np.asarray(input_wh, np.float64) / np.asarray(heatmap_wh, np.float64)
  radius = 3 * sigma

  mu = np.trunc(keypoints_xy / stride + 0.5)  # [K, 2]
  window_start = np.trunc(mu - radius).astype(np.int64)  # inclusive
  window_end = np.trunc(mu + radius + 1).astype(np.int64)  # exclusive
  touches_heatmap = ((window_start[:, 0] < heatmap_w) & (window_start[:, 1] < heatmap_h)
                     & (window_end[:, 0] >= 0) & (window_end[:, 1] >= 0))
  target_weight = ((visibility > 0) & touches_heatmap).astype(np.float32)

  # HRNet cuts a (6 sigma + 1)-wide Gaussian patch whose peak sits at index
  # floor((6 sigma + 1) / 2) and pastes it at window_start; with a non-integer sigma
  # that peak can be off mu by a pixel, so the peak is taken from the patch, not mu.
  peak = window_start + np.floor((2 * radius + 1) / 2).astype(np.int64)  # [K, 2]
  # Every keypoint's Gaussian is one patch moved by whole pixels: computed once (float32 in
  # HRNet's order, so values agree to the last bit), indexed by offset from the peak in
  # [-reach, reach], and only the window is written (4x faster than the full-map version).
  reach = int(np.ceil(radius)) + 1
  offset2 = np.square(np.arange(-reach, reach + 1)).astype(np.float32)
  patch = np.exp(-(offset2[:, None] + offset2[None, :]) / np.float32(2 * sigma**2))
  heatmaps = np.zeros((heatmap_h, heatmap_w, len(keypoints_xy)), np.float32)
  for k in np.flatnonzero(target_weight > 0.5):
    x0, y0 = max(window_start[k, 0], 0), max(window_start[k, 1], 0)
    x1, y1 = min(window_end[k, 0], heatmap_w), min(window_end[k, 1], heatmap_h)
    px, py = peak[k] - reach
    heatmaps[y0:y1, x0:x1, k] = patch[y0 - py:y1 - py, x0 - px:x1 - px]
  return heatmaps, target_weight


def decode_argmax(heatmaps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Integer location and value of each heatmap's maximum (HRNet `get_max_preds`).

  Args:
    heatmaps: [B, H, W, K].

  Returns:
    xy [B, K, 2] float32 in heatmap pixels (first maximum in row-major order, as
    np.argmax), and maxval [B, K]. Where maxval <= 0 the location is set to (0, 0).
  """
  batch, height, width, num_keypoints = heatmaps.shape
  flat = jnp.transpose(heatmaps, (0, 3, 1, 2)).reshape(batch, num_keypoints, height * width)
  index = jnp.argmax(flat, axis=-1)
  maxval = jnp.max(flat, axis=-1)
  xy = jnp.stack([index % width, index // width], axis=-1).astype(jnp.float32)
  return xy * (maxval > 0)[..., None], maxval


def refine_quarter_offset(heatmaps: jnp.ndarray, xy: jnp.ndarray) -> jnp.ndarray:
  """Moves each location a quarter pixel toward its higher neighbour (HRNet post-process).

  For px = floor(x + 0.5), py = floor(y + 0.5) with 1 < px < W - 1 and 1 < py < H - 1
  (HRNet's strict bounds: column/row 1 is never refined either), adds
  0.25 * sign(hm[py, px+1] - hm[py, px-1]) to x and 0.25 * sign(hm[py+1, px] - hm[py-1, px])
  to y. Other locations are returned unchanged.

  Args:
    heatmaps: [B, H, W, K].
    xy: [B, K, 2] heatmap locations, e.g. from `decode_argmax`.

  Returns:
    [B, K, 2] float32.
  """
  batch, height, width, num_keypoints = heatmaps.shape
  rounded = jnp.floor(xy + 0.5).astype(jnp.int32)
  px, py = rounded[..., 0], rounded[..., 1]
  refinable = (px > 1) & (px < width - 1) & (py > 1) & (py < height - 1)
  # Clipped indices keep the gathers in range; `refinable` discards their result.
  px = jnp.clip(px, 1, width - 2)
  py = jnp.clip(py, 1, height - 2)
  b = jnp.arange(batch)[:, None]
  k = jnp.arange(num_keypoints)[None, :]
  diff_x = heatmaps[b, py, px + 1, k] - heatmaps[b, py, px - 1, k]
  diff_y = heatmaps[b, py + 1, px, k] - heatmaps[b, py - 1, px, k]
  offset = 0.25 * jnp.sign(jnp.stack([diff_x, diff_y], axis=-1))
  return (xy + jnp.where(refinable[..., None], offset, 0.0)).astype(jnp.float32)


def flip_heatmaps_back(
    heatmaps: jnp.ndarray, flip_index: Sequence[int] | np.ndarray, shift: bool = True
) -> jnp.ndarray:
  """Maps heatmaps predicted on a horizontally flipped input back to the original.

  Mirrors the width axis and permutes channels (output k = input flip_index[k]), as HRNet
  `flip_back`. With `shift`, then moves every column one pixel right, keeping column 0
  (HRNet `validate` with TEST.SHIFT_HEATMAP, on by default). Why: a keypoint at heatmap
  x sits at x' = W - 1/stride - x in the flipped input's heatmap (image x -> w - 1 - x),
  and mirroring x' back lands at x - (1 - 1/stride), 0.75 px too far left for stride 4;
  the whole-pixel shift leaves it 0.25 px right instead.

  Args:
    heatmaps: [B, H, W, K] predicted on flipped inputs.
    flip_index: [K] permutation, e.g. `keypoints.COCO.flip_index`.
    shift: apply HRNet's one-pixel shift.

  Returns:
    [B, H, W, K].
  """
  flipped = heatmaps[:, :, ::-1, :][..., jnp.asarray(flip_index)]
  if shift:
    flipped = jnp.concatenate([flipped[:, :, :1], flipped[:, :, :-1]], axis=2)
  return flipped


def heatmap_to_image_xy(
    xy_heatmap: np.ndarray,
    center_xy: np.ndarray,
    scale_wh: np.ndarray,
    heatmap_wh: Sequence[int],
) -> np.ndarray:
  """Maps heatmap locations back to original-image pixels (HRNet `transform_preds`).

  Uses the inverse of the rotation-free crop of `geometry.get_affine_transform` with the
  heatmap as output, so the input-to-heatmap stride is folded in.

  Args:
    xy_heatmap: [N, K, 2] in heatmap pixels.
    center_xy: [N, 2] crop centres in image pixels.
    scale_wh: [N, 2] crop sizes in image pixels (HRNet scale * 200).
    heatmap_wh: (W, H).

  Returns:
    [N, K, 2] float64 in image pixels.
  """
  xy_heatmap = np.asarray(xy_heatmap, np.float64)
  matrices = np.stack([
      geometry.get_affine_transform(center, scale, 0.0, heatmap_wh, inverse=True)
      for center, scale in zip(np.asarray(center_xy), np.asarray(scale_wh))
  ])  # [N, 2, 3]
  return np.einsum("nkj,nij->nki", xy_heatmap, matrices[:, :, :2]) + matrices[:, None, :, 2]


def decode(
    heatmaps: jnp.ndarray,
    center_xy: np.ndarray,
    scale_wh: np.ndarray,
    refine: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
  """Heatmaps to image keypoints and scores (HRNet `get_final_preds`).

  Args:
    heatmaps: [B, H, W, K] (already averaged with the flipped pass, if any).
    center_xy, scale_wh: [B, 2] crop centres and sizes in image pixels.
    refine: apply the quarter-pixel shift (HRNet TEST.POST_PROCESS, on by default).

  Returns:
    keypoints_xy [B, K, 2] float64 in image pixels, scores [B, K] float32 (heatmap maxima).
  """
  xy, maxval = decode_argmax(heatmaps)
  if refine:
    xy = refine_quarter_offset(heatmaps, xy)
  heatmap_wh = (heatmaps.shape[2], heatmaps.shape[1])
  return heatmap_to_image_xy(np.asarray(xy), center_xy, scale_wh, heatmap_wh), np.asarray(maxval)


# ----------------------------------------------------------------------------- DARK decoding


def dark_blur_kernel_size(sigma: float) -> int:
  """The odd kernel size whose OpenCV default sigma, 0.3 ((k - 1) / 2 - 1) + 0.8, is closest to
  the training `sigma`: 11 for sigma 2 and 17 for sigma 3 (DarkPose's and mmpose's values)."""
  half_width = max(round((sigma - 0.8) / 0.3 + 1), 0)
  return 2 * half_width + 1


def _blur_matrix(length: int, kernel_size: int) -> np.ndarray:
  """[length, length] matrix m with (m @ v) = v correlated with OpenCV's default Gaussian
  kernel of `kernel_size`, zero outside (DarkPose pads by the kernel radius before blurring)."""
  kernel = cv2.getGaussianKernel(kernel_size, 0, cv2.CV_64F)[:, 0]  # sigma 0: size decides
  radius = (kernel_size - 1) // 2
  offset = np.arange(length)[None, :] - np.arange(length)[:, None]  # input - output
  inside = np.abs(offset) <= radius
  return np.where(inside, kernel[np.clip(offset + radius, 0, kernel_size - 1)], 0.0)


def modulate_heatmaps(heatmaps: jnp.ndarray, blur_kernel_size: int) -> jnp.ndarray:
  """DARK's distribution modulation: log of the Gaussian-blurred heatmaps.

  Blurs each heatmap with OpenCV's `GaussianBlur(ksize, sigma=0)` kernel, zero-padded,
  rescales it to its original maximum, clamps at 1e-10 and takes the log (Zhang et al.,
  "Distribution-Aware Coordinate Representation for Human Pose Estimation",
  arXiv:1910.06278v1, Sec. 3.1 Eq. 9-10; DarkPose `gaussian_blur` + `get_final_preds`).

  Args:
    heatmaps: [B, H, W, K].
    blur_kernel_size: odd, e.g. `dark_blur_kernel_size(training sigma)`.

  Returns:
    [B, H, W, K] float32.
  """
  if blur_kernel_size % 2 != 1:
    raise ValueError(f"DARK blur kernel size must be odd, got {blur_kernel_size}")
  heatmaps = jnp.asarray(heatmaps, jnp.float32)
  _, height, width, _ = heatmaps.shape
  blur_y = jnp.asarray(_blur_matrix(height, blur_kernel_size), jnp.float32)
  blur_x = jnp.asarray(_blur_matrix(width, blur_kernel_size), jnp.float32)
  highest = jax.lax.Precision.HIGHEST  # TPUs would otherwise multiply in bfloat16
  blurred = jnp.einsum("bhwk,wv->bhvk", heatmaps, blur_x, precision=highest)
  blurred = jnp.einsum("bhwk,hu->buwk", blurred, blur_y, precision=highest)
  original_max = jnp.max(heatmaps, axis=(1, 2), keepdims=True)
  blurred = blurred * (original_max / jnp.max(blurred, axis=(1, 2), keepdims=True))
  return jnp.log(jnp.maximum(blurred, 1e-10))


def refine_dark(heatmaps: jnp.ndarray, xy: jnp.ndarray, blur_kernel_size: int) -> jnp.ndarray:
  """DARK sub-pixel refinement: one Newton step on the log of the modulated heatmap.

  At p = (int(x), int(y)) with 1 < px < W - 2 and 1 < py < H - 2 (DarkPose's bounds), with
  L = `modulate_heatmaps(heatmaps)`, moves the location by -Hessian^-1 gradient (Eq. 7 of
  arXiv:1910.06278v1), both by central differences: the gradient with a 1-pixel step, the
  Hessian's diagonal with a 2-pixel step, as DarkPose `taylor`. A singular Hessian, or a
  location outside the bounds, leaves the location unchanged.

  Args:
    heatmaps: [B, H, W, K] (after any flip / multi-scale averaging).
    xy: [B, K, 2] heatmap locations from `decode_argmax`.
    blur_kernel_size: odd size of the modulation kernel.

  Returns:
    [B, K, 2] float32.
  """
  batch, height, width, num_keypoints = heatmaps.shape
  log_heatmaps = modulate_heatmaps(heatmaps, blur_kernel_size)
  point = jnp.trunc(xy).astype(jnp.int32)
  px, py = point[..., 0], point[..., 1]
  refinable = (px > 1) & (px < width - 2) & (py > 1) & (py < height - 2)
  px = jnp.clip(px, 2, width - 3)  # in range for the +-2 reads; `refinable` masks the rest
  py = jnp.clip(py, 2, height - 3)
  b = jnp.arange(batch)[:, None]
  k = jnp.arange(num_keypoints)[None, :]

  def at(dx: int, dy: int) -> jnp.ndarray:
    return log_heatmaps[b, py + dy, px + dx, k]

  grad_x = 0.5 * (at(1, 0) - at(-1, 0))
  grad_y = 0.5 * (at(0, 1) - at(0, -1))
  hess_xx = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
  hess_xy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
  hess_yy = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
  determinant = hess_xx * hess_yy - hess_xy**2
  solvable = refinable & (determinant != 0)
  determinant = jnp.where(solvable, determinant, 1.0)
  # -H^-1 g with the closed-form inverse of the symmetric 2x2 Hessian.
  offset_x = -(hess_yy * grad_x - hess_xy * grad_y) / determinant
  offset_y = -(hess_xx * grad_y - hess_xy * grad_x) / determinant
  offset = jnp.stack([offset_x, offset_y], axis=-1)
  return (xy + jnp.where(solvable[..., None], offset, 0.0)).astype(jnp.float32)


# ----------------------------------------------------------------------------- multi-scale


def _resample_matrix(length: int, scale_factor: float) -> np.ndarray:
  """[length, length] bilinear weights m[out, in]: output pixel i samples the input at
  length / 2 + (i - length / 2) / scale_factor; input pixels beyond the edge count as 0."""
  position = length / 2 + (np.arange(length) - length / 2) / scale_factor
  left = np.floor(position)
  fraction = position - left
  weights = np.zeros((length, length))
  for corner, weight in ((left, 1 - fraction), (left + 1, fraction)):
    inside = (corner >= 0) & (corner < length)
    weights[np.flatnonzero(inside), corner[inside].astype(np.int64)] += weight[inside]
  return weights


def heatmaps_to_base_crop(heatmaps: jnp.ndarray, scale_factor: float) -> jnp.ndarray:
  """Resamples heatmaps of a crop `scale_factor` times the base crop (same centre) onto the
  base crop's heatmap grid, for multi-scale testing.

  Under the crop affine of `geometry.get_affine_transform` (crop centre at heatmap point
  (W/2, H/2), no rotation), base heatmap point (x, y) is point
  (W/2 + (x - W/2) / s, H/2 + (y - H/2) / s) of the scale-s heatmap, read bilinearly with
  zeros outside (cv2.warpAffine's INTER_LINEAR with a constant 0 border). s = 1 returns
  `heatmaps` unchanged.

  Args:
    heatmaps: [B, H, W, K] predicted on the crop of size scale_wh * scale_factor.
    scale_factor: s > 0.

  Returns:
    [B, H, W, K] float32 in the base crop's heatmap frame.
  """
  heatmaps = jnp.asarray(heatmaps, jnp.float32)
  if scale_factor == 1.0:
    return heatmaps
  _, height, width, _ = heatmaps.shape
  rows = jnp.asarray(_resample_matrix(height, scale_factor), jnp.float32)
  columns = jnp.asarray(_resample_matrix(width, scale_factor), jnp.float32)
  highest = jax.lax.Precision.HIGHEST
  resampled = jnp.einsum("bhwk,vw->bhvk", heatmaps, columns, precision=highest)
  return jnp.einsum("bhwk,uh->buwk", resampled, rows, precision=highest)
