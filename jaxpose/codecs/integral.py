"""Integral (soft-argmax) regression: heatmap logits -> expected joint coordinates.

Sun, Xiao, Liang, Wei, "Integral Human Pose Regression", ECCV 2018 (arXiv:1711.08229),
as adopted by SAN (Self-Attention Network, Applied Sciences 11(4):1826, 2021) Sec. 3.4,
eq. 5 (marginalise the 3D heatmap onto one axis) and eq. 6 (the coordinate is that
marginal's expectation). Follows the official JimmySuen/integral-human-pose @ad3f875
`pytorch_projects/common_pytorch/common_loss/integral.py` (`softmax_integral_tensor`,
`generate_3d_integral_preds_tensor`) and `common_pytorch/loss/integral.py`
(`generate_joint_location_label` = `encode`, `get_joint_location_result` = `decode`):

  1. one softmax per joint over the WHOLE volume (H x W x D voxels; H x W for 2D),
  2. marginal on each axis (eq. 5), expectation of the voxel index (eq. 6),
  3. normalised coordinates: x / W - 0.5, y / H - 0.5, z / D - 0.5 (W, H, D = heatmap size).

Symbols: B batch, K joints, H x W heatmap, D depth bins, `input_wh` = (w, h) of the network
input. Logits are channels last: 2D [B, H, W, K]; 3D [B, H, W, K * D] with channel k * D + d
(joint major, depth minor: the official [B, K * D, H, W] channel order, transposed).
Coordinates are (x, y) or (x, y, z), shape [B, K, 2 | 3].

Coordinate convention (official, = the HRNet heatmap codec's): heatmap pixel index i sits
at input pixel i * stride with no half-pixel term, so normalised x maps to input pixels as
(x + 0.5) * w. Depth: a target z (root-relative, already in input-pixel units, i.e. scaled
like x) is normalised as z / w WITHOUT the -0.5, so the root sits in the middle bin D / 2
and the bins span w input pixels of depth.

The official 2D path (`output_3d=False`) is `assert 0, 'Not Implemented!'`; `soft_argmax_2d`
is its D = 1 case (same softmax, same x, y), which the parity test checks.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _expectation(marginal: jax.Array) -> jax.Array:
  """Eq. 6: sum_i i * p(i) over the last axis, divided by its size, minus 0.5."""
  size = marginal.shape[-1]
  index = jnp.arange(size, dtype=marginal.dtype)
  return jnp.sum(marginal * index, axis=-1) / size - 0.5


def volume_softmax(logits: jax.Array, num_keypoints: int) -> jax.Array:
  """Per-joint probabilities over all voxels: [B, H, W, K * D] -> [B, K, D, H, W] float32.

  One softmax per (b, k) over D * H * W entries (the official "global soft max").
  """
  batch, height, width, channels = logits.shape
  if channels % num_keypoints:
    raise ValueError(f"volumetric logits have {channels} channels, not a multiple of "
                     f"num_keypoints={num_keypoints} (expected K * D, joint-major)")
  depth = channels // num_keypoints
  volume = jnp.transpose(logits.astype(jnp.float32), (0, 3, 1, 2))
  volume = volume.reshape(batch, num_keypoints, depth * height * width)
  return jax.nn.softmax(volume, axis=-1).reshape(batch, num_keypoints, depth, height, width)


def marginals(probabilities: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Eq. 5: [B, K, D, H, W] -> (p(x) [B, K, W], p(y) [B, K, H], p(z) [B, K, D])."""
  return (probabilities.sum(axis=(2, 3)), probabilities.sum(axis=(2, 4)),
          probabilities.sum(axis=(3, 4)))


def soft_argmax_3d(logits: jax.Array, num_keypoints: int) -> jax.Array:
  """Volumetric logits [B, H, W, K * D] -> normalised (x, y, z) [B, K, 3] float32."""
  p_x, p_y, p_z = marginals(volume_softmax(logits, num_keypoints))
  return jnp.stack([_expectation(p_x), _expectation(p_y), _expectation(p_z)], axis=-1)


def soft_argmax_2d(logits: jax.Array) -> jax.Array:
  """Heatmap logits [B, H, W, K] -> normalised (x, y) [B, K, 2] float32 (the D = 1 case)."""
  return soft_argmax_3d(logits, logits.shape[-1])[..., :2]


def encode(keypoints: np.ndarray, visibility: np.ndarray, input_wh: Sequence[int],
           has_depth: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Input-pixel keypoints -> normalised regression targets and per-coordinate weights.

  Official `generate_joint_location_label`: x / w - 0.5, y / h - 0.5, z / w.

  Args:
    keypoints: [K, 2] (x, y) or [K, 3] (x, y, z) in input pixels, z root-relative.
    visibility: [K]; > 0 means labelled.
    input_wh: (w, h) of the network input.
    has_depth: False for a 2D sample trained by a 3D model (COCO/MPII mixed with
      Human3.6M): its z weight is 0, so no gradient flows through the z expectation
      (official `joints_3d_vis[:, 2] = 0`). Ignored for [K, 2] keypoints.

  Returns:
    targets and weights, both [K, 2 | 3] float32.
  """
  keypoints = np.asarray(keypoints, np.float64)
  width, height = input_wh
  targets = keypoints.copy()
  targets[:, 0] = keypoints[:, 0] / width - 0.5
  targets[:, 1] = keypoints[:, 1] / height - 0.5
  if keypoints.shape[1] == 3:
    targets[:, 2] = keypoints[:, 2] / width
  labelled = (np.asarray(visibility) > 0).astype(np.float32)
  weights = np.repeat(labelled[:, None], keypoints.shape[1], axis=1)
  if keypoints.shape[1] == 3 and not has_depth:
    weights[:, 2] = 0.0
  return targets.astype(np.float32), weights


def decode(coords: jax.Array, input_wh: Sequence[int]) -> jax.Array:
  """Normalised [..., K, 2 | 3] -> input pixels (official `get_joint_location_result`)."""
  width, height = input_wh
  scale = jnp.asarray([width, height, width][:coords.shape[-1]], jnp.float32)
  offset = jnp.asarray([0.5, 0.5, 0.0][:coords.shape[-1]], jnp.float32)
  return (coords + offset) * scale


def to_heatmap_xy(coords: jax.Array, heatmap_wh: Sequence[int]) -> jax.Array:
  """Normalised [..., K, 2 | 3] -> (x, y) in heatmap pixels, the units of
  `heatmap.decode_argmax`, so `heatmap.heatmap_to_image_xy` maps them to the image."""
  return (coords[..., :2] + 0.5) * jnp.asarray(heatmap_wh, jnp.float32)


def flip_back(keypoints: jax.Array, flip_index: Sequence[int] | np.ndarray,
              input_width: int) -> jax.Array:
  """Input-pixel keypoints [B, K, 2 | 3] predicted on a mirrored input -> original frame.

  x -> w - 1 - x and joints swapped by `flip_index`, z unchanged (official flip test in
  `common_pytorch/net_modules.py: validNet`, which then averages with the plain pass).
  """
  mirrored = keypoints.at[..., 0].set(input_width - 1 - keypoints[..., 0])
  return mirrored[:, jnp.asarray(flip_index)]
