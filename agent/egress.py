"""The daemon's AI-egress watcher thread: polls, and tells the daemon when to seal.

It wraps `collector._egress.EgressWatcher` in a thread that polls every
`[collectors.network] watch_interval`. The daemon cuts the open window just before
it seals a bundle holding the `ai_egress` collector (`cut`), and seals one of its
own when observations have waited `egress_seal_every` (`due_in`). On stop the open
window is closed as a batch: the next bundle (of this run or the next start) seals it.

Polls are paced to a CPU budget: the kernel walks every socket of the host on each
read (about 10 ms per address family with 10,000 sockets, docs/BENCHMARKS.md), so
on a busy host the wait between polls stretches until the measured CPU of its polls
stays under WATCH_CPU_SHARE of one core, never beyond WATCH_MAX_INTERVAL: a
closed connection stays in TIME_WAIT about 60 s, so every call is still counted;
only calls shorter than the interval lose their process.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.config import Config
from collector import network
from collector._egress import EgressWatcher
from collector._endpoints import AI_ENDPOINTS

NAME = "ai_egress"
WATCH_CPU_SHARE = 0.005  # of one core: the watcher's budget (issue 10's target)
WATCH_MAX_INTERVAL = 30.0  # seconds; half of TIME_WAIT, so no closed call is missed
COST_SMOOTHING = 0.3  # weight of the newest poll in the running cost
STRETCH_LOGGED_AFTER = 10  # consecutive spaced-out polls before it is logged


def pace(interval: float, cost: float) -> float:
    """Seconds until the next poll: `interval`, or longer when polls of `cost` CPU
    seconds would exceed the budget, at most WATCH_MAX_INTERVAL."""
    return min(max(interval, cost / WATCH_CPU_SHARE), max(interval, WATCH_MAX_INTERVAL))


def wanted(config: Config, collectors: list[str]) -> str | None:
    """Why the watcher does not run with this config, or None when it should."""
    values = config.collectors
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if NAME not in collectors:
        return f"the {NAME} collector is not enabled"
    if not values.value(network.WATCH):
        return "collectors.network.watch is false"
    if not values.value(AI_ENDPOINTS):
        return "collectors.network.ai_endpoints is empty"
    return None


class EgressThread(threading.Thread):
    """Polls in the background; `cut` and `due_in` are called from the main loop."""

    def __init__(self, config: Config, log: Callable[..., None],
                 wake: threading.Event, netlink: bool = True) -> None:
        super().__init__(name="gamsa-egress", daemon=True)
        self.wake = wake  # the daemon's: set when observations start to wait
        values = config.collectors
        self.seal_every = values.value(network.EGRESS_SEAL_EVERY)
        self.log = log
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        endpoints: list[str] = values.value(AI_ENDPOINTS)
        self.watcher = EgressWatcher(config.state_dir, endpoints,
                                     values.value(network.WATCH_INTERVAL), netlink=netlink)
        self.failing = False
        self.cost = 0.0  # running CPU seconds of one poll
        self.stretched = False  # the budget spaced polls out (logged once)
        self.stretched_polls = 0  # consecutive polls spaced out by the budget

    def run(self) -> None:
        interval = float(self.watcher.interval)
        wait = interval
        while not self.stop_event.wait(wait):
            started = time.thread_time()
            try:
                with self.lock:
                    waiting = self.watcher.pending_since is not None
                    self.watcher.poll()
                if not waiting and self.watcher.pending_since is not None:
                    self.wake.set()  # the main loop now has a deadline to wait for
                if self.failing:
                    self.failing = False
                    self.log("info", "egress_watch", "egress watcher polling again")
            except Exception as exc:  # noqa: BLE001 - no space for open.json, or a bug:
                if not self.failing:  # say so once and keep trying, never die silently
                    self.failing = True
                    self.log("error", "egress_watch_failed",
                             f"egress watcher: {type(exc).__name__}: {exc}")
            cost = time.thread_time() - started  # the whole poll: reading, owners, writing
            self.cost = cost if not self.cost else \
                COST_SMOOTHING * cost + (1 - COST_SMOOTHING) * self.cost
            wait = pace(interval, self.cost)
            # One costly poll (a new process's executable hashed) stretches the wait for
            # a few polls only; say so when the host's sockets keep it stretched.
            self.stretched_polls = self.stretched_polls + 1 if wait > interval * 1.5 else 0
            if self.stretched_polls == STRETCH_LOGGED_AFTER and not self.stretched:
                self.stretched = True
                self.log("info", "egress_paced",
                         f"egress watcher: a poll costs {1000 * self.cost:.0f} ms of CPU "
                         f"here (many sockets); polling every {wait:.0f} s to stay under "
                         f"{100 * WATCH_CPU_SHARE:g}% of a core", wait_seconds=round(wait))

    def cut(self) -> None:
        """Close the open window, so the bundle about to be sealed drains it."""
        with self.lock:
            try:
                self.watcher.cut()
            except OSError as exc:  # retried when it is due again, not in a spin
                self.watcher.pending_since = time.monotonic()
                self.log("error", "egress_cut_failed",
                         f"egress window not closed (sealed later): {exc}")

    def retry_later(self) -> None:
        """A bundle meant to seal the closed windows failed: seal again when due."""
        if self.watcher.pending_since is None:
            self.watcher.pending_since = time.monotonic()

    def due_in(self) -> float | None:
        """Seconds until observations waiting must be sealed; None when none wait."""
        since = self.watcher.pending_since
        if since is None:
            return None
        return max(0.0, since + self.seal_every - time.monotonic())

    def stop(self) -> None:
        self.stop_event.set()
        self.join(max(5.0, self.watcher.interval * 2))
        self.cut()


def start(config: Config, collectors: list[str], log: Callable[..., Any],
          wake: threading.Event) -> EgressThread | None:
    """The running watcher, or None (with a log line saying why) when it does not run."""
    reason = wanted(config, collectors)
    if reason is not None:
        if NAME in collectors:
            log("info", "egress_watch", f"egress watcher off: {reason}")
        return None
    try:
        thread = EgressThread(config, log, wake)
    except OSError as exc:
        log("error", "egress_watch_failed", f"egress watcher not started: {exc}")
        return None
    thread.start()
    log("info", "egress_watch", f"egress watcher on: every {thread.watcher.interval} s, "
        f"{len(thread.watcher.endpoints)} endpoint(s)")
    return thread
