"""glibc malloc settings for a process that allocates a body chunk per socket read.

uvloop and httptools hand every read (up to 256 KB) over as a new bytes object. glibc's
default serves blocks above its mmap threshold with fresh mappings and trims the heap
whenever 128 KiB-1 MiB is free at its top, so the pages of those chunks were faulted in,
zeroed and given back over and over: perf showed that as a third of the server's kernel
time during a large upload. Keeping such blocks in the heap, and the heap's free top up to
a bound, turns that into plain reuse. Peak RSS is unchanged (the write-buffer budget bounds
what is live); only freed memory up to TRIM_THRESHOLD stays mapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 32 << 20


def tune() -> bool:
    """Apply the settings above when the C library is glibc; True if it was."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        logging.getLogger(__name__).warning("mallopt refused the malloc settings")
    return ok
