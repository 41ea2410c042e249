"""Records stream from the collectors into the spool (agent/records.py): a generator
collector's records are sealed as `write_records` would seal them, an error mid-stream
keeps what came before, and a sealing killed mid-stream leaves no half bundle."""

from __future__ import annotations

import base64
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.seal import Sealed, seal_collection
from agent.state import StateDir
from collector.record import Record
from collector.registry import CollectContext, Collector
from signing.bundle import BundleName, write_records
from signing.errors import CanonicalError
from tests.conftest import GamsaEnv, ok

REPO = Path(__file__).resolve().parents[2]
ANY_PLATFORM = ("linux", "darwin", "win32")


def numbered(count: int, fail_after: int | None = None) -> Collector:
    def collect(_ctx: CollectContext) -> Iterator[Record]:
        for n in range(count):
            if n == fail_after:
                raise OSError(5, "Input/output error")
            yield Record("numbered", "item", f"{n:06d}", {"n": n, "text": f"item {n}"},
                         "2026-12-02T00:00:00.000000Z")

    return Collector("numbered", "1", "a generator (tests)", ANY_PLATFORM, {}, collect)


def seal(env: GamsaEnv, *collectors: Collector) -> Sealed:
    config = load_config(env.config, {})
    state = StateDir(config.state_dir)
    with state.locked():
        return seal_collection(config, "test-host", list(collectors), "on-demand", state)


def statement(sealed: Sealed) -> dict[str, Any]:
    envelope = json.loads(sealed.entry.manifest_path.read_bytes())
    payload: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return payload


def lines(sealed: Sealed) -> list[dict[str, Any]]:
    data = gzip.decompress(sealed.entry.records_path.read_bytes())
    return [json.loads(line) for line in data.splitlines()]


def ship_and_verify(env: GamsaEnv, bundles: int) -> dict[str, Any]:
    ok(env.run("ship"))
    report: dict[str, Any] = json.loads(ok(env.run("verify", "--json")).stdout)
    (chain,) = report["chains"]
    assert chain["bundles"] == bundles and chain["first_seq"] == 1
    assert chain["last_seq"] == bundles
    return report


def test_a_generator_collectors_records_are_sealed_as_before(gamsa_env: GamsaEnv) -> None:
    count = 10_000  # more than two batches of the writer
    sealed = seal(gamsa_env, numbered(count))
    expected = [r.to_json("test-host") for r in numbered(count).collect(CollectContext())]
    # the same bytes the in-memory writer gives: the format does not change
    assert sealed.entry.records_path.read_bytes() == write_records(expected).data
    predicate = statement(sealed)["predicate"]
    assert predicate["records"]["count"] == count == sealed.record_count
    assert predicate["collectors"][0]["records"] == count
    assert predicate["collectors"][0]["status"] == "ok"
    assert not [p for p in sealed.entry.path.parent.iterdir() if p.name.startswith(".")]
    report = ship_and_verify(gamsa_env, 1)
    assert report["records"] == count


def test_an_error_mid_generator_keeps_the_records_before_it(gamsa_env: GamsaEnv) -> None:
    sealed = seal(gamsa_env, numbered(10_000, fail_after=5_000), numbered(3))
    records = lines(sealed)
    assert [r["key"] for r in records[:5_000]] == [f"{n:06d}" for n in range(5_000)]
    error = records[5_000]
    assert error["type"] == "collector_error"
    assert error["data"] == {"error": "OSError: [Errno 5] Input/output error",
                             "records_before_error": 5_000}
    assert [r["key"] for r in records[5_001:]] == ["000000", "000001", "000002"]
    first, second = statement(sealed)["predicate"]["collectors"]
    assert (first["status"], first["records"]) == ("error", 5_001)
    assert first["error"] == "OSError: [Errno 5] Input/output error"
    assert (second["status"], second["records"]) == ("ok", 3)
    ship_and_verify(gamsa_env, 1)


def test_a_name_in_a_later_record_is_pseudonymized_in_an_earlier_one(
        gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    """Streaming keeps the bundle-wide rule (docs/FORMAT.md §2): the address is a
    person value only because of the login record that comes last."""
    key = tmp_path / "pseudonym.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    gamsa_env.write_config(extra=f'[privacy]\npseudonymize = ["address"]\n'
                                 f'key_file = "{key}"\n')
    early = Collector("early", "1", "text first (tests)", ANY_PLATFORM, {}, lambda _ctx: [
        Record("early", "note", "n1", {"text": "ssh from 10.77.1.23 accepted"})])
    late = Collector("sessions", "1", "a login last (tests)", ANY_PLATFORM, {}, lambda _ctx: [
        Record("sessions", "login", "pts/1:1:jiwoo", {
            "user": "jiwoo", "terminal": "pts/1", "host": "", "address": "10.77.1.23",
            "pid": 42, "file": "/var/log/wtmp"})])
    sealed = seal(gamsa_env, early, numbered(5_000), late)
    records = lines(sealed)
    note, login = records[0], records[-1]
    assert login["data"]["address"].startswith("psn:")
    assert note["data"]["text"] == f"ssh from {login['data']['address']} accepted"
    assert b"10.77.1.23" not in gzip.decompress(sealed.entry.records_path.read_bytes())
    assert statement(sealed)["predicate"]["privacy"]["pseudonymized"] == ["address"]
    ship_and_verify(gamsa_env, 1)


