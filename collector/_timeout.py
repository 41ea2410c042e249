"""Run a collector with a timeout: one worker thread per run, abandoned if it overruns.

Why a thread and not a child process: Python cannot kill a thread, but a child
process would copy the agent (its caches, its open files) for every collector run,
and records would have to cross a pipe in a serialized form (no pickle). Collectors
are already bounded inside (tools have their own timeouts, files are opened without
blocking), so an overrun is rare: a hung NFS mount, a tool stuck in the kernel. The
run is then abandoned: its records are discarded, its checkpoint proposals were made
on a private copy of the context and are dropped (a log offset never moves past
records that were not sealed), and the bundle is sealed with the others and a
`collector_timeout` record. The abandoned thread is left to finish on its own; until
it does, the same collector is not started again (`collector_skipped`), so a stuck
collector costs one thread, never a pile of them.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass

from collector.record import Record, utc_now
from collector.registry import (
    SKIPPED_TYPE,
    TIMEOUT_TYPE,
    CollectContext,
    Collector,
    CollectorResult,
    run_collector,
)


@dataclass(frozen=True)
class _Stuck:
    thread: threading.Thread
    started_at: str


_stuck: dict[str, _Stuck] = {}  # collector name -> its abandoned run still going
_stuck_lock = threading.Lock()


def still_running(name: str) -> str | None:
    """When the abandoned run of `name` started, if it is still running."""
    with _stuck_lock:
        stuck = _stuck.get(name)
        if stuck is not None and not stuck.thread.is_alive():
            del _stuck[name]
            stuck = None
    return None if stuck is None else stuck.started_at


def run_bounded(collector: Collector, ctx: CollectContext, timeout: float) -> CollectorResult:
    """`run_collector` in a worker thread, given up on after `timeout` seconds."""
    stuck_since = still_running(collector.name)
    if stuck_since is not None:
        reason = "previous run still running (it timed out)"
        return CollectorResult(
            collector.name, collector.version, "error",
            [Record(collector.name, SKIPPED_TYPE, collector.name,
                    {"reason": reason, "stuck_since": stuck_since})],
            f"skipped: {reason}, since {stuck_since}")
    started, started_at = time.monotonic(), utc_now()
    own = dataclasses.replace(ctx, new_checkpoints={}, deadline=started + timeout)
    outcome: list[CollectorResult] = []
    worker = threading.Thread(target=lambda: outcome.append(run_collector(collector, own)),
                              name=f"gamsa-collector-{collector.name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        with _stuck_lock:
            _stuck[collector.name] = _Stuck(worker, started_at)
        return CollectorResult(
            collector.name, collector.version, "error",
            [Record(collector.name, TIMEOUT_TYPE, collector.name,
                    {"timeout_seconds": math.ceil(timeout), "started_at": started_at})],
            f"timed out after {timeout:g} s; abandoned, its records not sealed",
            int((time.monotonic() - started) * 1000))
    if not outcome:  # only a BaseException (SystemExit in a thread) ends a run so
        return CollectorResult(collector.name, collector.version, "error", [],
                               "the run ended without a result")
    ctx.new_checkpoints.update(own.new_checkpoints)
    return outcome[0]
