"""The unpickler of `jaxpose.torch_checkpoint`: builds numpy arrays from a `.pth` file's
pickles and runs nothing else.

A pickle may name any importable callable and call it, so `SafeUnpickler.find_class` is an
allowlist of what `torch.load(weights_only=True)` accepts for dense tensors and plain
containers, each mapped to a numpy stand-in: the tensor rebuild functions build numpy arrays
from the storage bytes; storage types and torch dtypes become numpy dtypes; OrderedDict,
set, bytes stay themselves. Any other global (`os.system`, `builtins.eval`, a model class)
is refused with a UserError naming it before it is imported, so nothing of the file runs.
Offsets, sizes and strides are checked against the storage's element count when a tensor is
unpickled. A legacy file's storage bytes follow its pickle, so its arrays are allocated then
and filled when the bytes are read, each storage's count checked against the pickle's first.
"""

import codecs
import collections
import dataclasses
import functools
import math
import pickle
from pathlib import Path
from typing import Any, Callable, NoReturn

import numpy as np

from jaxpose.errors import UserError

# bfloat16 is read as its 16 bits and widened to float32 (the top half of a float32).
_BFLOAT16 = "bfloat16"
# torch storage class / dtype name -> numpy dtype name.
_STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": _BFLOAT16,
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "ComplexFloatStorage": "c8",
    "ComplexDoubleStorage": "c16", "UntypedStorage": "u1",
}
_TORCH_DTYPES = {
    "float32": "f4", "float64": "f8", "float16": "f2", "bfloat16": _BFLOAT16, "int64": "i8",
    "int32": "i4", "int16": "i2", "int8": "i1", "uint8": "u1", "uint16": "u2", "uint32": "u4",
    "uint64": "u8", "bool": "?", "complex64": "c8", "complex128": "c16",
}
def _refuse_state(self, state: Any) -> NoReturn:
  raise pickle.UnpicklingError(f"the pickle sets the state of a {type(self).__name__}")


@dataclasses.dataclass(frozen=True, slots=True)
class _DType:
  """A storage type or torch dtype named in the pickle: the numpy dtype of its bytes.
  Frozen, and the pickle's BUILD opcode (which calls `__setstate__`) is refused."""
  name: str
  __setstate__ = _refuse_state

  def numpy(self, byteorder: str) -> np.dtype:
    kind = "u2" if self.name == _BFLOAT16 else self.name
    return np.dtype(kind).newbyteorder("<" if byteorder == "little" else ">")

  def returned(self) -> np.dtype:
    """The dtype of the arrays `load` returns: native byte order, bfloat16 widened."""
    return np.dtype(np.float32 if self.name == _BFLOAT16 else self.name)


@dataclasses.dataclass(frozen=True, slots=True)
class Storage:
  """A storage the pickle names: `numel` elements of `dtype`, its bytes stored under `key`."""
  key: str
  dtype: _DType
  numel: int
  __setstate__ = _refuse_state


def fail(path: Path, what: str) -> NoReturn:
  raise UserError(f"{path}: {what}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _copy_view(array: np.ndarray, dtype: _DType, byteorder: str, offset: int,
               stride: tuple[int, ...], storage_bytes: np.ndarray) -> None:
  """Fills `array` with the (offset, stride in elements) view of a storage's raw bytes read
  as `dtype`; the bounds were checked against the storage's element count before."""
  values = storage_bytes.view(dtype.numpy(byteorder))
  view = np.lib.stride_tricks.as_strided(
      values[offset:] if array.size else values[:0], shape=array.shape,
      strides=tuple(s * values.dtype.itemsize for s in stride), writeable=False)
  if dtype.name == _BFLOAT16:
    array[...] = (view.astype(np.uint32) << 16).view(np.float32)
  else:
    array[...] = view


