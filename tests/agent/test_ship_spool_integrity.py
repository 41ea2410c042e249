"""The shipper stores only spooled bytes that match their signed manifest.

A records file changed in the spool after sealing (disk fault, tampering) must never
become an object in the write-once store: once there it could not be removed. The
shipper commits that bundle's signed manifest alone, moves the entry whole to the
state dir's quarantine/ with the reason, ships the rest of the chain, and exits 1
naming it; `gamsa status` exits 1 until someone removes it, and `gamsa verify`
reports exactly that bundle's records as missing. A spooled manifest that is itself
unreadable is quarantined with nothing stored: a gap. Shown on file:// and on s3://
(moto over HTTP), and for the multipart path of the S3 store in-process. And a
spool entry leaves only once its manifest is confirmed: a store whose HEAD reports
another checksum keeps every entry spooled.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.file_store import FileStore
from agent.state import RECORDS_FILE
from agent.store import DigestMismatchError, ObjectInfo
from signing.errors import StoreError
from tests.agent.s3_fixtures import MotoServer, S3GamsaEnv, object_versions, seal_many
from tests.agent.test_s3_store import MIB, open_s3, sha
from tests.conftest import GamsaEnv


def flip_byte(path: Path, offset: int = 20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def spool_entries(env: GamsaEnv) -> list[Path]:
    return sorted((env.state_dir / "spool").iterdir())


def ship_with_second_bundle_tampered(env: GamsaEnv, part: str = RECORDS_FILE,
                                     ) -> tuple[Any, list[Path]]:
    seal_many(env, 3)
    entries = spool_entries(env)
    assert len(entries) == 3
    flip_byte(entries[1] / part)
    return env.run("ship"), entries


def assert_quarantined(env: GamsaEnv, result: Any, entries: list[Path], why: str) -> None:
    """Bundles 1 and 3 shipped; bundle 2 moved whole to quarantine/, with the reason;
    `ship` and `status` exit 1 naming it, in one line each."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "shipped 2 bundle(s)" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    kept = env.state_dir / "quarantine" / entries[1].name
    assert str(kept) in lines[0] and why in lines[0], lines[0]
    assert [p.exists() for p in entries] == [False, False, False]
    assert {"bundle.json", "manifest.dsse.json", RECORDS_FILE,
            "quarantine-reason.txt"} == {p.name for p in kept.iterdir()}
    assert why in (kept / "quarantine-reason.txt").read_text()
    assert (kept / RECORDS_FILE).is_file()  # the changed bytes, kept for investigation

    status = env.run("status", "--json")
    assert status.returncode == 1
    problems = json.loads(status.stdout)["problems"]
    assert len(problems) == 1 and str(kept) in problems[0] and why in problems[0]
    # Once someone has looked and removed it, status is clean again.
    shutil.rmtree(kept)
    assert env.run("status").returncode == 0


def verify_findings(env: GamsaEnv) -> set[tuple[str, str]]:
    trust = str(env.state_dir / "keys" / "agent.json")
    report = json.loads(env.run("verify", "--trust", trust, "--json").stdout)
    return {(f["code"], f["key"].split("/")[-1][:10]) for f in report["findings"]
            if f["severity"] == "error"}


def test_file_store_never_stores_a_records_file_changed_in_the_spool(
        gamsa_env: GamsaEnv) -> None:
    result, entries = ship_with_second_bundle_tampered(gamsa_env)
    stored = sorted(p.name for p in gamsa_env.store.rglob("*") if p.is_file())
    assert_quarantined(gamsa_env, result, entries, "signed manifest names")
    # The store holds bundle 2's signed manifest, never its changed records: verify
    # names exactly that, and the chain around it is whole.
    assert [n[:10] for n in stored if n.endswith(".records.jsonl.gz")] == [
        "0000000001", "0000000003"]
    assert len([n for n in stored if n.endswith(".manifest.dsse.json")]) == 3
    assert verify_findings(gamsa_env) == {("records_missing", "0000000002")}


