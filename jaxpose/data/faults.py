"""Dataset faults: the one definition of each per-person check, shared by every reader,
the image decoder and `python -m jaxpose.data.check`, so training and the checker agree.

Every problem is a `Fault` (kind, file, entry, message). Its kind decides what happens:

- rejected (`REJECTED`): the split cannot be used at all; the reader raises `DatasetError`
  at start-up with the first one (one line naming the file and entry).
- skipped person (`SKIPPED_PERSON`): one annotation is unusable; the reader leaves it out
  at start-up, warns and counts it.
- skipped sample (`SKIPPED_SAMPLE`): an image fails while streaming; its samples keep their
  batch slot with zero target weight and a `skipped` flag the train step sums.
- filtered (`FILTERED`): persons HRNet drops routinely; counted, not faults.

Readers for other formats call `person_problem` (or `box_problem`, `keypoints_problem`)
per person and collect an `AnnotationScan`; images go through `image_io.read_image`.
"""

import collections
import dataclasses
import math
import threading
from pathlib import Path
from typing import Any, Sequence

from absl import logging
import numpy as np

from jaxpose.errors import DatasetError

REJECTED = {
    "unreadable_annotation_file": "annotation file missing, empty, not JSON or not the format",
    "invalid_entry": "an entry lacks a field or has a value of the wrong type or length",
    "missing_image": "an image file the annotations use is not on disk",
    "no_persons": "no usable person left in the split",
}
SKIPPED_PERSON = {
    "box_not_finite": "box or area is NaN or infinite",
    "box_zero_area": "box width, height or area is not positive",
    "box_outside_image": "box lies entirely outside the image",
    "keypoints_not_finite": "a keypoint value is NaN or infinite",
    "keypoints_out_of_range": "a labelled keypoint lies outside the image, or bad visibility",
    "duplicate_image_id": "two image entries share an id; their persons are ambiguous",
}
SKIPPED_SAMPLE = {
    "corrupt_image": "image file truncated, corrupt or unreadable",
    "image_size_mismatch": "decoded size differs from the annotated width/height",
}
FILTERED = {
    "crowd": "iscrowd region (HRNet drops these)",
    "no_labelled_keypoints": "all keypoint values zero (HRNet drops these)",
}
FAULT_KINDS = {**REJECTED, **SKIPPED_PERSON, **SKIPPED_SAMPLE}

# COCO visibility: 0 unlabelled, 1 labelled but occluded, 2 labelled and visible.
COCO_VISIBILITY = (0, 1, 2)

# Start-up warnings name this many skipped entries, then only count the rest.
_MAX_WARNINGS_AT_OPEN = 10


@dataclasses.dataclass(frozen=True)
class Fault:
  """One problem in a dataset. `persons`: how many persons it removes from the split."""
  kind: str
  file: str
  entry: str
  message: str
  persons: int = 1

  def __str__(self) -> str:
    where = f"{self.file}: {self.entry}" if self.entry else self.file
    return f"{where}: {self.message}"


@dataclasses.dataclass
class AnnotationScan:
  """What a reader found in one annotation file: usable records and every problem."""
  annotation_file: Path
  records: list[Any] = dataclasses.field(default_factory=list)
  rejected: list[Fault] = dataclasses.field(default_factory=list)
  skipped: list[Fault] = dataclasses.field(default_factory=list)
  filtered: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  @property
  def skipped_persons(self) -> int:
    return sum(f.persons for f in self.skipped)

  @property
  def filtered_persons(self) -> int:
    return sum(self.filtered.values())

  def raise_if_rejected(self) -> None:
    if self.rejected:
      more = len(self.rejected) - 1
      hint = (f" (and {more} more problem(s): list them with python -m jaxpose.data.check)"
              if more else "")
      raise DatasetError(f"{self.rejected[0]}{hint}")

  def warn_skipped(self) -> None:
    """Logs the start-up skips (each entry, up to a limit) and the counts."""
    for fault in self.skipped[:_MAX_WARNINGS_AT_OPEN]:
      logging.warning("%s; skipped [%s]", fault, fault.kind)
    if len(self.skipped) > _MAX_WARNINGS_AT_OPEN:
      logging.warning("%s: %d more skipped entries; list them with python -m jaxpose.data.check",
                      self.annotation_file, len(self.skipped) - _MAX_WARNINGS_AT_OPEN)
    if self.skipped:
      logging.warning("%s: %d persons skipped for faults, %d filtered, %d usable",
                      self.annotation_file, self.skipped_persons, self.filtered_persons,
                      len(self.records))


