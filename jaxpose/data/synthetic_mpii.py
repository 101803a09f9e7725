"""jaxpose's synthetic persons in the MPII layout HRNet reads, derived from the COCO-format set.

Layout under `root` (HRNet's `data/mpii`), readable by `jaxpose.data.mpii` and
`jaxpose.evaluation.mpii_eval`:

  annot/train.json  annot/valid.json   lists of {"image", "center", "scale", "joints" [16, 2],
                                       "joints_vis" [16]}, joints in MATLAB 1-based pixels
  annot/gt_valid.mat                   the valid persons, in file order, as the benchmark's
                                       gt_valid.mat: dataset_joints, jnt_missing [16, N],
                                       pos_gt_src [16, 2, N], headboxes_src [2, 2, N] (1-based)
  images/<9 digits>.jpg                train image i is i, val image i is 500000000 + i
  COMPLETE                             the generation parameters, as JSON

Nothing is rendered twice: the images are hard links to (or copies of) the synthetic COCO
set's JPEGs (`jaxpose.data.synthetic`) and the persons are its annotations, relabelled.

The 16 MPII joints from a figure's COCO-17 labels (0-based pixels; the figure geometry is
`synthetic_render._sample_figure`'s):
  ankles, knees, hips, wrists, elbows, shoulders   the COCO joint of the same name;
  pelvis                                           the middle of the two hips;
  thorax                                           the middle of the two shoulders (the
                                                   renderer's shoulder centre, where the neck
                                                   is drawn from);
  head top, upper neck                             the two ends of the drawn head ellipse's
                                                   long axis, found from the face marks. The
                                                   renderer puts the head centre c at (NECK + R)
                                                   figure heights from the shoulder centre along
                                                   the head axis (R: the head's long radius),
                                                   the ears at azimuth +-80 deg and 0.05 R below
                                                   c, the eyes at +-32 deg and 0.05 R above c,
                                                   on a head turned by the yaw. Both pairs'
                                                   middles leave the axis in proportion to
                                                   cos(azimuth) sin(yaw), so p = a ears + (1 - a)
                                                   eyes with a = cos 32 / (cos 32 - cos 80) is
                                                   on the axis, b R = (2a - 1) 0.05 R below c,
                                                   for any yaw. With d = thorax - p and
                                                   u = |d| / (NECK + (1 - b) R) (the figure's
                                                   height): c = p - b R u d/|d|, top / neck =
                                                   c -/+ R u d/|d|.
A joint is labelled (joints_vis 1) when every COCO joint it is made of is labelled (v 1 or 2:
MPII labels occluded joints too) and it lies inside the image; head top and upper neck also
need both shoulders. Persons without both ears and both shoulders labelled are left out
(the head box, and so PCKh, needs them). The head box is the axis-aligned square of side 2 R
around the head centre. `center` is the middle of the person's COCO box minus HRNet's
15 * scale, so that the reader's shift (`mpii.py`) centres the crop on the box; `scale` is
the box's longer side / 200.

Crash safety as `jaxpose.data.synthetic`: written into a hidden sibling, `COMPLETE` last,
renamed onto `root`; a `root` complete with other parameters raises `DatasetError`.
"""

import dataclasses
import json
import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import scipy.io

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import synthetic
from jaxpose.data import synthetic_render
from jaxpose.errors import DatasetError

FORMAT_VERSION = 1
_MARKER = "COMPLETE"
_VAL_IMAGE_OFFSET = 500_000_000
# The face marks of `_sample_figure`: (azimuth from the front in degrees, height below the
# head centre in head radii) of the ears and the eyes.
_EAR_MARK, _EYE_MARK = (80.0, 0.05), (32.0, -0.05)
_EAR_WEIGHT = (math.cos(math.radians(_EYE_MARK[0]))
               / (math.cos(math.radians(_EYE_MARK[0])) - math.cos(math.radians(_EAR_MARK[0]))))
# Where the weighted mark sits below the head centre, in head radii.
_AXIS_POINT_BELOW_CENTRE = _EAR_WEIGHT * _EAR_MARK[1] + (1 - _EAR_WEIGHT) * _EYE_MARK[1]
_HEAD_RADIUS = synthetic_render._HEAD_RADII[1]  # pylint: disable=protected-access
_NECK = synthetic_render._NECK  # pylint: disable=protected-access
_CENTER_SHIFT = 15.0  # HRNet's MPII reader moves the centre down by 15 * scale
_PIXEL_STD = 200.0
# gt_valid.mat's `dataset_joints` names, in MPII joint order (as mpii_eval reads them).
_GT_VALID_NAMES = ("rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck",
                   "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri")