def test_s3_store_never_stores_a_records_file_changed_in_the_spool(
        s3_gamsa: S3GamsaEnv, s3_client: Any) -> None:
    result, entries = ship_with_second_bundle_tampered(s3_gamsa)
    assert_quarantined(s3_gamsa, result, entries, "signed manifest names")
    keys = object_versions(s3_client, s3_gamsa.bucket, f"{s3_gamsa.prefix}/")
    names = sorted(key.split("/")[-1] for key in keys)
    assert [n[:10] for n in names if n.endswith(".records.jsonl.gz")] == [
        "0000000001", "0000000003"]
    assert len([n for n in names if n.endswith(".manifest.dsse.json")]) == 3
    assert all(len(versions) == 1 for versions in keys.values())
    assert verify_findings(s3_gamsa) == {("records_missing", "0000000002")}


def test_an_unreadable_spooled_manifest_is_quarantined_and_nothing_of_it_stored(
        gamsa_env: GamsaEnv) -> None:
    manifest = "manifest.dsse.json"
    result, entries = ship_with_second_bundle_tampered(gamsa_env, part=manifest)
    assert_quarantined(gamsa_env, result, entries, "manifest is unreadable")
    stored = sorted(p.name for p in gamsa_env.store.rglob("*") if p.is_file())
    assert not [n for n in stored if n.startswith("0000000002")], stored
    # What is lost is visible: a gap in the chain before bundle 3.
    assert {code for code, _ in verify_findings(gamsa_env)} == {"chain_gap"}


