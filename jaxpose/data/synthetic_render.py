"""Draws one synthetic image of articulated people and labels them COCO-style.

`render_image` is the whole public surface; `jaxpose.data.synthetic` turns many of these
into a COCO-format dataset on disk.

Scene: a textured background (smooth noise, gradient, stripes or tiles, plus clutter
shapes), one to three people from a 2D kinematic model (torso, head with face marks,
two-segment arms and legs in random but plausible poses, +-30 degree in-plane rotation,
60..220 px tall at 256 px), random occluders and figures cut off by the border.

Coordinates: keypoints are (x, y) in image pixels with pixel centres at integers (the
centre of column i, row j is (i, j)), as cv2 draws them; a keypoint's pixel is
`floor(xy + 0.5)`. Boxes are [x, y, w, h] covering pixel columns x..x+w-1 and rows
y..y+h-1 (the HRNet reading of COCO boxes). Visibility v: 0 outside the image (x = y = 0),
1 inside but covered by an occluder or a later-drawn person, 2 visible. Self-occlusion
(an arm across the own torso) stays v=2, since the pixel still shows the same person.
"""

import dataclasses
import functools
import math

import cv2
import numpy as np

from jaxpose.data.keypoints import COCO

_KP = {name: i for i, name in enumerate(COCO.names)}

# Body proportions in units of the figure's height (crown to soles), roughly the
# classic 7.5-head canon. The hip centre is the origin; y points down.
_TORSO = 0.30  # hip centre to shoulder centre
_SHOULDER_HALF_WIDTH, _HIP_HALF_WIDTH = 0.11, 0.075
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.17, 0.15, 0.245, 0.235
_NECK = 0.045
_HEAD_RADII = (0.065, 0.08)  # (across, along) the head's axis
# Limb widths (at the proximal joint, at the distal joint) in figure heights.
_WIDTHS = {"upper_arm": (0.055, 0.045), "forearm": (0.045, 0.035),
           "thigh": (0.085, 0.062), "shin": (0.062, 0.045)}
_SKIN_BGR = ((200, 215, 245), (160, 190, 230), (120, 160, 210), (90, 130, 190),
             (60, 95, 150), (40, 65, 105))
_HAIR_BGR = ((20, 20, 25), (30, 50, 90), (40, 80, 140), (120, 170, 210), (150, 150, 150))
_MIN_LABELLED_KEYPOINTS = 3
_MIN_BOX_SIDE = 8  # pixels
_MIN_VISIBLE_FRACTION = 0.15  # of the figure's own drawn area
_SUBPIXEL_BITS = 4  # cv2 `shift`: draw at 1/16 pixel precision


@dataclasses.dataclass(frozen=True)
class PersonLabel:
  """One annotated person. keypoints: [K, 3] float64 (x, y, v), conventions as the module."""
  figure_id: int  # its value in `RenderedImage.owner`
  keypoints: np.ndarray
  box_xywh: tuple[int, int, int, int]
  area: int  # visible silhouette pixels


@dataclasses.dataclass(frozen=True)
class RenderedImage:
  image_bgr: np.ndarray  # [H, W, 3] uint8
  owner: np.ndarray  # [H, W] uint8: 0 background, n = n-th drawn figure, 255 occluder
  persons: list[PersonLabel]  # annotated figures only (tiny or hidden ones are skipped)


# ---------------------------------------------------------------- the kinematic model

def _direction(angle: float) -> np.ndarray:
  """Unit vector `angle` radians from straight down, turning towards +x (image right)."""
  return np.array([math.sin(angle), math.cos(angle)])


def _limb_angles(rng: np.random.Generator, is_arm: bool) -> tuple[float, float, float, float]:
  """(abduction, bend, proximal foreshortening, distal foreshortening), angles in radians.

  Abduction turns the limb away from the body's midline; bend turns the distal segment
  further the same way (negative: back towards the midline). Foreshortening < 1 stands
  for a segment pointing towards the camera (walking, kneeling, reaching forward).
  """
  mode = rng.random()
  if is_arm:
    if mode < 0.45:    # hanging
      abduction, bend = rng.uniform(-10, 35), rng.uniform(-20, 30)
    elif mode < 0.75:  # out to the side or bent at the elbow
      abduction, bend = rng.uniform(20, 110), rng.uniform(-140, 60)
    else:              # raised
      abduction, bend = rng.uniform(100, 170), rng.uniform(-60, 60)
  else:
    if mode < 0.6:     # standing
      abduction, bend = rng.uniform(-6, 15), rng.uniform(-8, 8)
    elif mode < 0.85:  # wide stance or stepping sideways
      abduction, bend = rng.uniform(10, 40), rng.uniform(-45, 30)
    else:              # kicking or sitting-ish
      abduction, bend = rng.uniform(-15, 70), rng.uniform(-70, 70)
  shortening = rng.uniform(0.55, 1.0, size=2) if rng.random() < 0.3 else (1.0, 1.0)
  return math.radians(abduction), math.radians(bend), shortening[0], shortening[1]


