"""The `sessions` collector against generated wtmp/btmp trees (exact records), against
util-linux's own readers (`utmpdump`, `last`), and on this machine.

The binary fixtures are built here with `collector._utmp.pack` (glibc's 384-byte
`struct utmp` in this machine's byte order) so they match the reader on any
architecture; `test_pack_matches_utmpdump` checks that layout against util-linux.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from collector import _utmp
from collector._utmp import BOOT_TIME, DEAD_PROCESS, LOGIN_PROCESS, RUN_LVL, USER_PROCESS
from collector.registry import CollectContext, run_collector
from collector.sessions import COLLECTOR
from tests.collector.test_contract import expected_status

Triple = tuple[str, str, dict[str, Any]]
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
MTIME_NS = 1_700_100_000_123_456_789
UTC_ENV = {**os.environ, "TZ": "UTC", "LC_ALL": "C"}


def at(offset: int, usec: int = 0) -> str:
    """The record time of T0 + offset seconds."""
    moment = dt.datetime.fromtimestamp(T0 + offset, dt.UTC) + dt.timedelta(microseconds=usec)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def usec(offset: int, micro: int = 0) -> int:
    return (T0 + offset) * 1_000_000 + micro


def ip4(text: str) -> bytes:
    return bytes(int(p) for p in text.split("."))


def rec(ut_type: int, offset: int, *, micro: int = 0, **fields: Any) -> bytes:
    return _utmp.pack(ut_type, sec=T0 + offset, usec=micro, **fields)


def b64(raw: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(raw).decode()}


# wtmp.2.gz (oldest), wtmp.1, wtmp: logins, logouts (one across files), a superseded
# session, a shutdown, two boots (one a crash), a bad type and a truncated tail.
WTMP_2 = (rec(USER_PROCESS, -1000, pid=900, line=b"pts/9", user=b"alice", host=b"old.example")
          + rec(DEAD_PROCESS, -900, pid=900, line=b"pts/9"))
WTMP_1 = (
    rec(BOOT_TIME, 0, line=b"~", user=b"reboot", host=b"6.1.0-18-amd64")
    + rec(RUN_LVL, 5, pid=ord("5") + 256 * ord("N"), line=b"~", user=b"runlevel",
          host=b"6.1.0-18-amd64")
    + rec(LOGIN_PROCESS, 10, pid=999, line=b"tty1", user=b"LOGIN")
    + rec(USER_PROCESS, 100, micro=123456, pid=1000, line=b"tty1", ut_id=b"tty1",
          user=b"alice")
    + rec(USER_PROCESS, 200, micro=500000, pid=2000, line=b"pts/0", ut_id=b"ts/0",
          user=b"bob", host=b"10.0.0.5", addr=ip4("10.0.0.5"))
    + rec(DEAD_PROCESS, 300, pid=1000, line=b"tty1", ut_id=b"tty1")
    + rec(USER_PROCESS, 400, pid=3000, line=b"pts/1", user=b"carol",
          host=b"h\xf6st.example", addr=bytes.fromhex("20010db8000000000000000000000001"))
)
WTMP = (
    rec(DEAD_PROCESS, 1000, pid=2000, line=b"pts/0")  # bob, logged in in wtmp.1
    + rec(USER_PROCESS, 2000, pid=4000, line=b"pts/2", user=b"alice",
          host=b"jump.bank.example", addr=ip4("10.1.2.3"))
    + rec(RUN_LVL, 3000, line=b"~~", user=b"shutdown", host=b"6.1.0-18-amd64")
    + rec(BOOT_TIME, 3100, line=b"~", user=b"reboot", host=b"6.1.0-20-amd64")
    + rec(USER_PROCESS, 4000, pid=5000, line=b"pts/0", user=b"dave")
    + rec(USER_PROCESS, 4100, pid=5100, line=b"pts/0", user=b"erin")  # dave: no logout
    + rec(USER_PROCESS, 5000, pid=6000, line=b"tty2", user=b"alice")
    + rec(BOOT_TIME, 6000, line=b"~", user=b"reboot", host=b"6.1.0-20-amd64")  # crash
    + rec(USER_PROCESS, 7000, pid=7000, line=b"pts/3", user=b"bob", host=b"10.0.0.5",
          addr=ip4("10.0.0.5"))  # still logged in
    + rec(42, 7100, line=b"pts/4", user=b"mallory")  # no such ut_type
    + rec(USER_PROCESS, 7200, pid=7200, line=b"pts/5", user=b"zed")[:100]  # cut short
)
BTMP_1 = rec(LOGIN_PROCESS, -5000, pid=10, line=b"ssh:notty", user=b"oracle",
             host=b"198.51.100.7", addr=ip4("198.51.100.7"))
BTMP = (
    rec(LOGIN_PROCESS, 500, pid=11, line=b"ssh:notty", user=b"admin", host=b"203.0.113.9",
        addr=ip4("203.0.113.9"))
    + rec(LOGIN_PROCESS, 501, pid=12, line=b"ssh:notty", user=b"r\xf6\xf6t",
          host=b"203.0.113.9", addr=ip4("203.0.113.9"))
    + _utmp.pack(0)  # EMPTY: skipped
    + rec(LOGIN_PROCESS, 500, pid=13, line=b"ssh:notty", user=b"admin",
          host=b"203.0.113.9", addr=ip4("203.0.113.9"))  # same key again: kept as #2
)


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    log = root / "var" / "log"
    log.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = log / name
        path.write_bytes(gzip.compress(data, mtime=0) if name.endswith(".gz") else data)
        os.utime(path, ns=(MTIME_NS, MTIME_NS))
    return root


FILES = {"wtmp.2.gz": WTMP_2, "wtmp.1": WTMP_1, "wtmp": WTMP, "btmp.1": BTMP_1,
         "btmp": BTMP, "wtmp.bak": b"ignored: not a rotation name"}


def run(root: Path) -> list[Triple]:
    result = run_collector(COLLECTOR, CollectContext(root=root))
    assert result.status == expected_status(result.records), result.error
    return [(r.type, r.key, r.data) for r in result.records]


def log_file(root: Path, name: str, kind: str, entries: int, first: str | None,
             last: str | None) -> Triple:
    path = f"/var/log/{name}"
    return ("log_file", path, {
        "path": path, "kind": kind, "size_bytes": (root / path.lstrip("/")).stat().st_size,
        "mtime": "2023-11-16T02:00:00.123456Z", "entries": entries, "first_time": first,
        "last_time": last})


def login(terminal: str, offset: int, user: str, *, micro: int = 0, pid: int,
          host: Any = None, address: str | None = None, logout: str | None = None,
          end: str | None = None, file: str = "/var/log/wtmp") -> Triple:
    return ("login", f"{terminal}:{usec(offset, micro)}:{user}", {
        "user": user, "terminal": terminal, "host": host, "address": address, "pid": pid,
        "login_time": at(offset, micro), "logout_time": logout, "end": end, "file": file})


def boot(event: str, offset: int, *, kernel: str | None = None, runlevel: str | None = None,
         file: str = "/var/log/wtmp") -> Triple:
    return ("boot", f"{event}:{usec(offset)}", {
        "event": event, "time": at(offset), "kernel": kernel, "runlevel": runlevel,
        "file": file})


def failed(key_user: str, user: Any, offset: int, pid: int, host: str, *,
           suffix: str = "", file: str = "/var/log/btmp") -> Triple:
    return ("failed_login", f"ssh:notty:{usec(offset)}:{key_user}{suffix}", {
        "user": user, "terminal": "ssh:notty", "host": host, "address": host, "pid": pid,
        "time": at(offset), "file": file})


def last_login(user: str, offset: int, terminal: str, host: Any = None,
               address: str | None = None) -> Triple:
    return ("last_login", user, {"user": user, "time": at(offset), "terminal": terminal,
                                 "host": host, "address": address})


def test_fixture_exact(tmp_path: Path) -> None:
    root = make_tree(tmp_path, FILES)
    w1 = "/var/log/wtmp.1"
    carol_host = b64(b"h\xf6st.example")
    assert run(root) == [
        ("malformed_line", "/var/log/wtmp:10",
         {"file": "/var/log/wtmp", "line": 10, "reason": "unknown ut_type 42"}),
        ("malformed_line", "/var/log/wtmp:11",
         {"file": "/var/log/wtmp", "line": 11, "reason": "truncated record: 100 of 384 bytes"}),
        log_file(root, "wtmp.2.gz", "wtmp", 2, at(-1000), at(-900)),
        log_file(root, "wtmp.1", "wtmp", 7, at(0), at(400)),
        log_file(root, "wtmp", "wtmp", 9, at(1000), at(7000)),
        log_file(root, "btmp.1", "btmp", 1, at(-5000), at(-5000)),
        log_file(root, "btmp", "btmp", 4, at(500), at(500)),
        login("pts/9", -1000, "alice", pid=900, host="old.example", logout=at(-900),
              end="logout", file="/var/log/wtmp.2.gz"),
        boot("reboot", 0, kernel="6.1.0-18-amd64", file=w1),
        boot("runlevel", 5, runlevel="5", file=w1),
        login("tty1", 100, "alice", micro=123456, pid=1000, logout=at(300), end="logout",
              file=w1),
        login("pts/0", 200, "bob", micro=500000, pid=2000, host="10.0.0.5",
              address="10.0.0.5", logout=at(1000), end="logout", file=w1),
        login("pts/1", 400, "carol", pid=3000, host=carol_host, address="2001:db8::1",
              logout=at(3000), end="shutdown", file=w1),
        login("pts/2", 2000, "alice", pid=4000, host="jump.bank.example",
              address="10.1.2.3", logout=at(3000), end="shutdown"),
        boot("shutdown", 3000),
        boot("reboot", 3100, kernel="6.1.0-20-amd64"),
        login("pts/0", 4000, "dave", pid=5000, logout=at(4100), end="superseded"),
        login("pts/0", 4100, "erin", pid=5100, logout=at(6000), end="crash"),
        login("tty2", 5000, "alice", pid=6000, logout=at(6000), end="crash"),
        boot("reboot", 6000, kernel="6.1.0-20-amd64"),
        login("pts/3", 7000, "bob", pid=7000, host="10.0.0.5", address="10.0.0.5"),
        failed("oracle", "oracle", -5000, 10, "198.51.100.7", file="/var/log/btmp.1"),
        failed("admin", "admin", 500, 11, "203.0.113.9"),
        failed("r\\xf6\\xf6t", b64(b"r\xf6\xf6t"), 501, 12, "203.0.113.9"),
        failed("admin", "admin", 500, 13, "203.0.113.9", suffix="#2"),
        last_login("alice", 5000, "tty2"),
        last_login("bob", 7000, "pts/3", "10.0.0.5", "10.0.0.5"),
        last_login("carol", 400, "pts/1", carol_host, "2001:db8::1"),
        last_login("dave", 4000, "pts/0"),
        last_login("erin", 4100, "pts/0"),
    ]


def test_no_login_logs_is_unsupported(tmp_path: Path) -> None:
    assert run(tmp_path) == [
        ("unsupported", "sessions:/var/log/wtmp",
         {"platform": sys.platform, "source": "/var/log/wtmp", "reason": "file absent"}),
        ("unsupported", "sessions:/var/log/btmp",
         {"platform": sys.platform, "source": "/var/log/btmp", "reason": "file absent"}),
    ]


def test_rotation_order(tmp_path: Path) -> None:
    names = ["wtmp", "wtmp.1", "wtmp.10.gz", "wtmp.2.gz", "wtmp-20240101", "wtmp-20231201.gz",
             "wtmpx", "wtmp.1.old", "btmp"]
    for name in names:
        (tmp_path / "var" / "log").mkdir(parents=True, exist_ok=True)
        (tmp_path / "var" / "log" / name).write_bytes(b"")
    files = [key for kind, key, data in run(tmp_path)
             if kind == "log_file" and data["kind"] == "wtmp"]
    assert files == ["/var/log/wtmp-20231201.gz", "/var/log/wtmp-20240101",
                     "/var/log/wtmp.10.gz", "/var/log/wtmp.2.gz", "/var/log/wtmp.1",
                     "/var/log/wtmp"]


def test_bad_files_are_records_not_crashes(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"wtmp": WTMP_2})
    log = root / "var" / "log"
    (log / "wtmp.1.gz").write_bytes(b"not gzip at all")
    (log / "wtmp.2.gz").write_bytes(gzip.compress(WTMP_1)[:200])  # cut short
    os.mkfifo(log / "btmp")  # a FIFO is never opened for reading (it would hang)
    result: list[list[Triple]] = []
    worker = threading.Thread(target=lambda: result.append(run(root)))
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "reading a FIFO hung"
    records = result[0]
    problems = {key: data for kind, key, data in records
                if kind in ("source_unreadable", "malformed_line")}
    assert problems == {
        "/var/log/wtmp.2.gz": {"path": "/var/log/wtmp.2.gz", "reason":
                               "EOFError: Compressed file ended before the end-of-stream "
                               "marker was reached"},
        "/var/log/wtmp.1.gz": {"path": "/var/log/wtmp.1.gz",
                               "reason": "BadGzipFile: Not a gzipped file (b'no')"},
        "/var/log/btmp": {"path": "/var/log/btmp", "reason": "NotRegularFile: not a regular file"},
    }
    # what was read before the gzip stream broke is kept; the current wtmp still counts
    kinds = [(kind, key) for kind, key, _data in records if kind in ("login", "boot")]
    assert ("boot", f"reboot:{usec(0)}") in kinds
    assert ("login", f"pts/9:{usec(-1000)}:alice") in kinds
    assert not [r for r in records if r[0] == "collector_error"]


class CountingStream:
    """A file-like object that remembers how much each read asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.sizes: list[int] = []

    def read(self, size: int = -1) -> bytes:
        self.sizes.append(size)
        chunk = self.data[self.pos:self.pos + size]
        self.pos += len(chunk)
        return chunk


