"""signing/predicate.py: the manifest predicate's one model. Any predicate survives
JSON and back unchanged (unknown members too), the golden manifests re-encode to
their own bytes, and each bad shape is one FormatError naming the field's path."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signing.canonical import canonical_bytes
from signing.errors import FormatError
from signing.predicate import (
    ABSENT,
    AgentInfo,
    Chain,
    ChainFollows,
    ClockCheck,
    ClockSteppedBack,
    Collection,
    CollectorEntry,
    Gap,
    Host,
    ManifestPredicate,
    Privacy,
    RecordsSummary,
    Resources,
    parse_bundle_statement,
    parse_predicate,
)

GOLDEN = sorted((Path(__file__).resolve().parents[1] / "assets" / "predicate").glob("*.json"))
HEX = "0123456789abcdef"
SAFE = 2**53 - 1

texts = st.text(max_size=12)
counts = st.integers(0, SAFE)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-SAFE, SAFE) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6)


def extras(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    """Unknown members for `cls`: names the model does not have, any JSON values."""
    known = {f.name for f in dataclasses.fields(cls)}
    return st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k not in known),
                           json_values, max_size=2)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


hosts = st.builds(Host, texts, optional(texts), st.sampled_from([ABSENT, None]) | texts,
                  optional(texts), optional(texts), optional(texts), extras(Host))
collections = st.builds(
    Collection, texts, texts, texts, texts, optional(texts),
    optional(st.builds(ClockSteppedBack, texts, texts, extras(ClockSteppedBack))),
    optional(st.builds(ClockCheck, texts, texts, texts, st.integers(-SAFE, SAFE), counts,
                       extras(ClockCheck))),
    extras(Collection))
follows = st.builds(ChainFollows, texts, st.integers(1, SAFE), st.text(HEX, min_size=64,
                                                                       max_size=64))
chains = st.builds(Chain, texts, st.integers(1, SAFE), optional(texts), optional(texts),
                   optional(follows), extras(Chain))
gaps = st.builds(Gap, texts, counts, extras(Gap))
entries = st.builds(CollectorEntry, texts, texts, texts, counts, optional(texts), counts,
                    optional(st.lists(gaps, max_size=2).map(tuple)), extras(CollectorEntry))
agents = st.builds(AgentInfo, texts, texts, texts, texts,
                   optional(st.builds(Resources, counts, counts, counts, counts,
                                      extras(Resources))), extras(AgentInfo))
predicates = st.builds(
    ManifestPredicate, hosts, collections, st.builds(RecordsSummary, counts, texts,
                                                     extras(RecordsSummary)),
    chains, st.lists(entries, max_size=3).map(tuple), optional(agents),
    optional(st.builds(Privacy, st.lists(texts, max_size=3).map(tuple), texts,
                       extras(Privacy))),
    extras(ManifestPredicate))


@settings(max_examples=150, deadline=None)
@given(predicates)
def test_any_predicate_survives_json_and_back(predicate: ManifestPredicate) -> None:
    encoded = canonical_bytes(predicate.to_json())
    again = parse_predicate(json.loads(encoded))
    assert again == predicate
    assert canonical_bytes(again.to_json()) == encoded


def golden_payload(path: Path) -> bytes:
    return base64.b64decode(json.loads(path.read_bytes())["payload"])


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.name)
def test_sealed_manifests_re_encode_to_their_own_bytes(path: Path) -> None:
    payload = golden_payload(path)
    statement = parse_bundle_statement(payload)
    assert canonical_bytes(statement.to_json()) == payload
    assert statement.predicate.host.machine_id_sha256 is None  # null, not missing


def test_the_golden_manifests_cover_every_optional_field() -> None:
    parsed = [parse_bundle_statement(golden_payload(path)).predicate for path in GOLDEN]
    assert len(parsed) == 3
    assert any(p.chain.follows is not None and p.chain.genesis_reason for p in parsed)
    assert any(p.collection.clock_check is not None for p in parsed)
    assert any(p.collection.clock_started_at is not None for p in parsed)
    assert any(p.collection.clock_stepped_back is not None for p in parsed)
    assert all(p.privacy is not None and p.agent and p.agent.resources for p in parsed)
    assert any(gap for p in parsed for c in p.collectors for gap in c.gap_list)
    assert any(c.error for p in parsed for c in p.collectors)


def test_unknown_members_are_kept_where_they_stood() -> None:
    predicate = json.loads(golden_payload(GOLDEN[0]))["predicate"]
    predicate["attestation"] = {"tpm_quote": "abc"}
    predicate["chain"]["witness"] = [1, 2]
    predicate["collectors"][0]["cpu_ms"] = 5
    parsed = parse_predicate(predicate)
    assert parsed.extra == {"attestation": {"tpm_quote": "abc"}}
    assert parsed.chain.extra == {"witness": [1, 2]}
    assert parsed.collectors[0].extra == {"cpu_ms": 5}
    assert parsed.to_json() == predicate


def test_absent_and_null_stay_apart() -> None:
    predicate = json.loads(golden_payload(GOLDEN[0]))["predicate"]
    del predicate["host"]["machine_id_sha256"], predicate["collectors"][0]["gaps"]
    parsed = parse_predicate(predicate)
    assert parsed.host.machine_id_sha256 is ABSENT
    assert parsed.collectors[0].gaps is None and parsed.collectors[0].gap_list == ()
    assert parsed.to_json() == predicate


def minimal() -> dict[str, Any]:
    """The fields FORMAT.md's table says a verifier reads, and nothing else."""
    return {"host": {"id": "h1"},
            "collection": {"id": "c1", "trigger": "schedule",
                           "started_at": "2026-12-02T00:00:00.000000Z",
                           "finished_at": "2026-12-02T00:00:01.000000Z"},
            "records": {"count": 0, "merkle_root": "e3" * 32},
            "chain": {"id": "c1", "seq": 1, "prev": None},
            "collectors": [{"name": "host", "version": "1", "status": "ok", "records": 1,
                            "error": None, "duration_ms": 3}]}


