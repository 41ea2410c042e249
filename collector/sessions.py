"""The `sessions` collector: who is logged in, who logged in when, who failed to.

Live, `psutil.users()` gives the sessions open now (Linux, macOS, Windows). Under
any root, /var/log/wtmp and its rotations give the login history (each login with
the logout, shutdown or reboot that ended it, as `last` pairs them) and the boots
and shutdowns; /var/log/btmp and its rotations the failed logins, user names as
typed (a mistyped or probing name is evidence too). Files are streamed record by
record through `collector._utmp`, oldest rotation first, so a session opened in
wtmp.1 is closed by its logout in wtmp.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil  # type: ignore[import-untyped]

from collector import _utmp
from collector._linux import (
    decode,
    key_text,
    malformed_record,
    missing_record,
    record_text,
    unreadable_record,
)
from collector.record import Record, format_time, from_epoch, text_or_b64
from collector.registry import (
    SOURCE_UNREADABLE_TYPE,
    CollectContext,
    Collector,
    Field,
    RecordType,
    unsupported,
)

NAME = "sessions"

LOG_DIR = "/var/log"
WTMP = "wtmp"
BTMP = "btmp"

# logrotate names: wtmp.1, wtmp.2.gz (numbered) or wtmp-20250101[.gz] (dateext).
_ROTATED = re.compile(r"(?:\.(?P<n>[0-9]+)|-(?P<date>[0-9]{8,10}))(?P<gz>\.gz)?")


def log_files(ctx: CollectContext, base: str, problems: list[Record]) -> list[str]:
    """`base` and its rotations under /var/log, oldest first: dated ones by date, then
    numbered ones from the highest number down, then `base` itself."""
    try:
        names = os.listdir(ctx.path(LOG_DIR))
    except FileNotFoundError:
        return []
    except OSError as exc:
        problems.append(unreadable_record(NAME, LOG_DIR, exc))
        names = [base] if ctx.path(f"{LOG_DIR}/{base}").exists() else []
    ranked: list[tuple[int, int, str, str]] = []
    for name in names:
        if name == base:
            ranked.append((2, 0, "", name))
            continue
        if not name.startswith(base):
            continue
        match = _ROTATED.fullmatch(name[len(base):])
        if match is None:
            continue
        if match["date"] is not None:
            ranked.append((0, 0, match["date"] + (match["gz"] or ""), name))
        else:
            ranked.append((1, -int(match["n"]), match["gz"] or "", name))
    return [f"{LOG_DIR}/{name}" for *_rank, name in sorted(ranked)]


def _text(raw: bytes) -> str | dict[str, str] | None:
    return text_or_b64(raw) if raw else None


def _ns_time(ns: int) -> str:
    """A stat `st_mtime_ns` as a record time, exact to the microsecond."""
    seconds, rest = divmod(ns, 1_000_000_000)
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return format_time(moment + dt.timedelta(microseconds=rest // 1000))


def _key(*parts: bytes | int) -> str:
    return ":".join(str(p) if isinstance(p, int) else key_text(decode(p)) for p in parts)


class _Keys:
    """Unique keys: a second `k` becomes `k#2` (two records alike to the microsecond
    are both kept: nothing is dropped to keep keys unique)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def unique(self, key: str) -> str:
        candidate, count = key, 1
        while candidate in self.used:  # a user name typed as "x#2" cannot collide either
            count += 1
            candidate = f"{key}#{count}"
        self.used.add(candidate)
        return candidate


@dataclass
class _FileSummary:
    """What was read of one file, for its `log_file` record."""

    path: str
    kind: str
    size: int
    mtime_ns: int
    entries: int = 0
    first: _utmp.UtmpEntry | None = None
    last: _utmp.UtmpEntry | None = None

    def count(self, entry: _utmp.UtmpEntry) -> None:
        self.entries += 1
        self.first = self.first or entry
        self.last = entry

    def record(self) -> Record:
        path = key_text(self.path)
        return Record(NAME, "log_file", path, {
            "path": path,
            "kind": self.kind,
            "size_bytes": self.size,
            "mtime": _ns_time(self.mtime_ns),
            "entries": self.entries,
            "first_time": None if self.first is None else self.first.time,
            "last_time": None if self.last is None else self.last.time,
        })


