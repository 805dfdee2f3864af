"""One BLAS thread for a stretch of small products (the re-ranker's fits).

OpenBLAS wakes its thread pool for every product above a small size. For the re-ranker's L-BFGS fits
(thousands of products of a few hundred thousand rows, and L-BFGS-B's own small products in SciPy's
OpenBLAS) that costs more than it gives on this 2-core machine, and under load (other processes on
both cores) it is ruinous: a tuning of 100 validation pairs took 12 s with the default threads and
0.6 s with one. ``openblas_set_num_threads_local`` sets the count for the calling thread only (other
threads of the process, e.g. Dagster's, keep theirs) and returns the previous count, which is put back.
Every OpenBLAS the process has loaded (NumPy's and SciPy's are two) is set; elsewhere a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from pathlib import Path


def _setters() -> list:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    paths = sorted({line.split()[-1] for line in maps.read_text().splitlines()
                    if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    setters = []
    for path in paths:
        try:
            library = ctypes.CDLL(path)  # already loaded: the same library, not a second copy
        except OSError:
            continue
        setter = getattr(library, "openblas_set_num_threads_local", None)
        if setter is not None:
            setter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
            setters.append(setter)
    return setters


@contextlib.contextmanager
def blas_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` BLAS threads in this thread (every loaded OpenBLAS)."""
    setters = _setters()
    previous = [setter(int(count)) for setter in setters]
    try:
        yield
    finally:
        for setter, value in zip(setters, previous, strict=True):
            setter(value)
