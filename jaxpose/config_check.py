"""Checks a config before anything compiles: unknown keys, wrong types, impossible values.

`validate(config)` runs first in `train.run`. Each problem is a `UserError` of one line that
names the key, so a typo inside a config file (`c.input.batchsize`, which `lock_config`
cannot catch because the file itself created the key) fails in a second, not after the
dataset has opened or the step has compiled.

What is checked, and against what (nothing is a hand-copied list per config):
  keys and types    `configs.common.schema(kind)` of the model's kind (`jaxpose.families`),
                    built from the shared config blocks;
  model.options     the fields of the flax module the preset builds (and their annotations);
  names             the registries: `models.MODELS`/`KINDS`, `optim.OPTIMIZERS`,
                    `keypoints.SPECS`, `_DATA_SOURCES`; each `data.mixture` entry against
                    `common.mixture_component_schema()`, `sources.SOURCES` and its layout;
  values            `config_ranges.RANGES` (probabilities in [0, 1], positive sizes, ...), finite floats;
  combinations      one of total_steps/total_epochs, decay boundaries increasing and inside
                    the run, batch sizes divisible by the device and process counts, and the
                    model's heatmaps (shapes from `jax.eval_shape`: traced, never compiled)
                    at the size the pipeline renders targets, input / HEATMAP_STRIDE.
"""

import dataclasses
import difflib
import functools
import math
import numbers
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from configs import common
from jaxpose import families
from jaxpose.config_ranges import POSITIVE as _POSITIVE
from jaxpose.config_ranges import RANGES as _RANGES
from jaxpose.config_ranges import Range
from jaxpose import models
from jaxpose import optim
from jaxpose.codecs import heatmap as heatmap_codec
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.data import bottomup_pipeline
from jaxpose.data import mixture
from jaxpose.data import pipeline
from jaxpose.data import sources
from jaxpose.errors import UserError
from jaxpose.evaluation import rescore
from jaxpose.losses import bottomup as bottomup_losses

# The sources each kind's `open_split` opens.
_DATA_SOURCES = {"topdown": ("coco", "synthetic", "tfds", "mpii", "lsp"),
                 "topdown_rle": ("coco", "synthetic", "tfds", "mpii", "lsp"),
                 "bottomup": ("coco", "synthetic", "crowdpose"),
                 "integral": ("h36m", "synthetic")}
# The sources a `data.mixture` entry may name (`pipeline.open_component`).
_MIXTURE_SOURCES = (*sources.SOURCES, "synthetic")
# Module fields the trainer fills from other keys, so `model.options` may not set them.
_FIELDS_FROM_CONFIG = {"num_keypoints": "data.keypoints", "dtype": "model.dtype"}
_FLAX_FIELDS = ("parent", "name")




def validate(config: ml_collections.ConfigDict, *, device_count: int | None = None,
             process_count: int | None = None) -> None:
  """Raises UserError naming the first bad key of `config`; returns None if it can run.

  device_count, process_count: default to this runtime's (`jax.device_count()`, ...).
  """
  kind = _check_model_name(config)
  _check_block(config, families.for_config(config).schema(), "")
  for key, allowed in _RANGES.items():
    if _has(config, key):  # each kind's schema holds some of these keys
      _check_range(key, _lookup(config, key), allowed)
  _check_names(config, kind)
  _check_mixture(config)
  _check_schedule(config.train, config.optim)
  device_count = jax.device_count() if device_count is None else device_count
  process_count = jax.process_count() if process_count is None else process_count
  for block in ("input", "eval"):
    size = config[block].batch_size
    for count, what in ((device_count, "devices"), (process_count, "processes")):
      if size % count:
        raise UserError(f"config key {block}.batch_size: {size} is not divisible by the "
                        f"{count} {what}")
  if config.data.source not in ("synthetic", "tfds") and not config.data.root:
    raise UserError(f"config key data.root: empty; data.source {config.data.source!r} reads "
                    "its files under it (the layout in the README)")
  if config.data.source == "tfds" and not config.data.tfds_dir:
    raise UserError("config key data.tfds_dir: empty; data.source 'tfds' reads the --dst "
                    "folder of `python -m jaxpose.data.prepare`")
  _check_model_options(config.model)
  if kind == "bottomup":
    bottomup_pipeline.input_size(config)  # square, a multiple of 32
    if config.eval.rescore_model:  # read now, not at the first evaluation hours later
      try:
        rescore.load(config.eval.rescore_model, config.data.keypoints)
      except UserError as error:
        raise UserError(f"config key eval.rescore_model: {error}") from None
  _check_heatmap_shape(config)


