"""Planted evidence for the query and diff tests: bundles whose records the test
chooses, sealed by the agent's own code under real collector names, shipped and
pulled with the real CLI (tests/agent/mirror_fixtures.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.conftest import GamsaEnv, ok


def planted(name: str, records: Sequence[tuple[str, str, dict[str, Any]]]) -> Any:
    """A collector called `name` (its real record types declared) that emits
    `records`, each (type, key, data), in order."""
    from collector.record import Record
    from collector.registry import Collector, all_collectors

    real = all_collectors().get(name)
    return Collector(
        name=name, version="1", description="planted records (tests)",
        platforms=("linux", "darwin", "win32"),
        record_types=real.record_types if real is not None else {},
        collect=lambda _ctx: [Record(name, rtype, key, data) for rtype, key, data in records])


def seal_bundles(env: GamsaEnv, host: str, bundles: Sequence[Sequence[Any]],
                 trigger: str = "schedule", ship: bool = True) -> None:
    """Seal one bundle per entry of `bundles` (each a list of `planted` collectors)
    for `host`, then ship them."""
    from agent.config import load_config
    from agent.seal import seal_collection
    from agent.state import StateDir

    config = load_config(env.config, {})
    state = StateDir(config.state_dir)
    with state.locked():
        for collectors in bundles:
            seal_collection(config, host, list(collectors), trigger, state)
    if ship:
        ok(env.run("ship"))
