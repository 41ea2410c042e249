"""Collector declarations and the registry that runs them.

Each collector module declares `COLLECTOR = Collector(...)`: what it collects as
data (name, platforms, record types with typed, documented fields) next to the
function that collects. `docs/COLLECTORS.md` and the contract test read these.
A collector returns or yields its records; `stream_collector` hands each to the
sealer as it comes, so a collection's memory does not grow with its size. A
collector that raises yields a `collector_error` record after the records it gave
before; one whose platform is not this one yields an `unsupported` record. The run
always goes on.

Coverage (`coverage_gaps`, the one place the rule lives): a collector is `partial`
when its records say it could not see part of what it covers: a source that exists
but could not be read (`source_unreadable`), an installed tool that failed
(`command_failed`), or items it could only see in part (`coverage_gap`, e.g.
executables of other users' processes when not root). A source that does not
exist (`source_missing`) or that this host cannot provide (`unsupported`: another
platform, a tool not installed, no desktop) is recorded but is not a gap: there
is nothing there to miss.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from collector.options import Option, option_value, parse_duration
from collector.record import Record
from signing.predicate import CollectorEntry, Gap

# A `Gap` is part of a collector's coverage it could not see: why, and how many
# items (sources, processes, ...). Never a path or a name: it goes into the
# manifest as it is (`predicate.collectors[].gaps`, signing/predicate.py).

T = TypeVar("T")

# Modules of this package that are not collectors; every other public module
# must declare COLLECTOR (the contract test holds each to it).
NOT_COLLECTORS = frozenset({"record", "registry", "docs", "scrub", "privacy", "options"})

ERROR_TYPE = "collector_error"
TIMEOUT_TYPE = "collector_timeout"  # emitted by collector._timeout.run_bounded
SKIPPED_TYPE = "collector_skipped"
UNSUPPORTED_TYPE = "unsupported"
SOURCE_MISSING_TYPE = "source_missing"
SOURCE_UNREADABLE_TYPE = "source_unreadable"
MALFORMED_LINE_TYPE = "malformed_line"
COVERAGE_GAP_TYPE = "coverage_gap"
COMMAND_FAILED_TYPE = "command_failed"  # its RecordType: collector._tools.COMMAND_FAILED


@dataclass(frozen=True)
class Field:
    """One declared field of a record type: its JSON type(s) and a line of doc.

    `personal`: the field holds a person's name or address (a user name, a login's
    source address, a home directory, a GECOS), so `[privacy] pseudonymize` may name
    it (collector/privacy.py).
    """

    types: tuple[type, ...]
    doc: str
    required: bool = True
    personal: bool = False


@dataclass(frozen=True)
class RecordType:
    """A record type a collector emits: what its `key` is and its `data` fields.

    `key_field`: the personal field whose value the key is, when the record has no such
    data field (accounts `user` records are keyed by the user name, declared as `user`).

    (collector, type, key) is a record's identity: `gamsa diff` compares two states
    by it. `event`: each record is something that happened (a log line, a journal
    entry, a login, a change), emitted once, not the state of a thing, so a later
    bundle lacking it does not mean it is gone; diff leaves event types out.
    `removes`: for an event type, the state type whose record of the same key it
    declares gone when its `change` is `removed` (files: `file_change` of a `file`),
    so a bundle holding only changes (trigger `file-change`) updates a state.
    """

    doc: str
    key: str
    fields: Mapping[str, Field]
    key_field: str | None = None
    event: bool = False
    removes: str | None = None


@dataclass
class CollectContext:
    """What a collector may read and keep.

    - `root`: the directory standing for "/" (a fixture tree in tests).
    - `options`: per-collector settings by collector name (the `[collectors.<name>]`
      config table as plain data, parsed by the declared `Option`s); read them with
      `value(OPTION)` (the declared default when absent).
    - `state_dir`: where a collector may keep caches (None: no caching).
    - `checkpoints`: per-collector state that must advance exactly when a bundle is
      sealed (log offsets). A collector reads the last sealed value with
      `checkpoint()` and proposes a new one with `set_checkpoint()`; the agent
      persists proposals in the same crash-safe step that seals the bundle, so a
      crash never skips or repeats what the checkpoint covers.
    - `deadline`: `time.monotonic()` by which the run must end (its timeout), or
      None; a collector that would wait (files: the hash rate) gives up before it.
    """

    root: Path = Path("/")
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    state_dir: Path | None = None
    checkpoints: Mapping[str, Any] = field(default_factory=dict)
    new_checkpoints: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None

    def path(self, absolute: str) -> Path:
        """`absolute` (e.g. "/etc/passwd") under the root directory."""
        return self.root / absolute.lstrip("/")

    @property
    def is_live(self) -> bool:
        """True when reading this machine itself (root is /), so live APIs apply."""
        return self.root == Path("/")

    def option(self, collector: str, key: str, default: Any) -> Any:
        return self.options.get(collector, {}).get(key, default)

    def value(self, option: Option[T]) -> T:
        """The configured value of a declared option, else its default. Not checked
        again: a collector that must survive a bad value checks it itself."""
        return option_value(self.options, option)

    def checkpoint(self, collector: str) -> Any:
        """The last sealed checkpoint of `collector` (None before the first)."""
        return self.checkpoints.get(collector)

    def set_checkpoint(self, collector: str, value: Any) -> None:
        """Propose the checkpoint to persist if and when this bundle is sealed."""
        self.new_checkpoints[collector] = value


CollectFn = Callable[[CollectContext], Iterable[Record]]


@dataclass(frozen=True)
class Collector:
    """A collector declaration.

    `options`: its `[collectors.<name>]` settings (collector/options.py); config
    parsing, `ctx.options`, docs/COLLECTORS.md and packaging/agent.toml come from
    them. `schedule`: its default interval in the daemon, as written in TOML ("6h");
    None = `schedule.default`. A `[schedule]` key of the collector's name overrides it.
    """

    name: str
    version: str
    description: str
    platforms: tuple[str, ...]  # sys.platform prefixes: "linux", "darwin", "win32"
    record_types: Mapping[str, RecordType]
    collect: CollectFn
    options: tuple[Option[Any], ...] = ()
    schedule: str | int | None = None

    def supported(self, platform: str = sys.platform) -> bool:
        return any(platform.startswith(p) for p in self.platforms)

    @property
    def option_map(self) -> dict[str, Option[Any]]:
        """The declared options by name, in declaration order."""
        return {option.name: option for option in self.options}

    @property
    def schedule_seconds(self) -> int | None:
        """The declared default interval in seconds (None: `schedule.default`)."""
        if self.schedule is None:
            return None
        return parse_duration(self.schedule, f"{self.name} schedule")


@dataclass
class CollectorResult:
    """What one collector produced in one run, for the manifest's `collectors`."""

    name: str
    version: str
    status: str  # ok | partial | error | unsupported
    records: list[Record]  # kept by `run_collector`; empty when streamed to a sealer
    error: str | None = None
    duration_ms: int = 0
    gaps: list[Gap] = field(default_factory=list)
    count: int = 0  # records emitted, the collector_error / unsupported record included
    cut_short: str | None = None  # TIMEOUT_TYPE or SKIPPED_TYPE: the run was not let finish

    @property
    def gap_count(self) -> int:
        return sum(gap.count for gap in self.gaps)

    def manifest_entry(self) -> CollectorEntry:
        """This result as an entry of the manifest's `predicate.collectors`."""
        return CollectorEntry(self.name, self.version, self.status, self.count, self.error,
                              self.duration_ms,
                              tuple(self.gaps))