def _read_utmp(ctx: CollectContext, path: str, kind: str, problems: list[Record],
               files: list[Record]) -> Iterator[_utmp.UtmpEntry]:
    """The entries of one file; a truncated tail or a read error becomes a record, and
    the file, once opened, a `log_file` record (also when reading stopped early)."""
    summary: _FileSummary | None = None
    try:
        with _utmp.open_utmp(ctx.path(path)) as stream:
            info = os.fstat(stream.fileno())
            summary = _FileSummary(path, kind, info.st_size, info.st_mtime_ns)
            for entry in _utmp.read_entries(stream):
                if isinstance(entry, _utmp.Truncated):
                    problems.append(malformed_record(
                        NAME, path, entry.index,
                        f"truncated record: {entry.size} of {_utmp.RECORD_SIZE} bytes"))
                elif not _utmp.EMPTY <= entry.type <= _utmp.ACCOUNTING:
                    problems.append(malformed_record(NAME, path, entry.index,
                                                     f"unknown ut_type {entry.type}"))
                elif not 0 <= entry.usec < 1_000_000:
                    problems.append(malformed_record(NAME, path, entry.index,
                                                     "ut_tv microseconds out of range"))
                else:
                    summary.count(entry)
                    yield entry
    except FileNotFoundError:
        problems.append(missing_record(NAME, path))
    except OSError as exc:  # permission, a FIFO, a corrupt .gz (BadGzipFile)
        problems.append(unreadable_record(NAME, path, exc))
    except EOFError as exc:  # a .gz cut short
        problems.append(Record(NAME, SOURCE_UNREADABLE_TYPE, key_text(path), {
            "path": key_text(path), "reason": f"EOFError: {exc}"}))
    finally:
        if summary is not None:
            files.append(summary.record())


# --- wtmp: logins, boots ---------------------------------------------------------

@dataclass
class _Login:
    key: str
    entry: _utmp.UtmpEntry
    file: str
    logout: str | None = None
    end: str | None = None

    def close(self, by: _utmp.UtmpEntry, end: str) -> None:
        self.logout = by.time
        self.end = end

    def record(self) -> Record:
        entry = self.entry
        return Record(NAME, "login", self.key, {
            "user": text_or_b64(entry.user),
            "terminal": _text(entry.line),
            "host": _text(entry.host),
            "address": entry.address,
            "pid": entry.pid,
            "login_time": entry.time,
            "logout_time": self.logout,
            "end": self.end,
            "file": key_text(self.file),
        })


def _runlevel(entry: _utmp.UtmpEntry) -> str | None:
    """The new runlevel of a RUN_LVL entry: the low byte of `ut_pid`, if printable."""
    level = entry.pid & 0xFF
    return chr(level) if 0x21 <= level < 0x7F else None


