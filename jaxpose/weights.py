"""PyTorch state_dicts -> flax variables: the shared mechanics, and reading weight files.

Each model family supplies two small functions (`torch_key(collection, path)` and
`kernel_axes(path)`, in `jaxpose/models/*_torch_import.py`); `convert` does the rest: the
expected variable tree comes from `jax.eval_shape(model.init)`, every flax path is mapped to
one torch key, so missing, extra and mis-shaped keys are found by set difference and
reported together. `num_batches_tracked` is dropped knowingly: flax BatchNorm uses a fixed
momentum and never reads it.

Files are read without unpickling untrusted data: `.npz` with `allow_pickle=False`, `.pth`
only through `torch.load(weights_only=True)` and only if torch is installed (jaxpose itself
never needs torch).
"""

import functools
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def convert(state_dict: Mapping[str, Any], model: nn.Module,
            torch_key: Callable[[str, tuple[str, ...]], str],
            kernel_axes: Callable[[tuple[str, ...]], tuple[tuple[int, ...], tuple[int, ...]] | None],
            *, input_hw: tuple[int, int] = (32, 32)) -> dict[str, Any]:
  """{"params": ..., "batch_stats": ...} float32 numpy for `model` from a torch state_dict.

  `input_hw` is any input size the model accepts (parameter shapes do not depend on it):
  32x32 suits the stride-32 families, the hourglass needs 64x64.
  Raises ValueError listing every missing, extra and mis-shaped torch key.
  """
  init = functools.partial(model.init, train=False)
  expected = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, *input_hw, 3), jnp.float32))
  used, missing, misshaped = set(), [], []
  variables = {}
  for collection in ("params", "batch_stats"):
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(expected.get(collection, {})))
    converted = {}
    for path, spec in flat.items():
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

  extra = sorted(key for key in state_dict
                 if key not in used and not key.endswith("num_batches_tracked"))
  if missing or extra or misshaped:
    lines = [f"state_dict does not match {type(model).__name__}:"]
    for title, keys in (("missing", missing), ("extra", extra), ("mis-shaped", misshaped)):
      if keys:
        lines.append(f"  {len(keys)} {title}: " + "; ".join(sorted(keys)))
    raise ValueError("\n".join(lines))
  return variables


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """torch key -> numpy array from a `.npz` or (with torch installed) a `.pth` file."""
  path = Path(path)
  if not path.is_file():
    raise UserError(f"{path}: weight file not found")
  if path.suffix == ".npz":
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  if path.suffix in (".pth", ".pt"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError(f"{path}: reading .pth needs torch (pip install torch), or convert it "
                      "to .npz") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    return {key.removeprefix("module."): value.numpy() for key, value in state.items()}
  raise UserError(f"{path}: unknown weight format {path.suffix!r}; known: .npz, .pth")
