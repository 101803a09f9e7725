"""Deterministic pseudo-random tensors shared by the parity tests and their fixture scripts.

Fixtures too large to store (a Res2Net or DetNet state_dict of millions of values) keep only
keys, shapes and per-tensor sums; the fixture script and the test both generate each tensor
from this integer hash, and the stored sums prove the two agree bit for bit.
"""

import numpy as np


def hash_uniform(index: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
  """Uniform [-1, 1) float32 from a 32-bit integer hash of (seed, tensor index, element)."""
  n = np.arange(int(np.prod(shape)), dtype=np.uint64)
  h = (n * np.uint64(2654435761) + np.uint64(index) * np.uint64(40503)
       + np.uint64(seed)) % np.uint64(2**32)
  h ^= h >> np.uint64(16)
  h = (h * np.uint64(0x45D9F3B)) % np.uint64(2**32)
  h ^= h >> np.uint64(16)
  return (h.astype(np.float64) / 2**31 - 1.0).astype(np.float32).reshape(shape)


def state_dict_value(index: int, key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
  """The value the fixture scripts give torch tensor `key` (number `index` in state_dict
  order): conv/linear weights U(-1, 1) * sqrt(3 / fan_in) (fan_in = prod(shape[1:])), BN
  weight 0.75 + 0.25 u, running var 1 + 0.5 u, every bias and running mean 0.1 u."""
  u = hash_uniform(index, shape, seed)
  if key.endswith("running_var"):
    return (1.0 + 0.5 * u).astype(np.float32)
  if len(shape) in (2, 4):
    return (u * np.float32(np.sqrt(3.0 / np.prod(shape[1:])))).astype(np.float32)
  if key.endswith("weight"):
    return (0.75 + 0.25 * u).astype(np.float32)
  return (0.1 * u).astype(np.float32)
