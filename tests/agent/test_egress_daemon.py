"""The AI-egress watcher in a real `gamsa agent run`: short calls between collections
are each sealed (counted, without a process: TIME_WAIT), a call held open is sealed
with the process that made it, and SIGTERM leaves nothing unsealed for the next start."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.agent.test_daemon import Running, assert_verifies_one_chain, daemons, start
from tests.agent.unprivileged import make_user_env
from tests.conftest import GAMSA, GamsaEnv

__all__ = ["daemons"]  # the fixture, imported to be used here

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")]

CLIENT = """
import socket, sys, time
port, hold, count = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    time.sleep(hold)
    s.close()  # the client closes first: its end stays in TIME_WAIT
"""


@pytest.fixture
def endpoint() -> Iterator[int]:
    """A local TCP server that accepts and holds connections until the peer closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                held.append(conn)
            except TimeoutError:
                continue
        for conn in held:
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def config(port: int, seal_every: str = "3s") -> str:
    return (f'[collectors.network]\nai_endpoints = ["127.0.0.1:{port}"]\n'
            f'watch_interval = "1s"\negress_seal_every = "{seal_every}"\n'
            f'[schedule]\ndefault = "1h"\nheartbeat = "1h"\n')


def sealed_records(env: GamsaEnv, kind: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(env.store.rglob("*.records.jsonl.gz")):
        for line in gzip.decompress(path.read_bytes()).splitlines():
            record = json.loads(line)
            if record["type"] == kind:
                found.append(record)
    return found


def total(env: GamsaEnv, port: int) -> int:
    return sum(r["data"]["count"] for r in sealed_records(env, "ai_egress_observed")
               if r["data"]["endpoint"] == f"127.0.0.1:{port}")


def client(port: int, hold: float, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(hold), str(count)])


def test_short_calls_and_a_held_call_between_collections_are_sealed(
        gamsa_env: GamsaEnv, daemons: list[Running], endpoint: int) -> None:
    gamsa_env.write_config(config(endpoint), collectors='["host", "ai_egress"]')
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 1")
    d.wait_line("egress watcher on")
    short = client(endpoint, 0.2, 5)
    assert short.wait(timeout=60) == 0
    held = client(endpoint, 5.0, 1)
    assert held.wait(timeout=60) == 0
    d.wait_for(lambda: total(gamsa_env, endpoint) >= 6, "6 connections sealed", timeout=60)
    d.stop()
    assert total(gamsa_env, endpoint) == 6
    observed = [r["data"] for r in sealed_records(gamsa_env, "ai_egress_observed")]
    owned = [o for o in observed if o["pid"] == held.pid]
    assert owned, observed
    assert owned[0]["exe"] == os.path.realpath(sys.executable)
    assert owned[0]["count"] == 1 and "ESTABLISHED" in owned[0]["states"]
    assert any(o["process_unknown_reason"] == "closed" for o in observed)
    assert all("-c" in (o["cmdline"] or ["-c"]) for o in owned)
    # the host collector ran once: egress went into bundles of its own, by egress_seal_every
    assert len(sealed_records(gamsa_env, "host")) == 1
    assert_verifies_one_chain(gamsa_env)


def test_sigterm_leaves_the_open_window_for_the_next_start(
        gamsa_env: GamsaEnv, daemons: list[Running], endpoint: int) -> None:
    gamsa_env.write_config(config(endpoint, seal_every="1h"), collectors='["ai_egress"]')
    d = start(daemons, gamsa_env)
    d.wait_line("egress watcher on")
    calls = client(endpoint, 0.2, 3)
    assert calls.wait(timeout=60) == 0
    egress = gamsa_env.state_dir / "egress" / "open.json"
    d.wait_for(lambda: len(json.loads(egress.read_bytes())["observations"]) >= 1,
               "the calls persisted in the open window", timeout=30)
    d.stop()
    assert total(gamsa_env, endpoint) == 0  # not due yet: kept on disk, closed
    again = start(daemons, gamsa_env, log="daemon2.log")
    again.wait_line("sealed seq")  # the start sweep drains the closed window
    again.stop()
    assert total(gamsa_env, endpoint) == 3
    assert_verifies_one_chain(gamsa_env)


