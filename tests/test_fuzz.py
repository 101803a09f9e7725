"""Fuzz tests (hypothesis, bounded): hostile annotation files and configs raise only the
documented clear errors.

(a) `CocoPersonBoxes` on mutated COCO keypoint json (fields deleted or replaced by any JSON
    value: wrong types, NaN, +-inf, huge and negative numbers, wrong keypoint counts, empty
    lists) and on non-JSON bytes: it succeeds, or raises DatasetError naming the file.
(b) `configs.common.parse_arg` and the configs' `get_config` on random variant strings raise
    only ValueError naming the argument; `config_check.validate` on configs with random keys
    set to random values (as a config file could write them) raises only UserError of one
    line naming a config key.
Seeded (`derandomize`) so a failure reproduces; each property has an example budget.
"""

import copy
import json
import math
import tempfile
from pathlib import Path

import cv2
import hypothesis
import ml_collections
import numpy as np
import pytest
from hypothesis import strategies as st

from configs import common
from configs import default
from configs import hsr_msnet_coco
from jaxpose import config_check
from jaxpose.data import coco
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError
from jaxpose.errors import UserError

_SETTINGS = dict(derandomize=True, deadline=None, database=None,
                 suppress_health_check=[hypothesis.HealthCheck.too_slow])

# Any JSON value, including the numbers Python's json module reads (NaN, Infinity).
_NUMBERS = (st.integers() | st.floats(allow_nan=True, allow_infinity=True)
            | st.sampled_from([0, -1, 2**31, -(2**63), 2**64, 1e308, -1e308, math.nan, math.inf]))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | _NUMBERS | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6),
                                                                      children, max_size=3),
    max_leaves=6)

K = keypoints_lib.COCO.num_keypoints


def _coco_json() -> dict:
  """A valid two-image, three-person COCO keypoints file in the official schema."""

  def person(ann_id, image_id, bbox, labelled):
    keypoints = []
    for k in range(K):
      keypoints += [10.0 + k, 12.0 + k, 2] if k < labelled else [0, 0, 0]
    return dict(id=ann_id, image_id=image_id, category_id=1, bbox=bbox, area=bbox[2] * bbox[3],
                iscrowd=0, num_keypoints=labelled, keypoints=keypoints, segmentation=[])

  return dict(
      info={}, licenses=[],
      images=[dict(id=1, file_name="a.jpg", width=64, height=48),
              dict(id=2, file_name="b.jpg", width=64, height=48)],
      annotations=[person(10, 1, [5, 5, 30, 30], 5), person(11, 2, [0, 0, 20, 40], 17),
                   person(12, 2, [30, 2, 20, 20], 0)],
      categories=[dict(id=1, name="person", supercategory="person",
                       keypoints=list(keypoints_lib.COCO.names),
                       skeleton=[[a + 1, b + 1] for a, b in keypoints_lib.COCO.skeleton])])


def _paths(node, prefix=()):
  """Every location in a JSON tree: (path to the parent container..., key or index)."""
  children = (node.items() if isinstance(node, dict)
              else enumerate(node) if isinstance(node, list) else ())
  for key, child in children:
    yield prefix + (key,)
    yield from _paths(child, prefix + (key,))


def _mutate(data, draw) -> None:
  """Deletes, replaces or appends at one random location of `data` (in place)."""
  path = draw(st.sampled_from(list(_paths(data))))
  parent = data
  for key in path[:-1]:
    parent = parent[key]
  action = draw(st.sampled_from(["replace", "replace", "delete", "append", "empty"]))
  if action == "delete":
    del parent[path[-1]]
  elif action == "append" and isinstance(parent[path[-1]], list):
    parent[path[-1]].append(draw(JSON_VALUES))
  elif action == "empty":
    value = parent[path[-1]]
    parent[path[-1]] = type(value)() if isinstance(value, (list, dict)) else []
  else:
    parent[path[-1]] = draw(JSON_VALUES)


@pytest.fixture(scope="module")
def coco_dir():
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    (root / "val").mkdir()
    for name in ("a.jpg", "b.jpg"):
      cv2.imwrite(str(root / "val" / name), np.zeros((48, 64, 3), np.uint8))
    yield root


def _read_coco(root: Path, raw: bytes) -> None:
  """Writes `raw` as the annotation file and opens it: success or DatasetError naming it."""
  path = root / "person_keypoints_val.json"
  path.write_bytes(raw)
  try:
    source = coco.CocoPersonBoxes(path, root / "val", keypoints_lib.COCO)
  except DatasetError as error:
    assert str(path) in str(error) or str(root / "val") in str(error), str(error)
    return
  for index in range(len(source)):
    assert source[index]["keypoints"].shape == (K, 3)


def test_unmutated_coco_json_reads(coco_dir):
  _read_coco(coco_dir, json.dumps(_coco_json()).encode())


@hypothesis.settings(max_examples=400, **_SETTINGS)
@hypothesis.given(st.data())
def test_coco_reader_on_mutated_json(coco_dir, data):
  annotations = _coco_json()
  for _ in range(data.draw(st.integers(1, 3))):
    _mutate(annotations, data.draw)
  _read_coco(coco_dir, json.dumps(annotations).encode())


