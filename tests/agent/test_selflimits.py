"""Self-limits: a collector that overruns its timeout is abandoned and the bundle still
sealed; the agent's own cost is in every manifest; the daemon's self-watch (clock
jumps, lasting ship failures, spool pressure) notes each transition once."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.selfwatch import ClockWatch, ShipHealth, SpoolPressure
from agent.state import SpoolUsage
from collector._timeout import run_bounded
from collector.record import Record
from collector.registry import CollectContext, Collector
from tests.agent.test_daemon import Running, assert_verifies_one_chain, manifests
from tests.agent.test_lifelog import sealed_agent_records
from tests.conftest import GamsaEnv, ok


def blocking_collector(release: threading.Event) -> Collector:
    def collect(ctx: CollectContext) -> Iterator[Record]:
        ctx.set_checkpoint("slow", {"offset": 99})
        yield Record("slow", "thing", "a", {})
        release.wait(30)

    return Collector("slow", "1", "blocks", ("linux", "darwin"), {}, collect)


def test_an_overrun_is_abandoned_its_checkpoint_dropped_and_it_is_not_restarted() -> None:
    release = threading.Event()
    slow = blocking_collector(release)
    ctx = CollectContext()
    result = run_bounded(slow, ctx, 0.3)
    assert result.status == "error" and "timed out after 0.3 s" in (result.error or "")
    # what it streamed before the timeout is sealed (as with an error), then the timeout
    assert [r.type for r in result.records] == ["thing", "collector_timeout"]
    assert result.records[-1].data["records_before_timeout"] == 1
    assert ctx.new_checkpoints == {}, "an abandoned run never moves a checkpoint"
    again = run_bounded(slow, CollectContext(), 0.3)
    assert [r.type for r in again.records] == ["collector_skipped"]
    assert again.status == "error" and "still running" in (again.error or "")
    release.set()
    for thread in threading.enumerate():
        if thread.name == "gamsa-collector-slow":
            thread.join(10)
    done = CollectContext()
    finished = run_bounded(slow, done, 5)
    assert finished.status == "ok" and done.new_checkpoints == {"slow": {"offset": 99}}


def fake_tool(bin_dir: Path, name: str, seconds: int) -> None:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f"#!/bin/sh\nexec sleep {seconds}\n")
    tool.chmod(0o755)


def test_a_collector_past_its_timeout_is_recorded_and_the_bundle_still_sealed(
        gamsa_env: GamsaEnv) -> None:
    # a firewall tool that hangs (8 s) on a 2 s timeout: firewall is abandoned
    fake_tool(gamsa_env.root / "bin", "nft", 8)
    gamsa_env.write_config('[schedule]\ndefault = "2s"\nheartbeat = "1h"\ntimeout = "2s"\n',
                           collectors='["host", "firewall", "agent"]')
    path = f"{gamsa_env.root / 'bin'}:{os.environ['PATH']}"
    daemon = Running(gamsa_env, extra_env={"PATH": path})
    try:
        daemon.wait_line("firewall error", count=2, timeout=40)
        daemon.stop()
    finally:
        daemon.kill()
    assert_verifies_one_chain(gamsa_env)
    first, second = manifests(gamsa_env)[:2]
    statuses = {c["name"]: c for c in first["predicate"]["collectors"]}
    assert statuses["host"]["status"] == "ok" and statuses["agent"]["status"] == "ok"
    assert statuses["firewall"]["status"] == "error"
    assert "timed out after 2 s" in statuses["firewall"]["error"]
    # Each sweep is sealed by a fresh child (agent/store_child.py) whose process group
    # is ended after it: the hung run does not outlive it, so the next sweep runs the
    # collector again and records its timeout again (a daemon running sweeps itself
    # skips a run still going: `run_skipped`, collector/_timeout.py).
    again = {c["name"]: c for c in second["predicate"]["collectors"]}["firewall"]
    assert again["status"] == "error" and "timed out after 2 s" in again["error"]
    life = [r["type"] for r in sealed_agent_records(gamsa_env)]
    assert life.count("run_timeout") >= 2, life
    timeout = next(r for r in sealed_agent_records(gamsa_env) if r["type"] == "run_timeout")
    assert timeout["data"]["collector"] == "firewall"
    assert timeout["data"]["timeout_seconds"] == 2
    for statement in manifests(gamsa_env):
        used = statement["predicate"]["agent"]["resources"]
        assert set(used) == {"cpu_user_ms", "cpu_system_ms", "rss_bytes", "peak_rss_bytes"}
        assert all(type(v) is int and v >= 0 for v in used.values())
        assert 0 < used["rss_bytes"] <= used["peak_rss_bytes"] < 1 << 30


def test_collect_applies_the_timeout_too(gamsa_env: GamsaEnv) -> None:
    fake_tool(gamsa_env.root / "bin", "nft", 5)
    gamsa_env.write_config('[schedule.timeouts]\nfirewall = "1s"\n',
                           collectors='["host", "firewall"]')
    path = f"{gamsa_env.root / 'bin'}:{os.environ['PATH']}"
    result = ok(gamsa_env.run("collect", "--json", extra_env={"PATH": path}))
    summary = json.loads(result.stdout)
    assert summary["collectors"] == {"host": "ok", "firewall": "error"}
    assert "firewall error: timed out after 1 s" in result.stderr


# the daemon's self-watch, as state machines ------------------------------------------

def test_a_clock_step_is_a_jump_and_elapsed_time_is_not() -> None:
    wall, boot = [1000.0], [50.0]
    watch = ClockWatch(lambda: wall[0], lambda: boot[0])
    wall[0] += 30
    boot[0] += 30  # time passed (or a suspend: CLOCK_BOOTTIME counts it)
    assert watch.check() is None
    wall[0] -= 3600  # `date -s` an hour back
    boot[0] += 1
    jump = watch.check()
    assert jump is not None and jump["step_seconds"] == -3601
    assert jump["wall_before"] < "1970-01-02" and watch.check() is None


def test_ship_failures_are_noted_once_when_lasting_and_then_the_recovery() -> None:
    health = ShipHealth()
    assert health.succeeded() is None  # nothing to recover from
    assert health.failed("e1") is None and health.failed("e2") is None
    failing = health.failed("e3")
    assert failing is not None and (failing["failures"], failing["error"]) == (3, "e3")
    assert health.failed("e4") is None, "noted once"
    recovered = health.succeeded()
    assert recovered is not None and recovered["failures"] == 4
    assert recovered["since"] == failing["since"] and health.succeeded() is None


def test_spool_pressure_is_noted_up_and_down_without_flapping() -> None:
    pressure = SpoolPressure()
    assert pressure.check(SpoolUsage(1, 790, 1000)) is None
    high = pressure.check(SpoolUsage(2, 800, 1000))
    assert high is not None and high["level"] == "high"
    assert pressure.check(SpoolUsage(2, 750, 1000)) is None  # between the marks
    low = pressure.check(SpoolUsage(1, 100, 1000))
    assert low is not None and low["level"] == "relieved"


@pytest.mark.slow
def test_a_lasting_ship_failure_and_its_recovery_are_sealed(gamsa_env: GamsaEnv) -> None:
    gamsa_env.write_config('[schedule]\ndefault = "1h"\nheartbeat = "1h"\n',
                           collectors='["agent"]')
    gamsa_env.store.write_text("not a directory\n")  # every ship fails
    daemon = Running(gamsa_env)
    try:
        daemon.wait_line("shipping failed", count=3, timeout=60)
        gamsa_env.store.unlink()
        daemon.wait_line("shipped", timeout=60)
        # each event makes the agent collector due within 10 s: seq 2 seals the
        # failing, seq 3 the recovery
        daemon.wait_line("sealed seq 3", timeout=60)
        daemon.stop()
    finally:
        daemon.kill()
    types = [r["type"] for r in sealed_agent_records(gamsa_env)]
    assert "ship_failing" in types and "ship_recovered" in types, types
    failing = next(r for r in sealed_agent_records(gamsa_env) if r["type"] == "ship_failing")
    assert failing["data"]["failures"] == 3 and "not a directory" in failing["data"]["error"]
    assert_verifies_one_chain(gamsa_env)
