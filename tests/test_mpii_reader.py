"""MPII reader on `annot/mpii_<split>.json` files in HRNet's schema, including the failures.

Golden centres, scales and joints come from HRNet's own `MPIIDataset._get_db` (@6f69e46)
run on the same entries (tests/fixtures/mpii_reader_hrnet_db.json; recipe in
/work/parity/mpii/make_fixture.py).
"""

import json

import chex
import cv2
import numpy as np
import pytest

from conftest import REPO
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import mpii
from jaxpose.errors import DatasetError

SPEC = keypoints_lib.MPII
FIXTURE = REPO / "tests" / "fixtures" / "mpii_reader_hrnet_db.json"


def mpii_entries() -> list[dict]:
  """Persons as HRNet's mpii_train.json stores them (values like its first entries):
  joints in 1-based pixels, unlabelled joints at (-1, -1) with joints_vis 0, and one
  person whose centre is the (-1, -1) placeholder HRNet leaves unadjusted."""
  rng = np.random.default_rng(0)
  entries = []
  for i, (image, center, scale) in enumerate([
      ("015601864.jpg", [594.0, 257.0], 3.021046),
      ("015601864.jpg", [952.0, 222.0], 2.472117),
      ("005808361.jpg", [966.0, 340.0], 4.718488),
      ("051423444.jpg", [1030.0, 396.0], 3.139233),
      ("086310343.jpg", [-1.0, -1.0], 1.5)]):
    joints = np.round(rng.uniform(100, 900, (16, 2)), 4)
    visible = np.ones(16, int)
    if i == 3:
      visible[[0, 5]] = 0
      joints[[0, 5]] = -1.0
    entries.append(dict(joints_vis=visible.tolist(), joints=joints.tolist(), image=image,
                        scale=scale, center=center))
  return entries


def write_mpii(root, entries=None, name="mpii_train.json"):
  (root / "annot").mkdir(parents=True, exist_ok=True)
  (root / "images").mkdir(exist_ok=True)
  entries = mpii_entries() if entries is None else entries
  for entry in entries:
    cv2.imwrite(str(root / "images" / entry["image"]), np.zeros((4, 4, 3), np.uint8))
  path = root / "annot" / name
  path.write_text(json.dumps(entries))
  return path


def test_records_equal_hrnet_get_db(tmp_path):
  golden = json.loads(FIXTURE.read_text())
  source = mpii.MpiiPersons(write_mpii(tmp_path), tmp_path / "images", SPEC)
  assert len(source) == len(golden) == 5
  for i, (record, db) in enumerate(zip(source.records, golden)):
    assert record["annotation_id"] == i
    assert record["image_path"] == str(tmp_path / "images" / db["image"])
    assert record["image_id"] == int(db["image"].split(".")[0])
    chex.assert_trees_all_close(record["center_xy"], np.array(db["center"], np.float32), rtol=1e-6)
    # jaxpose keeps scale in pixels: HRNet's scale * 200 (pixel_std).
    chex.assert_trees_all_close(record["scale_wh"], 200 * np.array(db["scale"], np.float32),
                                rtol=1e-6)
    chex.assert_trees_all_close(record["keypoints"][:, :2],
                                np.array(db["joints_3d"], np.float32)[:, :2], rtol=1e-6)
    np.testing.assert_array_equal(record["keypoints"][:, 2] > 0,
                                  np.array(db["joints_3d_vis"])[:, 0] > 0)
  assert set(source.records[3]["keypoints"][:, 2].tolist()) == {0.0, 2.0}
  assert "box_xywh" not in source[0]  # no box: the pipeline must not re-derive the crop


def test_center_and_scale_by_hand(tmp_path):
  entries = mpii_entries()[2:3]  # center (966, 340), scale 4.718488
  record = mpii.MpiiPersons(write_mpii(tmp_path, entries), tmp_path / "images", SPEC)[0]
  chex.assert_trees_all_close(record["center_xy"],
                              np.array([965.0, 340 + 15 * 4.718488 - 1], np.float32))
  chex.assert_trees_all_close(record["scale_wh"], np.full(2, 200 * 1.25 * 4.718488, np.float32))