@dataclass
class _History:
    """Logins and boots in wtmp order, with sessions still open by terminal."""

    events: list[Record | _Login] = field(default_factory=list)
    open_by_line: dict[bytes, _Login] = field(default_factory=dict)
    latest: dict[bytes, _utmp.UtmpEntry] = field(default_factory=dict)
    login_keys: _Keys = field(default_factory=_Keys)
    boot_keys: _Keys = field(default_factory=_Keys)

    def add(self, entry: _utmp.UtmpEntry, path: str) -> None:
        if entry.type == _utmp.USER_PROCESS:
            self._login(entry, path)
        elif entry.type == _utmp.DEAD_PROCESS:
            login = self.open_by_line.pop(entry.line, None)
            if login is not None:  # else its login is older than the oldest file kept
                login.close(entry, "logout")
        elif entry.type == _utmp.BOOT_TIME:
            self._boot(entry, path, "reboot", None)
            self._close_all(entry, "crash")  # still open at a boot: no logout, no shutdown
        elif entry.type == _utmp.RUN_LVL:
            level = _runlevel(entry)
            named = entry.user == b"shutdown"
            self._boot(entry, path, "shutdown" if named else "runlevel", level)
            if named or level in ("0", "6"):  # halt or reboot begins, as `last` reads it
                self._close_all(entry, "shutdown")

    def _login(self, entry: _utmp.UtmpEntry, path: str) -> None:
        superseded = self.open_by_line.pop(entry.line, None)
        if superseded is not None:
            superseded.close(entry, "superseded")
        login = _Login(self.login_keys.unique(_key(entry.line, entry.epoch_usec, entry.user)),
                       entry, path)
        self.events.append(login)
        if entry.line:  # as `last`: an entry without a terminal pairs with nothing
            self.open_by_line[entry.line] = login
        if entry.user:
            previous = self.latest.get(entry.user)
            if previous is None or entry.epoch_usec >= previous.epoch_usec:
                self.latest[entry.user] = entry

    def _close_all(self, entry: _utmp.UtmpEntry, end: str) -> None:
        for login in self.open_by_line.values():
            login.close(entry, end)
        self.open_by_line.clear()

    def _boot(self, entry: _utmp.UtmpEntry, path: str, event: str,
              runlevel: str | None) -> None:
        key = self.boot_keys.unique(f"{event}:{entry.epoch_usec}")
        self.events.append(Record(NAME, "boot", key, {
            "event": event,
            "time": entry.time,
            "kernel": _text(entry.host) if entry.type == _utmp.BOOT_TIME else None,
            "runlevel": runlevel,
            "file": key_text(path),
        }))

    def records(self) -> Iterator[Record]:
        for event in self.events:
            yield event.record() if isinstance(event, _Login) else event

    def last_logins(self) -> Iterator[Record]:
        keys = _Keys()
        for user in sorted(self.latest):
            entry = self.latest[user]
            yield Record(NAME, "last_login", keys.unique(key_text(decode(user))), {
                "user": text_or_b64(user),
                "time": entry.time,
                "terminal": _text(entry.line),
                "host": _text(entry.host),
                "address": entry.address,
            })


def _history(ctx: CollectContext, problems: list[Record],
             files: list[Record]) -> _History | None:
    """wtmp and rotations read oldest first; None when there is no wtmp at all."""
    paths = log_files(ctx, WTMP, problems)
    if not paths:
        problems.append(unsupported(NAME, f"{LOG_DIR}/{WTMP}", "file absent"))
        return None
    history = _History()
    for path in paths:
        for entry in _read_utmp(ctx, path, WTMP, problems, files):
            history.add(entry, path)
    return history


# --- btmp: failed logins ---------------------------------------------------------

def _failed_logins(ctx: CollectContext, problems: list[Record],
                   files: list[Record]) -> Iterator[Record]:
    paths = log_files(ctx, BTMP, problems)
    if not paths:
        problems.append(unsupported(NAME, f"{LOG_DIR}/{BTMP}", "file absent"))
        return
    keys = _Keys()
    for path in paths:
        for entry in _read_utmp(ctx, path, BTMP, problems, files):
            if entry.type == _utmp.EMPTY:
                continue
            yield Record(NAME, "failed_login",
                         keys.unique(_key(entry.line, entry.epoch_usec, entry.user)), {
                "user": text_or_b64(entry.user),
                "terminal": _text(entry.line),
                "host": _text(entry.host),
                "address": entry.address,
                "pid": entry.pid,
                "time": entry.time,
                "file": key_text(path),
            })


# --- live sessions ---------------------------------------------------------------

