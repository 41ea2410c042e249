"""The egress watcher and the `ai_egress` collector with real sockets: coalescing,
TIME_WAIT, owners, windows on disk, crash recovery, and draining by checkpoint."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector._egress import (
    JOURNAL_FILE,
    OPEN_FILE,
    EgressWatcher,
    Window,
    batch_name,
    batch_numbers,
    read_open,
)
from collector.ai_egress import COLLECTOR
from collector.registry import CollectContext, run_collector
from tests.collector.test_contract import expected_status

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="Linux only")


@pytest.fixture
def server() -> Iterator[socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener


def connect(server: socket.socket) -> tuple[socket.socket, socket.socket]:
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    return client, accepted


def close_client_first(client: socket.socket, accepted: socket.socket) -> None:
    """The client closes first, so its end is the one kept in TIME_WAIT."""
    client.close()
    accepted.close()


def drain(state: Path, sealed: int | None = None) -> tuple[list[Any], CollectContext]:
    ctx = CollectContext(state_dir=state, checkpoints={} if sealed is None
                         else {"ai_egress": sealed})
    result = run_collector(COLLECTOR, ctx)
    assert result.status == expected_status(result.records), result.error
    return [(r.type, r.key, r.data) for r in result.records], ctx


def observed(records: list[Any]) -> dict[str, dict[str, Any]]:
    return {key: data for kind, key, data in records if kind == "ai_egress_observed"}


@pytest.mark.parametrize("netlink", [True, False], ids=["sock_diag", "proc"])
def test_open_and_closed_connections_are_coalesced_with_owner_and_counted_once(
        tmp_path: Path, server: socket.socket, netlink: bool) -> None:
    port = server.getsockname()[1]
    watcher = EgressWatcher(tmp_path, [f"127.0.0.1:{port}", "10.99.0.0/16"], 1,
                            netlink=netlink)
    held = connect(server)
    assert watcher.poll() == 1
    close_client_first(*held)  # its TIME_WAIT row continues the same connection
    assert watcher.poll() == 0
    for _ in range(3):  # short calls closed before any poll saw them open
        close_client_first(*connect(server))
    assert watcher.poll() == 3
    assert watcher.poll() == 0
    number = watcher.cut()
    assert number == 1 and batch_numbers(tmp_path / "egress") == [1]

    records, ctx = drain(tmp_path)
    assert ctx.new_checkpoints == {"ai_egress": 1}
    seen = observed(records)
    mine = seen[f"127.0.0.1:{port} {next(k.split(' ')[1] for k in seen if '-:' not in k)}"]
    assert mine["pid"] == os.getpid() and mine["count"] == 1
    assert mine["exe"] == os.path.realpath(f"/proc/{os.getpid()}/exe")
    assert mine["exe_sha256"] is not None and mine["process_unknown_reason"] is None
    assert "ESTABLISHED" in mine["states"] and mine["socket_uid"] == os.geteuid()
    closed = seen[f"127.0.0.1:{port} -:closed"]
    assert closed["count"] == 3 and closed["pid"] is None
    assert closed["process_unknown_reason"] == "closed"
    assert set(closed["states"]) <= {"TIME_WAIT", "FIN_WAIT2", "FIN_WAIT1", "CLOSING"}
    drained = next(d for kind, _k, d in records if kind == "ai_egress_drain")
    assert drained["windows"] == 1 and drained["observed"] == 2
    window = next(d for kind, _k, d in records if kind == "ai_egress_window")
    assert window["polls"] == 4 and window["interval_seconds"] == 1
    assert window["source"] == ("sock_diag" if netlink else "proc (sock_diag: off)")

    # once sealed (the checkpoint committed), the batch is removed and not drained again
    records, ctx = drain(tmp_path, sealed=1)
    assert observed(records) == {} and ctx.new_checkpoints == {}
    assert batch_numbers(tmp_path / "egress") == []


def test_a_connection_across_a_cut_is_counted_once_and_continued_after(
        tmp_path: Path, server: socket.socket) -> None:
    port = server.getsockname()[1]
    watcher = EgressWatcher(tmp_path, [f"127.0.0.1:{port}"], 1)
    pair = connect(server)
    try:
        watcher.poll()
        watcher.cut()
        watcher.poll()
        watcher.cut()
    finally:
        close_client_first(*pair)
    first, _ = drain(tmp_path)  # both windows in one bundle: one connection
    assert [(d["count"], d["continued"]) for d in observed(first).values()] == [(1, 0)]
    second, _ = drain(tmp_path, sealed=1)  # window 2 alone: it went on from before
    assert [(d["count"], d["continued"]) for d in observed(second).values()] == [(0, 1)]


def test_a_crash_leaves_the_open_window_which_the_next_start_closes(
        tmp_path: Path, server: socket.socket) -> None:
    port = server.getsockname()[1]
    watcher = EgressWatcher(tmp_path, [f"127.0.0.1:{port}"], 1)
    close_client_first(*connect(server))
    watcher.poll()  # a new connection: journaled at once, open.json later
    directory = tmp_path / "egress"
    assert json.loads((directory / OPEN_FILE).read_bytes())["observations"] == {}
    close_client_first(*connect(server))
    watcher.poll()  # another: the same observation, count 2, one more line
    with open(directory / JOURNAL_FILE, "ab") as journal:
        journal.write(b'{"window": 1, "key": "cut by the cr')  # a crash mid-append
    left = read_open(directory)
    assert left is not None and left.number == 1
    assert [o.count for o in left.observations.values()] == [2]
    del watcher  # kill -9: nothing else runs

    restarted = EgressWatcher(tmp_path, [f"127.0.0.1:{port}"], 1)
    assert batch_numbers(tmp_path / "egress") == [1]
    assert restarted.window.number == 2 and restarted.pending_since is not None
    records, ctx = drain(tmp_path)
    assert [d["count"] for d in observed(records).values()] == [2]
    assert ctx.new_checkpoints == {"ai_egress": 1}
    assert (directory / JOURNAL_FILE).read_bytes() == b""  # open.json holds window 2


def test_the_journal_replayed_over_a_newer_open_file_loses_nothing(
        tmp_path: Path, server: socket.socket) -> None:
    port = server.getsockname()[1]
    watcher = EgressWatcher(tmp_path, [f"127.0.0.1:{port}"], 1)
    close_client_first(*connect(server))
    watcher.poll()
    directory = tmp_path / "egress"
    journal = (directory / JOURNAL_FILE).read_bytes()
    close_client_first(*connect(server))
    watcher.poll()
    watcher.persisted_at = float("-inf")
    watcher.poll()  # open.json rewritten (count 2), the journal emptied
    (directory / JOURNAL_FILE).write_bytes(journal)  # as if the crash beat the truncate
    left = read_open(directory)
    assert left is not None
    assert [(o.count, o.first_seen) for o in left.observations.values()] == [
        (o.count, o.first_seen) for o in watcher.window.observations.values()]
    assert [o.count for o in left.observations.values()] == [2]


def test_a_crash_between_batch_and_open_file_does_not_seal_twice(tmp_path: Path) -> None:
    watcher = EgressWatcher(tmp_path, ["127.0.0.1:9"], 1)
    watcher.poll()
    window = watcher.window
    directory = tmp_path / "egress"
    (directory / batch_name(1)).write_bytes(window.to_bytes())  # batch written, open.json not
    EgressWatcher(tmp_path, ["127.0.0.1:9"], 1)
    assert batch_numbers(directory) == [1]
    assert json.loads((directory / OPEN_FILE).read_bytes())["number"] == 2


def test_batch_numbers_continue_above_the_sealed_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoints.json").write_text(json.dumps({"values": {"ai_egress": 41}}))
    watcher = EgressWatcher(tmp_path, ["127.0.0.1:9"], 1)
    watcher.poll()
    assert watcher.cut() == 42


def _batch(directory: Path, number: int) -> None:
    directory.mkdir(exist_ok=True)
    (directory / batch_name(number)).write_bytes(
        Window(number, "2026-12-02T00:00:00.000000Z", "2026-12-02T00:00:01.000000Z",
               polls=1).to_bytes())


def test_draining_stops_at_a_gap_and_skips_it_only_when_it_is_real(tmp_path: Path) -> None:
    directory = tmp_path / "egress"
    for number in (3, 4, 6):
        _batch(directory, number)
    _records, ctx = drain(tmp_path, sealed=2)
    assert ctx.new_checkpoints == {"ai_egress": 4}  # 6 waits: 5 may be being written
    _records, ctx = drain(tmp_path, sealed=4)
    assert ctx.new_checkpoints == {"ai_egress": 6}  # 5 is not there on a second look


def test_an_unreadable_batch_is_a_gap_not_a_silent_skip(tmp_path: Path) -> None:
    _batch(tmp_path / "egress", 1)
    (tmp_path / "egress" / batch_name(1)).write_text("{not json")
    records, ctx = drain(tmp_path)
    assert ("coverage_gap", "ai_egress:egress batch") in [(k, key) for k, key, _d in records]
    assert ctx.new_checkpoints == {"ai_egress": 1}
