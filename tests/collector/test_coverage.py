"""The coverage rule (docs/DESIGN.md): which records make a run `partial`, and the
counted gaps `run_collector` puts in the manifest."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from collector._linux import missing_record, unreadable_record
from collector.record import Record
from collector.registry import (
    CollectContext,
    Collector,
    coverage_gap,
    run_collector,
    unsupported,
)


def fake(records: list[Record], fail: bool = False) -> Collector:
    def collect(_ctx: CollectContext) -> Iterator[Record]:
        yield from records
        if fail:
            raise RuntimeError("boom")

    return Collector("fake", "1", "a test collector", (sys.platform,), {}, collect)


def gaps_of(*records: Record, fail: bool = False) -> tuple[str, list[dict[str, object]]]:
    result = run_collector(fake(list(records), fail), CollectContext())
    entry = result.manifest_entry().to_json()
    assert entry["status"] == result.status and entry["records"] == len(result.records)
    return result.status, entry["gaps"]


def test_absent_sources_are_not_gaps() -> None:
    assert gaps_of(missing_record("fake", "/var/log/nginx/access.log"),
                   unsupported("fake", "nft", "nft is not installed")) == ("ok", [])


def test_unreadable_sources_are_counted_by_reason_without_paths() -> None:
    denied = PermissionError(13, "Permission denied")
    status, gaps = gaps_of(unreadable_record("fake", "/home/alice/.ssh/authorized_keys", denied),
                           unreadable_record("fake", "/etc/shadow", denied),
                           unreadable_record("fake", "/etc/x", IsADirectoryError(21, "Is a "
                                                                                    "directory")))
    assert status == "partial"
    assert gaps == [{"reason": "unreadable: IsADirectoryError: Is a directory", "count": 1},
                    {"reason": "unreadable: PermissionError: Permission denied", "count": 2}]
    assert "alice" not in repr(gaps)  # the manifest is not pseudonymized


def test_coverage_gaps_and_failed_tools_count() -> None:
    failed = Record("fake", "command_failed", "rpm", {"argv": ["rpm"], "exit_code": 1,
                                                      "reason": "exit status 1", "stderr": None})
    status, gaps = gaps_of(coverage_gap("fake", "exe", "access denied", 89), failed,
                           coverage_gap("fake", "exe", "access denied", 1))
    assert status == "partial"
    assert gaps == [{"reason": "exe: access denied", "count": 90},
                    {"reason": "rpm failed: exit status 1", "count": 1}]


def test_error_wins_and_keeps_its_gaps() -> None:
    status, gaps = gaps_of(coverage_gap("fake", "exe", "access denied", 2), fail=True)
    assert status == "error"
    assert gaps == [{"reason": "exe: access denied", "count": 2}]