_PATH_DOC = "the source's absolute path as seen on the host (under the root)"

# Record types any collector may emit, declared once here rather than per collector:
# the first two come from `run_collector`, the others from collectors reading files.
COMMON_RECORD_TYPES: Mapping[str, RecordType] = {
    ERROR_TYPE: RecordType(
        doc="The collector raised; records before the error are kept.",
        key="the collector name",
        fields={
            "error": Field((str,), "exception type and message"),
            "records_before_error": Field((int,), "records emitted before the error"),
        },
    ),
    TIMEOUT_TYPE: RecordType(
        doc="The collector overran its timeout (`[schedule] timeout`) and was abandoned: "
            "the records it streamed before the timeout are sealed, its checkpoint does "
            "not move (a log's lines are read again next run), and it is not started "
            "again until that run ends. Status `error`.",
        key="the collector name",
        fields={
            "timeout_seconds": Field((int,), "the timeout it overran"),
            "started_at": Field((str,), "when the run started (RFC 3339 UTC)"),
            "records_before_timeout": Field((int,), "records of this run sealed before "
                                                    "the timeout", required=False),
        },
    ),
    SKIPPED_TYPE: RecordType(
        doc="The collector was not started: its previous run timed out and is still "
            "running (a thread cannot be killed). Status `error`.",
        key="the collector name",
        fields={
            "reason": Field((str,), "why, e.g. `previous run still running`"),
            "stuck_since": Field((str,), "when the stuck run started (RFC 3339 UTC)"),
        },
    ),
    UNSUPPORTED_TYPE: RecordType(
        doc="The collector, or one of its sources, cannot run here: another platform, "
            "a tool that is not installed (nft, rpm), a feature absent on this host "
            "(no desktop, no SELinux). Not a gap: a privilege the agent lacks is a "
            "`coverage_gap` or `source_unreadable` instead.",
        key="the collector name, or `<collector>:<source>` for one source",
        fields={
            "platform": Field((str,), "this machine's `sys.platform`"),
            "platforms": Field((list,), "platform prefixes the collector supports",
                               required=False),
            "source": Field((str,), "the source that is unavailable (a tool, a file, a "
                                    "feature); absent when the whole collector is",
                            required=False),
            "reason": Field((str,), "why, in a few words", required=False),
        },
    ),
    COVERAGE_GAP_TYPE: RecordType(
        doc="Part of what the collector covers that it could see only in part, "
            "counted: e.g. the executables of other users' processes when the agent "
            "is not root. Makes the collector `partial`.",
        key="`<collector>:<source>`",
        fields={
            "source": Field((str,), "what could not be read: a field (`exe`), a table "
                                    "(`net_connections`), a tool (`nft`); never a path "
                                    "or a name"),
            "reason": Field((str,), "why, e.g. `AccessDenied: not root`"),
            "count": Field((int,), "how many items (processes, sockets, ...) it affects"),
        },
    ),
    SOURCE_MISSING_TYPE: RecordType(
        doc="A file or directory the collector reads does not exist.",
        key="the path",
        fields={"path": Field((str,), _PATH_DOC)},
    ),
    SOURCE_UNREADABLE_TYPE: RecordType(
        doc="A source exists but could not be read (permission, a directory, ...). "
            "Makes the collector `partial`.",
        key="the path",
        fields={
            "path": Field((str,), _PATH_DOC),
            "reason": Field((str,), "error type and message, e.g. `PermissionError: "
                                    "Permission denied`"),
        },
    ),
    MALFORMED_LINE_TYPE: RecordType(
        doc="A line that could not be parsed; skipped, the rest of the file is read. "
            "The line's content is never included.",
        key="`<file>:<line>`",
        fields={
            "file": Field((str,), _PATH_DOC),
            "line": Field((int,), "1-based line number"),
            "reason": Field((str,), "what is wrong, e.g. `uid is not a number`"),
        },
    ),
}



