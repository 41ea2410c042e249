"""The `ai_egress` collector: seals what the daemon's egress watcher saw.

The watcher (collector/_egress.py, run by `gamsa agent run`) polls the kernel's
TCP tables every `watch_interval` and leaves closed windows as batch files under
`<state_dir>/egress/`. This collector drains them: the batches after the last one
sealed (its checkpoint), in order and without a gap, merged into one
`ai_egress_observed` record per (process, endpoint), one `ai_egress_window` record
per window, and one `ai_egress_drain` record saying what was drained. Batches
already sealed (at or below the checkpoint of the sealed head) are removed here.

A separate collector, not more record types of `network`: `network` says which
sockets are open at the instant it collects (one psutil snapshot, TCP and UDP);
this says which connections were made over time. Each question has one answer in
a bundle, and the two use the same endpoint rules (collector/_endpoints.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from collector._egress import (
    EGRESS_DIR,
    REMOTES_MAX,
    Observation,
    Window,
    batch_name,
    batch_numbers,
    read_open,
    read_window,
)
from collector.record import Record
from collector.registry import (
    CollectContext,
    Collector,
    Field,
    RecordType,
    coverage_gap,
    unsupported,
)

NAME = "ai_egress"


def _drainable(directory: Path, sealed: int | None) -> list[int]:
    """Batch numbers after `sealed`, contiguous: a batch created while the directory
    was listed may be missed by that listing while a later one is not, so the run
    stops at the first gap; a gap still there on a second listing is real (the
    state was restored or edited) and skipped over."""
    for attempt in (1, 2):
        numbers = [n for n in batch_numbers(directory) if sealed is None or n > sealed]
        if not numbers:
            return []
        start = numbers[0] if sealed is None else sealed + 1
        if numbers[0] == start or attempt == 2:
            run = [numbers[0]]
            for number in numbers[1:]:
                if number != run[-1] + 1:
                    break
                run.append(number)
            return run
    return []


def _prune(directory: Path, sealed: int | None) -> None:
    if sealed is None:
        return
    for number in batch_numbers(directory):
        if number <= sealed:
            try:
                os.unlink(directory / batch_name(number))
            except FileNotFoundError:
                pass


def _merge(into: dict[str, Observation], window: Window) -> None:
    """Add one window's observations (windows in order). A connection is counted in
    the window where it was first seen, so counts add up; `continued` (seen before
    these windows) is the first window's."""
    for key, seen in window.observations.items():
        have = into.get(key)
        if have is None:
            into[key] = dataclasses.replace(seen, states=list(seen.states),
                                            remotes=list(seen.remotes))
            continue
        have.first_seen = min(have.first_seen, seen.first_seen)
        have.last_seen = max(have.last_seen, seen.last_seen)
        have.states = sorted({*have.states, *seen.states})
        have.remotes = sorted({*have.remotes, *seen.remotes})[:REMOTES_MAX]
        have.count += seen.count
        if seen.process is not None:
            have.process = seen.process


def _observed_record(key: str, seen: Observation) -> Record:
    process = seen.process or {}
    return Record(NAME, "ai_egress_observed", key, {
        "endpoint": seen.endpoint, "matched": seen.matched,
        "first_seen": seen.first_seen, "last_seen": seen.last_seen,
        "count": seen.count, "continued": seen.continued,
        "states": seen.states, "remote_addresses": seen.remotes,
        "pid": process.get("pid"), "process_name": process.get("name"),
        "user": process.get("user"), "exe": process.get("exe"),
        "exe_sha256": process.get("exe_sha256"), "process_started": process.get("started"),
        "cmdline": process.get("cmdline"), "socket_uid": seen.socket_uid,
        "process_unknown_reason": None if seen.process is not None
        else seen.process_unknown_reason,
    })


def _window_record(window: Window) -> Record:
    return Record(NAME, "ai_egress_window", str(window.number), {
        "window": window.number, "started": window.started, "ended": window.ended,
        "polls": window.polls, "interval_seconds": window.interval_seconds,
        "endpoints": window.endpoints, "observations": len(window.observations),
        "owner_denied": window.owner_denied, "read_errors": window.read_errors,
        "source": window.source,
    })


def collect(ctx: CollectContext) -> Iterator[Record]:
    if not ctx.is_live or ctx.state_dir is None:
        yield unsupported(NAME, "watcher", "the egress watcher runs on the live system only")
        return
    directory = ctx.state_dir / EGRESS_DIR
    sealed = ctx.checkpoint(NAME)
    sealed = int(sealed) if isinstance(sealed, int) else None
    _prune(directory, sealed)
    numbers = _drainable(directory, sealed)
    merged: dict[str, Observation] = {}
    windows: list[Window] = []
    unreadable = 0
    for number in numbers:
        window = read_window(directory / batch_name(number))
        if window is None:
            unreadable += 1
            continue
        windows.append(window)
        _merge(merged, window)
    if numbers:
        ctx.set_checkpoint(NAME, numbers[-1])
    denied = sum(w.owner_denied for w in windows)
    if denied:
        yield coverage_gap(NAME, "socket owner", "the open files of other users' processes "
                                                 "are denied (not root)", denied)
    errors = sorted({e for w in windows for e in w.read_errors})
    for error in errors:
        yield coverage_gap(NAME, "socket table", error.split(": ", 1)[1] if ": " in error
                           else error)
    if unreadable:
        yield coverage_gap(NAME, "egress batch", "a batch file could not be read", unreadable)
    open_window = read_open(directory)
    data: dict[str, Any] = {
        "windows": len(windows), "first_window": numbers[0] if numbers else None,
        "last_window": numbers[-1] if numbers else None,
        "watched_from": windows[0].started if windows else None,
        "watched_to": windows[-1].ended if windows else None,
        "observed": len(merged),
        "open_window_observations": 0 if open_window is None else len(open_window.observations),
    }
    yield Record(NAME, "ai_egress_drain", NAME, data)
    for window in windows:
        yield _window_record(window)
    for key in sorted(merged):
        yield _observed_record(key, merged[key])


