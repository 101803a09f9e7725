"""Reading a dataset prepared by `python -m jaxpose.data.prepare` (TFDS, ArrayRecord files).

`TfdsSource` is a random-access grain source like the raw-file readers
(`jaxpose.data.sources`): record i is the reader's record i, with the same keys, Python
types, dtypes and values, plus `image_bytes`, the image file's original bytes.
`image_path` stays as provenance (the file it was read from when prepared, named in
warnings); it is not opened. Decoding from `image_bytes` is `transforms.DecodeImage`'s job,
with the same checks as for a file.

TFDS's `builder_from_directory(...).as_data_source(split)` reads the files without the
builder's code and without TensorFlow, from wherever TFDS's ArrayRecord reader can open
them (tested on local folders). The image feature is read with `SkipDecoding`: TFDS would
otherwise decode it with its own OpenCV flags, not jaxpose's.
"""

import dataclasses
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError

# The contract between `jaxpose.data.prepare` (writer) and `TfdsSource` (reader). Bump
# RECORD_FORMAT when it changes, so an older prepared dataset is refused, not misread.
RECORD_FORMAT = 1
TFDS_VERSION = "1.0.0"
NAME_PREFIX = "jaxpose_"  # <dst>/jaxpose_<dataset>/<version>/: not TFDS's own `coco` builder
IMAGE_FEATURE = "image"
IMAGE_BYTES_KEY = "image_bytes"


@dataclasses.dataclass(frozen=True)
class PreparedCounts:
  """The raw reader's counts when the split was prepared (its `scan`; 0 for readers that
  skip nothing), so training reports them as it does from the raw files."""
  skipped_persons: int
  filtered_persons: int


class TfdsSource:
  """Random-access source over one split of a prepared dataset.

  directory: the prepared dataset's folder (`<dst>/jaxpose_<dataset>/<version>`, holding
  `dataset_info.json`), or a `<dst>` holding exactly one prepared dataset. spec: the
  keypoint layout the caller expects; None takes the prepared one. Raises DatasetError
  naming the folder for a missing or foreign dataset, an unknown split or another layout.
  """

  def __init__(self, directory: str | os.PathLike, split: str,
               spec: keypoints_lib.KeypointSpec | None = None):
    self.directory = _builder_directory(directory)
    self.annotation_file = self.directory  # what messages name, as for the raw readers
    self.split = split
    builder = tfds.builder_from_directory(self.directory)
    metadata = builder.info.metadata or {}
    if metadata.get("record_format") != RECORD_FORMAT:
      raise DatasetError(f"{self.directory}: not a dataset prepared by jaxpose.data.prepare "
                         f"(record format {metadata.get('record_format')!r}, expected "
                         f"{RECORD_FORMAT}); prepare it again")
    splits = sorted(builder.info.splits)
    if split not in splits:
      raise DatasetError(f"{self.directory}: no split {split!r}; prepared: {splits}")
    layout = metadata["layout"]
    if spec is not None and spec.dataset != layout:
      raise DatasetError(f"{self.directory}: prepared in keypoint layout {layout!r}, not "
                         f"{spec.dataset!r}")
    self.spec = spec or keypoints_lib.get_spec(layout)
    self.dataset = metadata["dataset"]
    self.scan = PreparedCounts(**metadata["counts"][split])
    self._kinds = [tuple(pair) for pair in metadata["record_keys"]]
    features = builder.info.features
    self._dtypes = {key: np.dtype(features[key].np_dtype) for key, _ in self._kinds}
    self._examples = builder.as_data_source(
        split, decoders={IMAGE_FEATURE: tfds.decode.SkipDecoding()})

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index: int) -> dict:
    example = self._examples[index]
    record = {key: self._value(key, kind, example[key]) for key, kind in self._kinds}
    record[IMAGE_BYTES_KEY] = example[IMAGE_FEATURE]
    return record

  def _value(self, key: str, kind: str, value):
    """`value` as the reader gave it; kind: str, bool, int, float (Python), numpy_scalar
    or numpy_array (`prepare.record_schema`)."""
    # TFDS gives text back as bytes and every number as an array (0-d for scalars); the
    # readers' records hold str, Python numbers, numpy scalars or arrays.
    if kind == "str":
      return value.decode("utf-8")
    if kind == "bool":
      return bool(value)
    if kind == "int":
      return int(value)
    if kind == "float":
      return float(value)
    if kind == "numpy_scalar":
      return self._dtypes[key].type(value)
    return np.array(value, self._dtypes[key])  # a writable copy, as the readers' arrays are

  def __repr__(self) -> str:
    return f"TfdsSource({self.directory}, {self.split!r}, {len(self)} records)"


def _builder_directory(directory: str | os.PathLike) -> epath.Path:
  """The folder holding `dataset_info.json`: `directory` itself or its one prepared dataset."""
  if not directory:
    raise DatasetError("no prepared dataset folder given (set it to prepare's output)")
  path = epath.Path(os.path.expanduser(os.fspath(directory)))
  if (path / "dataset_info.json").exists():
    return path
  pattern = f"{NAME_PREFIX}*/{TFDS_VERSION}/dataset_info.json"
  found = sorted(p.parent for p in path.glob(pattern)) if path.is_dir() else []
  if len(found) == 1:
    return found[0]
  if found:
    raise DatasetError(f"{path}: holds {len(found)} prepared datasets "
                       f"{[str(p) for p in found]}; name one of them")
  raise DatasetError(f"{path}: no prepared dataset (dataset_info.json) here or in "
                     f"{NAME_PREFIX}<dataset>/<version>/; run python -m jaxpose.data.prepare")
