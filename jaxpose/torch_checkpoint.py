"""Reads PyTorch `.pth` checkpoints without torch and without running anything in them.

`torch.save` writes one of two formats. The zip format (torch >= 1.6) is an archive of
`<name>/data.pkl` (a pickle of the saved object), `<name>/data/<key>` (one raw storage per
key, in the byte order named by `<name>/byteorder`) and bookkeeping files. The legacy format
(torch 0.4 to 1.5, and `_use_new_zipfile_serialization=False` since) is a sequence of
pickles: the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, a sys_info dict,
the object, the list of storage keys; then, for each key in that order, the storage's element
count as an int64 and its bytes, both little-endian on any machine. In both, a tensor is
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` whose
storage is a persistent id `("storage", torch.FloatStorage, key, location, numel)`, plus a
view entry (None since torch 0.4) in the legacy format.

The pickles are read by `jaxpose.torch_unpickler.SafeUnpickler`: an allowlist of what
`torch.load(weights_only=True)` accepts for dense tensors and containers; anything else is
refused before it runs.
"""

import io
import mmap
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from jaxpose.errors import UserError
from jaxpose.torch_unpickler import SafeUnpickler, Storage, check_plain, fail

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
# A state_dict's pickle is a few hundred bytes per tensor; more is not a weight file.
_MAX_PICKLE_BYTES = 1 << 28
# What a damaged pickle or file raises (or an allowed function called with wrong arguments).
_DAMAGED = (pickle.UnpicklingError, zipfile.BadZipFile, zlib.error, OSError, EOFError,
            ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError,
            MemoryError, RecursionError, NotImplementedError)


def _require_stored(path: Path, info: zipfile.ZipInfo) -> None:
  """torch.save stores members uncompressed; a compressed one could inflate far beyond the
  file's size before its declared size is found to be a lie."""
  if info.compress_type != zipfile.ZIP_STORED:
    fail(path, f"{info.filename} is compressed; torch.save stores checkpoint members as is")


def _load_zip(path: Path) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
      fail(path, f"expected one <name>/data.pkl in the archive, found {pickles}")
    prefix = pickles[0][:-len("data.pkl")]
    _require_stored(path, archive.getinfo(pickles[0]))
    if archive.getinfo(pickles[0]).file_size > _MAX_PICKLE_BYTES:
      fail(path, f"{pickles[0]} is over {_MAX_PICKLE_BYTES} bytes, not a state_dict")
    byteorder = "little"
    if f"{prefix}byteorder" in archive.namelist():
      byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
      if byteorder not in ("little", "big"):
        fail(path, f"{prefix}byteorder is {byteorder!r}, not 'little' or 'big'")

    def read_storage(storage: Storage) -> np.ndarray:
      member = f"{prefix}data/{storage.key}"
      try:
        info = archive.getinfo(member)
      except KeyError:
        fail(path, f"storage {storage.key!r} has no {member} in the archive")
      _require_stored(path, info)
      nbytes = storage.numel * storage.dtype.numpy(byteorder).itemsize
      if info.file_size != nbytes:
        fail(path, f"{member} holds {info.file_size} bytes, but {storage.numel} "
                    f"{storage.dtype.name} elements need {nbytes}")
      return np.frombuffer(archive.read(member), np.uint8)

    pickled = io.BytesIO(archive.read(pickles[0]))
    return SafeUnpickler(path, pickled, byteorder, read_storage).load()


