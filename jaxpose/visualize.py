"""Drawing keypoints and skeletons for debugging and reports (cv2, host-side numpy).

Images are RGB uint8 [H, W, 3]; keypoints are [N, K, 3] (x, y, score or visibility) in
that image's pixels; `skeleton` holds 0-based keypoint index pairs
(`keypoints.COCO.skeleton`). Colours are RGB tuples.
"""

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

GROUND_TRUTH_COLOR = (0, 200, 0)
PREDICTION_COLOR = (230, 40, 40)


def draw_skeleton(
    image_rgb: np.ndarray,
    keypoints: np.ndarray,
    skeleton: Sequence[tuple[int, int]],
    threshold: float = 0.0,
    color: tuple[int, int, int] = PREDICTION_COLOR,
    radius: int = 3,
    thickness: int = 2,
) -> np.ndarray:
  """Returns a copy of the image with limbs and keypoints of N persons drawn on it.

  A keypoint is drawn when its third value is above `threshold` (use 0 for COCO
  visibility, where 0 = unlabelled); a limb when both its ends are drawn.

  Args:
    image_rgb: [H, W, 3] uint8.
    keypoints: [N, K, 3] (x, y, score/visibility) in image pixels; [K, 3] for one person.
    skeleton: pairs of 0-based keypoint indices.
    threshold: minimum score for a keypoint to be drawn.
    color: RGB of lines and dots.

  Returns:
    [H, W, 3] uint8.
  """
  canvas = np.ascontiguousarray(image_rgb, dtype=np.uint8).copy()
  keypoints = np.asarray(keypoints, np.float64).reshape(-1, np.shape(keypoints)[-2], 3)
  color = tuple(int(c) for c in color)
  for person in keypoints:
    shown = person[:, 2] > threshold
    points = [(int(round(x)), int(round(y))) for x, y in person[:, :2]]
    for a, b in skeleton:
      if shown[a] and shown[b]:
        cv2.line(canvas, points[a], points[b], color, thickness, lineType=cv2.LINE_AA)
    for k in np.flatnonzero(shown):
      cv2.circle(canvas, points[k], radius, color, thickness=-1, lineType=cv2.LINE_AA)
  return canvas


def draw_predictions(
    image_rgb: np.ndarray,
    keypoints: np.ndarray,
    person_scores: np.ndarray,
    skeleton: Sequence[tuple[int, int]],
    threshold: float = 0.2,
    color: tuple[int, int, int] = PREDICTION_COLOR,
) -> np.ndarray:
  """`draw_skeleton` of N predicted persons, each labelled with its score above its
  top-most drawn keypoint.

  Args:
    image_rgb: [H, W, 3] uint8.
    keypoints: [N, K, 3] (x, y, keypoint score) in image pixels.
    person_scores: [N] (e.g. the rescored detection score).
    skeleton: pairs of 0-based keypoint indices.
    threshold: keypoints scoring at or below it are not drawn.

  Returns:
    [H, W, 3] uint8.
  """
  keypoints = np.asarray(keypoints, np.float64).reshape(-1, np.shape(keypoints)[-2], 3)
  canvas = draw_skeleton(image_rgb, keypoints, skeleton, threshold, color)
  for person, score in zip(keypoints, np.asarray(person_scores, np.float64).reshape(-1)):
    shown = person[person[:, 2] > threshold]
    if not len(shown):
      continue
    top = shown[np.argmin(shown[:, 1])]
    origin = (int(round(top[0])) + 4, max(int(round(top[1])) - 6, 10))
    cv2.putText(canvas, f"{score:.2f}", origin, cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                tuple(int(c) for c in color), 1, lineType=cv2.LINE_AA)
  return canvas


def save_png(path: str | Path, image_rgb: np.ndarray) -> None:
  """Writes an RGB uint8 image as PNG; OSError naming the path if cv2 cannot."""
  if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
    raise OSError(f"{path}: cv2 could not write the PNG (missing folder or bad extension?)")


def _labelled_panel(image_rgb: np.ndarray, label: str, height: int, width: int) -> np.ndarray:
  """Pads the image to [height, width, 3] (black, bottom/right) and writes a label top-left."""
  panel = np.zeros((height, width, 3), np.uint8)
  panel[:image_rgb.shape[0], :image_rgb.shape[1]] = image_rgb
  # Dark box behind white text so the label reads on any image.
  (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
  cv2.rectangle(panel, (0, 0), (text_w + 4, text_h + baseline + 4), (0, 0, 0), thickness=-1)
  cv2.putText(panel, label, (2, text_h + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
              lineType=cv2.LINE_AA)
  return panel


def save_prediction_grid(
    path: str | Path,
    images: Sequence[np.ndarray],
    predicted: Sequence[np.ndarray],
    ground_truth: Sequence[np.ndarray],
    skeleton: Sequence[tuple[int, int]],
    threshold: float = 0.0,
) -> np.ndarray:
  """Writes one PNG: row i = images[i] with ground truth (left) and prediction (right).

  Args:
    path: output .png file.
    images: RGB uint8 [H_i, W_i, 3] each; smaller images are padded to the largest.
    predicted: per image, [N_i, K, 3] (x, y, score).
    ground_truth: per image, [M_i, K, 3] (x, y, visibility).
    skeleton: pairs of 0-based keypoint indices.
    threshold: minimum score/visibility for a keypoint to be drawn.

  Returns:
    The grid, RGB uint8 [sum of row heights = len(images) * max H, 2 * max W, 3].
  """
  if not (len(images) == len(predicted) == len(ground_truth)) or not images:
    raise ValueError(
        f"save_prediction_grid needs one prediction and one ground truth per image, got "
        f"{len(images)} images, {len(predicted)} predictions, {len(ground_truth)} ground truths")
  height = max(image.shape[0] for image in images)
  width = max(image.shape[1] for image in images)
  rows = []
  for image, prediction, truth in zip(images, predicted, ground_truth):
    left = draw_skeleton(image, truth, skeleton, threshold, GROUND_TRUTH_COLOR)
    right = draw_skeleton(image, prediction, skeleton, threshold, PREDICTION_COLOR)
    rows.append(np.concatenate([_labelled_panel(left, "ground truth", height, width),
                                _labelled_panel(right, "prediction", height, width)], axis=1))
  grid = np.concatenate(rows, axis=0)
  save_png(path, grid)
  return grid