@hypothesis.settings(max_examples=100, **_SETTINGS)
@hypothesis.given(st.binary(max_size=64) | st.integers(0, 2000).map(
    lambda cut: json.dumps(_coco_json()).encode()[:cut]) | st.sampled_from(
        [b"\xff\xfe\x00{", b"[]", b"null", b"{\"images\": 5}", "{\"é\": 1}".encode("latin-1")]))
def test_coco_reader_on_non_json_bytes(coco_dir, raw):
  _read_coco(coco_dir, raw)


# ----------------------------------------------------------------------------- configs

_VARIANT_DEFAULTS = [dict(smoke=False),
                     dict(depth=59, msnet=True, res=common.one_of(256, 384), deconv_kernel=4,
                          baseline=False, smoke=False)]
_ARG_KEYS = st.sampled_from(["depth", "msnet", "res", "deconv_kernel", "baseline", "smoke"])
_ARG_TEXT = st.lists(
    st.tuples(_ARG_KEYS | _ARG_KEYS | st.text(max_size=6),
              st.sampled_from(["", "=True", "=false", "=0", "=1", "=384", "=300", "=59", "=1e3"])
              | st.text(max_size=6).map(lambda t: "=" + t)).map("".join),
    max_size=4).map(",".join) | st.text(max_size=20)


def _assert_names_argument(error: ValueError, arg: str) -> None:
  """The message names one of the `key=value` items of `arg` by its key."""
  message = str(error)
  assert message.startswith(("config argument ", "unknown config argument ")), message
  keys = [item.partition("=")[0].strip() for item in arg.split(",") if item]
  assert any(f"argument {key!r}" in message or f"argument {key}=" in message for key in keys), (
      message, arg)


@hypothesis.settings(max_examples=300, **_SETTINGS)
@hypothesis.given(_ARG_TEXT)
def test_parse_arg_raises_only_value_errors_naming_the_argument(arg):
  for defaults in _VARIANT_DEFAULTS:
    try:
      parsed = common.parse_arg(arg, **defaults)
    except ValueError as error:
      _assert_names_argument(error, arg)
      continue
    for key, value in defaults.items():
      if isinstance(value, common.OneOf):
        assert parsed[key] in value
      else:
        assert type(parsed[key]) is type(value)


# Well-formed variant strings with any values: what a user could type after the `:`.
_WELL_FORMED_ARGS = st.lists(st.tuples(_ARG_KEYS, st.integers(-5, 1000).map(str) | st.sampled_from(
    ["True", "False", "", "0.5"])).map("=".join), max_size=3).map(",".join)


@hypothesis.settings(max_examples=200, **_SETTINGS)
@hypothesis.given(_ARG_TEXT | _WELL_FORMED_ARGS)
def test_get_config_raises_only_value_errors_naming_the_argument(arg):
  for module in (default, hsr_msnet_coco):
    try:
      config = module.get_config(arg)
    except ValueError as error:
      _assert_names_argument(error, arg)
      continue
    assert isinstance(config, ml_collections.ConfigDict)


def _key_paths(node, prefix=()):
  for key, child in node.items():
    yield prefix + (key,)
    if isinstance(child, dict):
      yield from _key_paths(child, prefix + (key,))


_SMOKE = default.get_config("smoke").to_dict()
# Values that pass the type checks too, so later checks are reached; the model names and
# sizes are few because each new (model, options, size) is traced (~0.5 s each).
_CONFIG_VALUES = (JSON_VALUES | st.tuples(_NUMBERS, _NUMBERS) | st.tuples(st.integers(-4, 400))
                  | st.sampled_from(["coco", "synthetic", "adam", "sgd", "hourglass_1", "dekr_w32",
                                     "simplebaseline_r34", "bfloat16", "int8", (64, 96), (96, 64),
                                     (8, 8, 8), (4,), (4, 2), (2, 1), 0.5, 1.5, -1, 0, 3, 7]))
_NEW_KEYS = st.from_regex(r"[a-z_]{1,8}", fullmatch=True)


@hypothesis.settings(max_examples=150, **_SETTINGS)
@hypothesis.given(st.data())
def test_validate_raises_only_user_errors_naming_a_key(data):
  config = copy.deepcopy(_SMOKE)
  for _ in range(data.draw(st.integers(1, 3))):
    path = data.draw(st.sampled_from(list(_key_paths(config))))
    parent = config
    for key in path[:-1]:
      parent = parent[key]
    action = data.draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
    if action == "delete":
      del parent[path[-1]]
    elif action == "add":
      parent[data.draw(_NEW_KEYS)] = data.draw(_CONFIG_VALUES)
    else:
      parent[path[-1]] = data.draw(_CONFIG_VALUES)
  try:
    config_check.validate(ml_collections.ConfigDict(config), device_count=2, process_count=1)
  except UserError as error:
    message = str(error)
    assert message.startswith(("config key ", "config keys ")) and "\n" not in message, message
