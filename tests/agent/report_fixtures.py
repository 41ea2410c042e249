"""A mirror for the report tests, made the real way: bundles sealed by the agent's own
code from two hosts (each its own state dir and key), shipped to one file:// store and
pulled with the real CLI; then one bundle of host-b removed from the mirror (a gap).

host-a: 3 bundles of accounts, files and logs records (an account added, a file
changed, access records over six months with a spike in 2026-09).
host-b: 5 bundles with AI egress from a process named like a script tag, a partial
collector (a coverage_gap record) in its 2nd bundle, and seq 3 removed: the gap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.agent.mirror_fixtures import agent_key, pull
from tests.conftest import GamsaEnv, ok

PLANTED = "<script>alert('pwned')</script>"
GAP_HOST = "host-b"
GAP_SEQ = 3
MONTHS = ("2026-06", "2026-07", "2026-08", "2026-09", "2026-10", "2026-11")
SPIKE_MONTH = "2026-09"


def collector(name: str, make: Callable[[], Sequence[Any]]) -> Any:
    """A collector called `name` emitting the records `make()` builds."""
    from collector.registry import Collector, RecordType

    return Collector(name=name, version="1", description=f"{name} (report tests)",
                     platforms=("linux", "darwin", "win32"),
                     record_types={"any": RecordType(doc="test", key="k", fields={})},
                     collect=lambda _ctx: list(make()))


def _record(collector_name: str, kind: str, key: str, data: dict[str, Any]) -> Any:
    from collector.record import Record

    return Record(collector_name, kind, key, data)


def _user(name: str, sudo: bool) -> Any:
    return _record("accounts", "user", name, {"uid": 1000, "sudo": sudo})


def _access(n: int, month: str, action: str) -> Any:
    return _record("logs", "access", f"/var/log/auth.log:{month}:{action}:{n}",
                   {"action": action, "time": f"{month}-10T09:00:00Z", "account": "kim"})


def _seal(env: GamsaEnv, host: str, bundles: Sequence[Sequence[Any]]) -> None:
    from agent.config import load_config
    from agent.seal import seal_collection
    from agent.state import StateDir

    config = load_config(env.config, {})
    state = StateDir(config.state_dir)
    with state.locked():
        for collectors in bundles:
            seal_collection(config, host, list(collectors), "schedule", state)
    ok(env.run("ship"))


def host_a_bundles() -> list[list[Any]]:
    access: list[Any] = []
    for month in MONTHS:
        logins = 40 if month == SPIKE_MONTH else 10 + MONTHS.index(month) % 2
        access += [_access(i, month, "ssh_login") for i in range(logins)]
        access += [_access(i, month, "ssh_login_failed") for i in range(2)]
        access += [_access(i, month, "sudo") for i in range(3)]
    return [
        [collector("accounts", lambda: [_user("root", True), _user("kim", False)])],
        [collector("accounts", lambda: [_user("root", True), _user("kim", True),
                                        _user("lee", False)]),
         collector("files", lambda: [_record("files", "file_change", "/etc/sudoers",
                                             {"path": "/etc/sudoers", "change": "modified",
                                              "changed_fields": ["sha256"]})])],
        [collector("logs", lambda: access)],
    ]


def host_b_bundles() -> list[list[Any]]:
    egress = _record("ai_egress", "ai_egress_observed", "api.openai.com 42:1",
                     {"endpoint": "api.openai.com", "matched": ["api.openai.com"],
                      "first_seen": "2026-11-01T00:00:00.000000Z",
                      "last_seen": "2026-11-01T00:05:00.000000Z", "count": 7,
                      "continued": 0, "pid": 42, "process_name": PLANTED, "user": "svc",
                      "exe": "/opt/app/<b>bin</b>", "process_unknown_reason": None})
    gap = _record("processes", "coverage_gap", "processes:exe",
                  {"source": "exe", "reason": "AccessDenied: not root", "count": 5})
    return [
        [collector("ai_egress", lambda: [egress])],
        [collector("processes", lambda: [gap])],
        [collector("ai_egress", lambda: [egress])],
        [collector("ai_egress", lambda: [egress])],
        [collector("ai_egress", lambda: [egress])],
    ]


@dataclass(frozen=True)
class ReportMirror:
    env: GamsaEnv
    mirror: Path


def make_report_mirror(env: GamsaEnv, tmp_path: Path) -> ReportMirror:
    """The mirror described above; `env` is host-a's agent and runs the CLI."""
    other = GamsaEnv(tmp_path / "b", tmp_path / "b" / "agent.toml", tmp_path / "b" / "state",
                     env.store)
    other.root.mkdir()
    other.write_config()
    _seal(env, "host-a", host_a_bundles())
    _seal(other, GAP_HOST, host_b_bundles())
    mirror = tmp_path / "mirror"
    code, report, stderr = pull(env, mirror, "--trust", agent_key(other))
    assert code == 0, (report, stderr)
    removed = 0
    for path in (mirror / "v1" / f"host={GAP_HOST}").rglob(f"{GAP_SEQ:010d}-*"):
        os.unlink(path)
        removed += 1
    assert removed == 2, removed
    return ReportMirror(env, mirror)
