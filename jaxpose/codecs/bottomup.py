"""DEKR bottom-up training targets: keypoint + centre heatmaps, offset maps and their weights.

Geng et al., "Bottom-Up Human Pose Estimation via Disentangled Keypoint Regression", CVPR 2021,
arXiv:2104.02300 (v1), Sec. 3.3 (loss). Every function equals the official code (HRNet/DEKR
@7a30313) on one image, array for array:

  `persons_with_centers`  `CocoKeypoints.get_joints` / `CrowdPoseKeypoints.get_joints`
  `valid_region_mask`     `CocoKeypoints.get_mask` (crowd regions and unlabelled persons)
  `encode_heatmaps`       `target_generators.HeatmapGenerator`
  `encode_offsets`        `target_generators.OffsetGenerator`
  `encode`                the tail of `CocoKeypoints.__getitem__` (mask x heatmap weights)

Symbols: P persons, K keypoints, S the square output (heatmap) size. `joints` are
[P, K + 1, 3] (x, y, v) with the person centre as the last row, in output pixels; a
heatmap pixel [y, x] sits at the integer point (x, y). Arrays are channels last:
heatmaps [S, S, K + 1] (centre last, as the network's heatmap head), offsets [S, S, 2K]
with keypoint k at channels (2k, 2k + 1) = (x, y) of pixel minus keypoint (so the
keypoint is pixel - offset, as `jaxpose.models.dekr` documents).

Official quirks kept for parity (BUILD_NOTES.md lists them):
  * the person "area" that weights the offsets is the squared diagonal of the box spanning
    all K keypoint positions, unlabelled ones too, and the origin (DEKR measures it while
    the centre row is still (0, 0) and unlabelled keypoints are stored at (0, 0));
  * the centre is the sum of all K keypoint positions divided by the number labelled;
    a COCO person with no labelled keypoint but a segmentation area >= 32^2 gets a
    labelled centre at (0, 0), i.e. wherever the augmentation maps the image origin;
  * the person area is scaled by the warp's zoom in *input* pixels (input / region)^2,
    although the offsets are in output pixels (`bottomup_transforms.affine_flip`).

One deliberate difference: `HeatmapGenerator` picks `center_sigma` by `idx >= 17`, so for
CrowdPose (K = 14) the official centre heatmap is drawn with `sigma`; here the centre
channel always takes `center_sigma`, and a CrowdPose config that reproduces DEKR sets
`center_sigma = sigma` (2). For COCO (K = 17) the two rules are the same.
"""

from collections.abc import Sequence

import numpy as np
import pycocotools.mask

# `CocoKeypoints.get_joints`: persons whose segmentation is smaller than 32^2 px (COCO's
# "small") get no centre, hence no centre heatmap and no offsets.
MIN_CENTER_SEGMENTATION_AREA = 32**2


def persons_with_centers(
    keypoints: np.ndarray, segmentation_area: np.ndarray | None = None,
    min_center_area: float = MIN_CENTER_SEGMENTATION_AREA,
) -> tuple[np.ndarray, np.ndarray]:
  """Appends DEKR's person centre to each person's keypoints and measures its area.

  Args:
    keypoints: [P, K, 3] (x, y, v) in image pixels, COCO v (0 unlabelled, 1, 2).
    segmentation_area: [P] COCO annotation `area`; persons below `min_center_area`
      get an unlabelled centre (COCO). None: every person gets a centre (CrowdPose,
      whose reader has no such rule).
    min_center_area: the COCO threshold, 32^2.

  Returns:
    joints [P, K + 1, 3] float64 (centre last: mean position of the labelled keypoints,
    v = 1) and area [P] float64 (the offset-weight area described in the module docstring).
  """
  keypoints = np.asarray(keypoints, np.float64).reshape(-1, np.shape(keypoints)[-2], 3)
  num_persons, num_keypoints = keypoints.shape[:2]
  joints = np.zeros((num_persons, num_keypoints + 1, 3), np.float64)
  joints[:, :num_keypoints] = keypoints
  xy_with_origin = np.concatenate([keypoints[:, :, :2], np.zeros((num_persons, 1, 2))], axis=1)
  extent = xy_with_origin.max(axis=1) - xy_with_origin.min(axis=1)  # [P, 2]
  area = extent[:, 0] * extent[:, 0] + extent[:, 1] * extent[:, 1]

  has_center = np.ones(num_persons, bool)
  if segmentation_area is not None:
    has_center = np.asarray(segmentation_area, np.float64).reshape(num_persons) >= min_center_area
  num_labelled = np.count_nonzero(keypoints[:, :, 2], axis=1)
  xy_sum = keypoints[:, :, :2].sum(axis=1)
  center = np.where(num_labelled[:, None] > 0, xy_sum / np.maximum(num_labelled, 1)[:, None], 0.0)
  joints[:, -1, :2] = np.where(has_center[:, None], center, 0.0)
  joints[:, -1, 2] = has_center.astype(np.float64)
  return joints, area


