"""The `logs` collector: exact records per format, scrubbing, bad input, and offsets
that survive reruns and rotation (rename + create, copytruncate) without repeating
or skipping a line. Checkpoints are carried from run to run as the agent does."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import resource
import shutil
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from collector._logformats import (
    ACCESS_FIELDS,
    LineContext,
    Malformed,
    json_text,
    json_time,
    parse_auth,
    parse_json_line,
    parse_nginx,
)
from collector.logs import COLLECTOR, LINE_MAX, RECORD_TYPES
from collector.registry import CollectContext, run_collector
from tests.collector.test_contract import expected_status

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "rootfs" / "logs"
# The fixture files' mtime: 2 January 2027, so "Dec 31" lines are 2026 and "Jan 1" 2027.
MTIME = dt.datetime(2027, 1, 2, tzinfo=dt.UTC).timestamp()
AUTH = "/var/log/auth.log"
SECURE = "/var/log/secure"
NGINX = "/var/log/nginx/ai-gateway.log"
JSONL = "/var/log/ai-gateway.jsonl"
SOURCES = [
    {"path": AUTH, "format": "auth", "kind": ""},
    {"path": SECURE, "format": "auth", "kind": ""},
    {"path": NGINX, "format": "nginx-combined", "kind": "ai_gateway"},
    {"path": JSONL, "format": "json-lines", "kind": "ai_gateway"},
]
PROMPT_SHA = "cf07194ee232eb531e15f690000d19846dea69cf05504782658afcfacb9228a2"
RESPONSE_SHA = "a9f4b3d22a523fdada41c85c175425bcd15b32b4cd0f54d9433accd52d7195a1"
SECRETS = ("Hunter2Secret", "abc.def.ghijklmnop", "s3cr3tValue",
           "sk-abcdefghijklmnopqrstuvwxyz", "abc123opaque", "opaque",
           "customer 4242 balance inquiry", "Hunter2 prompt text")

Triple = tuple[str, str, dict[str, Any]]


def collect(root: Path, sources: list[dict[str, str]], checkpoints: dict[str, Any] | None = None,
            **options: Any) -> tuple[list[Triple], dict[str, Any]]:
    ctx = CollectContext(root=root, options={"logs": {"sources": sources, **options}},
                         checkpoints=checkpoints or {})
    result = run_collector(COLLECTOR, ctx)
    assert result.status == expected_status(result.records), result.error
    return [(r.type, r.key, r.data) for r in result.records], ctx.new_checkpoints


def fixture_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(ASSETS, root)
    for path in (root / "var").rglob("*"):
        if path.is_file():
            os.utime(path, (MTIME, MTIME))
    return root


class FixtureLines:
    """Offsets and bytes of a fixture file's lines, to state expected records."""

    def __init__(self, root: Path, path: str) -> None:
        self.root, self.path = root, path
        self.lines = (root / path.lstrip("/")).read_bytes().split(b"\n")[:-1]

    def offset(self, number: int) -> int:
        return sum(len(line) + 1 for line in self.lines[:number - 1])

    def access(self, number: int, raw: str | bool | None = True, **fields: Any) -> Triple:
        line = self.lines[number - 1]
        if raw is True:
            raw = line.decode()
        data = {"log": self.path, "file": self.path, "line": number,
                "line_offset": self.offset(number), **dict.fromkeys(ACCESS_FIELDS),
                **fields, "raw": raw or None, "raw_truncated": False,
                "raw_sha256": None if raw and "[REDACTED:" in raw
                else hashlib.sha256(line).hexdigest()}
        return ("access", f"{self.path}:{number}", data)

    def source(self, fmt: str, kind: str, *, records: int, malformed: int = 0,
               skipped: int = 0) -> Triple:
        st = (self.root / self.path.lstrip("/")).stat()
        size = st.st_size
        return ("log_source", self.path, {
            "path": self.path, "format": fmt, "kind": kind, "device": str(st.st_dev),
            "inode": str(st.st_ino), "size": size, "start_offset": 0, "end_offset": size,
            "lines_read": len(self.lines), "records": records, "malformed": malformed,
            "skipped": skipped, "gaps": 0, "rotated_from": []})


def malformed(file: str, line: int, reason: str) -> Triple:
    return ("malformed_line", f"{file}:{line}", {"file": file, "line": line, "reason": reason})