def test_s3_put_file_streams_a_large_file_and_refuses_a_wrong_digest(
        aws_env: None, moto_server: MotoServer, lock_bucket: str, s3_client: Any,
        tmp_path: Path) -> None:
    store = open_s3(moto_server, lock_bucket, multipart_threshold=6 * MIB, part_size=5 * MIB)
    data = bytes(range(256)) * (11 * MIB // 256) + b"tail"
    path = tmp_path / "big.records.jsonl.gz"
    path.write_bytes(data)

    # A digest the file does not have: parts may upload, but no object is created.
    wrong = hashlib.sha256(b"what the manifest signed").hexdigest()
    with pytest.raises(DigestMismatchError) as caught:
        store.put_file("v1/big.records.jsonl.gz", path, wrong)
    assert caught.value.actual == sha(data) and str(path) in caught.value.message
    assert object_versions(s3_client, lock_bucket, "pfx/") == {}
    assert s3_client.list_multipart_uploads(Bucket=lock_bucket).get("Uploads", []) == []

    # The right digest: stored in three parts, the server's composite checksum confirmed.
    assert store.put_file("v1/big.records.jsonl.gz", path, sha(data)) is True
    head = s3_client.head_object(Bucket=lock_bucket, Key="pfx/v1/big.records.jsonl.gz")
    assert head["ETag"].endswith('-3"'), head["ETag"]
    assert store.get("v1/big.records.jsonl.gz") == data
    assert store.put_file("v1/big.records.jsonl.gz", path, sha(data)) is False  # same bytes


def test_s3_put_file_of_a_small_file_checks_its_digest_before_the_put(
        aws_env: None, moto_server: MotoServer, lock_bucket: str, s3_client: Any,
        tmp_path: Path) -> None:
    store = open_s3(moto_server, lock_bucket)
    path = tmp_path / "small"
    path.write_bytes(b"evidence\n")
    with pytest.raises(DigestMismatchError):
        store.put_file("v1/small", path, sha(b"other"))
    assert object_versions(s3_client, lock_bucket, "pfx/") == {}
    assert store.put_file("v1/small", path, sha(b"evidence\n")) is True
    info = store.head("v1/small")
    assert info is not None and info.sha256 == sha(b"evidence\n")  # reported by the server


class MisreportingStore(FileStore):
    """A real directory store whose HEAD reports a wrong checksum for manifests, as
    a faulty server might; `concurrency` > 1 takes the shipper's pipelined path."""

    def __init__(self, root: Path, concurrency: int) -> None:
        super().__init__(root)
        self.concurrency = concurrency

    def head(self, key: str) -> ObjectInfo | None:
        info = super().head(key)
        if info is None or not key.endswith(".manifest.dsse.json"):
            return info
        return ObjectInfo(info.key, info.size, "0" * 64)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_manifest_the_store_reports_with_another_checksum_stays_spooled(
        gamsa_env: GamsaEnv, concurrency: int) -> None:
    from agent.config import load_config
    from agent.ship import ship_spool
    from agent.state import StateDir

    seal_many(gamsa_env, 3)
    config = load_config(gamsa_env.config, {})
    state = StateDir(config.state_dir)
    store = MisreportingStore(gamsa_env.store, concurrency)
    with state.locked():
        signer, _ = state.signer("test-host")
        with pytest.raises(StoreError, match=r"not confirmed after upload .*reports sha256 0{64}"):
            ship_spool(state, store, signer.key_id)
    assert len(state.entries()) == 3  # nothing removed from the spool unconfirmed
    assert "not confirmed" in state.read_status()["last_error"]["message"]


@pytest.mark.slow
def test_killed_at_every_step_around_a_quarantine_then_one_ship_settles_it(
        gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    seal_many(gamsa_env, 3)
    entries = spool_entries(gamsa_env)
    flip_byte(entries[1] / RECORDS_FILE)
    template = tmp_path / "template"
    shutil.copytree(gamsa_env.state_dir, template)
    steps_hit: list[str] = []
    for step in range(1, 20):  # from the same start, killed at each crash point in turn
        shutil.rmtree(gamsa_env.state_dir)
        shutil.rmtree(gamsa_env.store, ignore_errors=True)
        shutil.copytree(template, gamsa_env.state_dir)
        crashed = gamsa_env.run("ship", crash_at=step)
        if crashed.returncode != -9:
            assert crashed.returncode == 1, crashed.stderr  # past the last crash point
            break
        steps_hit.append(crashed.stderr.strip().split(": ", 1)[1])
        resumed = gamsa_env.run("ship")
        assert resumed.returncode in (0, 1), resumed.stderr  # 1: this run quarantined
        assert "Traceback" not in resumed.stderr
        assert spool_entries(gamsa_env) == []
        quarantined = list((gamsa_env.state_dir / "quarantine").iterdir())
        assert [p.name for p in quarantined] == [entries[1].name]
        assert verify_findings(gamsa_env) == {("records_missing", "0000000002")}, step
    assert "quarantine reason written" in steps_hit and "manifest shipped" in steps_hit
    assert len(steps_hit) >= 9, steps_hit  # 3 bundles, 3 crash points each


def test_a_lost_head_update_and_a_corrupt_manifest_neither_block_nor_fork(
        gamsa_env: GamsaEnv) -> None:
    """Bundle 2 spooled, its head update lost in a crash, its manifest then corrupted:
    recovery cannot follow it, the shipper quarantines it, and the next collection
    takes seq 2 again, so the store's chain stays whole."""
    seal_many(gamsa_env, 1)
    head_after_first = (gamsa_env.state_dir / "chain.json").read_bytes()
    seal_many(gamsa_env, 1)
    (gamsa_env.state_dir / "chain.json").write_bytes(head_after_first)
    entries = spool_entries(gamsa_env)
    flip_byte(entries[1] / "manifest.dsse.json")

    result = gamsa_env.run("ship")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "manifest is unreadable" in result.stderr and "shipped 1 bundle" in result.stdout
    collected = gamsa_env.run("collect")
    assert collected.returncode == 0 and "seq 2" in collected.stdout, collected.stderr
    assert verify_findings(gamsa_env) == set()
