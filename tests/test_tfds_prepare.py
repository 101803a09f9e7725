"""`python -m jaxpose.data.prepare` + `TfdsSource`: the TFDS path gives the raw readers' records.

Every record read back from the ArrayRecord files must equal the raw reader's record with
the same index (keys, Python types, dtypes, values), plus `image_bytes` equal to the image
file's bytes, decoding to the pixels `image_io.read_image` gives for the file. The golden
side is the raw reader on the same files, never the TFDS path itself.
"""

import json
import os
import pickle
import subprocess
import sys

import chex
import cv2
import numpy as np
import pytest

from conftest import REPO
from jaxpose.data import image_io
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import prepare
from jaxpose.data import sources
from jaxpose.data import synthetic
from jaxpose.data import tfds_source
from jaxpose.errors import DatasetError, UserError
from test_mpii_reader import mpii_entries, write_mpii


def _assert_same_record(raw: dict, prepared: dict, where: str) -> None:
  assert list(prepared) == [*raw, "image_bytes"], where
  for key, value in raw.items():
    assert type(prepared[key]) is type(value), (where, key, type(prepared[key]), type(value))
    if isinstance(value, (np.ndarray, np.generic)):
      chex.assert_trees_all_equal_dtypes(prepared[key], value)
      chex.assert_shape(prepared[key], np.shape(value))
      chex.assert_trees_all_equal(prepared[key], value)
    else:
      assert prepared[key] == value, (where, key)
  with open(raw["image_path"], "rb") as f:
    assert prepared["image_bytes"] == f.read(), where


