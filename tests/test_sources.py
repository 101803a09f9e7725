"""`sources.open_source` finds each dataset in its official folder layout."""

import pytest

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import sources
from jaxpose.errors import UserError
from test_crowdpose_reader import write_crowdpose
from test_h36m_reader import write_h36m
from test_lsp_reader import NUM_LSPET, write_lsp, write_lspet
from test_mpii_reader import write_mpii


def _spec(name: str) -> keypoints_lib.KeypointSpec:
  return keypoints_lib.get_spec(sources.LAYOUTS[name])


def test_each_source_opens_its_layout(tmp_path):
  write_mpii(tmp_path / "mpii", name="mpii_valid.json")
  write_lsp(tmp_path / "lsp", numbers=range(1001, 2001))
  write_lspet(tmp_path / "lspet")
  write_crowdpose(tmp_path / "crowdpose")  # json/crowdpose_val.json
  write_h36m(tmp_path / "h36m", name="Sample_64_test_Human36M_protocol_2.json")
  write_h36m(tmp_path / "h36m", name="Sample_trainmin_train_Human36M_protocol_1.json")
  opened = {
      "mpii": sources.open_source("mpii", tmp_path / "mpii", "valid", _spec("mpii")),
      "lsp": sources.open_source("lsp", tmp_path / "lsp", "test", _spec("lsp")),
      "lsp_extended": sources.open_source("lsp_extended", tmp_path / "lspet", "train",
                                          _spec("lsp_extended")),
      "crowdpose": sources.open_source("crowdpose", tmp_path / "crowdpose", "val",
                                       _spec("crowdpose")),
      "h36m_p1": sources.open_source("h36m_p1", tmp_path / "h36m", "test", _spec("h36m_p1")),
      "h36m_p2": sources.open_source("h36m_p2", tmp_path / "h36m", "train", _spec("h36m_p2")),
  }
  assert {name: len(source) for name, source in opened.items()} == {
      "mpii": 5, "lsp": 1000, "lsp_extended": NUM_LSPET, "crowdpose": 2,
      "h36m_p1": 2, "h36m_p2": 6}  # S9 test frame 5 is blocked; P2 train adds S9's other one
  assert {int(r["subject"]) for r in opened["h36m_p1"].records} == {9, 11}
  assert opened["lsp"].records[0]["image_id"] == 1001


def test_unknown_source_split_and_root_are_named(tmp_path):
  with pytest.raises(UserError, match=r"unknown source 'lspet'; known: \['coco', 'crowdpose', "
                     r"'h36m_p1', 'h36m_p2', 'lsp', 'lsp_extended', 'mpii'\]"):
    sources.open_source("lspet", tmp_path, "train", keypoints_lib.LSP)
  with pytest.raises(UserError, match=r"source 'mpii' has no split 'val'; known: \['train', "
                     r"'valid', 'trainval', 'test'\]"):
    sources.open_source("mpii", tmp_path, "val", keypoints_lib.MPII)
  with pytest.raises(UserError, match="config key data.root: set it to the lsp folder"):
    sources.open_source("lsp", "", "train", keypoints_lib.LSP)