def _load_legacy(path: Path, data: mmap.mmap) -> Any:
  """The legacy format (module docstring), read from `data` positioned after the magic
  number. An mmap: reads past the end return what is there, whatever length a damaged
  pickle claims."""

  def header_pickle() -> Any:
    return SafeUnpickler(path, data, "little", None).load()

  if (protocol := header_pickle()) != _LEGACY_PROTOCOL_VERSION:
    fail(path, f"legacy checkpoint protocol {protocol!r}, expected {_LEGACY_PROTOCOL_VERSION}")
  sys_info = header_pickle()
  if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
    # Its data is little-endian, but older torch wrote the element counts in machine order.
    fail(path, "legacy checkpoint written on a big-endian machine (sys_info "
                f"{str(sys_info)[:80]}); re-save it on a little-endian one")
  def bytes_come_later(storage: Storage) -> None:
    # A count the file cannot hold would have its arrays allocated before the bytes are missed.
    if storage.numel * storage.dtype.numpy("little").itemsize > len(data):
      fail(path, f"storage {storage.key!r} of {storage.numel} elements is larger than the file")

  unpickler = SafeUnpickler(path, data, "little", bytes_come_later)
  obj = unpickler.load()
  keys = header_pickle()
  if not (isinstance(keys, list) and all(isinstance(key, str) for key in keys)):
    fail(path, f"the storage key list is {str(keys)[:80]}, not a list of strings")
  if len(set(keys)) != len(keys) or set(keys) != set(unpickler.storages):
    fail(path, f"the storage key list {str(keys)[:80]} does not name each storage of the "
                f"pickle ({str(sorted(unpickler.storages))[:80]}) once")
  for key in keys:
    storage = unpickler.storages[key]
    nbytes = storage.numel * storage.dtype.numpy("little").itemsize
    if len(data) - data.tell() < 8 + nbytes:
      fail(path, f"truncated: storage {key!r} needs 8 + {nbytes} bytes, "
                  f"{len(data) - data.tell()} remain")
    count = int.from_bytes(data.read(8), "little", signed=True)
    if count != storage.numel:
      fail(path, f"storage {key!r} has {count} elements in the data, {storage.numel} in "
                  "the pickle")
    unpickler.fill_storage(key, np.frombuffer(data.read(nbytes), np.uint8))
  return obj


def load(path: str | Path) -> Any:
  """The object `torch.save` wrote to `path` (zip or legacy format), tensors as numpy arrays
  (bfloat16 widened to float32), without importing torch or running any code from the file.

  Raises UserError naming the file: for a refused global (naming it), a file in neither
  format (or torch 0.1's tar format), or any inconsistency between the pickle and the
  storages.
  """
  path = Path(path)
  try:
    if zipfile.is_zipfile(path):
      obj = _load_zip(path)
    else:
      with open(path, "rb") as file:
        if not (size := file.seek(0, io.SEEK_END)):
          fail(path, "empty file, not a PyTorch checkpoint")
        with mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) as data:
          if data[257:262] == b"ustar":
            fail(path, "tar checkpoint format of torch 0.1, not supported; re-save it with a "
                        "newer torch")
          try:
            magic = SafeUnpickler(path, data, "little", None).load()
          except _DAMAGED:
            magic = None
          if magic != _LEGACY_MAGIC_NUMBER:
            fail(path, "not a PyTorch checkpoint (neither torch.save's zip format nor its "
                        "legacy format)")
          obj = _load_legacy(path, data)
  except UserError:
    raise
  except _DAMAGED as error:
    first_line = (str(error).splitlines() or [""])[0][:200]
    fail(path, f"not a readable PyTorch checkpoint ({type(error).__name__}: {first_line})")
  check_plain(path, obj)
  return obj


def state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """Key -> array of a `.pth` holding a state_dict, or a dict with one under "state_dict"
  (training checkpoints); a DataParallel `module.` prefix is removed."""
  path = Path(path)
  obj = load(path)
  if isinstance(obj, dict) and "state_dict" in obj:
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    fail(path, f"holds a {type(obj).__name__}, not a state_dict (a dict of tensors)")
  arrays = {}
  for key, value in obj.items():
    if not isinstance(key, str) or not isinstance(value, np.ndarray):
      fail(path, f"entry {str(key)[:80]!r} is a {type(value).__name__}, not a tensor; a "
                  "state_dict maps names to tensors")
    if key.removeprefix("module.") in arrays:
      fail(path, f"entry {key!r} and one without its 'module.' prefix are both present")
    arrays[key.removeprefix("module.")] = value
  return arrays