def test_a_record_outside_the_json_domain_seals_nothing(gamsa_env: GamsaEnv) -> None:
    first = seal(gamsa_env, numbered(3))
    state_dir = gamsa_env.state_dir
    head = (state_dir / "chain.json").read_bytes()

    def floats(_ctx: CollectContext) -> Iterator[Record]:
        yield from numbered(5_000).collect(_ctx)
        yield Record("floats", "item", "x", {"ratio": 0.5})

    bad = Collector("floats", "1", "a float (tests)", ANY_PLATFORM, {}, floats)
    with pytest.raises(CanonicalError, match="float"):
        seal(gamsa_env, bad)
    assert (state_dir / "chain.json").read_bytes() == head
    assert sorted(p.name for p in (state_dir / "spool").iterdir()) == [first.entry.path.name]
    seal(gamsa_env, numbered(3))
    ship_and_verify(gamsa_env, 2)


def test_a_bundle_being_written_is_no_spool_entry_until_committed(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    name = BundleName("test-host", "2026-12-02", 7, "20261202T000000Z-0badcafe")
    pending = state.begin_bundle(name)
    pending.write_records(b"part of a records object")
    assert pending.temp.name.startswith(".tmp-") and state.entries() == []
    assert state.usage(1 << 20).bundles == 0  # nor counted against the spool's cap
    assert state.recover() is None  # what a kill leaves is removed on the next start
    assert list(state.spool.iterdir()) == []

    pending = state.begin_bundle(name)
    pending.write_records(write_records([{"n": 1}]).data)
    pending.records_done()
    entry = pending.commit(b"{}")
    assert state.entries() == [entry] and entry.path.name == "0000000007-" + name.collection_id
    assert sorted(os.listdir(entry.path)) == ["bundle.json", "manifest.dsse.json",
                                              "records.jsonl.gz"]


# Runs in a child process: seal an endless collection, touching MARKER once 20,000
# records went by, until it is killed.
ENDLESS = r"""
import sys, time
from pathlib import Path
from agent.config import load_config
from agent.seal import seal_collection
from agent.state import StateDir
from collector.record import Record
from collector.registry import Collector

config_path, marker = Path(sys.argv[1]), Path(sys.argv[2])

def endless(_ctx):
    n = 0
    while True:
        yield Record("endless", "item", f"{n:09d}", {"n": n, "pad": "x" * 200})
        n += 1
        if n == 20_000:
            marker.touch()
        elif n > 20_000:
            time.sleep(0.001)

config = load_config(config_path, {})
state = StateDir(config.state_dir)
with state.locked():
    seal_collection(config, "test-host", [Collector(
        "endless", "1", "never ends (tests)", ("linux",), {}, endless)], "on-demand", state)
raise SystemExit("the endless collection ended")
"""


def wait_for(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def partial_records(spool: Path) -> list[Path]:
    return [p / "records.jsonl.gz" for p in spool.glob(".tmp-*")
            if (p / "records.jsonl.gz").is_file()]


@pytest.mark.slow
def test_kill_9_while_streaming_leaves_no_half_bundle(gamsa_env: GamsaEnv,
                                                      tmp_path: Path) -> None:
    ok(gamsa_env.run("collect"))  # an established chain, shipped
    spool = gamsa_env.state_dir / "spool"
    head = (gamsa_env.state_dir / "chain.json").read_bytes()
    marker = tmp_path / "streaming"
    errors = tmp_path / "child.stderr"
    with errors.open("w") as stderr:
        child = subprocess.Popen([sys.executable, "-c", ENDLESS, str(gamsa_env.config),
                                  str(marker)], cwd=REPO, stderr=stderr)
    try:
        wait_for(lambda: marker.exists() or child.poll() is not None, "20,000 records")
        # records have reached the disk: the kill lands mid-stream, not before it
        wait_for(lambda: any(p.stat().st_size for p in partial_records(spool))
                 or child.poll() is not None, "records in the spool's temp dir")
        assert child.poll() is None, errors.read_text()
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    # what the kill left: a hidden temp dir with part of a records object, no entry
    (temp,) = spool.iterdir()
    assert temp.name.startswith(".tmp-") and sorted(os.listdir(temp)) == ["records.jsonl.gz"]
    assert StateDir(gamsa_env.state_dir).entries() == []
    assert (gamsa_env.state_dir / "chain.json").read_bytes() == head

    after = ok(gamsa_env.run("collect"))
    assert "seq 2" in after.stdout and "shipped 1 bundle(s)" in after.stdout, after.stdout
    assert list(spool.iterdir()) == []  # the temp dir is gone, the new bundle shipped
    report = json.loads(ok(gamsa_env.run("verify", "--json")).stdout)
    (chain,) = report["chains"]
    assert (chain["first_seq"], chain["last_seq"], chain["bundles"]) == (1, 2, 2)
    assert not [f for f in report["findings"] if f["code"] == "chain_genesis"][1:]
