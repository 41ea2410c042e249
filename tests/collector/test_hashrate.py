"""The cap on bytes hashed per minute (`[collectors.files] hash_rate`): the token
bucket alone (a fake clock), then the files collector on real files."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from collector import _hashrate
from collector._hashrate import HashBudget, wait_bound
from collector.files import COLLECTOR
from collector.registry import CollectContext, run_collector


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_bucket_allows_a_minute_then_paces_and_refuses_beyond_the_bound() -> None:
    clock = FakeClock()
    budget = HashBudget(6000, clock, clock.sleep)  # 100 bytes a second
    assert budget.take(6000, clock.now + 1000) and clock.slept == []  # a full minute
    assert budget.take(200, clock.now + 1000) and clock.slept == [2.0]  # waits its turn
    assert budget.reserve(1000, clock.now + 5) is None  # 10 s away: refused ...
    assert budget.reserve(500, clock.now + 5) == 5.0  # ... and nothing was taken for it
    clock.now += 3600
    assert budget.reserve(6000, clock.now) == 0.0  # refilled, never beyond one minute
    assert budget.reserve(1, clock.now) is None


def test_the_bound_is_halfway_to_the_deadline() -> None:
    assert wait_bound(110.0, 100.0) == 105.0
    assert wait_bound(90.0, 100.0) == 100.0
    assert wait_bound(None, 100.0) == 100.0 + _hashrate.UNBOUNDED_RUN_WAIT_SECONDS


def collect(root: Path, rate: int, deadline: float | None) -> dict[str, dict[str, object]]:
    ctx = CollectContext(root=root, deadline=deadline,
                         options={"files": {"paths": ["/data/*"], "content_max_bytes": 0,
                                            "hash_rate": rate}})
    result = run_collector(COLLECTOR, ctx)
    records = {r.key: r for r in result.records}
    return {"status": {"status": result.status}, **{k: r.data for k, r in records.items()}}


@pytest.fixture(autouse=True)
def fresh_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_hashrate, "_budgets", {})


def test_files_wait_for_their_turn_under_the_rate(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a").write_bytes(b"a" * 60 * 1024)  # one minute's budget
    (tmp_path / "data" / "b").write_bytes(b"b" * 2 * 1024)  # then 2 s at 1 KiB/s
    started = time.monotonic()
    found = collect(tmp_path, 60 * 1024, None)
    elapsed = time.monotonic() - started
    assert found["/data/b"]["sha256"] == hashlib.sha256(b"b" * 2048).hexdigest()
    assert found["/data/a"]["sha256"] is not None
    assert found["status"]["status"] == "ok"
    assert elapsed >= 1.5, "the second file waited for the budget to refill"


def test_a_file_whose_turn_comes_too_late_is_recorded_unhashed_and_counted(
        tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a").write_bytes(b"a" * 40 * 1024)
    (tmp_path / "data" / "b").write_bytes(b"b" * 40 * 1024)  # 20 s away at 1 KiB/s
    started = time.monotonic()
    found = collect(tmp_path, 60 * 1024, time.monotonic() + 4)
    assert time.monotonic() - started < 3, "never waits past halfway to the deadline"
    assert found["/data/a"]["sha256"] is not None
    deferred = found["/data/b"]
    assert (deferred["sha256"], deferred["hash_omitted_reason"]) == (None, "hash_rate")
    assert found["files:sha256"]["count"] == 1  # a coverage_gap: the run is partial
    assert found["status"]["status"] == "partial"
    # a later run, with the budget refilled, hashes it
    _hashrate._budgets.clear()
    later = collect(tmp_path, 60 * 1024, time.monotonic() + 60)
    assert later["/data/b"]["sha256"] == hashlib.sha256(b"b" * 40 * 1024).hexdigest()


def test_zero_is_no_cap(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big").write_bytes(b"x" * (4 << 20))
    found = collect(tmp_path, 0, time.monotonic() + 0.5)
    assert found["/data/big"]["sha256"] is not None
