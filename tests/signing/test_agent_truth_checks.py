"""The verifier's agent-side-truth checks as pure functions: `chain.follows` links
(signing/follows.py) and clocks far ahead (signing/clock.py)."""

from __future__ import annotations

import pytest

from signing.clock import (
    CLOCK_TOLERANCE_SECONDS,
    ClockFacts,
    TimedBundle,
    clock_findings,
    explained_step_back,
)
from signing.errors import FormatError
from signing.follows import Linked, follows_findings
from signing.predicate import ChainFollows, ClockCheck, ClockSteppedBack, parse_predicate

A = "a" * 64
B = "b" * 64


def linked(chain: str, seq: int, digest: str, follows: dict | None = None  # type: ignore[type-arg]
           ) -> Linked:
    return Linked(f"{chain}-{seq}", "h1", chain, seq, digest,
                  None if follows is None else ChainFollows(**follows))


def test_follows_linked_mismatched_and_missing() -> None:
    old = [linked("c1", 1, B), linked("c1", 2, A)]
    good = linked("c2", 1, B, {"chain_id": "c1", "seq": 2, "manifest_sha256": A})
    wrong = linked("c3", 1, B, {"chain_id": "c1", "seq": 2, "manifest_sha256": B})
    gone = linked("c4", 1, B, {"chain_id": "c1", "seq": 7, "manifest_sha256": A})
    found = {key: (code, err) for key, code, _, err in
             follows_findings([*old, good, wrong, gone])}
    assert found == {"c2-1": ("chain_follows", False),
                     "c3-1": ("chain_follows_mismatch", True),
                     "c4-1": ("chain_follows_missing", False)}


def test_a_followed_chain_that_goes_on_is_a_warning() -> None:
    old = [linked("c1", 1, B), linked("c1", 2, A), linked("c1", 3, B)]
    clone = linked("c2", 1, B, {"chain_id": "c1", "seq": 2, "manifest_sha256": A})
    found = [(code, err) for _, code, _, err in follows_findings([*old, clone])]
    assert found == [("chain_follows", False), ("chain_follows_continued", False)]


@pytest.mark.parametrize("bad", [
    "c1", {"chain_id": "c1", "seq": 0, "manifest_sha256": A},
    {"chain_id": "c1", "seq": True, "manifest_sha256": A},
    {"chain_id": "c1", "seq": 2, "manifest_sha256": "ABC"},
    {"chain_id": "c1", "seq": 2, "manifest_sha256": A, "extra": 1},
])
def test_a_malformed_follows_is_a_format_error(bad: object) -> None:
    predicate = {"host": {"id": "h1"}, "collectors": [],
                 "collection": {"id": "c2", "trigger": "schedule", "started_at": "t",
                                "finished_at": "t"},
                 "records": {"count": 0, "merkle_root": A},
                 "chain": {"id": "c2", "seq": 1, "prev": None}}
    assert parse_predicate(predicate).chain.follows is None
    predicate["chain"]["follows"] = bad  # type: ignore[index]
    with pytest.raises(FormatError, match=r"^predicate\.chain\.follows must be"):
        parse_predicate(predicate)


def timed(seq: int, started: str, finished: str, clock: ClockFacts | None = None,
          ) -> TimedBundle:
    return TimedBundle(f"k{seq}", "h1", "c1", seq, started, finished, clock or ClockFacts())


def test_the_bundle_ahead_of_the_next_is_reported_not_the_next() -> None:
    bundles = [timed(1, "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:01.000000Z"),
               timed(2, "2099-01-01T00:00:00.000000Z", "2099-01-01T00:00:01.000000Z"),
               timed(3, "2026-01-01T01:00:00.000000Z", "2026-01-01T01:00:01.000000Z")]
    found = clock_findings(bundles)
    assert [(key, code) for key, code, _ in found] == [("k2", "clock_ahead")]


def test_within_tolerance_is_no_finding_and_a_store_date_check_is_read() -> None:
    near = timed(1, "2026-01-01T00:00:00.000000Z", "2026-01-01T00:09:00.000000Z")
    after = timed(2, "2026-01-01T00:00:30.000000Z", "2026-01-01T00:00:31.000000Z")
    assert clock_findings([near, after]) == []
    check = ClockCheck("store_date", "2026-01-01T02:00:00.000000Z",
                       "2026-01-01T00:00:00.000000Z", 7200, CLOCK_TOLERANCE_SECONDS)
    ahead = timed(1, "2026-01-01T02:00:00.000000Z", "2026-01-01T02:00:01.000000Z",
                  ClockFacts(check=check))
    assert [code for _, code, _ in clock_findings([ahead])] == ["clock_ahead"]


def test_a_step_back_is_explained_only_by_its_own_record_and_beyond_tolerance() -> None:
    prev_end = "2099-01-01T00:00:01.000000Z"
    stepped = ClockFacts(stepped_back=ClockSteppedBack(prev_end, "2026-01-01T00:00:00.000000Z"))
    assert explained_step_back(prev_end, "2026-01-01T00:00:00.000000Z", stepped)
    assert not explained_step_back(prev_end, "2026-01-01T00:00:00.000000Z", ClockFacts())
    assert not explained_step_back("2098-01-01T00:00:00.000000Z",
                                   "2026-01-01T00:00:00.000000Z", stepped)
    small = "2026-01-01T00:00:00.000000Z"
    assert CLOCK_TOLERANCE_SECONDS == 600
    assert not explained_step_back("2026-01-01T00:05:00.000000Z", small, ClockFacts(
        stepped_back=ClockSteppedBack("2026-01-01T00:05:00.000000Z", small)))
