"""Collector declarations and the registry that runs them.

Each collector module declares `COLLECTOR = Collector(...)`: what it collects as
data (name, platforms, record types with typed, documented fields) next to the
function that collects. `docs/COLLECTORS.md` and the contract test read these.
A collector that raises yields a `collector_error` record; one whose platform is
not this one yields an `unsupported` record. The run always goes on.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.record import Record

# Modules that declare a COLLECTOR, in the order they run.
COLLECTOR_MODULES = ("collector.host", "collector.accounts")

ERROR_TYPE = "collector_error"
UNSUPPORTED_TYPE = "unsupported"
SOURCE_MISSING_TYPE = "source_missing"
SOURCE_UNREADABLE_TYPE = "source_unreadable"
MALFORMED_LINE_TYPE = "malformed_line"


@dataclass(frozen=True)
class Field:
    """One declared field of a record type: its JSON type(s) and a line of doc."""

    types: tuple[type, ...]
    doc: str
    required: bool = True


@dataclass(frozen=True)
class RecordType:
    """A record type a collector emits: what its `key` is and its `data` fields."""

    doc: str
    key: str
    fields: Mapping[str, Field]


@dataclass(frozen=True)
class CollectContext:
    """What a collector may read: a root directory (for fixtures) and its config."""

    root: Path = Path("/")
    options: Mapping[str, Any] = field(default_factory=dict)

    def path(self, absolute: str) -> Path:
        """`absolute` (e.g. "/etc/passwd") under the root directory."""
        return self.root / absolute.lstrip("/")

    @property
    def is_live(self) -> bool:
        """True when reading this machine itself (root is /), so live APIs apply."""
        return self.root == Path("/")


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
    UNSUPPORTED_TYPE: RecordType(
        doc="The collector does not run on this platform.",
        key="the collector name",
        fields={
            "platform": Field((str,), "this machine's `sys.platform`"),
            "platforms": Field((list,), "platform prefixes the collector supports"),
        },
    ),
    SOURCE_MISSING_TYPE: RecordType(
        doc="A file or directory the collector reads does not exist.",
        key="the path",
        fields={"path": Field((str,), _PATH_DOC)},
    ),
    SOURCE_UNREADABLE_TYPE: RecordType(
        doc="A source exists but could not be read (permission, a directory, ...).",
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


CollectFn = Callable[[CollectContext], Iterable[Record]]


@dataclass(frozen=True)
class Collector:
    """A collector declaration."""

    name: str
    version: str
    description: str
    platforms: tuple[str, ...]  # sys.platform prefixes: "linux", "darwin", "win32"
    record_types: Mapping[str, RecordType]
    collect: CollectFn

    def supported(self, platform: str = sys.platform) -> bool:
        return any(platform.startswith(p) for p in self.platforms)


@dataclass
class CollectorResult:
    """What one collector produced in one run, for the manifest's `collectors`."""

    name: str
    version: str
    status: str  # ok | error | unsupported
    records: list[Record]
    error: str | None = None
    duration_ms: int = 0


def all_collectors() -> dict[str, Collector]:
    """Every declared collector by name, in run order."""
    found: dict[str, Collector] = {}
    for module_name in COLLECTOR_MODULES:
        module = importlib.import_module(module_name)
        declared: Collector = module.COLLECTOR
        found[declared.name] = declared
    return found


def run_collector(collector: Collector, ctx: CollectContext) -> CollectorResult:
    """Run one collector; failures become records, never exceptions."""
    started = time.monotonic()
    if not collector.supported():
        record = Record(collector.name, UNSUPPORTED_TYPE, collector.name,
                        {"platform": sys.platform, "platforms": list(collector.platforms)})
        return CollectorResult(collector.name, collector.version, "unsupported", [record])
    records: list[Record] = []
    try:
        for record in collector.collect(ctx):
            records.append(record)
    except Exception as exc:  # noqa: BLE001 - any failure is evidence, not a crash
        reason = f"{type(exc).__name__}: {exc}"
        records.append(Record(collector.name, ERROR_TYPE, collector.name,
                              {"error": reason, "records_before_error": len(records)}))
        elapsed = int((time.monotonic() - started) * 1000)
        return CollectorResult(collector.name, collector.version, "error", records,
                               reason, elapsed)
    elapsed = int((time.monotonic() - started) * 1000)
    return CollectorResult(collector.name, collector.version, "ok", records, None, elapsed)


def run_collectors(collectors: Iterable[Collector], ctx: CollectContext) -> list[CollectorResult]:
    return [run_collector(c, ctx) for c in collectors]
