"""`python -m jaxpose.data.prepare DATASET --src DIR --dst DIR [--split NAME ...]`: a
dataset's raw files as a TFDS dataset in the ArrayRecord format, read by `TfdsSource`.

  python -m jaxpose.data.prepare coco --src /data/coco --dst /data/tfds
  python -m jaxpose.data.prepare mpii --src /data/mpii --dst /data/tfds --split train

Each split is opened by the dataset's own reader (`sources.open_source`: the same
validation, filters and conversions as training from the raw files) and each of its
records becomes one example, in reader order: one per person box for the top-down
readers (all current readers; an image-level source for bottom-up training would give
one per image, its varying person count stored as a None dimension). The image is stored
as the file's original bytes in a `tfds.features.Image` feature, not re-encoded (a person
box repeats its image's bytes). Every other value becomes a `Text` feature (str) or a
`Tensor` of its dtype and shape with `Encoding.BYTES`: a plain tf.Example keeps floats as
float32 and ints as int64, BYTES keeps every dtype exact. Each key's Python kind is kept
in the dataset's metadata, so `TfdsSource` gives back records equal to the reader's.
Default splits: `DEFAULT_SPLITS`.

Output: `<dst>/jaxpose_<dataset>/<version>/` (`dataset_info.json`, `features.json`,
`metadata.json`, `<name>-<split>.array_record-NNNNN-of-NNNNN`, about `SHARD_BYTES` each).
The same files and splits give byte-identical output.

No TensorFlow is needed, and this rules out TFDS's builders: `store_as_tfds_dataset`
tests `isinstance(x, tf.data.Dataset)`, and a `GeneratorBasedBuilder` sorts examples
through on-disk buckets written with `tf.io.gfile` once a split passes 1 GB (the memory
buffer of TFDS 4.9.10's shuffler, used even with shuffling disabled). So the records are
serialised by the TFDS features themselves, written in order with TFDS's ArrayRecord file
adapter, and described by `tfds.folder_dataset.write_metadata` (TFDS's route for files
written by other tools).
"""

import functools
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Mapping, Sequence

from absl import app
from absl import flags
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import sources
from jaxpose.data import tfds_source
from jaxpose.errors import DatasetError, UserError

# The official splits of each dataset (`sources` lists every split a reader knows).
DEFAULT_SPLITS = {
    "coco": ("train2017", "val2017"),
    "mpii": ("train", "valid"),
    "lsp": ("train", "test"),
    "lsp_extended": ("train",),
    "crowdpose": ("train", "val", "test"),
    "h36m_p1": ("train", "test"),
    "h36m_p2": ("train", "test"),
}
# Target size of one ArrayRecord file; a split's records are divided evenly by count.
SHARD_BYTES = 1 << 30

def _kind_and_feature(value, where: str) -> tuple[str, np.dtype | None, tuple]:
  """(kind, dtype, shape) of one record value; dtype None for text."""
  if isinstance(value, str):
    return "str", None, ()
  if isinstance(value, bool):  # before int: bool is an int subclass
    return "bool", np.dtype(np.bool_), ()
  if isinstance(value, int):
    return "int", np.dtype(np.int64), ()
  if isinstance(value, float):
    return "float", np.dtype(np.float64), ()
  if isinstance(value, (np.generic, np.ndarray)) and value.dtype.kind in "biuf":
    return ("numpy_scalar" if isinstance(value, np.generic) else "numpy_array",
            value.dtype, value.shape)
  raise DatasetError(f"{where}: a {type(value).__name__} {getattr(value, 'dtype', '')} "
                     "cannot be stored as a TFDS feature")


