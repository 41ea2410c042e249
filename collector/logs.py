"""The `logs` collector: access evidence from auth logs and AI-gateway access logs.

Each configured source (`[collectors.logs] sources`: path, format `auth` |
`nginx-combined` | `json-lines`, kind `""` | `ai_gateway`; or a journal,
`{ journal = "system", format = "journald" }`, read by collector/_journald.py;
`skip_if_exists` names a file whose presence turns the source off) is read from where the
last sealed bundle stopped, so a rerun or a restart neither repeats nor skips a
line. The position is a checkpoint (`ctx.checkpoint("logs")`), which the agent
persists in the same step that seals the bundle: per source the file's device,
inode, byte offset, line number, size, mtime and the SHA-256 of its first 4 KiB.

On each run, per source:

1. Same inode, not shorter, same head: read on from the offset.
2. Same inode but shorter or a different head: truncated in place (copytruncate).
   A rotated sibling whose head is ours is the copy: its tail from our offset is
   read first, then the file from the start.
3. Another inode (rename + create): the old inode is looked for among the rotated
   siblings (`<path>.N`, `<path>-YYYYMMDD`, never compressed ones); its remainder is
   read, then the new file from the start. The old file stays followed while it
   exists, for writers that reopen late (nginx before its USR1).
4. In cases 2 and 3, siblings written after the last read that are neither ours
   nor our copy were rotated in between (two rotations between runs): read whole.

Two optional settings bound the work of a run: `first_read_max_bytes` (default 64
MiB: a source seen for the first time is read from that far before its end) and
`max_bytes_per_run` (default 16 MiB of the current file; the rest waits for the
next run, no gap).

Whatever may have been lost (the old file compressed away, a truncation without a
copy, the start of a large file on first sight) is a `log_gap` record, never
silence. Only complete lines are consumed: an unterminated last line waits for its
newline. Lines over 64 KiB are consumed in chunks and recorded only as
`malformed_line`; non-UTF-8 lines likewise; lines never reach a record unscrubbed.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import re
import stat
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector._journald import SYSTEM, JournalSource, collect_journal
from collector._linux import malformed_record, missing_record, unreadable_record
from collector._logformats import (
    AUTH_PROGRAMS,
    LOG_FORMATS,
    LineContext,
    Malformed,
    Parser,
    parser_for,
    raw_sha256,
)
from collector.options import (
    ABSOLUTE_PATH,
    SIZE,
    STRING,
    Kind,
    Option,
    TableKey,
    choice,
    show,
    table_list,
)
from collector.record import Record
from collector.registry import (
    SOURCE_UNREADABLE_TYPE,
    CollectContext,
    Collector,
    Field,
    RecordType,
    unsupported,
)
from signing.errors import UsageError

NAME = "logs"

LINE_MAX = 65536  # longer lines are recorded as malformed, never buffered whole
HEAD_BYTES = 4096  # bytes hashed to recognise a file after truncation or rotation
AUTH_LOG = "/var/log/auth.log"


# --- options ---------------------------------------------------------------------

def _journal(value: Any, key: str) -> str:
    text = STRING.parse(value, key)
    if text != SYSTEM and not text.startswith("/"):
        raise UsageError(f'"{key}" must be "system" or an absolute path to a journal file '
                         f"or directory, got {show(text)}")
    return text


SOURCE_KEYS = (
    TableKey("path", ABSOLUTE_PATH, "a log file (give `path` or `journal`)"),
    TableKey("journal", Kind('"system" or an absolute path', _journal),
             '"system": the host\'s journal via journalctl; a path: that journal file or '
             "directory (`journalctl --file`/`--directory`)"),
    TableKey("format", choice(*LOG_FORMATS), " | ".join(LOG_FORMATS) + "; `journald` "
             "exactly for a `journal` source", required=True),
    TableKey("kind", STRING, '"" or "ai_gateway": tags the records', default=""),
    TableKey("skip_if_exists", ABSOLUTE_PATH, "a file whose presence turns this source "
             "off (a journal whose auth entries rsyslog also writes to auth.log)"),
)


def _check_source(table: dict[str, Any], key: str) -> None:
    if ("path" in table) == ("journal" in table):
        if "path" not in table:
            raise UsageError(f'"{key}.path" is missing',
                             hint='or give journal = "system" for the systemd journal')
        raise UsageError(f'"{key}" has both path and journal', hint="give one of them")
    if "journal" in table and table["format"] != "journald":
        raise UsageError(f'"{key}.format" must be "journald" for a journal source, got '
                         f"{show(table['format'])}")
    if "path" in table and table["format"] == "journald":
        raise UsageError(f'"{key}.format" "journald" needs a journal source, not a path',
                         hint='write { journal = "system", format = "journald" } or give the '
                              "file's format")


SOURCES = Option(
    NAME, "sources", table_list(SOURCE_KEYS, _check_source),
    [{"path": AUTH_LOG, "format": "auth"},
     {"journal": SYSTEM, "format": "journald", "skip_if_exists": AUTH_LOG}],
    "log files and journals to read; the journal only where auth.log is absent "
    "(rsyslog writes the same entries there)",
    table_keys=SOURCE_KEYS)
# A source seen for the first time: at most its last 64 MiB (a journal: of JSON output).
FIRST_READ_MAX_BYTES = Option(NAME, "first_read_max_bytes", SIZE, "64MiB",
                              "a log seen for the first time: only its last 64 MiB "
                              "(a log_gap says so)")
# Records are held in memory until sealed (~40k gateway lines); the rest waits.
MAX_BYTES_PER_RUN = Option(NAME, "max_bytes_per_run", SIZE, "16MiB",
                           "read per run of the current file (of a journal: its JSON "
                           "output); the rest waits for the next run")
MAX_SAFE_INT = 2**53 - 1
_CHUNK = 1 << 16
_MAX_CANDIDATES = 256
# What logrotate appends to a rotated file's name: `.1`, `-20261125`, `-2026112506`,
# `-2026-11-25`. Compressed ones (`.gz`, ...) cannot be read on and are not listed.
_ROTATED_SUFFIX = re.compile(r"\.\d{1,6}|-\d{8}(?:\d{2})?|-\d{4}-\d\d-\d\d")


# --- positions and checkpoints ---------------------------------------------------

@dataclass(frozen=True)
class Position:
    """A place to read on from: a byte offset at a line start, that line's number,
    or (`discard`) an offset inside an over-long line already reported."""

    offset: int
    line: int
    discard: bool = False


START = Position(0, 1)


@dataclass(frozen=True)
class Mark:
    """Where reading of one file stopped, and how to recognise that file again."""

    file: str
    dev: str
    ino: str
    size: int
    head_sha256: str
    mtime_ns: int
    pos: Position

    @property
    def identity(self) -> tuple[str, str]:
        return self.dev, self.ino

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "dev": self.dev, "ino": self.ino,
                "offset": self.pos.offset, "line": self.pos.line,
                "discard": self.pos.discard, "size": self.size,
                "head_sha256": self.head_sha256, "mtime_ns": str(self.mtime_ns)}

    @staticmethod
    def from_json(value: Any) -> Mark | None:
        """The mark saved by `to_json`, or None if `value` is not one."""
        try:
            pos = Position(value["offset"], value["line"], value.get("discard", False))
            mark = Mark(value.get("file", ""), value["dev"], value["ino"], value["size"],
                        value["head_sha256"], int(value["mtime_ns"]), pos)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        ints_ok = all(type(n) is int and n >= 0 for n in (pos.offset, pos.line, mark.size))
        strings_ok = all(isinstance(s, str) for s in (mark.file, mark.dev, mark.ino,
                                                       mark.head_sha256))
        if not (ints_ok and strings_ok and isinstance(pos.discard, bool)
                and pos.offset <= mark.size and pos.line >= 1):
            return None
        return mark


@dataclass
class SourceCheckpoint:
    """The checkpoint of one source: its current file, and the rotated file still
    followed (a writer may append to it until it reopens)."""

    current: Mark
    rotated: Mark | None

    def to_json(self) -> dict[str, Any]:
        value = self.current.to_json()
        if self.rotated is not None:
            value["rotated"] = self.rotated.to_json()
        return value

    @staticmethod
    def from_json(value: Any) -> SourceCheckpoint | None:
        current = Mark.from_json(value)
        if current is None:
            return None
        rotated_value = value.get("rotated")
        rotated = None if rotated_value is None else Mark.from_json(rotated_value)
        return SourceCheckpoint(current, rotated)


# --- files -----------------------------------------------------------------------

@dataclass
class OpenFile:
    """A regular file opened for reading; `display` is its path on the host."""

    display: str
    fd: int
    st: os.stat_result
    _head: str | None = None

    @property
    def identity(self) -> tuple[str, str]:
        return str(self.st.st_dev), str(self.st.st_ino)

    @property
    def size(self) -> int:
        return self.st.st_size

    def head_sha256(self, size: int) -> str:
        """SHA-256 of the first min(size, 4 KiB) bytes (fewer if the file is shorter)."""
        return hashlib.sha256(os.pread(self.fd, min(size, HEAD_BYTES), 0)).hexdigest()

    def has_head_of(self, mark: Mark) -> bool:
        return self.head_sha256(mark.size) == mark.head_sha256

    def own_head(self) -> str:
        """The head hash for a mark, taken once: at the first call, as close to the
        open as the caller makes it, so it matches `size` even if the file is
        truncated while being read."""
        if self._head is None:
            self._head = self.head_sha256(self.size)
        return self._head

    def mark(self, pos: Position) -> Mark:
        return Mark(self.display, *self.identity, self.size, self.own_head(),
                    self.st.st_mtime_ns, pos)


def _not_regular(st: os.stat_result) -> OSError | None:
    if stat.S_ISDIR(st.st_mode):
        return IsADirectoryError(errno.EISDIR, "Is a directory")
    if not stat.S_ISREG(st.st_mode):  # FIFOs and devices are never opened: they can hang
        return OSError(errno.EINVAL, "not a regular file")
    return None


def open_regular(host_path: Path, display: str) -> OpenFile:
    """Open a regular file (following symlinks); OSError for anything else."""
    problem = _not_regular(os.stat(host_path))
    if problem is not None:
        raise problem
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | os.O_CLOEXEC
    fd = os.open(host_path, flags)
    st = os.fstat(fd)
    problem = _not_regular(st)
    if problem is not None:
        os.close(fd)
        raise problem
    return OpenFile(display, fd, st)


def _candidates(ctx: CollectContext, path: str,
                problems: list[Record]) -> list[tuple[str, Path, os.stat_result]]:
    """Rotated siblings of `path` (host path, path under root, lstat), newest first.
    A directory that may not be listed is recorded: its rotated files are unseen."""
    directory, base = os.path.split(path)
    found = []
    try:
        with os.scandir(ctx.path(directory or "/")) as entries:
            for entry in entries:
                name = entry.name
                if not (name.startswith(base) and _ROTATED_SUFFIX.fullmatch(name[len(base):])):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append((f"{directory}/{name}", Path(entry.path), st))
                if len(found) >= _MAX_CANDIDATES:
                    break
    except FileNotFoundError:
        return []
    except OSError as exc:
        problems.append(unreadable_record(NAME, directory or "/", exc))
        return []
    found.sort(key=lambda item: (-item[2].st_mtime_ns, item[0]))
    return found


# --- reading lines ---------------------------------------------------------------

@dataclass(frozen=True)
class LineEvent:
    """One line: its offset and number, and its bytes (None: over LINE_MAX)."""

    offset: int
    line: int
    raw: bytes | None


class LineReader:
    """Lines of `fd` from `start` up to byte `limit`, read in 64 KiB chunks.

    Iterating yields each complete line; an over-long line is yielded once, as
    `raw=None`, as soon as it passes LINE_MAX, and the rest of it is skipped without
    being kept. Afterwards `position` is where to read on: before an unterminated
    last line (unless `final`, for a file that will not grow: then it is yielded),
    or inside an over-long line (`discard`).
    """

    def __init__(self, fd: int, start: Position, limit: int, final: bool) -> None:
        self.fd = fd
        self.position = start
        self.limit = limit
        self.final = final

    def __iter__(self) -> Iterator[LineEvent]:
        line_start, lineno, discard = (self.position.offset, self.position.line,
                                       self.position.discard)
        read_at = line_start
        buffer = bytearray()
        while read_at < self.limit:
            chunk = os.pread(self.fd, min(_CHUNK, self.limit - read_at), read_at)
            if not chunk:
                break
            base, read_at = read_at, read_at + len(chunk)
            at = 0
            while at < len(chunk):
                newline = chunk.find(b"\n", at)
                end = len(chunk) if newline < 0 else newline
                if not discard:
                    if len(buffer) + end - at > LINE_MAX:
                        discard = True
                        buffer.clear()
                        yield LineEvent(line_start, lineno, None)
                    else:
                        buffer += chunk[at:end]
                if newline < 0:
                    break
                if not discard:
                    yield LineEvent(line_start, lineno, bytes(buffer))
                buffer.clear()
                discard = False
                lineno += 1
                line_start = base + newline + 1
                at = newline + 1
            self.position = (Position(read_at, lineno, True) if discard
                             else Position(line_start, lineno))
        if self.final and buffer and not discard:
            yield LineEvent(line_start, lineno, bytes(buffer))
            self.position = Position(read_at, lineno + 1)


def count_newlines(fd: int, end: int) -> int:
    """Newlines in the first `end` bytes, read in 1 MiB chunks."""
    total = offset = 0
    while offset < end:
        chunk = os.pread(fd, min(1 << 20, end - offset), offset)
        if not chunk:
            break
        total += chunk.count(b"\n")
        offset += len(chunk)
    return total


def safe_int(value: int) -> int | str:
    """An integer as record data: itself within ±(2**53-1), else its decimal text."""
    return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else str(value)


def local_zone(ctx: CollectContext) -> dt.tzinfo:
    """The zone of zone-less syslog stamps: the root's /etc/localtime, else UTC."""
    try:
        with open(ctx.path("/etc/localtime"), "rb") as handle:
            return zoneinfo.ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return dt.UTC


