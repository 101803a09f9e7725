"""Reading `.pth` without torch: files written by `torch.save` (2.13.0, CPU) in the zip format
and in the legacy (torch < 1.6) format compared with the arrays `torch.load(weights_only=True)`
read back (`tests/fixtures/torch_checkpoint_*`, recipe in BUILD_NOTES.md), and hand-assembled
files: pickles that would run code are refused without running it, bad layouts are refused
with the file named.

The hand-made pickles are spelled in protocol-2 opcodes (Python's `pickletools` names) after
torch's format: `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, hooks)` with the storage as persistent id `("storage", torch.FloatStorage,
key, location, numel)` (legacy: plus a view entry, None), read from `<name>/data/<key>` in
`<name>/byteorder` order, or (legacy) after the pickle as an int64 count and the bytes.
"""

import builtins
import collections
import os
import pickle
import pickletools
import struct
import sys
import time
import zipfile
from pathlib import Path

import chex
import numpy as np
import pytest

from jaxpose import torch_checkpoint
from jaxpose import weights
from jaxpose.errors import UserError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("fixture", ["torch_checkpoint_", "torch_checkpoint_legacy_"])
def test_every_dtype_and_layout_equals_torch(fixture):
  ours = torch_checkpoint.load(FIXTURES / f"{fixture}dtypes.pth")
  with np.load(FIXTURES / f"{fixture}dtypes.npz") as data:
    expected = {key: data[key] for key in data.files}
  assert isinstance(ours, collections.OrderedDict)
  assert list(ours) == list(expected)  # order kept
  chex.assert_trees_all_equal(dict(ours), expected, strict=True)  # values, shapes and dtypes
  # The layouts the fixture exists for (torch's own strides, asserted when it was made):
  chex.assert_shape(ours["transposed"], (6, 4))  # strides (1, 6) in a storage of 24
  chex.assert_shape(ours["shared_tail_2x3"], (2, 3))  # offset 4 in a storage of 10
  assert ours["bf16"].dtype == np.float32 and ours["fp16"].dtype == np.float16
  if fixture == "torch_checkpoint_":  # torch 2.13 cannot read its legacy uint16 back
    assert ours["uint16"].dtype == np.uint16


@pytest.mark.parametrize("fixture", ["torch_checkpoint_", "torch_checkpoint_legacy_"])
def test_dataparallel_training_checkpoint(fixture):
  path = FIXTURES / f"{fixture}dataparallel.pth"
  with np.load(FIXTURES / f"{fixture}dataparallel.npz") as data:
    expected = {key: data[key] for key in data.files}
  state_dict = weights.read_state_dict(path)
  chex.assert_trees_all_equal(
      state_dict, {key.removeprefix("state_dict/module."): value for key, value in expected.items()
                   if key.startswith("state_dict/")}, strict=True)
  checkpoint = torch_checkpoint.load(path)
  assert (checkpoint["epoch"], checkpoint["model"], checkpoint["perf"]) == (3, "pose_resnet", 0.25)
  assert all(key.startswith("module.") for key in checkpoint["state_dict"])
  metadata = checkpoint["state_dict"]._metadata  # pylint: disable=protected-access
  assert metadata["module.1"] == {"version": 2}  # BatchNorm's state_dict version
  adam = checkpoint["optimizer"]
  assert adam["param_groups"][0]["lr"] == 1e-3 and adam["param_groups"][0]["betas"] == (0.9, 0.999)
  chex.assert_trees_all_equal(
      {"exp_avg": adam["state"][0]["exp_avg"], "step": adam["state"][0]["step"]},
      {"exp_avg": expected["optimizer/state/0/exp_avg"],
       "step": expected["optimizer/state/0/step"]},
      strict=True)
  assert "torch" not in sys.modules


# ---------------------------------------------------------------- hand-made archives


def _str(text: str) -> bytes:
  raw = text.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _int(value: int) -> bytes:
  return b"J" + struct.pack("<i", value)  # BININT


