"""Helpers that make a verified mirror the real way: bundles sealed by the agent's own
code, shipped and pulled with the real CLI (used by the pull, query, diff, export and
report tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.agent.s3_fixtures import tiny_collector
from tests.conftest import GamsaEnv, ok


def seal(env: GamsaEnv, count: int, host: str = "test-host", collector: Any = None) -> None:
    """Seal `count` small bundles of `host` in this process (one record each, or what
    `collector` gives), then ship them (real CLI)."""
    from agent.config import load_config
    from agent.seal import seal_collection
    from agent.state import StateDir

    config = load_config(env.config, {})
    state = StateDir(config.state_dir)
    with state.locked():
        for _ in range(count):
            seal_collection(config, host, [collector or tiny_collector()], "schedule", state)
    ok(env.run("ship"))


def agent_key(env: GamsaEnv) -> str:
    return str(env.state_dir / "keys" / "agent.json")


def pull(env: GamsaEnv, mirror: Path, *args: str, store: str | None = None,
         crash_at: int | None = None) -> tuple[int, dict[str, Any], str]:
    """`gamsa pull --json` of the env's store into `mirror`: (exit, report, stderr)."""
    result = env.run("pull", "--store", store or env.store_url, "--to", str(mirror),
                     "--trust", agent_key(env), "--json", *args, crash_at=crash_at)
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, report, result.stderr


def ticks_collector(count: int) -> Any:
    """A collector of `count` records (n = 1..count): bundles with a real Merkle tree."""
    from collector.record import Record
    from collector.registry import Collector, Field, RecordType

    return Collector(
        name="tick", version="1", description="count records per run (tests)",
        platforms=("linux", "darwin", "win32"),
        record_types={"tick": RecordType(doc="a tick", key="n",
                                         fields={"n": Field((int,), "a counter")})},
        collect=lambda _ctx: [Record("tick", "tick", str(n), {"n": n})
                              for n in range(1, count + 1)])
