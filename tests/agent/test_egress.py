"""The daemon's egress thread in-process: pacing to its CPU budget, a real poll
loop over real sockets, the wake-up of the main loop, and a clean stop."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.egress import WATCH_MAX_INTERVAL, EgressThread, pace, wanted
from collector._egress import batch_numbers


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
