"""PyTorch state_dicts -> flax variables: the shared mechanics, and reading weight files.

Each model family supplies two small functions (`torch_key(collection, path)` and
`kernel_axes(path)`, in `jaxpose/models/*_torch_import.py`); `convert` does the rest: the
expected variable tree comes from `jax.eval_shape(model.init)`, every flax path is mapped to
one torch key, so missing, extra and mis-shaped keys are found by set difference and
reported together. `num_batches_tracked` is dropped knowingly: flax BatchNorm uses a fixed
momentum and never reads it.

`convert(..., select=, drop=)` converts part of a model (e.g. its backbone from an ImageNet
classifier checkpoint, `jaxpose/pretrained.py`), with the same checks on that part.

Files are read without unpickling untrusted data and without torch: `.npz` with
`allow_pickle=False`, `.safetensors` with numpy alone (the format is a JSON header and raw
little-endian bytes; no safetensors package needed), `.pth` by `jaxpose.torch_checkpoint`
(torch's zip and legacy pre-1.6 formats through an allowlisting unpickler that refuses every
global but tensors and containers, as `torch.load(weights_only=True)` does).
"""

import functools
import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpose import torch_checkpoint
from jaxpose.errors import UserError

# flax leaf -> torch leaf, per collection (Conv2d / BatchNorm2d parameter names).
LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# Conv2d weight [O, I, kh, kw] <-> flax kernel [kh, kw, I, O]: (torch -> flax, flax -> torch).
CONV_AXES = ((2, 3, 1, 0), (3, 2, 0, 1))

# safetensors dtype -> numpy dtype of its little-endian bytes. BF16 is read as its 16 bits
# and widened to float32 (a bfloat16 is the top half of a float32).
_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
# Keys listed per kind of mismatch; a W48 checkpoint into a W32 model mis-shapes them all.
_MAX_LISTED = 20

Rules = tuple[tuple[re.Pattern, Any], ...]


def rewrite_path(rules: Rules, collection: str, path: tuple[str, ...]) -> str:
  """Torch key of a flax variable: each path component rewritten by the first rule that
  fully matches it (components rewritten to "" vanish), then the torch leaf name."""
  parts = []
  for component in path[:-1]:
    for pattern, replacement in rules:
      if pattern.fullmatch(component):
        component = pattern.sub(replacement, component)
        break
    if component:
      parts.append(component)
  parts.append(LEAF_NAMES[collection, path[-1]])
  return ".".join(parts)


def require_keys(state_dict: Mapping[str, Any], needed: tuple[str, ...], family: str) -> None:
  """Raises ValueError naming the keys `infer_model` of `family` needs but cannot find."""
  absent = [key for key in needed if key not in state_dict]
  if absent:
    raise ValueError(f"cannot infer the {family} layout: state_dict lacks {absent}; pass "
                     "`model=` explicitly")


def _listing(keys: list[str]) -> str:
  keys = sorted(keys)
  more = f"; ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
  return "; ".join(keys[:_MAX_LISTED]) + more


def convert(state_dict: Mapping[str, Any], model: nn.Module,
            torch_key: Callable[[str, tuple[str, ...]], str],
            kernel_axes: Callable[[tuple[str, ...]], tuple[tuple[int, ...], tuple[int, ...]] | None],
            *, input_hw: tuple[int, int] = (32, 32),
            select: Callable[[tuple[str, ...]], bool] | None = None,
            drop: Callable[[str], bool] | None = None) -> dict[str, Any]:
  """{"params": ..., "batch_stats": ...} float32 numpy for `model` from a torch state_dict.

  `input_hw` is any input size the model accepts (parameter shapes do not depend on it):
  32x32 suits the stride-32 families, the hourglass needs 64x64.
  select: flax path -> bool; only the variables it accepts are converted, required and
    returned (under their full paths), e.g. `lambda path: path[0] == "backbone"`.
    Default: every variable.
  drop: torch key -> bool; keys it accepts that no selected variable uses are dropped
    knowingly instead of reported as extra (e.g. an ImageNet classifier's `fc.*`).
  Raises ValueError listing the missing, extra and mis-shaped torch keys (at most
  `_MAX_LISTED` of each kind, with the count).
  """
  init = functools.partial(model.init, train=False)
  expected = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, *input_hw, 3), jnp.float32))
  used, missing, misshaped = set(), [], []
  variables = {}
  for collection in ("params", "batch_stats"):
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected.get(collection, {})))
    converted = {}
    for path, spec in flat.items():
      if select is not None and not select(path):
        continue
      key = torch_key(collection, path)
      if key not in state_dict:
        missing.append(key)
        continue
      used.add(key)
      tensor = np.asarray(state_dict[key], dtype=np.float32)
      axes = kernel_axes(path)
      expected_shape = tuple(spec.shape[i] for i in axes[1]) if axes else tuple(spec.shape)
      if tensor.shape != expected_shape:
        misshaped.append(f"{key}: got {tensor.shape}, expected {expected_shape}")
        continue
      converted[path] = np.transpose(tensor, axes[0]) if axes else tensor
    variables[collection] = flax.traverse_util.unflatten_dict(converted)

  extra = [key for key in state_dict if key not in used
           and not key.endswith("num_batches_tracked") and not (drop and drop(key))]
  if missing or extra or misshaped:
    lines = [f"state_dict does not match {type(model).__name__}:"]
    for title, keys in (("missing", missing), ("extra", extra), ("mis-shaped", misshaped)):
      if keys:
        lines.append(f"  {len(keys)} {title}: " + _listing(keys))
    raise ValueError("\n".join(lines))
  return variables


