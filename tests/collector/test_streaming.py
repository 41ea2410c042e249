"""`stream_collector`: records go to the sealer as a collector yields them, with the
same results `run_collector` gives (errors mid-stream, gaps counted as they pass)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from collector.record import Record
from collector.registry import (
    CollectContext,
    Collector,
    coverage_gap,
    run_collector,
    stream_collector,
)


def generator_collector(count: int, fail_after: int | None = None,
                        seen: list[str] | None = None) -> Collector:
    """Yields `count` records (a gap every 100th), raising after `fail_after` if given;
    notes in `seen` when it starts, and when its `finally` runs."""

    def collect(_ctx: CollectContext) -> Iterator[Record]:
        if seen is not None:
            seen.append("started")
        try:
            for n in range(count):
                if fail_after is not None and n == fail_after:
                    raise OSError(5, "Input/output error")
                if n % 100 == 99:
                    yield coverage_gap("gen", "exe", "not root", 3)
                else:
                    yield Record("gen", "item", f"{n:06d}", {"n": n})
        finally:
            if seen is not None:
                seen.append("closed")

    return Collector("gen", "1", "a generator (tests)", (sys.platform,), {}, collect)


def test_records_reach_the_sink_in_order_as_they_are_yielded() -> None:
    seen: list[str] = []
    emitted: list[str] = []

    def emit(record: Record) -> None:
        # the collector is running while its records arrive: nothing was gathered first
        assert seen == ["started"]
        emitted.append(record.key)

    result = stream_collector(generator_collector(1000, seen=seen), CollectContext(), emit)
    assert seen == ["started", "closed"]
    assert emitted == [f"{n:06d}" if n % 100 != 99 else "gen:exe" for n in range(1000)]
    assert result.records == [] and result.count == 1000
    assert result.status == "partial"
    assert result.manifest_entry().records == 1000
    assert [g.to_json() for g in result.gaps] == [{"reason": "exe: not root", "count": 30}]


def test_an_error_mid_generator_keeps_the_records_before_it() -> None:
    emitted: list[Record] = []
    result = stream_collector(generator_collector(1000, fail_after=250), CollectContext(),
                              emitted.append)
    assert [r.key for r in emitted[:250]] == [
        f"{n:06d}" if n % 100 != 99 else "gen:exe" for n in range(250)]
    error = emitted[-1]
    assert len(emitted) == 251 and error.type == "collector_error"
    assert error.data == {"error": "OSError: [Errno 5] Input/output error",
                          "records_before_error": 250}
    assert result.status == "error" and result.count == 251
    assert result.error == "OSError: [Errno 5] Input/output error"
    # the gaps seen before the error still count
    assert [g.to_json() for g in result.gaps] == [{"reason": "exe: not root", "count": 6}]


def test_a_collector_that_raises_before_yielding() -> None:
    def collect(_ctx: CollectContext) -> list[Record]:
        raise PermissionError(13, "Permission denied")

    emitted: list[Record] = []
    broken = Collector("broken", "1", "raises (tests)", (sys.platform,), {}, collect)
    result = stream_collector(broken, CollectContext(), emitted.append)
    assert [r.type for r in emitted] == ["collector_error"]
    assert emitted[0].data["records_before_error"] == 0
    assert result.status == "error" and result.count == 1


def test_a_failing_sink_is_not_the_collectors_error_and_closes_it() -> None:
    """No space in the spool is the sealer's failure: it propagates, the generator's
    `finally` runs, and no collector_error pretends the collector failed."""
    seen: list[str] = []
    emitted: list[Record] = []

    def emit(record: Record) -> None:
        if len(emitted) == 10:
            raise OSError(28, "No space left on device")
        emitted.append(record)

    with pytest.raises(OSError, match="No space"):
        stream_collector(generator_collector(1000, seen=seen), CollectContext(), emit)
    assert seen == ["started", "closed"]
    assert all(r.type != "collector_error" for r in emitted)


def test_run_collector_keeps_the_records_of_a_list_collector() -> None:
    records = [Record("fake", "item", str(n), {"n": n}) for n in range(3)]
    fake = Collector("fake", "1", "a list (tests)", (sys.platform,), {}, lambda _ctx: records)
    result = run_collector(fake, CollectContext())
    assert result.records == records and result.count == 3 and result.status == "ok"
    unsupported = Collector("elsewhere", "1", "another platform", ("plan9",), {},
                            lambda _ctx: records)
    other = run_collector(unsupported, CollectContext())
    assert other.status == "unsupported" and other.count == 1
    assert [r.type for r in other.records] == ["unsupported"]
