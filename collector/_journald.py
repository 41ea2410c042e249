"""The `logs` collector's journald source: auth entries of the systemd journal.

A source `{ journal = "system", format = "journald" }` reads the host's journal
(or, with an absolute path, one journal file or directory: `journalctl --file` /
`--directory`, for a copied journal or a test) through `journalctl -o json`
(no shell, the fixed environment and timeout of `collector._tools.run_tool`),
matching only the auth programs (`_logformats.AUTH_PROGRAMS`, by
SYSLOG_IDENTIFIER or `_COMM`). Each entry becomes the syslog line auth.log would
hold, `<RFC 3339 time> <host> <program>[<pid>]: <message>` (control characters
as rsyslog writes them, `#012`), and is parsed by the one auth parser
(`_logformats.parse_auth`); lines that are not access events are counted.

The checkpoint is the journal cursor of the last entry read (`{"cursor": ...}`
under the source's id `journal:<journal>`; `{"cursor": null}` after a read that
found no auth entry, so the next run reads from the start): the next run reads
`--after-cursor` it, and the agent moves it exactly when the bundle is sealed,
like file offsets.
A journal never read before is read from its newest `first_read_max_bytes` of
JSON output (a `log_gap` says what came before was not read); one run reads at
most `max_bytes_per_run` of JSON output, the rest waits for the next run.

journalctl not installed: `unsupported` (not a gap). journalctl failing:
`command_failed` (a gap; the checkpoint stays). Not root and not in group
systemd-journal (or adm, wheel): journalctl shows only the agent user's own
entries, so a `coverage_gap` says the system's were not visible.
"""

from __future__ import annotations

import datetime as dt
import grp
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from collector._linux import missing_record, unreadable_record
from collector._logformats import (
    AUTH_PROGRAMS,
    MAX_SAFE_INT,
    LineContext,
    Malformed,
    parse_auth,
    raw_sha256,
)
from collector._tools import ToolRun, command_failed_record, run_tool, which
from collector.record import Record, format_time
from collector.registry import MALFORMED_LINE_TYPE, CollectContext, coverage_gap, unsupported

SYSTEM = "system"  # `journal = "system"`: the host's own journal
JOURNAL_READERS = ("systemd-journal", "adm", "wheel")  # groups journald lets read all
TIMEOUT = 120.0  # seconds for one journalctl run
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_DENIED = ("permission denied", "insufficient permissions", "not seeing messages from other")


@dataclass(frozen=True)
class JournalSource:
    """One journald entry of the `sources` option."""

    journal: str  # "system" or an absolute path (file or directory) under the root
    kind: str

    @property
    def id(self) -> str:
        """The source's name in records and checkpoints."""
        return f"journal:{self.journal}"


@dataclass
class JournalRun:
    """One run over one journal source: its records and the counts for `journal_source`."""

    collector: str
    source: JournalSource
    records: list[Record] = field(default_factory=list)
    entries: int = 0
    access: int = 0
    malformed: int = 0
    skipped: int = 0
    gaps: int = 0
    cursor: str | None = None

    def gap(self, cause: str, reason: str) -> None:
        self.gaps += 1
        self.records.append(Record(self.collector, "log_gap", f"{self.source.id}:{cause}", {
            "path": self.source.id, "cause": cause, "file": self.source.id, "device": None,
            "inode": None, "from_offset": None, "to_offset": None, "reason": reason}))

    def entry(self, raw: bytes) -> None:
        """One line of `journalctl -o json`."""
        try:
            entry = json.loads(raw)
        except (ValueError, RecursionError):
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("__CURSOR"), str):
            self.bad(None, "not a journal entry")
            return
        self.entries += 1
        self.cursor = entry["__CURSOR"]
        seqnum = _seqnum(self.cursor)
        line = _syslog_line(entry)
        if isinstance(line, Malformed):
            self.bad(seqnum, str(line))
            return
        if line is None:
            self.skipped += 1
            return
        try:
            parsed = parse_auth(line, LineContext(dt.datetime.now(dt.UTC), dt.UTC))
        except Malformed as exc:
            self.bad(seqnum, str(exc))
            return
        if parsed is None:
            self.skipped += 1
            return
        data = {"log": self.source.id, "file": self.source.id, "line": seqnum,
                "line_offset": None, **parsed, "raw_sha256": raw_sha256(parsed, line.encode()),
                "cursor": self.cursor}
        self.records.append(Record(self.collector, "access",
                                   f"{self.source.id}@{self.cursor}", data))
        self.access += 1

    def bad(self, seqnum: int | None, reason: str) -> None:
        self.malformed += 1
        self.records.append(Record(
            self.collector, MALFORMED_LINE_TYPE, f"{self.source.id}:{seqnum}",
            {"file": self.source.id, "line": seqnum or 0, "reason": reason}))


