"""The shipper stores only spooled bytes that match their signed manifest.

A records file changed in the spool after sealing (disk fault, tampering) must never
become an object in the write-once store: once there it could not be removed, and
it would be indistinguishable from evidence until someone ran `gamsa verify`. The
shipper stops at that bundle, with a one-line error naming the spool entry, exit 1,
and keeps it and every later bundle in the spool. Shown on file:// and on s3://
(moto over HTTP), and for the multipart path of the S3 store in-process. And a
spool entry leaves only once its manifest is confirmed: a store whose HEAD reports
another checksum keeps every entry spooled.
"""

from __future__ import annotations

import hashlib
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


def ship_with_second_bundle_tampered(env: GamsaEnv) -> tuple[Any, list[Path]]:
    seal_many(env, 3)
    entries = spool_entries(env)
    assert len(entries) == 3
    flip_byte(entries[1] / RECORDS_FILE)
    return env.run("ship"), entries


def assert_refused(result: Any, entries: list[Path]) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(entries[1]) in lines[0] and "signed manifest" in lines[0], lines[0]
    # The first bundle shipped; the tampered one and the one after it stay spooled.
    assert [p.exists() for p in entries] == [False, True, True]


def assert_only_first_manifest_and_no_tampered_records(stored: list[str]) -> None:
    """Bundle 1 committed; nothing of bundle 2. (A pipelined store may already hold
    bundle 3's records object: it matched its manifest, and a later run's put of the
    same bytes is a success.)"""
    manifests = [key for key in stored if key.endswith(".manifest.dsse.json")]
    assert len(manifests) == 1 and "/0000000001-" in "/" + manifests[0].split("/")[-1]
    assert not [key for key in stored if key.split("/")[-1].startswith("0000000002-")], stored


def test_file_store_refuses_a_records_file_changed_in_the_spool(gamsa_env: GamsaEnv) -> None:
    gamsa_env.write_config(collectors='["host"]')
    result, entries = ship_with_second_bundle_tampered(gamsa_env)
    assert_refused(result, entries)
    stored = sorted(p.name for p in gamsa_env.store.rglob("*") if p.is_file())
    assert_only_first_manifest_and_no_tampered_records(stored)

    status = gamsa_env.run("status")
    assert status.returncode == 1 and "signed manifest" in status.stdout + status.stderr


def test_s3_store_refuses_a_records_file_changed_in_the_spool(
        s3_gamsa: S3GamsaEnv, s3_client: Any) -> None:
    result, entries = ship_with_second_bundle_tampered(s3_gamsa)
    assert_refused(result, entries)
    keys = object_versions(s3_client, s3_gamsa.bucket, f"{s3_gamsa.prefix}/")
    assert_only_first_manifest_and_no_tampered_records(sorted(keys))


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