_NONE = type(None)
_TEXT = (str, dict, _NONE)

COLLECTOR = Collector(
    name=NAME,
    version="1",
    description="AI egress over time: every TCP connection to a configured `ai_endpoints` "
                "entry that the daemon's watcher saw in the kernel's socket tables "
                "(sock_diag netlink, else /proc/net/tcp and tcp6, every `watch_interval`), "
                "coalesced per process and endpoint with first/last seen and a count. "
                "Closed connections stay visible in TIME_WAIT for about a minute, so "
                "calls shorter than the interval are counted too (without a process). "
                "Bytes are not available (the tables hold no byte counts). Runs under "
                "`gamsa agent run` with `[collectors.network] watch = true`; `network` "
                "records the sockets open at collection time.",
    platforms=("linux",),
    record_types={
        "ai_egress_observed": RecordType(
            event=True,
            doc="Connections of one process (or of unknown processes, by reason) to one "
                "AI endpoint in the drained windows.",
            key="`<endpoint> <pid>:<start time in epoch µs>`, or `<endpoint> -:<reason>` "
                "when the process is unknown",
            fields={
                "endpoint": Field((str,), "the first matching entry, in normal form"),
                "matched": Field((list,), "every matching entry, as configured"),
                "first_seen": Field((str,), "first poll that saw one of the connections"),
                "last_seen": Field((str,), "last poll that saw one of them"),
                "count": Field((int,), "distinct connections first seen in these windows "
                                       "(a connection: its two ends and socket inode; "
                                       "its TIME_WAIT row is the same connection)"),
                "continued": Field((int,), "connections counted in an earlier bundle and "
                                           "still seen"),
                "states": Field((list,), "TCP states seen, e.g. ESTABLISHED, SYN_SENT, "
                                         "TIME_WAIT"),
                "remote_addresses": Field((list,), "distinct remote `address:port` seen "
                                                   "(at most 32)"),
                "pid": Field((int, _NONE), "owning process id, null when unknown"),
                "process_name": Field(_TEXT, "the process's name, or null"),
                "user": Field(_TEXT, "the process's user name, or null", personal=True),
                "exe": Field(_TEXT, "the process's executable path, or null"),
                "exe_sha256": Field((str, _NONE), "hex SHA-256 of the running executable "
                                                  "(/proc/<pid>/exe), or null"),
                "process_started": Field((str, _NONE), "the process's start time, or null"),
                "cmdline": Field((list, _NONE), "command line, secrets scrubbed, or null"),
                "socket_uid": Field((int, _NONE), "the socket's uid from the table (known "
                                                  "even when the process is not); null for "
                                                  "closed rows"),
                "process_unknown_reason": Field(
                    (str, _NONE), "null when the process is known; `closed`: first seen "
                                  "closed (TIME_WAIT; the kernel keeps no owner), `denied`: "
                                  "the owner's open files may not be read (not root), "
                                  "`gone`: it exited before it could be looked up"),
            },
        ),
        "ai_egress_window": RecordType(
            event=True,
            doc="One window of watching, sealed with its observations; a window with no "
                "observation proves the watcher ran and saw nothing.",
            key="the window number",
            fields={
                "window": Field((int,), "window number (contiguous per state dir)"),
                "started": Field((str,), "when the window opened"),
                "ended": Field((str, _NONE), "when it was closed"),
                "polls": Field((int,), "reads of the socket tables in the window"),
                "interval_seconds": Field((int,), "`watch_interval`"),
                "endpoints": Field((list,), "`[{entry, addresses}]`: the networks each "
                                            "entry matched (names as last resolved)"),
                "observations": Field((int,), "(process, endpoint) pairs seen"),
                "owner_denied": Field((int,), "connections whose process could not be "
                                              "looked for (not root)"),
                "read_errors": Field((list,), "socket tables that could not be read"),
                "source": Field((str,), "how the tables were read: `sock_diag` (netlink, "
                                        "filtered in the kernel), or `proc` (/proc/net/tcp, "
                                        "tcp6) with why not sock_diag; in the daemon also "
                                        "`+ destroy events` (sockets seen as the kernel "
                                        "destroys them, between polls) or why not"),
            },
        ),
        "ai_egress_drain": RecordType(
            event=True,
            doc="What this collection drained: one per run.",
            key="`ai_egress`",
            fields={
                "windows": Field((int,), "windows sealed in this bundle"),
                "first_window": Field((int, _NONE), "first window number, or null"),
                "last_window": Field((int, _NONE), "last window number, or null"),
                "watched_from": Field((str, _NONE), "start of the first window, or null"),
                "watched_to": Field((str, _NONE), "end of the last window, or null"),
                "observed": Field((int,), "`ai_egress_observed` records"),
                "open_window_observations": Field(
                    (int,), "observations in the window still open (a `gamsa collect` "
                            "beside the daemon: they go into a later bundle)"),
            },
        ),
    },
    collect=collect,
)
