"""`gamsa agent run` as a real subprocess: schedule, heartbeat, signals, systemd, logs.

Intervals of 1-2 s via a test config; each test stops the daemon with SIGTERM and
verifies the store (one chain, no fork, nothing half-written).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GAMSA, GamsaEnv

FAST = '[schedule]\ndefault = "1s"\nheartbeat = "1h"\n'


class Running:
    """A daemon subprocess whose stderr goes to a file we can poll."""

    def __init__(self, env: GamsaEnv, *args: str, extra_env: dict[str, str] | None = None,
                 log: str = "daemon.log") -> None:
        self.log_path = env.root / log
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("GAMSA_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        environ["GAMSA_CONFIG"] = str(env.config)
        environ.update(extra_env or {})
        with self.log_path.open("w") as err:
            self.proc = subprocess.Popen([GAMSA, "agent", "run", *args], env=environ,
                                         stdout=subprocess.DEVNULL, stderr=err)

    def lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            assert self.proc.poll() is None, f"daemon exited ({what}): {self.lines()}"
            time.sleep(0.1)
        pytest.fail(f"timed out waiting for {what}: {self.lines()}")

    def wait_line(self, text: str, count: int = 1, timeout: float = 20) -> None:
        self.wait_for(lambda: sum(text in line for line in self.lines()) >= count,
                      f"{count} x {text!r}", timeout)

    def stop(self) -> float:
        """SIGTERM; the seconds it took to exit 0."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=10)
        took = time.monotonic() - started
        assert rc == 0, self.lines()
        return took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemons() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for d in started:
        d.kill()


def start(daemons: list[Running], env: GamsaEnv, *args: str, **kw: Any) -> Running:
    d = Running(env, *args, **kw)
    daemons.append(d)
    return d


def manifests(env: GamsaEnv) -> list[dict[str, Any]]:
    """The statements of every manifest in the store, in seq order."""
    found = sorted(env.store.rglob("*.manifest.dsse.json"))
    return [json.loads(base64.b64decode(json.loads(p.read_bytes())["payload"])) for p in found]