def _show(value: Any) -> str:
  """A value as one short line for a message."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  text = " ".join(repr(value).split())
  return text if len(text) <= 60 else text[:57] + "..."


def _has(config: ml_collections.ConfigDict, dotted: str) -> bool:
  try:
    _lookup(config, dotted)
  except (KeyError, AttributeError):
    return False
  return True


def _lookup(config: ml_collections.ConfigDict, dotted: str) -> Any:
  for part in dotted.split("."):
    config = config[part]
  return config


# ----------------------------------------------------------------------------- keys, types


def _check_block(block: Any, schema: dict, prefix: str) -> None:
  if not isinstance(block, (ml_collections.ConfigDict, Mapping)):
    raise UserError(f"config key {prefix.rstrip('.') or '(root)'}: {_show(block)} is not a "
                    f"block of keys {sorted(schema)}")
  for key in block.keys():
    if key not in schema:
      near = difflib.get_close_matches(str(key), list(schema), n=1)
      hint = f"; did you mean {near[0]!r}?" if near else f"; known: {sorted(schema)}"
      raise UserError(f"config key {prefix}{key}: unknown key{hint}")
  for key, kind in schema.items():
    if isinstance(kind, common.MayBeAbsent):
      if key not in block:
        continue
      kind = kind.kind
    if key not in block:
      raise UserError(f"config key {prefix}{key}: missing (declared in configs/common.py "
                      "schema())")
    if isinstance(kind, dict):
      _check_block(block[key], kind, f"{prefix}{key}.")
    elif not _matches(block[key], kind):
      raise UserError(f"config key {prefix}{key}: {_show(block[key])} is not "
                      f"{_describe(kind)}")


def _matches(value: Any, kind: Any) -> bool:
  """Whether `value` is of `kind`, a schema leaf or a module field annotation we can read
  (annotations we cannot read match anything; building the model checks them)."""
  origin, args = typing.get_origin(kind), typing.get_args(kind)
  if origin in (typing.Union, types.UnionType):
    return any(_matches(value, arg) for arg in args)
  if kind is type(None):
    return value is None
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if kind is float:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
  if kind is str:
    return isinstance(value, str)
  if kind is dict:
    return isinstance(value, (ml_collections.ConfigDict, Mapping))
  if kind is tuple or origin in (tuple, Sequence):
    if not isinstance(value, (tuple, list)):
      return False
    if not args or args[-1] is Ellipsis or origin is Sequence:
      return all(_matches(v, args[0]) for v in value) if args else True
    return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
  return True


def _describe(kind: Any) -> str:
  if typing.get_origin(kind) in (typing.Union, types.UnionType):
    return " or ".join(_describe(arg) for arg in typing.get_args(kind))
  if kind is type(None):
    return "None"
  if kind is tuple:
    return "a tuple"
  if kind is dict:
    return "a block of keys"
  name = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
  return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _check_range(key: str, value: Any, allowed: Range) -> None:
  for number in value if isinstance(value, (tuple, list)) else (value,):
    if number is None:
      continue
    if isinstance(number, float) and not math.isfinite(number):
      raise UserError(f"config key {key}: {_show(value)} is not a finite number")
    if number not in allowed:
      raise UserError(f"config key {key}: {_show(value)} must be {allowed}")


# ----------------------------------------------------------------------------- names


def _check_name(key: str, value: str, known) -> None:
  if value not in known:
    raise UserError(f"config key {key}: unknown {value!r}; known: {sorted(known)}")


def _check_model_name(config: ml_collections.ConfigDict) -> str:
  """The model's kind, which decides the rest of the schema; UserError if no family trains it."""
  if not isinstance(config.get("model"), (ml_collections.ConfigDict, Mapping)) or not isinstance(
      config.model.get("name"), str):
    raise UserError("config key model.name: missing or not a string")
  families.for_config(config)
  return models.KINDS[config.model.name]