def select_training_persons(annotations: Sequence[dict]) -> list[dict]:
  """The annotations DEKR trains on: non-crowd persons, and crowd ones that have keypoints."""
  return [a for a in annotations if a["iscrowd"] == 0 or a["num_keypoints"] > 0]


def valid_region_mask(annotations: Sequence[dict], height: int, width: int) -> np.ndarray:
  """[H, W] bool, False inside crowd regions and unlabelled persons (`CocoKeypoints.get_mask`).

  Crowd annotations (RLE or polygons) and persons with `num_keypoints == 0` (polygons)
  are rasterised with pycocotools; the loss ignores the heatmaps there.
  """
  covered = np.zeros((height, width), np.float64)
  for annotation in annotations:
    if annotation["iscrowd"]:
      rle = pycocotools.mask.frPyObjects(annotation["segmentation"], height, width)
      covered += pycocotools.mask.decode(rle)
    elif annotation["num_keypoints"] == 0:
      for rle in pycocotools.mask.frPyObjects(annotation["segmentation"], height, width):
        covered += pycocotools.mask.decode(rle)
  return covered < 0.5


def _window(start: int, end: int, size: int) -> tuple[int, int]:
  return max(0, start), min(end, size)


def encode_heatmaps(
    joints: np.ndarray, output_size: int, sigma: float, center_sigma: float,
    background_weight: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
  """Keypoint and centre Gaussians (peak 1, max over persons) and their loss weights.

  Equal to DEKR's `HeatmapGenerator(output_size, K)(joints, sigma, center_sigma,
  background_weight)`, channels last. Each labelled joint inside [0, S)^2 draws
  exp(-d^2 / (2 s^2)) at integer pixels of the window x in [floor(x - 3s - 1),
  ceil(x + 3s + 2)) (same in y), s = `sigma`, or `center_sigma` for the centre channel
  (DEKR: for channels >= 17; see the module docstring).

  Returns:
    heatmaps [S, S, K + 1] float32 and weights [S, S, K + 1] float32: 1 inside any drawn
    window of that channel, `background_weight` elsewhere.
  """
  joints = np.asarray(joints, np.float64)
  num_channels = joints.shape[1]
  heatmaps = np.zeros((num_channels, output_size, output_size), np.float32)
  weights = np.full((num_channels, output_size, output_size), np.float32(background_weight))
  for person in joints:
    for channel, (x, y, visibility) in enumerate(person):
      s = center_sigma if channel == num_channels - 1 else sigma
      if visibility <= 0 or x < 0 or y < 0 or x >= output_size or y >= output_size:
        continue
      x0, x1 = _window(int(np.floor(x - 3 * s - 1)), int(np.ceil(x + 3 * s + 2)), output_size)
      y0, y1 = _window(int(np.floor(y - 3 * s - 1)), int(np.ceil(y + 3 * s + 2)), output_size)
      dx2 = (np.arange(x0, x1) - x) ** 2
      dy2 = (np.arange(y0, y1) - y) ** 2
      gaussian = np.exp(-(dx2[None, :] + dy2[:, None]) / (2 * s**2))
      region = heatmaps[channel, y0:y1, x0:x1]
      heatmaps[channel, y0:y1, x0:x1] = np.maximum(region, gaussian)
      weights[channel, y0:y1, x0:x1] = 1.0
  return np.transpose(heatmaps, (1, 2, 0)), np.transpose(weights, (1, 2, 0))


def encode_offsets(
    joints: np.ndarray, area: np.ndarray, output_size: int, radius: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
  """Per-keypoint offset maps around each person centre, weighted by 1 / sqrt(area).

  Equal to DEKR's `OffsetGenerator(S, S, K, radius)(joints, area)`, channels last.
  For a person with a labelled centre at c = trunc(centre) inside the map, every
  labelled keypoint (x, y) inside the map writes, at each pixel p of the window
  [c - radius, c + radius) (clipped), offset p - (x, y) and weight 1 / sqrt(area).
  Where windows of two persons overlap, the smaller person keeps the pixel; the area
  that decides is per pixel, shared by all keypoints (the last person written there),
  and a pixel whose offset is exactly (0, 0) counts as free: both as the official code.

  Args:
    joints: [P, K + 1, 3] in output pixels, centre last.
    area: [P] (from `persons_with_centers`, times the augmentation's scale).
    output_size: S.
    radius: DEKR's OFFSET_RADIUS (4).

  Returns:
    offsets [S, S, 2K] float32 and weights [S, S, 2K] float32 (0 where nothing was written).
  """
  joints = np.asarray(joints, np.float64)
  area = np.asarray(area, np.float64).reshape(-1)
  num_keypoints = joints.shape[1] - 1
  offsets = np.zeros((num_keypoints, 2, output_size, output_size), np.float32)
  weights = np.zeros((num_keypoints, output_size, output_size), np.float32)
  # float32 as the official map: the comparison below is float32 storage vs float64 area.
  area_map = np.zeros((output_size, output_size), np.float32)
  for person, person_area in zip(joints, area):
    center_x, center_y, center_v = (int(value) for value in person[-1])
    if (center_v < 1 or center_x < 0 or center_y < 0
        or center_x >= output_size or center_y >= output_size):
      continue
    x0, x1 = _window(int(center_x - radius), int(center_x + radius), output_size)
    y0, y1 = _window(int(center_y - radius), int(center_y + radius), output_size)
    with np.errstate(divide="ignore"):
      weight = 1.0 / np.sqrt(person_area)
    for k, (x, y, visibility) in enumerate(person[:-1]):
      if visibility <= 0 or x < 0 or y < 0 or x >= output_size or y >= output_size:
        continue
      # Each window pixel is visited once per (person, keypoint), so deciding the whole
      # window at once equals the official pixel loop.
      offset_x = (np.arange(x0, x1) - x)[None, :].repeat(y1 - y0, axis=0)
      offset_y = (np.arange(y0, y1) - y)[:, None].repeat(x1 - x0, axis=1)
      taken = (offsets[k, 0, y0:y1, x0:x1] != 0) | (offsets[k, 1, y0:y1, x0:x1] != 0)
      keep_other = taken & (area_map[y0:y1, x0:x1].astype(np.float64) < person_area)
      write = ~keep_other
      offsets[k, 0, y0:y1, x0:x1] = np.where(write, offset_x, offsets[k, 0, y0:y1, x0:x1])
      offsets[k, 1, y0:y1, x0:x1] = np.where(write, offset_y, offsets[k, 1, y0:y1, x0:x1])
      weights[k, y0:y1, x0:x1] = np.where(write, weight, weights[k, y0:y1, x0:x1])
      area_map[y0:y1, x0:x1] = np.where(write, person_area, area_map[y0:y1, x0:x1])
  offsets = offsets.reshape(2 * num_keypoints, output_size, output_size)
  weights = np.repeat(weights, 2, axis=0)
  return np.transpose(offsets, (1, 2, 0)), np.transpose(weights, (1, 2, 0))


def encode(
    joints: np.ndarray, area: np.ndarray, valid_mask: np.ndarray, output_size: int, *,
    sigma: float = 2.0, center_sigma: float = 4.0, background_weight: float = 0.1,
    radius: int = 4,
) -> dict[str, np.ndarray]:
  """All DEKR targets of one augmented image (defaults: the official COCO/CrowdPose configs).

  Args:
    joints: [P, K + 1, 3] in output pixels (after the augmentation), centre last.
    area: [P], scaled by the augmentation.
    valid_mask: [S, S], 1 where the loss counts (the warped `valid_region_mask`).

  Returns:
    heatmaps [S, S, K + 1], heatmap_weights [S, S, K + 1] (valid_mask x the generator's
    weights, DEKR's `mask`), offsets [S, S, 2K], offset_weights [S, S, 2K]; all float32.
  """
  heatmaps, heatmap_weights = encode_heatmaps(joints, output_size, sigma, center_sigma,
                                              background_weight)
  offsets, offset_weights = encode_offsets(joints, area, output_size, radius)
  valid_mask = np.asarray(valid_mask, np.float32)[:, :, None]
  return {"heatmaps": heatmaps,
          "heatmap_weights": (valid_mask * heatmap_weights).astype(np.float32),
          "offsets": offsets, "offset_weights": offset_weights}
