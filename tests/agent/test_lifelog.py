"""The agent's own life: the journal (agent/lifelog.py writes, collector/agent.py drains).

Real files in a temp state dir; `gamsa collect` and `gamsa agent run` as real
subprocesses where sealing and crashes matter.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from agent import lifelog
from agent.lifelog import note
from collector.agent import (
    JOURNAL_FILE,
    JOURNAL_PREVIOUS_FILE,
    drain,
)
from tests.agent.test_daemon import Running, assert_verifies_one_chain, manifests
from tests.conftest import GamsaEnv, ok


def refused(state: Path, reason: str = "bad config") -> None:
    note(state, "config_refused", reason=reason)


def event_records(found: Any) -> list[Any]:
    return [r for r in found.records if r.type not in ("journal_gap", "malformed_line")]


def test_each_event_is_drained_once_with_its_checkpoint(tmp_path: Path) -> None:
    for reason in ("one", "two", "three"):
        refused(tmp_path, reason)
    assert oct((tmp_path / JOURNAL_FILE).stat().st_mode & 0o777) == "0o600"
    first = drain(tmp_path, None)
    assert [r.data["reason"] for r in first.records] == ["one", "two", "three"]
    assert [r.data["n"] for r in first.records] == [1, 2, 3]
    assert all(r.key == f"{first.journal}:{r.data['n']}" for r in first.records)
    checkpoint = {"journal": first.journal, "through": first.through}
    assert drain(tmp_path, checkpoint).records == []
    refused(tmp_path, "four")
    later = drain(tmp_path, checkpoint)
    assert [r.data["reason"] for r in later.records] == ["four"] and later.through == 4


def test_a_torn_last_line_is_not_an_event_and_the_next_writer_cuts_it(tmp_path: Path) -> None:
    refused(tmp_path, "kept")
    with (tmp_path / JOURNAL_FILE).open("ab") as journal:  # a write cut by kill -9
        journal.write(b'{"at": "2026-12-02T00:00:00Z", "event": "config_ref')
    assert [r.data["reason"] for r in drain(tmp_path, None).records] == ["kept"]
    refused(tmp_path, "next")
    lines = (tmp_path / JOURNAL_FILE).read_bytes().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)
    found = drain(tmp_path, None)
    assert [(r.data["reason"], r.data["n"]) for r in found.records] == [("kept", 1),
                                                                       ("next", 2)]


def test_the_journal_is_bounded_and_events_rotated_away_unsealed_are_a_gap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifelog, "JOURNAL_PART_MAX_BYTES", 1000)
    for index in range(40):
        refused(tmp_path, f"event {index}")
    for part in (JOURNAL_FILE, JOURNAL_PREVIOUS_FILE):
        assert (tmp_path / part).stat().st_size < 1000 + 300
    found = drain(tmp_path, None)
    gaps = [r for r in found.records if r.type == "journal_gap"]
    events = event_records(found)
    assert len(gaps) == 1 and gaps[0].data["reason"] == "rotated"
    assert gaps[0].data["first"] == 1
    assert gaps[0].data["count"] + len(events) == 40, "every event is sealed or counted"
    assert [r.data["n"] for r in events] == list(range(41 - len(events), 41))
    # sealed up to 40: nothing more is reported later, however the parts rotate
    assert drain(tmp_path, {"journal": found.journal, "through": 40}).records == []


def test_a_removed_line_and_a_replaced_journal_are_gaps(tmp_path: Path) -> None:
    for reason in ("a", "b", "c", "d"):
        refused(tmp_path, reason)
    path = tmp_path / JOURNAL_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1] + lines[2:]) + b"not json\n")
    found = drain(tmp_path, None)
    gap = next(r for r in found.records if r.type == "journal_gap")
    assert (gap.data["reason"], gap.data["first"], gap.data["count"]) == ("missing", 2, 1)
    assert [r.data["reason"] for r in event_records(found)] == ["a", "c", "d"]
    # the bad line at the end waits for an event after it, then is recorded once
    assert not [r for r in found.records if r.type == "malformed_line"]
    checkpoint = {"journal": found.journal, "through": 4}
    refused(tmp_path, "e")
    later = drain(tmp_path, checkpoint)
    assert [r.type for r in later.records] == ["malformed_line", "config_refused"]
    path.unlink()  # the journal wiped under a checkpoint
    refused(tmp_path, "after")
    replaced = drain(tmp_path, {"journal": found.journal, "through": 5})
    gap = next(r for r in replaced.records if r.type == "journal_gap")
    assert (gap.data["journal"], gap.data["reason"], gap.data["count"]) == (
        found.journal, "replaced", None)
    assert replaced.journal != found.journal


def test_a_wrong_event_is_a_bug_and_secrets_never_reach_the_journal(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown event"):
        note(tmp_path, "agent_exploded", why="x")
    with pytest.raises(ValueError, match="fields"):
        note(tmp_path, "config_refused", reason="x", extra=1)
    with pytest.raises(ValueError, match="is int"):
        note(tmp_path, "config_refused", reason=3)
    refused(tmp_path, "store: password=hunter2secret " + "x" * 2000)
    text = (tmp_path / JOURNAL_FILE).read_text()
    assert "hunter2secret" not in text and "[REDACTED" in text
    assert len(text) < 1000


def sealed_agent_records(env: GamsaEnv) -> list[dict[str, Any]]:
    found = []
    for path in sorted(env.store.rglob("*.records.jsonl.gz")):
        for line in gzip.decompress(path.read_bytes()).splitlines():
            record = json.loads(line)
            if record["collector"] == "agent":
                found.append(record)
    return found


@pytest.mark.slow
def test_sigkill_at_every_step_seals_each_event_exactly_once(gamsa_env: GamsaEnv) -> None:
    gamsa_env.write_config(collectors='["agent"]')
    noted = 0
    for step in range(1, 60):
        noted += 1
        refused(gamsa_env.state_dir, f"before crash {step}")
        crashed = gamsa_env.run("collect", crash_at=step)
        if crashed.returncode == 0:
            break
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    else:
        pytest.fail("collect never ran to completion")
    noted += 1
    refused(gamsa_env.state_dir, "last")
    ok(gamsa_env.run("collect"))
    assert step > 10, "sealing has more than ten steps; all were crashed at"
    events = [r for r in sealed_agent_records(gamsa_env) if r["type"] == "config_refused"]
    numbers = [r["data"]["n"] for r in events]
    assert sorted(numbers) == list(range(1, noted + 1)), "each event sealed exactly once"
    assert not [r for r in sealed_agent_records(gamsa_env) if r["type"] == "journal_gap"]
    assert_verifies_one_chain(gamsa_env)


def test_daemon_start_and_stop_are_sealed_and_status_follows_it(gamsa_env: GamsaEnv) -> None:
    gamsa_env.write_config('[schedule]\ndefault = "1h"\nheartbeat = "1h"\n',
                           collectors='["host", "agent"]')
    for _run in range(2):
        daemon = Running(gamsa_env)
        try:
            daemon.wait_line("sealed seq")
            status = ok(gamsa_env.run("status", "--json"))
            info = json.loads(status.stdout)["daemon"]
            assert info["running"] and info["pid"] == daemon.proc.pid, info
            assert info["status"]["last_sealed"]["trigger"] == "schedule"
            assert set(info["status"]["next_due"]) == {"host", "agent"}
            text = ok(gamsa_env.run("status")).stdout
            assert f"daemon: running (pid {daemon.proc.pid}" in text
            daemon.stop()
        finally:
            daemon.kill()
    info = json.loads(ok(gamsa_env.run("status", "--json")).stdout)["daemon"]
    assert not info["running"] and info["status"]["stopped"], info
    assert "daemon: not running" in ok(gamsa_env.run("status")).stdout
    assert_verifies_one_chain(gamsa_env)
    types = [r["type"] for r in sealed_agent_records(gamsa_env)
             if r["type"] not in ("journal",)]
    # the second start's sweep sealed the first stop; the second stop waits in the journal
    assert types == ["agent_start", "config_loaded", "agent_stop", "agent_start",
                     "config_loaded"], types
    stop = next(r for r in sealed_agent_records(gamsa_env) if r["type"] == "agent_stop")
    assert stop["data"]["signal"] == "SIGTERM"
    start = next(r for r in sealed_agent_records(gamsa_env) if r["type"] == "config_loaded")
    assert start["data"]["config_sha256"] == manifests(gamsa_env)[0]["predicate"]["agent"][
        "config_sha256"]
    assert json.loads((gamsa_env.state_dir / JOURNAL_FILE).read_bytes().splitlines()[-1])[
        "event"] == "agent_stop"
    assert os.stat(gamsa_env.state_dir / JOURNAL_FILE).st_mode & 0o077 == 0


def test_watch_overflow_is_one_call_for_the_watcher(tmp_path: Path) -> None:
    assert lifelog.watch_overflow(tmp_path, "files", "inotify queue overflow", 12) is None
    (record,) = drain(tmp_path, None).records
    assert (record.type, record.data["watcher"], record.data["paths"]) == (
        "watch_overflow", "files", 12)
    (tmp_path / "lifelog.lock").chmod(0o000)
    if os.geteuid() != 0:  # root opens it anyway
        problem = lifelog.watch_overflow(tmp_path, "files", "again", 1)
        assert problem is not None and "lifelog" in problem


def test_status_after_a_kill_9_says_the_daemon_is_not_running(gamsa_env: GamsaEnv) -> None:
    gamsa_env.write_config('[schedule]\ndefault = "1h"\nheartbeat = "1h"\n')
    daemon = Running(gamsa_env)
    try:
        daemon.wait_line("sealed seq 1")
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
    finally:
        daemon.kill()
    text = ok(gamsa_env.run("status")).stdout
    assert f"daemon: not running (pid {daemon.proc.pid} last reported at" in text
    assert "did not stop cleanly" in text


def test_a_journal_lock_held_too_long_fails_the_note_instead_of_hanging(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    from collector import agent as agent_collector

    monkeypatch.setattr(agent_collector, "LOCK_WAIT_SECONDS", 0.3)
    refused(tmp_path, "first")
    holder = os.open(tmp_path / "lifelog.lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another process's stuck hold, as seen here
        problem = lifelog.note_quietly(tmp_path, "config_refused", reason="second")
    finally:
        os.close(holder)
    assert problem is not None and "lock is held too long" in problem
    assert len((tmp_path / JOURNAL_FILE).read_bytes().splitlines()) == 1


@pytest.mark.slow
def test_reloads_refused_and_applied_are_sealed_with_their_hash(gamsa_env: GamsaEnv) -> None:
    gamsa_env.write_config('[schedule]\ndefault = "1h"\nheartbeat = "1h"\n',
                           collectors='["agent"]')
    daemon = Running(gamsa_env)
    try:
        daemon.wait_line("sealed seq 1")
        good = gamsa_env.config.read_text()
        gamsa_env.config.write_text(good + "[nonsense]\n")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_line("config reload refused")
        daemon.wait_line("sealed seq 2", timeout=40)  # a life event: sealed within 10 s
        gamsa_env.config.write_text(good + "# edited\n")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_line("config reloaded")
        daemon.wait_line("sealed seq 3", timeout=40)
        daemon.stop()
    finally:
        daemon.kill()
    assert_verifies_one_chain(gamsa_env)
    records = sealed_agent_records(gamsa_env)
    refused_record = next(r for r in records if r["type"] == "config_refused")
    assert "nonsense" in refused_record["data"]["reason"]
    reloaded = [r for r in records if r["type"] == "config_loaded"]
    assert [r["data"]["reason"] for r in reloaded] == ["start", "reload"]
    assert reloaded[1]["data"]["config_sha256"] == hashlib.sha256(
        gamsa_env.config.read_bytes()).hexdigest()
    assert manifests(gamsa_env)[-1]["predicate"]["agent"]["config_sha256"] == \
        reloaded[1]["data"]["config_sha256"]
