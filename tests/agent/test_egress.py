"""The daemon's egress thread in-process: pacing to its CPU budget, a real poll
loop over real sockets, the wake-up of the main loop, and a clean stop."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.egress import WATCH_MAX_INTERVAL, EgressThread, pace, wanted
from collector._egress import EgressWatcher, batch_name, batch_numbers


def test_polls_are_spaced_out_only_when_they_cost_more_than_the_budget() -> None:
    assert pace(2, 0.001) == 2  # 1 ms a poll: 0.05% of a core at 2 s
    assert pace(2, 0.030) == pytest.approx(6)  # 30 ms: 6 s keeps it at 0.5%
    assert pace(2, 1.0) == WATCH_MAX_INTERVAL  # never past half of TIME_WAIT
    assert pace(45, 1.0) == 45  # a configured interval above the cap is kept


def config(tmp_path: Path, extra: str) -> Any:
    text = f'state_dir = "{tmp_path}"\n[collectors.network]\n{extra}'
    return parse_config(text.encode(), "test")


def test_why_the_watcher_does_not_run(tmp_path: Path) -> None:
    on = config(tmp_path, 'ai_endpoints = ["127.0.0.1:9"]\n')
    assert wanted(on, ["ai_egress"]) is None or not sys.platform.startswith("linux")
    assert wanted(on, ["host"]) == "the ai_egress collector is not enabled"
    assert wanted(config(tmp_path, 'ai_endpoints = ["127.0.0.1:9"]\nwatch = false\n'),
                  ["ai_egress"]) == "collectors.network.watch is false"
    assert wanted(config(tmp_path, ""), ["ai_egress"]) == \
        "collectors.network.ai_endpoints is empty"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_the_thread_polls_wakes_the_daemon_and_closes_its_window_on_stop(
        tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        cfg = config(tmp_path, f'ai_endpoints = ["127.0.0.1:{port}"]\nwatch_interval = 1\n'
                               'egress_seal_every = "1h"\n')
        wake = threading.Event()
        lines: list[str] = []
        thread = EgressThread(cfg, lambda *a, **_k: lines.append(a[2]), wake)
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port)):
                assert wake.wait(timeout=30), "the main loop was not woken"
            due = thread.due_in()
            assert due is not None and 3500 < due <= 3600
            assert thread.cost > 0
        finally:
            thread.stop()
        assert not thread.is_alive()
        assert batch_numbers(tmp_path / "egress") == [1]
        assert thread.due_in() is None
        assert lines == []
        thread.retry_later()  # the bundle that was to seal batch 1 failed
        due = thread.due_in()
        assert due is not None and 3500 < due <= 3600


def server_closes_first(server: socket.socket) -> None:
    """One short call the server ends: no TIME_WAIT row is left on the client's side."""
    with socket.create_connection(server.getsockname()) as client:
        accepted, _ = server.accept()
        accepted.sendall(b"answer")
        accepted.close()
        while client.recv(64):
            pass


