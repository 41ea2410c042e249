"""Every collector keeps the promises its declaration makes (osquery/psutil style).

Each collector available here is run, live and against the fixture tree, and every
record is checked against its declared record type: declared type, every required
field, no undeclared field, each value of a declared JSON type, and encodable by
`signing.canonical` (no floats, no unsafe integers). docs/COLLECTORS.md must be
what `collector.docs` renders from the same declarations.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.docs import render_agent_toml, render_collectors_markdown
from collector.record import Record
from collector.registry import (
    COMMON_RECORD_TYPES,
    CollectContext,
    Collector,
    all_collectors,
    collector_names,
    run_collector,
)
from signing.canonical import canonical_bytes

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "assets" / "rootfs" / "basic"
JSON_TYPES = {str, int, bool, list, dict, type(None)}
COLLECTORS = all_collectors()


def contract_violations(collector: Collector, record: Record) -> list[str]:
    """What is wrong with `record` against the declarations (empty when nothing)."""
    where = f"{collector.name}/{record.type}/{record.key!r}"
    if record.collector != collector.name:
        return [f"{where}: collector is {record.collector!r}"]
    declared = collector.record_types.get(record.type) or COMMON_RECORD_TYPES.get(record.type)
    if declared is None:
        return [f"{where}: undeclared record type"]
    problems = []
    if type(record.key) is not str:
        problems.append(f"{where}: key is not a string")
    for name, field in declared.fields.items():
        if field.required and name not in record.data:
            problems.append(f"{where}: missing required field {name!r}")
        # exact type: a bool is not an integer here, None only where declared
        if name in record.data and type(record.data[name]) not in field.types:
            problems.append(f"{where}: {name!r} is {type(record.data[name]).__name__}, "
                            f"declared {[t.__name__ for t in field.types]}")
    for name in set(record.data) - set(declared.fields):
        problems.append(f"{where}: undeclared field {name!r}")
    try:
        canonical_bytes(record.to_json("contract-test-host"))
    except Exception as exc:  # noqa: BLE001 - reported as a violation
        problems.append(f"{where}: not canonical-encodable: {exc}")
    return problems


def test_collector_names_without_import_match_the_declarations() -> None:
    assert collector_names() == list(COLLECTORS)


# The records that mean "could not see part of what it covers" (docs/DESIGN.md).
GAP_TYPES = frozenset({"source_unreadable", "command_failed", "coverage_gap"})


def expected_status(records: list[Record]) -> str:
    """What a run that did not raise must report, by the rule stated in the docs."""
    return "partial" if any(r.type in GAP_TYPES for r in records) else "ok"


@pytest.mark.parametrize("name", list(COLLECTORS))
def test_declaration_is_well_formed(name: str) -> None:
    collector = COLLECTORS[name]
    assert collector.name == name and collector.version and collector.description
    assert collector.platforms and set(collector.platforms) <= {"linux", "darwin", "win32"}
    assert collector.record_types
    for type_name, record_type in collector.record_types.items():
        assert type_name not in COMMON_RECORD_TYPES, f"{type_name} is declared in the registry"
        assert record_type.doc and record_type.key and record_type.fields
        for field_name, field in record_type.fields.items():
            assert field.doc, f"{type_name}.{field_name} has no doc"
            assert field.types and set(field.types) <= JSON_TYPES, (type_name, field_name)


def test_common_record_types_are_well_formed() -> None:
    for record_type in COMMON_RECORD_TYPES.values():
        for field in record_type.fields.values():
            assert field.doc and set(field.types) <= JSON_TYPES


@pytest.mark.parametrize("mode", ["live", "fixture"])
@pytest.mark.parametrize("name", list(COLLECTORS))
def test_records_match_declarations(name: str, mode: str) -> None:
    collector = COLLECTORS[name]
    ctx = CollectContext() if mode == "live" else CollectContext(root=FIXTURE)
    result = run_collector(collector, ctx)
    if result.status == "unsupported":
        pytest.skip(f"{name} does not run on this platform")
    # live, a sandbox may deny even root part of the machine (then partial, with gaps)
    assert result.status == expected_status(result.records), result.error
    assert (result.status == "partial") == bool(result.gaps)
    assert result.records
    problems = [p for record in result.records for p in contract_violations(collector, record)]
    assert problems == []
    keys = [(r.type, r.key) for r in result.records]
    assert len(keys) == len(set(keys)), "a (type, key) pair occurs twice"


def test_the_contract_check_catches_violations() -> None:
    collector = COLLECTORS["accounts"]
    good = {"gid": 1, "members": []}
    assert contract_violations(collector, Record("accounts", "group", "g", good)) == []
    bad = [
        Record("accounts", "nope", "g", good),
        Record("accounts", "group", "g", {"gid": 1}),
        Record("accounts", "group", "g", {**good, "extra": 1}),
        Record("accounts", "group", "g", {**good, "gid": True}),
        Record("accounts", "group", "g", {**good, "gid": None}),
        Record("accounts", "group", "g", {**good, "gid": 2**60}),
        Record("accounts", "group", "g", {**good, "members": [1.5]}),
    ]
    for record in bad:
        assert contract_violations(collector, record), record


def test_collectors_doc_is_up_to_date() -> None:
    on_disk = (REPO / "docs" / "COLLECTORS.md").read_text(encoding="utf-8")
    assert on_disk == render_collectors_markdown(), \
        "docs/COLLECTORS.md is stale: run `python -m collector.docs > docs/COLLECTORS.md`"


def test_packaged_agent_toml_collector_sections_are_the_declarations() -> None:
    """packaging/agent.toml's `[collectors.<name>]` tables and declared schedules are
    rendered from the COLLECTOR declarations; a changed option fails here."""
    path = REPO / "packaging" / "agent.toml"
    on_disk = path.read_text(encoding="utf-8")
    assert on_disk == render_agent_toml(on_disk), \
        "packaging/agent.toml is stale: run `python -m collector.docs --agent-toml " \
        "packaging/agent.toml`"
    for collector in all_collectors().values():
        assert collector.schedule is None or (collector.schedule_seconds or 0) > 0
        for option in collector.options:
            assert option.collector == collector.name, option
            option.default_value  # noqa: B018 - every default passes its own check
