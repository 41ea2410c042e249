"""signing.completeness alone: which hosts are expected, when one is silent, and what
a bucket's version listing says about create-only evidence."""

from __future__ import annotations

import dataclasses
import datetime as dt

from signing.bundle import BundleName
from signing.completeness import (
    Completeness,
    ObjectVersion,
    check_completeness,
    check_versions,
    duration_text,
)
from signing.enrollment import Enrollment
from signing.keys import FileSigner, generate_private_key
from signing.verify import BundleSummary, Trust

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def key() -> FileSigner:
    return FileSigner.from_key(generate_private_key())


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def bundle(host: str, key_id: str, finished: dt.datetime, seq: int = 1) -> BundleSummary:
    name = BundleName(host, stamp(finished)[:10], seq, f"c{seq}")
    return BundleSummary(name, name.manifest_key, "0" * 64, "c1", seq, None,
                         stamp(finished - dt.timedelta(seconds=5)), stamp(finished), 1,
                         key_id, None, True)


def enrolled(signer: FileSigner, host: str, start: dt.datetime,
             end: dt.datetime) -> Trust:
    enrollment = Enrollment(signer.public_key(), host, start, end, "org",
                            f"v1/keys/{signer.key_id}.enrollment.x.dsse.json")
    return Trust({signer.key_id: signer.public_key()}, frozenset(),
                 {signer.key_id: [enrollment]})


def codes(findings: list) -> list[str]:  # type: ignore[type-arg]
    return [f.code for f in findings]


def test_a_retired_host_is_judged_at_the_end_of_its_enrollment() -> None:
    agent = key()
    trust = enrolled(agent, "old-01", NOW - 30 * DAY, NOW - 10 * DAY)
    expect = Completeness(NOW, DAY)
    # Its last bundle came an hour before its enrollment ended: retired, not silent.
    last = [bundle("old-01", agent.key_id, NOW - 10 * DAY - dt.timedelta(hours=1))]
    findings, fleet = check_completeness(trust, last, expect)
    assert findings == [] and fleet.hosts[0].status == "ok"
    # Three days before the end: silent, as of the end of the enrollment.
    early = [bundle("old-01", agent.key_id, NOW - 13 * DAY)]
    findings, fleet = check_completeness(trust, early, expect)
    assert codes(findings) == ["host_silent"]
    assert "silent for 3d" in findings[0].message
    assert "(the end of its last enrollment)" in findings[0].message
    assert fleet.silent == ["old-01"]


def test_an_enrollment_not_begun_expects_nothing_yet() -> None:
    agent = key()
    trust = enrolled(agent, "new-01", NOW + DAY, NOW + 30 * DAY)
    findings, fleet = check_completeness(trust, [], Completeness(NOW, DAY))
    assert findings == [] and fleet.hosts == []
    findings, fleet = check_completeness(trust, [], Completeness(NOW + 2 * DAY, DAY))
    assert codes(findings) == ["host_without_bundles"]
    assert agent.key_id in findings[0].message and fleet.without_bundles == ["new-01"]


def test_silence_is_not_checked_without_a_limit_and_a_future_bundle_is_not_silent() -> None:
    agent = key()
    trust = Trust.direct({agent.key_id: agent.public_key()})
    old = [bundle("web-01", agent.key_id, NOW - 300 * DAY)]
    assert check_completeness(trust, old, Completeness(NOW, None))[0] == []
    ahead = [bundle("web-01", agent.key_id, NOW + DAY)]
    findings, fleet = check_completeness(trust, ahead, Completeness(NOW, DAY))
    assert findings == [] and fleet.hosts[0].silent_seconds == 0
    # --host: only that host is expected.
    both = [*old, bundle("db-01", agent.key_id, NOW)]
    findings, fleet = check_completeness(trust, both, Completeness(NOW, DAY), host="db-01")
    assert findings == [] and [h.host for h in fleet.hosts] == ["db-01"]


def test_newest_is_by_time_and_an_unreadable_time_is_said() -> None:
    agent = key()
    trust = Trust.direct({agent.key_id: agent.public_key()})
    # "…00Z" sorts after "…00.5…Z" as text, but is the earlier time.
    short = bundle("web-01", agent.key_id, NOW, seq=1)
    short = dataclasses.replace(short, finished_at="2026-12-01T12:00:00Z")
    longer = bundle("web-01", agent.key_id, NOW + dt.timedelta(seconds=0.5), seq=2)
    _, fleet = check_completeness(trust, [short, longer], Completeness(NOW, DAY))
    assert fleet.hosts[0].last_finished_at == "2026-12-01T12:00:00.500000Z"
    bad = dataclasses.replace(short, finished_at="yesterday")
    findings, fleet = check_completeness(trust, [bad], Completeness(NOW, DAY))
    assert [(f.code, f.severity) for f in findings] == [("host_time_unreadable", "warning")]


def test_versions_one_each_is_clean() -> None:
    versions = [ObjectVersion("v1/a", "1", False, True), ObjectVersion("v1/b", "2", False, True)]
    assert check_versions(versions) == ([], [], [])


def test_delete_markers_and_second_versions_are_named() -> None:
    versions = [
        ObjectVersion("v1/gone", "m1", True, True, "2026-12-01T00:00:00Z"),
        ObjectVersion("v1/gone", "v1", False, False),
        ObjectVersion("v1/twice", "v2", False, False),
        ObjectVersion("v1/twice", "v3", False, True),
        ObjectVersion("v1/never", "m2", True, True),
        ObjectVersion("v1/fine", "v4", False, True),
    ]
    findings, deleted, overwritten = check_versions(versions)
    assert [(f.key, f.code) for f in findings] == [
        ("v1/gone", "object_deleted"), ("v1/never", "object_deleted"),
        ("v1/twice", "object_overwritten")]
    assert deleted == ["v1/gone", "v1/never"] and overwritten == ["v1/twice"]
    gone, never, twice = (f.message for f in findings)
    assert "m1 (latest) at 2026-12-01T00:00:00Z" in gone and "v1" in gone
    assert "no longer lists" in gone
    assert "no stored version" in never
    assert "v2" in twice and "v3 (latest)" in twice
    assert all(f.severity == "error" for f in findings)


def test_duration_text() -> None:
    assert duration_text(0) == "0s"
    assert duration_text(59.9) == "59s"
    assert duration_text(86400 + 3600 + 61) == "1d1h1m1s"
    assert duration_text(1200) == "20m"