def _sample_figure(rng: np.random.Generator) -> dict:
  """A random pose in figure-height units: keypoints [K, 2] plus head geometry.

  The figure faces the camera (yaw within +-25 degrees), so the person's left side is on
  the image's right and the face marks show which way the head turns.
  """
  keypoints = np.zeros((COCO.num_keypoints, 2))
  yaw = math.radians(rng.uniform(-25, 25))
  lean = math.radians(float(np.clip(rng.normal(0, 6), -15, 15)))
  width_scale = math.cos(yaw) * rng.uniform(0.9, 1.1)
  up = np.array([math.sin(lean), -math.cos(lean)])
  shoulder_centre = _TORSO * rng.uniform(0.92, 1.08) * up
  for side, sign in (("left", 1.0), ("right", -1.0)):
    across = sign * np.array([math.cos(lean), math.sin(lean)])
    shoulder = shoulder_centre + _SHOULDER_HALF_WIDTH * width_scale * across
    hip = _HIP_HALF_WIDTH * width_scale * across
    for (root_name, mid_name, end_name), root, (upper, lower), is_arm in (
        (("shoulder", "elbow", "wrist"), shoulder, (_UPPER_ARM, _FOREARM), True),
        (("hip", "knee", "ankle"), hip, (_THIGH, _SHIN), False)):
      abduction, bend, short_upper, short_lower = _limb_angles(rng, is_arm)
      middle = root + upper * short_upper * _direction(sign * abduction)
      keypoints[_KP[f"{side}_{root_name}"]] = root
      keypoints[_KP[f"{side}_{mid_name}"]] = middle
      keypoints[_KP[f"{side}_{end_name}"]] = middle + lower * short_lower * _direction(
          sign * (abduction + bend))

  head_angle = lean + math.radians(rng.uniform(-15, 15))
  head_across = np.array([math.cos(head_angle), math.sin(head_angle)])
  head_down = np.array([-math.sin(head_angle), math.cos(head_angle)])
  head_centre = shoulder_centre - (_NECK + _HEAD_RADII[1]) * head_down
  # Face marks sit on a sphere turned by `yaw`: (azimuth from the front, height), in radii.
  for name, azimuth, height in (("nose", 0, 0.3), ("left_eye", 32, -0.05), ("right_eye", -32, -0.05),
                                ("left_ear", 80, 0.05), ("right_ear", -80, 0.05)):
    x = _HEAD_RADII[0] * math.sin(math.radians(azimuth) + yaw)
    keypoints[_KP[name]] = head_centre + x * head_across + height * _HEAD_RADII[1] * head_down
  return dict(keypoints=keypoints, head_centre=head_centre, head_angle=head_angle,
              shoulder_centre=shoulder_centre, hip_centre=np.zeros(2))


def _to_image(figure: dict, height_px: float, rotation: float, offset_xy: np.ndarray) -> dict:
  """Scales, rotates (radians, clockwise on screen) and moves a figure into image pixels."""
  c, s = math.cos(rotation), math.sin(rotation)
  matrix = height_px * np.array([[c, -s], [s, c]])
  placed = {k: (v @ matrix.T + offset_xy) if isinstance(v, np.ndarray) else v for k, v in figure.items()}
  placed["keypoints"] = np.round(placed["keypoints"], 2)  # what the json stores decides v
  placed["head_angle"] = figure["head_angle"] + rotation
  placed["height_px"] = height_px
  return placed


# ---------------------------------------------------------------- drawing

