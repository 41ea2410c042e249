"""The daemon's AI-egress watcher thread: polls, and tells the daemon when to seal.

It wraps `collector._egress.EgressWatcher` in a thread that polls every
`[collectors.network] watch_interval`. The daemon cuts the open window just before
it seals a bundle holding the `ai_egress` collector (`cut`), and seals one of its
own when observations have waited `egress_seal_every` (`due_in`). On stop the open
window is closed as a batch: the next bundle (of this run or the next start) seals it.

Polls are paced to a CPU budget: the kernel walks every socket of the host on each
read (about 7 ms with 10,000 sockets, docs/BENCHMARKS.md), so
on a busy host the wait between polls stretches until the measured CPU of its polls
stays under WATCH_CPU_SHARE of one core, never beyond WATCH_MAX_INTERVAL: a
closed connection stays in TIME_WAIT about 60 s, so every call is still counted;
only calls shorter than the interval lose their process.

TIME_WAIT stays on the side that closes first: a call the server ends leaves no row
here once the client closes. So between polls the thread also listens to the
kernel's socket-destroy events (sock_diag multicast; `collector._socktable`
`DestroyEvents`), read in batches at most every DESTROY_EVERY: such a call is
recorded without its process. A BPF filter on that socket (built from the resolved
endpoints, `collector._socktable.destroy_filter`) keeps the kernel from waking us
for the sockets of everything else the host closes; `destroy_wakes` counts wakes.
Where joining them is refused (it may need CAP_NET_ADMIN) the watcher polls only,
and its log line and every window's `source` say so.
"""

from __future__ import annotations

import contextlib
import os
import select
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
DESTROY_EVERY = 0.5  # seconds: destroy events are read in batches, at most this often
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
                                     values.value(network.WATCH_INTERVAL), netlink=netlink,
                                     destroy_events=netlink)
        self._stop_r, self._stop_w = os.pipe()  # wakes a wait on destroy events at stop
        self.failing = False
        self.cost = 0.0  # running CPU seconds of one poll
        self.stretched = False  # the budget spaced polls out (logged once)
        self.stretched_polls = 0  # consecutive polls spaced out by the budget
        self.destroy_cost = 0.0  # CPU seconds spent on socket-destroy events
        self.destroy_wakes = 0  # times destroy events woke the thread

    def wait(self, seconds: float) -> bool:
        """Sleep until the next poll, recording destroyed sockets as they come (at most
        every DESTROY_EVERY); True when stopping."""
        until = time.monotonic() + seconds
        poller: select.poll | None = None  # not select(): our fds may be above 1023
        while self.watcher.destroy is not None:
            left = until - time.monotonic()
            if left <= 0 or self.stop_event.is_set():
                return self.stop_event.is_set()
            if poller is None:
                poller = select.poll()
                poller.register(self.watcher.destroy.fileno(), select.POLLIN)
                poller.register(self._stop_r, select.POLLIN)
            ready = [fd for fd, _event in poller.poll(1000 * left)]
            if self._stop_r in ready or self.stop_event.is_set():
                return True
            if ready:
                self.destroy_wakes += 1
                started = time.thread_time()
                self.step(self.take_destroyed)
                self.destroy_cost += time.thread_time() - started
                if self.stop_event.wait(min(DESTROY_EVERY, max(0.0, until - time.monotonic()))):
                    return True
        return self.stop_event.wait(max(0.0, until - time.monotonic()))

    def run(self) -> None:
        interval = float(self.watcher.interval)
        wait = interval
        destroy_before = 0.0
        # resolve now so the kernel filters destroy events from the start; a failure
        # is retried (and said) by the first poll
        with contextlib.suppress(Exception), self.lock:
            self.watcher.resolve()
        while not self.wait(wait):
            started = time.thread_time()
            self.step(self.watcher.poll)
            # the whole poll (reading, owners, writing) and the destroy events read since
            # the last one: the budget is the watcher's, not only its polls'
            cost = time.thread_time() - started + self.destroy_cost - destroy_before
            destroy_before = self.destroy_cost
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

    def step(self, work: Callable[[], object]) -> None:
        """One poll, or one batch of destroy events, under the lock. A failure (no
        space for open.json or open.log, a read-only state directory, or a bug) is
        logged once and the thread goes on: the next step writes what this one could
        not (`unsaved`), and the first step that leaves nothing unsaved says so."""
        with self.lock:
            waiting = self.watcher.pending_since is not None
            try:
                work()
                error: Exception | None = None
            except Exception as exc:  # noqa: BLE001 - never die silently
                error = exc
            unsaved = self.watcher.unsaved
        if not waiting and self.watcher.pending_since is not None:
            self.wake.set()  # the main loop now has a deadline to wait for
        if error is not None:
            if not self.failing:
                self.failing = True
                self.log("error", "egress_watch_failed",
                         f"egress watcher: {type(error).__name__}: {error}")
        elif self.failing and not unsaved:
            self.failing = False
            self.log("info", "egress_watch", "egress watcher recording again")

    def take_destroyed(self) -> None:
        """Record the sockets destroyed since the last call (held: `self.lock`)."""
        joined = self.watcher.destroy is not None
        self.watcher.take_destroyed()
        if joined and self.watcher.destroy is None:
            self.log("warning", "egress_watch", f"egress watcher: socket-destroy "
                     f"events lost ({self.watcher.destroy_refused}); polling only")

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
        os.write(self._stop_w, b"x")
        self.join(max(5.0, self.watcher.interval * 2))
        if not self.is_alive():  # what the kernel queued until now goes in this window
            self.step(self.take_destroyed)
        self.cut()
        if not self.is_alive():
            self.watcher.close()
            for fd in (self._stop_r, self._stop_w):
                os.close(fd)


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
    watcher = thread.watcher
    destroy = "socket-destroy events on" if watcher.destroy is not None else (
        f"no socket-destroy events ({watcher.destroy_refused}): a short call the server "
        f"closes first can fall between two polls")
    log("info", "egress_watch", f"egress watcher on: every {watcher.interval} s, "
        f"{len(watcher.endpoints)} endpoint(s); {destroy}",
        destroy_events=watcher.destroy is not None)
    return thread