def _decode_bytes(data: bytes) -> np.ndarray:
  """In-memory decode with `image_io.read_image`'s flags (what DecodeImage would run)."""
  image = cv2.imdecode(np.frombuffer(data, np.uint8),
                       cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _assert_split_equal(raw_source, prepared: tfds_source.TfdsSource) -> None:
  assert len(prepared) == len(raw_source) > 0
  for index in range(len(raw_source)):
    raw, record = raw_source[index], prepared[index]
    _assert_same_record(raw, record, f"{prepared.split} record {index}")
    from_file, problem = image_io.read_image(raw["image_path"])
    assert problem is None
    chex.assert_trees_all_equal(_decode_bytes(record["image_bytes"]), from_file)


def _tree_bytes(root) -> dict:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_mpii_with_distinct_images(root) -> None:
  """HRNet-schema MPII train and valid files whose images all differ (one grayscale JPEG),
  so equal bytes and pixels prove the right image is stored with each record."""
  write_mpii(root, name="mpii_train.json")
  write_mpii(root, mpii_entries()[1:4], name="mpii_valid.json")
  rng = np.random.default_rng(0)
  for i, name in enumerate(sorted({e["image"] for e in mpii_entries()})):
    shape = (40 + i, 56, 3) if i != 2 else (40, 56)
    cv2.imwrite(str(root / "images" / name), rng.integers(0, 256, shape, dtype=np.uint8))


def _run_prepare(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jaxpose.data.prepare", *map(str, args)],
                        cwd=REPO, capture_output=True, text=True, timeout=120)


def test_synthetic_coco_records_equal_the_raw_reader_across_shards(tmp_path, monkeypatch):
  root = tmp_path / "synthetic"
  paths = synthetic.generate_coco_synthetic(root, num_train_images=8, num_val_images=2, seed=0,
                                            image_size_hw=(96, 96))
  coco = json.loads(paths.train_annotations.read_text())  # + a crowd region, which is filtered
  coco["annotations"].append({**coco["annotations"][0], "id": 10_000, "iscrowd": 1})
  paths.train_annotations.write_text(json.dumps(coco))
  monkeypatch.setattr(prepare, "SHARD_BYTES", 10_000)  # a few records per ArrayRecord file
  directory = prepare.prepare("coco", root, tmp_path / "tfds", ["train", "val"])
  assert directory == tmp_path / "tfds" / "jaxpose_coco" / "1.0.0"
  assert len(list(directory.glob("jaxpose_coco-train.array_record-*-of-*"))) > 2
  for split in ("train", "val"):
    raw = sources.open_source("coco", root, split, keypoints_lib.COCO)
    prepared = tfds_source.TfdsSource(tmp_path / "tfds", split, keypoints_lib.COCO)
    _assert_split_equal(raw, prepared)
    assert (prepared.scan.skipped_persons, prepared.scan.filtered_persons) == (
        raw.scan.skipped_persons, raw.scan.filtered_persons) == (0, int(split == "train"))
  assert prepared.spec is keypoints_lib.COCO


def test_mpii_cli_and_api_builds_are_identical_and_equal_the_raw_reader(tmp_path):
  root = tmp_path / "mpii"
  _write_mpii_with_distinct_images(root)
  result = _run_prepare("mpii", "--src", root, "--dst", tmp_path / "cli")  # default splits
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().endswith("(train 5, valid 3 records)")
  directory = prepare.prepare("mpii", root, tmp_path / "api", ["train", "valid"])
  assert _tree_bytes(tmp_path / "cli") == _tree_bytes(tmp_path / "api")
  for split in ("train", "valid"):
    _assert_split_equal(sources.open_source("mpii", root, split, keypoints_lib.MPII),
                        tfds_source.TfdsSource(directory, split))
  with pytest.raises(UserError, match=f"{directory}: already prepared; delete it"):
    prepare.prepare("mpii", root, tmp_path / "api", ["train"])


# A fresh process, so nothing else has imported TensorFlow. (Where TensorFlow is not
# installed, as in jaxpose's venv, an import attempt would also fail the build or read.)
_BUILD_AND_READ_WITHOUT_TENSORFLOW = """
import sys
from jaxpose.data import prepare, tfds_source
directory = prepare.prepare("mpii", sys.argv[1], sys.argv[2], ["train"])
source = tfds_source.TfdsSource(directory, "train")
print(sum(len(source[i]["image_bytes"]) > 0 for i in range(len(source))),
      sorted(name for name in sys.modules if name.split(".")[0] == "tensorflow"))
"""


def test_build_and_read_need_no_tensorflow(tmp_path):
  write_mpii(tmp_path / "mpii")
  result = subprocess.run(
      [sys.executable, "-c", _BUILD_AND_READ_WITHOUT_TENSORFLOW, tmp_path / "mpii",
       tmp_path / "tfds"], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["5", "[]"]


class _PersonsPerImage:
  """An image-level source (as bottom-up training needs): a varying person count per
  record, and every value kind the readers produce."""

  def __init__(self, image_dir):
    rng = np.random.default_rng(1)
    self.records = []
    for i, num_persons in enumerate((1, 3, 2, 3)):
      path = image_dir / f"{i:04d}.png"  # not a JPEG: any encoded image is stored as is
      cv2.imwrite(str(path), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
      self.records.append(dict(
          image_path=str(path), image_id=1000 + i, scale=float(rng.uniform(0.5, 2.0)),
          keypoints=rng.uniform(0, 30, (num_persons, 17, 3)).astype(np.float32),
          crowd_index=np.float32(rng.uniform()), num_persons=np.int32(num_persons)))

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    return dict(self.records[index])


def test_varying_shapes_value_kinds_pickling_and_source_errors(tmp_path):
  raw = _PersonsPerImage(tmp_path)
  directory = prepare.write_tfds("persons_per_image", {"train": raw}, tmp_path / "tfds", "coco")
  prepared = tfds_source.TfdsSource(directory, "train")
  for index in range(len(raw)):
    _assert_same_record(raw[index], prepared[index], f"record {index}")
  unpickled = pickle.loads(pickle.dumps(prepared))  # grain worker processes get a copy
  _assert_same_record(raw[3], unpickled[3], "unpickled record 3")
  assert (prepared.scan.skipped_persons, prepared.scan.filtered_persons) == (0, 0)

  with pytest.raises(DatasetError, match=r"no split 'val'; prepared: \['train'\]"):
    tfds_source.TfdsSource(directory, "val")
  with pytest.raises(DatasetError, match="prepared in keypoint layout 'coco', not 'mpii'"):
    tfds_source.TfdsSource(directory, "train", keypoints_lib.MPII)
  with pytest.raises(DatasetError, match="no prepared dataset"):
    tfds_source.TfdsSource(tmp_path / "missing", "train")
  prepare.write_tfds("second", {"train": raw}, tmp_path / "tfds", "coco")
  with pytest.raises(DatasetError, match="holds 2 prepared datasets"):
    tfds_source.TfdsSource(tmp_path / "tfds", "train")


def test_records_the_schema_cannot_hold_are_named(tmp_path):
  raw = _PersonsPerImage(tmp_path)
  raw.records[2]["keypoints"] = raw.records[2]["keypoints"][0]  # [17, 3], not [P, 17, 3]
  with pytest.raises(DatasetError, match="split 'train' record 2 key 'keypoints': numpy_array "
                     "float32 of 2 dimensions, earlier records numpy_array float32 of 3"):
    prepare.write_tfds("bad", {"train": raw}, tmp_path / "tfds", "coco")
  raw.records[2] = {**raw.records[1], "flag": True}
  with pytest.raises(DatasetError, match=r"split 'train' record 2: keys \[.*'flag'\] differ"):
    prepare.write_tfds("bad", {"train": raw}, tmp_path / "tfds", "coco")


@pytest.mark.parametrize("args, status, message", [
    (("mpii", "--dst", "{tmp}/out"), 2,
     "--src: set it to the folder with the dataset's raw files"),
    (("lspet", "--src", "{tmp}", "--dst", "{tmp}/out"), 2,
     "unknown dataset 'lspet'; known: ['coco', 'crowdpose', 'h36m_p1', 'h36m_p2', 'lsp', "
     "'lsp_extended', 'mpii']"),
    (("mpii", "--src", "{tmp}", "--dst", "{tmp}/out", "--split", "valid"), 1,
     "{tmp}/annot/mpii_valid.json: annotation file not found"),
])
def test_bad_command_lines_are_one_line_errors(tmp_path, args, status, message):
  result = _run_prepare(*(a.format(tmp=tmp_path) for a in args))
  assert result.returncode == status
  assert result.stderr == f"jaxpose.data.prepare: error: {message.format(tmp=tmp_path)}\n"
  assert not os.path.exists(tmp_path / "out")


def test_train_pipeline_gives_the_same_batches_from_tfds_as_from_raw_files(tmp_path):
  """`data.source="tfds"` through `pipeline.open_split` and the train transforms: the batches
  equal the raw path's, byte for byte (augmentation included, same seed)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from jaxpose.data import pipeline  # pylint: disable=g-import-not-at-top
  config = default.get_config("smoke")
  config.data.synthetic.cache_dir = str(tmp_path / "cache")
  config.data.synthetic.num_train_images = 12
  raw_files = pipeline.split_files(config.data, "train")
  prepare.prepare("coco", raw_files.annotation_file.parent.parent, tmp_path / "tfds", ["train"])
  raw = pipeline.open_split(config, "train")
  config.data.source, config.data.tfds_dir = "tfds", str(tmp_path / "tfds")
  prepared = pipeline.open_split(config, "train")
  assert isinstance(prepared, tfds_source.TfdsSource)
  batches = [next(iter(pipeline.train_dataset(config, source, 4))) for source in (raw, prepared)]
  chex.assert_trees_all_equal(batches[1], batches[0])
