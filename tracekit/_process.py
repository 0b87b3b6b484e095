"""Settings a `tracekit` command makes for its own process (a notebook's process is left alone)."""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def reuse_big_allocations() -> None:
    """Have glibc's malloc keep freed blocks of up to 64 MB for reuse instead of unmapping them.

    Ingest reads its input in 8 MB chunks and makes a few MB of arrays per chunk;
    above its (dynamic) mmap threshold glibc maps each one fresh and returns it on
    free, so the kernel faults in and zeroes every page of every chunk again:
    0.31 s of system time for a 1.4 GB JSONL input, 0.05 s with the blocks reused
    (bench_ingest, JSONL, 0.96 -> 0.94 us of CPU per event). Not glibc (musl,
    macOS): nothing to do.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, 64 << 20)
    mallopt(_M_TRIM_THRESHOLD, 512 << 20)
