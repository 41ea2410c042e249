"""The s3:// store against moto's S3 server over HTTP: put semantics, Object Lock,
checksums, multipart, listing, and collect + ship + verify through the real CLI."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.config import StoreConfig
from agent.retry import RetryPolicy
from signing.errors import ConflictError, StoreError
from tests.agent.s3_fixtures import (
    REGION,
    MotoServer,
    S3GamsaEnv,
    object_versions,
)

MIB = 1024 * 1024


def store_config(server: MotoServer, bucket: str, **overrides: Any) -> StoreConfig:
    values: dict[str, Any] = {
        "url": f"s3://{bucket}/pfx", "endpoint_url": server.url, "region": REGION,
        "addressing_style": "path", "object_lock_mode": "COMPLIANCE", "retention_days": 3,
        "connect_timeout": 2, "read_timeout": 5}
    values.update(overrides)
    return StoreConfig(**values)


def open_s3(server: MotoServer, bucket: str, **kwargs: Any) -> Any:
    from agent.s3_store import S3Store

    config = store_config(server, bucket)
    return S3Store(config.url, config,
                   retry=RetryPolicy(max_attempts=3, max_seconds=10, base_delay=0.01),
                   **kwargs)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_cli_import_does_not_import_boto3() -> None:
    code = "import agent.cli, sys; assert 'boto3' not in sys.modules, 'boto3 imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_put_is_create_only_and_compares_our_own_digest(
        aws_env: None, moto_server: MotoServer, lock_bucket: str, s3_client: Any) -> None:
    store = open_s3(moto_server, lock_bucket)
    data = b"evidence\n" * 100
    assert store.put("v1/a.bin", data, sha(data)) is True
    assert store.put("v1/a.bin", data, sha(data)) is False  # same bytes: success
    other = data + b"x"
    with pytest.raises(ConflictError) as caught:
        store.put("v1/a.bin", other, sha(other))
    message = caught.value.message
    assert "v1/a.bin" in message and sha(data) in message and sha(other) in message
    assert store.get("v1/a.bin") == data
    versions = object_versions(s3_client, lock_bucket, "pfx/")
    assert [len(v) for v in versions.values()] == [1], versions  # never a second version

    # The ChecksumSHA256 we sent is what the server holds, with the retention asked for.
    head = s3_client.head_object(Bucket=lock_bucket, Key="pfx/v1/a.bin", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert head["ObjectLockMode"] == "COMPLIANCE"
    until = head["ObjectLockRetainUntilDate"].astimezone(dt.UTC)
    expected = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    assert abs((until - expected).total_seconds()) < 120


def test_a_lying_stored_checksum_is_not_trusted(
        aws_env: None, moto_server: MotoServer, lock_bucket: str, s3_client: Any) -> None:
    """moto keeps whatever ChecksumSHA256 it is sent; the store re-hashes the bytes."""
    store = open_s3(moto_server, lock_bucket)
    planted = b"planted by someone else"
    claimed = base64.b64encode(hashlib.sha256(b"what we will put").digest()).decode()
    s3_client.put_object(Bucket=lock_bucket, Key="pfx/v1/b.bin", Body=planted,
                         ChecksumSHA256=claimed)
    ours = b"what we will put"
    with pytest.raises(ConflictError) as caught:
        store.put("v1/b.bin", ours, sha(ours))
    assert sha(planted) in caught.value.message


def test_multipart_upload_with_part_checksums(
        aws_env: None, moto_server: MotoServer, lock_bucket: str, s3_client: Any) -> None:
    store = open_s3(moto_server, lock_bucket, multipart_threshold=6 * MIB, part_size=5 * MIB)
    data = bytes(range(256)) * (11 * MIB // 256) + b"tail"
    assert store.put("v1/big.records.jsonl.gz", data, sha(data)) is True
    info = store.head("v1/big.records.jsonl.gz")
    assert info is not None and info.size == len(data)
    assert info.lock_mode == "COMPLIANCE" and info.retain_until is not None
    head = s3_client.head_object(Bucket=lock_bucket, Key="pfx/v1/big.records.jsonl.gz")
    assert head["ETag"].endswith('-3"'), head["ETag"]  # three parts
    assert store.get("v1/big.records.jsonl.gz") == data
    assert store.put("v1/big.records.jsonl.gz", data, sha(data)) is False
    changed = b"!" + data[1:]
    with pytest.raises(ConflictError):
        store.put("v1/big.records.jsonl.gz", changed, sha(changed))
    assert s3_client.list_multipart_uploads(Bucket=lock_bucket).get("Uploads", []) == []
    versions = object_versions(s3_client, lock_bucket, "pfx/")
    assert [len(v) for v in versions.values()] == [1]


def test_list_pages_through_every_key(
        aws_env: None, moto_server: MotoServer, lock_bucket: str) -> None:
    store = open_s3(moto_server, lock_bucket, list_page_size=3)
    keys = [f"v1/host=h/k{n:02d}" for n in range(10)]
    for key in keys:
        store.put(key, key.encode(), sha(key.encode()))
    store.put("v1/keys/x.json", b"{}", sha(b"{}"))
    assert list(store.list("v1/host=")) == keys
    assert len(list(store.list(""))) == 11
    assert store.head("v1/host=h/none") is None


def test_head_refuses_weaker_retention_than_asked(
        aws_env: None, moto_server: MotoServer, lock_bucket: str, s3_client: Any) -> None:
    """A server that stores a shorter retain-until than the put asked for is an error."""
    store = open_s3(moto_server, lock_bucket)
    store.put("v1/c.bin", b"c", sha(b"c"))
    s3_client.put_object_retention(  # GOVERNANCE can be shortened with a bypass; emulate it
        Bucket=lock_bucket, Key="pfx/v1/c.bin",
        Retention={"Mode": "COMPLIANCE",
                   "RetainUntilDate": dt.datetime.now(dt.UTC) + dt.timedelta(days=1)})
    with pytest.raises(StoreError, match="retained until"):
        store.head("v1/c.bin")


def test_collect_ships_bundles_with_lock_and_checksum(s3_gamsa: S3GamsaEnv,
                                                      s3_client: Any) -> None:
    for _ in range(2):
        result = s3_gamsa.run("collect")
        assert result.returncode == 0, result.stderr
        assert "shipped" in result.stdout
    assert s3_gamsa.spool_names() == []
    versions = object_versions(s3_client, s3_gamsa.bucket, "evidence/")
    keys = sorted(versions)
    manifests = [k for k in keys if k.endswith(".manifest.dsse.json")]
    records = [k for k in keys if k.endswith(".records.jsonl.gz")]
    key_docs = [k for k in keys if k.startswith("evidence/v1/keys/")]
    assert len(manifests) == 2 and len(records) == 2 and len(key_docs) == 1, keys
    assert all(k.startswith("evidence/v1/host=test-host/date=") for k in manifests + records)
    assert [k.rsplit("/", 1)[1][:10] for k in manifests] == ["0000000001", "0000000002"]
    assert all(len(v) == 1 for v in versions.values()), versions
    expected = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    for key in manifests + records:
        body = s3_client.get_object(Bucket=s3_gamsa.bucket, Key=key)["Body"].read()
        head = s3_client.head_object(Bucket=s3_gamsa.bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
        assert head["ObjectLockMode"] == "COMPLIANCE"
        until = head["ObjectLockRetainUntilDate"].astimezone(dt.UTC)
        assert abs((until - expected).total_seconds()) < 300, (key, until)
    # A locked version cannot be deleted, not even by a client allowed to try.
    locked = manifests[0]
    version_id = versions[locked][0]["VersionId"]
    with pytest.raises(s3_client.exceptions.ClientError) as caught:
        s3_client.delete_object(Bucket=s3_gamsa.bucket, Key=locked, VersionId=version_id)
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    assert s3_client.head_object(Bucket=s3_gamsa.bucket, Key=locked)["VersionId"] == version_id


def test_verify_over_s3_is_clean_and_finds_tampering(s3_gamsa: S3GamsaEnv,
                                                     s3_client: Any) -> None:
    for _ in range(3):
        assert s3_gamsa.run("collect").returncode == 0
    result = s3_gamsa.run("verify", "--store", s3_gamsa.store_url, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and report["bundles"] == 3
    assert report["chains"][0]["first_seq"] == 1 and report["chains"][0]["last_seq"] == 3
    # verify and prove read s3:// exactly as file://
    records_key = next(k for k in object_versions(s3_client, s3_gamsa.bucket, "evidence/")
                       if k.endswith(".records.jsonl.gz"))
    proof = s3_gamsa.run("prove", records_key.removeprefix("evidence/"), "1")
    assert proof.returncode == 0, proof.stderr

    # A new version of a records object in a bucket without our agent's care (e.g.
    # an admin with s3:PutObject and no If-None-Match) must be found by re-hashing,
    # whatever checksum the server keeps for it.
    s3_client.put_object(Bucket=s3_gamsa.bucket, Key=records_key, Body=b"not the records",
                         ChecksumSHA256=s3_client.head_object(
                             Bucket=s3_gamsa.bucket, Key=records_key,
                             ChecksumMode="ENABLED")["ChecksumSHA256"])
    result = s3_gamsa.run("verify", "--json")
    assert result.returncode == 1
    codes = {(f["key"], f["code"]) for f in json.loads(result.stdout)["findings"]}
    assert (records_key.removeprefix("evidence/"), "digest_mismatch") in codes


def test_store_init_creates_and_refuses_to_change(tmp_path: Path, moto_server: MotoServer,
                                                  s3_client: Any) -> None:
    from tests.agent.s3_fixtures import s3_env, unique_bucket

    env = s3_env(tmp_path, moto_server.url, unique_bucket("init"))
    result = env.run("store", "init", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["existed"] is False
    assert report["settings"] == {"versioning": "Enabled", "object_lock": "Enabled",
                                  "default_retention": "COMPLIANCE 3 days",
                                  "abort_incomplete_uploads_days": 7}
    (rule,) = s3_client.get_bucket_lifecycle_configuration(Bucket=env.bucket)["Rules"]
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert "Expiration" not in rule and "NoncurrentVersionExpiration" not in rule
    lock = s3_client.get_object_lock_configuration(Bucket=env.bucket)["ObjectLockConfiguration"]
    retention = lock["Rule"]["DefaultRetention"]
    assert (retention["Mode"], retention["Days"]) == ("COMPLIANCE", 3)
    # Same settings again: nothing to do.
    again = env.run("store", "init")
    assert again.returncode == 0 and "nothing to change" in again.stdout, again.stderr
    assert "incomplete multipart uploads aborted after 7 days" in again.stdout
    # Other settings: refused without --force, applied with it.
    env.write_config(store_extra="")
    env.config.write_text(env.config.read_text().replace("retention_days = 3",
                                                         "retention_days = 5"))
    refused = env.run("store", "init")
    assert refused.returncode == 2, refused.stderr
    assert "--force" in refused.stderr and "COMPLIANCE 3 days" in refused.stderr
    forced = env.run("store", "init", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["settings"]["default_retention"] == "COMPLIANCE 5 days"
    # And the bucket works for shipping.
    collected = env.run("collect")
    assert collected.returncode == 0 and "shipped 1 bundle" in collected.stdout, collected.stderr


def test_store_init_never_replaces_an_existing_buckets_lifecycle(
        aws_env: None, moto_server: MotoServer, lock_bucket: str, s3_client: Any) -> None:
    """A lifecycle put replaces every rule of the bucket: on a bucket that exists,
    `store init` only reports whether incomplete uploads are cleaned up."""
    store = open_s3(moto_server, lock_bucket)
    result = store.init_bucket(force=True)
    assert result["existed"] is True
    assert result["settings"]["abort_incomplete_uploads_days"] is None
    assert not any("lifecycle" in line for line in result["done"]), result["done"]
    with pytest.raises(Exception, match="NoSuchLifecycleConfiguration"):
        s3_client.get_bucket_lifecycle_configuration(Bucket=lock_bucket)


def test_store_init_on_a_file_store_makes_the_directory(gamsa_env: Any) -> None:
    result = gamsa_env.run("store", "init")
    assert result.returncode == 0, result.stderr
    assert gamsa_env.store.is_dir()
