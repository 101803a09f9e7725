"""LSP and LSP-extended readers: random-access grain sources over `joints.mat` + `images/`.

The two datasets store their 14 joints (README order, `keypoints.LSP`) differently, and
their third value means opposite things (both READMEs call it "visibility"; the code that
trained on them, CPM's `genLSP.m` and pytorch-pose's `miscs/gen_lsp.m`, and HMR's
`lsp_to_tfrecords.py`, read it as below):

  LSP           `joints` [3, 14, 2000], row 3 = 1 if the joint is OCCLUDED, 0 if visible.
                Every joint is located. Images `images/im0001.jpg` ... `im2000.jpg`; the
                standard split is the first 1000 for training, the last 1000 for testing.
  LSP-extended  `joints` [14, 3, 10000], column 3 = 1 if the joint is VISIBLE, 0 if not;
                only visible joints are located ("up to 14 visible joint locations").
                Images `images/im00001.jpg` ...; all of it is training data.

Records use COCO visibility: LSP v = 2 visible / 1 occluded; LSP-extended v = 2 visible /
0 unlabelled (its invisible joints have no reliable position, so x, y are set to 0).
Coordinates are kept as stored: no code that trains on LSP converts them to 0-based.

Neither dataset has a person box. The crop follows the CPM lineage the LSP baselines use
(CPM `genLSP.m` -> pytorch-pose `gen_lsp.m` + `pose/datasets/lsp.py`, bearpaw/pytorch-pose
@edc7aec): the centre is the image centre for LSP (its images are cropped around the
person) and the middle of the visible joints' extent for LSP-extended; the scale is CPM's
`insertMPILikeScale` (`cpm_scale`), enlarged 1.4375x as pytorch-pose's LSP dataset does.
Records carry `center_xy` and `scale_wh = 200 * 1.4375 * scale` (square, pixels), not a box.
"""

import os
import warnings
from pathlib import Path

from absl import logging
import cv2
import numpy as np
import scipy.io

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError

LSP_NUM_IMAGES = 2000
LSP_NUM_TRAIN = 1000
PIXEL_STD = 200.0  # the unit of CPM's scale, as HRNet's
CROP_PADDING = 1.4375  # pytorch-pose `LSP.__getitem__`: s = s * 1.4375

# CPM `insertMPILikeScale` constants: targetDist 41/35, the 35 px reference length, and the
# 368 px box minus a 64 px margin that the visible joints must fit in.
_TARGET_DIST = 41 / 35
_REFERENCE_PX = 35.0
_FIT_PX = 368.0 - 64.0

# CPM's 13 limbs as (joint, parent) in LSP order, from its MPII-order table
# `pa = [2 3 7, 5 4 7, 8 0, 10 11 7, 13 12 7]`. The left side differs from the right (hip->knee
# and knee->hip, ankle->neck; shoulder->elbow, elbow->shoulder, wrist->neck) in the original too.
_CPM_LIMBS = np.array([
    (0, 1), (1, 2), (2, 12), (3, 4), (4, 3), (5, 12), (12, 13),
    (6, 7), (7, 8), (8, 12), (9, 10), (10, 9), (11, 12)])
_CPM_REFERENCE_LIMB = 6  # neck -> head top: every limb is measured in units of it