def _ints(values) -> bytes:
  return b"(" + b"".join(_int(v) for v in values) + b"t"  # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def _tensor(key: str, numel: int, offset: int, size, stride, storage="FloatStorage",
            view: bytes = b"") -> bytes:
  storage_id = (b"(" + _str("storage") + _global("torch", storage) + _str(key) + _str("cpu")
                + _int(numel) + view + b"t")
  return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + storage_id + b"Q"  # BINPERSID
          + _int(offset) + _ints(size) + _ints(stride) + b"\x89"  # NEWFALSE: requires_grad
          + _global("collections", "OrderedDict") + b")R"  # hooks: OrderedDict()
          + b"tR")


def _state_dict_pickle(entries: dict[str, bytes]) -> bytes:
  body = b"".join(_str(key) + value + b"s" for key, value in entries.items())  # SETITEM
  return b"\x80\x02}" + body + b"."  # PROTO 2, EMPTY_DICT ... STOP


def _archive(path: Path, pickle_bytes: bytes, storages: dict[str, bytes] | None = None,
             byteorder: str = "little") -> Path:
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", pickle_bytes)
    archive.writestr("archive/byteorder", byteorder)
    archive.writestr("archive/version", "3\n")
    for key, raw in (storages or {}).items():
      archive.writestr(f"archive/data/{key}", raw)
  return path


_SIX_FLOATS = struct.pack("<6f", 0, 1, 2, 3, 4, 5)


@pytest.mark.parametrize("byteorder, raw", [("little", _SIX_FLOATS),
                                            ("big", struct.pack(">6f", 0, 1, 2, 3, 4, 5))])
def test_hand_made_strided_tensor(tmp_path, byteorder, raw):
  # storage [0, 1, 2, 3, 4, 5], offset 1, size (2, 2), stride (1, 2): rows [1, 3], [2, 4].
  pickled = _state_dict_pickle({"w": _tensor("0", 6, 1, (2, 2), (1, 2))})
  path = _archive(tmp_path / "w.pth", pickled, {"0": raw}, byteorder)
  chex.assert_trees_all_equal(weights.read_state_dict(path),
                              {"w": np.array([[1, 3], [2, 4]], np.float32)}, strict=True)


class _RunsCode:
  """Pickles as `callable(*args)`: what a hostile checkpoint hides in place of a tensor."""

  def __init__(self, *reduced):
    self.reduced = reduced

  def __reduce__(self):
    return self.reduced


def _payloads(marker: Path):
  return {
      "os.system": _RunsCode(os.system, (f"touch {marker}",)),
      "builtins.exec": _RunsCode(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
  }


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("protocol", [0, 2])
def test_pickle_that_runs_code_is_refused_without_running(tmp_path, payload, protocol):
  marker = tmp_path / "marker"
  hostile = _payloads(marker)[payload]
  pickled = pickle.dumps({"epoch": 1, "state_dict": collections.OrderedDict(
      [("conv.weight", 1.0), ("conv.bias", hostile)])}, protocol=protocol)
  # The payload is live: a plain unpickler runs it.
  pickle.loads(pickled)
  assert marker.exists()
  marker.unlink()

  path = _archive(tmp_path / "hostile.pth", pickled)
  with pytest.raises(UserError) as caught:
    weights.read_state_dict(path)
  assert not marker.exists()
  module = {"os.system": os.system.__module__, "builtins.exec": "builtins"}[payload]
  name = payload.split(".")[1]
  assert str(caught.value) == (
      f"{path}: refused to unpickle global '{module}.{name}': only tensors and plain "
      "containers are read (a weights_only load), so nothing in the file was run")


def test_state_set_on_an_allowed_global_is_refused(tmp_path):
  # BUILD {"name": "O"} on the FloatStorage stand-in would turn it into an object dtype.
  pickled = (b"\x80\x02" + _global("torch", "FloatStorage")
             + b"}" + _str("name") + _str("O") + b"sb.")  # EMPTY_DICT, SETITEM, BUILD, STOP
  with pytest.raises(UserError, match=r"not a readable PyTorch checkpoint \(UnpicklingError: "
                     "the pickle sets the state of a _DType"):
    torch_checkpoint.load(_archive(tmp_path / "build.pth", pickled))


def test_memo_shared_nesting_is_read_in_linear_time(tmp_path):
  # level i = [level i-1, level i-1] through the memo: 2**60 paths, 60 objects.
  body = b"]q\x00"  # EMPTY_LIST, BINPUT 0
  for i in range(1, 61):
    body += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i])  # LIST, BINPUT
  started = time.perf_counter()
  obj = torch_checkpoint.load(_archive(tmp_path / "nested.pth", b"\x80\x02" + body + b"."))
  assert time.perf_counter() - started < 5.0
  assert obj[0] is obj[1]