class _Painter:
  """Draws each shape twice: in colour into the image and as `label` into the owner mask."""

  def __init__(self, image_bgr: np.ndarray, owner: np.ndarray):
    self.image_bgr, self.owner, self.label = image_bgr, owner, 0

  @staticmethod
  def _fixed(points) -> np.ndarray:
    return np.round(np.asarray(points) * (1 << _SUBPIXEL_BITS)).astype(np.int32)

  def polygon(self, points, colour) -> None:
    points = self._fixed(points)
    cv2.fillConvexPoly(self.image_bgr, points, colour, cv2.LINE_AA, _SUBPIXEL_BITS)
    cv2.fillConvexPoly(self.owner, points, self.label, cv2.LINE_8, _SUBPIXEL_BITS)

  def circle(self, centre, radius: float, colour) -> None:
    centre, radius = tuple(self._fixed(centre)), int(self._fixed(max(radius, 0.5)))
    cv2.circle(self.image_bgr, centre, radius, colour, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
    cv2.circle(self.owner, centre, radius, self.label, -1, cv2.LINE_8, _SUBPIXEL_BITS)

  def ellipse(self, centre, radii, angle: float, colour, start: float = 0, end: float = 360) -> None:
    centre, radii = tuple(self._fixed(centre)), tuple(self._fixed(np.maximum(radii, 0.5)))
    angle = math.degrees(angle)
    cv2.ellipse(self.image_bgr, centre, radii, angle, start, end, colour, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
    cv2.ellipse(self.owner, centre, radii, angle, start, end, self.label, -1, cv2.LINE_8, _SUBPIXEL_BITS)

  def limb(self, start, end, width_start: float, width_end: float, colour) -> None:
    """A tapered segment with round ends, so consecutive segments join smoothly."""
    along = np.asarray(end) - start
    normal = np.array([-along[1], along[0]]) / max(np.linalg.norm(along), 1e-6)
    self.polygon([start + normal * width_start / 2, end + normal * width_end / 2,
                  end - normal * width_end / 2, start - normal * width_start / 2], colour)
    self.circle(start, width_start / 2, colour)
    self.circle(end, width_end / 2, colour)


def _random_colour(rng: np.random.Generator) -> tuple[int, ...]:
  return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _jitter(rng: np.random.Generator, colour, amount: int = 15) -> tuple[int, ...]:
  return tuple(int(c) for c in np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, 3), 0, 255))


def _draw_figure(painter: _Painter, figure: dict, rng: np.random.Generator) -> None:
  """Legs, torso, head, then arms on top (arms usually pass in front of the body)."""
  kp, unit = figure["keypoints"], figure["height_px"]
  skin = _jitter(rng, _SKIN_BGR[rng.integers(len(_SKIN_BGR))])
  top, trousers = _random_colour(rng), _random_colour(rng)
  forearm = skin if rng.random() < 0.4 else top
  shin = skin if rng.random() < 0.25 else trousers
  shoes = _jitter(rng, (30, 30, 35), 25)
  hair = _jitter(rng, _HAIR_BGR[rng.integers(len(_HAIR_BGR))])
  width = {part: (a * unit, b * unit) for part, (a, b) in _WIDTHS.items()}

  for side in ("left", "right"):
    hip, knee, ankle = (kp[_KP[f"{side}_{j}"]] for j in ("hip", "knee", "ankle"))
    painter.limb(hip, knee, *width["thigh"], trousers)
    painter.limb(knee, ankle, *width["shin"], shin)
    shin_direction = (ankle - knee) / max(np.linalg.norm(ankle - knee), 1e-6)
    painter.circle(ankle + 0.02 * unit * shin_direction, 0.03 * unit, shoes)

  left_shoulder, right_shoulder = kp[_KP["left_shoulder"]], kp[_KP["right_shoulder"]]
  left_hip, right_hip = kp[_KP["left_hip"]], kp[_KP["right_hip"]]
  # Shoulder and hip corners stick out past the joints, as the deltoids and pelvis do.
  shoulder_out = (left_shoulder - right_shoulder) * 0.12
  hip_out = (left_hip - right_hip) * 0.25
  painter.polygon([right_shoulder - shoulder_out, left_shoulder + shoulder_out,
                   left_hip + hip_out, right_hip - hip_out], top)

  head_centre, head_angle = figure["head_centre"], figure["head_angle"]
  painter.limb(figure["shoulder_centre"], head_centre, 0.05 * unit, 0.045 * unit, skin)
  head_radii = np.array(_HEAD_RADII) * unit
  head_down = np.array([-math.sin(head_angle), math.cos(head_angle)])
  painter.ellipse(head_centre, head_radii, head_angle, skin)
  painter.ellipse(head_centre - 0.3 * head_radii[1] * head_down, head_radii * (1.04, 0.78),
                  head_angle, hair, 180, 360)
  ear_colour, mark_colour = _jitter(rng, np.asarray(skin) * 0.85, 5), (40, 35, 35)
  for name in ("left_ear", "right_ear"):
    painter.circle(kp[_KP[name]], 0.018 * unit, ear_colour)
  for name in ("left_eye", "right_eye"):
    painter.circle(kp[_KP[name]], 0.012 * unit, mark_colour)
  painter.circle(kp[_KP["nose"]], 0.013 * unit, _jitter(rng, np.asarray(skin) * 0.7, 5))

  for side in ("left", "right"):
    shoulder, elbow, wrist = (kp[_KP[f"{side}_{j}"]] for j in ("shoulder", "elbow", "wrist"))
    painter.limb(shoulder, elbow, *width["upper_arm"], top)
    painter.limb(elbow, wrist, *width["forearm"], forearm)
    forearm_direction = (wrist - elbow) / max(np.linalg.norm(wrist - elbow), 1e-6)
    painter.circle(wrist + 0.018 * unit * forearm_direction, 0.028 * unit, skin)