def cpm_scale(joints_xy: np.ndarray, visible: np.ndarray) -> np.ndarray:
  """CPM's `insertMPILikeScale`: one person scale per image, in units of 200 px.

  joints_xy: [N, 14, 2] (LSP order); visible: [N, 14] bool. For each limb, the median over
  the N images of its length relative to the neck-head length (images where both are
  visible) turns limb lengths into neck-head units; an image's size is the 75% quantile
  (MATLAB's definition) of its visible limbs so converted, / 35; the scale is raised so the
  visible joints span at most 304 px of a 368 px crop at target distance 41/35. The
  medians are pooled over the N images given (CPM pools LSP and LSP-extended together).
  Returns [N] float64; NaN where no visible limb or extent defines a scale.
  """
  child, parent = _CPM_LIMBS[:, 0], _CPM_LIMBS[:, 1]
  lengths = np.linalg.norm(joints_xy[:, child] - joints_xy[:, parent], axis=-1)  # [N, 13]
  limb_visible = visible[:, child] & visible[:, parent]
  reference = lengths[:, _CPM_REFERENCE_LIMB]
  with np.errstate(divide="ignore", invalid="ignore"):
    ratios = np.full(len(_CPM_LIMBS), np.nan)
    for p in range(len(_CPM_LIMBS)):
      both = limb_visible[:, p] & limb_visible[:, _CPM_REFERENCE_LIMB]
      ratio = lengths[both, p] / reference[both]
      ratio = ratio[~np.isnan(ratio)]  # MATLAB `median(ratio(~isnan(ratio)))`
      if ratio.size:
        ratios[p] = np.median(ratio)
    in_reference_units = lengths / ratios
  # NaN-ignoring as MATLAB's quantile; the rest (a NaN size) is dropped by fmax below.
  size = _hazen_quantile(np.where(limb_visible, in_reference_units, np.nan), 0.75) / _REFERENCE_PX
  masked = np.where(visible[..., None], joints_xy, np.nan)
  with np.errstate(invalid="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: images without visible joints
    extent = np.nanmax(masked, axis=1) - np.nanmin(masked, axis=1)  # [N, 2]
  # CPM takes min(304 / x_range, 304 / y_range, targetDist / size) of the zoom, ignoring
  # NaN as MATLAB's min does; in scale units that is this fmax.
  return np.fmax(np.fmax(*(_TARGET_DIST * extent / _FIT_PX).T), size)


def _hazen_quantile(values: np.ndarray, q: float) -> np.ndarray:
  """Per row of [N, M], the q-quantile of its non-NaN values, MATLAB's definition (linear
  between sorted values placed at (k - 0.5) / n; numpy's "hazen"); NaN for an empty row."""
  ordered = np.sort(values, axis=1)  # NaN sorts last
  count = np.sum(~np.isnan(values), axis=1)
  position = np.clip(q * count - 0.5, 0, np.maximum(count - 1, 0))
  low = np.floor(position).astype(int)
  high = np.minimum(low + 1, np.maximum(count - 1, 0))
  rows = np.arange(len(values))
  low_value, high_value = ordered[rows, low], ordered[rows, high]
  result = low_value + (position - low) * (high_value - low_value)
  return np.where(count > 0, result, np.nan)


def load_joints(path: Path, layout: str) -> np.ndarray:
  """`joints` of a LSP ("lsp": [3, K, N]) or LSP-extended ("lspet": [K, 3, N]) file as
  [N, K, 3] float64 (x, y, the file's own flag)."""
  if not path.is_file():
    raise DatasetError(f"{path}: joints file not found")
  try:
    variables = scipy.io.loadmat(str(path))
  except Exception as e:  # scipy raises ValueError, TypeError, OSError... for foreign files
    raise DatasetError(f"{path}: not a MATLAB .mat file scipy can read ({e})") from None
  if "joints" not in variables:
    found = sorted(k for k in variables if not k.startswith("__"))
    raise DatasetError(f"{path}: no variable 'joints' (found {found})")
  joints = np.asarray(variables["joints"])
  if not np.issubdtype(joints.dtype, np.number):
    raise DatasetError(f"{path}: 'joints' holds {joints.dtype}, not numbers")
  expected = "[3, 14, 2000]" if layout == "lsp" else "[14, 3, N]"
  other = "LSP-extended's [14, 3, N]" if layout == "lsp" else "LSP's [3, 14, 2000]"
  if joints.ndim != 3:
    raise DatasetError(f"{path}: 'joints' has shape {list(joints.shape)}, expected {expected}")
  if layout == "lsp" and joints.shape[0] == 3:
    return np.transpose(joints, (2, 1, 0)).astype(np.float64)
  if layout == "lspet" and joints.shape[1] == 3:
    return np.transpose(joints, (2, 0, 1)).astype(np.float64)
  raise DatasetError(f"{path}: 'joints' has shape {list(joints.shape)}, expected {expected}"
                     f" (a file in {other} layout is the other dataset)")


class _LeedsPersons:
  """Shared validation and record access; the subclasses decide flags, splits and centres."""
  layout = ""
  image_name = ""

  def _open(self, joints_file, image_dir, spec: keypoints_lib.KeypointSpec) -> np.ndarray:
    self.annotation_file = Path(joints_file)
    self.image_dir = Path(image_dir)
    self.spec = spec
    joints = load_joints(self.annotation_file, self.layout)
    if joints.shape[1] != spec.num_keypoints:
      raise DatasetError(f"{self.annotation_file}: 'joints' holds {joints.shape[1]} joints per "
                         f"image, layout {spec.dataset!r} expects {spec.num_keypoints}")
    flags = joints[:, :, 2]
    bad = ~np.isin(flags, (0, 1))
    if bad.any():
      n, k = np.argwhere(bad)[0]
      raise DatasetError(f"{self.annotation_file}: 'joints' image {n + 1} joint {k}: flag "
                         f"{flags[n, k]:g}, expected 0 or 1")
    return joints

  def _image_path(self, number: int) -> str:
    return str(self.image_dir / (self.image_name % number))

  def _check_images_exist(self) -> None:
    for record in self.records:
      if not os.path.isfile(record["image_path"]):
        raise DatasetError(f"{record['image_path']}: image of {self.annotation_file} is missing "
                           "on disk")

  def _records(self, joints: np.ndarray, labelled: np.ndarray, visible: np.ndarray,
               centers: np.ndarray, scales: np.ndarray, indices, extra=None) -> list[dict]:
    """One record per image index in `indices` with a finite scale; the rest are dropped."""
    records, undefined = [], []
    for n in indices:
      if not scales[n] > 0:
        undefined.append(n + 1)  # fewer than two visible joints: CPM's scale is undefined
        continue
      keypoints = np.zeros((self.spec.num_keypoints, 3), np.float32)
      keypoints[labelled[n], :2] = joints[n, labelled[n], :2]
      keypoints[:, 2] = np.where(visible[n], 2, np.where(labelled[n], 1, 0))
      bad = labelled[n] & ~np.isfinite(joints[n, :, :2]).all(axis=1)
      if bad.any():
        raise DatasetError(f"{self.annotation_file}: 'joints' image {n + 1} joint "
                           f"{int(np.argmax(bad))}: coordinates are not finite")
      scale_px = PIXEL_STD * CROP_PADDING * scales[n]
      records.append(dict(
          image_path=self._image_path(n + 1), image_id=n + 1, annotation_id=int(n),
          center_xy=centers[n].astype(np.float32), scale_wh=np.full(2, scale_px, np.float32),
          keypoints=keypoints, area=np.float32(scale_px * scale_px),
          **(extra(n) if extra else {})))
    if undefined:
      logging.warning("%s: %d image(s) left out, too few visible joints for a crop scale: %s",
                      self.annotation_file, len(undefined), undefined[:10])
    return records

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    return dict(self.records[index])

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.annotation_file}, {len(self)} persons)"


