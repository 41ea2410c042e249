"""What the daemon watches in itself, as small state machines that say when a life
event is due (agent/lifelog.py notes it): a wall-clock jump, shipping that keeps
failing and then recovers, the spool crossing its pressure mark. Each returns the
event's fields on a transition and None otherwise, so a lasting condition is noted
once, not at every loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.state import SpoolUsage
from collector.record import from_epoch, utc_now

CLOCK_JUMP_SECONDS = 2  # an NTP slew never moves this far between two loop turns
SHIP_FAILING_AFTER = 3  # consecutive failed ship runs (about 15 s of backoff) to note
SPOOL_HIGH_BP = 8000  # spool pressure noted at 80% of spool.max_bytes (basis points) ...
SPOOL_RELIEVED_BP = 7000  # ... and relieved below 70%, so it does not flap at the mark


def boot_clock() -> float:
    """Seconds since boot, counting suspend (so a suspend is not a clock jump)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


@dataclass
class ClockWatch:
    """Compares the wall clock's progress with the boot clock's between two readings."""

    wall: Callable[[], float] = time.time
    boot: Callable[[], float] = boot_clock
    last: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        self.last = (self.wall(), self.boot())

    def check(self) -> dict[str, Any] | None:
        """`clock_jump` fields when the wall clock stepped since the last reading."""
        now = (self.wall(), self.boot())
        (wall_before, boot_before), self.last = self.last, now
        step = (now[0] - wall_before) - (now[1] - boot_before)
        if abs(step) < CLOCK_JUMP_SECONDS:
            return None
        return {"step_seconds": round(step), "wall_before": from_epoch(wall_before),
                "wall_after": from_epoch(now[0])}


@dataclass
class ShipHealth:
    """Consecutive ship failures: `ship_failing` once at the SHIP_FAILING_AFTER-th,
    `ship_recovered` at the first success after that."""

    failures: int = 0
    since: str | None = None

    def failed(self, error: str) -> dict[str, Any] | None:
        self.failures += 1
        self.since = self.since or utc_now()
        if self.failures != SHIP_FAILING_AFTER:
            return None
        return {"failures": self.failures, "since": self.since, "error": error}

    def succeeded(self) -> dict[str, Any] | None:
        noted = self.failures >= SHIP_FAILING_AFTER
        fields = {"failures": self.failures, "since": self.since or ""}
        self.failures, self.since = 0, None
        return fields if noted else None


@dataclass
class SpoolPressure:
    """The spool above 80% of its cap (`high`), then below 70% again (`relieved`)."""

    high: bool = False
    last: dict[str, int] = field(default_factory=dict)

    def check(self, usage: SpoolUsage) -> dict[str, Any] | None:
        level = usage.bytes * 10_000 // usage.max_bytes if usage.max_bytes else 0
        if not self.high and level >= SPOOL_HIGH_BP:
            self.high = True
        elif self.high and level < SPOOL_RELIEVED_BP:
            self.high = False
        else:
            return None
        return {"level": "high" if self.high else "relieved", "spool_bytes": usage.bytes,
                "max_bytes": usage.max_bytes, "bundles": usage.bundles}