def _draw_occluder(painter: _Painter, rng: np.random.Generator, centre, size: float) -> None:
  colour = _random_colour(rng)
  shape = rng.integers(3)
  if shape == 0:
    half = size * rng.uniform(0.3, 0.7, 2)
    angle = rng.uniform(0, math.pi)
    c, s = math.cos(angle), math.sin(angle)
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    painter.polygon(centre + corners @ np.array([[c, s], [-s, c]]), colour)
  elif shape == 1:
    painter.ellipse(centre, size * rng.uniform(0.25, 0.6, 2), rng.uniform(0, math.pi), colour)
  else:
    points = centre + rng.uniform(-0.6, 0.6, (7, 2)) * size
    painter.polygon(cv2.convexHull(points.astype(np.float32))[:, 0], colour)


@functools.cache
def _pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """(rows, columns) float32 [H, W] each; cached since every image of a split shares it."""
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  ys.flags.writeable = xs.flags.writeable = False
  return ys, xs


def _draw_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """Smooth noise, a gradient, stripes or tiles in random colours, plus clutter shapes."""
  colour_a, colour_b = rng.uniform(0, 255, (2, 3))
  kind = rng.integers(4)
  if kind == 0:
    grid = rng.integers(0, 256, (int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3), dtype=np.uint8)
    image = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
  else:
    ys, xs = _pixel_grid(height, width)
    angle = rng.uniform(0, math.pi)
    along = xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))
    if kind == 1:
      fraction = (along - along.min()) / max(along.max() - along.min(), 1.0)
    elif kind == 2:
      period = np.float32(2 * math.pi / rng.uniform(6, 60))
      fraction = 0.5 + 0.5 * np.sin(along * period + np.float32(rng.uniform(0, 2 * math.pi)))
    else:
      tile = rng.uniform(8, 48)
      fraction = ((xs // tile + ys // tile) % 2).astype(np.float32)
    # colour_a + (colour_b - colour_a) * fraction per channel; cv2 does it 20x faster than
    # numpy broadcasting. The result is never negative, so the `Abs` is a no-op.
    image = cv2.merge([cv2.convertScaleAbs(fraction, alpha=b - a, beta=a)
                       for a, b in zip(colour_a, colour_b)])
  for _ in range(int(rng.integers(0, 9))):
    colour = _random_colour(rng)
    x1, x2 = sorted(rng.integers(0, width, 2))
    y1, y2 = sorted(rng.integers(0, height, 2))
    shape = rng.integers(3)
    if shape == 0:
      cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), colour, -1)
    elif shape == 1:
      cv2.circle(image, (int(x1), int(y1)), int(rng.integers(4, 40)), colour, -1, cv2.LINE_AA)
    else:
      cv2.line(image, (int(x1), int(y1)), (int(x2), int(y2)), colour, int(rng.integers(1, 5)), cv2.LINE_AA)
  return image


# ---------------------------------------------------------------- one image

