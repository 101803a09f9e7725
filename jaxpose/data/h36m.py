"""Human3.6M reader: the preprocessed json of the RLE / HybrIK code.

Format (Jeff-sjtu/res-loglikelihood-regression @203dc31 `rlepose/datasets/h36m.py`, files
`annotations/Sample_trainmin_train_Human36M_protocol_{1,2}.json` and
`Sample_64_test_Human36M_protocol_{1,2}.json` from the RLE README's download, images in
`images/s_SS_act_AA_subact_BB_ca_CC/`): a COCO-like object whose `images[i]` and
`annotations[i]` describe the same frame. As RLE, each pair is merged into one dict
(annotation fields win) and read for `file_name`, `width`, `height`, `image_id`, `bbox`
[4] (x, y, w, h), `cam_param` {R [3, 3], t [3] (mm), f [2], c [2] (px)} and
`keypoints_world` [17, 3] (mm); wherever a file keeps each field, the reader finds it.

Per frame, exactly as RLE's `_load_jsons`: camera-space joints R (X_world - t); image
joints by the pinhole projection x = X / (Z + 1e-8) * f_x + c_x; the box through RLE's
xywh -> xyxy (w - 1) and clip to the image; the three S9 sequences RLE blocks (corrupt
ground truth) are left out. Subject and action come from the file name, as RLE's
evaluation takes the action. Subject protocols (constructor `protocol`), in the issue's
numbering:

  protocol 1: train S1, S5, S6, S7, S8; test S9, S11   (RLE's files "_protocol_2", MPJPE)
  protocol 2: train S1, S5, S6, S7, S8, S9; test S11    (RLE's files "_protocol_1", PA-MPJPE)

RLE crops the box without extra padding (its `scale_mult=1`): the generating script already
enlarged it 1.2x around the projected joints.
"""

import os
import re
from pathlib import Path

import numpy as np

from jaxpose.data import coco
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError

# RLE `action_name`, for action ids 2..16 of the file names (id 1 is unused).
ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Posing", "Purchases",
           "Sitting", "SittingDown", "Smoking", "Photo", "Waiting", "Walking", "WalkDog",
           "WalkTogether")
PROTOCOL_SUBJECTS = {
    1: {"train": (1, 5, 6, 7, 8), "test": (9, 11)},
    2: {"train": (1, 5, 6, 7, 8, 9), "test": (11,)},
}
# RLE `H36m.block_list`: sequences left out of every split.
BLOCKED_SEQUENCES = ("s_09_act_05_subact_02_ca", "s_09_act_10_subact_02_ca",
                     "s_09_act_13_subact_01_ca")
_SEQUENCE = re.compile(r"s_(\d+)_act_(\d+)_subact_(\d+)_ca_(\d+)")
_FIELDS = ("file_name", "width", "height", "image_id", "bbox", "cam_param", "keypoints_world")
_CAMERA_SHAPES = {"R": (3, 3), "t": (3,), "f": (2,), "c": (2,)}