# --- one source ------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One file entry of the `sources` option."""

    path: str
    format: str
    kind: str


@dataclass
class Limits:
    """Bytes one run may read of a source (options `first_read_max_bytes`,
    `max_bytes_per_run`)."""

    first_read_max: int = FIRST_READ_MAX_BYTES.default_value
    run_read_max: int = MAX_BYTES_PER_RUN.default_value


@dataclass
class SourceRun:
    """Reading one source in one run: its records and the counts for `log_source`."""

    ctx: CollectContext
    source: Source
    parser: Parser
    zone: dt.tzinfo
    records: list[Record] = field(default_factory=list)
    lines_read: int = 0
    access: int = 0
    malformed: int = 0
    skipped: int = 0
    gaps: int = 0
    rotated_from: list[str] = field(default_factory=list)
    read_files: set[tuple[str, str]] = field(default_factory=set)
    _candidates: list[tuple[str, Path, os.stat_result]] | None = None
    _opened: list[OpenFile] = field(default_factory=list)

    # finding rotated files --------------------------------------------------------

    def candidates(self) -> list[tuple[str, Path, os.stat_result]]:
        if self._candidates is None:
            self._candidates = _candidates(self.ctx, self.source.path, self.records)
        return self._candidates

    def open_candidate(self, display: str, host: Path, st: os.stat_result,
                       keep: Callable[[OpenFile], bool]) -> OpenFile | None:
        """Open a sibling; kept open (until `close`) only if still the file listed and
        `keep` accepts it."""
        try:
            opened = open_regular(host, display)
        except FileNotFoundError:
            return None  # rotated away meanwhile
        except OSError as exc:  # a rotated file the agent may not read: its lines unseen
            self.records.append(unreadable_record(NAME, display, exc))
            return None
        opened.own_head()
        if opened.identity == (str(st.st_dev), str(st.st_ino)) and keep(opened):
            self._opened.append(opened)
            return opened
        os.close(opened.fd)
        return None

    def find_inode(self, mark: Mark) -> OpenFile | None:
        """The rotated sibling that is `mark`'s file (same inode, same head)."""
        for display, host, st in self.candidates():
            if (str(st.st_dev), str(st.st_ino)) == mark.identity and st.st_size >= mark.pos.offset:
                opened = self.open_candidate(display, host, st, lambda f: f.has_head_of(mark))
                if opened is not None:
                    return opened
        return None

    def find_copy(self, mark: Mark, exclude: set[tuple[str, str]]) -> OpenFile | None:
        """A rotated sibling holding what `mark` read: a copytruncate copy."""
        if mark.size == 0:
            return None  # an empty head matches anything
        for display, host, st in self.candidates():
            if (str(st.st_dev), str(st.st_ino)) in exclude or st.st_size < mark.pos.offset:
                continue
            opened = self.open_candidate(display, host, st, lambda f: f.has_head_of(mark))
            if opened is not None:
                return opened
        return None

    def rotated_between(self, mark: Mark, exclude: set[tuple[str, str]]) -> list[OpenFile]:
        """Siblings written after `mark` was taken that hold none of what it read:
        files rotated in between two runs, to be read whole (oldest first)."""
        found = []
        for display, host, st in self.candidates():
            if ((str(st.st_dev), str(st.st_ino)) in exclude | self.read_files
                    or st.st_mtime_ns <= mark.mtime_ns):
                continue
            opened = self.open_candidate(
                display, host, st, lambda f: not (mark.size > 0 and f.has_head_of(mark)))
            if opened is not None:
                found.append(opened)
        found.sort(key=lambda f: (f.st.st_mtime_ns, f.display))
        return found

    def close(self) -> None:
        for opened in self._opened:
            os.close(opened.fd)
        self._opened.clear()

    # reading ------------------------------------------------------------------------

    def read(self, opened: OpenFile, start: Position, limit: int, final: bool) -> Position:
        """Read `opened` from `start` to `limit`, recording each line."""
        self.read_files.add(opened.identity)
        context = LineContext(dt.datetime.fromtimestamp(opened.st.st_mtime, dt.UTC), self.zone)
        reader = LineReader(opened.fd, start, limit, final)
        for event in reader:
            self.line(opened.display, event, context)
        return reader.position

    def read_rotated(self, opened: OpenFile, start: Position, final: bool) -> Position:
        self.rotated_from.append(opened.display)
        return self.read(opened, start, opened.size, final)

    def line(self, file: str, event: LineEvent, context: LineContext) -> None:
        self.lines_read += 1
        if event.raw is None:
            self.bad(file, event.line, f"line over {LINE_MAX} bytes")
            return
        try:
            text = event.raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            self.bad(file, event.line, "not UTF-8")
            return
        try:
            parsed = self.parser(text, context) if text.strip() else None
        except Malformed as exc:
            self.bad(file, event.line, str(exc))
            return
        if parsed is None:
            self.skipped += 1
            return
        data = {"log": self.source.path, "file": file, "line": event.line,
                "line_offset": safe_int(event.offset), **parsed,
                "raw_sha256": raw_sha256(parsed, event.raw)}
        self.records.append(Record(NAME, "access", f"{file}:{event.line}", data))
        self.access += 1

    def bad(self, file: str, lineno: int, reason: str) -> None:
        self.malformed += 1
        self.records.append(malformed_record(NAME, file, lineno, reason))

    def gap(self, cause: str, reason: str, mark: Mark | None = None,
            from_offset: int | None = None, to_offset: int | None = None) -> None:
        self.gaps += 1
        self.records.append(Record(NAME, "log_gap", f"{self.source.path}:{cause}", {
            "path": self.source.path, "cause": cause,
            "file": mark.file if mark is not None else None,
            "device": mark.dev if mark is not None else None,
            "inode": mark.ino if mark is not None else None,
            "from_offset": None if from_offset is None else safe_int(from_offset),
            "to_offset": None if to_offset is None else safe_int(to_offset),
            "reason": reason}))