def record_schema(splits: Mapping[str, object]) -> tuple[list[tuple[str, str]], dict]:
  """The record keys with their kinds, and their features, over every record of every
  split; a dimension that differs between records becomes None. Raises DatasetError
  naming the split, record and key where keys, kinds, dtypes or ranks disagree."""
  keys, found = None, {}
  for split, source in splits.items():
    for index in range(len(source)):
      record, where = source[index], f"split {split!r} record {index}"
      if keys is None:
        keys = list(record)
        if "image_path" not in record or tfds_source.IMAGE_FEATURE in record:
          raise DatasetError(f"{where}: records need 'image_path' and no key "
                             f"{tfds_source.IMAGE_FEATURE!r}; found {keys}")
      if list(record) != keys:
        raise DatasetError(f"{where}: keys {list(record)} differ from the first record's {keys}")
      for key, value in record.items():
        kind, dtype, shape = _kind_and_feature(value, f"{where} key {key!r}")
        if key not in found:
          found[key] = (kind, dtype, shape)
        elif found[key][:2] != (kind, dtype) or len(found[key][2]) != len(shape):
          first_kind, first_dtype, first_shape = found[key]
          raise DatasetError(f"{where} key {key!r}: {kind} {dtype} of {len(shape)} dimensions, "
                             f"earlier records {first_kind} {first_dtype} of {len(first_shape)}")
        else:
          found[key] = (kind, dtype,
                        tuple(a if a == b else None for a, b in zip(found[key][2], shape)))
  features = {key: tfds.features.Text() if dtype is None else
               tfds.features.Tensor(shape=shape, dtype=dtype,
                                    encoding=tfds.features.Encoding.BYTES)
              for key, (_, dtype, shape) in found.items()}
  return [(key, found[key][0]) for key in keys], features


def _image_bytes(path: str) -> bytes:
  try:
    return Path(path).read_bytes()
  except OSError as e:
    raise DatasetError(f"{path}: cannot read the image ({e.strerror or e})") from None