def test_kill_9_loses_no_observation(gamsa_env: GamsaEnv, daemons: list[Running],
                                     endpoint: int) -> None:
    gamsa_env.write_config(config(endpoint, seal_every="1h"), collectors='["ai_egress"]')
    d = start(daemons, gamsa_env)
    d.wait_line("egress watcher on")
    calls = client(endpoint, 0.2, 4)
    assert calls.wait(timeout=60) == 0
    egress = gamsa_env.state_dir / "egress" / "open.json"

    def persisted() -> int:
        window = json.loads(egress.read_bytes())
        return sum(o["count"] for o in window["observations"].values())

    d.wait_for(lambda: persisted() >= 4, "4 calls persisted", timeout=30)
    d.kill()
    again = start(daemons, gamsa_env, log="daemon2.log")
    again.wait_line("sealed seq")
    again.stop()
    assert total(gamsa_env, endpoint) == 4
    assert_verifies_one_chain(gamsa_env)


def test_collect_beside_the_daemon_says_what_waits_in_the_open_window(
        gamsa_env: GamsaEnv, daemons: list[Running], endpoint: int) -> None:
    gamsa_env.write_config(config(endpoint, seal_every="1h"), collectors='["ai_egress"]')
    d = start(daemons, gamsa_env)
    d.wait_line("egress watcher on")
    calls = client(endpoint, 0.2, 2)
    assert calls.wait(timeout=60) == 0
    egress = gamsa_env.state_dir / "egress" / "open.json"
    d.wait_for(lambda: len(json.loads(egress.read_bytes())["observations"]) >= 1,
               "the calls persisted", timeout=30)
    result = gamsa_env.run("collect")
    assert result.returncode == 0, result.stderr
    drains = [r["data"] for r in sealed_records(gamsa_env, "ai_egress_drain")]
    assert drains[-1]["open_window_observations"] >= 1
    d.stop()
    again = start(daemons, gamsa_env, log="daemon2.log")
    again.wait_line("sealed seq")
    again.stop()
    assert total(gamsa_env, endpoint) == 2
    assert_verifies_one_chain(gamsa_env)




def test_an_unprivileged_agent_counts_root_calls_and_says_it_cannot_name_the_process(
        daemons: list[Running], endpoint: int) -> None:
    with make_user_env() as env:
        env.write_config(config(endpoint), collectors='["ai_egress"]')
        os.chmod(env.config, 0o644)
        assert env.user is not None
        environ = {k: v for k, v in os.environ.items() if not k.startswith("GAMSA_")}
        environ.update(GAMSA_CONFIG=str(env.config), HOME=str(env.root))
        log = env.root / "daemon.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                ["setpriv", f"--reuid={env.user.pw_uid}", f"--regid={env.user.pw_gid}",
                 "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", GAMSA,
                 "agent", "run"], env=environ, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 30
            while "egress watcher on" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            with socket.create_connection(("127.0.0.1", endpoint)):  # root's, held 3 s
                time.sleep(3)
            while total(env, endpoint) < 1:
                assert proc.poll() is None and time.monotonic() < deadline + 30, \
                    log.read_text()
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0, log.read_text()
        observed = [r["data"] for r in sealed_records(env, "ai_egress_observed")]
        denied = [o for o in observed if o["process_unknown_reason"] == "denied"]
        assert denied and denied[0]["pid"] is None and denied[0]["socket_uid"] == 0
        gaps = [r["data"] for r in sealed_records(env, "coverage_gap")]
        assert any(g["source"] == "socket owner" for g in gaps), gaps
        assert "ai_egress partial" in log.read_text()