def _first_start(run: SourceRun, current: OpenFile, limit: int) -> Position:
    """Where to start in a file never read before: the start, or its last `limit`
    bytes (the skipped part is a `log_gap`; line numbers are still counted)."""
    cut = current.size - limit
    if cut <= 0:
        return START
    at_line_start = os.pread(current.fd, 1, cut - 1) == b"\n"
    run.gap("first_read_limit",
            f"first read of this source: only its last {limit} bytes are read",
            current.mark(START), 0, cut)
    return Position(cut, count_newlines(current.fd, cut) + 1, not at_line_start)


def _was_truncated(current: OpenFile, mark: Mark) -> bool:
    return (current.size < mark.pos.offset or current.size < mark.size
            or not current.has_head_of(mark))


def _follow_rotated(run: SourceRun, tracked: Mark) -> Mark | None:
    """Read on in a rotated file still followed; its new mark, None once it is gone."""
    rotated = run.find_inode(tracked)
    if rotated is None:
        if tracked.size > tracked.pos.offset:
            run.gap("rotated_file_gone",
                    "a rotated file ending in an unterminated line is gone (compressed "
                    "or removed) before the line was completed", tracked,
                    tracked.pos.offset, tracked.size)
        return None
    position = tracked.pos
    if rotated.size > tracked.pos.offset:
        position = run.read_rotated(rotated, tracked.pos, final=False)
    return rotated.mark(position)