def _live_sessions(problems: list[Record]) -> list[Record]:
    try:
        users = psutil.users()
    except (OSError, psutil.Error) as exc:
        problems.append(unsupported(NAME, "psutil.users", f"{type(exc).__name__}: {exc}"))
        return []
    keys = _Keys()
    records = []
    for user in sorted(users, key=lambda u: (u.started, u.terminal or "", u.name)):
        started_usec = round(user.started * 1_000_000)
        records.append(Record(NAME, "session", keys.unique(
            f"{key_text(user.terminal or '')}:{started_usec}:{key_text(user.name)}"), {
                "user": record_text(user.name),
                "terminal": record_text(user.terminal) if user.terminal else None,
                "host": record_text(user.host) if user.host else None,
                "started": from_epoch(user.started),
                "pid": getattr(user, "pid", None),
            }))
    return records


def collect(ctx: CollectContext) -> Iterator[Record]:
    problems: list[Record] = []
    sessions = _live_sessions(problems) if ctx.is_live else []
    if ctx.is_live and not sys.platform.startswith("linux"):
        for base in (WTMP, BTMP):
            problems.append(unsupported(NAME, f"{LOG_DIR}/{base}",
                                        "utmp-format logs are read on Linux only"))
        yield from problems
        yield from sessions
        return
    files: list[Record] = []
    history = _history(ctx, problems, files)
    failed = list(_failed_logins(ctx, problems, files))
    yield from problems
    yield from sessions
    yield from files
    if history is not None:
        yield from history.records()
    yield from failed
    if history is not None:
        yield from history.last_logins()


_NONE = type(None)
_TEXT = (str, dict)  # dict: {"b64": ...} for bytes that are not UTF-8
_FILE = Field((str,), "the wtmp or btmp file (as on the host) the entry was read from")
_ADDRESS = Field((str, _NONE), "`ut_addr_v6` as an IPv4 or IPv6 address; null when zero",
                 personal=True)