def test_the_informational_fields_may_be_absent() -> None:
    parsed = parse_predicate(minimal())
    assert parsed.agent is None and parsed.privacy is None and parsed.host.hostname is None
    assert parsed.to_json() == minimal()


def put(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with `...`, delete) the member at a dotted path; `[n]` indexes a list."""
    *parents, last = path.split(".")
    for part in parents:
        name, _, index = part.partition("[")
        doc = doc[name] if not index else doc[name][int(index[:-1])]
    name, _, index = last.partition("[")
    where: Any = doc[name] if index else doc
    key: Any = int(index[:-1]) if index else name
    if value is ...:
        del where[key]
    else:
        where[key] = value


BAD = [
    ("host", ..., "predicate.host is missing"),
    ("host", [], "predicate.host is not an object"),
    ("host.id", 7, "predicate.host.id is not a string"),
    ("host.hostname", None, "predicate.host.hostname is not a string"),
    ("host.machine_id_sha256", 1, "predicate.host.machine_id_sha256 is not a string or null"),
    ("collection.started_at", ..., "predicate.collection.started_at is missing"),
    ("collection.trigger", ["schedule"], "predicate.collection.trigger is not a string"),
    ("collection.clock_check", {"source": "store_date"},
     "predicate.collection.clock_check.local_time is missing"),
    ("collection.clock_stepped_back", "yes",
     "predicate.collection.clock_stepped_back is not an object"),
    ("records.count", "3", "predicate.records.count is not an integer"),
    ("records.count", -1, "predicate.records.count is less than 0"),
    ("records.count", 1.0, "predicate.records.count is not an integer"),
    ("records.merkle_root", None, "predicate.records.merkle_root is not a string"),
    ("chain.seq", True, "predicate.chain.seq is not an integer"),
    ("chain.seq", 0, "predicate.chain.seq is less than 1"),
    ("chain.prev", ..., "predicate.chain.prev is missing"),
    ("chain.prev", 5, "predicate.chain.prev is not a string or null"),
    ("chain.genesis_reason", None, "predicate.chain.genesis_reason is not a string"),
    ("chain.follows", {"chain_id": "c0", "seq": 1},
     "predicate.chain.follows must be {chain_id: string, seq: int >= 1, manifest_sha256: "
     "hex}, exactly"),
    ("collectors", {}, "predicate.collectors is not a list"),
    ("collectors[0]", "host", "predicate.collectors[0] is not an object"),
    ("collectors[0].status", ..., "predicate.collectors[0].status is missing"),
    ("collectors[0].error", ..., "predicate.collectors[0].error is missing"),
    ("collectors[0].gaps", [{"reason": "x", "count": "2"}],
     "predicate.collectors[0].gaps[0].count is not an integer"),
    ("agent", {"name": "gamsa", "version": "1", "config_sha256": "x"},
     "predicate.agent.key_id is missing"),
    ("privacy", {"pseudonymized": ["user", 3], "key_id": "k"},
     "predicate.privacy.pseudonymized[1] is not a string"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_shape_is_one_line_naming_the_field(path: str, value: Any, message: str) -> None:
    doc = copy.deepcopy(minimal())
    put(doc, path, value)
    with pytest.raises(FormatError) as caught:
        parse_predicate(doc)
    assert caught.value.message == message


def test_a_predicate_that_is_not_an_object() -> None:
    with pytest.raises(FormatError, match=r"^predicate is not an object$"):
        parse_predicate(["host"])