def _catch_up(run: SourceRun, current: OpenFile, saved: SourceCheckpoint,
              tracked: Mark | None) -> tuple[Position, Mark | None]:
    """Read what a rotation or truncation since `saved` left elsewhere; where to
    start in `current`, and the rotated file to follow from now on."""
    mark = saved.current
    exclude = {current.identity, *([tracked.identity] if tracked else [])}
    if current.identity == mark.identity:
        if not _was_truncated(current, mark):
            return mark.pos, tracked
        copy = run.find_copy(mark, exclude)
        if copy is not None:
            exclude.add(copy.identity)
            if copy.size > mark.pos.offset:
                run.read_rotated(copy, mark.pos, final=True)
        else:
            run.gap("truncated", "the file was truncated and no rotated copy holding what "
                    "followed the last read was found: lines written after this offset "
                    "before the truncation may be lost", mark, mark.pos.offset)
        for between in run.rotated_between(mark, exclude):
            run.read_rotated(between, START, final=True)
        return START, tracked
    # Rotated by rename: the old file is a sibling now, or gone (compressed).
    rotated: list[tuple[OpenFile, Position]] = []
    old = run.find_inode(mark)
    if old is not None:
        exclude.add(old.identity)
        rotated.append((old, mark.pos))
    else:
        run.gap("rotated_away", "the file was rotated and the old file is not found "
                "uncompressed next to it: lines written after this offset may be lost",
                mark, mark.pos.offset)
    rotated += [(between, START) for between in run.rotated_between(mark, exclude)]
    follow = tracked
    for index, (opened, start) in enumerate(rotated):
        newest = index == len(rotated) - 1  # the one a late writer may still append to
        position = run.read_rotated(opened, start, final=not newest)
        if newest:
            follow = opened.mark(position)
    return START, follow