def test_reader_streams_in_bounded_chunks() -> None:
    entry = rec(USER_PROCESS, 1, pid=1, line=b"pts/0", user=b"u")
    stream = CountingStream(entry * 8000 + b"x" * 7)  # ~3 MiB and a partial tail
    entries = list(_utmp.read_entries(stream))  # type: ignore[arg-type]
    assert len(entries) == 8001 and entries[-1] == _utmp.Truncated(8001, 7)
    assert all(0 < size <= 1 << 20 for size in stream.sizes)
    assert len(stream.sizes) >= 3


@pytest.mark.skipif(shutil.which("utmpdump") is None, reason="utmpdump not installed")
def test_pack_matches_utmpdump(tmp_path: Path) -> None:
    """Our layout is util-linux's: utmpdump reads back every field we wrote."""
    path = tmp_path / "wtmp"
    path.write_bytes(WTMP_1)
    out = subprocess.run(["utmpdump", str(path)], capture_output=True, text=True,
                         errors="replace", timeout=30, check=True, env=UTC_ENV).stdout
    rows = [[f.strip() for f in re.findall(r"\[([^\]]*)\]", line)]
            for line in out.splitlines() if line.startswith("[")]
    with _utmp.open_utmp(path) as stream:
        ours = [e for e in _utmp.read_entries(stream) if isinstance(e, _utmp.UtmpEntry)]
    assert len(rows) == len(ours) == 7
    for row, entry in zip(rows, ours, strict=True):
        assert int(row[0]) == entry.type and int(row[1]) == entry.pid
        assert row[2] == entry.id.decode() and row[3] == entry.user.decode()
        assert row[4] == entry.line.decode()
        if entry.host.isascii():
            assert row[5] == entry.host.decode()
        assert row[6] == (entry.address or "0.0.0.0")
        assert row[7] == entry.time.replace(".", ",").replace("Z", "+00:00")


