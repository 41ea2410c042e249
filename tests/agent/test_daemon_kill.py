"""`gamsa agent run` killed -9 at random moments, and stopped while its store hangs.

The daemon is a real subprocess with a file store and 1 s intervals; between kills the
test notes every spool entry it sees and every bundle the daemon logged as sealed, so
at the end it can tell that each of them reached the store: no sealed bundle lost, no
fork, one chain whose seqs run 1..N.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.agent.s3_fixtures import S3GamsaEnv, s3_env
from tests.agent.test_daemon import Running, start
from tests.conftest import GamsaEnv, ok

ROUNDS = 30
KILL_WINDOW = 1.5  # seconds: each kill comes at a uniformly random moment within this


def spool_names(env: GamsaEnv) -> set[str]:
    spool = env.state_dir / "spool"
    try:
        return {p.name for p in spool.iterdir() if not p.name.startswith(".")}
    except FileNotFoundError:
        return set()


def store_names(env: GamsaEnv) -> dict[str, int]:
    """`<seq>-<collection id>` of every manifest in the store, with how often."""
    found: dict[str, int] = {}
    for path in env.store.rglob("*.manifest.dsse.json"):
        name = path.name.removesuffix(".manifest.dsse.json")
        found[name] = found.get(name, 0) + 1
    return found


def store_children(daemon_pid: int) -> list[psutil.Process]:
    """Live `agent.store_child` processes started by that daemon (it names its pid)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "agent.store_child" in cmdline and str(daemon_pid) in cmdline:
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.NoSuchProcess:
                pass
    return found