class LspPersons(_LeedsPersons):
  """The LSP (Leeds Sports Pose) train or test split, one person per image.

  Validates on open: `joints.mat` exists with `joints` [3, K, 2000] for the spec's K and
  0/1 flags; every image of the split exists and decodes (its size gives the centre).
  Records: `image_path`, `image_id` (the image number, 1-based), `annotation_id` (0-based
  column of `joints`), `center_xy`, `scale_wh`, `keypoints` [K, 3], `area` (crop area),
  `image_wh`.
  """
  layout = "lsp"
  image_name = "im%04d.jpg"

  def __init__(self, joints_file: str | os.PathLike, image_dir: str | os.PathLike,
               spec: keypoints_lib.KeypointSpec, split: str):
    if split not in ("train", "test"):
      raise DatasetError(f"{joints_file}: LSP split {split!r}; known: ['test', 'train']")
    joints = self._open(joints_file, image_dir, spec)
    if len(joints) != LSP_NUM_IMAGES:
      raise DatasetError(f"{self.annotation_file}: 'joints' has {len(joints)} images, LSP has "
                         f"{LSP_NUM_IMAGES} (its train/test split is defined on them)")
    visible = joints[:, :, 2] == 0  # LSP: 1 = occluded
    scales = cpm_scale(joints[:, :, :2], visible)  # pooled over both splits, as CPM
    indices = range(LSP_NUM_TRAIN) if split == "train" else range(LSP_NUM_TRAIN, LSP_NUM_IMAGES)
    image_wh = {n: self._image_size(self._image_path(n + 1)) for n in indices}
    centers = np.zeros((len(joints), 2))
    for n, (width, height) in image_wh.items():
      centers[n] = (width / 2, height / 2)  # CPM: objpos = [w/2, h/2] for LSP's cropped images
    labelled = np.ones_like(visible)
    self.records = self._records(joints, labelled, visible, centers, scales, indices,
                                 extra=lambda n: dict(image_wh=np.array(image_wh[n], np.int32)))

  def _image_size(self, path: str) -> tuple[int, int]:
    if not os.path.isfile(path):
      raise DatasetError(f"{path}: image of {self.annotation_file} is missing on disk")
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
      raise DatasetError(f"{path}: cannot decode the image (its size centres the LSP crop)")
    return image.shape[1], image.shape[0]


class LspExtendedPersons(_LeedsPersons):
  """LSP-extended (10,000 training images), one person per image.

  Validates on open: `joints.mat` exists with `joints` [K, 3, N] for the spec's K and 0/1
  flags; every image exists. Records as `LspPersons` without `image_wh`.
  """
  layout = "lspet"
  image_name = "im%05d.jpg"

  def __init__(self, joints_file: str | os.PathLike, image_dir: str | os.PathLike,
               spec: keypoints_lib.KeypointSpec):
    joints = self._open(joints_file, image_dir, spec)
    visible = joints[:, :, 2] == 1  # LSP-extended: 1 = visible
    scales = cpm_scale(joints[:, :, :2], visible)
    centers = np.zeros((len(joints), 2))
    for n in range(len(joints)):
      xy = joints[n, visible[n], :2]
      # CPM: the middle of the visible joints' extent (LSP-extended is uncropped). gen_lsp.m
      # also counts its synthetic pelvis and thorax there even when a hip or shoulder is
      # invisible, i.e. has no position; we leave them out (identical whenever they are visible).
      if len(xy):
        centers[n] = (xy.min(axis=0) + xy.max(axis=0)) / 2
    self.records = self._records(joints, visible, visible, centers, scales, range(len(joints)))
    self._check_images_exist()
