"""jaxpose's own 3D pose dataset in the Human3.6M json layout `jaxpose.data.h36m` reads.

Layout under `root` (the RLE / HybrIK preprocessed format, see `h36m.py`):

  images/s_SS_act_AA_subact_BB_ca_CC/s_SS_act_AA_subact_BB_ca_CC_FFFFFF.jpg
  annotations/Sample_synthetic_Human36M.json    COMPLETE (the generation parameters)

One annotation file holds every subject; `h36m.Human36MFrames` picks a protocol's subjects
from it, as from RLE's files. `num_train_frames` frames go to the train subjects (S1, S5,
S6, S7, S8) and `num_test_frames` to S9 and S11, so protocol 1 tests on S9 + S11 and
protocol 2 trains on S1..S9 and tests on S11. Actions cycle through ids 2..16; RLE's
blocked S9 sequences are never written.

Each frame: a 17-joint Human3.6M skeleton in millimetres (`keypoints.H36M` order; bone
lengths near the dataset's means, random but plausible joint angles, random heading) stands
in a z-up world; a camera 4.2-6 m away at chest height looks at it (R world -> camera, t its
position: X_cam = R (X_world - t), the reader's convention). The figure is painted with the
2D renderer's painter (`synthetic_render._Painter`): bones as tapered limbs whose width
follows the perspective, drawn far to near, each body part in its own hue with brightness
falling with depth (nearer = brighter), so the image carries the depth order a network needs.
The box is the projected joints' bounding box enlarged 1.2x about its centre (what RLE's
preprocessing does), in image pixels [x, y, w, h].

Everything is a pure function of `seed` (frame i draws from `default_rng([seed, i])`).
Crash safety as `synthetic.py`: written into a hidden sibling directory, `COMPLETE` last,
renamed onto `root`; a root with another `COMPLETE` raises `DatasetError`.
"""

import dataclasses
import json
import math
import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np

from jaxpose.data import synthetic_render
from jaxpose.data.keypoints import H36M
from jaxpose.errors import DatasetError

FORMAT_VERSION = 1
ANNOTATION_FILE = "Sample_synthetic_Human36M.json"
TRAIN_SUBJECTS, TEST_SUBJECTS = (1, 5, 6, 7, 8), (9, 11)
_MARKER = "COMPLETE"
_JPEG_QUALITY = 92
_J = {name: i for i, name in enumerate(H36M.names)}

# (joint, parent, length in mm), parents first; near Human3.6M's mean bone lengths.
_BONES = (("right_hip", "pelvis", 132), ("right_knee", "right_hip", 442),
          ("right_ankle", "right_knee", 454), ("left_hip", "pelvis", 132),
          ("left_knee", "left_hip", 442), ("left_ankle", "left_knee", 454),
          ("torso", "pelvis", 233), ("neck", "torso", 257), ("nose", "neck", 121),
          ("head", "nose", 115), ("left_shoulder", "neck", 151), ("left_elbow", "left_shoulder", 278),
          ("left_wrist", "left_elbow", 251), ("right_shoulder", "neck", 151),
          ("right_elbow", "right_shoulder", 278), ("right_wrist", "right_elbow", 251))
# Painted widths in mm and BGR hues per body part.
_WIDTH_MM = {"leg": 120, "arm": 85, "spine": 230, "head": 170}
_HUES = {"right_leg": (60, 60, 230), "left_leg": (230, 90, 60), "right_arm": (60, 200, 240),
         "left_arm": (90, 220, 90), "spine": (200, 200, 200), "head": (140, 170, 230)}


@dataclasses.dataclass(frozen=True)
class Frame:
  file_name: str
  joints_world_mm: np.ndarray  # [17, 3]
  rotation: np.ndarray  # [3, 3] world -> camera
  camera_position_mm: np.ndarray  # [3] (the json's t)
  focal_xy: np.ndarray
  principal_xy: np.ndarray
  box_xywh: np.ndarray
  image_bgr: np.ndarray


