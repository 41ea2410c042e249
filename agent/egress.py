"""The daemon's AI-egress watcher thread: polls, and tells the daemon when to seal.

It wraps `collector._egress.EgressWatcher` in a thread that polls every
`[collectors.network] watch_interval`. The daemon cuts the open window just before
it seals a bundle holding the `ai_egress` collector (`cut`), and seals one of its
own when observations have waited `egress_seal_every` (`due_in`). On stop the open
window is closed as a batch: the next bundle (of this run or the next start) seals it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.config import Config
from collector._egress import EgressWatcher

NAME = "ai_egress"


def wanted(config: Config, collectors: list[str]) -> str | None:
    """Why the watcher does not run with this config, or None when it should."""
    network = config.collectors.network
    if not sys.platform.startswith("linux"):
        return "not Linux"
    if NAME not in collectors:
        return f"the {NAME} collector is not enabled"
    if not network.watch:
        return "collectors.network.watch is false"
    if not network.ai_endpoints:
        return "collectors.network.ai_endpoints is empty"
    return None


class EgressThread(threading.Thread):
    """Polls in the background; `cut` and `due_in` are called from the main loop."""

    def __init__(self, config: Config, log: Callable[..., None],
                 wake: threading.Event) -> None:
        super().__init__(name="gamsa-egress", daemon=True)
        self.wake = wake  # the daemon's: set when observations start to wait
        network = config.collectors.network
        self.seal_every = network.egress_seal_every
        self.log = log
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.watcher = EgressWatcher(config.state_dir, network.ai_endpoints,
                                     network.watch_interval)
        self.failing = False

    def run(self) -> None:
        interval = self.watcher.interval
        while not self.stop_event.wait(interval):
            try:
                with self.lock:
                    waiting = self.watcher.pending_since is not None
                    self.watcher.poll()
                if not waiting and self.watcher.pending_since is not None:
                    self.wake.set()  # the main loop now has a deadline to wait for
                if self.failing:
                    self.failing = False
                    self.log("info", "egress_watch", "egress watcher polling again")
            except OSError as exc:  # no space for open.json, ...: say so once, keep trying
                if not self.failing:
                    self.failing = True
                    self.log("error", "egress_watch_failed",
                             f"egress watcher: {type(exc).__name__}: {exc}")

    def cut(self) -> None:
        """Close the open window, so the bundle about to be sealed drains it."""
        with self.lock:
            try:
                self.watcher.cut()
            except OSError as exc:  # retried when it is due again, not in a spin
                self.watcher.pending_since = time.monotonic()
                self.log("error", "egress_cut_failed",
                         f"egress window not closed (sealed later): {exc}")

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