class SafeUnpickler(pickle.Unpickler):
  """Unpickles one pickle of a torch checkpoint into numpy arrays and plain containers.

  `read_storage(storage)` returns a storage's raw bytes (uint8) when it is first named, or
  None if they come later (legacy), to be given to `fill_storage`; without it a persistent
  id is refused (the legacy header pickles have none).
  """

  def __init__(self, path: Path, file: Any, byteorder: str,
               read_storage: Callable[[Storage], np.ndarray | None] | None):
    # utf-8, as torch.load: Python 2 pickles (legacy files) store str as bytes.
    super().__init__(file, encoding="utf-8")
    self.path, self.byteorder, self.read_storage = path, byteorder, read_storage
    self.storages: dict[str, Storage] = {}
    self.storage_bytes: dict[str, np.ndarray] = {}
    self.unfilled: dict[str, list[Callable[[np.ndarray], None]]] = collections.defaultdict(list)
    self.allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "Counter"): collections.Counter,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("_codecs", "encode"): _latin1_encode,  # how protocol 2 pickles bytes
        ("torch", "Size"): tuple,
        # (storage, offset, size, stride[, requires_grad, backward_hooks[, metadata]])
        ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
        # (untyped storage, offset, size, stride, requires_grad, backward_hooks, dtype[, ...])
        ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
        # (data, requires_grad, backward_hooks[, state]): a Parameter is its data here.
        ("torch._utils", "_rebuild_parameter"): lambda data, *unused: data,
        ("torch._utils", "_rebuild_parameter_with_state"): lambda data, *unused: data,
    }
    for name, kind in _STORAGE_DTYPES.items():
      self.allowed["torch", name] = _DType(kind)
    self.allowed["torch.storage", "UntypedStorage"] = _DType("u1")
    for name, kind in _TORCH_DTYPES.items():
      self.allowed["torch", name] = _DType(kind)

  def find_class(self, module: str, name: str) -> Any:
    # Protocol 2 (torch.save's) names Python 3's builtins by their Python 2 module.
    module = "builtins" if module == "__builtin__" else module
    if (module, name) not in self.allowed:
      fail(self.path, f"refused to unpickle global '{module}.{name}': only tensors and plain "
                       "containers are read (a weights_only load), so nothing in the file was run")
    return self.allowed[module, name]

  def persistent_load(self, pid: Any) -> Storage:
    if self.read_storage is None:
      fail(self.path, f"persistent id {str(pid)[:80]} outside the object's pickle")
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
            and isinstance(pid[1], _DType) and isinstance(pid[2], str)
            and _is_int(pid[4]) and pid[4] >= 0):
      fail(self.path, f"persistent id {str(pid)[:80]} is not ('storage', type, key, "
                       "location, numel[, view])")
    if pid[5:] not in ((), (None,)):
      fail(self.path, f"storage {pid[2]!r} is saved as a view {str(pid[5])[:60]} of another "
                       "storage, which only torch < 0.4 wrote; re-save it with a newer torch")
    _, dtype, key, _, numel = pid[:5]
    if key in self.storages:
      if self.storages[key].dtype != dtype:
        fail(self.path, f"storage {key!r} is read as {self.storages[key].dtype.name} and "
                         f"{dtype.name}")
      return self.storages[key]
    storage = self.storages[key] = Storage(key, dtype, numel)
    storage_bytes = self.read_storage(storage)
    if storage_bytes is not None:
      self.storage_bytes[key] = storage_bytes
    return storage

  def fill_storage(self, key: str, storage_bytes: np.ndarray) -> None:
    """A storage's bytes read after the pickle (legacy), into every array made from it."""
    for fill in self.unfilled.pop(key, []):
      fill(storage_bytes)

  def _rebuild_tensor_v3(self, storage: Any, offset: Any, size: Any, stride: Any,
                         requires_grad: Any, backward_hooks: Any, dtype: Any, *unused: Any
                         ) -> np.ndarray:
    """Torch's newer dtypes (uint16, ...) come as bytes of an untyped storage plus a dtype."""
    del requires_grad, backward_hooks
    if not (isinstance(storage, Storage) and storage.dtype.name == "u1"
            and isinstance(dtype, _DType)):
      fail(self.path, "_rebuild_tensor_v3 needs an untyped storage and a torch dtype")
    itemsize = dtype.numpy(self.byteorder).itemsize
    if storage.numel % itemsize:
      fail(self.path, f"storage {storage.key!r} of {storage.numel} bytes does not hold "
                       f"whole {dtype.name} values")
    return self._tensor(storage, dtype, storage.numel // itemsize, offset, size, stride)

  def _rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *unused: Any
                      ) -> np.ndarray:
    if not isinstance(storage, Storage):
      fail(self.path, f"a tensor's storage is a {type(storage).__name__}, not a storage record")
    return self._tensor(storage, storage.dtype, storage.numel, offset, size, stride)

  def _tensor(self, storage: Storage, dtype: _DType, numel: int, offset: Any, size: Any,
              stride: Any) -> np.ndarray:
    """The array of the view (offset, size, stride in elements) of `storage` read as `numel`
    `dtype` values, checked to lie inside it; filled now or when its bytes are read."""
    where = f"tensor over storage {storage.key!r} (offset {offset!r}, size {size!r}, " \
            f"stride {stride!r})"
    if not (_is_int(offset) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(map(_is_int, size + stride))):
      fail(self.path, f"{where}: not integers of matching rank")
    if offset < 0 or any(n < 0 for n in size + stride):
      fail(self.path, f"{where}: negative offset, size or stride")
    count = math.prod(size)
    if count:
      last = offset + sum((n - 1) * s for n, s in zip(size, stride))
      if last >= numel:
        fail(self.path, f"{where}: reaches element {last} of a storage of {numel}")
      if count > numel:
        fail(self.path, f"{where}: more elements than its storage holds ({numel}), an "
                         "expanded view; save tensor.contiguous() instead")
    array = np.empty(size, dtype.returned())
    fill = functools.partial(_copy_view, array, dtype, self.byteorder, offset, stride)
    if storage.key in self.storage_bytes:
      fill(self.storage_bytes[storage.key])
    else:
      self.unfilled[storage.key].append(fill)
    return array


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
  return codecs.encode(text, "latin1")


def check_plain(path: Path, obj: Any) -> None:
  """Only numeric arrays, numbers, strings, bytes, None and containers of them (an allowed
  object's state could otherwise smuggle e.g. an object array). Iterative with a seen-set, so
  deep or memo-shared structures cannot blow the stack or the time."""
  stack, seen = [obj], set()
  while stack:
    item = stack.pop()
    if id(item) in seen:
      continue
    seen.add(id(item))
    if isinstance(item, np.ndarray):
      if item.dtype.hasobject:
        fail(path, "an array of Python objects is not a tensor")
    elif isinstance(item, dict):
      stack.extend(item.keys())
      stack.extend(item.values())
      stack.extend(getattr(item, "__dict__", {}).values())  # an OrderedDict's `_metadata`
    elif isinstance(item, (list, tuple, set, frozenset)):
      stack.extend(item)
    elif not isinstance(item, (int, float, complex, str, bytes, bytearray, type(None))):
      fail(path, f"unpickled a {type(item).__name__}, which is not a tensor or container")


