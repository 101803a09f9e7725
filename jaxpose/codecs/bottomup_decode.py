"""DEKR bottom-up inference: flip test, centre peaks, regressed poses, rescoring, pose NMS.

Equal to the official single-scale test path (HRNet/DEKR @7a30313, `tools/valid.py` with
TEST.SCALE_FACTOR [1], MATCH_HMP False): `lib/core/inference.py` `get_multi_stage_outputs`,
`aggregate_results`, `lib/core/nms.py` `pose_nms`, `lib/utils/transforms.py`
`get_final_preds`. Everything up to the kept poses is jax (`decode`, jit-able, batched);
mapping back to the image and the COCO/CrowdPose results are numpy on the host. Not
included: multi-scale testing, MATCH_HMP's Gaussian refinement (off in every DEKR config)
and RESCORE.VALID's learned rescoring net (`lib/utils/rescore.py`, needs its own weights).

Symbols: B batch, K keypoints, h x w the heatmaps (network input / `stride`), N =
`max_people`. Network outputs are channels last (`jaxpose.models.dekr`): heatmaps
[B, h, w, K + 1] with the centre last, offsets [B, h, w, 2K] with keypoint k at channels
(2k, 2k + 1) = (x, y) of pixel minus keypoint. Heatmap pixel [y, x] is the point (x, y);
input pixel = stride x heatmap pixel.

Flip test: the flipped input is mirrored and then shifted 3 pixels left (`flip_test_input`);
with stride 4 this puts input column 4u of the flipped image on heatmap column w - 1 - u.
Its heatmaps are mirrored back with channels permuted by the flip index (centre fixed);
its regressed poses are permuted, mirrored (x -> w - 1 - x) and read at the mirrored pixel.
"""

from collections.abc import Sequence
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpose import geometry

# DEKR's hierarchical_pool: the centre-peak NMS window grows with the map (TEST.POOL_THRESHOLD1/2).
_POOL_SIZE_BY_MAP_SIDE = ((300.0, 7), (200.0, 5))
# DEKR shifts the flipped input by stride - 1 = 3 pixels (its stride is always 4).
_FLIP_TEST_SHIFT = 3


def flip_test_input(images: jax.Array) -> jax.Array:
  """[B, H, W, C] -> the image DEKR feeds for the flip test: mirrored, then moved 3 columns
  left (the last 3 columns keep the mirrored image's last 3)."""
  flipped = images[:, :, ::-1]
  return jnp.concatenate([flipped[:, :, _FLIP_TEST_SHIFT:], flipped[:, :, -_FLIP_TEST_SHIFT:]],
                         axis=2)


