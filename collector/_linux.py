"""Readers for Unix text files under a collector's root (passwd-style, os-release).

Everything here is pure: it takes bytes or a `CollectContext` and returns values
plus the problem records (`source_missing`, `source_unreadable`, `malformed_line`)
that the caller emits. Files are read as bytes and decoded with `surrogateescape`,
so no byte is lost; `record_text` turns such a string back into record data
(`text_or_b64`), `key_text` into a record key (always a plain string).
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from collector.record import Record, text_or_b64
from collector.registry import (
    MALFORMED_LINE_TYPE,
    SOURCE_MISSING_TYPE,
    SOURCE_UNREADABLE_TYPE,
    CollectContext,
)

# Safe-integer bound of our record values (see signing.canonical).
MAX_SAFE_INT = 2**53 - 1

_INT = re.compile(r"-?[0-9]+")


def decode(raw: bytes) -> str:
    """Bytes as a string that round-trips exactly (`surrogateescape`)."""
    return raw.decode("utf-8", "surrogateescape")


def record_text(text: str) -> str | dict[str, str]:
    """A `decode`d string as record data: itself if UTF-8, else `{"b64": ...}`."""
    return text_or_b64(text.encode("utf-8", "surrogateescape"))


def key_text(text: str) -> str:
    """A `decode`d string as a record key: non-UTF-8 bytes shown as `\\xNN`."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def os_reason(exc: OSError) -> str:
    """`PermissionError: Permission denied`: the error without the (fixture) path."""
    return f"{type(exc).__name__}: {exc.strerror or exc}"


# Paths in these records are keys as much as data: always plain strings (key_text).

def missing_record(collector: str, path: str) -> Record:
    path = key_text(path)
    return Record(collector, SOURCE_MISSING_TYPE, path, {"path": path})


def unreadable_record(collector: str, path: str, exc: OSError) -> Record:
    path = key_text(path)
    return Record(collector, SOURCE_UNREADABLE_TYPE, path,
                  {"path": path, "reason": key_text(os_reason(exc))})


def malformed_record(collector: str, path: str, lineno: int, reason: str) -> Record:
    path = key_text(path)
    return Record(collector, MALFORMED_LINE_TYPE, f"{path}:{lineno}",
                  {"file": path, "line": lineno, "reason": reason})


@dataclass
class Source:
    """The outcome of reading one file: its bytes, or the record saying why not."""

    path: str
    raw: bytes | None
    problem: Record | None


def read_source(ctx: CollectContext, collector: str, path: str,
                report_missing: bool = True) -> Source:
    """Read the regular file `path` under the context root; never raises for an OS error.

    A missing file yields a `source_missing` record (unless `report_missing` is
    false), any other `OSError` (permission, a directory, ...) `source_unreadable`.
    A FIFO, socket or device is never read (it could block for ever): the file is
    opened non-blocking and checked with fstat before reading.
    """
    try:
        fd = os.open(ctx.path(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return Source(path, None, missing_record(collector, path) if report_missing else None)
    except OSError as exc:
        return Source(path, None, unreadable_record(collector, path, exc))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return Source(path, handle.read(), None)
    except OSError as exc:
        return Source(path, None, unreadable_record(collector, path, exc))
    finally:
        os.close(fd)


def lines(raw: bytes) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its newline) for each line."""
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        yield lineno, decode(line.rstrip(b"\r"))


@dataclass
class ColonLine:
    """One parsed line of a colon-separated file, or the reason it is malformed."""

    lineno: int
    fields: list[str]
    reason: str | None = None


def parse_colon_file(raw: bytes, nfields: int) -> Iterator[ColonLine]:
    """Lines of a passwd-style file; blank lines skipped, wrong field count flagged."""
    for lineno, line in lines(raw):
        if not line.strip():
            continue
        fields = line.split(":")
        if len(fields) != nfields:
            yield ColonLine(lineno, [], f"expected {nfields} fields, found {len(fields)}")
        else:
            yield ColonLine(lineno, fields)


def parse_int(text: str, what: str, low: int = 0, high: int = 2**32 - 1) -> int:
    """A decimal integer in [low, high]; ValueError naming `what` (never the text)."""
    if not text:
        raise ValueError(f"{what} is empty")
    if not _INT.fullmatch(text):
        raise ValueError(f"{what} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{what} is out of range")
    return value


def parse_os_release(raw: bytes) -> dict[str, str]:
    """os-release(5) `KEY=value` assignments, shell quoting and escapes undone."""
    result: dict[str, str] = {}
    for _lineno, line in lines(raw):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "=" not in stripped:
            continue
        key, _, value = stripped.partition("=")
        try:
            parts = shlex.split(value, comments=False, posix=True)
            result[key.strip()] = " ".join(parts)
        except ValueError:  # unbalanced quotes: keep the text as written
            result[key.strip()] = value.strip("\"'")
    return result