def _seqnum(cursor: str) -> int | None:
    """The entry's sequence number in its journal (the cursor's `i=`, hex); None
    when absent or beyond 2**53 (no unsafe integer enters a record)."""
    for part in cursor.split(";"):
        if part.startswith("i="):
            try:
                number = int(part[2:], 16)
            except ValueError:
                return None
            return number if number <= MAX_SAFE_INT else None
    return None


def _text(value: Any) -> str | Malformed | None:
    """A journal field as text: JSON gives a string, or an array of bytes when the
    value is not UTF-8, or null when it is too large to show."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(type(b) is int and 0 <= b < 256 for b in value):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return Malformed("not UTF-8")
    return None


def _syslog_line(entry: dict[str, Any]) -> str | Malformed | None:
    """The auth.log line of an entry of an auth program, None for other entries."""
    program = _text(entry.get("SYSLOG_IDENTIFIER")) or _text(entry.get("_COMM"))
    if not isinstance(program, str) or program not in AUTH_PROGRAMS:
        return None
    message = _text(entry.get("MESSAGE"))
    if message is None or isinstance(message, Malformed):
        return message
    try:
        micros = int(entry.get("__REALTIME_TIMESTAMP", ""))
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
    except (TypeError, ValueError, OverflowError):
        return Malformed("bad __REALTIME_TIMESTAMP")
    host = _text(entry.get("_HOSTNAME"))
    host = "".join(host.split()) if isinstance(host, str) and host.strip() else "-"
    pid = _text(entry.get("_PID")) or _text(entry.get("SYSLOG_PID"))
    tag = f"{program}[{pid}]" if isinstance(pid, str) and pid.isdigit() else program
    message = _CONTROL.sub(lambda m: f"#{ord(m.group()):03o}", message)
    return f"{format_time(moment)} {host} {tag}: {message}"


def _matches() -> list[str]:
    """journalctl matches: SYSLOG_IDENTIFIER is one of them, or (`+`) _COMM is."""
    return ([f"SYSLOG_IDENTIFIER={p}" for p in AUTH_PROGRAMS] + ["+"]
            + [f"_COMM={p}" for p in AUTH_PROGRAMS])


def _complete_lines(run: ToolRun, budget: int) -> Iterator[bytes]:
    """The complete lines of stdout within `budget` bytes (at least one, so a run
    always moves on), the whole output when the tool ended by itself."""
    data = run.stdout
    over = len(data) > budget
    used = 0
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is incomplete
        used += len(line) + 1
        if over and used > budget and used != len(line) + 1:
            return
        if line.strip():
            yield line


def _target(ctx: CollectContext, collector: str, journal: str) -> list[str] | Record:
    """journalctl arguments naming the journal, or the record of a missing one."""
    if journal == SYSTEM:
        if ctx.is_live:
            return []
        journal = "/var/log/journal"  # a fixture tree's journal
    host_path = ctx.path(journal)
    try:
        st = os.stat(host_path)
    except FileNotFoundError:
        return missing_record(collector, journal)
    except OSError as exc:  # a directory on the way the agent may not search
        return unreadable_record(collector, journal, exc)
    return ["--directory" if stat.S_ISDIR(st.st_mode) else "--file", str(host_path)]


def _denied(run: ToolRun, ctx: CollectContext, journal: str) -> str | None:
    """Why only part of the journal may be visible to the agent, or None."""
    stderr = run.stderr.decode("utf-8", "replace").casefold()
    if any(text in stderr for text in _DENIED):
        return "permission denied: the agent needs root or group systemd-journal"
    if journal == SYSTEM and ctx.is_live and os.geteuid() != 0 and not _can_read_any_file():
        readers = set()
        for name in JOURNAL_READERS:
            try:
                readers.add(grp.getgrnam(name).gr_gid)
            except KeyError:
                continue
        if not readers & {os.getegid(), *os.getgroups()}:
            return ("not root and not in group systemd-journal (or adm, wheel): only "
                    "this user's own entries are visible")
    return None


def _can_read_any_file() -> bool:
    """CAP_DAC_READ_SEARCH in effect (the packaged unit grants it): journal files
    open whatever their group, and journalctl, its child, inherits it (ambient)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapAmb:"):
                    return bool(int(line.split()[1], 16) >> 2 & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _usable_cursor(saved: Any) -> str | None:
    cursor = saved.get("cursor") if isinstance(saved, dict) else None
    return cursor if isinstance(cursor, str) and cursor.startswith("s=") else None


# The checkpoint of a journal read while it held no auth entry: every entry after
# that is new, so the next run reads from the start, without the first-read bound.
EMPTY = {"cursor": None}


def collect_journal(ctx: CollectContext, collector: str, source: JournalSource, saved: Any,
                    first_read_max: int, run_read_max: int,
                    ) -> tuple[list[Record], dict[str, Any] | None]:
    """The records of one journal source and its new checkpoint (`saved` when
    nothing was read)."""
    tool = which("journalctl")
    if tool is None:
        return [unsupported(collector, source.id, "journalctl is not installed")], saved
    target = _target(ctx, collector, source.journal)
    if isinstance(target, Record):
        return [target], saved
    base = [tool, *target, "-o", "json", "--no-pager"]
    run = JournalRun(collector, source)
    cursor = _usable_cursor(saved)
    if saved is not None and saved != EMPTY and cursor is None:
        run.gap("checkpoint_unusable", "the saved cursor of this journal is not readable; "
                "it is read as if seen for the first time")
    if cursor is not None:
        start = ["--after-cursor", cursor]
    elif saved == EMPTY:
        start = []
    else:
        found = _first_start(run, base, first_read_max)
        if isinstance(found, ToolRun):
            return [*run.records, _failure(ctx, collector, source, found)], saved
        start = found
    result = run_tool([*base, *start, *_matches()], TIMEOUT, max_bytes=run_read_max)
    over = len(result.stdout) > run_read_max
    if not over and not result.ok:
        return [*run.records, _failure(ctx, collector, source, result)], saved
    for line in _complete_lines(result, run_read_max):
        run.entry(line)
    denied = _denied(result, ctx, source.journal)
    if denied is not None:
        run.records.append(coverage_gap(collector, "journal", denied))
    run.records.append(Record(collector, "journal_source", source.id, {
        "journal": source.journal, "kind": source.kind, "cursor_before": cursor,
        "cursor_after": run.cursor or cursor, "entries_read": run.entries,
        "records": run.access, "malformed": run.malformed, "skipped": run.skipped,
        "gaps": run.gaps, "more": over}))
    if run.cursor is None:
        return run.records, saved if saved is not None and cursor is not None else EMPTY
    return run.records, {"cursor": run.cursor}


def _failure(ctx: CollectContext, collector: str, source: JournalSource,
             failed: ToolRun) -> Record:
    """A journalctl run that gave nothing: denied (a coverage gap), or failed."""
    denied = _denied(failed, ctx, source.journal)
    if denied is not None:
        return coverage_gap(collector, "journal", denied)
    return command_failed_record(collector, "journalctl", failed)


def _first_start(run: JournalRun, base: list[str], budget: int) -> list[str] | ToolRun:
    """Where a first read starts: the oldest entry within the newest `budget` bytes
    of output (`--cursor`), with a gap for the older ones; [] when all fit."""
    newest_first = run_tool([*base, "--reverse", *_matches()], TIMEOUT, max_bytes=budget)
    if len(newest_first.stdout) <= budget and not newest_first.ok:
        return newest_first
    if len(newest_first.stdout) <= budget:
        return []
    oldest: str | None = None
    for line in _complete_lines(newest_first, budget):
        try:
            cursor = json.loads(line).get("__CURSOR")
        except (ValueError, RecursionError, AttributeError):
            continue
        if isinstance(cursor, str):
            oldest = cursor
    if oldest is None:
        return []
    run.gap("first_read_limit", f"first read of this journal: only its newest {budget} "
            "bytes of entries (as JSON) are read; older entries are not")
    return ["--cursor", oldest]