def expected_fixture_records(root: Path) -> list[Triple]:
    auth, secure = FixtureLines(root, AUTH), FixtureLines(root, SECURE)
    nginx, jsonl = FixtureLines(root, NGINX), FixtureLines(root, JSONL)
    ssh = {"program": "sshd"}
    sudo_cmd = ("Jan  1 00:00:05 web-01 sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; "
                "USER=root ; COMMAND=/usr/bin/mysql -uroot -p[REDACTED:argument] -e select 1")
    curl_cmd = ("/usr/bin/curl -H Authorization: Bearer [REDACTED:authorization] "
                "https://api.example.com/v1")
    return [
        # auth.log, /etc/localtime is Asia/Seoul (UTC+9); the year comes from the mtime
        auth.access(1, time="2026-12-31T14:59:58.000000Z", account="alice",
                    source="10.0.0.5", source_port=52144, action="ssh_login",
                    auth_method="publickey", pid=1201, **ssh),
        auth.access(2, time="2026-12-31T14:59:59.000000Z", account="alice",
                    action="session_open", pid=1201, **ssh),
        auth.access(3, raw=sudo_cmd, time="2026-12-31T15:00:05.000000Z", account="alice",
                    source="pts/0", action="sudo", target_account="root",
                    command="/usr/bin/mysql -uroot -p[REDACTED:argument] -e select 1",
                    program="sudo"),
        auth.access(4, time="2026-12-31T15:00:05.000000Z", account="alice",
                    target_account="root", action="session_open", program="sudo"),
        auth.access(5, raw="Jan  1 00:00:06 web-01 sudo:    alice : TTY=pts/0 ; "
                           "PWD=/home/alice ; USER=root ; COMMAND=" + curl_cmd,
                    time="2026-12-31T15:00:06.000000Z", account="alice", source="pts/0",
                    action="sudo", target_account="root", command=curl_cmd, program="sudo"),
        # line 6: a cron session, not access
        auth.access(7, time="2026-12-31T15:02:00.000000Z", account="bob", source="pts/1",
                    action="sudo_failed", target_account="root", attempts=3,
                    command="/bin/bash", program="sudo"),
        auth.access(8, time="2026-12-31T15:02:30.000000Z", account="mallory",
                    source="pts/2", action="sudo_denied", target_account="root",
                    command="/usr/bin/id", program="sudo"),
        auth.access(9, time="2026-12-31T15:03:00.000000Z", account="alice", source="pts/0",
                    action="su", target_account="root", program="su", pid=3001),
        auth.access(10, time="2026-12-31T15:03:10.000000Z", account="bob", source="pts/1",
                    action="su_failed", target_account="root", program="su", pid=3002),
        auth.access(11, time="2026-12-31T15:04:00.000000Z", account="admin",
                    source="203.0.113.9", source_port=40022, action="ssh_invalid_user",
                    pid=4001, **ssh),
        auth.access(12, time="2026-12-31T15:04:02.000000Z", account="admin",
                    source="203.0.113.9", source_port=40022, action="ssh_login_failed",
                    auth_method="password", pid=4001, **ssh),
        auth.access(13, time="2026-12-31T15:04:10.000000Z", account="root",
                    source="203.0.113.9", source_port=40030, action="ssh_login_failed",
                    auth_method="password", pid=4002, **ssh),
        auth.access(14, time="2026-12-31T15:05:00.000000Z", account="alice",
                    source="10.0.0.5", source_port=52144, action="ssh_disconnect",
                    pid=1201, **ssh),
        auth.access(15, time="2026-12-31T15:05:00.000000Z", account="alice",
                    action="session_close", pid=1201, **ssh),
        malformed(AUTH, 16, "not a syslog line"),
        # line 17: systemd-logind, not access
        auth.source("auth", "", records=14, malformed=1, skipped=2),
        # secure: RFC 3339 stamps, OpenSSH 9.8's sshd-session
        secure.access(1, time="2026-11-24T21:00:01.123456Z", account="dba",
                      source="192.0.2.10", source_port=50500, action="ssh_login",
                      auth_method="password", program="sshd-session", pid=812),
        secure.access(2, time="2026-11-24T21:00:09.500000Z", account="dba",
                      target_account="postgres", action="session_open", program="su"),
        secure.access(3, raw="2026-11-25T06:01:00Z db-01 sudo[900]:      dba : TTY=pts/3 ; "
                             "PWD=/var/lib/pgsql ; USER=postgres ; COMMAND=/usr/bin/psql "
                             "--password [REDACTED:argument] -c select 1",
                      time="2026-11-25T06:01:00.000000Z", account="dba", source="pts/3",
                      action="sudo", target_account="postgres",
                      command="/usr/bin/psql --password [REDACTED:argument] -c select 1",
                      program="sudo", pid=900),
        secure.source("auth", "", records=3),
        # nginx combined with the gateway's key=value extras
        nginx.access(1, raw=nginx.lines[0].decode().replace(
                         "?api_key=sk-abcdefghijklmnopqrstuvwxyz", "?[REDACTED:query]"),
                     time="2026-11-25T06:00:01.000000Z", account="alice", source="10.1.2.3",
                     data_subject="CUST-0042", action="http_request", method="POST",
                     path="/v1/chat/completions", status=200, bytes=5123,
                     user_agent="python-requests/2.31", request_id="req-7f3a",
                     model="gpt-4o", model_version="2024-08-06", prompt_sha256=PROMPT_SHA,
                     response_sha256=RESPONSE_SHA),
        nginx.access(2, raw=nginx.lines[1].decode().replace("?code=abc123opaque",
                                                            "?[REDACTED:query]"),
                     time="2026-11-25T06:00:02.000000Z", source="10.1.2.4",
                     action="http_request", method="GET", path="/healthz", status=200,
                     bytes=2, user_agent="curl/8.5.0"),
        # a TLS handshake sent to the HTTP port: no method or path; `-` and a non-hash
        # give nulls
        nginx.access(3, time="2026-11-25T06:00:03.000000Z", account="bob", source="10.1.2.5",
                     action="http_request", status=400, bytes=157),
        malformed(NGINX, 4, "not an nginx combined line"),
        nginx.source("nginx-combined", "ai_gateway", records=3, malformed=1),
        # JSON lines: floats in, only ints and strings out; the prompt never copied
        jsonl.access(1, raw=None, time="2026-11-26T07:00:01.250000Z", account="alice",
                     source="10.1.2.3", data_subject="CUST-0042", action="chat.completion",
                     path="/v1/messages", status=200, bytes=2048, model="claude-sonnet",
                     model_version="4.5", prompt_sha256=PROMPT_SHA,
                     response_sha256=RESPONSE_SHA),
        jsonl.access(2, raw=None, time="2026-11-25T06:00:05.000000Z", account="42",
                     source="10.1.2.9", action="http_request", method="POST", status=429,
                     bytes=0, request_id="r-2", model="gpt-4o"),
        jsonl.access(3, raw=None, time="2026-11-26T07:01:00.123000Z", account="svc-batch",
                     source="10.1.2.10", action="embedding", status=200),
        # line 4 is empty
        malformed(JSONL, 5, "not a JSON object"),
        malformed(JSONL, 6, "not a JSON object"),
        jsonl.source("json-lines", "ai_gateway", records=3, malformed=2, skipped=1),
    ]


