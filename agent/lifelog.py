"""Note the agent's own life: one event appended to the journal the `agent` collector
seals (collector/agent.py owns the format and the event types).

`note(state_dir, event, **fields)` is the one way in. It appends one line under the
journal lock with O_APPEND and fsyncs it before returning, so an event that was
noted survives kill -9; a line torn by a crash mid-write (its `note` never returned)
is cut off by the next writer. Text fields are scrubbed of secrets and shortened, so
the journal never holds a secret or an unbounded line. When the current part passes
its size bound it becomes the previous part (replacing the older one): the journal
stays bounded, and events rotated away before being sealed are recorded as a gap by
the collector, never silently lost.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from agent.fsutil import fsync_dir, write_all
from collector.agent import (
    JOURNAL_FILE,
    JOURNAL_PART_MAX_BYTES,
    JOURNAL_PREVIOUS_FILE,
    LINE_MAX_BYTES,
    TEXT_MAX_CHARS,
    Event,
    event_problem,
    journal_lock,
)
from collector.record import utc_now
from collector.registry import SKIPPED_TYPE, TIMEOUT_TYPE, CollectorResult
from collector.scrub import scrub_text
from signing.errors import GamsaError, os_error


def note(state_dir: Path, event: str, **fields: Any) -> None:
    """Append one life event (fsync'd). A wrong event name or field is a bug
    (ValueError); an OS error is a GamsaError naming the journal."""
    fields = {k: _bounded(v) for k, v in fields.items()}
    problem = event_problem(event, fields)
    if problem is not None:
        raise ValueError(problem)
    try:
        _append(state_dir, event, fields)
    except OSError as exc:
        raise os_error(exc, state_dir / JOURNAL_FILE, "note an agent event") from exc


def note_quietly(state_dir: Path, event: str, **fields: Any) -> str | None:
    """`note`, returning the one-line problem instead of raising it (for callers that
    must go on, and say so in their own log)."""
    try:
        note(state_dir, event, **fields)
    except GamsaError as exc:
        return exc.diagnostics()
    return None


def watch_overflow(state_dir: Path, watcher: str, reason: str, paths: int) -> str | None:
    """Note that a file watcher lost events (inotify overflow, a watch limit) and its
    `paths` are rescanned. For the file-watching code; returns a problem or None."""
    return note_quietly(state_dir, "watch_overflow", watcher=watcher, reason=reason,
                        paths=paths)


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        text = scrub_text(value)[0]
        return text if len(text) <= TEXT_MAX_CHARS else text[:TEXT_MAX_CHARS - 1] + "…"
    return value


def _append(state_dir: Path, event: str, fields: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with journal_lock(state_dir, create=True):
        path = state_dir / JOURNAL_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            size, last = _last_event(fd)
            if last is None:
                last = _last_in(state_dir / JOURNAL_PREVIOUS_FILE)
            if size >= JOURNAL_PART_MAX_BYTES:
                os.close(fd)
                fd = -1
                os.replace(path, state_dir / JOURNAL_PREVIOUS_FILE)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                             0o600)
                fsync_dir(state_dir)
            journal = last.journal if last is not None else secrets.token_hex(4)
            n = last.n + 1 if last is not None else 1
            line = Event(journal, n, utc_now(), os.getpid(), event, fields).line()
            if len(line) > LINE_MAX_BYTES:  # only a bug's huge field could; keep the event
                line = Event(journal, n, utc_now(), os.getpid(), event,
                             {k: v[:64] if isinstance(v, str) else v
                              for k, v in fields.items()}).line()
            write_all(fd, line)
            os.fsync(fd)
            if size == 0:
                fsync_dir(state_dir)
        finally:
            if fd >= 0:
                os.close(fd)


def _last_event(fd: int) -> tuple[int, Event | None]:
    """The part's size after cutting a torn last line, and its last event."""
    size = os.fstat(fd).st_size
    start = max(0, size - 2 * LINE_MAX_BYTES)
    tail = os.pread(fd, size - start, start)
    if tail and not tail.endswith(b"\n"):  # a write cut by a crash: never noted
        cut = tail.rfind(b"\n") + 1
        size = start + cut
        os.ftruncate(fd, size)
        tail = tail[:cut]
    return size, _last_of(tail)


def _last_in(path: Path) -> Event | None:
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 2 * LINE_MAX_BYTES))
            return _last_of(handle.read())
    except FileNotFoundError:
        return None


def _last_of(tail: bytes) -> Event | None:
    for line in reversed(tail.split(b"\n")):
        try:
            return Event.parse(line)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            continue
    return None


def note_trouble(state_dir: Path, result: CollectorResult, timeout: int) -> None:
    """Note a collector run that timed out, was skipped or failed (nothing otherwise)."""
    if result.cut_short == TIMEOUT_TYPE:
        note(state_dir, "run_timeout", collector=result.name, timeout_seconds=timeout)
    elif result.cut_short == SKIPPED_TYPE:
        note(state_dir, "run_skipped", collector=result.name, reason=result.error or "")
    elif result.status == "error":
        note(state_dir, "run_failed", collector=result.name, error=result.error or "")
