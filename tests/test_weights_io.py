"""Tests for reading weight files: `.safetensors` parsed without the safetensors package.

The files are assembled byte by byte from the format's description (huggingface/safetensors
README, "Format": an unsigned little-endian 64-bit header size, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
data, offsets relative to its start), never by jaxpose, and the expected values are packed
with `struct`, so a shared misreading of the layout cannot make both sides agree.
"""

import json
import pathlib
import shutil
import struct
import tempfile

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from jaxpose import weights
from jaxpose.errors import UserError


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]],
                      metadata: dict[str, str] | None = None, pad_to: int = 8) -> bytes:
  """A `.safetensors` file of `tensors` (name -> (dtype, shape, raw little-endian bytes)),
  laid out back to back in the given order; the header is space-padded to `pad_to` bytes
  (the alignment the reference writer uses)."""
  header, offset = {}, 0
  for name, (dtype, shape, raw) in tensors.items():
    header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
    offset += len(raw)
  if metadata is not None:
    header["__metadata__"] = metadata
  text = json.dumps(header).encode("utf-8")
  text += b" " * (-len(text) % pad_to)
  return struct.pack("<Q", len(text)) + text + b"".join(raw for _, _, raw in tensors.values())


def write_state_dict_safetensors(path, state_dict: dict[str, np.ndarray]) -> None:
  """`state_dict` (float32 / int64 arrays) as F32 / I64 tensors, raw bytes from `tobytes`
  of explicitly little-endian copies."""
  kinds = {np.dtype(np.float32): ("F32", "<f4"), np.dtype(np.int64): ("I64", "<i8")}
  tensors = {}
  for name, value in state_dict.items():
    value = np.asarray(value)
    dtype_name, little_endian = kinds[value.dtype]
    tensors[name] = (dtype_name, list(value.shape), value.astype(little_endian).tobytes())
  path.write_bytes(safetensors_bytes(tensors, metadata={"format": "pt"}))


# bfloat16 bit patterns (the high 16 bits of the float32): 1.0 = 0x3F80, -2.0 = 0xC000,
# 0.5 = 0x3F00, 3.140625 = 0x4049 (float32 0x40490000).
_BF16_BITS, _BF16_VALUES = (0x3F80, 0xC000, 0x3F00, 0x4049), (1.0, -2.0, 0.5, 3.140625)
_EVERY_DTYPE = {
    "f32": ("F32", [2, 2], struct.pack("<4f", 1.5, -2.0, 0.25, 1e-3)),
    "f16": ("F16", [3], struct.pack("<3e", 1.0, -0.5, 65504.0)),
    "bf16": ("BF16", [2, 2], struct.pack("<4H", *_BF16_BITS)),
    "i64": ("I64", [2], struct.pack("<2q", -(2**40), 7)),
    "i32": ("I32", [1, 3], struct.pack("<3i", -1, 0, 2**31 - 1)),
    "u8": ("U8", [4], bytes([0, 1, 128, 255])),
    "bool": ("BOOL", [2], bytes([1, 0])),
    "scalar": ("F32", [], struct.pack("<f", 42.0)),
    "empty": ("F32", [0, 3], b""),
}


class _TempDirTest(parameterized.TestCase):
  """A fresh directory per test (absltest's create_tempfile needs absl flags, unparsed
  under pytest)."""

  def setUp(self):
    super().setUp()
    self.directory = pathlib.Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, self.directory)

  def _write(self, content: bytes, name: str = "w.safetensors") -> str:
    path = self.directory / name
    path.write_bytes(content)
    return str(path)