def test_fixture_exact(tmp_path: Path) -> None:
    root = fixture_root(tmp_path)
    records, checkpoints = collect(root, SOURCES)
    assert records == expected_fixture_records(root)
    saved = checkpoints["logs"]
    assert set(saved) == {s["path"] for s in SOURCES}
    st = (root / "var/log/auth.log").stat()
    head = hashlib.sha256((root / "var/log/auth.log").read_bytes()[:4096]).hexdigest()
    assert saved[AUTH] == {"file": AUTH, "dev": str(st.st_dev), "ino": str(st.st_ino),
                           "offset": st.st_size, "line": 18, "discard": False,
                           "size": st.st_size, "head_sha256": head,
                           "mtime_ns": str(st.st_mtime_ns)}


def test_rerun_reads_nothing_again(tmp_path: Path) -> None:
    root = fixture_root(tmp_path)
    _first, checkpoints = collect(root, SOURCES)
    again, checkpoints_again = collect(root, SOURCES, checkpoints)
    assert [r[0] for r in again] == ["log_source"] * 4
    for _type, _key, data in again:
        assert data["start_offset"] == data["end_offset"] == data["size"]
        assert data["lines_read"] == 0
    assert checkpoints_again == checkpoints


def test_secrets_never_reach_a_record(tmp_path: Path) -> None:
    root = fixture_root(tmp_path)
    records, checkpoints = collect(root, SOURCES)
    dumped = json.dumps([records, checkpoints])
    assert "REDACTED" in dumped  # the seeded secrets were there to be found
    for secret in SECRETS:
        assert secret not in dumped, secret


def test_every_access_field_is_declared() -> None:
    declared = set(RECORD_TYPES["access"].fields)
    assert declared == set(ACCESS_FIELDS) | {"log", "file", "line", "line_offset",
                                             "raw_truncated", "raw_sha256",
                                             "raw_hmac",  # set by collector/privacy.py
                                             "cursor"}  # set for journal entries
    assert not RECORD_TYPES["access"].fields["raw_hmac"].required


# --- parsers, line by line -------------------------------------------------------

CTX = LineContext(dt.datetime(2027, 1, 2, tzinfo=dt.UTC), dt.UTC)


