"""Dataset sources by name: a config's `data.source` picks the reader of one on-disk format.

Each source expects, under `data.root`, the layout the official code uses (splits):

  coco          annotations/person_keypoints_<split>.json, <split>/ (e.g. train2017, val2017)
  mpii          annot/mpii_<split>.json (HRNet's), images/ (train, valid, trainval, test)
  lsp           joints.mat [3, 14, 2000], images/im0001.jpg ... (train 1-1000, test 1001-2000)
  lsp_extended  joints.mat [14, 3, 10000], images/im00001.jpg ... (train)
  crowdpose     json/crowdpose_<split>.json (DEKR's), images/ (train, val, test, trainval)
  h36m_p1       annotations/Sample_trainmin_train_Human36M_protocol_2.json (train: S1, 5-8),
                annotations/Sample_64_test_Human36M_protocol_2.json (test: S9, 11), images/
  h36m_p2       the same files with _protocol_1 (train: + S9, test: S11)

(h36m_pN is protocol N as the issue numbers them; RLE's file names number them the other
way round.) MPII and LSP records carry `center_xy`/`scale_wh` instead of `box_xywh`.
"""

import os
from pathlib import Path
from typing import Callable

from jaxpose.data import coco
from jaxpose.data import crowdpose
from jaxpose.data import h36m
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import lsp
from jaxpose.data import mpii
from jaxpose.errors import UserError

Spec = keypoints_lib.KeypointSpec


def _coco(root: Path, split: str, spec: Spec):
  return coco.CocoPersonBoxes(root / "annotations" / f"person_keypoints_{split}.json",
                              root / split, spec)


def _mpii(root: Path, split: str, spec: Spec):
  _check_split("mpii", split, ("train", "valid", "trainval", "test"))
  return mpii.MpiiPersons(root / "annot" / f"mpii_{split}.json", root / "images", spec,
                          with_joints=split != "test")


def _lsp(root: Path, split: str, spec: Spec):
  _check_split("lsp", split, ("train", "test"))
  return lsp.LspPersons(root / "joints.mat", root / "images", spec, split)


def _lsp_extended(root: Path, split: str, spec: Spec):
  _check_split("lsp_extended", split, ("train",))
  return lsp.LspExtendedPersons(root / "joints.mat", root / "images", spec)


def _crowdpose(root: Path, split: str, spec: Spec):
  _check_split("crowdpose", split, ("train", "val", "test", "trainval"))
  return crowdpose.CrowdPoseBoxes(root / "json" / f"crowdpose_{split}.json", root / "images", spec)


def _h36m(protocol: int) -> Callable:
  rle_number = {1: 2, 2: 1}[protocol]  # RLE's file names number the protocols the other way

  def open_h36m(root: Path, split: str, spec: Spec):
    _check_split(f"h36m_p{protocol}", split, ("train", "test"))
    name = "Sample_trainmin_train_Human36M" if split == "train" else "Sample_64_test_Human36M"
    return h36m.Human36MFrames(root / "annotations" / f"{name}_protocol_{rle_number}.json",
                               root / "images", spec, protocol, split)
  return open_h36m


SOURCES = {
    "coco": _coco,
    "mpii": _mpii,
    "lsp": _lsp,
    "lsp_extended": _lsp_extended,
    "crowdpose": _crowdpose,
    "h36m_p1": _h36m(1),
    "h36m_p2": _h36m(2),
}

# The keypoint layout (`keypoints.SPECS` name) each source's files are written in.
LAYOUTS = {"coco": "coco", "mpii": "mpii", "lsp": "lsp", "lsp_extended": "lsp",
           "crowdpose": "crowdpose", "h36m_p1": "h36m", "h36m_p2": "h36m"}


def open_source(name: str, root: str | os.PathLike, split: str, spec: Spec):
  """The random-access source of split `split` of dataset `name` stored under `root`."""
  if name not in SOURCES:
    raise UserError(f"config key data.source: unknown source {name!r}; known: {sorted(SOURCES)}")
  if not root:
    raise UserError(f"config key data.root: set it to the {name} folder")
  return SOURCES[name](Path(os.path.expanduser(root)), split, spec)


def _check_split(name: str, split: str, known: tuple[str, ...]) -> None:
  if split not in known:
    raise UserError(f"source {name!r} has no split {split!r}; known: {list(known)}")
