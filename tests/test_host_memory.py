"""`host_memory.keep_freed_memory_mapped` makes a freed large block reusable without page
faults: counted with getrusage's minor faults in fresh subprocesses (the setting is
process-wide, so it is never applied to the test process itself)."""

import json
import subprocess
import sys

import pytest

_PROBE = """
import ctypes, ctypes.util, json, resource, sys
from jaxpose import host_memory
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
applied = host_memory.keep_freed_memory_mapped() if sys.argv[1] == "on" else None
size = 64 * 2**20
faults = []
for _ in range(4):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(size)  # as XLA's AlignedMalloc: plain glibc, every page then written
  ctypes.memset(block, 1, size)
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""
_PAGES = 64 * 2**20 // 4096


def _probe(mode: str) -> dict:
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                       check=True, timeout=120).stdout
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_freed_blocks_are_reused_without_page_faults():
  default, tuned = _probe("off"), _probe("on")
  assert tuned["applied"] is True
  # glibc's default serves a 64 MB block by mmap and returns it on free: every allocation
  # faults all its pages in again (fewer faults where the kernel backs it with huge pages,
  # hence the loose bound). Tuned, only the first one does.
  assert min(default["faults"][1:]) > _PAGES // 64, default
  assert max(tuned["faults"][1:]) < _PAGES // 20, tuned