def collect_source(ctx: CollectContext, source: Source, parser: Parser, saved: Any,
                   limits: Limits) -> tuple[list[Record], dict[str, Any] | None]:
    """The records of one source and its new checkpoint (`saved` when unchanged)."""
    try:
        current = open_regular(ctx.path(source.path), source.path)
    except FileNotFoundError:
        return [missing_record(NAME, source.path)], saved
    except OSError as exc:
        return [unreadable_record(NAME, source.path, exc)], saved
    run = SourceRun(ctx, source, parser, local_zone(ctx))
    try:
        return _read_source(run, current, saved, limits)
    except OSError as exc:  # EIO and the like: the next run reads it all again
        return [unreadable_record(NAME, source.path, exc)], saved
    finally:
        run.close()
        os.close(current.fd)


def _read_source(run: SourceRun, current: OpenFile, saved: Any,
                 limits: Limits) -> tuple[list[Record], dict[str, Any]]:
    source = run.source
    current.own_head()
    checkpoint = SourceCheckpoint.from_json(saved) if saved is not None else None
    if saved is not None and checkpoint is None:
        run.gap("checkpoint_unusable", "the saved position of this source is not "
                "readable; the source is read as if seen for the first time")
    tracked = checkpoint.rotated if checkpoint is not None else None
    if tracked is not None:
        tracked = _follow_rotated(run, tracked)
    if checkpoint is None:
        start = _first_start(run, current, limits.first_read_max)
    else:
        start, tracked = _catch_up(run, current, checkpoint, tracked)
    limit = min(current.size, start.offset + limits.run_read_max)
    end = run.read(current, start, limit, final=False)
    new = SourceCheckpoint(current.mark(end), tracked)
    run.records.append(Record(NAME, "log_source", source.path, {
        "path": source.path, "format": source.format, "kind": source.kind,
        "device": current.identity[0], "inode": current.identity[1],
        "size": safe_int(current.size), "start_offset": safe_int(start.offset),
        "end_offset": safe_int(end.offset), "lines_read": run.lines_read,
        "records": run.access, "malformed": run.malformed, "skipped": run.skipped,
        "gaps": run.gaps, "rotated_from": run.rotated_from}))
    return run.records, new.to_json()