def _check_names(config: ml_collections.ConfigDict, kind: str) -> None:
  _check_name("data.keypoints", config.data.keypoints, keypoints_lib.SPECS)
  _check_name("data.source", config.data.source, _DATA_SOURCES.get(kind, _DATA_SOURCES["topdown"]))
  _check_name("optim.name", config.optim.name, optim.OPTIMIZERS)
  if kind == "bottomup":
    _check_name("loss.heatmap_loss", config.loss.heatmap_loss, bottomup_losses.HEATMAP_LOSSES)
    if config.loss.heatmap_loss == "swahr" and not config.model.options.get("scale_head"):
      raise UserError("config key loss.heatmap_loss: 'swahr' reads SWAHR's scale maps; set "
                      "model.options.scale_head=True (or use 'dekr')")
  if "decode" in config.eval:
    _check_name("eval.decode", config.eval.decode, heatmap_codec.DECODERS)
  # "gt" or a detection results json; checked now, not after training, when evaluation opens it.
  if "person_boxes" in config.eval and config.eval.person_boxes != "gt" and not os.path.isfile(
      os.path.expanduser(config.eval.person_boxes)):
    raise UserError(f"config key eval.person_boxes: {config.eval.person_boxes!r} is neither 'gt' "
                    "nor an existing detection results json")
  try:
    dtype = jnp.dtype(config.model.dtype)
  except (TypeError, ValueError):
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise UserError(f"config key model.dtype: {config.model.dtype!r} is not a floating "
                    "dtype (float32, bfloat16, float16)")


def _check_mixture(config: ml_collections.ConfigDict) -> None:
  """Each `data.mixture` entry: its keys and types, a known source in the layout its files
  are in, a positive weight, a root (unless synthetic), joints shared with `data.keypoints`."""
  main_spec = keypoints_lib.get_spec(config.data.keypoints)
  for name, block in mixture.extra_blocks(config).items():
    where = f"data.mixture.{name}"
    _check_block(block, common.mixture_component_schema(), f"{where}.")
    _check_name(f"{where}.source", block.source, _MIXTURE_SOURCES)
    _check_name(f"{where}.keypoints", block.keypoints, keypoints_lib.SPECS)
    _check_range(f"{where}.weight", block.weight, _POSITIVE)
    if block.source == "synthetic":
      _check_name(f"{where}.keypoints", block.keypoints, ("mpii", "coco"))
    else:
      if block.keypoints != sources.LAYOUTS[block.source]:
        raise UserError(f"config key {where}.keypoints: {block.keypoints!r}, but {block.source!r}"
                        f" files are in the {sources.LAYOUTS[block.source]!r} layout")
      mixture.component_root(config, name)  # set, and resolvable
    mixture.remap_for(keypoints_lib.get_spec(block.keypoints), main_spec, where)


# ----------------------------------------------------------------------------- schedule


def _check_schedule(train: ml_collections.ConfigDict, optim_block: ml_collections.ConfigDict
                    ) -> None:
  """One duration; decay boundaries increasing, in (0, total) when in the same unit."""
  if (train.total_steps is None) == (train.total_epochs is None):
    raise UserError("config keys train.total_steps / train.total_epochs: set exactly one")
  if optim_block.decay_steps is not None and optim_block.decay_epochs is not None:
    raise UserError("config keys optim.decay_steps / optim.decay_epochs: set at most one")
  for unit, total, kind in (("steps", train.total_steps, int),
                            ("epochs", train.total_epochs, float)):
    key, boundaries = f"optim.decay_{unit}", optim_block[f"decay_{unit}"]
    if boundaries is None:
      continue
    if not all(_matches(b, kind) for b in boundaries):
      raise UserError(f"config key {key}: {_show(boundaries)} is not a tuple of {kind.__name__}s")
    _check_range(key, boundaries, _POSITIVE)
    if any(b >= a for a, b in zip(boundaries[1:], boundaries)):
      raise UserError(f"config key {key}: {_show(boundaries)} is not strictly increasing")
    if total is not None and boundaries and boundaries[-1] >= total:
      # Not an error: a shortened run (`--config.train.total_steps=N` for a first look)
      # keeps the recipe's boundaries, and a boundary past the end only never fires.
      logging.warning("config key %s: boundary %s is not before the end of training "
                      "(train.total_%s = %s), so it never decays the lr", key, boundaries[-1],
                      unit, total)