def test_test_split_has_no_joints(tmp_path):
  entries = [{k: e[k] for k in ("image", "center", "scale")} for e in mpii_entries()]
  path = write_mpii(tmp_path, entries, "mpii_test.json")
  with pytest.raises(DatasetError, match=r"mpii_test.json: entry 0 \(015601864.jpg\): missing "
                     r"field\(s\) \['joints', 'joints_vis'\]"):
    mpii.MpiiPersons(path, tmp_path / "images", SPEC)
  source = mpii.MpiiPersons(path, tmp_path / "images", SPEC, with_joints=False)
  assert len(source) == 5 and not source[0]["keypoints"].any()


def test_missing_and_invalid_files_are_named(tmp_path):
  with pytest.raises(DatasetError, match="mpii_valid.json: annotation file not found"):
    mpii.MpiiPersons(tmp_path / "mpii_valid.json", tmp_path, SPEC)
  path = write_mpii(tmp_path)
  path.write_text(path.read_text()[:-3])
  with pytest.raises(DatasetError, match="mpii_train.json: not valid JSON"):
    mpii.MpiiPersons(path, tmp_path / "images", SPEC)
  path.write_text(json.dumps({"annolist": []}))
  with pytest.raises(DatasetError,
                     match="mpii_train.json: expected a JSON list of persons, found dict"):
    mpii.MpiiPersons(path, tmp_path / "images", SPEC)


def test_missing_field_names_the_entry(tmp_path):
  entries = mpii_entries()
  del entries[1]["scale"]
  with pytest.raises(DatasetError, match=r"mpii_train.json: entry 1 \(015601864.jpg\): missing "
                     r"field\(s\) \['scale'\]"):
    mpii.MpiiPersons(write_mpii(tmp_path, entries), tmp_path / "images", SPEC)


@pytest.mark.parametrize("field, value, message", [
    ("joints", [[1.0, 2.0]] * 14, "entry 2: 'joints' has 14 joints, layout 'mpii' expects 16"),
    ("joints", [[1.0, 2.0, 3.0]] * 16, r"entry 2: 'joints' has shape \(16, 3\), expected \[K, 2\]"),
    ("joints_vis", [1] * 15, r"entry 2: 'joints_vis' has shape \(15,\), expected \[16\]"),
    ("center", [1.0], r"entry 2: 'center' has shape \(1,\), expected \[2\]"),
    ("scale", "big", "entry 2: 'scale' 'big' is not a number"),
    ("joints", [["a", "b"]] * 16, "entry 2: 'joints' holds non-numbers"),
])
def test_wrong_shapes_and_layouts_are_named(tmp_path, field, value, message):
  entries = mpii_entries()
  entries[2][field] = value
  with pytest.raises(DatasetError, match=message):
    mpii.MpiiPersons(write_mpii(tmp_path, entries), tmp_path / "images", SPEC)


def test_wrong_spec_is_an_unknown_layout(tmp_path):
  with pytest.raises(DatasetError,
                     match="entry 0: 'joints' has 16 joints, layout 'lsp' expects 14"):
    mpii.MpiiPersons(write_mpii(tmp_path), tmp_path / "images", keypoints_lib.LSP)


def test_missing_image_and_bad_image_name_are_named(tmp_path):
  path = write_mpii(tmp_path)
  (tmp_path / "images" / "005808361.jpg").unlink()
  with pytest.raises(DatasetError, match="005808361.jpg: image listed in .*mpii_train.json is "
                     "missing on disk"):
    mpii.MpiiPersons(path, tmp_path / "images", SPEC)
  entries = mpii_entries()
  entries[4]["image"] = "frame.jpg"
  with pytest.raises(DatasetError, match=r"entry 4: image 'frame.jpg' is not an MPII image name"):
    mpii.MpiiPersons(write_mpii(tmp_path, entries), tmp_path / "images", SPEC)