def collector_modules() -> list[str]:
    """Every collector module of this package, sorted by name (the run order)."""
    package = Path(__file__).parent
    return sorted(f"collector.{info.name}" for info in pkgutil.iter_modules([str(package)])
                  if not info.name.startswith("_") and info.name not in NOT_COLLECTORS)


def collector_names() -> list[str]:
    """Every collector's name without importing the collectors (config checks use it;
    the contract test holds each module's COLLECTOR.name to its module name)."""
    return [name.removeprefix("collector.") for name in collector_modules()]


def load_collector(name: str) -> Collector | None:
    """The declaration of one collector by name, importing only its module; None
    when no collector has that name."""
    if name not in collector_names():
        return None
    declared: Collector = importlib.import_module(f"collector.{name}").COLLECTOR
    return declared


def all_collectors() -> dict[str, Collector]:
    """Every declared collector by name, in run order."""
    found: dict[str, Collector] = {}
    for module_name in collector_modules():
        module = importlib.import_module(module_name)
        declared: Collector = module.COLLECTOR
        found[declared.name] = declared
    return found


def unsupported(collector: str, source: str, reason: str) -> Record:
    """The record for a source this host cannot provide (never an error, never silent)."""
    return Record(collector, UNSUPPORTED_TYPE, f"{collector}:{source}",
                  {"platform": sys.platform, "source": source, "reason": reason})