def wait_until(predicate: object, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def daemons() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for d in started:
        d.kill()


@pytest.mark.slow
def test_thirty_sigkills_lose_nothing_and_never_fork(gamsa_env: GamsaEnv,
                                                    daemons: list[Running]) -> None:
    # Collectors every second and a heartbeat every second: most kills land in a
    # sealing or a ship. Each round's log is its own file, read after the kill.
    gamsa_env.write_config('[schedule]\ndefault = "1s"\nheartbeat = "1s"\n')
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    seen_in_spool: set[str] = set()
    logged_sealed: set[str] = set()
    for round_ in range(ROUNDS):
        d = start(daemons, gamsa_env, "--log-format", "json", log=f"daemon-{round_}.log")
        if round_ % 3:  # most rounds counted from the daemon being up: a loaded machine
            d.wait_line('"event": "start"', timeout=30)  # may take 1.5 s just to import
        until = time.monotonic() + rng.uniform(0, KILL_WINDOW)
        while time.monotonic() < until:
            seen_in_spool |= spool_names(gamsa_env)
            time.sleep(0.01)
        d.kill()
        seen_in_spool |= spool_names(gamsa_env)
        for line in d.lines():
            event = json.loads(line)  # a killed daemon never leaves half a line
            if event["event"] == "sealed":
                logged_sealed.add(Path(event["manifest_key"]).name
                                  .removesuffix(".manifest.dsse.json"))
        # the ship or look child dies with the daemon: it cannot hold the lock on
        wait_until(lambda: not store_children(d.proc.pid),  # noqa: B023
                   f"the store children of killed daemon {d.proc.pid} to exit (seed {seed})")

    last = start(daemons, gamsa_env, log="daemon-last.log")
    last.wait_line("shipped", timeout=60)
    assert last.stop() < 10
    assert last.lines()[-1] == "gamsa: agent stopped"

    result = ok(gamsa_env.run("verify", "--json"))
    report = json.loads(result.stdout)
    problems = [f for f in report["findings"] if f["severity"] != "info"]
    assert not problems, (seed, problems)
    assert [f["code"] for f in report["findings"]].count("chain_genesis") == 1, seed
    assert len(report["chains"]) == 1, (seed, report["chains"])
    in_store = store_names(gamsa_env)
    assert all(count == 1 for count in in_store.values()), seed
    seqs = sorted(int(name.split("-", 1)[0]) for name in in_store)
    assert seqs == list(range(1, len(seqs) + 1)), (seed, seqs)
    left = spool_names(gamsa_env)
    lost = (seen_in_spool | logged_sealed) - set(in_store) - left
    assert not lost, f"sealed bundles neither in the store nor in the spool (seed {seed})"
    assert logged_sealed, "no round got as far as sealing: the test proved nothing"
    assert len(seqs) >= len(logged_sealed)
    for where in (gamsa_env.store, gamsa_env.state_dir):
        assert not list(where.rglob(".tmp-*")), f"half-written files in {where}"
    # the spool entries seen were complete bundles, and every one got a seq in the chain
    assert {int(name.split("-", 1)[0]) for name in seen_in_spool} <= set(seqs)


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An S3 endpoint on loopback that accepts connections and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # the kernel completes the handshakes; nobody reads
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_sigterm_while_a_ship_hangs_exits_0_within_10_s(tmp_path: Path, silent_endpoint: str,
                                                       daemons: list[Running]) -> None:
    env: S3GamsaEnv = s3_env(tmp_path, silent_endpoint, "hangs", read_timeout=60)
    env.write_config('[schedule]\ndefault = "1h"\nheartbeat = "1h"\n', read_timeout=60)
    d = start(daemons, env, "--log-format", "json", extra_env=env.environment())
    # The pre-seal look cannot get an answer: it is cut at 20 s, the bundle sealed anyway.
    d.wait_line('"event": "sealed"', timeout=90)
    d.wait_line('"event": "store_unchecked"')
    unchecked = [json.loads(line)["message"] for line in d.lines()
                 if '"event": "store_unchecked"' in line]
    assert "gave no answer within 20 s" in unchecked[0], unchecked  # not the 60 s timeout
    d.wait_for(lambda: any("ship" in p.cmdline() for p in store_children(d.proc.pid)),
               "a ship child stuck on the store")
    time.sleep(1)  # well into its first request, which will never be answered
    took = d.stop()
    assert took < 10, took
    events = [json.loads(line) for line in d.lines()]
    assert events[-1]["event"] == "stop"
    assert any(e["event"] == "ship_failed" and "stop" in e["message"] for e in events), events
    assert len(spool_names(env)) == 1, "the sealed bundle waits in the spool"
    assert not store_children(d.proc.pid)
    fd = os.open(env.state_dir / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds the state lock
    finally:
        os.close(fd)


def test_ready_after_a_failed_start_sweep_says_so_in_status(gamsa_env: GamsaEnv,
                                                           daemons: list[Running]) -> None:
    gamsa_env.write_config('[schedule]\ndefault = "1h"\nheartbeat = "1h"\n')
    gamsa_env.state_dir.mkdir()
    (gamsa_env.state_dir / "spool").write_text("a file where the spool should be\n")
    address = str(gamsa_env.root / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(60)
        d = start(daemons, gamsa_env, extra_env={"NOTIFY_SOCKET": address})
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        # up (systemd may go on with what waits for it), but not claiming a sealed sweep
        ready = next(m for m in messages if "READY=1" in m).splitlines()
        assert ready == ["READY=1", "STATUS=running, but the start sweep failed to seal; "
                         "retrying on schedule (see the log)"], messages
    assert d.proc.poll() is None, "still running: it retries on schedule"
    failed = [line for line in d.lines() if "sealing failed (schedule)" in line]
    assert len(failed) == 1 and "spool" in failed[0], d.lines()
    d.stop()


def test_sigterm_while_another_process_holds_the_state_lock(gamsa_env: GamsaEnv,
                                                           daemons: list[Running]) -> None:
    # as when a `gamsa collect` ships to a slow store under the lock
    gamsa_env.write_config('[schedule]\ndefault = "1h"\nheartbeat = "1h"\n')
    gamsa_env.state_dir.mkdir(mode=0o700)
    fd = os.open(gamsa_env.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        d = start(daemons, gamsa_env)
        d.wait_line("agent started", timeout=30)
        time.sleep(1)  # its start sweep waits for the lock
        took = d.stop()
    finally:
        os.close(fd)
    assert took < 10, took
    abandoned = [line for line in d.lines() if "sealing abandoned (schedule)" in line]
    assert len(abandoned) == 1 and "another gamsa process holds it" in abandoned[0], d.lines()
    assert spool_names(gamsa_env) == set(), "nothing half-sealed"
    assert not (gamsa_env.state_dir / "chain.json").exists()
    ok(gamsa_env.run("collect"))  # the next run seals seq 1 as if nothing happened
    assert sorted(store_names(gamsa_env)) and all(
        name.startswith("0000000001-") for name in store_names(gamsa_env))


def test_a_ship_stuck_on_the_store_does_not_hold_up_sealing(tmp_path: Path, silent_endpoint: str,
                                                           daemons: list[Running]) -> None:
    env: S3GamsaEnv = s3_env(tmp_path, silent_endpoint, "hangs")
    # each request waits 3 s for an answer that never comes; a ship retries for longer
    env.write_config('[schedule]\ndefault = "2s"\nheartbeat = "1h"\n', read_timeout=3,
                     store_extra="max_attempts = 10\n")
    d = start(daemons, env, "--log-format", "json", extra_env=env.environment())
    d.wait_line('"event": "ship_preempted"', timeout=90)
    d.wait_line('"event": "sealed"', count=2, timeout=60)
    assert d.stop() < 10
    events = [json.loads(line) for line in d.lines()]
    sealed = [e["seq"] for e in events if e["event"] == "sealed"]
    assert sealed == list(range(1, len(sealed) + 1)) and len(sealed) >= 2, events
    assert len(spool_names(env)) == len(sealed), "everything sealed waits in the spool"