COLLECTOR = Collector(
    name=NAME,
    version="1",
    description="Logins: sessions open now (psutil, live only), login history and "
                "boots from /var/log/wtmp, failed logins from /var/log/btmp (both with "
                "their rotations, `.gz` included; Linux utmp format, this machine's byte "
                "order), and the last login of each user.",
    platforms=("linux", "darwin", "win32"),
    record_types={
        "log_file": RecordType(
            doc="A wtmp or btmp file that was read (an emptied or shrunken login log shows "
                "here), with how many entries it held, in reading order.",
            key="the path",
            fields={
                "path": Field((str,), "absolute path as on the host"),
                "kind": Field((str,), "`wtmp` or `btmp`"),
                "size_bytes": Field((int,), "file size (compressed size for `.gz`)"),
                "mtime": Field((str,), "last modification (RFC 3339 UTC)"),
                "entries": Field((int,), "well-formed entries read (malformed ones are "
                                         "`malformed_line` records)"),
                "first_time": Field((str, _NONE), "time of the first entry; null when none"),
                "last_time": Field((str, _NONE), "time of the last entry; null when none"),
            },
        ),
        "session": RecordType(
            doc="A user session open now, from `psutil.users()`. Live only: absent when "
                "the root is not `/`.",
            key="`<terminal>:<start epoch microseconds>:<user>` (`#2`, `#3` appended to a "
                "repeated key)",
            fields={
                "user": Field(_TEXT, "user name", personal=True),
                "terminal": Field((*_TEXT, _NONE), "tty or pseudo-tty; null when none"),
                "host": Field((*_TEXT, _NONE), "remote host name or address; null when "
                                               "local", personal=True),
                "started": Field((str,), "session start (RFC 3339 UTC)"),
                "pid": Field((int, _NONE), "the session's process id; null where psutil "
                                           "does not tell (Windows)"),
            },
        ),
        "login": RecordType(
            event=True,
            doc="A USER_PROCESS entry of wtmp: one login, paired with what ended it, in "
                "wtmp order (oldest rotation first; a login in wtmp.1 is ended by its "
                "logout in wtmp). As `last` pairs them: a DEAD_PROCESS or a new login on "
                "the same terminal ends it; a shutdown (RUN_LVL by user `shutdown`, or to "
                "runlevel 0 or 6) ends every open session; a boot ends those still open "
                "(a crash).",
            key="`<terminal>:<login epoch microseconds>:<user>` (`#2`, `#3` appended to a "
                "repeated key)",
            fields={
                "user": Field(_TEXT, "user name as logged", personal=True),
                "terminal": Field((*_TEXT, _NONE), "`ut_line` (tty, `pts/0`, `ssh:notty`)"),
                "host": Field((*_TEXT, _NONE), "`ut_host`: remote host or address; null "
                                               "when empty", personal=True),
                "address": _ADDRESS,
                "pid": Field((int,), "`ut_pid` of the login process"),
                "login_time": Field((str,), "login time (RFC 3339 UTC, microseconds)"),
                "logout_time": Field((str, _NONE), "time of the entry that ended the "
                                                   "session (see `end`); null when none "
                                                   "did"),
                "end": Field((str, _NONE), "what ended it: `logout` (DEAD_PROCESS), "
                                           "`superseded` (a later login on the terminal "
                                           "with no logout between), `shutdown`, `crash` "
                                           "(a boot with no logout or shutdown before "
                                           "it); null when no later entry ends it (still "
                                           "logged in, or its logout was not recorded)"),
                "file": _FILE,
            },
        ),
        "boot": RecordType(
            event=True,
            doc="A BOOT_TIME or RUN_LVL entry of wtmp: a reboot, a shutdown or a runlevel "
                "change, in wtmp order.",
            key="`<event>:<epoch microseconds>` (`#2`, `#3` appended to a repeated key)",
            fields={
                "event": Field((str,), "`reboot` (BOOT_TIME), `shutdown` (RUN_LVL by user "
                                       "`shutdown`) or `runlevel` (another RUN_LVL; to "
                                       "runlevel 0 or 6 it also ends open sessions)"),
                "time": Field((str,), "when (RFC 3339 UTC, microseconds)"),
                "kernel": Field((*_TEXT, _NONE), "for a reboot: the kernel release logged "
                                                 "in `ut_host`; else null"),
                "runlevel": Field((str, _NONE), "for RUN_LVL: the new runlevel (low byte of "
                                                "`ut_pid`) when printable; else null"),
                "file": _FILE,
            },
        ),
        "failed_login": RecordType(
            event=True,
            doc="An entry of btmp (any type but EMPTY, as `lastb` lists them): a failed "
                "login. btmp is usually readable by root only: else `source_unreadable`.",
            key="`<terminal>:<epoch microseconds>:<user>` (`#2`, `#3` appended to a "
                "repeated key)",
            fields={
                "user": Field(_TEXT, "the user name as typed (may be no real account)",
                              personal=True),
                "terminal": Field((*_TEXT, _NONE), "`ut_line`"),
                "host": Field((*_TEXT, _NONE), "`ut_host`: where the attempt came from",
                              personal=True),
                "address": _ADDRESS,
                "pid": Field((int,), "`ut_pid` of the process that logged it"),
                "time": Field((str,), "when (RFC 3339 UTC, microseconds)"),
                "file": _FILE,
            },
        ),
        "last_login": RecordType(
            doc="Per user name: the latest login across wtmp and its rotations (a later "
                "entry wins a tie). Sorted by user name (bytes).",
            key="the user name (bytes that are not UTF-8 as `\\xNN`)",
            fields={
                "user": Field(_TEXT, "user name", personal=True),
                "time": Field((str,), "login time (RFC 3339 UTC, microseconds)"),
                "terminal": Field((*_TEXT, _NONE), "`ut_line` of that login"),
                "host": Field((*_TEXT, _NONE), "`ut_host` of that login", personal=True),
                "address": _ADDRESS,
            },
        ),
    },
    collect=collect,
)
