"""The logs collector's journald source, against real journal files read by the real
journalctl (tests/journal_fixtures.py): entries of sshd, sudo and su parsed by the
auth parser, the cursor checkpoint, bounded reads, and every failure recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from collector import _journald, logs
from collector.record import Record
from collector.registry import CollectContext, coverage_gaps, run_collector
from tests.journal_fixtures import Journal, journal_tools


def run(journal: Path | str, checkpoint: Any = None, root: Path = Path("/"),
        **options: Any) -> tuple[list[Record], Any]:
    source = {"journal": str(journal), "format": "journald", "kind": ""}
    ctx = CollectContext(root=root, options={"logs": {"sources": [source], **options}})
    ctx.checkpoints = {"logs": checkpoint} if checkpoint is not None else {}
    records = list(logs.collect(ctx))
    return records, ctx.new_checkpoints.get("logs")


def of(records: list[Record], type_: str) -> list[Record]:
    return [r for r in records if r.type == type_]


def ports(records: list[Record]) -> list[int]:
    return [r.data["source_port"] for r in of(records, "access")]


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    journal_tools()
    return Journal(tmp_path / "host.journal")


def test_auth_entries_are_parsed_like_auth_log(journal: Journal) -> None:
    journal.append([
        ("sshd", "Accepted publickey for alice from 10.0.0.5 port 50022 ssh2: ED25519 SHA256:x"),
        ("sudo", "   alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; "
                 "COMMAND=/usr/bin/mysql -pS3cretPass"),
        ("su", "(to root) alice on pts/1"),
        ("sshd", "Server listening on 0.0.0.0 port 22."),
        ("cron", "pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"),
        ("kernel", "eth0: link up"),
    ])
    records, checkpoint = run(journal.path)
    access = of(records, "access")
    assert [r.data["action"] for r in access] == ["ssh_login", "sudo", "su"]
    login, sudo, su = access
    assert (login.data["account"], login.data["source"], login.data["source_port"]) == (
        "alice", "10.0.0.5", 50022)
    assert login.data["program"] == "sshd" and login.data["pid"] == 100
    assert login.data["time"] == "2026-11-30T00:53:20.000000Z"
    assert login.data["raw"].startswith("2026-11-30T00:53:20.000000Z web-01 sshd[100]: Accepted")
    assert login.data["line"] == 1 and login.data["line_offset"] is None
    assert login.key == f"journal:{journal.path}@{login.data['cursor']}"
    assert (sudo.data["target_account"], sudo.data["source"]) == ("root", "pts/0")
    assert "S3cretPass" not in sudo.data["raw"] and "S3cretPass" not in sudo.data["command"]
    assert sudo.data["raw_sha256"] is None  # a secret was taken out of the line
    assert (su.data["account"], su.data["target_account"]) == ("alice", "root")
    [summary] = of(records, "journal_source")
    # cron and kernel entries are not matched; sshd's "Server listening" is skipped.
    assert summary.data["entries_read"] == 4 and summary.data["skipped"] == 1
    assert summary.data["records"] == 3 and summary.data["cursor_before"] is None
    # The cursor is the last entry read, skipped or not ("Server listening", i=4).
    cursor = summary.data["cursor_after"]
    assert ";i=4;" in cursor and checkpoint == {f"journal:{journal.path}": {"cursor": cursor}}


def test_control_characters_and_bad_bytes(journal: Journal) -> None:
    """A newline in a message is written as rsyslog does (#012), so a forged second
    line cannot hide or fake an event; a message that is not UTF-8 is malformed."""
    journal.append([
        ("sshd", "Accepted password for bob from 10.0.0.9 port 7 ssh2\nsudo: root : fake"),
        ("sudo", b"\xff\xfe alice : TTY=pts/0 ; PWD=/ ; USER=root ; COMMAND=/bin/id"),
    ])
    records, _ = run(journal.path)
    [login] = of(records, "access")
    assert login.data["account"] == "bob"
    assert login.data["raw"].endswith("ssh2#012sudo: root : fake")
    [bad] = of(records, "malformed_line")
    assert bad.data == {"file": f"journal:{journal.path}", "line": 2, "reason": "not UTF-8"}
    assert of(records, "journal_source")[0].data["malformed"] == 1


def test_two_collections_neither_repeat_nor_skip(journal: Journal) -> None:
    journal.append(journal.logins(1, 5))
    first, checkpoint = run(journal.path)
    assert ports(first) == [1, 2, 3, 4, 5]
    same, unchanged = run(journal.path, checkpoint)
    assert ports(same) == [] and unchanged == checkpoint
    journal.append(journal.logins(6, 3))
    second, checkpoint = run(journal.path, checkpoint)
    assert ports(second) == [6, 7, 8]
    # A checkpoint not sealed (the bundle lost) is not advanced: the same entries again.
    again, _ = run(journal.path, unchanged)
    assert ports(again) == [6, 7, 8]


def test_a_journal_empty_at_first_sight_is_then_read_whole(journal: Journal) -> None:
    """Read while it held no auth entry, everything after is new: no first-read bound."""
    journal.append([("kernel", "booting")])
    records, checkpoint = run(journal.path, first_read_max_bytes=3000)
    assert ports(records) == [] and checkpoint == {f"journal:{journal.path}": {"cursor": None}}
    journal.append(journal.logins(2, 40))
    read: list[int] = []
    for _ in range(20):
        records, checkpoint = run(journal.path, checkpoint, first_read_max_bytes=3000)
        assert not of(records, "log_gap")
        read += ports(records)
        if not of(records, "journal_source")[0].data["more"]:
            break
    assert read == list(range(2, 42))


def test_first_read_is_bounded_and_says_so(journal: Journal) -> None:
    journal.append(journal.logins(1, 40))
    records, checkpoint = run(journal.path, first_read_max_bytes=3000)
    [gap] = of(records, "log_gap")
    assert gap.data["cause"] == "first_read_limit" and gap.data["path"] == f"journal:{journal.path}"
    read = ports(records)
    assert read and read == list(range(41 - len(read), 41)) and len(read) < 40
    journal.append(journal.logins(41, 2))
    later, _ = run(journal.path, checkpoint, first_read_max_bytes=3000)
    assert ports(later) == [41, 42] and not of(later, "log_gap")


def test_a_run_reads_at_most_max_bytes_and_the_next_goes_on(journal: Journal) -> None:
    journal.append(journal.logins(1, 30))
    seen: list[int] = []
    checkpoint = None
    for _ in range(30):
        records, checkpoint = run(journal.path, checkpoint, max_bytes_per_run=2000)
        seen += ports(records)
        if not of(records, "journal_source")[0].data["more"]:
            break
    assert seen == list(range(1, 31))


def test_a_failing_journalctl_is_command_failed_and_keeps_the_cursor(journal: Journal) -> None:
    journal.append(journal.logins(1, 1))
    saved = {f"journal:{journal.path}": {"cursor": "s=nonsense;i=zz"}}
    ctx = CollectContext(options={"logs": {"sources": [
        {"journal": str(journal.path), "format": "journald"}]}})
    ctx.checkpoints = {"logs": saved}
    result = run_collector(logs.COLLECTOR, ctx)
    assert result.status == "partial"
    [failed] = [r for r in result.records if r.type == "command_failed"]
    assert failed.key == "journalctl" and "cursor" in failed.data["reason"]
    assert ctx.new_checkpoints["logs"] == saved
    assert coverage_gaps(result.records)


def test_missing_journalctl_is_unsupported_not_a_gap(journal: Journal,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_journald, "which", lambda tool: None)
    records, _ = run(journal.path)
    [record] = records
    assert record.type == "unsupported" and record.data["reason"] == "journalctl is not installed"
    assert coverage_gaps(records) == []


def test_journal_source_off_while_auth_log_exists(tmp_path: Path) -> None:
    """The default sources on a host with rsyslog: auth.log is read, the journal
    (holding the same entries) is not; without auth.log the journal is read."""
    (tmp_path / "var" / "log").mkdir(parents=True)
    ctx = CollectContext(root=tmp_path)
    records = list(logs.collect(ctx))
    assert [r.type for r in records] == ["source_missing", "source_missing"]
    assert records[1].key == "/var/log/journal"  # the fixture tree's journal, absent
    (tmp_path / "var" / "log" / "auth.log").write_text("")
    records = list(logs.collect(CollectContext(root=tmp_path)))
    [skipped] = of(records, "source_skipped")
    assert skipped.data == {"source": "journal:system", "skip_if_exists": "/var/log/auth.log"}
    assert of(records, "log_source") and not of(records, "journal_source")