class SafetensorsReadTest(_TempDirTest):

  def test_every_dtype_by_hand(self):
    path = self._write(safetensors_bytes(_EVERY_DTYPE, metadata={"format": "pt"}))
    tensors = weights.read_state_dict(path)
    self.assertEqual(set(tensors), set(_EVERY_DTYPE))
    expected = {
        "f32": np.array([[1.5, -2.0], [0.25, 1e-3]], np.float32),
        "f16": np.array([1.0, -0.5, 65504.0], np.float16),
        "bf16": np.array([[1.0, -2.0], [0.5, 3.140625]], np.float32),
        "i64": np.array([-(2**40), 7], np.int64),
        "i32": np.array([[-1, 0, 2**31 - 1]], np.int32),
        "u8": np.array([0, 1, 128, 255], np.uint8),
        "bool": np.array([True, False]),
        "scalar": np.array(42.0, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }
    for name, value in expected.items():
      self.assertEqual(tensors[name].dtype, value.dtype, name)
      self.assertEqual(tensors[name].shape, value.shape, name)
      np.testing.assert_array_equal(tensors[name], value, err_msg=name)

  def test_bfloat16_is_the_high_half_of_float32(self):
    # Independent of the reader's shift: the float32 whose top 16 bits are the bf16 bits.
    widened = struct.unpack("<4f", struct.pack("<4I", *(b << 16 for b in _BF16_BITS)))
    self.assertEqual(widened, _BF16_VALUES)
    path = self._write(safetensors_bytes({"w": ("BF16", [4], struct.pack("<4H", *_BF16_BITS))}))
    np.testing.assert_array_equal(weights.read_state_dict(path)["w"], widened)

  def test_offsets_follow_the_header_not_its_order(self):
    # Data stored b then a while the header lists a first: offsets decide, not order.
    a, b = struct.pack("<2f", 1.0, 2.0), struct.pack("<f", 3.0)
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
              "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    text = json.dumps(header).encode()
    tensors = weights.read_state_dict(self._write(struct.pack("<Q", len(text)) + text + b + a))
    np.testing.assert_array_equal(tensors["a"], [1.0, 2.0])
    np.testing.assert_array_equal(tensors["b"], [3.0])

  @parameterized.named_parameters(
      ("too_short", lambda good: good[:5], "too short for the 8-byte header size"),
      ("truncated_data", lambda good: good[:-3], r"tensor 'b'.*reach past.*truncated"),
      ("truncated_header", lambda good: good[:30], r"header size \d+ exceeds.*truncated"),
      ("header_not_json", lambda good: good[:8] + b"{not json" + good[17:],
       "header is not UTF-8 JSON"),
      ("header_not_object", lambda good: _with_header(good, [1, 2]), "header is a JSON list"),
      ("extra_data", lambda good: good + b"\0\0\0\0", "cover 24 of the 28 data bytes"),
  )
  def test_bad_file_is_one_line_naming_file(self, corrupt, message):
    good = safetensors_bytes({"a": ("F32", [4], b"\0" * 16), "b": ("F32", [2], b"\0" * 8)})
    path = self._write(corrupt(good))
    with self.assertRaisesRegex(UserError, message) as raised:
      weights.read_state_dict(path)
    self.assertIn(f"{path}: not a valid .safetensors file", str(raised.exception))
    self.assertNotIn("\n", str(raised.exception))

  @parameterized.named_parameters(
      ("size_mismatch", {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]},
       r"tensor 'w': data_offsets \[0, 12\] hold 12 bytes, but F32 of shape \[2, 2\] needs 16"),
      ("unknown_dtype", {"dtype": "F8_E4M3", "shape": [12], "data_offsets": [0, 12]},
       r"tensor 'w': dtype 'F8_E4M3' is not supported"),
      ("reversed_offsets", {"dtype": "U8", "shape": [0], "data_offsets": [12, 0]},
       r"tensor 'w': data_offsets \[12, 0\] is not \[begin, end\]"),
      ("bad_shape", {"dtype": "U8", "shape": [-12], "data_offsets": [0, 12]},
       r"tensor 'w': shape \[-12\] is not a list of non-negative integers"),
      ("no_offsets", {"dtype": "U8", "shape": [12]}, r"tensor 'w': header entry .* lacks"),
  )
  def test_bad_entry_names_the_tensor(self, entry, message):
    text = json.dumps({"w": entry}).encode()
    path = self._write(struct.pack("<Q", len(text)) + text + b"\0" * 12)
    with self.assertRaisesRegex(UserError, message):
      weights.read_state_dict(path)

  def test_overlapping_tensors_are_named(self):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    text = json.dumps(header).encode()
    path = self._write(struct.pack("<Q", len(text)) + text + b"\0" * 12)
    with self.assertRaisesRegex(UserError, r"tensor 'b' starts at data byte 4, expected 8 "
                                           r"\(overlap between tensors\)"):
      weights.read_state_dict(path)

  def test_state_dict_round_trip(self):
    rng = np.random.default_rng(0)
    state_dict = {"conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                  "bn1.num_batches_tracked": np.array(5, np.int64)}
    path = self.directory / "w.safetensors"
    write_state_dict_safetensors(path, state_dict)
    loaded = weights.read_state_dict(path)
    self.assertEqual(set(loaded), set(state_dict))
    for key, value in state_dict.items():
      np.testing.assert_array_equal(loaded[key], value)
      self.assertEqual(loaded[key].dtype, value.dtype)


def _with_header(good: bytes, header) -> bytes:
  """`good`'s data behind another JSON header."""
  size = struct.unpack("<Q", good[:8])[0]
  text = json.dumps(header).encode()
  return struct.pack("<Q", len(text)) + text + good[8 + size:]


class ReadStateDictTest(_TempDirTest):

  def test_missing_file_and_unknown_suffix_are_named(self):
    with self.assertRaisesRegex(UserError, "nowhere.safetensors: weight file not found"):
      weights.read_state_dict("/nowhere.safetensors")
    path = self._write(b"x", "w.ckpt")
    with self.assertRaisesRegex(UserError, r"unknown weight format '.ckpt'; known: .npz, "
                                           r".safetensors, .pth"):
      weights.read_state_dict(path)

  def test_damaged_npz_is_named(self):
    path = self._write(b"PK\x03\x04 not a zip archive", "w.npz")
    with self.assertRaisesRegex(UserError, r"w.npz: not a readable .npz file"):
      weights.read_state_dict(path)


if __name__ == "__main__":
  absltest.main()