def coverage_gap(collector: str, source: str, reason: str, count: int = 1) -> Record:
    """The record for `count` items of `source` the collector could not see."""
    return Record(collector, COVERAGE_GAP_TYPE, f"{collector}:{source}",
                  {"source": source, "reason": reason, "count": count})


class GapTally:
    """What the records of one collector say it could not see, counted as they stream.

    The rule (docs/DESIGN.md): `source_unreadable` and `command_failed` records count
    one each, `coverage_gap` records their `count`; nothing else is a gap.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, record: Record) -> None:
        if record.type == SOURCE_UNREADABLE_TYPE:
            reason, count = f"unreadable: {record.data.get('reason')}", 1
        elif record.type == COMMAND_FAILED_TYPE:
            reason, count = f"{record.key} failed: {record.data.get('reason')}", 1
        elif record.type == COVERAGE_GAP_TYPE:
            reason = f"{record.data.get('source')}: {record.data.get('reason')}"
            count = int(record.data.get("count", 1))
        else:
            return
        self.counts[reason] = self.counts.get(reason, 0) + count

    def gaps(self) -> list[Gap]:
        """The gaps so far, grouped by reason (sorted)."""
        return [Gap(reason, count) for reason, count in sorted(self.counts.items())]


def coverage_gaps(records: Iterable[Record]) -> list[Gap]:
    """What the records say the collector could not see, grouped by reason (`GapTally`)."""
    tally = GapTally()
    for record in records:
        tally.add(record)
    return tally.gaps()


def stream_collector(collector: Collector, ctx: CollectContext,
                     emit: Callable[[Record], object]) -> CollectorResult:
    """Run one collector, handing each record to `emit` as it comes (nothing is kept).

    A collector may return a list or yield. Its failures become records, never
    exceptions: what it yielded before raising is kept, then a `collector_error`
    record. An exception raised by `emit` (the sealer: a record outside the JSON
    domain, no space in the spool) is not the collector's and propagates, closing the
    collector's generator. The result's `records` is empty; `count` says how many
    were emitted. A collector whose records show gaps (`GapTally`) is `partial`.
    """
    started = time.monotonic()
    if not collector.supported():
        record = Record(collector.name, UNSUPPORTED_TYPE, collector.name,
                        {"platform": sys.platform, "platforms": list(collector.platforms)})
        emit(record)
        return CollectorResult(collector.name, collector.version, "unsupported", [], count=1)
    tally = GapTally()
    count = 0
    error: str | None = None
    produced: Iterator[Record] | None = None
    try:
        try:
            produced = iter(collector.collect(ctx))
        except Exception as exc:  # noqa: BLE001 - any failure is evidence, not a crash
            error = f"{type(exc).__name__}: {exc}"
        while produced is not None and error is None:
            try:
                record = next(produced)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - any failure is evidence, not a crash
                error = f"{type(exc).__name__}: {exc}"
                break
            tally.add(record)
            emit(record)
            count += 1
    finally:
        close = getattr(produced, "close", None)
        if close is not None:  # a generator stopped early runs its `finally` now
            with contextlib.suppress(Exception):  # its error, if any, is already recorded
                close()
    if error is not None:
        emit(Record(collector.name, ERROR_TYPE, collector.name,
                    {"error": error, "records_before_error": count}))
        elapsed = int((time.monotonic() - started) * 1000)
        return CollectorResult(collector.name, collector.version, "error", [], error,
                               elapsed, tally.gaps(), count + 1)
    elapsed = int((time.monotonic() - started) * 1000)
    gaps = tally.gaps()
    return CollectorResult(collector.name, collector.version, "partial" if gaps else "ok",
                           [], None, elapsed, gaps, count)


def run_collector(collector: Collector, ctx: CollectContext) -> CollectorResult:
    """Run one collector and keep its records in the result (`stream_collector`)."""
    records: list[Record] = []
    result = stream_collector(collector, ctx, records.append)
    result.records = records
    return result


def run_collectors(collectors: Iterable[Collector], ctx: CollectContext) -> list[CollectorResult]:
    return [run_collector(c, ctx) for c in collectors]
