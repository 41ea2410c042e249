"""The pre-seal look given up (agent/chainguard.py `look_within`, and the daemon's
`look_in_child` through the same `unchecked_view`): the bundle is sealed unchecked,
still answering the divergence the shipper recorded earlier."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from agent.chainguard import Divergence, look_within, note_divergence, unchecked_view
from agent.config import StoreConfig
from agent.state import ChainHead, StateDir
from agent.store import open_store
from signing.predicate import ChainFollows

HEAD = ChainHead("c1", 4, "ab" * 32, "2026-11-25T00:00:04.000000Z", "k" * 64)
FOUND = Divergence("the store holds seq 5 of chain c1, which this agent never sealed",
                   ChainFollows("c1", 5, "cd" * 32))


def state_with_a_divergence(root: Path) -> StateDir:
    root.mkdir(mode=0o700)
    state = StateDir(root)
    note_divergence(state, FOUND, "c1", None)
    return state


def test_an_unchecked_view_keeps_the_shippers_divergence(tmp_path: Path) -> None:
    state = state_with_a_divergence(tmp_path / "state")
    view = unchecked_view(state, HEAD, "the store look exited 3")
    assert view.divergence == FOUND and view.problem == "the store look exited 3"
    assert view.store_time is None and view.local_time is None
    # answered by a new chain already (the head moved on): nothing pending
    moved = ChainHead("c2", 1, "ef" * 32, HEAD.finished_at, HEAD.key_id)
    assert unchecked_view(state, moved, "x").divergence is None


def test_a_store_that_never_answers_is_given_up_on_in_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_CONFIG_FILE", str(tmp_path / "none")),
                        ("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none")),
                        ("NO_PROXY", "127.0.0.1")):
        monkeypatch.setenv(name, value)
    state = state_with_a_divergence(tmp_path / "state")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes the handshake; nobody answers
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        config = StoreConfig("s3://hangs/evidence", endpoint_url=endpoint, region="us-east-1",
                             read_timeout=30, max_attempts=1)
        store = open_store(config.url, config)
        started = time.monotonic()
        view = look_within(1.0, store, state, "web-01", HEAD)
        took = time.monotonic() - started
    assert 0.9 < took < 5, took
    assert view.problem == "the store gave no answer within 1 s"
    assert view.divergence == FOUND
