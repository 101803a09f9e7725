"""Stop glibc from returning XLA's per-step buffers to the kernel (CPU backend, Linux).

XLA's CPU client allocates each execution's temporaries as one large aligned block (442 MB
for the default train step) and frees it when the step ends. glibc serves blocks that large
with a fresh `mmap` and frees them with `munmap`, so every step page-faults the whole block
in again and the kernel zeroes it: measured with `perf` on the default step, 22% of the
process's cycles were page faults and page clearing. Keeping freed memory in the heap
(one arena, no mmap, no trimming) lets the next step reuse the same pages; the step went
from 1.31 to 1.04 CPU-seconds. Memory is not returned to the OS until the process exits,
which is what a training process wants.

This is the runtime form of `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=<large>`; it has to run before XLA's thread pool first allocates
(i.e. before the first JAX computation), and is a no-op where glibc is absent.
"""

import ctypes
import ctypes.util
import sys

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**62


def keep_freed_memory_mapped() -> bool:
  """Applies the settings above; returns whether glibc accepted all of them."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # musl or another libc without mallopt
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  # One arena: glibc's per-thread arenas are capped at 64 MB heaps and fall back to mmap
  # for larger blocks even with mmap disabled.
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, min(_NEVER_TRIM, 2**31 - 1)))
  return all(mallopt(param, value) == 1 for param, value in settings)