def assert_verifies_one_chain(env: GamsaEnv) -> dict[str, Any]:
    result = env.run("verify", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["findings"]
    assert len(report["chains"]) == 1, report["chains"]
    chain = report["chains"][0]
    assert chain["first_seq"] == 1 and chain["last_seq"] == chain["bundles"], chain
    assert not list((env.state_dir / "spool").iterdir())  # everything shipped
    for where in (env.store, env.state_dir):
        assert not [p for p in where.rglob(".tmp-*")], f"half-written files in {where}"
    return report


@pytest.mark.parametrize("kind", ["abstract", "path"])
def test_start_sweep_systemd_notify_and_sigterm(gamsa_env: GamsaEnv, daemons: list[Running],
                                                kind: str) -> None:
    gamsa_env.write_config(FAST)
    if kind == "abstract":  # `@name`, as systemd may hand out
        address = f"@gamsa-test-{secrets.token_hex(6)}"
    else:
        address = str(gamsa_env.root / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + address[1:] if kind == "abstract" else address)
        sock.settimeout(0.2)
        d = start(daemons, gamsa_env,
                  extra_env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
        got: list[str] = []

        def received(message: str) -> bool:
            try:
                while True:
                    got.extend(sock.recv(4096).decode().splitlines())
            except TimeoutError:
                pass
            return any(m.startswith(message) for m in got)

        d.wait_for(lambda: received("READY=1"), "READY=1")
        # READY comes after the start sweep was sealed
        assert any("sealed seq 1 (schedule: host ok" in line for line in d.lines())
        d.wait_for(lambda: received("WATCHDOG=1") and
                   sum(m == "WATCHDOG=1" for m in got) >= 2, "two WATCHDOG=1 pings")
        assert any(m.startswith("STATUS=sealed seq") for m in got), got
        d.wait_line("sealed seq 3")
        took = d.stop()
        assert took < 10
        received("STOPPING=1")
        assert "STOPPING=1" in got
    assert d.lines()[-1] == "gamsa: agent stopped"
    report = assert_verifies_one_chain(gamsa_env)
    assert report["chains"][0]["bundles"] >= 3
    triggers = [m["predicate"]["collection"]["trigger"] for m in manifests(gamsa_env)]
    assert set(triggers) == {"schedule"}, triggers


def test_second_daemon_on_the_same_state_dir_refuses(gamsa_env: GamsaEnv,
                                                     daemons: list[Running]) -> None:
    gamsa_env.write_config(FAST)
    first = start(daemons, gamsa_env)
    first.wait_line("sealed seq 1")
    second = gamsa_env.run("agent", "run", timeout=20)
    assert second.returncode == 3, second.stderr
    assert second.stderr.count("\n") == 1, second.stderr
    assert f"another `gamsa agent run` (pid {first.proc.pid})" in second.stderr
    assert "daemon.lock" in second.stderr
    assert first.proc.poll() is None
    first.stop()
    assert_verifies_one_chain(gamsa_env)


@pytest.mark.slow
def test_sighup_refuses_a_broken_config_and_applies_a_good_one(gamsa_env: GamsaEnv,
                                                              daemons: list[Running]) -> None:
    gamsa_env.write_config(FAST)
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 2")
    good = gamsa_env.config.read_text()
    gamsa_env.config.write_text(good + "[schedule]\ndefault = 'soon'\n")  # broken: two tables
    d.proc.send_signal(signal.SIGHUP)
    d.wait_line("config reload refused, keeping the old config")
    refused = [line for line in d.lines() if "reload refused" in line]
    assert len(refused) == 1 and str(gamsa_env.config) in refused[0], refused
    sealed_before = sum("sealed seq" in line for line in d.lines())
    d.wait_line("sealed seq", count=sealed_before + 2)  # still collecting, old schedule
    gamsa_env.write_config(FAST, collectors='["host", "network"]')
    d.proc.send_signal(signal.SIGHUP)
    d.wait_line("config reloaded")
    d.wait_line("host ok, network", timeout=20)
    d.stop()
    assert_verifies_one_chain(gamsa_env)
    configs = {m["predicate"]["agent"]["config_sha256"] for m in manifests(gamsa_env)}
    assert len(configs) == 2, "the reloaded config's hash is in the later manifests"


def test_collect_during_the_daemon_extends_the_same_chain(gamsa_env: GamsaEnv,
                                                          daemons: list[Running]) -> None:
    gamsa_env.write_config(FAST)
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 1")
    for _ in range(3):
        result = gamsa_env.run("collect")
        assert result.returncode == 0, result.stderr
    d.wait_line("sealed seq", count=3)
    d.stop()
    assert_verifies_one_chain(gamsa_env)
    statements = manifests(gamsa_env)
    seqs = sorted(m["predicate"]["chain"]["seq"] for m in statements)
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    triggers = [m["predicate"]["collection"]["trigger"] for m in statements]
    assert triggers.count("on-demand") == 3 and "schedule" in triggers, triggers


def test_sigterm_during_the_start_sweep_finishes_that_bundle(gamsa_env: GamsaEnv,
                                                             daemons: list[Running]) -> None:
    gamsa_env.write_config(FAST, collectors='["host", "network"]')
    d = start(daemons, gamsa_env)
    d.wait_line("agent started", timeout=20)
    took = d.stop()  # the start sweep is in hand: it is sealed, spooled and shipped
    assert took < 10
    assert any("sealed seq 1 (schedule: host ok, network" in line for line in d.lines())
    assert_verifies_one_chain(gamsa_env)
    assert len(manifests(gamsa_env)) == 1


def test_heartbeat_bundle_when_collectors_are_far_apart(gamsa_env: GamsaEnv,
                                                        daemons: list[Running]) -> None:
    gamsa_env.write_config('[schedule]\ndefault = "1h"\nheartbeat = "1s"\n')
    d = start(daemons, gamsa_env)
    d.wait_line("(heartbeat: no collectors; 0 records)", count=2)
    d.stop()
    assert_verifies_one_chain(gamsa_env)
    statements = manifests(gamsa_env)
    first, *rest = statements
    assert first["predicate"]["collection"]["trigger"] == "schedule"
    assert rest and {m["predicate"]["collection"]["trigger"] for m in rest} == {"heartbeat"}
    assert all(m["predicate"]["records"]["count"] == 0 for m in rest)
    assert all(m["predicate"]["collectors"] == [] for m in rest)


def test_json_log_lines_parse(gamsa_env: GamsaEnv, daemons: list[Running]) -> None:
    gamsa_env.write_config(FAST)
    d = start(daemons, gamsa_env, "--log-format", "json")
    d.wait_line('"event": "sealed"', count=2)
    stat = Path(f"/proc/{d.proc.pid}/stat").read_text()
    # nice 10 is an increment: under a niced test run the daemon is niced further (max 19).
    assert int(stat.rsplit(")", 1)[1].split()[16]) == min(19, os.nice(0) + 10), "niced 10"
    d.stop()
    events = [json.loads(line) for line in d.lines()]
    assert {"time", "level", "event", "message"} <= set(events[0])
    names = [e["event"] for e in events]
    assert names[0] == "start" and names[-1] == "stop" and "shipped" in names
    sealed = next(e for e in events if e["event"] == "sealed")
    assert sealed["seq"] == 1 and sealed["collectors"] == {"host": "ok"}


def test_a_failing_store_backs_off_and_keeps_sealing(gamsa_env: GamsaEnv,
                                                     daemons: list[Running]) -> None:
    gamsa_env.write_config(FAST)
    gamsa_env.store.write_text("not a directory\n")  # every ship fails
    d = start(daemons, gamsa_env, "--log-format", "json")
    d.wait_line('"event": "sealed"', count=3)
    d.stop()
    events = [json.loads(line) for line in d.lines()]
    failures = [e for e in events if e["event"] == "ship_failed"]
    assert failures and failures[0]["retry_seconds"] == 5, failures
    assert len(failures) <= 2, failures  # the first try and the last at stop: backed off
    spooled = list((gamsa_env.state_dir / "spool").iterdir())
    assert len(spooled) == sum(e["event"] == "sealed" for e in events), "nothing lost"