def box_problem(box_xywh: np.ndarray, area: float, image_wh: tuple[int, int]
                ) -> tuple[str, str] | None:
  """(kind, message) if the box cannot define a crop, else None. box_xywh: [4] image pixels."""
  if not (np.all(np.isfinite(box_xywh)) and math.isfinite(area)):
    return "box_not_finite", f"bbox {box_xywh.tolist()} or area {area} is not finite"
  x, y, w, h = box_xywh
  if w <= 0 or h <= 0 or area <= 0:
    return "box_zero_area", f"bbox {box_xywh.tolist()} with area {area} has no area"
  width, height = image_wh
  # Tested on the annotated box: HRNet's clip starts from the clipped corner, which would
  # slide a box lying wholly left of or above the image back into it.
  if x + w <= 0 or y + h <= 0 or x >= width or y >= height:
    return "box_outside_image", f"bbox {box_xywh.tolist()} lies outside the {width}x{height} image"
  return None


def clip_box(box_xywh: np.ndarray, image_wh: tuple[int, int]) -> np.ndarray:
  """HRNet's sanitisation (`_load_coco_keypoint_annotation_kernal`): clip to the image.

  For boxes that passed `box_problem`. Returns [4] float32 (x, y, w, h), where w and h are
  HRNet's x2 - x1 and y2 - y1 (one pixel less than the box's extent).
  """
  x, y, w, h = (float(v) for v in box_xywh)
  width, height = image_wh
  x1, y1 = max(0.0, x), max(0.0, y)
  x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
  y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
  return np.array([x1, y1, x2 - x1, y2 - y1], np.float32)


def keypoints_problem(keypoints: np.ndarray, image_wh: tuple[int, int],
                      visibility_values: Sequence[int] = COCO_VISIBILITY
                      ) -> tuple[str, str] | None:
  """(kind, message) if the keypoints are unusable, else None.

  keypoints: [K, 3] (x, y, v) in image pixels. Every value must be finite; a labelled
  keypoint (v > 0) must lie in [-0.5, width] x [-0.5, height], the image under either
  convention: pixel centres at integers (HRNet's, the image spans [-0.5, width - 0.5]) or
  pixel corners at integers (COCO boxes, [0, width]). v must be one of `visibility_values`.
  """
  if not np.all(np.isfinite(keypoints)):
    bad = sorted(set(np.nonzero(~np.isfinite(keypoints))[0].tolist()))
    return "keypoints_not_finite", f"keypoint(s) {bad} hold NaN or infinite values"
  visibility = keypoints[:, 2]
  bad_visibility = ~np.isin(visibility, visibility_values)
  if bad_visibility.any():
    k = int(np.argmax(bad_visibility))
    return ("keypoints_out_of_range",
            f"keypoint {k} has visibility {visibility[k]:g}, expected one of "
            f"{list(visibility_values)}")
  width, height = image_wh
  x, y = keypoints[:, 0], keypoints[:, 1]
  outside = (visibility > 0) & ((x < -0.5) | (x > width) | (y < -0.5) | (y > height))
  if outside.any():
    k = int(np.argmax(outside))
    return ("keypoints_out_of_range",
            f"labelled keypoint {k} at ({x[k]:g}, {y[k]:g}) is outside the {width}x{height} image")
  return None


def person_problem(keypoints: np.ndarray, box_xywh: np.ndarray, area: float,
                   image_wh: tuple[int, int], is_crowd: bool,
                   visibility_values: Sequence[int] = COCO_VISIBILITY) -> tuple[str, str] | None:
  """(kind, message) if one person is filtered (kind in FILTERED) or faulty, else None.

  Order: crowd regions are dropped before anything is checked (as HRNet); a person whose
  keypoint values are all zero is filtered as HRNet's `max(keypoints) == 0`, which is how
  COCO writes a person with no labelled keypoint.
  """
  if is_crowd:
    return "crowd", "crowd region"
  problem = keypoints_problem(keypoints, image_wh, visibility_values)
  if problem and problem[0] == "keypoints_not_finite":
    return problem
  if keypoints.max(initial=0) <= 0:
    return "no_labelled_keypoints", "no labelled keypoints"
  return problem or box_problem(box_xywh, area, image_wh)


class WarnOnce:
  """Logs one warning per file, from any thread (grain reads in threads). Worker processes
  each hold their own copy, so a file read by several workers warns once per worker."""

  def __init__(self):
    self._seen: set[str] = set()
    self._lock = threading.Lock()

  def __call__(self, fault: Fault, consequence: str) -> None:
    with self._lock:
      if fault.file in self._seen:
        return
      self._seen.add(fault.file)
    logging.warning("%s; %s [%s]", fault, consequence, fault.kind)