def _safetensors_tensor(entry: Any, data: memoryview) -> tuple[np.ndarray, int, int]:
  """(array, begin, end) of one header entry {"dtype", "shape", "data_offsets"} over the
  data bytes; raises ValueError saying what is inconsistent."""

  def fail(what: str) -> NoReturn:
    raise ValueError(what)

  if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
    fail(f"header entry {entry!r} lacks dtype, shape or data_offsets")
  dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
  if dtype_name not in _SAFETENSORS_DTYPES:
    fail(f"dtype {dtype_name!r} is not supported; supported: {', '.join(_SAFETENSORS_DTYPES)}")
  if not isinstance(shape, list) or not all(
      isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
    fail(f"shape {shape!r} is not a list of non-negative integers")
  if not (isinstance(offsets, list) and len(offsets) == 2
          and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
          and 0 <= offsets[0] <= offsets[1]):
    fail(f"data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
  begin, end = offsets
  if end > len(data):
    fail(f"data_offsets {offsets} reach past the {len(data)} data bytes (truncated file?)")
  dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name])
  count = math.prod(shape)
  if end - begin != count * dtype.itemsize:
    fail(f"data_offsets {offsets} hold {end - begin} bytes, but {dtype_name} of shape "
         f"{shape} needs {count * dtype.itemsize}")
  array = np.frombuffer(data, dtype, count, begin).reshape(shape)
  if dtype_name == "BF16":
    array = (array.astype(np.uint32) << 16).view(np.float32)
  return array, begin, end


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
  """Tensor name -> numpy array of a `.safetensors` file, parsed with numpy alone.

  Layout (huggingface/safetensors README, "Format"): an unsigned little-endian 64-bit header
  size N; N bytes of JSON {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin,
  end]}, "__metadata__": {...}} (may end in spaces); then the data, offsets relative to its
  start, which the tensors must cover exactly, without gaps or overlaps. BF16 becomes
  float32; other dtypes keep theirs. Arrays are read-only views of the file's bytes.
  Raises UserError naming the file (and the tensor) at the first inconsistency.
  """
  path = Path(path)
  raw = path.read_bytes()

  def fail(what: str) -> NoReturn:
    raise UserError(f"{path}: not a valid .safetensors file: {what}")

  if len(raw) < 8:
    fail(f"{len(raw)} bytes, too short for the 8-byte header size")
  header_size = int.from_bytes(raw[:8], "little")
  if 8 + header_size > len(raw):
    fail(f"header size {header_size} exceeds the file's {len(raw)} bytes (truncated file?)")
  try:
    header = json.loads(raw[8:8 + header_size].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    fail(f"header is not UTF-8 JSON ({error})")
  if not isinstance(header, dict):
    fail(f"header is a JSON {type(header).__name__}, not an object")
  header.pop("__metadata__", None)
  data = memoryview(raw)[8 + header_size:]

  tensors, spans = {}, []
  for name, entry in header.items():
    try:
      tensors[name], begin, end = _safetensors_tensor(entry, data)
    except ValueError as error:
      fail(f"tensor {name!r}: {error}")
    spans.append((begin, end, name))
  position = 0
  for begin, end, name in sorted(spans):
    if begin != position:
      fail(f"tensor {name!r} starts at data byte {begin}, expected {position} "
           f"({'overlap' if begin < position else 'gap'} between tensors)")
    position = end
  if position != len(data):
    fail(f"the tensors cover {position} of the {len(data)} data bytes")
  return tensors


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """torch key -> numpy array from a `.npz`, `.safetensors` or `.pth` file.

  A `.pth` may hold the state_dict itself or a training checkpoint with one under
  "state_dict"; DataParallel's `module.` prefix is removed.
  """
  path = Path(path)
  if not path.is_file():
    raise UserError(f"{path}: weight file not found")
  if path.suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
      raise UserError(f"{path}: not a readable .npz file ({error})") from None
  if path.suffix == ".safetensors":
    return read_safetensors(path)
  if path.suffix in (".pth", ".pt"):
    return torch_checkpoint.state_dict(path)
  raise UserError(f"{path}: unknown weight format {path.suffix!r}; known: .npz, .safetensors, "
                  ".pth")
