"""The `agent` collector: the agent's own life, sealed like any other evidence.

The daemon and `gamsa collect` note what happens to the agent (start, stop, a config
loaded or refused, a collector that timed out, was skipped or failed, spool pressure,
a clock jump, shipping that keeps failing, a watcher overflow) as events in a small
journal in the state directory (agent/lifelog.py writes it; this module owns its
format and its event types). This collector drains the journal: every event after the
last sealed one becomes one record, and the checkpoint (`{journal, through}`) moves
exactly when the bundle is sealed, so an event is sealed once, also across kill -9.

The journal (`<state_dir>/lifelog.jsonl`, 0600): one JSON object a line, fsync'd,
written under `lifelog.lock`:

    {"at": "<RFC 3339 UTC>", "event": "<type>", "fields": {...}, "j": "<journal id>",
     "n": <1, 2, ...>, "pid": <pid>}

`j` names the journal (random, made when no journal exists); `n` counts its events.
When the file passes JOURNAL_PART_MAX_BYTES it becomes `lifelog.1.jsonl` (replacing
the older part), so the journal is bounded; events rotated away before being sealed
show as a `journal_gap` record, as do numbers missing in the middle (lines removed)
and a journal replaced under an unsealed checkpoint. Nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.record import Record
from collector.registry import (
    MALFORMED_LINE_TYPE,
    CollectContext,
    Collector,
    Field,
    RecordType,
    unsupported,
)

if sys.platform != "win32":
    import fcntl

NAME = "agent"
JOURNAL_FILE = "lifelog.jsonl"
JOURNAL_PREVIOUS_FILE = "lifelog.1.jsonl"
JOURNAL_LOCK_FILE = "lifelog.lock"
JOURNAL_PART_MAX_BYTES = 512 * 1024  # two parts: at most 1 MiB of unsealed events
LINE_MAX_BYTES = 4096  # a longer line is cut at note() time, text first
TEXT_MAX_CHARS = 512  # each text field of an event

_NONE = type(None)

# Fields every event record carries, from the journal line itself.
_COMMON_FIELDS: Mapping[str, Field] = {
    "at": Field((str,), "when the event happened (RFC 3339 UTC, the agent's clock)"),
    "n": Field((int,), "the event's number in its journal (1, 2, ...)"),
    "pid": Field((int,), "the process that noted it (the daemon, or a `gamsa collect`)"),
}


def _event(doc: str, fields: Mapping[str, Field]) -> RecordType:
    return RecordType(doc=doc, key="`<journal id>:<n>`", event=True,
                      fields={**_COMMON_FIELDS, **fields})


_TEXT = (str,)
_COLLECTOR_FIELD = Field(_TEXT, "the collector's name")

# The events: one record type each. agent/lifelog.py `note()` checks its fields here.
EVENTS: Mapping[str, RecordType] = {
    "agent_start": _event("`gamsa agent run` started.", {
        "version": Field(_TEXT, "the agent's version"),
        "config_sha256": Field(_TEXT, "hex SHA-256 of the config file's bytes"),
    }),
    "agent_stop": _event("`gamsa agent run` stopped; noted before its last ship, so "
                         "the next start seals it.", {
        "signal": Field(_TEXT, "`SIGTERM` or `SIGINT`; `error` when it stopped on an "
                               "error (its log line says which)"),
        "uptime_seconds": Field((int,), "seconds since it started"),
    }),
    "config_loaded": _event("A config was loaded: at the daemon's start or on SIGHUP.", {
        "reason": Field(_TEXT, "`start` or `reload`"),
        "config_sha256": Field(_TEXT, "hex SHA-256 of the config file's bytes (of b\"\" "
                                      "for built-in defaults)"),
        "source": Field((str, _NONE), "the config file's path; null for built-in defaults"),
    }),
    "config_refused": _event("A config reload (SIGHUP) was refused; the old config stays.", {
        "reason": Field(_TEXT, "the one-line error"),
    }),
    "run_timeout": _event("A collector overran its timeout (`[schedule] timeout`) and was "
                          "abandoned; its bundle was sealed without its records.", {
        "collector": _COLLECTOR_FIELD,
        "timeout_seconds": Field((int,), "the timeout it overran"),
    }),
    "run_skipped": _event("A collector was not started because its previous run, which "
                          "timed out, is still running.", {
        "collector": _COLLECTOR_FIELD,
        "reason": Field(_TEXT, "why, with the time the stuck run timed out"),
    }),
    "run_failed": _event("A collector raised; its records up to the error were sealed "
                         "with a `collector_error` record.", {
        "collector": _COLLECTOR_FIELD,
        "error": Field(_TEXT, "exception type and message"),
    }),
    "spool_pressure": _event("The spool of unshipped bundles crossed the pressure mark "
                             "(80% of `spool.max_bytes`), going up (`high`) or back down "
                             "(`relieved`).", {
        "level": Field(_TEXT, "`high` or `relieved`"),
        "spool_bytes": Field((int,), "bytes waiting in the spool"),
        "max_bytes": Field((int,), "the cap (`spool.max_bytes`)"),
        "bundles": Field((int,), "bundles waiting"),
    }),
    "clock_jump": _event("The wall clock stepped against the boot-time clock the daemon "
                         "also reads (an NTP step, a manual `date -s`, a VM restore); "
                         "a suspend is not a jump.", {
        "step_seconds": Field((int,), "how far the wall clock moved beyond elapsed time: "
                                      "positive forward, negative back"),
        "wall_before": Field(_TEXT, "the wall clock at the previous reading"),
        "wall_after": Field(_TEXT, "the wall clock now"),
    }),
    "ship_failing": _event("Shipping has failed several times in a row (noted once, at "
                           "the third failure); bundles wait in the spool.", {
        "failures": Field((int,), "consecutive failed ship runs"),
        "since": Field(_TEXT, "when the first of them failed"),
        "error": Field(_TEXT, "the latest error, one line"),
    }),
    "ship_recovered": _event("Shipping works again after a `ship_failing`.", {
        "failures": Field((int,), "consecutive failed ship runs before this success"),
        "since": Field(_TEXT, "when the first of them failed"),
    }),
    "watch_overflow": _event("A file watcher lost events (inotify queue overflow, or a "
                             "watch limit reached); the affected set is rescanned.", {
        "watcher": Field(_TEXT, "which watcher, e.g. `files`"),
        "reason": Field(_TEXT, "what happened, e.g. `inotify queue overflow`"),
        "paths": Field((int,), "how many watched paths are rescanned"),
    }),
}

JOURNAL_TYPE = "journal"
JOURNAL_GAP_TYPE = "journal_gap"
SPOOL_FULL_TYPE = "spool_full"

RECORD_TYPES: Mapping[str, RecordType] = {
    **EVENTS,
    JOURNAL_TYPE: RecordType(
        event=True,
        doc="The journal as this run found it; one per run, also when nothing happened.",
        key='"lifelog"',
        fields={
            "journal": Field((str, _NONE), "the journal's id; null when there is none yet"),
            "events": Field((int,), "events sealed in this bundle"),
            "through": Field((int, _NONE), "the number of the last event sealed so far"),
            "bytes": Field((int,), "bytes in the journal's files"),
        }),
    JOURNAL_GAP_TYPE: RecordType(
        event=True,
        doc="Events that should be in the journal are not: rotated away before being "
            "sealed (more than 1 MiB of events while nothing was sealed), numbers missing "
            "in the middle (lines removed), or the journal replaced.",
        key="`<journal id>:<first missing n>`",
        fields={
            "journal": Field(_TEXT, "the journal's id (of the replaced one, for `replaced`)"),
            "first": Field((int,), "the first missing event number"),
            "count": Field((int, _NONE), "how many are missing; null when unknown "
                                         "(`replaced`)"),
            "reason": Field(_TEXT, "`rotated`, `missing` or `replaced`"),
        }),
    SPOOL_FULL_TYPE: RecordType(
        event=True,
        doc="The spool was over its byte cap, so this bundle holds this record (and the "
            "journal's events) instead of a collection; shipping has not kept up.",
        key='"spool"',
        fields={"spool_bytes": Field((int,), "bytes of sealed bundles waiting"),
                "max_bytes": Field((int,), "the configured cap (spool.max_bytes)"),
                "bundles": Field((int,), "sealed bundles waiting")}),
}


@dataclass(frozen=True)
class Event:
    """One parsed journal line."""

    journal: str
    n: int
    at: str
    pid: int
    event: str
    fields: dict[str, Any]

    @classmethod
    def parse(cls, line: bytes) -> Event:
        """Raises ValueError (or KeyError/TypeError) for a line that is not an event."""
        obj = json.loads(line)
        fields = obj["fields"]
        if not isinstance(fields, dict):
            raise ValueError("fields is not an object")
        event = cls(str(obj["j"]), obj["n"], str(obj["at"]), obj["pid"], str(obj["event"]),
                     fields)
        if type(event.n) is not int or type(event.pid) is not int or event.n < 1:
            raise ValueError("n or pid is not a positive integer")
        return event

    def line(self) -> bytes:
        return json.dumps({"at": self.at, "event": self.event, "fields": self.fields,
                           "j": self.journal, "n": self.n, "pid": self.pid},
                          sort_keys=True, ensure_ascii=False).encode() + b"\n"


def event_problem(event: str, fields: Mapping[str, Any]) -> str | None:
    """What is wrong with an event's name or fields against EVENTS (None: nothing)."""
    declared = EVENTS.get(event)
    if declared is None:
        return f"unknown event {event!r}"
    wanted = {k: f for k, f in declared.fields.items() if k not in _COMMON_FIELDS}
    if set(fields) != set(wanted):
        return f"event {event!r} has fields {sorted(fields)}, declared {sorted(wanted)}"
    for name, value in fields.items():
        if type(value) not in wanted[name].types:
            return f"event {event!r} field {name!r} is {type(value).__name__}"
    return None