_COCO = {name: i for i, name in enumerate(keypoints_lib.COCO.names)}
# MPII joints copied from the COCO joint of the same name.
_SAME_NAME = {i: _COCO[name] for i, name in enumerate(keypoints_lib.MPII.names) if name in _COCO}


@dataclasses.dataclass(frozen=True)
class MpiiPaths:
  root: Path
  image_dir: Path
  train_annotations: Path
  val_annotations: Path
  gt_valid: Path


def mpii_paths(root: str | os.PathLike) -> MpiiPaths:
  root = Path(root).expanduser()
  return MpiiPaths(root=root, image_dir=root / "images",
                   train_annotations=root / "annot" / "train.json",
                   val_annotations=root / "annot" / "valid.json",
                   gt_valid=root / "annot" / "gt_valid.mat")


def mpii_joints(coco_keypoints: np.ndarray, image_wh: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """One figure's COCO-17 labels [17, 3] (0-based pixels, COCO v) -> (joints [16, 2]
  0-based pixels, labelled [16] bool, head box [[x1, y1], [x2, y2]] 0-based), or None when
  the head cannot be placed (an ear, eye or shoulder unlabelled). Rule in the module docstring."""
  xy, labelled = coco_keypoints[:, :2].astype(np.float64), coco_keypoints[:, 2] > 0
  mpii = keypoints_lib.MPII.names
  joints, have = np.zeros((16, 2)), np.zeros(16, bool)
  for i, k in _SAME_NAME.items():
    joints[i], have[i] = xy[k], labelled[k]
  for name, (a, b) in (("pelvis", ("left_hip", "right_hip")),
                       ("thorax", ("left_shoulder", "right_shoulder"))):
    i = mpii.index(name)
    joints[i] = (xy[_COCO[a]] + xy[_COCO[b]]) / 2
    have[i] = labelled[_COCO[a]] and labelled[_COCO[b]]
  head_marks = [_COCO[n] for n in ("left_ear", "right_ear", "left_eye", "right_eye",
                                    "left_shoulder", "right_shoulder")]
  if not labelled[head_marks].all():
    return None
  ears = (xy[_COCO["left_ear"]] + xy[_COCO["right_ear"]]) / 2
  eyes = (xy[_COCO["left_eye"]] + xy[_COCO["right_eye"]]) / 2
  on_axis = _EAR_WEIGHT * ears + (1 - _EAR_WEIGHT) * eyes
  d = joints[mpii.index("thorax")] - on_axis  # along the head axis, downwards
  unit = np.linalg.norm(d) / (_NECK + (1 - _AXIS_POINT_BELOW_CENTRE) * _HEAD_RADIUS)
  if unit <= 0:
    return None
  down = d / np.linalg.norm(d)
  centre = on_axis - _AXIS_POINT_BELOW_CENTRE * _HEAD_RADIUS * unit * down
  radius = _HEAD_RADIUS * unit
  joints[mpii.index("head_top")] = centre - radius * down
  joints[mpii.index("upper_neck")] = centre + radius * down
  have[[mpii.index("head_top"), mpii.index("upper_neck")]] = True
  width, height = image_wh
  inside = ((joints[:, 0] >= 0) & (joints[:, 0] <= width - 1) & (joints[:, 1] >= 0)
            & (joints[:, 1] <= height - 1))
  head_box = np.stack([centre - radius, centre + radius])
  return joints, have & inside, head_box


def _entry(image_name: str, annotation: dict, image_wh: tuple[int, int]):
  """(HRNet json entry, head box 1-based) of one COCO annotation, or None (no head)."""
  keypoints = np.asarray(annotation["keypoints"], np.float64).reshape(-1, 3)
  derived = mpii_joints(keypoints, image_wh)
  if derived is None:
    return None
  joints, labelled, head_box = derived
  x, y, w, h = annotation["bbox"]
  scale = max(w, h) / _PIXEL_STD
  # 0-based middle of the box's pixel columns/rows, + 1 for MATLAB, minus the reader's shift.
  center = [x + (w - 1) / 2 + 1, y + (h - 1) / 2 + 1 - _CENTER_SHIFT * scale]
  joints_1 = np.where(labelled[:, None], joints + 1, -1.0)  # HRNet's json: -1 when unlabelled
  entry = dict(image=image_name, center=[round(float(c), 4) for c in center],
               scale=round(float(scale), 6),
               joints=[[round(float(v), 4) for v in j] for j in joints_1],
               joints_vis=[int(v) for v in labelled])
  return entry, head_box + 1


def _link_or_copy(source: Path, target: Path) -> None:
  try:
    os.link(source, target)
  except OSError:  # another filesystem, or links not allowed
    shutil.copyfile(source, target)


def _write_split(coco_file: Path, coco_image_dir: Path, image_dir: Path, offset: int
                 ) -> tuple[list[dict], list[np.ndarray]]:
  coco = json.loads(coco_file.read_text())
  images = {image["id"]: image for image in coco["images"]}
  names = {}
  for image_id, image in images.items():
    names[image_id] = f"{offset + image_id:09d}.jpg"
    _link_or_copy(coco_image_dir / image["file_name"], image_dir / names[image_id])
  entries, head_boxes = [], []
  for annotation in coco["annotations"]:
    image = images[annotation["image_id"]]
    made = _entry(names[image["id"]], annotation, (image["width"], image["height"]))
    if made is not None:
      entries.append(made[0])
      head_boxes.append(made[1])
  return entries, head_boxes


def write_gt_valid(path: Path, entries: list[dict], head_boxes: list[np.ndarray]) -> None:
  """The valid persons as the benchmark's gt_valid.mat (1-based pixels, joints in MPII order)."""
  joints = np.array([e["joints"] for e in entries], np.float64).reshape(-1, 16, 2)
  missing = 1 - np.array([e["joints_vis"] for e in entries], np.uint8).reshape(-1, 16)
  boxes = np.array(head_boxes, np.float64).reshape(-1, 2, 2)
  scipy.io.savemat(str(path), {
      "dataset_joints": np.array([list(_GT_VALID_NAMES)], dtype=object),
      "jnt_missing": missing.T.astype(np.uint8),
      "pos_gt_src": joints.transpose(1, 2, 0),
      "headboxes_src": boxes.transpose(1, 2, 0)})


def _read_marker(root: Path) -> dict | None:
  try:
    return json.loads((root / _MARKER).read_text())
  except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
    return None


def ensure_synthetic_mpii(coco_paths: synthetic.SyntheticPaths, root: str | os.PathLike
                          ) -> MpiiPaths:
  """The MPII layout of the synthetic COCO set at `coco_paths`, written to `root` unless a
  complete one is there; DatasetError if `root` is complete with other parameters."""
  paths = mpii_paths(root)
  params = dict(format_version=FORMAT_VERSION, coco_root=coco_paths.root.name)
  found = _read_marker(paths.root)
  if found == params:
    return paths
  if found is not None or (paths.root.exists() and any(paths.root.iterdir())):
    held = f"a dataset made with {found}" if found else f"files but no {_MARKER} marker"
    raise DatasetError(f"{paths.root}: holds {held}, not the synthetic MPII layout of "
                       f"{coco_paths.root}; delete it or pick another cache_dir")
  paths.root.parent.mkdir(parents=True, exist_ok=True)
  temp = paths.root.with_name(f".{paths.root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    (temp / "annot").mkdir(parents=True)
    (temp / "images").mkdir()
    for coco_file, coco_images, target, offset in (
        (coco_paths.train_annotations, coco_paths.train_images_dir, "train.json", 0),
        (coco_paths.val_annotations, coco_paths.val_images_dir, "valid.json", _VAL_IMAGE_OFFSET)):
      entries, head_boxes = _write_split(coco_file, coco_images, temp / "images", offset)
      (temp / "annot" / target).write_text(json.dumps(entries))
      if target == "valid.json":
        write_gt_valid(temp / "annot" / "gt_valid.mat", entries, head_boxes)
    (temp / _MARKER).write_text(json.dumps(params, sort_keys=True))
    if paths.root.exists() and not any(paths.root.iterdir()):
      paths.root.rmdir()
    try:
      os.rename(temp, paths.root)
    except OSError:
      # Another process placed the same dataset between our check and the rename.
      if _read_marker(paths.root) != params:
        raise
  finally:
    shutil.rmtree(temp, ignore_errors=True)
  return paths
