"""A cap on bytes hashed per minute (`[collectors.files] hash_rate`): a token bucket.

The bucket holds at most one minute's bytes and refills continuously, so a burst
after idle is allowed and the average stays under the rate. A reader reserves a
file's bytes before reading it and sleeps until its turn; a reservation whose turn
would come after the caller's bound is refused (nothing reserved), and the caller
records the file as not hashed. One bucket per rate is shared by the process, so
the daemon's successive runs (and its hashing threads) draw on one budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

UNBOUNDED_RUN_WAIT_SECONDS = 600.0  # the bound on waiting when a run has no deadline


class HashBudget:
    """`per_minute` bytes a minute, reserved before reading."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.per_second = per_minute / 60
        self.capacity = float(per_minute)
        self.clock = clock
        self.sleep = sleep
        self.tokens = self.capacity
        self.at = clock()
        self._lock = threading.Lock()

    def reserve(self, nbytes: int, wait_until: float) -> float | None:
        """Seconds to wait before reading `nbytes` (now reserved), or None when that
        wait would end after `wait_until` (a monotonic time; nothing reserved)."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.per_second)
            self.at = now
            wait = max(0.0, (nbytes - self.tokens) / self.per_second)
            if now + wait > wait_until:
                return None
            self.tokens -= nbytes
            return wait

    def take(self, nbytes: int, wait_until: float) -> bool:
        """Reserve and sleep until the bytes may be read; False when refused."""
        wait = self.reserve(nbytes, wait_until)
        if wait is None:
            return False
        if wait > 0:
            self.sleep(wait)
        return True


_budgets: dict[int, HashBudget] = {}
_budgets_lock = threading.Lock()


def budget_for(per_minute: int) -> HashBudget | None:
    """The process's bucket for this rate; None for 0 (no cap)."""
    if per_minute <= 0:
        return None
    with _budgets_lock:
        return _budgets.setdefault(per_minute, HashBudget(per_minute))


def wait_bound(deadline: float | None, now: float) -> float:
    """Until when a run may wait for hashing: halfway to its deadline, so waiting never
    makes it overrun its timeout; UNBOUNDED_RUN_WAIT_SECONDS from now without one."""
    if deadline is None:
        return now + UNBOUNDED_RUN_WAIT_SECONDS
    return now + max(0.0, deadline - now) / 2