def _sources(ctx: CollectContext) -> Iterator[tuple[Source | JournalSource, str] | Record]:
    """Each configured source once, with the file that turns it off ("" for none)."""
    seen: set[str] = set()
    for entry in ctx.value(SOURCES):
        journal = entry.get("journal") if isinstance(entry, dict) else None
        if not (isinstance(entry, dict) and isinstance(entry.get("format"), str)
                and (isinstance(entry.get("path"), str) or isinstance(journal, str))):
            yield unsupported(NAME, repr(entry)[:200],
                              "a source needs a path (or a journal) and a format")
            continue
        kind = str(entry.get("kind") or "")
        source = (JournalSource(journal, kind) if isinstance(journal, str)
                  else Source(entry["path"], entry["format"], kind))
        name = source.id if isinstance(source, JournalSource) else source.path
        if name in seen:
            continue
        seen.add(name)
        yield source, str(entry.get("skip_if_exists") or "")


_UNUSABLE: dict[str, Any] = {"unusable": True}  # stands for an unreadable checkpoint


def collect(ctx: CollectContext) -> Iterator[Record]:
    saved = ctx.checkpoint(NAME)
    entries: dict[str, Any] = dict(saved) if isinstance(saved, dict) else {}
    # A checkpoint that is not a table is unusable for every source (a gap each).
    unusable = saved is not None and not isinstance(saved, dict)
    limits = Limits(int(ctx.value(FIRST_READ_MAX_BYTES)), int(ctx.value(MAX_BYTES_PER_RUN)))
    proposed: dict[str, Any] = {}
    unreadable: set[str] = set()
    for item in _sources(ctx):
        if isinstance(item, Record):
            yield item
            continue
        source, skip_if = item
        name = source.id if isinstance(source, JournalSource) else source.path
        if skip_if and os.path.lexists(ctx.path(skip_if)):
            # Its checkpoint is dropped: should the file go, the source is read as new.
            yield Record(NAME, "source_skipped", name, {"source": name,
                                                        "skip_if_exists": skip_if})
            continue
        saved_entry = _UNUSABLE if unusable else entries.get(name)
        if isinstance(source, JournalSource):
            records, entry = collect_journal(ctx, NAME, source, saved_entry,
                                             limits.first_read_max, limits.run_read_max)
        else:
            parser = parser_for(source.format, source.kind)
            if parser is None or source.format == "journald":
                yield unsupported(NAME, source.path, f"unknown log format {source.format!r}")
                continue
            records, entry = collect_source(ctx, source, parser, saved_entry, limits)
        if entry is not None and entry is not _UNUSABLE:
            proposed[name] = entry
        # Propose before yielding: should a later source raise, what was yielded so far
        # is sealed together with the positions that cover it.
        ctx.set_checkpoint(NAME, dict(proposed))
        for record in records:  # a directory or rotated file shared by sources: once
            if record.type == SOURCE_UNREADABLE_TYPE:
                if record.key in unreadable:
                    continue
                unreadable.add(record.key)
            yield record
    ctx.set_checkpoint(NAME, dict(proposed))