@pytest.mark.parametrize("what, pickled, storages, message", [
    ("reads past its storage", _state_dict_pickle({"w": _tensor("0", 6, 0, (3,), (3,))}),
     {"0": _SIX_FLOATS}, "reaches element 6 of a storage of 6"),
    ("negative stride", _state_dict_pickle({"w": _tensor("0", 6, 5, (2,), (-1,))}),
     {"0": _SIX_FLOATS}, "negative offset, size or stride"),
    ("expanded view", _state_dict_pickle({"w": _tensor("0", 6, 0, (10**6, 10**6), (0, 0))}),
     {"0": _SIX_FLOATS}, "an expanded view"),
    ("short storage file", _state_dict_pickle({"w": _tensor("0", 6, 0, (6,), (1,))}),
     {"0": _SIX_FLOATS[:20]}, "archive/data/0 holds 20 bytes, but 6 f4 elements need 24"),
    ("missing storage file", _state_dict_pickle({"w": _tensor("7", 6, 0, (6,), (1,))}),
     {"0": _SIX_FLOATS}, "storage '7' has no archive/data/7"),
    ("one storage, two dtypes", _state_dict_pickle({
        "a": _tensor("0", 6, 0, (6,), (1,)), "b": _tensor("0", 6, 0, (6,), (1,), "IntStorage")}),
     {"0": _SIX_FLOATS}, "storage '0' is read as f4 and i4"),
    ("truncated pickle", _state_dict_pickle({"w": _tensor("0", 6, 0, (6,), (1,))})[:40],
     {"0": _SIX_FLOATS}, "not a readable PyTorch checkpoint"),
    ("wrong rebuild arguments", b"\x80\x02" + _global("torch._utils", "_rebuild_tensor_v2")
     + b")R.", {}, "not a readable PyTorch checkpoint (TypeError"),
])
def test_bad_layout_is_refused(tmp_path, what, pickled, storages, message):
  del what
  path = _archive(tmp_path / "bad.pth", pickled, storages)
  with pytest.raises(UserError) as caught:
    torch_checkpoint.load(path)
  assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def test_non_tensor_entry_is_named(tmp_path):
  path = _archive(tmp_path / "opt.pth", _state_dict_pickle({"lr": _int(3)}))
  with pytest.raises(UserError, match=r"entry 'lr' is a int, not a tensor"):
    weights.read_state_dict(path)


def test_not_a_checkpoint(tmp_path):
  for name, content in [("notes.pth", b"hello"), ("empty.pth", b""),
                        ("number.pth", pickle.dumps(12345, protocol=2))]:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=f"^{path}: .*not a PyTorch checkpoint"):
      weights.read_state_dict(path)


def test_protocol_2_sets_and_bytes(tmp_path):
  # Protocol 2 writes a set as `__builtin__.set` and bytes through `_codecs.encode`.
  saved = {"tags": {"a", "b"}, "raw": b"\x00\xff", "shape": (2, 3)}
  pickled = pickle.dumps(saved, protocol=2)
  assert b"__builtin__" in pickled and b"_codecs" in pickled
  assert torch_checkpoint.load(_archive(tmp_path / "plain.pth", pickled)) == saved


def test_compressed_member_is_refused(tmp_path):
  # A deflated member may inflate far past its size; torch.save never compresses.
  path = tmp_path / "deflated.pth"
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
    archive.writestr("archive/data.pkl", _state_dict_pickle({"w": _tensor("0", 6, 0, (6,), (1,))}))
    archive.writestr("archive/data/0", _SIX_FLOATS)
  with pytest.raises(UserError, match="archive/data.pkl is compressed"):
    weights.read_state_dict(path)