def poses_from_offsets(offsets: jax.Array) -> jax.Array:
  """[B, h, w, 2K] offsets -> [B, h, w, K, 2]: each pixel's pose, (x, y) = pixel - offset."""
  batch, height, width, channels = offsets.shape
  offsets = offsets.reshape(batch, height, width, channels // 2, 2)
  xs = jnp.arange(width, dtype=offsets.dtype)
  ys = jnp.arange(height, dtype=offsets.dtype)
  location = jnp.stack(jnp.broadcast_arrays(xs[None, :], ys[:, None]), axis=-1)  # [h, w, 2]
  return location[None, :, :, None, :] - offsets


def merge_flip_test(heatmaps: jax.Array, offsets: jax.Array, heatmaps_flipped: jax.Array,
                    offsets_flipped: jax.Array, flip_index: Sequence[int] | np.ndarray
                    ) -> tuple[jax.Array, jax.Array]:
  """Averages the plain and the flipped pass (DEKR `get_multi_stage_outputs`, with_flip).

  Args:
    heatmaps, offsets: outputs on the image.
    heatmaps_flipped, offsets_flipped: outputs on `flip_test_input(image)`.
    flip_index: [K] keypoint permutation (`KeypointSpec.flip_index`).

  Returns:
    heatmaps [B, h, w, K + 1] and poses [B, h, w, K, 2] (heatmap pixels), both averaged.
  """
  return _merge_flip_test(heatmaps, offsets, heatmaps_flipped, offsets_flipped,
                          flip_index=tuple(int(i) for i in flip_index))


@functools.partial(jax.jit, static_argnames="flip_index")
def _merge_flip_test(heatmaps: jax.Array, offsets: jax.Array, heatmaps_flipped: jax.Array,
                     offsets_flipped: jax.Array, flip_index: tuple[int, ...]
                     ) -> tuple[jax.Array, jax.Array]:
  flip_index = np.asarray(flip_index)
  width = heatmaps.shape[2]
  heat_index = np.concatenate([flip_index, [len(flip_index)]])
  heatmaps = (heatmaps + heatmaps_flipped[:, :, ::-1, heat_index]) / 2.0
  poses_flipped = poses_from_offsets(offsets_flipped)[:, :, :, flip_index]
  poses_flipped = poses_flipped.at[..., 0].set(width - poses_flipped[..., 0] - 1)
  poses = (poses_from_offsets(offsets) + poses_flipped[:, :, ::-1]) / 2.0
  return heatmaps, poses


def _max_pool_same(values: jax.Array, size: int) -> jax.Array:
  """Stride-1 max pool of [h, w] with -inf padding (torch MaxPool2d(size, 1, size // 2))."""
  pad = size // 2
  return jax.lax.reduce_window(values, -jnp.inf, jax.lax.max, (size, size), (1, 1),
                               ((pad, pad), (pad, pad)))


def center_pool_size(height: int, width: int) -> int:
  """Centre-peak NMS window for an h x w map: 7 if (h + w) / 2 > 300, 5 if > 200, else 3."""
  map_side = (height + width) / 2.0
  for threshold, size in _POOL_SIZE_BY_MAP_SIDE:
    if map_side > threshold:
      return size
  return 3


def _heat_values(keypoint_heatmaps: jax.Array, poses: jax.Array, stride: int) -> jax.Array:
  """Keypoint heatmap values at floor(pose) in input pixels: DEKR `get_heat_value` on the
  heatmaps upsampled by `up_interpolate` (align-corners bilinear to stride x (h - 1) + 1,
  then the last row/column replicated to stride x h). keypoint_heatmaps [h, w, K],
  poses [N, K, 2] input pixels -> [N, K]."""
  height, width, num_keypoints = keypoint_heatmaps.shape
  x = jnp.clip(jnp.floor(poses[..., 0]), 0, stride * width - 1)
  y = jnp.clip(jnp.floor(poses[..., 1]), 0, stride * height - 1)
  # Align-corners source coordinate of output pixel X is X (w - 1) / (stride (w - 1)) = X / stride.
  source_x = jnp.minimum(x, stride * (width - 1)) / stride
  source_y = jnp.minimum(y, stride * (height - 1)) / stride
  x0 = jnp.floor(source_x).astype(jnp.int32)
  y0 = jnp.floor(source_y).astype(jnp.int32)
  x1 = jnp.minimum(x0 + 1, width - 1)
  y1 = jnp.minimum(y0 + 1, height - 1)
  weight_x1 = source_x - x0
  weight_y1 = source_y - y0
  k = jnp.arange(num_keypoints)[None, :]
  top = (1 - weight_x1) * keypoint_heatmaps[y0, x0, k] + weight_x1 * keypoint_heatmaps[y0, x1, k]
  bottom = (1 - weight_x1) * keypoint_heatmaps[y1, x0, k] + weight_x1 * keypoint_heatmaps[y1, x1, k]
  return (1 - weight_y1) * top + weight_y1 * bottom


def pose_nms(poses: jax.Array, heat_score: jax.Array, valid: jax.Array, distance_factor: float,
             min_joints: int) -> tuple[jax.Array, jax.Array]:
  """DEKR `nms_core` on one image: greedy over candidates in centre-score order.

  poses [N, K, 2], heat_score [N] (mean keypoint heat value), valid [N] (candidates above
  the centre threshold; invalid ones neither suppress nor get kept).

  Pose j is a duplicate of pose i when more than `min_joints` of its joints lie closer than
  distance_factor x sqrt(area_i) to i's (area = squared diagonal of i's keypoint box).
  Candidate i, unless already suppressed, keeps the highest heat score among its
  duplicates (itself included; first index on ties) if that one is not suppressed yet, and
  suppresses all of them; if it is suppressed, nothing happens (the official `continue`).
  A pose with K <= min_joints, or with all joints at one point, is not its own duplicate
  and is never kept (the official code raises on the empty argmax there).

  Returns:
    kept [N] int32 indices in keep order (-1 after the last) and the count kept.
  """
  extent = poses.max(axis=1) - poses.min(axis=1)  # [N, 2]
  area = extent[:, 0] * extent[:, 0] + extent[:, 1] * extent[:, 1]
  distance = jnp.sqrt(jnp.sum(jnp.square(poses[:, None] - poses[None, :]), axis=-1))  # [N, N, K]
  close = distance < (distance_factor * jnp.sqrt(area))[:, None, None]
  duplicate = (jnp.sum(close, axis=-1) > min_joints) & valid[None, :]  # [N, N]
  num = poses.shape[0]

  def step(i, state):
    suppressed, kept, count = state
    group = duplicate[i]
    best = jnp.argmax(jnp.where(group, heat_score, -jnp.inf))
    take = valid[i] & ~suppressed[i] & jnp.any(group) & ~suppressed[best]
    kept = kept.at[count].set(jnp.where(take, best, kept[count]))
    suppressed = jnp.where(take, suppressed | group, suppressed)
    return suppressed, kept, count + take.astype(jnp.int32)

  state = (jnp.zeros(num, bool), jnp.full(num, -1, jnp.int32), jnp.int32(0))
  _, kept, count = jax.lax.fori_loop(0, num, step, state)
  return kept, count


def _decode_one(heatmaps: jax.Array, poses: jax.Array, max_people: int, center_threshold: float,
                nms_distance: float, nms_min_joints: int, stride: int) -> dict[str, jax.Array]:
  height, width = heatmaps.shape[:2]
  center = heatmaps[:, :, -1]
  peaks = center * (_max_pool_same(center, center_pool_size(height, width)) == center)
  center_score, index = jax.lax.top_k(peaks.reshape(-1), max_people)
  valid = center_score > center_threshold
  candidates = stride * poses.reshape(height * width, *poses.shape[2:])[index]  # [N, K, 2]

  heat = _heat_values(heatmaps[:, :, :-1], candidates, stride)  # [N, K]
  heat_score = jnp.mean(heat, axis=-1)
  joint_scores = center_score[:, None] * heat
  kept, count = pose_nms(candidates, heat_score, valid, nms_distance, nms_min_joints)
  order = jnp.maximum(kept, 0)
  keypoints = jnp.concatenate([candidates, joint_scores[..., None]], axis=-1)[order]
  kept_mask = jnp.arange(max_people) < count
  return {"keypoints": jnp.where(kept_mask[:, None, None], keypoints, 0.0),
          "scores": jnp.where(kept_mask, jnp.mean(joint_scores[order], axis=-1), 0.0),
          "valid": kept_mask}


@functools.partial(jax.jit, static_argnames=("max_people", "center_threshold", "nms_distance",
                                             "nms_min_joints", "stride"))
def decode(heatmaps: jax.Array, poses: jax.Array, *, max_people: int = 30,
           center_threshold: float = 0.01, nms_distance: float = 0.05, nms_min_joints: int = 8,
           stride: int = 4) -> dict[str, jax.Array]:
  """Poses of every image from (flip-merged) heatmaps and poses (DEKR single scale).

  Centre peaks are the local maxima of the centre heatmap (max pool 3, 5 or 7 by map size),
  the top `max_people` above `center_threshold`. Each peak's pose is read from `poses`
  (times `stride`, in input pixels). Joint score = centre score x the keypoint heatmap at
  the joint (upsampled to the input as DEKR); pose NMS as `pose_nms`, ranked by the
  mean heat value; pose score = mean joint score. Defaults: the COCO config (TEST.NMS_THRE
  0.05, NMS_NUM_THRE 8; CrowdPose uses 7). `stride` = network input / heatmap size (DEKR 4).
  Jitted here with the options static, so it can be called from host code as well as
  inside a jitted predict step.

  Args:
    heatmaps: [B, h, w, K + 1], centre last.
    poses: [B, h, w, K, 2] from `merge_flip_test` or `poses_from_offsets`.

  Returns:
    keypoints [B, N, K, 3] (x, y, score; network-input pixels), scores [B, N] and valid
    [B, N]: the kept poses come first, in DEKR's keep order; the rest are zeros.
  """
  decode_one = functools.partial(_decode_one, max_people=max_people,
                                 center_threshold=center_threshold, nms_distance=nms_distance,
                                 nms_min_joints=nms_min_joints, stride=stride)
  return jax.vmap(decode_one)(heatmaps.astype(jnp.float32), poses.astype(jnp.float32))


def to_image_coordinates(keypoints: np.ndarray, center_xy: np.ndarray, scale_wh: np.ndarray,
                         input_wh: Sequence[int]) -> np.ndarray:
  """Network-input pixels -> original-image pixels (DEKR `get_final_preds`); scores kept.

  keypoints [N, K, 3]; center_xy, scale_wh from `bottomup_transforms.inference_size`;
  input_wh = (w, h) of the network input. Returns [N, K, 3] float32 (DEKR stores float32).
  """
  keypoints = np.array(keypoints, np.float32)
  matrix = geometry.get_affine_transform(center_xy, scale_wh, 0.0, input_wh, inverse=True)
  keypoints[..., :2] = geometry.affine_transform_points(keypoints[..., :2], matrix)
  return keypoints


def coco_results(image_id: int, keypoints: np.ndarray, scores: np.ndarray,
                 category_id: int = 1) -> list[dict[str, Any]]:
  """COCO / CrowdPose keypoint results: one dict per pose, keypoints flattened (x, y, score)."""
  return [{"image_id": int(image_id), "category_id": category_id,
           "keypoints": [float(v) for v in np.asarray(pose, np.float64).reshape(-1)],
           "score": float(score)}
          for pose, score in zip(keypoints, scores)]