class Human36MFrames:
  """Random-access source over the frames of one Human3.6M split and protocol.

  Validates on open: the file exists and is valid JSON with `images` and `annotations`
  lists of equal length; every frame has the fields above with their shapes (17 joints:
  `keypoints.H36M`); its file name names the sequence; the protocol's subjects are all
  present; every image of the split exists.

  Records: `image_path`, `image_id`, `annotation_id` (position in the file), `box_xywh`
  [4], `keypoints` [K, 3] (projected x, y in image pixels; v = 2, every joint is known),
  `joints_cam_mm` [K, 3] (camera space, mm), `focal_xy` [2] and `principal_xy` [2] (px),
  `subject`, `action` (2..16; `ACTIONS[action - 2]`), `root_index` (the pelvis), `area`
  (box w * h), `image_wh`.
  """

  def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
               spec: keypoints_lib.KeypointSpec, protocol: int, split: str):
    self.annotation_file = Path(annotation_file)
    self.image_dir = Path(image_dir)
    self.spec = spec
    if protocol not in PROTOCOL_SUBJECTS or split not in ("train", "test"):
      raise DatasetError(f"{self.annotation_file}: Human3.6M protocol {protocol!r} split "
                         f"{split!r}; known: protocols [1, 2], splits ['test', 'train']")
    if spec.root_index is None:
      raise DatasetError(f"{self.annotation_file}: layout {spec.dataset!r} has no root joint; "
                         "Human3.6M needs 'h36m'")
    self.subjects = PROTOCOL_SUBJECTS[protocol][split]
    data = coco.load_json(self.annotation_file)
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
      raise DatasetError(f"{self.annotation_file}: expected top-level lists 'images' and "
                         "'annotations'")
    if len(images) != len(annotations):
      raise DatasetError(f"{self.annotation_file}: {len(images)} images but {len(annotations)} "
                         "annotations; RLE pairs them by position")
    self.records = []
    for i, (image, annotation) in enumerate(zip(images, annotations)):
      record = self._record(i, image, annotation)
      if record is not None:
        self.records.append(record)
    missing = sorted(set(self.subjects) - {r["subject"] for r in self.records})
    if missing:
      raise DatasetError(f"{self.annotation_file}: no frames of subject(s) {missing}, which "
                         f"protocol {protocol} {split} uses (subjects {list(self.subjects)})")
    for path in sorted({r["image_path"] for r in self.records}):
      if not os.path.isfile(path):
        raise DatasetError(f"{path}: image listed in {self.annotation_file} is missing on disk")

  def _record(self, i: int, image, annotation) -> dict | None:
    where = f"{self.annotation_file}: images[{i}] / annotations[{i}]"
    if not isinstance(image, dict) or not isinstance(annotation, dict):
      raise DatasetError(f"{where}: not JSON objects")
    frame = {**image, **annotation}
    missing = [f for f in _FIELDS if f not in frame]
    if missing:
      raise DatasetError(f"{where}: missing field(s) {missing}")
    where = f"{where} ({frame['file_name']})"
    sequence = _SEQUENCE.search(str(frame["file_name"]))
    if sequence is None:
      raise DatasetError(f"{where}: 'file_name' does not name a Human3.6M sequence "
                         "(s_SS_act_AA_subact_BB_ca_CC)")
    subject, action = int(sequence[1]), int(sequence[2])
    blocked = any(name in frame["file_name"] for name in BLOCKED_SEQUENCES)
    if blocked or subject not in self.subjects:
      return None
    camera = frame["cam_param"]
    if not isinstance(camera, dict) or any(k not in camera for k in _CAMERA_SHAPES):
      raise DatasetError(f"{where}: 'cam_param' must hold {sorted(_CAMERA_SHAPES)}")
    # float32 as RLE reads them; the projection itself runs in float64, as RLE's.
    R, t, f, c = (_array(camera[k], shape, f"{where}: 'cam_param.{k}'").astype(np.float32)
                  .astype(np.float64) for k, shape in _CAMERA_SHAPES.items())
    world = _array(frame["keypoints_world"], None, f"{where}: 'keypoints_world'")
    if world.shape != (self.spec.num_keypoints, 3):
      raise DatasetError(f"{where}: 'keypoints_world' has shape {list(world.shape)}, layout "
                         f"{self.spec.dataset!r} expects [{self.spec.num_keypoints}, 3]")
    joints_cam = (world - t) @ R.T
    keypoints = np.full((self.spec.num_keypoints, 3), 2, np.float32)
    keypoints[:, :2] = joints_cam[:, :2] / (joints_cam[:, 2:] + 1e-8) * f + c
    width = _positive_int(frame["width"], f"{where}: 'width'")
    height = _positive_int(frame["height"], f"{where}: 'height'")
    box = _rle_box(_array(frame["bbox"], (4,), f"{where}: 'bbox'"), width, height)
    if isinstance(frame["image_id"], bool) or not isinstance(frame["image_id"], int):
      raise DatasetError(f"{where}: 'image_id' {frame['image_id']!r} is not an integer")
    return dict(
        image_path=str(self.image_dir / frame["file_name"]),
        image_id=frame["image_id"],
        annotation_id=i,
        box_xywh=box,
        keypoints=keypoints,
        joints_cam_mm=joints_cam.astype(np.float32),
        focal_xy=f.astype(np.float32),
        principal_xy=c.astype(np.float32),
        subject=np.int32(subject),
        action=np.int32(action),
        root_index=np.int32(self.spec.root_index),
        area=np.float32(box[2] * box[3]),
        image_wh=np.array([width, height], np.int32),
    )

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    return dict(self.records[index])

  def __repr__(self) -> str:
    return f"Human36MFrames({self.annotation_file}, {len(self)} frames)"


def _rle_box(xywh: np.ndarray, width: int, height: int) -> np.ndarray:
  """RLE's `bbox_clip_xyxy(bbox_xywh_to_xyxy(bbox))` as (x, y, x2 - x, y2 - y) float32."""
  x1, y1 = xywh[:2]
  x2, y2 = x1 + max(xywh[2] - 1, 0), y1 + max(xywh[3] - 1, 0)
  x1, x2 = (min(width - 1, max(0, v)) for v in (x1, x2))
  y1, y2 = (min(height - 1, max(0, v)) for v in (y1, y2))
  return np.array([x1, y1, x2 - x1, y2 - y1], np.float32)


def _array(value, shape: tuple[int, ...] | None, where: str) -> np.ndarray:
  try:
    array = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    raise DatasetError(f"{where} holds non-numbers or ragged lists") from None
  if shape is not None and array.shape != shape:
    raise DatasetError(f"{where} has shape {list(array.shape)}, expected {list(shape)}")
  if not np.all(np.isfinite(array)):
    raise DatasetError(f"{where} holds NaN or infinite values")
  return array


def _positive_int(value, where: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
    raise DatasetError(f"{where} {value!r} is not a positive integer")
  return int(value)