@pytest.mark.parametrize(("line", "expected"), [
    ("Jan  1 00:03:00 h su[1]: Successful su for root by alice",
     {"action": "su", "account": "alice", "target_account": "root", "source": None}),
    ("Jan  1 00:03:00 h su[1]: FAILED su for root by eve",
     {"action": "su_failed", "account": "eve", "target_account": "root"}),
    ("Jan  1 00:03:00 h su[1]: + pts/4 alice:root",
     {"action": "su", "account": "alice", "target_account": "root", "source": "pts/4"}),
    ("Jan  1 00:03:00 h su[1]: - pts/4 eve:root",
     {"action": "su_failed", "account": "eve", "source": "pts/4"}),
    ("Jan  1 00:03:00 h sshd[7]: Failed password for invalid user  from 192.0.2.1 port 22 ssh2",
     {"action": "ssh_login_failed", "account": "", "source": "192.0.2.1", "source_port": 22}),
    ("Jan  1 00:03:00 h sshd[7]: Accepted keyboard-interactive/pam for bob from 2001:db8::1 "
     "port 50000 ssh2", {"action": "ssh_login", "auth_method": "keyboard-interactive/pam",
                         "source": "2001:db8::1"}),
    ("Jan  1 00:03:00 h login[9]: pam_unix(login:session): session opened for user root(uid=0)"
     " by LOGIN(uid=0)", {"action": "session_open", "account": "LOGIN",
                          "target_account": "root", "program": "login"}),
    ("Jan  1 00:03:00 h sudo:    alice : 1 incorrect password attempt ; TTY=pts/0 ; PWD=/ ; "
     "USER=root ; COMMAND=/bin/true", {"action": "sudo_failed", "attempts": 1}),
    ("Dec 31 23:00:00 h sshd[7]: Invalid user x from 192.0.2.1",
     {"time": "2026-12-31T23:00:00.000000Z", "source_port": None}),
    ("2027-01-01T00:00:00.123456789Z h sshd[7]: Invalid user x from 192.0.2.1 port 1",
     {"time": "2027-01-01T00:00:00.123456Z"}),
])
def test_auth_lines(line: str, expected: dict[str, Any]) -> None:
    parsed = parse_auth(line, CTX)
    assert parsed is not None
    assert {k: parsed[k] for k in expected} == expected
    assert set(parsed) == set(ACCESS_FIELDS)


@pytest.mark.parametrize("line", [
    "Jan  1 00:01:00 h CRON[1]: pam_unix(cron:session): session opened for user root(uid=0) "
    "by (uid=0)",
    "Jan  1 00:01:00 h sshd[1]: Connection closed by 192.0.2.1 port 22 [preauth]",
    "Jan  1 00:01:00 h sudo:    alice : unable to resolve host h",
    "Jan  1 00:01:00 h -- MARK --",
    "Jan  1 00:01:00 h kernel: [  1.0] usb 1-1: new device",
])
def test_auth_lines_that_are_not_access(line: str) -> None:
    assert parse_auth(line, CTX) is None


@pytest.mark.parametrize(("line", "reason"), [
    ("", "not a syslog line"),
    ("\x00\x01\x02 binary", "not a syslog line"),
    ("Feb 29 00:00:00 h sshd[1]: Invalid user x from 192.0.2.1", "bad syslog timestamp"),
    ("Foo  1 00:00:00 h sshd[1]: Invalid user x from 192.0.2.1", "not a syslog line"),
    ("2027-13-01T00:00:00Z h sshd[1]: Invalid user x from 192.0.2.1", "bad syslog timestamp"),
])
def test_auth_malformed(line: str, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        parse_auth(line, CTX)


@pytest.mark.parametrize(("command", "expected"), [
    ("/usr/bin/mysql -uroot -pMyPassw0rd db", "/usr/bin/mysql -uroot -p[R] db"),
    ("/usr/bin/mysql -password S3cretX -v", "/usr/bin/mysql -p[R] [R] -v"),
    ("/opt/tool -password S3cretX -v", "/opt/tool -password [R] -v"),
    ("/usr/bin/openssl enc -pass pass:S3cretX -in f", "/usr/bin/openssl enc -pass [R] -in f"),
    ("/usr/bin/psql --password=S3cretX", "/usr/bin/psql --password=[REDACTED:named_secret]"),
    ("/usr/bin/ssh -p2222 host", "/usr/bin/ssh -p2222 host"),  # -p is a password for mysql only
    ("/bin/env TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789 x",
     "/bin/env TOKEN=[REDACTED:github_token] x"),
])
def test_sudo_command_scrubbing(command: str, expected: str) -> None:
    line = (f"Jan  1 00:00:00 h sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; "
            f"COMMAND={command}")
    parsed = parse_auth(line, CTX)
    assert parsed is not None
    assert parsed["command"] == expected.replace("[R]", "[REDACTED:argument]")
    assert parsed["raw"] == line.replace(command, parsed["command"])  # PWD kept as is


def test_nginx_extras_only_for_the_ai_gateway() -> None:
    line = ('10.0.0.1 - u [25/Nov/2026:06:00:00 +0000] "GET /a?b=c HTTP/2.0" 200 1 "-" "ua" '
            'model="m" subject=s')
    plain = parse_nginx(line, CTX)
    gateway = parse_nginx(line, CTX, ai_gateway=True)
    assert (plain["model"], plain["data_subject"]) == (None, None)
    assert (gateway["model"], gateway["data_subject"]) == ("m", "s")
    assert plain["path"] == gateway["path"] == "/a"
    assert "b=c" not in str(plain["raw"])


@pytest.mark.parametrize(("value", "expected"), [
    (1795676401, "2026-11-26T07:00:01.000000Z"),
    (1795676401.5, "2026-11-26T07:00:01.500000Z"),
    (1795676401500, "2026-11-26T07:00:01.500000Z"),  # milliseconds
    (1795676401500001, "2026-11-26T07:00:01.500001Z"),  # microseconds
    (1795676401500001999, "2026-11-26T07:00:01.500001Z"),  # nanoseconds
    ("1795676401", "2026-11-26T07:00:01.000000Z"),
    ("2026-11-26T16:00:01+09:00", "2026-11-26T07:00:01.000000Z"),
    ("2026-11-26 07:00:01", "2026-11-26T07:00:01.000000Z"),  # no offset: the zone (UTC)
    ("yesterday", None), (float("nan"), None), (float("inf"), None), (-5, None),
    (True, None), (None, None), ({"a": 1}, None), (10**30, None),
])
def test_json_time(value: Any, expected: str | None) -> None:
    assert json_time(value, dt.UTC) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (4.0, "4"), (4.5, "4.5"), (7, "7"), (True, "true"), ("x", "x"), ([1], None),
    ({"prompt": "p"}, None), (float("nan"), None),
])
def test_json_text(value: Any, expected: str | None) -> None:
    assert json_text(value) == expected


