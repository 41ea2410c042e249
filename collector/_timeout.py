"""Run a collector with a timeout: one worker thread per run, abandoned if it overruns.

Why a thread and not a child process: Python cannot kill a thread, but a child
process would copy the agent (its caches, its open files) for every collector run,
and records would have to cross a pipe in a serialized form (no pickle). Collectors
are already bounded inside (tools have their own timeouts, files are opened without
blocking), so an overrun is rare: a hung NFS mount, a tool stuck in the kernel.

The worker streams its records through a small queue to the caller, who writes them
into the bundle as they come (agent/records.py), so a run's memory stays bounded.
When the run overruns it is abandoned: the records it streamed before the timeout
are sealed (they are already part of the records object, as with a collector that
raises), then a `collector_timeout` record counting them; its checkpoint proposals
were made on a private copy of the context and are dropped, so a log offset never
moves for a run that did not finish (its lines are read again next run: repeated,
never missing). The next record the abandoned worker hands over ends it; one stuck
in a system call is left to finish on its own, and until it does the same collector
is not started again (`collector_skipped`), so a stuck collector costs one thread,
never a pile of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from collector.record import Record, utc_now
from collector.registry import (
    SKIPPED_TYPE,
    TIMEOUT_TYPE,
    CollectContext,
    Collector,
    CollectorResult,
    stream_collector,
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


QUEUE_RECORDS = 1024  # records in flight between the worker and the sealer


class _Abandoned(Exception):
    """Raised in an abandoned worker when it hands over its next record."""


def stream_bounded(collector: Collector, ctx: CollectContext, timeout: float,
                   emit: Callable[[Record], object]) -> CollectorResult:
    """`stream_collector` in a worker thread, given up on after `timeout` seconds.

    Records reach `emit` on the caller's thread, in order. An exception `emit` raises
    (the sealer's: no space) abandons the worker and propagates.
    """
    stuck_since = still_running(collector.name)
    if stuck_since is not None:
        reason = "previous run still running (it timed out)"
        emit(Record(collector.name, SKIPPED_TYPE, collector.name,
                    {"reason": reason, "stuck_since": stuck_since}))
        return CollectorResult(collector.name, collector.version, "error", [],
                               f"skipped: {reason}, since {stuck_since}", count=1,
                               cut_short=SKIPPED_TYPE)
    started, started_at = time.monotonic(), utc_now()
    deadline = started + timeout
    own = dataclasses.replace(ctx, new_checkpoints={}, deadline=deadline)
    handover: queue.Queue[Record | _Done] = queue.Queue(QUEUE_RECORDS)
    abandoned = threading.Event()

    def put(record: Record) -> None:
        while not abandoned.is_set():
            try:
                handover.put(record, timeout=0.5)
                return
            except queue.Full:
                continue
        raise _Abandoned

    def work() -> None:
        try:
            result: CollectorResult | None = stream_collector(collector, own, put)
        except _Abandoned:
            return
        except BaseException:  # noqa: BLE001 - SystemExit in a thread: the run has no result
            result = None
        with contextlib.suppress(_Abandoned):
            while not abandoned.is_set():
                try:
                    handover.put(_Done(result), timeout=0.5)
                    return
                except queue.Full:
                    continue

    worker = threading.Thread(target=work, name=f"gamsa-collector-{collector.name}",
                              daemon=True)
    worker.start()
    streamed = 0
    try:
        while True:
            try:
                item = handover.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if isinstance(item, _Done):
                if item.result is None:
                    return CollectorResult(collector.name, collector.version, "error", [],
                                           "the run ended without a result", count=streamed)
                ctx.new_checkpoints.update(own.new_checkpoints)
                return item.result
            emit(item)
            streamed += 1
    except BaseException:
        abandoned.set()
        raise
    abandoned.set()
    with _stuck_lock:
        _stuck[collector.name] = _Stuck(worker, started_at)
    emit(Record(collector.name, TIMEOUT_TYPE, collector.name,
                {"timeout_seconds": math.ceil(timeout), "started_at": started_at,
                 "records_before_timeout": streamed}))
    return CollectorResult(
        collector.name, collector.version, "error", [],
        f"timed out after {timeout:g} s; abandoned after {streamed} records",
        int((time.monotonic() - started) * 1000), count=streamed + 1,
        cut_short=TIMEOUT_TYPE)


@dataclass(frozen=True)
class _Done:
    result: CollectorResult | None


def run_bounded(collector: Collector, ctx: CollectContext, timeout: float) -> CollectorResult:
    """`stream_bounded`, keeping the records in the result."""
    records: list[Record] = []
    result = stream_bounded(collector, ctx, timeout, records.append)
    result.records = records
    return result
