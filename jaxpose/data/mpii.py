"""MPII reader: a random-access grain source over HRNet's `annot/mpii_<split>.json`.

The json (HRNet/mmpose distribution) is a list of persons, each
`{"image", "center": [2], "scale", "joints": [16, 2], "joints_vis": [16]}` in MATLAB's
1-based pixels, `scale` in units of 200 px. Conversion follows HRNet
`lib/dataset/mpii.py` `_get_db` (@6f69e46) exactly:

  if center_x != -1: center_y += 15 * scale; scale *= 1.25    (keep the feet in the crop)
  center -= 1; joints -= 1                                      (1-based -> 0-based)

MPII has no person box, so records carry that `center_xy` and `scale_wh = 200 * scale`
(square, pixels) instead of `box_xywh`: a top-down pipeline must use them as given, not
re-derive them from a box. Every entry becomes a record, in file order, because the
evaluation against `gt_valid.mat` is by position.
"""

import json
import os
from pathlib import Path

import numpy as np

from jaxpose.data import faults
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError

PIXEL_STD = 200.0  # HRNet's unit of `scale`
_FIELDS = ("image", "center", "scale")
_JOINT_FIELDS = ("joints", "joints_vis")


class MpiiPersons:
  """Random-access source over the persons of one MPII json split.

  Validates on open: the file exists and is a json list; every entry has the fields above
  with `joints` [K, 2] and `joints_vis` [K] for the spec's K; image names are MPII's
  numbers (they become `image_id`); every image exists. `with_joints=False` reads
  `mpii_test.json`, which has no joints (keypoints are then all unlabelled).

  Records: `image_path`, `image_id`, `annotation_id` (position in the file), `center_xy`
  [2], `scale_wh` [2] (pixels), `keypoints` [K, 3] (x, y, v; 0-based pixels; v = 2 where
  `joints_vis` is set, else 0: the json carries no occlusion flag), `area` (the crop area
  `scale_w * scale_h`, as HRNet's OKS-NMS uses for MPII).
  """

  def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
               spec: keypoints_lib.KeypointSpec, with_joints: bool = True):
    self.annotation_file = Path(annotation_file)
    self.image_dir = Path(image_dir)
    self.spec = spec
    entries = _load_json_list(self.annotation_file)
    self.records = [self._record(i, entry, with_joints) for i, entry in enumerate(entries)]
    # Nothing is skipped or filtered: every entry is a record (the evaluation is by position).
    self.scan = faults.AnnotationScan(self.annotation_file, records=self.records)
    for path in sorted({r["image_path"] for r in self.records}):
      if not os.path.isfile(path):
        raise DatasetError(f"{path}: image listed in {self.annotation_file} is missing on disk")

  def _record(self, index: int, entry, with_joints: bool) -> dict:
    where = f"{self.annotation_file}: entry {index}"
    if not isinstance(entry, dict):
      raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
    required = _FIELDS + (_JOINT_FIELDS if with_joints else ())
    missing = [f for f in required if f not in entry]
    if missing:
      raise DatasetError(f"{where} ({entry.get('image')}): missing field(s) {missing}")
    center = _array(entry["center"], f"{where}: 'center'", shape=(2,))
    scale = entry["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
      raise DatasetError(f"{where}: 'scale' {scale!r} is not a number")
    if center[0] != -1:
      center[1] += 15 * scale
      scale *= 1.25
    center -= 1
    num_keypoints = self.spec.num_keypoints
    keypoints = np.zeros((num_keypoints, 3), np.float32)
    if with_joints:
      joints = _array(entry["joints"], f"{where}: 'joints'")
      if joints.ndim != 2 or joints.shape[1] != 2:
        raise DatasetError(f"{where}: 'joints' has shape {joints.shape}, expected [K, 2]")
      if joints.shape[0] != num_keypoints:
        raise DatasetError(f"{where}: 'joints' has {joints.shape[0]} joints, layout "
                           f"{self.spec.dataset!r} expects {num_keypoints}")
      visible = _array(entry["joints_vis"], f"{where}: 'joints_vis'", shape=(num_keypoints,))
      keypoints[:, :2] = joints - 1
      keypoints[:, 2] = np.where(visible > 0, 2, 0)
    scale_wh = np.full(2, PIXEL_STD * scale, np.float32)
    return dict(
        image_path=str(self.image_dir / entry["image"]),
        image_id=_image_id(entry["image"], where),
        annotation_id=index,
        center_xy=center.astype(np.float32),
        scale_wh=scale_wh,
        keypoints=keypoints,
        area=np.float32(scale_wh[0] * scale_wh[1]),
    )

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    return dict(self.records[index])

  def __repr__(self) -> str:
    return f"MpiiPersons({self.annotation_file}, {len(self)} persons)"


def split_annotation_file(root: str | os.PathLike, split: str) -> Path:
  """`annot/<split>.json` (HRNet's names) under the MPII `root`, or mmpose's
  `annot/mpii_<split>.json` when only that exists."""
  annot = Path(root) / "annot"
  hrnet, mmpose = annot / f"{split}.json", annot / f"mpii_{split}.json"
  return mmpose if not hrnet.is_file() and mmpose.is_file() else hrnet


def _load_json_list(path: Path) -> list:
  if not path.is_file():
    raise DatasetError(f"{path}: annotation file not found")
  try:
    entries = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DatasetError(
        f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
  if not isinstance(entries, list):
    raise DatasetError(f"{path}: expected a JSON list of persons, found {type(entries).__name__}")
  return entries


def _array(value, where: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
  try:
    array = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    raise DatasetError(f"{where} holds non-numbers or ragged lists") from None
  if shape is not None and array.shape != shape:
    raise DatasetError(f"{where} has shape {array.shape}, expected {list(shape)}")
  return array


def _image_id(image_name: str, where: str) -> int:
  stem = Path(image_name).stem
  if not stem.isdigit():
    raise DatasetError(f"{where}: image {image_name!r} is not an MPII image name (digits.jpg)")
  return int(stem)