LOCK_WAIT_SECONDS = 5.0  # a journal lock held longer (a hung disk): fail, never hang


@contextlib.contextmanager
def journal_lock(state_dir: Path, create: bool) -> Iterator[bool]:
    """Hold the journal lock; yields False (no lock) when there is no journal and
    `create` is false. Writers and the reader both take it exclusively, waiting at
    most LOCK_WAIT_SECONDS (then TimeoutError), so the daemon's loop never hangs on it."""
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    path = state_dir / JOURNAL_LOCK_FILE
    try:
        fd = os.open(path, flags, 0o600)
    except FileNotFoundError:
        if create:
            raise
        yield False
        return
    try:
        give_up = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > give_up:
                    raise TimeoutError(errno.ETIMEDOUT, "the journal lock is held too long",
                                       str(path)) from None
                time.sleep(0.01)
        yield True
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[bytes]:
    """The complete lines of one journal part ([] when absent). A last line without
    its newline is an unfinished write (its note() never returned): not an event."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    return lines[:-1]  # the piece after the last newline: b"" or an unfinished write


@dataclass
class _Drain:
    """What one run found: new events, gaps and bad lines, and the new checkpoint."""

    records: list[Record]
    journal: str | None
    through: int | None
    events: int


def _gap(journal: str, first: int, count: int | None, reason: str) -> Record:
    return Record(NAME, JOURNAL_GAP_TYPE, f"{journal}:{first}",
                  {"journal": journal, "first": first, "count": count, "reason": reason})


def _event_record(event: Event) -> Record:
    declared = EVENTS.get(event.event)
    if declared is None or event_problem(event.event, event.fields) is not None:
        raise ValueError(event_problem(event.event, event.fields) or "undeclared event")
    data = {"at": event.at, "n": event.n, "pid": event.pid, **event.fields}
    return Record(NAME, event.event, f"{event.journal}:{event.n}", data, event.at)


def drain(state_dir: Path, checkpoint: Any) -> _Drain:
    """The records of every event after `checkpoint` (`{journal, through}` or None),
    gaps included, and the checkpoint that covers them. Caller holds the lock.

    A line that is not an event is recorded when a new event follows it; one at the
    end waits for the next event, so it is recorded once.
    """
    saved = checkpoint if isinstance(checkpoint, dict) else {}
    saved_journal, saved_through = saved.get("journal"), saved.get("through")
    if not isinstance(saved_journal, str) or not isinstance(saved_through, int):
        saved_journal, saved_through = None, 0
    journal, through = saved_journal, saved_through
    records: list[Record] = []
    bad: list[Record] = []
    first_event = True
    count = 0
    for part in (JOURNAL_PREVIOUS_FILE, JOURNAL_FILE):
        path = state_dir / part
        for number, line in enumerate(read_lines(path), 1):
            try:
                event = Event.parse(line)
            except (ValueError, KeyError, TypeError):
                bad.append(_malformed(path, number, "not a journal event"))
                continue
            oldest_kept, first_event = first_event, False
            if event.journal == saved_journal and event.n <= saved_through:
                bad.clear()  # lines before a sealed event were recorded with it
                continue
            if event.journal != journal:
                if journal is not None:  # only a wiped or edited journal changes its id
                    records.append(_gap(journal, through + 1, None, "replaced"))
                journal, through = event.journal, 0
            if event.n <= through:
                bad.append(_malformed(path, number, f"event number {event.n} comes again"))
                continue
            if event.n > through + 1:
                records.append(_gap(journal, through + 1, event.n - through - 1,
                                    "rotated" if oldest_kept else "missing"))
            records += bad
            bad.clear()
            try:
                records.append(_event_record(event))
            except ValueError as exc:
                records.append(_malformed(path, number, str(exc)))
            through = event.n
            count += 1
    return _Drain(records, journal, through if journal is not None else None, count)


def _malformed(path: Path, number: int, reason: str) -> Record:
    return Record(NAME, MALFORMED_LINE_TYPE, f"{path}:{number}",
                  {"file": str(path), "line": number, "reason": reason})


def journal_bytes(state_dir: Path) -> int:
    total = 0
    for part in (JOURNAL_PREVIOUS_FILE, JOURNAL_FILE):
        with contextlib.suppress(OSError):
            total += (state_dir / part).stat().st_size
    return total


def collect(ctx: CollectContext) -> Iterator[Record]:
    if ctx.state_dir is None:
        yield unsupported(NAME, "journal", "no state directory to keep a journal in")
        return
    with journal_lock(ctx.state_dir, create=False) as exists:
        if exists:
            found = drain(ctx.state_dir, ctx.checkpoint(NAME))
        else:
            found = _Drain([], None, None, 0)
        size = journal_bytes(ctx.state_dir)
    if found.journal is not None:
        ctx.set_checkpoint(NAME, {"journal": found.journal, "through": found.through})
    yield from found.records
    yield Record(NAME, JOURNAL_TYPE, "lifelog",
                 {"journal": found.journal, "events": found.events, "through": found.through,
                  "bytes": size})


def spool_full_record(spool_bytes: int, max_bytes: int, bundles: int) -> Record:
    """The record sealed instead of a collection while the spool is over its cap."""
    return Record(NAME, SPOOL_FULL_TYPE, "spool", {"spool_bytes": spool_bytes,
                                                   "max_bytes": max_bytes,
                                                   "bundles": bundles})


COLLECTOR = Collector(
    name=NAME,
    version="1",
    description="The agent's own life: start and stop, configs loaded or refused (with "
                "their SHA-256), collectors that timed out, were skipped or failed, spool "
                "pressure, clock jumps, shipping that keeps failing, file-watch overflows. "
                "The daemon and `gamsa collect` note each event in a journal in the state "
                "directory (fsync'd JSON lines, at most 1 MiB); this collector seals every "
                "event once (a checkpoint moves with the sealed bundle), runs last in a "
                "collection so it also seals what that collection noted, and records any "
                "event missing from the journal as a `journal_gap`.",
    platforms=("linux", "darwin"),
    record_types=RECORD_TYPES,
    collect=collect,
)