def test_calls_the_server_closes_between_polls_are_seen_from_destroy_events(
        tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        endpoint = f'ai_endpoints = ["127.0.0.1:{port}"]\negress_seal_every = "1h"\n'
        # Polling alone misses them: the only TIME_WAIT row is the server's.
        polling = EgressWatcher(tmp_path / "polling", [f"127.0.0.1:{port}"], 1)
        polling.poll()
        for _ in range(3):
            server_closes_first(server)
        assert polling.poll() == 0

        wake = threading.Event()
        lines: list[str] = []
        # no poll in this test: the first comes after an hour
        thread = EgressThread(config(tmp_path, endpoint + 'watch_interval = "1h"\n'),
                              lambda *a, **_k: lines.append(a[2]), wake)
        if thread.watcher.destroy is None:
            thread.stop()
            pytest.skip(f"socket-destroy events refused here: {thread.watcher.destroy_refused}")
        thread.start()
        try:
            for _ in range(3):
                server_closes_first(server)
            assert wake.wait(timeout=30), "the main loop was not woken"
            key = f"127.0.0.1:{port} -:closed"
            deadline = time.monotonic() + 30  # the kernel sends them from a work queue
            while time.monotonic() < deadline:
                with thread.lock:
                    observation = thread.watcher.window.observations.get(key)
                    if observation is not None and observation.count == 3:
                        break
                time.sleep(0.1)
        finally:
            thread.stop()
    assert not thread.is_alive() and lines == []
    window = json.loads((tmp_path / "egress" / batch_name(1)).read_bytes())
    assert window["polls"] == 0
    assert window["source"] == ""  # no poll ran: the source is said by the first one
    seen = window["observations"][key]
    assert seen["count"] == 3 and seen["process"] is None, seen
    assert seen["process_unknown_reason"] == "closed" and seen["states"] == ["CLOSE"], seen
    assert seen["socket_uid"] == os.geteuid()  # the kernel still names the socket's user


def server_closes_first_v6(server: socket.socket) -> None:
    """The same from an IPv6 socket to the server's IPv4 address (v4-mapped)."""
    with socket.create_connection(("::ffff:127.0.0.1", server.getsockname()[1])) as client:
        accepted, _ = server.accept()
        accepted.close()
        while client.recv(64):
            pass


def test_the_kernel_wakes_the_watcher_only_for_ai_endpoint_closes(tmp_path: Path) -> None:
    with socket.socket() as ai, socket.socket() as other:
        for server in (ai, other):
            server.bind(("127.0.0.1", 0))
            server.listen(64)
        port = ai.getsockname()[1]
        # the other server is on the AI endpoint's address: only the port tells them apart
        thread = EgressThread(config(tmp_path, f'ai_endpoints = ["127.0.0.1:{port}"]\n'
                                     'egress_seal_every = "1h"\nwatch_interval = "1h"\n'),
                              lambda *a, **_k: None, threading.Event())
        if thread.watcher.destroy is None:
            thread.stop()
            pytest.skip(f"socket-destroy events refused here: {thread.watcher.destroy_refused}")
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while thread.watcher.destroy.program is None and time.monotonic() < deadline:
                time.sleep(0.01)  # the thread resolves the endpoints, then filters
            assert thread.watcher.destroy.program is not None, thread.watcher.destroy.filter_refused
            for _ in range(300):  # a host closing many sockets of no AI endpoint
                server_closes_first(other)
            server_closes_first(ai)
            server_closes_first_v6(ai)
            key = f"127.0.0.1:{port} -:closed"
            while time.monotonic() < deadline:
                with thread.lock:
                    observation = thread.watcher.window.observations.get(key)
                    if observation is not None and observation.count == 2:
                        break
                time.sleep(0.1)
            time.sleep(0.5)  # whatever else the kernel was still sending
            events, wakes = thread.watcher.destroy.events, thread.destroy_wakes
        finally:
            thread.stop()
    window = json.loads((tmp_path / "egress" / batch_name(1)).read_bytes())
    assert window["observations"][key]["count"] == 2, window
    # 600 sockets of the other server were destroyed: none of them was read
    assert events == 2 and 1 <= wakes <= 2, (events, wakes)


def test_the_window_says_when_destroy_events_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused() -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("collector._egress.DestroyEvents", refused)
    watcher = EgressWatcher(tmp_path, ["127.0.0.1:9"], 1, destroy_events=True)
    watcher.poll()
    assert watcher.window.source.endswith(
        "(no destroy events: PermissionError: Operation not permitted)")
    assert watcher.take_destroyed() == 0


def test_the_destroy_filter_follows_the_endpoints_when_their_addresses_change(
        tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.2 api.example.test\n")
    with socket.socket() as server:
        server.bind(("0.0.0.0", 0))  # reached as 127.0.0.2 and 127.0.0.3 alike
        server.listen(8)
        port = server.getsockname()[1]
        watcher = EgressWatcher(tmp_path, [f"*.example.test:{port}"], 1,
                                hosts_file=str(hosts), destroy_events=True)
        destroy = watcher.destroy
        if destroy is None:
            pytest.skip(f"socket-destroy events refused here: {watcher.destroy_refused}")

        def call(address: str) -> None:
            with socket.create_connection((address, port)) as client:
                server.accept()[0].close()
                while client.recv(64):
                    pass

        def remotes_after(address: str, events: int) -> list[str]:
            call(address)
            deadline = time.monotonic() + 30  # the kernel sends them from a work queue
            while destroy.events < events and time.monotonic() < deadline:
                watcher.take_destroyed()
                time.sleep(0.05)
            time.sleep(0.3)
            watcher.take_destroyed()
            assert destroy.events == events  # nothing else got through the filter
            return sorted(r for o in watcher.window.observations.values() for r in o.remotes)

        try:
            watcher.resolve()
            first = destroy.program
            call("127.0.0.3")  # not an AI endpoint's address (yet): filtered out
            assert remotes_after("127.0.0.2", 1) == [f"127.0.0.2:{port}"]
            hosts.write_text("127.0.0.3 api.example.test\n")
            watcher.resolved_at = float("-inf")  # as when RESOLVE_EVERY has passed
            watcher.resolve()
            assert destroy.program not in (None, first)  # re-attached for the new address
            assert remotes_after("127.0.0.3", 2) == [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
        finally:
            watcher.close()


def test_a_journal_that_cannot_be_written_is_said_and_the_watcher_goes_on(
        tmp_path: Path) -> None:
    """A write failing in the wait between polls (here the journal's path is a
    directory: EISDIR, as root too) used to end the thread silently."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        wake = threading.Event()
        lines: list[tuple[str, str, str]] = []
        thread = EgressThread(config(tmp_path, f'ai_endpoints = ["127.0.0.1:{port}"]\n'
                                     'egress_seal_every = "1h"\nwatch_interval = "1h"\n'),
                              lambda *a, **_k: lines.append(a[:3]), wake)
        if thread.watcher.destroy is None:
            thread.stop()
            pytest.skip(f"socket-destroy events refused here: {thread.watcher.destroy_refused}")
        journal = tmp_path / "egress" / "open.log"
        journal.mkdir(parents=True)
        key = f"127.0.0.1:{port} -:closed"
        thread.start()

        def logged(event: str) -> tuple[str, str, str]:
            deadline = time.monotonic() + 30  # the kernel sends them from a work queue
            while time.monotonic() < deadline:
                found = [line for line in lines if line[1] == event]
                if found:
                    return found[0]
                time.sleep(0.05)
            raise AssertionError(f"no {event} line: {lines}")

        try:
            server_closes_first(server)
            level, _, message = logged("egress_watch_failed")
            assert level == "error" and "IsADirectoryError" in message
            assert str(journal) in message, message
            time.sleep(0.6)  # past a DESTROY_EVERY: the thread is still there
            assert thread.is_alive()
            assert wake.is_set()  # the observation waits in memory: the daemon knows
            journal.rmdir()  # the disk is writable again
            server_closes_first(server)
            assert logged("egress_watch")[2] == "egress watcher recording again"
            assert thread.is_alive()
            with thread.lock:  # the journal holds the connection seen while failing too
                last = json.loads(journal.read_bytes().splitlines()[-1])
            assert last["key"] == key and last["observation"]["count"] == 2, last
        finally:
            thread.stop()
    assert [line[1] for line in lines].count("egress_watch_failed") == 1, lines  # once
    window = json.loads((tmp_path / "egress" / batch_name(1)).read_bytes())
    assert window["observations"][key]["count"] == 2  # the one seen while failing too
