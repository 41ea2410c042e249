"""Pseudonymization: keyed and stable, whole-token rewriting across a bundle, keyed raw
digests, the vocabulary from the declarations, and the key file guarded."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from collector.privacy import (
    BundlePseudonymizer,
    field_name_problem,
    is_person,
    key_id,
    load_pseudonym_key,
    personal_fields,
    pseudonym,
    raw_hmac,
    scopes,
)
from collector.registry import all_collectors
from signing.errors import KeyFileError

KEY = b"k" * 32
ALL = ["user", "account", "target_account", "source", "data_subject", "home", "gecos",
       "comment", "host", "address", "owner", "members"]


def key_file(tmp_path: Path, mode: int = 0o600, content: bytes = KEY) -> Path:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def rec(collector: str, type_: str, key: str, **data: Any) -> dict[str, Any]:
    return {"v": 1, "collector": collector, "type": type_, "key": key, "host": "web-01",
            "observed_at": "2026-12-02T00:00:00.000000Z", "data": data}


def run(records: list[dict[str, Any]], names: list[str] = ALL,
        keep: frozenset[str] = frozenset({"root", "bin"})) -> list[dict[str, Any]]:
    return BundlePseudonymizer(KEY, scopes(names, all_collectors()), keep).apply(records)


def psn(value: str) -> str:
    return pseudonym(KEY, value)


def test_pseudonym_is_hmac_prefix(tmp_path: Path) -> None:
    key = load_pseudonym_key(key_file(tmp_path))
    expected = "psn:" + hmac.new(KEY, b"alice", hashlib.sha256).hexdigest()[:32]
    assert pseudonym(key, "alice") == expected
    assert pseudonym(b"other-key-000000", "alice") != expected
    assert key_id(key) != key_id(b"other-key-000000") and len(key_id(key)) == 16


def test_named_fields_are_replaced_and_others_kept() -> None:
    (out,) = run([rec("sessions", "login", "pts/1:1:jiwoo", user="jiwoo",
                      terminal="pts/1", host="jiwoo-pc.corp", address="10.77.1.23",
                      pid=42, file="/var/log/wtmp")])
    assert out["data"] == {"user": psn("jiwoo"), "terminal": "pts/1",
                           "host": psn("jiwoo-pc.corp"), "address": psn("10.77.1.23"),
                           "pid": 42, "file": "/var/log/wtmp"}
    assert out["key"] == f"pts/1:1:{psn('jiwoo')}"
    assert {k: v for k, v in out.items() if k not in ("key", "data")} == {
        "v": 1, "collector": "sessions", "type": "login", "host": "web-01",
        "observed_at": "2026-12-02T00:00:00.000000Z"}


def test_a_name_seen_in_one_record_is_replaced_in_every_other() -> None:
    records = [
        rec("accounts", "user", "jiwoo", uid=1001, gecos="Kim Jiwoo,Room 7,+82-2-555-0142",
            home="/home/jiwoo", shell="/bin/bash"),
        rec("accounts", "sudoers_rule", "/etc/sudoers:3", text="jiwoo ALL=(ALL) ALL",
            principal="jiwoo"),
        rec("files", "file", "/home/jiwoo/notes.txt", path="/home/jiwoo/notes.txt",
            owner="jiwoo", content="# Kim Jiwoo (+82-2-555-0142)\nssh jiwoo@10.77.1.23\n"),
        rec("processes", "process", "7:1", user="root",
            cmdline=["vim", "/home/jiwoo/a.txt"], cwd={"/home/jiwoo": 1}),
        rec("agent", "spool_full", "agent", note="nothing personal"),
    ]
    out = run(records, ["user", "gecos", "home"])
    blob = json.dumps(out)
    for clear in ("jiwoo", "Kim Jiwoo", "555-0142"):
        assert clear not in blob, clear
    assert out[0]["key"] == psn("jiwoo") and out[0]["data"]["shell"] == "/bin/bash"
    assert out[1]["data"]["text"] == f"{psn('jiwoo')} ALL=(ALL) ALL"
    assert out[2]["data"]["content"].startswith(f"# {psn('Kim Jiwoo')} ({psn('+82-2-555-0142')})")
    assert out[3]["data"]["cmdline"] == ["vim", f"{psn('/home/jiwoo')}/a.txt"]
    assert out[3]["data"]["cwd"] == {psn("/home/jiwoo"): 1}  # object keys too
    assert out[3]["data"]["user"] == "root"
    assert out[4] == records[4]
    # "10.77.1.23" is no listed value here: addresses only go when a field names them
    assert "10.77.1.23" in out[2]["data"]["content"]


def test_records_one_at_a_time_in_two_passes_give_what_apply_gives() -> None:
    """The sealer streams: gather each record, prepare, then pseudonymize each; a name
    first seen in the last record is still replaced in the first."""
    records = [
        rec("files", "file", "/srv/notes", path="/srv/notes", owner="root",
            content="ask jiwoo at 10.77.1.23"),
        rec("sessions", "login", "pts/1:1:jiwoo", user="jiwoo", terminal="pts/1",
            host="", address="10.77.1.23", pid=1, file="/var/log/wtmp"),
    ]
    streamed = BundlePseudonymizer(KEY, scopes(ALL, all_collectors()), frozenset({"root"}))
    for record in records:
        streamed.gather(record)
    streamed.prepare()
    out = [streamed.pseudonymize(json.loads(json.dumps(r))) for r in records]
    assert out == run(records)
    assert out[0]["data"]["content"] == f"ask {psn('jiwoo')} at {psn('10.77.1.23')}"


@pytest.mark.parametrize(("text", "expected"), [
    ("USER=a ; PWD=/home/a", "USER=¤ ; PWD=/home/¤"),
    ("a: a.", "¤: ¤."),
    ("(a) [a] 'a' \"a\" a@pc a,b", "(¤) [¤] '¤' \"¤\" ¤@pc ¤,b"),
    ("alpha abc a1 a_b _a Ba", "alpha abc a1 a_b _a Ba"),
    ("x-a a-x a.b b.a a/b", "x-¤ ¤-x ¤.b b.¤ ¤/b"),
    ("a-", "¤-"),
    ("", ""),
])
def test_whole_token_boundaries_for_a_one_letter_user(text: str, expected: str) -> None:
    out = run([rec("sessions", "login", "k", user="a"),
               rec("logs", "access", "f:1", raw=None, command=text)], ["user"])
    assert out[1]["data"]["command"] == expected.replace("¤", psn("a"))


def test_addresses_in_their_spellings_and_not_inside_others() -> None:
    out = run([rec("sessions", "login", "k", user="x", address="2001:db8:77::23"),
               rec("sessions", "login", "k2", user="y", address="10.77.1.23"),
               rec("logs", "access", "f:1", raw=None,
                   command="from ::ffff:10.77.1.23 and 10.77.1.230 and 110.77.1.23 "
                           "and 2001:DB8:77::23 and 2001:0db8:0077:0000:0000:0000:0000:0023 "
                           "and [2001:db8:77::23]:22 and 2001:db8:77::234")],
              ["address"])
    v4, v6 = psn("10.77.1.23"), psn("2001:db8:77::23")
    assert out[2]["data"]["command"] == (
        f"from {v4} and 10.77.1.230 and 110.77.1.23 and {v6} and {v6} and [{v6}]:22 "
        f"and 2001:db8:77::234")
    assert out[1]["data"]["address"] == v4


def test_sshd_mapped_address_gets_the_plain_addresses_pseudonym() -> None:
    out = run([rec("logs", "access", "f:1", account="jiwoo", source="::ffff:10.77.1.23",
                   raw=None), rec("sessions", "login", "k", user="z", address="10.77.1.23")])
    assert out[0]["data"]["source"] == out[1]["data"]["address"] == psn("10.77.1.23")


def test_system_accounts_terminals_and_loopback_are_no_people() -> None:
    out = run([
        rec("accounts", "user", "bin", uid=2, gecos="bin", home="/bin", shell="/bin/sh"),
        rec("accounts", "user", "root", uid=0, gecos="root", home="/root", shell="/bin/bash"),
        rec("logs", "access", "f:1", account="root", source="pts/0", target_account="root",
            raw="sudo: root : TTY=pts/0 ; PWD=/root ; USER=root ; COMMAND=/usr/bin/id",
            raw_truncated=False, raw_sha256=None),
        rec("logs", "access", "f:2", account="svc", source="127.0.0.1", raw=None),
        rec("files", "file", "/usr/bin/id", path="/usr/bin/id", owner="root"),
    ])
    assert out[0]["key"] == "bin" and out[0]["data"]["home"] == "/bin"
    assert out[1]["key"] == "root" and out[1]["data"]["home"] == "/root"
    assert out[2]["data"]["raw"] == ("sudo: root : TTY=pts/0 ; PWD=/root ; USER=root ; "
                                     "COMMAND=/usr/bin/id")
    assert out[2]["data"]["source"] == "pts/0"
    assert out[3]["data"]["source"] == "127.0.0.1" and out[3]["data"]["account"] == psn("svc")
    assert out[4]["key"] == "/usr/bin/id" and out[4]["data"]["owner"] == "root"


@pytest.mark.parametrize(("value", "person"), [
    ("pts/0", False), ("/dev/pts/12", False), ("tty1", False), ("ttyS0", False),
    ("ttyUSB0", False), ("ssh:notty", False), (":0", False), (":1.0", False),
    ("console", False), ("127.0.0.1", False), ("::1", False), ("0.0.0.0", False),
    ("::ffff:127.0.0.1", False), ("", False), ("psn:0123", False), ("root", False),
    ("ttyler", True), ("10.0.0.1", True), ("pts", True), ("jiwoo", True),
])
def test_what_names_no_person(value: str, person: bool) -> None:
    assert is_person(value, frozenset({"root"})) is person


def test_raw_sha256_becomes_a_keyed_digest() -> None:
    line = b"Dec  2 10:00:01 web-01 sshd[9]: Accepted publickey for jiwoo from 10.77.1.23"
    digest = hashlib.sha256(line).hexdigest()
    (out,) = run([rec("logs", "access", "f:1", account="jiwoo", source="10.77.1.23",
                      raw=line.decode(), raw_truncated=False, raw_sha256=digest)])
    data = out["data"]
    assert data["raw_sha256"] is None
    # how a firm confirms a line with its key: HMAC-SHA256(key, SHA-256(line))
    assert data["raw_hmac"] == hmac.new(KEY, hashlib.sha256(line).digest(),
                                        hashlib.sha256).hexdigest()
    assert data["raw_hmac"] == raw_hmac(KEY, digest)
    assert data["raw_hmac"] != raw_hmac(b"a-guessers-key-0", digest)
    assert data["raw"] == (f"Dec  2 10:00:01 web-01 sshd[9]: Accepted publickey for "
                           f"{psn('jiwoo')} from {psn('10.77.1.23')}")
    (none,) = run([rec("logs", "access", "f:1", account="x", raw="x", raw_sha256=None)])
    assert none["data"]["raw_hmac"] is None and none["data"]["raw_sha256"] is None


@pytest.mark.parametrize(("raw", "truncated"), [
    ("session opened for user jiwoos by jiwoo", False),   # rewritten: jiwoos is kept
    ("Invalid user jiwoo2 from", False),                 # `jiwoo` still inside: withheld
    ("Accepted password for jiw", True),                 # cut: withheld
])
def test_raw_that_cannot_be_rewritten_safely_is_withheld(raw: str, truncated: bool) -> None:
    (out,) = run([rec("logs", "access", "f:1", account="jiwoo", raw=raw,
                      raw_truncated=truncated, raw_sha256="00" * 32)])
    assert out["data"]["raw"] is None
    assert out["data"]["raw_hmac"] == raw_hmac(KEY, "00" * 32)


def test_raw_without_the_value_is_kept_rewritten() -> None:
    (out,) = run([rec("logs", "access", "f:1", account="jiwoo", raw="for jiwoo port 22",
                      raw_truncated=False, raw_sha256=None)])
    assert out["data"]["raw"] == f"for {psn('jiwoo')} port 22"


def test_bytes_that_are_not_utf8() -> None:
    out = run([rec("sessions", "login", "k", user={"b64": "avBvbw=="}),  # b"j\xf0oo"
               rec("files", "file", "k2", path={"b64": "L2hvbWUvaml3b28v/w=="}, owner="jiwoo")])
    assert out[0]["data"]["user"].startswith("psn:")
    assert out[1]["data"]["path"] == pseudonym(KEY, b"/home/jiwoo/\xff")


def test_a_bundle_of_100k_lines_is_linear() -> None:
    def bundle(n: int) -> list[dict[str, Any]]:
        return [rec("logs", "access", f"/var/log/auth.log:{i}", account=f"u{i % 3000:05d}",
                    source=f"10.{i % 3000 // 256}.{i % 256}.9", raw_truncated=False,
                    raw=f"sshd[1]: Accepted publickey for u{i % 3000:05d} from "
                        f"10.{i % 3000 // 256}.{i % 256}.9 port 5123 ssh2",
                    raw_sha256="ab" * 32) for i in range(n)]
    timings = []
    for n in (20_000, 100_000):
        records = bundle(n)
        started = time.perf_counter()
        out = run(records, ["account", "source"])
        timings.append(time.perf_counter() - started)
        assert "u00042" not in json.dumps(out[:100])
    assert timings[1] < 8 * timings[0] + 1  # 5x the lines: about 5x the time, never 25x


def test_vocabulary_comes_from_the_declarations() -> None:
    collectors = all_collectors()
    vocabulary = personal_fields(collectors)
    assert set(vocabulary) == set(ALL)
    assert "accounts.user (key)" in vocabulary["user"]
    assert vocabulary["source"] == ["logs.access"]  # not packages' source package
    assert field_name_problem("account", collectors) is None
    message, hint = field_name_problem("src", collectors) or ("", "")
    assert "'src' is a field no collector emits" in message and "account" in hint
    message, _ = field_name_problem("hostname", collectors) or ("", "")
    assert "not a personal field" in message
    assert scopes(["source"], collectors) == {("logs", "access"): scopes(
        ["source"], collectors)[("logs", "access")]}


def test_the_hosts_own_users_are_found_in_a_bundle_without_accounts() -> None:
    rewriter = BundlePseudonymizer(KEY, scopes(["user"], all_collectors()),
                                   frozenset({"root"}), frozenset({"jiwoo"}))
    (out,) = rewriter.apply([rec("files", "file", "/home/jiwoo/.bashrc",
                                 path="/home/jiwoo/.bashrc", owner="jiwoo")])
    assert out["key"] == out["data"]["path"] == f"/home/{psn('jiwoo')}/.bashrc"
    assert out["data"]["owner"] == psn("jiwoo")  # as a token: owner is not named here


def test_manifest_text_is_rewritten_alike() -> None:
    rewriter = BundlePseudonymizer(KEY, scopes(["user"], all_collectors()))
    rewriter.apply([rec("sessions", "login", "k", user="jiwoo")])
    assert rewriter.rewrite("PermissionError: '/home/jiwoo/.ssh'") == (
        f"PermissionError: '/home/{psn('jiwoo')}/.ssh'")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_loose_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, mode)
    with pytest.raises(KeyFileError) as info:
        load_pseudonym_key(path)
    assert str(path) in info.value.diagnostics()
    assert "chmod 600" in info.value.diagnostics()
    assert info.value.exit_code == 2


def test_missing_or_short_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        load_pseudonym_key(tmp_path / "nope")
    with pytest.raises(KeyFileError, match="shorter"):
        load_pseudonym_key(key_file(tmp_path, content=b"short"))
