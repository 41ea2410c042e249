"""A non-root `gamsa collect` says what it could not see: `partial` in the sealed
manifest, with counted gaps, and one stderr line per partial collector.

Run as the unprivileged `nobody` (see tests/agent/unprivileged.py) against this
machine itself: root's processes, /etc/shadow and a root-only file are denied to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.cli import _warn_coverage
from agent.state import spooled_statement
from collector.registry import CollectContext, coverage_gap, run_collector
from tests.agent.unprivileged import UserEnv
from tests.collector.test_coverage import fake


def sealed_collectors(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The manifest's `collectors` entries of the one spooled bundle, by name."""
    manifests = list((state_dir / "spool").glob("*/manifest.dsse.json"))
    assert len(manifests) == 1, manifests
    statement = spooled_statement(manifests[0].read_bytes())
    return {c.name: c.to_json() for c in statement.predicate.collectors}


def test_non_root_collect_is_partial_and_says_so(user_env: UserEnv) -> None:
    secret_dir = user_env.root / "root-only"
    secret_dir.mkdir(mode=0o700)  # owned by root: nobody may not enter it
    (secret_dir / "app.conf").write_text("setting = 1\n")
    readable = user_env.root / "readable.conf"
    readable.write_text("setting = 2\n")
    os.chmod(readable, 0o644)
    user_env.write_config(
        extra=f'[collectors.files]\npaths = ["{secret_dir}/app.conf", "{readable}"]\n',
        collectors='["processes", "accounts", "files", "host"]')

    result = user_env.run_as_user("collect", "--no-ship")

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    entries = sealed_collectors(user_env.state_dir)
    shadow = Path("/etc/shadow")
    shadow_hidden = shadow.exists() and not shadow.stat().st_mode & 0o004
    assert {n: e["status"] for n, e in entries.items()} == {
        "processes": "partial", "accounts": "partial" if shadow_hidden else "ok",
        "files": "partial", "host": "ok"}
    assert entries["host"]["gaps"] == []

    # processes: root's executables (and so their hashes) are denied to nobody
    process_gaps = {g["reason"]: g["count"] for g in entries["processes"]["gaps"]}
    assert process_gaps.get("exe: access denied (not root, or a sandbox)", 0) >= 1, process_gaps
    # accounts: /etc/shadow (root:shadow 0640) among the unreadable sources
    account_gaps = {g["reason"]: g["count"] for g in entries["accounts"]["gaps"]}
    if shadow_hidden:
        assert account_gaps.get("unreadable: PermissionError: Permission denied", 0) >= 1
    # files: exactly the one path it could not reach; the readable one is collected
    assert entries["files"]["gaps"] == [
        {"reason": "unreadable: PermissionError: Permission denied", "count": 1}]

    # no path or user name in the manifest's gaps: it is not pseudonymized
    assert str(secret_dir) not in json.dumps(entries)

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    partial_lines = {line.split()[1]: line for line in lines if " partial: " in line}
    assert sorted(partial_lines) == (["accounts"] if shadow_hidden else []) + [
        "files", "processes"], lines
    assert partial_lines["files"] == ("gamsa: files partial: 1 item(s) not collected: "
                                      "unreadable: PermissionError: Permission denied (x1)")
    assert "exe: access denied" in partial_lines["processes"]
    assert "processes partial" in result.stdout  # the summary line names the status too


def test_collect_json_carries_the_gaps(user_env: UserEnv) -> None:
    user_env.write_config(collectors='["processes", "host"]')
    result = user_env.run_as_user("collect", "--no-ship", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["collectors"] == {"processes": "partial", "host": "ok"}
    assert list(summary["gaps"]) == ["processes"]
    assert sum(g["count"] for g in summary["gaps"]["processes"]) >= 1
    assert sealed_collectors(user_env.state_dir)["processes"]["gaps"] == \
        summary["gaps"]["processes"]


def test_root_collect_of_the_same_sources_is_ok(user_env: UserEnv) -> None:
    """The gaps above come from the missing privilege, not from the sources."""
    readable = user_env.root / "readable.conf"
    readable.write_text("setting = 2\n")
    user_env.write_config(extra=f'[collectors.files]\npaths = ["{readable}"]\n',
                          collectors='["files", "host"]')
    result = user_env.run("collect", "--no-ship")
    assert result.returncode == 0, result.stderr
    assert " partial" not in result.stderr
    assert {n: e["status"] for n, e in sealed_collectors(user_env.state_dir).items()} == {
        "files": "ok", "host": "ok"}


def test_collect_warns_one_line_per_failed_or_partial_collector(
        capsys: pytest.CaptureFixture[str]) -> None:
    results = [run_collector(fake([coverage_gap("fake", "exe", "access denied", 3)]),
                             CollectContext()),
               run_collector(fake([], fail=True), CollectContext()),
               run_collector(fake([]), CollectContext())]
    _warn_coverage(results)
    assert capsys.readouterr().err.splitlines() == [
        "gamsa: fake partial: 3 item(s) not collected: exe: access denied (x3)",
        "gamsa: fake error: RuntimeError: boom (its records up to the error are sealed, "
        "with a collector_error record)",
    ]
