"""The journald source through the real `gamsa collect` (tests/journal_fixtures.py):
entries sealed exactly once across collections, verify clean; as an ordinary user a
journal it may not read is a coverage gap, the collection partial, never an error."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from signing.bundle import iter_record_lines
from tests.agent.test_partial import sealed_collectors
from tests.agent.unprivileged import UserEnv
from tests.conftest import GamsaEnv, ok
from tests.journal_fixtures import Journal, journal_tools


def configure(env: GamsaEnv, journal: Path) -> None:
    env.write_config(collectors='["logs"]',
                     extra=f'[collectors.logs]\nsources = [{{ journal = "{journal}", '
                           f'format = "journald" }}]\n')


def sealed_ports(store: Path) -> Counter[int]:
    seen: Counter[int] = Counter()
    for path in sorted(store.rglob("*.records.jsonl.gz")):
        for line in iter_record_lines(path.read_bytes(), str(path)):
            record = json.loads(line)
            if record["collector"] == "logs" and record["type"] == "access":
                seen[record["data"]["source_port"]] += 1
    return seen


def test_journal_entries_sealed_once_across_collections(gamsa_env: GamsaEnv) -> None:
    journal_tools()
    journal = Journal(gamsa_env.root / "host.journal")
    configure(gamsa_env, journal.path)
    journal.append(journal.logins(1, 3))
    ok(gamsa_env.run("collect"))
    ok(gamsa_env.run("collect"))  # nothing new: nothing repeated
    journal.append(journal.logins(4, 2))
    ok(gamsa_env.run("collect"))
    assert sealed_ports(gamsa_env.store) == Counter({n: 1 for n in range(1, 6)})
    result = gamsa_env.run("verify")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_sigkill_at_every_step_seals_each_entry_exactly_once(gamsa_env: GamsaEnv) -> None:
    """The cursor moves with the bundle: killed at any state-writing step, the next
    collection neither skips nor repeats an entry."""
    journal_tools()
    journal = Journal(gamsa_env.root / "host.journal")
    configure(gamsa_env, journal.path)
    journal.append(journal.logins(1, 2))
    ok(gamsa_env.run("collect"))
    crashed_steps = []
    for step in range(1, 60):
        journal.append(journal.logins(journal.written + 1, 2))
        crashed = gamsa_env.run("collect", crash_at=step)
        if crashed.returncode == 0:
            break
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        crashed_steps.append(step)
        journal.append(journal.logins(journal.written + 1, 1))
        ok(gamsa_env.run("collect"))
        assert sealed_ports(gamsa_env.store) == Counter(range(1, journal.written + 1)), step
    else:
        raise AssertionError("collect never ran to completion")
    assert len(crashed_steps) >= 8
    ok(gamsa_env.run("collect"))
    assert sealed_ports(gamsa_env.store) == Counter(range(1, journal.written + 1))


def test_unreadable_journal_is_a_coverage_gap(user_env: UserEnv) -> None:
    journal_tools()
    journal = Journal(user_env.root / "host.journal")
    journal.append(journal.logins(1, 2))
    os.chmod(journal.path, 0o640)  # root's, as /var/log/journal is to a non-member
    private = user_env.root / "private"
    private.mkdir(mode=0o700)  # root's: nobody may not even look inside
    user_env.write_config(collectors='["logs"]', extra=(
        f'[collectors.logs]\nsources = [{{ journal = "{journal.path}", format = "journald" }}, '
        f'{{ journal = "{private}/x.journal", format = "journald" }}]\n'))
    result = user_env.run_as_user("collect", "--no-ship")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    logs = sealed_collectors(user_env.state_dir)["logs"]
    assert logs["status"] == "partial"
    assert logs["gaps"] == [
        {"reason": "journal: permission denied: the agent needs root or group systemd-journal",
         "count": 1},
        {"reason": "unreadable: PermissionError: Permission denied", "count": 1}]
    assert any(line.startswith("gamsa: logs partial") or " logs partial" in line
               for line in result.stderr.splitlines()), result.stderr