def _overlap(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over the smaller box's area, for [x1, y1, x2, y2] boxes.

  Not IoU: a small figure standing inside a big one's box has a small IoU but would
  still be mostly hidden.
  """
  inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
  return float(inter / max(min(np.prod(a[2:] - a[:2]), np.prod(b[2:] - b[:2])), 1e-6))


def _place_figures(rng: np.random.Generator, height: int, width: int) -> list[dict]:
  """One to three figures; one whose box overlaps a placed box by over 30% is redrawn."""
  placed, boxes = [], []
  for _ in range(int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))):
    for _attempt in range(10):
      # Log-uniform heights of 60..220 px in a 256 px image.
      height_px = height * math.exp(rng.uniform(math.log(0.23), math.log(0.86)))
      rotation = math.radians(float(np.clip(rng.normal(0, 12), -30, 30)))
      pose = _sample_figure(rng)
      at_origin = _to_image(pose, height_px, rotation, np.zeros(2))["keypoints"]
      corners = np.concatenate([at_origin.min(0), at_origin.max(0)])
      corners += np.array([-1, -1, 1, 1]) * 0.06 * height_px  # limb thickness, head, feet
      size = corners[2:] - corners[:2]
      if rng.random() < 0.75:  # whole figure in view, where it fits
        low = np.minimum(size / 2, [width / 2, height / 2])
        centre = rng.uniform(low, np.array([width, height]) - low)
      else:  # anywhere: often cut off by the border
        centre = rng.uniform(0, 1, 2) * [width, height]
      offset = centre - (corners[:2] + corners[2:]) / 2
      box = corners + np.tile(offset, 2)
      if all(_overlap(box, other) <= 0.3 for other in boxes):
        placed.append(_to_image(pose, height_px, rotation, offset))
        boxes.append(box)
        break
  return placed


def render_image(rng: np.random.Generator, image_size_hw: tuple[int, int]) -> RenderedImage:
  """Draws one synthetic image and labels its persons from the final owner mask."""
  height, width = image_size_hw
  image_bgr = _draw_background(rng, height, width)
  owner = np.zeros((height, width), np.uint8)
  painter = _Painter(image_bgr, owner)
  figures = _place_figures(rng, height, width)
  drawn_area = []
  for label, figure in enumerate(figures, start=1):
    painter.label = label
    _draw_figure(painter, figure, rng)
    drawn_area.append(int(np.count_nonzero(owner == label)))
  painter.label = 255
  for figure in figures:
    if rng.random() < 0.3:
      anchor = figure["keypoints"][rng.integers(COCO.num_keypoints)]
      _draw_occluder(painter, rng, anchor + rng.normal(0, 0.05, 2) * figure["height_px"],
                     figure["height_px"] * rng.uniform(0.12, 0.35))
  if rng.random() < 0.15:
    _draw_occluder(painter, rng, rng.uniform(0, 1, 2) * [width, height], rng.uniform(20, 80))

  persons = []
  for label, figure in enumerate(figures, start=1):
    person = _label_person(label, figure["keypoints"], owner, drawn_area[label - 1])
    if person is not None:
      persons.append(person)

  # Sensor noise and the occasional blur, after labelling: they do not move anything.
  # (Uniform noise: a third the cost of Gaussian, and the network cannot tell.)
  amplitude = int(rng.integers(0, 13))
  noise = rng.integers(-amplitude, amplitude + 1, image_bgr.shape, dtype=np.int16)
  image_bgr = cv2.add(image_bgr, noise, dtype=cv2.CV_8U)  # saturating
  if rng.random() < 0.3:
    image_bgr = cv2.GaussianBlur(image_bgr, (3, 3), 0)
  return RenderedImage(image_bgr, owner, persons)


def _label_person(label: int, keypoints_xy: np.ndarray, owner: np.ndarray,
                  drawn_area: int) -> PersonLabel | None:
  """Visibility, box and area from what is left of figure `label` in the final owner mask."""
  height, width = owner.shape
  pixel = np.floor(keypoints_xy + 0.5).astype(np.int64)
  in_image = (pixel[:, 0] >= 0) & (pixel[:, 0] < width) & (pixel[:, 1] >= 0) & (pixel[:, 1] < height)
  keypoints = np.zeros((len(keypoints_xy), 3))
  for k in np.flatnonzero(in_image):
    uncovered = owner[pixel[k, 1], pixel[k, 0]] == label
    keypoints[k] = (*keypoints_xy[k], 2 if uncovered else 1)
  ys, xs = np.nonzero(owner == label)
  if (np.count_nonzero(keypoints[:, 2]) < _MIN_LABELLED_KEYPOINTS
      or len(xs) < _MIN_VISIBLE_FRACTION * drawn_area):
    return None
  box = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
  if min(box[2:]) < _MIN_BOX_SIDE:
    return None
  return PersonLabel(figure_id=label, keypoints=keypoints, box_xywh=box, area=len(xs))