# ---------------------------------------------------------------- hand-made legacy files
# magic number, protocol version, sys_info, object, storage keys, then per key an int64
# little-endian element count and the bytes (torch/serialization.py `_legacy_save`).

_MAGIC = 0x1950A86A20F9469CFC6C
_SYS_INFO = {"protocol_version": 1001, "little_endian": True,
             "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _legacy(path: Path, object_pickle: bytes, storages: dict[str, bytes] | None = None,
            sys_info=None, protocol: int = 2, version: int = 1001, itemsize: int = 4) -> Path:
  storages = storages or {}
  header = b"".join(pickle.dumps(value, protocol=protocol)
                    for value in (_MAGIC, version, sys_info or _SYS_INFO))
  data = b"".join(struct.pack("<q", len(raw) // itemsize) + raw for raw in storages.values())
  path.write_bytes(header + object_pickle + pickle.dumps(list(storages), protocol=protocol) + data)
  return path


_LEGACY_W = _state_dict_pickle({"w": _tensor("0", 6, 1, (2, 2), (1, 2), view=b"N")})


@pytest.mark.parametrize("protocol", [2, 4])
def test_hand_made_legacy_strided_tensor(tmp_path, protocol):
  # As test_hand_made_strided_tensor; header pickles in protocol 2 (torch's) and 4 (framed).
  path = _legacy(tmp_path / "w.pth", _LEGACY_W, {"0": _SIX_FLOATS}, protocol=protocol)
  chex.assert_trees_all_equal(weights.read_state_dict(path),
                              {"w": np.array([[1, 3], [2, 4]], np.float32)}, strict=True)


def _as_python2(pickled: bytes) -> bytes:
  """The same pickle as Python 2 writes it: each str as SHORT_BINSTRING, its utf-8 bytes."""
  ops = list(pickletools.genops(pickled))
  out = b""
  for (op, arg, start), (_, _, end) in zip(ops, ops[1:] + [(None, None, len(pickled))]):
    if op.name == "BINUNICODE":
      out += b"U" + bytes([len(arg.encode())]) + arg.encode()
    else:
      out += pickled[start:end]
  return out


def test_python2_legacy_pickle(tmp_path):
  # 2018 checkpoints saved under Python 2: keys and storage ids are byte strings, decoded as
  # utf-8 as torch.load does.
  pickled = _as_python2(_state_dict_pickle({"größe.w": _tensor("0", 6, 1, (2, 2), (1, 2),
                                                                view=b"N")}))
  assert "BINUNICODE" not in {op.name for op, _, _ in pickletools.genops(pickled)}
  path = _legacy(tmp_path / "py2.pth", pickled, {"0": _SIX_FLOATS})
  chex.assert_trees_all_equal(weights.read_state_dict(path),
                              {"größe.w": np.array([[1, 3], [2, 4]], np.float32)}, strict=True)


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("protocol", [0, 2])
def test_legacy_pickle_that_runs_code_is_refused_without_running(tmp_path, payload, protocol):
  marker = tmp_path / "marker"
  hostile = pickle.dumps({"epoch": 1, "state_dict": collections.OrderedDict(
      [("conv.weight", 1.0), ("conv.bias", _payloads(marker)[payload])])}, protocol=protocol)
  pickle.loads(hostile)  # the payload is live
  assert marker.exists()
  marker.unlink()

  path = _legacy(tmp_path / "hostile.pth", hostile)
  with pytest.raises(UserError) as caught:
    weights.read_state_dict(path)
  assert not marker.exists()
  module = {"os.system": os.system.__module__, "builtins.exec": "builtins"}[payload]
  assert str(caught.value) == (
      f"{path}: refused to unpickle global '{module}.{payload.split('.')[1]}': only tensors and "
      "plain containers are read (a weights_only load), so nothing in the file was run")


def test_legacy_header_that_runs_code_is_refused(tmp_path):
  # The magic number's pickle is read with the same allowlist as the object's.
  marker = tmp_path / "marker"
  path = tmp_path / "hostile_header.pth"
  path.write_bytes(pickle.dumps(_payloads(marker)["os.system"], protocol=2))
  refused = f"refused to unpickle global '{os.system.__module__}.system'"
  with pytest.raises(UserError, match=refused):
    torch_checkpoint.load(path)
  assert not marker.exists()


@pytest.mark.parametrize("cut", [8, 137 + 700, 1569 + 100, 1829 + 4, 2603 - 1])
def test_truncated_legacy_file_is_one_line_naming_it(tmp_path, cut):
  # Offsets in torch_checkpoint_legacy_dtypes.pth (2603 bytes): header pickles end at 137, the
  # object's at 1569, the key list's at 1829; then counts and storages. Cut inside each.
  path = tmp_path / "truncated.pth"
  path.write_bytes((FIXTURES / "torch_checkpoint_legacy_dtypes.pth").read_bytes()[:cut])
  with pytest.raises(UserError) as caught:
    weights.read_state_dict(path)
  message = str(caught.value)
  assert message.startswith(f"{path}: ") and "\n" not in message
  if cut > 1829:
    assert "truncated: storage" in message


def test_legacy_fixture_layout():
  # The section ends the truncation test cuts inside, found by reading the five pickles, and
  # the storages: 14 tensors over 12 (`transposed` and `every_other_column` view one,
  # `shared_head` and `shared_tail_2x3` another, at offsets 0 and 4).
  raw = (FIXTURES / "torch_checkpoint_legacy_dtypes.pth").read_bytes()
  ends, ops = [0], []
  with open(FIXTURES / "torch_checkpoint_legacy_dtypes.pth", "rb") as f:
    for _ in range(5):
      ops.append([op.name for op, _, _ in pickletools.genops(f)])
      ends.append(f.tell())
  assert (ends[3:], len(raw)) == ([137, 1569, 1829], 2603)
  assert (ops[3].count("BINPERSID"), ops[4].count("BINUNICODE")) == (14, 12)


@pytest.mark.parametrize("what, make, message", [
    ("big-endian writer", lambda p: _legacy(p, _LEGACY_W, {"0": _SIX_FLOATS},
                                            sys_info={**_SYS_INFO, "little_endian": False}),
     "written on a big-endian machine"),
    ("unknown protocol", lambda p: _legacy(p, _LEGACY_W, {"0": _SIX_FLOATS}, version=1000),
     "legacy checkpoint protocol 1000, expected 1001"),
    ("count differs from the pickle", lambda p: _legacy(p, _LEGACY_W, {"0": _SIX_FLOATS},
                                                        itemsize=2),
     "storage '0' has 12 elements in the data, 6 in the pickle"),
    ("storage missing from the key list", lambda p: _legacy(p, _LEGACY_W, {}),
     "the storage key list [] does not name each storage"),
    ("storage view (torch < 0.4)", lambda p: _legacy(p, _state_dict_pickle(
        {"w": _tensor("0", 6, 0, (2,), (1,), view=b"(" + _str("1") + _int(2) + _int(2) + b"t")}),
        {"0": _SIX_FLOATS}), "is saved as a view ('1', 2, 2) of another storage"),
    ("storage larger than the file", lambda p: _legacy(p, _state_dict_pickle(
        {"w": _tensor("0", 10**9, 0, (10**9,), (1,), view=b"N")}), {"0": _SIX_FLOATS}),
     "storage '0' of 1000000000 elements is larger than the file"),
    ("reads past its storage", lambda p: _legacy(p, _state_dict_pickle(
        {"w": _tensor("0", 6, 0, (3,), (3,), view=b"N")}), {"0": _SIX_FLOATS}),
     "reaches element 6 of a storage of 6"),
    ("tar format (torch 0.1)", lambda p: p.write_bytes(b"storages".ljust(257, b"\0") + b"ustar"),
     "tar checkpoint format of torch 0.1, not supported"),
])
def test_bad_legacy_file_is_refused(tmp_path, what, make, message):
  del what
  path = tmp_path / "bad.pth"
  make(path)
  with pytest.raises(UserError) as caught:
    torch_checkpoint.load(path)
  assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