def _rot_x(angle: float) -> np.ndarray:
  c, s = math.cos(angle), math.sin(angle)
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(angle: float) -> np.ndarray:
  c, s = math.cos(angle), math.sin(angle)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(angle: float) -> np.ndarray:
  c, s = math.cos(angle), math.sin(angle)
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _bone_directions(rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Unit direction of each bone in the body frame (+x the body's left, +y forward, +z up).

  `_rot_x(a)` swings "down" forward (+y) and "up" backward; `_rot_y(-a)` swings "down" to
  the body's left (+x). Ranges keep poses plausible: hips -80..25 deg forward, knees bend back 0..110,
  shoulders swing -50..130 and lift sideways 0..85, elbows bend forward 0..130, the trunk
  leans -10..25 deg forward and +-12 sideways.
  """
  deg = math.pi / 180
  down, up = np.array([0.0, 0.0, -1.0]), np.array([0.0, 0.0, 1.0])
  trunk = _rot_y(rng.uniform(-12, 12) * deg) @ _rot_x(-rng.uniform(-10, 25) * deg)
  directions = {"torso": trunk @ up, "neck": trunk @ _rot_x(-rng.uniform(-10, 15) * deg) @ up,
                "nose": trunk @ _rot_x(-rng.uniform(40, 70) * deg) @ up,
                "head": trunk @ _rot_x(rng.uniform(10, 40) * deg) @ up}
  for side, sign in (("left", 1.0), ("right", -1.0)):
    directions[f"{side}_hip"] = np.array([sign, 0.0, 0.0])
    directions[f"{side}_shoulder"] = trunk @ np.array([sign, 0.0, 0.0])
    hip_pitch = rng.uniform(-25, 80) * deg
    hip_roll = sign * rng.uniform(-5, 30) * deg
    thigh = _rot_y(-hip_roll) @ _rot_x(hip_pitch)
    directions[f"{side}_knee"] = thigh @ down
    directions[f"{side}_ankle"] = thigh @ _rot_x(-rng.uniform(0, 110) * deg) @ down
    arm_pitch = rng.uniform(-50, 130) * deg
    arm_roll = sign * rng.uniform(0, 85) * deg
    upper = trunk @ _rot_y(-arm_roll) @ _rot_x(arm_pitch)
    directions[f"{side}_elbow"] = upper @ down
    directions[f"{side}_wrist"] = upper @ _rot_x(rng.uniform(0, 130) * deg) @ down
  return directions


def sample_skeleton(rng: np.random.Generator) -> np.ndarray:
  """A random standing pose: [17, 3] world joints in mm, pelvis near (0, 0, 950), z up."""
  directions = _bone_directions(rng)
  body_scale = rng.uniform(0.9, 1.1)
  heading = _rot_z(rng.uniform(0, 2 * math.pi))
  joints = np.zeros((H36M.num_keypoints, 3))
  joints[_J["pelvis"]] = [rng.uniform(-300, 300), rng.uniform(-300, 300), 950 * body_scale]
  for joint, parent, length in _BONES:
    joints[_J[joint]] = joints[_J[parent]] + heading @ directions[joint] * length * body_scale
  return joints


def _camera(rng: np.random.Generator, target_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A camera at chest height 4.2-6 m from `target_mm`, looking at it: (R, position)."""
  azimuth = rng.uniform(0, 2 * math.pi)
  distance = rng.uniform(4200, 6000)
  position = target_mm + np.array([distance * math.cos(azimuth), distance * math.sin(azimuth),
                                   rng.uniform(200, 700)])
  forward = target_mm + rng.normal(0, 80, 3) - position
  forward /= np.linalg.norm(forward)
  right = np.cross(forward, [0.0, 0.0, 1.0])
  right /= np.linalg.norm(right)
  down = np.cross(forward, right)
  return np.stack([right, down, forward]), position


def _body_part(joint: str) -> str:
  for limb in ("leg", "arm"):
    for side in ("left", "right"):
      if joint.startswith(side) and (limb == "arm") == any(
          j in joint for j in ("shoulder", "elbow", "wrist")):
        return f"{side}_{limb}"
  return "head" if joint in ("nose", "head") else "spine"


def _paint(image: np.ndarray, joints_px: np.ndarray, joints_cam: np.ndarray,
           focal: float) -> None:
  """Bones far to near, widths in perspective, brightness falling with depth from the root."""
  painter = synthetic_render._Painter(image, np.zeros(image.shape[:2], np.uint8))
  root_depth = joints_cam[_J["pelvis"], 2]
  bones = sorted(_BONES, key=lambda b: -(joints_cam[_J[b[0]], 2] + joints_cam[_J[b[1]], 2]))
  for joint, parent, _ in bones:
    a, b = _J[parent], _J[joint]
    part = _body_part(joint)
    width_mm = _WIDTH_MM[part.split("_")[-1]] if part != "head" or joint == "head" else 60
    depth = 0.5 * (joints_cam[a, 2] + joints_cam[b, 2]) - root_depth
    shade = float(np.clip(0.7 - 0.45 * depth / 600.0, 0.25, 1.0))
    colour = tuple(int(c * shade) for c in _HUES[part])
    widths = [width_mm * focal / joints_cam[i, 2] for i in (a, b)]
    if joint == "head":  # the skull: a disc around the head joint
      painter.circle(joints_px[b], widths[1] * 0.6, colour)
      continue
    painter.limb(joints_px[a], joints_px[b], widths[0], widths[1], colour)
    # A darker joint mark at the child end so joint positions are visible on a limb.
    painter.circle(joints_px[b], widths[1] * 0.3, tuple(int(c * 0.6) for c in colour))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  base = rng.uniform(40, 200, 3)
  noise = cv2.resize(rng.normal(0, 25, (8, 8, 3)), (size, size), interpolation=cv2.INTER_CUBIC)
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def render_frame(rng: np.random.Generator, image_size: int, file_name: str) -> Frame:
  """One frame whose whole figure (and its 1.2x box) lies inside the square image."""
  focal = np.full(2, 2.0 * image_size) * rng.uniform(0.95, 1.05)
  principal = image_size / 2 + rng.uniform(-0.03, 0.03, 2) * image_size
  for _ in range(100):
    world = sample_skeleton(rng)
    rotation, position = _camera(rng, world[_J["pelvis"]])
    camera = (world - position) @ rotation.T
    projected = camera[:, :2] / camera[:, 2:] * focal + principal
    low, high = projected.min(axis=0), projected.max(axis=0)
    centre, half = (low + high) / 2, (high - low) / 2 * 1.2
    box = np.concatenate([centre - half, 2 * half])
    if box[0] >= 1 and box[1] >= 1 and box[0] + box[2] <= image_size - 2 and (
        box[1] + box[3] <= image_size - 2):
      break
  else:
    raise RuntimeError("no figure fitted the image in 100 draws; image_size too small?")
  image = _background(rng, image_size)
  _paint(image, projected, camera, float(focal[0]))
  return Frame(file_name, world, rotation, position, focal, principal, box, image)


def _frame_names(num_train: int, num_test: int) -> list[tuple[int, str]]:
  """(subject, file name) of every frame: train frames over the train subjects, then test."""
  names = []
  for subjects, count in ((TRAIN_SUBJECTS, num_train), (TEST_SUBJECTS, num_test)):
    for i in range(count):
      subject = subjects[i % len(subjects)]
      action = 2 + (i // len(subjects)) % 15
      # RLE blocks S9 act 13 subact 1 (and subact 2 of acts 5, 10): use the other one.
      subaction = 2 if (subject, action) == (9, 13) else 1
      camera = 1 + (i // (15 * len(subjects))) % 4
      sequence = f"s_{subject:02d}_act_{action:02d}_subact_{subaction:02d}_ca_{camera:02d}"
      names.append((subject, f"{sequence}/{sequence}_{i + 1:06d}.jpg"))
  return names


def _params(num_train: int, num_test: int, seed: int, image_size: int) -> dict:
  return dict(format_version=FORMAT_VERSION, num_train_frames=int(num_train),
              num_test_frames=int(num_test), seed=int(seed), image_size=int(image_size))


def _read_marker(root: Path) -> dict | None:
  try:
    return json.loads((root / _MARKER).read_text())
  except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
    return None


def _write(directory: Path, num_train: int, num_test: int, seed: int, image_size: int) -> None:
  images, annotations = [], []
  for index, (_, file_name) in enumerate(_frame_names(num_train, num_test)):
    frame = render_frame(np.random.default_rng([seed, index]), image_size, file_name)
    path = directory / "images" / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), frame.image_bgr, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
      raise OSError(f"{path}: cv2.imwrite failed")
    images.append(dict(id=index, file_name=file_name, width=image_size, height=image_size))
    annotations.append(dict(
        id=index, image_id=index, bbox=[round(float(v), 3) for v in frame.box_xywh],
        cam_param=dict(R=frame.rotation.tolist(), t=frame.camera_position_mm.tolist(),
                       f=frame.focal_xy.tolist(), c=frame.principal_xy.tolist()),
        keypoints_world=frame.joints_world_mm.tolist()))
  (directory / "annotations").mkdir()
  (directory / "annotations" / ANNOTATION_FILE).write_text(
      json.dumps(dict(images=images, annotations=annotations)))


def ensure_synthetic_h36m(root: str | os.PathLike, *, num_train_frames: int,
                          num_test_frames: int, seed: int, image_size: int) -> Path:
  """Returns `root`, generating the dataset there first unless a complete one is there.

  Raises DatasetError if `root` holds a dataset made with other parameters.
  """
  root = Path(root).expanduser()
  params = _params(num_train_frames, num_test_frames, seed, image_size)
  found = _read_marker(root)
  if found == params:
    return root
  if found is not None or (root.exists() and any(root.iterdir())):
    raise DatasetError(f"{root}: holds {'a dataset made with ' + str(found) if found else 'files'}"
                       f", not the requested synthetic Human3.6M {params}; delete it or pick "
                       "another cache_dir")
  root.parent.mkdir(parents=True, exist_ok=True)
  temp = root.with_name(f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    temp.mkdir()
    _write(temp, num_train_frames, num_test_frames, seed, image_size)
    (temp / _MARKER).write_text(json.dumps(params, sort_keys=True))
    if root.exists() and not any(root.iterdir()):
      root.rmdir()
    try:
      os.rename(temp, root)
    except OSError:
      if _read_marker(root) != params:  # not a concurrent writer of the same dataset
        raise
  finally:
    shutil.rmtree(temp, ignore_errors=True)
  return root
