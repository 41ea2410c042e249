"""The fleet generator's own pieces (tests/fleet.py), in the fast tier: its clock must
reach everything the agent stamps, and leave the agent's clock as it was."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest

from tests.fleet import (
    START,
    FleetSpec,
    fleet_collectors,
    make_key,
    planted_for,
    records_per_bundle,
    sealing_clock,
)


def test_a_bundle_sealed_under_the_fleet_clock_carries_its_time(tmp_path: Path) -> None:
    import agent.seal
    from agent.config import load_config
    from agent.seal import seal_collection
    from agent.state import StateDir
    from collector.record import format_time

    config_path = tmp_path / "agent.toml"
    config_path.write_text(f'state_dir = "{tmp_path / "state"}"\nhost_id = "host-001"\n'
                           f'[store]\nurl = "file://{tmp_path / "store"}"\n')
    config = load_config(config_path, {})
    state = StateDir(config.state_dir)
    spec = FleetSpec(6, 6)
    moment = spec.started_at(1, 3)
    saved = (agent.seal.dt, agent.seal.utc_now)
    installed = moment - dt.timedelta(hours=1)
    with state.locked(), sealing_clock(moment):
        make_key(state, installed)
        sealed = seal_collection(config, "host-001",
                                 fleet_collectors(spec, 1, 3, format_time(moment)),
                                 "schedule", state)
    assert (agent.seal.dt, agent.seal.utc_now) == saved
    envelope = json.loads(sealed.entry.manifest_path.read_bytes())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    collection = statement["predicate"]["collection"]
    assert collection["started_at"] == format_time(moment)
    assert collection["finished_at"] > collection["started_at"]
    assert collection["id"].startswith(moment.strftime("%Y%m%dT%H%M%SZ-"))
    assert sealed.entry.name.date == moment.date().isoformat()
    assert sealed.record_count == records_per_bundle(spec, 1, 3)
    key_doc = json.loads(state.key_document_bytes())
    assert key_doc["created_at"] == format_time(installed)


def test_spec_and_planted_defects() -> None:
    with pytest.raises(ValueError, match="6 hosts"):
        FleetSpec(5, 10)
    spec = FleetSpec(12, 30)
    planted = planted_for(spec)
    hosts = {planted.deleted.host, planted.flipped.host, planted.foreign.host,
             planted.silent.host, planted.change.host}
    assert len(hosts) == 5, "each defect on a host of its own"
    assert 1 < planted.deleted.seq < spec.bundles, "a gap, not a truncation"
    assert planted.foreign.seq == spec.bundles + 1
    assert spec.started_at(5, spec.bundles) < spec.end - spec.silence
    assert spec.started_at(0, 1) == START
