"""The agent's own cost, for each manifest's `predicate.agent.resources`.

CPU is the whole process's (every thread: the collectors, the shipper, a stuck
collector's thread) over one collection, from just before the collectors run to
just before the manifest is signed; memory is the process's resident set at that
moment and its peak since the process started. Integers only (no floats in a
manifest): milliseconds and bytes.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from signing.predicate import Resources

if sys.platform != "win32":
    import resource


@dataclass(frozen=True)
class Snapshot:
    """Process CPU seconds so far, and memory now."""

    user_s: float
    system_s: float
    rss_bytes: int
    peak_rss_bytes: int

    def since(self, before: Snapshot) -> Resources:
        """The manifest's `resources`: CPU used since `before`, memory now."""
        return Resources(max(0, round((self.user_s - before.user_s) * 1000)),
                         max(0, round((self.system_s - before.system_s) * 1000)),
                         self.rss_bytes, self.peak_rss_bytes)


def snapshot() -> Snapshot:
    times = os.times()
    rss = _rss_bytes()
    # The kernel's two counters are updated apart (a young process, e.g. a sweep
    # child, can read a current RSS above ru_maxrss): a peak is never below it.
    return Snapshot(times.user, times.system, rss, max(rss, _peak_rss_bytes()))


def _rss_bytes() -> int:
    try:  # Linux: resident pages, second field of statm; no psutil needed for this
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import psutil  # type: ignore[import-untyped]  # no stubs installed

        return int(psutil.Process().memory_info().rss)


def _peak_rss_bytes() -> int:
    if sys.platform == "win32":
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux: KiB