def test_json_line_never_yields_a_float() -> None:
    line = json.dumps({"time": 1.5e9, "user": 3.0, "status": 2.0e2, "bytes": 1e3,
                       "model_version": 0.1, "subject": 1e300, "client_ip": -0.0})
    parsed = parse_json_line(line, CTX)
    assert parsed is not None
    assert not [v for v in parsed.values() if isinstance(v, float)]
    assert (parsed["account"], parsed["status"], parsed["bytes"],
            parsed["model_version"]) == ("3", 200, 1000, "0.1")


@pytest.mark.parametrize("line", ["[" * 100000, "1" * 10000, '"just a string"', "{", "null"])
def test_json_hostile_lines_are_malformed(line: str) -> None:
    with pytest.raises(Malformed, match="not a JSON object"):
        parse_json_line(line, CTX)


# --- missing, unreadable, odd sources ------------------------------------------

def test_missing_directory_fifo_and_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "var/log").mkdir(parents=True)
    (tmp_path / "var/log/dir.log").mkdir()
    os.mkfifo(tmp_path / "var/log/fifo.log")
    started = time.monotonic()
    records, checkpoints = collect(tmp_path, [
        {"path": "/var/log/none.log", "format": "auth", "kind": ""},
        {"path": "/var/log/dir.log", "format": "auth", "kind": ""},
        {"path": "/var/log/fifo.log", "format": "json-lines", "kind": ""},
        {"path": "/var/log/x.log", "format": "syslog-ng", "kind": ""},
    ])
    assert time.monotonic() - started < 5  # the FIFO is never opened for a blocking read
    assert records == [
        ("source_missing", "/var/log/none.log", {"path": "/var/log/none.log"}),
        ("source_unreadable", "/var/log/dir.log",
         {"path": "/var/log/dir.log", "reason": "IsADirectoryError: Is a directory"}),
        ("source_unreadable", "/var/log/fifo.log",
         {"path": "/var/log/fifo.log", "reason": "OSError: not a regular file"}),
        ("unsupported", "logs:/var/log/x.log",
         {"platform": sys.platform, "source": "/var/log/x.log",
          "reason": "unknown log format 'syslog-ng'"}),
    ]
    assert checkpoints == {"logs": {}}


def test_missing_source_keeps_its_checkpoint(tmp_path: Path) -> None:
    log = AuthLog(tmp_path)
    log.append(2)
    run = Runner(tmp_path)
    run()
    saved = run.checkpoints["logs"][AUTH]
    log.path.rename(log.path.with_name("moved"))
    records = run()
    assert records[0][0] == "source_missing"
    assert run.checkpoints["logs"][AUTH] == saved


@pytest.mark.parametrize("saved", [{AUTH: {"dev": 1, "offset": "x"}}, "garbage", [1]])
def test_unusable_checkpoint_is_a_gap_then_a_first_read(tmp_path: Path, saved: Any) -> None:
    log = AuthLog(tmp_path)
    log.append(2)
    run = Runner(tmp_path)
    run.checkpoints = {"logs": saved}
    records = run()
    assert [(t, d["cause"]) for t, _k, d in records if t == "log_gap"] == \
        [("log_gap", "checkpoint_unusable")]
    assert run.ids == Counter({1: 1, 2: 1})
    log.append(1)
    assert not gaps(run())
    exactly_once(run, log)


# --- bad input: binary, long lines, partial lines -------------------------------

