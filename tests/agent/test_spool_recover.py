"""A seal's crash recovery reads only the spool entries that could follow the chain
head, so sealing on an agent whose spool holds thousands of unshipped bundles does not
read each one's metadata every time (it did: sealing grew quadratically offline)."""

from __future__ import annotations

from agent.config import load_config
from agent.seal import seal_collection
from agent.state import BUNDLE_FILE, StateDir
from tests.agent.s3_fixtures import tiny_collector
from tests.conftest import GamsaEnv


def test_recover_reads_only_entries_past_the_head(gamsa_env: GamsaEnv) -> None:
    config = load_config(gamsa_env.config, {})
    state = StateDir(config.state_dir)
    with state.locked():
        for _ in range(3):
            seal_collection(config, "test-host", [tiny_collector()], "schedule", state)
    entries = state.entries()
    assert [e.name.seq for e in entries] == [1, 2, 3]
    # An entry behind the head whose metadata cannot be read is not read by recover...
    (entries[0].path / BUNDLE_FILE).write_text("not json")
    with state.locked():
        head = state.recover()
    assert head is not None and head.seq == 3
    assert [e.name.seq for e in state.entries(after_seq=2)] == [3]
    # ...and a seal after it still extends the chain.
    with state.locked():
        seal_collection(config, "test-host", [tiny_collector()], "schedule", state)
    assert state.read_head() is not None and state.read_head().seq == 4  # type: ignore[union-attr]
