"""Keep freed memory in the process: the forward allocates the same large buffers on every batch.

A batch's attention scores and patterns are [batch, heads, pos, pos] float32 (268 MB at 16 x 16 x 512^2).
glibc serves blocks that large with mmap and gives them back with munmap when torch frees them, so the
next batch's buffers are fresh pages the kernel must fault in and zero: on a scan of the shared corpus
with ts-1l-dev that was ~10 million page faults and 19 s of system time against ~30 s of compute.
Raising glibc's mmap and trim thresholds keeps those blocks in the heap for reuse. Peak memory is
unchanged (the batches need it anyway); the process just keeps its peak until it exits.

Called by the CLI and by long jobs (scan_corpus); a no-op outside glibc, or with
CIRCUITBOOK_MALLOC_TUNING=0 in the environment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc malloc.h
_done = False


def keep_freed_memory() -> bool:
    """Tune glibc malloc as described above (once per process). Returns whether it took effect."""
    global _done
    if _done:
        return True
    if os.environ.get("CIRCUITBOOK_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt...)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # blocks below 1 GiB come from the heap (glibc's own threshold adapts, up to 32 MiB); the heap's top is
    # never trimmed, and grows in 64 MiB steps
    ok = (mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
          and mallopt(_M_TOP_PAD, 64 << 20) == 1)
    _done = ok
    return ok