# --- declaration -----------------------------------------------------------------

_NULL_DOC = "; null when the line does not say"


def _f(types: tuple[type, ...], doc: str, personal: bool = False,
       required: bool = True) -> Field:
    return Field(types, doc, required=required, personal=personal)


_S = (str, type(None))
_I = (int, type(None))

ACCESS_DOCS: dict[str, Field] = {
    "log": _f((str,), "the configured source path"),
    "file": _f((str,), "the file the line was read from (a rotated sibling of `log`, or "
                       "`log` itself)"),
    "line": _f(_I, "1-based line number in `file`; for a journal entry its sequence "
                   "number (the cursor's `i=`)"),
    "line_offset": _f((int, str, type(None)), "byte offset of the line in `file` (decimal "
                                              "text beyond 2**53); null for a journal entry"),
    "time": _f(_S, "when it happened, RFC 3339 UTC (syslog stamps without a zone are "
                   "read in the host's /etc/localtime zone, the year from the file's "
                   "mtime); null when a JSON line has no usable time"),
    "account": _f(_S, "who: the user logging in / running sudo or su, the HTTP remote "
                      "user, the gateway's user" + _NULL_DOC, personal=True),
    "source": _f(_S, "from where: client address, or terminal (sudo TTY, su tty)" + _NULL_DOC,
                 personal=True),
    "source_port": _f(_I, "client port (sshd)" + _NULL_DOC),
    "data_subject": _f(_S, "whose data the access concerns (gateway `subject`)" + _NULL_DOC,
                       personal=True),
    "action": _f((str,), "ssh_login, ssh_login_failed, ssh_invalid_user, ssh_disconnect, "
                         "session_open, session_close, sudo, sudo_failed, sudo_denied, su, "
                         "su_failed, http_request, or a JSON line's `action`/`event`"),
    "target_account": _f(_S, "the account acted as (sudo USER, su target, the user a "
                             "PAM session was opened for by another)" + _NULL_DOC,
                             personal=True),
    "auth_method": _f(_S, "sshd method: publickey, password, keyboard-interactive, ..."
                      + _NULL_DOC),
    "attempts": _f(_I, "incorrect password attempts (sudo_failed)" + _NULL_DOC),
    "command": _f(_S, "sudo COMMAND, secrets scrubbed (flag values, -pSECRET, tokens)"
                  + _NULL_DOC),
    "program": _f(_S, "syslog program (sshd, sudo, su, ...); null for HTTP logs"),
    "pid": _f(_I, "syslog process id" + _NULL_DOC),
    "method": _f(_S, "HTTP method" + _NULL_DOC),
    "path": _f(_S, "HTTP path without its query string (which can carry tokens)"
               + _NULL_DOC),
    "status": _f(_I, "HTTP status" + _NULL_DOC),
    "bytes": _f(_I, "response body bytes" + _NULL_DOC),
    "user_agent": _f(_S, "HTTP user agent, secrets scrubbed" + _NULL_DOC),
    "request_id": _f(_S, "gateway request id" + _NULL_DOC),
    "model": _f(_S, "AI model named by the gateway" + _NULL_DOC),
    "model_version": _f(_S, "AI model version" + _NULL_DOC),
    "prompt_sha256": _f(_S, "SHA-256 (hex) of the prompt as the gateway logged it; null "
                            "when absent or not a SHA-256"),
    "response_sha256": _f(_S, "SHA-256 (hex) of the response; null when absent or not a "
                              "SHA-256"),
    "raw": _f(_S, "the line, secrets scrubbed (query strings too; runs of over 64 token "
                  "characters, e.g. JWTs, as `[REDACTED:long_token]`), cut to 4 KiB; null "
                  "for JSON lines, which may hold prompts and are never copied"),
    "raw_truncated": _f((bool,), "true when `raw` was cut"),
    "cursor": _f((str,), "a journal entry's cursor (`journalctl --cursor`); absent for "
                         "files", required=False),
    "raw_sha256": _f(_S, "SHA-256 of the line's bytes as in the file (without the "
                         "newline; for a journal entry, of the line as composed: "
                         "`<time> <host> <program>[<pid>]: <message>`), to match the "
                         "record against a copy of the log; null "
                         "when a secret was redacted from `raw` (the hash would let a "
                         "guess of the secret be checked)"),
    "raw_hmac": _f(_S, "present only when `[privacy] pseudonymize` is set, and then "
                       "`raw_sha256` is null: hex HMAC-SHA256 under the pseudonym key of "
                       "the 32 bytes of that SHA-256, so only the key's holder can match the "
                       "record against a copy of the log (docs/FORMAT.md); null when "
                       "`raw_sha256` would be", required=False),
}