def test_binary_garbage_and_huge_lines_bounded(tmp_path: Path) -> None:
    log = AuthLog(tmp_path)
    big = 48 << 20
    with log.path.open("ab") as handle:
        handle.write(log.line(1))
        handle.write(b"\xff\xfe\x00\x9c garbage \x80\x81\n")
        handle.write(b"Nov 25 06:00:00 web-01 sshd[9]: Invalid user \xe9 from 192.0.2.1\n")
        handle.write(b"A" * (1 << 20) + b"\n")  # 1 MB
        handle.write(log.line(2))
        for _ in range(big // (1 << 20)):  # 48 MB, written without holding it
            handle.write(b"B" * (1 << 20))
        handle.write(b"\n")
        handle.write(log.line(3))
        handle.write(b"C" * (LINE_MAX + 1) + b"\n")  # just over
        handle.write(b"Nov 25 06:00:00 web-01 sshd[9]: Invalid user " + b"D " * (LINE_MAX // 2 - 50)
                     + b"from 192.0.2.1\n")  # just under: kept, raw cut to 4 KiB
        handle.write(b"Nov 25 06:00:00 web-01 sshd[10]: Invalid user " + b"E" * 60000
                     + b" from 192.0.2.1\n")  # one long token: redacted whole, and fast
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    started = time.monotonic()
    run = Runner(tmp_path)  # 16 MiB a run: the 48 MB line spans runs
    records: list[Triple] = []
    try:
        for _ in range(10):
            records += run()
            if sources(records[-1:])["end_offset"] == log.path.stat().st_size:
                break
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len([r for r in records if r[0] == "log_source"]) == 4
    elapsed = time.monotonic() - started
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert elapsed < 10
    assert peak < 4 << 20, peak  # chunks of 64 KiB, never a whole line
    assert rss_growth_kib < 24 << 10, rss_growth_kib
    assert [(t, d.get("reason")) for t, _k, d in records if t == "malformed_line"] == [
        ("malformed_line", "not UTF-8"),
        ("malformed_line", "not UTF-8"),
        ("malformed_line", f"line over {LINE_MAX} bytes"),
        ("malformed_line", f"line over {LINE_MAX} bytes"),
        ("malformed_line", f"line over {LINE_MAX} bytes"),
    ]
    assert [k for t, k, _d in records if t == "malformed_line"] == [
        f"{AUTH}:{n}" for n in (2, 3, 4, 6, 8)]
    accesses = [d for t, _k, d in records if t == "access"]
    assert [d["pid"] for d in accesses] == [1, 2, 3, 9, 10]
    assert [d["line"] for d in accesses] == [1, 5, 7, 9, 10]
    spaced, token = accesses[-2:]
    assert spaced["raw_truncated"] is True and len(spaced["raw"].encode()) == 4096
    assert len(spaced["account"]) == LINE_MAX - 100 - 1
    assert token["raw"] == ("Nov 25 06:00:00 web-01 sshd[10]: Invalid user "
                            "[REDACTED:long_token]")
    assert token["raw_truncated"] is True
    assert "\\x" not in json.dumps(records) and "garbage" not in json.dumps(records)


def test_partial_last_line_waits_for_its_newline(tmp_path: Path) -> None:
    log = AuthLog(tmp_path)
    log.append(1)
    line = log.line(2)
    log.write(line[:30])
    run = Runner(tmp_path)
    first = run()
    assert run.ids == Counter({1: 1})
    assert first[-1][2]["end_offset"] == len(log.line(1))
    log.write(line[30:])
    run()
    assert run.ids == Counter({1: 1, 2: 1})
    assert run.access[-1]["line"] == 2 and run.access[-1]["line_offset"] == len(log.line(1))


def test_unterminated_overlong_line_is_reported_once(tmp_path: Path) -> None:
    log = AuthLog(tmp_path)
    log.append(1)
    log.write(b"X" * (LINE_MAX * 3))
    run = Runner(tmp_path)
    first = run()
    assert [k for t, k, _d in first if t == "malformed_line"] == [f"{AUTH}:2"]
    log.write(b"X" * 1000)
    assert [t for t, _k, _d in run()] == ["log_source"]
    log.write(b"X\n")
    log.append(1)
    third = run()
    assert [t for t, _k, _d in third] == ["access", "log_source"]
    assert run.ids == Counter({1: 1, 2: 1}) and run.access[-1]["line"] == 3


# --- offsets across reruns and rotation -----------------------------------------

class AuthLog:
    """An auth.log under a test root whose lines carry a unique number (pid, port)."""

    def __init__(self, root: Path, path: str = AUTH) -> None:
        self.path = root / path.lstrip("/")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self.next = 1

    @staticmethod
    def line(n: int) -> bytes:
        return (f"Nov 25 06:{n // 60 % 60:02d}:{n % 60:02d} web-01 sshd[{n}]: Accepted "
                f"publickey for u{n} from 10.0.0.1 port {n} ssh2\n").encode()

    def write(self, data: bytes, path: Path | None = None) -> None:
        with (path or self.path).open("ab") as handle:
            handle.write(data)

    def append(self, count: int, path: Path | None = None) -> list[int]:
        numbers = list(range(self.next, self.next + count))
        self.next += count
        self.write(b"".join(self.line(n) for n in numbers), path)
        return numbers

    def sibling(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def shift(self) -> None:
        """Move .N to .N+1, as logrotate does before making a new .1."""
        numbered = sorted((p for p in self.path.parent.glob(self.path.name + ".*")
                           if p.suffix[1:].isdigit()), key=lambda p: -int(p.suffix[1:]))
        for rotated in numbered:
            rotated.rename(self.sibling(f".{int(rotated.suffix[1:]) + 1}"))

    def rotate_rename(self) -> None:
        self.shift()
        self.path.rename(self.sibling(".1"))
        self.path.touch()

    def rotate_copytruncate(self) -> None:
        self.shift()
        shutil.copyfile(self.path, self.sibling(".1"))
        with self.path.open("r+b") as handle:
            handle.truncate(0)


class Runner:
    """Runs the collector in-process, carrying checkpoints forward as the agent does."""

    def __init__(self, root: Path, **options: Any) -> None:
        self.root = root
        self.options = options
        self.checkpoints: dict[str, Any] = {}
        self.ids: Counter[int] = Counter()
        self.access: list[dict[str, Any]] = []

    def __call__(self) -> list[Triple]:
        records, new = collect(self.root, [{"path": AUTH, "format": "auth", "kind": ""}],
                               self.checkpoints, **self.options)
        self.checkpoints = {**self.checkpoints, **new}
        for kind, _key, data in records:
            if kind == "access":
                self.ids[data["pid"]] += 1
                self.access.append(data)
        return records


def exactly_once(run: Runner, log: AuthLog) -> None:
    assert run.ids == Counter(range(1, log.next)), run.ids


def sources(records: list[Triple]) -> dict[str, Any]:
    return next(d for t, _k, d in records if t == "log_source")


def gaps(records: list[Triple]) -> list[dict[str, Any]]:
    return [d for t, _k, d in records if t == "log_gap"]


def test_rename_and_create(tmp_path: Path) -> None:
    log, run = AuthLog(tmp_path), Runner(tmp_path)
    log.append(5)
    run()
    log.append(2)  # written before the rotation, read after it from auth.log.1
    log.rotate_rename()
    log.append(3)
    second = run()
    assert sources(second)["rotated_from"] == [f"{AUTH}.1"]
    assert [d["file"] for d in run.access[5:]] == [f"{AUTH}.1"] * 2 + [AUTH] * 3
    assert [d["line"] for d in run.access[5:]] == [6, 7, 1, 2, 3]
    log.append(2)
    run()
    assert not gaps(second)
    exactly_once(run, log)


@pytest.mark.parametrize("after", [1, 30], ids=["shorter", "longer-than-before"])
def test_copytruncate(tmp_path: Path, after: int) -> None:
    """After the truncation the file may regrow past the old offset before the next
    run: the changed head still gives it away."""
    log, run = AuthLog(tmp_path), Runner(tmp_path)
    log.append(5)
    run()
    log.append(2)
    log.rotate_copytruncate()
    log.append(after)
    second = run()
    assert sources(second)["rotated_from"] == [f"{AUTH}.1"]
    assert not gaps(second)
    log.append(2)
    run()
    exactly_once(run, log)


def test_both_styles_repeatedly(tmp_path: Path) -> None:
    log, run = AuthLog(tmp_path), Runner(tmp_path)
    for round_ in range(6):
        log.append(3)
        run()
        log.append(2)
        if round_ % 2:
            log.rotate_copytruncate()
        else:
            log.rotate_rename()
        log.append(2)
        run()
        run()
    exactly_once(run, log)


def test_two_renames_between_runs(tmp_path: Path) -> None:
    log, run = AuthLog(tmp_path), Runner(tmp_path)
    log.append(3)
    run()
    log.append(1)
    log.rotate_rename()
    log.append(2)
    # Written after the last run: file times are coarse (a clock tick), so in a test
    # that runs in microseconds say so explicitly.
    os.utime(log.path, ns=(time.time_ns() + 10**9,) * 2)
    log.rotate_rename()
    log.append(2)
    second = run()
    assert sources(second)["rotated_from"] == [f"{AUTH}.2", f"{AUTH}.1"]
    exactly_once(run, log)


def test_two_copytruncates_between_runs(tmp_path: Path) -> None:
    log, run = AuthLog(tmp_path), Runner(tmp_path)
    log.append(3)
    run()
    log.append(1)
    log.rotate_copytruncate()
    log.append(2)
    log.rotate_copytruncate()
    os.utime(log.sibling(".1"), ns=(time.time_ns() + 10**9,) * 2)  # coarse times, as above
    log.append(2)
    second = run()
    assert sources(second)["rotated_from"] == [f"{AUTH}.2", f"{AUTH}.1"]
    exactly_once(run, log)


def test_late_writer_to_the_renamed_file(tmp_path: Path) -> None:
    """nginx keeps writing to the old file until it reopens its log."""
    log, run = AuthLog(tmp_path), Runner(tmp_path)
    log.append(3)
    run()
    log.rotate_rename()
    log.append(1)
    log.append(2, log.sibling(".1"))  # the late writer, after our run it is still going
    run()
    log.append(2, log.sibling(".1"))
    log.append(1)
    third = run()
    assert sources(third)["rotated_from"] == [f"{AUTH}.1"]
    run()
    exactly_once(run, log)


def test_rotated_file_gone_with_an_unterminated_line_is_a_gap(tmp_path: Path) -> None:
    log, run = AuthLog(tmp_path), Runner(tmp_path)
    log.append(2)
    run()
    log.rotate_rename()
    log.write(log.line(99)[:20], log.sibling(".1"))  # a late writer, mid-line
    log.append(1)
    assert not gaps(run())
    log.sibling(".1").unlink()  # compressed away before the line was finished
    third = run()
    assert [(g["cause"], g["file"], g["to_offset"] - g["from_offset"]) for g in gaps(third)] \
        == [("rotated_file_gone", f"{AUTH}.1", 20)]
    assert not gaps(run())  # said once
    exactly_once(run, log)


def test_dateext_sibling(tmp_path: Path) -> None:
    log, run = AuthLog(tmp_path), Runner(tmp_path)
    log.append(2)
    run()
    log.append(2)
    log.path.rename(log.sibling("-20261125"))
    log.path.touch()
    log.append(1)
    second = run()
    assert sources(second)["rotated_from"] == [f"{AUTH}-20261125"]
    exactly_once(run, log)


def test_rotated_away_and_compressed_is_a_gap(tmp_path: Path) -> None:
    log, run = AuthLog(tmp_path), Runner(tmp_path)
    log.append(3)
    run()
    saved = run.checkpoints["logs"][AUTH]
    lost = log.append(2)
    log.rotate_rename()
    rotated = log.sibling(".1")
    log.sibling(".1.gz").write_bytes(gzip.compress(rotated.read_bytes()))
    rotated.unlink()
    log.append(1)
    second = run()
    assert gaps(second) == [{
        "path": AUTH, "cause": "rotated_away", "file": AUTH, "device": saved["dev"],
        "inode": saved["ino"], "from_offset": saved["offset"], "to_offset": None,
        "reason": "the file was rotated and the old file is not found uncompressed next to "
                  "it: lines written after this offset may be lost"}]
    assert run.ids == Counter({1: 1, 2: 1, 3: 1, 6: 1})
    assert not set(lost) & set(run.ids)


def test_truncation_without_a_copy_is_a_gap(tmp_path: Path) -> None:
    log, run = AuthLog(tmp_path), Runner(tmp_path)
    log.append(3)
    run()
    with log.path.open("r+b") as handle:
        handle.truncate(0)
    log.append(1)
    second = run()
    assert [g["cause"] for g in gaps(second)] == ["truncated"]
    assert run.ids == Counter({1: 1, 2: 1, 3: 1, 4: 1})


def test_first_read_of_a_large_file_is_capped(tmp_path: Path) -> None:
    log = AuthLog(tmp_path)
    log.append(100)
    size = log.path.stat().st_size
    run = Runner(tmp_path, first_read_max_bytes=1000)
    first = run()
    assert [(g["cause"], g["from_offset"], g["to_offset"]) for g in gaps(first)] == \
        [("first_read_limit", 0, size - 1000)]
    # Only whole lines after the cut, with their true line numbers.
    starts = [sum(len(log.line(m)) for m in range(1, n)) for n in range(1, 101)]
    first_whole = next(n for n, start in enumerate(starts, 1) if start >= size - 1000)
    assert sorted(run.ids) == list(range(first_whole, 101))
    assert all(d["line"] == d["pid"] for d in run.access)
    log.append(1)
    assert not gaps(run())
    assert run.ids[101] == 1


def test_read_per_run_is_capped_and_resumed(tmp_path: Path) -> None:
    log = AuthLog(tmp_path)
    log.append(60)
    run = Runner(tmp_path, max_bytes_per_run=1000)
    for _ in range(20):
        run()
    exactly_once(run, log)
    assert all(d["line"] == d["pid"] for d in run.access)


# --- this machine ------------------------------------------------------------------

def test_live(tmp_path: Path) -> None:
    log = AuthLog(tmp_path)
    log.append(2)
    tmp_source = str(log.path)
    ctx = CollectContext(options={"logs": {"sources": [
        {"path": "/var/log/auth.log", "format": "auth", "kind": ""},
        {"path": tmp_source, "format": "auth", "kind": ""}]}})
    result = run_collector(COLLECTOR, ctx)
    assert result.status == expected_status(result.records), result.error
    by_type = Counter(r.type for r in result.records)
    assert "collector_error" not in by_type
    assert by_type["access"] >= 2
    system = [r for r in result.records if r.key == "/var/log/auth.log"]
    assert system and system[0].type in {"log_source", "source_missing", "source_unreadable"}
    assert ctx.new_checkpoints["logs"][tmp_source]["offset"] == log.path.stat().st_size
