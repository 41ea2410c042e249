"""Keep the long-lived daemon's resident memory near its floor (glibc hosts).

A sweep of 10,000 files allocates tens of megabytes that are freed when it is sealed,
but glibc keeps freed memory inside its heaps: by default its mmap threshold grows
with every large block freed, so later large buffers come from the heap and leave it
fragmented, and each thread that allocates (the collectors run in their own threads
for their timeouts) gets its own arena. `tune` fixes the threshold (large blocks are
mapped and unmapped on their own) and caps the arenas at two, once at start, before
any thread runs; `release` collects the cycles a sealing left and gives the freed
pages of every arena back to the kernel (`malloc_trim`: milliseconds), after each
sealing. Numbers: docs/BENCHMARKS.md ("The idle daemon").

`for_batch_work` is the opposite setting, for a process that verifies on a Dask
worker: Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, so glibc gives
the top of the heap back on nearly every free and takes it again on the next
allocation; verifying then costs 1.45x the CPU (docs/BENCHMARKS.md). It sets glibc's
own upper thresholds instead.

Where the C library is not glibc (musl) all three are no-ops: nothing else changes.
"""

from __future__ import annotations

import ctypes
import gc
from typing import Any

M_TRIM_THRESHOLD = -1  # mallopt(3) parameters (glibc malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, kept: setting it stops the growth
TRIM_THRESHOLD = 256 * 1024
ARENA_MAX = 2
BATCH_MMAP_THRESHOLD = 4 * 1024 * 1024  # for_batch_work: buffers below come from the heap
BATCH_TRIM_THRESHOLD = 32 * 1024 * 1024  # glibc's dynamic maximum on 64-bit hosts

_libc: Any = None


def _glibc() -> Any:
    """glibc's handle, or None where mallopt/malloc_trim are absent."""
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(None)
            _libc = libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") \
                else False
        except OSError:
            _libc = False
    return _libc or None


def tune() -> bool:
    """Fix the mmap threshold and cap the arenas; True where glibc took them."""
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (M_ARENA_MAX, ARENA_MAX)))


def release() -> None:
    """After a sealing: collect cycles, then return freed heap pages to the kernel."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


_batch_tuned = False


def for_batch_work() -> bool:
    """Once per process: malloc thresholds for throughput, not for a small footprint
    (a Dask worker verifying chunks); True where glibc took them."""
    global _batch_tuned
    if _batch_tuned:
        return True
    libc = _glibc()
    if libc is None:
        return False
    _batch_tuned = all(libc.mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, BATCH_MMAP_THRESHOLD), (M_TRIM_THRESHOLD, BATCH_TRIM_THRESHOLD)))
    return _batch_tuned