RECORD_TYPES = {
    "access": RecordType(
        event=True,
        doc="One access event from a log line: a login, a failed login, a sudo or su, a "
            "session, an HTTP request to the AI gateway. Every line is recorded once "
            "across runs and rotations. A journal entry of sshd, sudo, su or login is "
            "made the line auth.log would hold and parsed the same way.",
        key="`<file>:<line>`; `journal:<journal>@<cursor>` for a journal entry",
        fields=ACCESS_DOCS,
    ),
    "log_source": RecordType(
        doc="What one run read of one configured source.",
        key="the configured path",
        fields={
            "path": _f((str,), "the configured path"),
            "format": _f((str,), "auth, nginx-combined or json-lines"),
            "kind": _f((str,), "\"\" or ai_gateway"),
            "device": _f((str,), "device id of the current file (decimal text)"),
            "inode": _f((str,), "inode of the current file (decimal text)"),
            "size": _f((int, str), "size of the current file when opened"),
            "start_offset": _f((int, str), "offset where reading of the current file began"),
            "end_offset": _f((int, str), "offset where it stopped (the next run starts here; "
                                         "before an unterminated last line)"),
            "lines_read": _f((int,), "lines read this run, all files"),
            "records": _f((int,), "access records"),
            "malformed": _f((int,), "malformed_line records"),
            "skipped": _f((int,), "well-formed lines that are not access events"),
            "gaps": _f((int,), "log_gap records"),
            "rotated_from": _f((list,), "rotated files read before the current one, in "
                                        "order"),
        },
    ),
    "log_gap": RecordType(
        event=True,
        doc="Lines of a source that may never be read: the old file rotated away "
            "(compressed) before its end was read, a truncation with no copy found, "
            "the start of a large file on first sight.",
        key="`<path>:<cause>`",
        fields={
            "path": _f((str,), "the configured path"),
            "cause": _f((str,), "rotated_away, truncated, rotated_file_gone, "
                                "first_read_limit or checkpoint_unusable (the last two "
                                "for journals too)"),
            "file": _f(_S, "the file the lines were in, as last seen"),
            "device": _f(_S, "its device id (decimal text)"),
            "inode": _f(_S, "its inode (decimal text)"),
            "from_offset": _f((int, str, type(None)), "first byte possibly lost"),
            "to_offset": _f((int, str, type(None)),
                            "end of the possibly lost bytes; null: up to the end of that "
                            "file (unknown)"),
            "reason": _f((str,), "what happened, in words"),
        },
    ),
}

RECORD_TYPES["journal_source"] = RecordType(
    doc="What one run read of one configured journal (`journalctl -o json` of the auth "
        "programs: " + ", ".join(AUTH_PROGRAMS) + ").",
    key="`journal:<journal>`",
    fields={
        "journal": _f((str,), "\"system\" or the configured journal path"),
        "kind": _f((str,), "the configured kind"),
        "cursor_before": _f(_S, "the cursor read after (null: first read)"),
        "cursor_after": _f(_S, "the cursor of the last entry read (the next run reads "
                               "after it)"),
        "entries_read": _f((int,), "journal entries read this run"),
        "records": _f((int,), "access records"),
        "malformed": _f((int,), "malformed_line records"),
        "skipped": _f((int,), "entries that are not access events"),
        "gaps": _f((int,), "log_gap records"),
        "more": _f((bool,), "true when `max_bytes_per_run` stopped the run: the rest "
                            "is read by the next"),
    },
)
RECORD_TYPES["source_skipped"] = RecordType(
    doc="A source not read because its `skip_if_exists` file exists (the default "
        "journal source while /var/log/auth.log holds the same entries).",
    key="the source: its path, or `journal:<journal>`",
    fields={
        "source": _f((str,), "the source"),
        "skip_if_exists": _f((str,), "the file that exists"),
    },
)

COLLECTOR = Collector(
    name=NAME,
    version="3",
    description="Access evidence from logs: sshd, sudo and su in auth logs or in the "
                "systemd journal (journalctl, with a saved cursor); AI-gateway access "
                "logs (nginx combined, JSON lines). Offsets and cursors persist across "
                "runs and rotation.",
    platforms=("linux", "darwin"),
    options=(SOURCES, FIRST_READ_MAX_BYTES, MAX_BYTES_PER_RUN),
    record_types=RECORD_TYPES,
    collect=collect,
)