def _write_split(split: str, source, features: tfds.features.FeaturesDict,
                 template: tfds.core.ShardedFileTemplate) -> tfds.core.SplitInfo:
  """Writes `source`'s records in order into ArrayRecord files of about SHARD_BYTES."""
  image_bytes = sum(os.path.getsize(source[i]["image_path"]) for i in range(len(source)))
  num_shards = min(len(source), max(1, -(-image_bytes // SHARD_BYTES)))
  bounds = [len(source) * shard // num_shards for shard in range(num_shards + 1)]
  template = template.replace(split=split)
  serializer = tfds.core.example_serializer.ExampleSerializer(features.get_serialized_info())
  written = []

  def serialized(begin: int, end: int):
    for index in range(begin, end):
      record = source[index]
      example = {**record, tfds_source.IMAGE_FEATURE: _image_bytes(record["image_path"])}
      # A tf.Example holds its features in a proto map, which protobuf serialises in hash
      # order (string hashes differ between processes) unless asked to be deterministic.
      data = serializer.get_tf_example(features.encode_example(example)).SerializeToString(
          deterministic=True)
      written.append(len(data))
      yield None, data  # (key, example): the adapter writes in the order given

  adapter = tfds.core.file_adapters.ADAPTER_FOR_FORMAT[tfds.core.FileFormat.ARRAY_RECORD]
  for shard in range(num_shards):
    adapter.write_examples(template.sharded_filepath(shard_index=shard, num_shards=num_shards),
                           serialized(bounds[shard], bounds[shard + 1]))
  return tfds.core.SplitInfo(name=split, shard_lengths=np.diff(bounds).tolist(),
                             num_bytes=sum(written), filename_template=template)


def write_tfds(dataset: str, splits: Mapping[str, object], dst: str | os.PathLike,
               layout: str) -> epath.Path:
  """Writes the opened sources `splits` (split name -> reader) as one TFDS dataset under
  `dst`; returns its folder. Raises UserError if that folder exists already.

  Written into a hidden sibling folder and renamed into place at the end, so the folder
  is either absent or complete.
  """
  name = f"{tfds_source.NAME_PREFIX}{dataset}"
  directory = epath.Path(os.path.expanduser(os.fspath(dst))) / name / tfds_source.TFDS_VERSION
  if directory.exists():
    raise UserError(f"{directory}: already prepared; delete it or choose another --dst")
  record_keys, features = record_schema(splits)
  features[tfds_source.IMAGE_FEATURE] = tfds.features.Image()
  features = tfds.features.FeaturesDict(features)
  counts = {split: {kind: int(getattr(getattr(source, "scan", None), kind, 0))
                    for kind in ("skipped_persons", "filtered_persons")}
            for split, source in splits.items()}
  metadata = dict(record_format=tfds_source.RECORD_FORMAT, dataset=dataset, layout=layout,
                  record_keys=record_keys, counts=counts)
  temp = directory.parent / f".{directory.name}.incomplete-{uuid.uuid4().hex[:8]}"
  temp.mkdir(parents=True)
  try:
    template = tfds.core.ShardedFileTemplate(data_dir=temp, dataset_name=name,
                                             filetype_suffix="array_record")
    split_infos = [_write_split(split, source, features, template)
                   for split, source in splits.items()]
    # check_data=False: that check reads an example back through tf.data.
    tfds.folder_dataset.write_metadata(
        data_dir=temp, features=features, split_infos=split_infos, filename_template=template,
        version=tfds_source.TFDS_VERSION, check_data=False, disable_shuffling=True,
        metadata=tfds.core.MetadataDict(metadata),
        description=f"Records of jaxpose's {dataset} reader; images as their original bytes.")
    temp.rename(directory)
  finally:
    if temp.exists():
      temp.rmtree()
  return directory


def prepare(dataset: str, src: str | os.PathLike | None, dst: str | os.PathLike | None,
            splits: Sequence[str] = ()) -> epath.Path:
  """Reads `splits` (default: `DEFAULT_SPLITS[dataset]`) of `dataset` under `src` with its
  reader and writes them as a TFDS dataset under `dst`; returns its folder."""
  if dataset not in sources.SOURCES:
    raise UserError(f"unknown dataset {dataset!r}; known: {sorted(sources.SOURCES)}")
  if not src:
    raise UserError("--src: set it to the folder with the dataset's raw files")
  if not os.path.isdir(os.path.expanduser(os.fspath(src))):
    raise UserError(f"--src {src}: not a folder")
  if not dst:
    raise UserError("--dst: set it to the folder to write the TFDS dataset under")
  splits = list(splits) or list(DEFAULT_SPLITS[dataset])
  for split in splits:
    if not re.fullmatch(r"\w+", split) or splits.count(split) > 1:
      raise UserError(f"--split {split!r}: give each split once, as a name of letters, digits "
                      "and '_'")
  spec = keypoints_lib.get_spec(sources.LAYOUTS[dataset])
  opened = {split: sources.open_source(dataset, src, split, spec) for split in splits}
  return write_tfds(dataset, opened, dst, spec.dataset)


def _fail(message: str, status: int = 2) -> None:
  print(f"jaxpose.data.prepare: error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag is one line that names it."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])


def main(argv: list[str], src: flags.FlagHolder, dst: flags.FlagHolder,
         split: flags.FlagHolder) -> None:
  if len(argv) != 2:
    _fail(f"give one DATASET (one of {sorted(sources.SOURCES)}), then --src DIR --dst DIR")
  try:
    directory = prepare(argv[1], src.value, dst.value, split.value or ())
  except DatasetError as e:
    _fail(str(e), status=1)
  except UserError as e:
    _fail(str(e))
  info = tfds.builder_from_directory(directory).info
  sizes = ", ".join(f"{name} {info.splits[name].num_examples}" for name in info.splits)
  print(f"jaxpose.data.prepare: wrote {directory} ({sizes} records)", flush=True)


def cli() -> None:
  # Flags are defined here, not at import: `jaxpose.data.check` defines its own --split,
  # and importing both modules (as the test suite does) must not clash.
  src = flags.DEFINE_string("src", None, "Folder with the dataset's raw files, in the layout "
                            "`jaxpose.data.sources` documents.")
  dst = flags.DEFINE_string("dst", None, "Folder to write the TFDS dataset under.")
  split = flags.DEFINE_multi_string("split", None, "Split to prepare; repeat for several. "
                                    "Default: the dataset's official splits.")
  app.run(functools.partial(main, src=src, dst=dst, split=split), flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
