"""Handing freed memory back to the operating system (plain Python, no outside system).

With the in-process executor every step of a run shares one process; pandas, Arrow and NumPy free
their arrays, but glibc and Arrow's allocator keep freed pages mapped, so without a trim a step
would start at the previous steps' high-water mark.
"""

from __future__ import annotations

import ctypes
import gc
import os

import pyarrow as pa

COLLECT_ABOVE_BYTES = 1 << 30
"""Resident size from which :func:`release_memory` also collects reference cycles: a full
``gc.collect()`` costs 0.2-1 s once Dagster is imported, which a small run (the demo, the tests)
paid at every input and output, 90 % of a small graph's run time, for nothing to free."""


def resident_bytes() -> int | None:
    """This process's resident set size, or None where ``/proc`` does not tell it."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def trim_heap() -> None:
    """Return the pages glibc's heap and Arrow's allocator (mimalloc) keep after a free."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def release_memory(collect: bool = False) -> None:
    """:func:`trim_heap`, after collecting reference cycles when ``collect`` or in a process over 1 GiB
    (or of unknown size)."""
    resident = None if collect else resident_bytes()
    if resident is None or resident >= COLLECT_ABOVE_BYTES:
        gc.collect()
    trim_heap()