@pytest.mark.skipif(shutil.which("last") is None, reason="last (util-linux) not installed")
def test_pairing_matches_last(tmp_path: Path) -> None:
    """Logins, ends and logout times as `last` pairs them, on one file (still-open
    sessions left out: `last` asks the live system whether their pid still runs)."""
    path = tmp_path / "var" / "log" / "wtmp"
    make_tree(tmp_path, {"wtmp": WTMP_1 + WTMP[:9 * _utmp.RECORD_SIZE]})
    out = subprocess.run(["last", "-f", str(path), "-R", "-w", "-x", "--time-format", "iso"],
                         capture_output=True, text=True, errors="replace", timeout=30,
                         check=True, env=UTC_ENV).stdout
    theirs = set()
    for line in out.splitlines():
        match = re.match(r"(\S+)\s+(\S+)\s+(\S+T\S+)\s+- (\S+)", line)
        if match and match[1] not in ("reboot", "shutdown", "runlevel"):
            end = match[4]
            theirs.add((match[1], match[2], match[3][:19],
                        end[:19] if "T" in end else end))
    ours = set()
    ends = {"crash": "crash", "shutdown": "down"}
    for kind, _key, data in run(tmp_path):
        if kind == "login" and data["end"] is not None:
            end = ends.get(data["end"], data["logout_time"][:19])
            ours.add((data["user"], data["terminal"], data["login_time"][:19], end))
    assert len(ours) == 7
    assert ours == theirs


def test_live_sessions() -> None:
    result = run_collector(COLLECTOR, CollectContext())
    assert result.status == expected_status(result.records), result.error
    records = [(r.type, r.key, r.data) for r in result.records]
    assert not [r for r in records if r[0] == "collector_error"]
    if not Path("/var/log/wtmp").exists():
        assert ("unsupported", "sessions:/var/log/wtmp") in [(t, k) for t, k, _ in records]
    else:
        wtmp = [d for t, k, d in records if t == "log_file" and k == "/var/log/wtmp"]
        size = Path("/var/log/wtmp").stat().st_size
        assert wtmp and wtmp[0]["size_bytes"] == size
        assert wtmp[0]["entries"] <= size // _utmp.RECORD_SIZE
    for kind, _key, data in records:
        if kind == "session":
            assert data["user"] and data["started"].endswith("Z")