# ----------------------------------------------------------------------------- model


def _module_class(name: str) -> type:
  constructor = models.MODELS[name]
  return constructor.func if isinstance(constructor, functools.partial) else constructor


def _check_model_options(model: ml_collections.ConfigDict) -> None:
  """Each option is a field of the preset's flax module, of the field's annotated type."""
  cls = _module_class(model.name)
  fields = {f.name for f in dataclasses.fields(cls)} - set(_FLAX_FIELDS)
  try:
    hints = typing.get_type_hints(cls)
  except (NameError, TypeError):  # an annotation we cannot resolve: names only
    hints = {}
  for key, value in model.options.items():
    where = f"config key model.options.{key}"
    if key in _FIELDS_FROM_CONFIG:
      raise UserError(f"{where}: set by {_FIELDS_FROM_CONFIG[key]}, not by model.options")
    if key not in fields:
      near = difflib.get_close_matches(str(key), sorted(fields - set(_FIELDS_FROM_CONFIG)), n=1)
      hint = f"did you mean {near[0]!r}?" if near else f"fields: {sorted(fields)}"
      raise UserError(f"{where}: {cls.__name__} ({model.name}) has no such field; {hint}")
    if key in hints and not _matches(value, hints[key]):
      raise UserError(f"{where}: {_show(value)} is not {_describe(hints[key])}")


def _freeze(value: Any) -> Any:
  """A hashable copy of option values (lists -> tuples), for the shape cache."""
  if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple (hrnet.StageSpec)
    return type(value)(*(_freeze(v) for v in value))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  if isinstance(value, (ml_collections.ConfigDict, Mapping)):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  return value


@functools.lru_cache(maxsize=16)
def _heatmap_shape(name: str, options: tuple, dtype: str, num_keypoints: int,
                   size_hw: tuple[int, int]) -> tuple[int, ...]:
  """The model's heatmap shape for one [1, H, W, 3] image: traced by eval_shape, not compiled."""
  model = models.build(name, num_keypoints=num_keypoints, dtype=jnp.dtype(dtype), **dict(options))
  init = functools.partial(model.init_with_output, train=False)
  (outputs, _), _ = jax.eval_shape(init, jax.random.key(0),
                                   jax.ShapeDtypeStruct((1, *size_hw, 3), jnp.float32))
  # Bottom-up models return (heatmaps with the centre map last, offsets).
  heatmaps = outputs[0] if isinstance(outputs, tuple) else outputs
  return tuple(heatmaps.shape)


def _check_heatmap_shape(config: ml_collections.ConfigDict) -> None:
  """The model's heatmaps ([1, h, w, K] or [1, S, h, w, K]) must have the size the pipeline
  renders its targets at; a model that refuses the input size says why."""
  size_hw = tuple(int(s) for s in config.input.size_hw)
  num_keypoints = keypoints_lib.get_spec(config.data.keypoints).num_keypoints
  options = tuple(sorted((k, _freeze(v)) for k, v in config.model.options.items()))
  try:
    shape = _heatmap_shape(config.model.name, options, config.model.dtype, num_keypoints, size_hw)
  except Exception as error:  # pylint: disable=broad-except
    # The presets build and run at every config's size (tests/test_configs.py), so what
    # fails here is the size or the options: a model refusing H, W not divisible by its
    # stride raises ValueError; a nonsensical option may raise anything.
    first_line = (str(error).splitlines() or [""])[0][:200]
    raise UserError(f"config keys input.size_hw / model.options: {config.model.name} with "
                    f"options {_show(config.model.options)} cannot take {size_hw} inputs: "
                    f"{type(error).__name__}: {first_line}") from None
  _, (heatmap_w, heatmap_h) = pipeline.input_and_heatmap_wh(config)
  if shape[-3:-1] != (heatmap_h, heatmap_w):
    raise UserError(
        f"config keys input.size_hw / model.options: {config.model.name} gives "
        f"{shape[-3]}x{shape[-2]} heatmaps for {size_hw[0]}x{size_hw[1]} inputs (output stride "
        f"{size_hw[0] / shape[-3]:g}), but the targets are rendered at input / "
        f"{pipeline.HEATMAP_STRIDE} = {heatmap_h}x{heatmap_w}")
