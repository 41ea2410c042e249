"""What confirms a shipped bundle on S3: the put's own answer on every put, a HEAD of
the first manifest of each run and then one in `store.confirm_every`; and the boto3
session, profiles included.

Requests are counted where they reach the server: a loopback proxy in front of
moto's S3 server logs each one (tests/agent/s3_fixtures.py, FaultProxy).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.agent.s3_fixtures import (
    FaultProxy,
    MotoServer,
    S3GamsaEnv,
    object_versions,
    s3_env,
    seal_many,
    unique_bucket,
)
from tests.conftest import GAMSA

LOCK_HEADERS = (b"x-amz-object-lock-mode", b"x-amz-object-lock-retain-until-date")


def manifest_heads(proxy: FaultProxy) -> list[str]:
    """Targets of the HEADs of manifests the proxy passed on, in order."""
    return [r.target for r in proxy.requests
            if r.method == "HEAD" and ".manifest.dsse.json" in r.target]


def seq_of(target: str) -> int:
    return int(target.rsplit("/", 1)[1][:10])


def ship(env: S3GamsaEnv) -> dict[str, Any]:
    result = env.run("ship", "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.slow
def test_a_run_heads_its_first_manifest_and_then_one_in_confirm_every(
        tmp_path: Path, moto_server: MotoServer, lock_bucket: str, s3_client: Any,
        fault_proxy: FaultProxy) -> None:
    env = s3_env(tmp_path, fault_proxy.url, lock_bucket)  # default confirm_every: 100
    seal_many(env, 250)
    shipped = ship(env)["shipped"]
    assert [seq_of(k) for k in shipped] == list(range(1, 251))
    assert env.spool_names() == []
    heads = [r for r in fault_proxy.requests if r.method == "HEAD"]
    assert [seq_of(r.target) for r in heads] == [1, 101, 201], [r.target for r in heads]
    puts = [r for r in fault_proxy.requests if r.method == "PUT"]
    assert len(puts) == 2 * 250 + 1  # records, manifests, the key document: no more
    assert all(len(v) == 1 for v in object_versions(s3_client, lock_bucket).values())

    # confirm_every = 1: every manifest, and a new run starts its count again.
    env.write_config(store_extra="confirm_every = 1\n")
    seal_many(env, 4)
    before = len(manifest_heads(fault_proxy))
    assert len(ship(env)["shipped"]) == 4
    assert [seq_of(t) for t in manifest_heads(fault_proxy)[before:]] == [251, 252, 253, 254]
    env.write_config(store_extra="confirm_every = 3\n")
    seal_many(env, 5)
    before = len(manifest_heads(fault_proxy))
    assert len(ship(env)["shipped"]) == 5
    assert [seq_of(t) for t in manifest_heads(fault_proxy)[before:]] == [255, 258]


def test_confirm_every_must_be_a_positive_integer(s3_gamsa: S3GamsaEnv) -> None:
    for value in ("0", '"10"'):
        s3_gamsa.write_config(store_extra=f"confirm_every = {value}\n")
        result = s3_gamsa.run("config", "check")
        assert result.returncode == 2, result.stderr
        assert "store.confirm_every" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def versioned_bucket_without_lock(s3_client: Any) -> str:
    """What an appliance that ignores lock headers amounts to: versions, no lock."""
    bucket = unique_bucket("nolock")
    s3_client.create_bucket(Bucket=bucket)
    s3_client.put_bucket_versioning(Bucket=bucket,
                                    VersioningConfiguration={"Status": "Enabled"})
    return bucket


def test_a_store_that_ignores_lock_headers_is_refused_at_the_first_head(
        tmp_path: Path, moto_server: MotoServer, s3_client: Any,
        versioned_bucket_without_lock: str) -> None:
    bucket = versioned_bucket_without_lock
    with FaultProxy(moto_server.port, strip=LOCK_HEADERS) as proxy:
        env = s3_env(tmp_path, proxy.url, bucket)  # asks for COMPLIANCE, 3 days
        seal_many(env, 3)
        spooled = env.spool_names()
        result = env.run("ship")
        assert result.returncode == 3, result.stderr
        assert "Traceback" not in result.stderr
        (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("gamsa: ")]
        assert "0000000001-" in line and ".manifest.dsse.json" in line
        assert "stored without Object Lock retention" in line
        assert "COMPLIANCE until" in line
        assert "store.object_lock_mode" in result.stderr  # what to do
        assert [r.method for r in proxy.requests].count("HEAD") == 1
    # The put succeeded, the HEAD found no lock: nothing left the spool.
    assert env.spool_names() == spooled
    status = env.run("status", "--json")
    assert status.returncode == 1
    problems = json.loads(status.stdout)["problems"]
    assert any("last ship failed" in p and "without Object Lock retention" in p
               for p in problems), problems
    manifests = [k for k in object_versions(s3_client, bucket)
                 if k.endswith(".manifest.dsse.json")]
    assert len(manifests) == 1  # only the first was committed before the check


def test_a_put_answered_without_a_version_is_refused_before_the_manifest(
        tmp_path: Path, moto_server: MotoServer, s3_client: Any) -> None:
    """A bucket without versioning cannot lock: the put's own answer (no version id)
    shows it, before any manifest is committed."""
    bucket = unique_bucket("plain")
    s3_client.create_bucket(Bucket=bucket)
    with FaultProxy(moto_server.port, strip=LOCK_HEADERS) as proxy:
        env = s3_env(tmp_path, proxy.url, bucket)
        seal_many(env, 2)
        result = env.run("ship")
    assert result.returncode == 3, result.stderr
    assert "without a version id" in result.stderr and "Traceback" not in result.stderr
    assert len(env.spool_names()) == 2
    assert not [k for k in object_versions(s3_client, bucket)
                if k.endswith(".manifest.dsse.json")]


def test_object_lock_off_ships_to_a_bucket_without_it(
        tmp_path: Path, moto_server: MotoServer, s3_client: Any,
        versioned_bucket_without_lock: str) -> None:
    """The remedy the error names: `object_lock_mode = ""` ships without a lock, knowingly."""
    env = s3_env(tmp_path, moto_server.url, versioned_bucket_without_lock)
    env.config.write_text(env.config.read_text().replace(
        'object_lock_mode = "COMPLIANCE"', 'object_lock_mode = ""'))
    seal_many(env, 2)
    assert len(ship(env)["shipped"]) == 2
    assert env.spool_names() == []


def test_a_profile_from_the_aws_config_files_is_used(
        tmp_path: Path, moto_server: MotoServer, lock_bucket: str,
        fault_proxy: FaultProxy) -> None:
    aws = tmp_path / "aws"
    aws.mkdir()
    (aws / "config").write_text("[profile gamsa-audit]\nregion = ap-northeast-2\n")
    (aws / "credentials").write_text("[gamsa-audit]\n"
                                     "aws_access_key_id = AKIAGAMSAPROFILE0001\n"
                                     "aws_secret_access_key = from-the-profile\n")
    (tmp_path / "agent").mkdir()
    env = s3_env(tmp_path / "agent", fault_proxy.url, lock_bucket,
                 store_extra='profile = "gamsa-audit"\n')
    env.config.write_text(env.config.read_text().replace('region = "us-east-1"', 'region = ""'))
    def run_ship(config_file: Path, credentials_file: Path) -> Any:
        # The environment's own keys stay (TEST_CREDENTIALS): an explicit profile wins.
        environ = env.environment(extra_env={"AWS_CONFIG_FILE": str(config_file),
                                             "AWS_SHARED_CREDENTIALS_FILE":
                                             str(credentials_file)})
        del environ["AWS_DEFAULT_REGION"]  # the profile's region, then
        assert environ["AWS_ACCESS_KEY_ID"] != "AKIAGAMSAPROFILE0001"
        return subprocess.run([GAMSA, "ship"], env=environ, capture_output=True, text=True,
                              timeout=120, check=False)

    seal_many(env, 1)
    result = run_ship(aws / "config", aws / "credentials")
    assert result.returncode == 0, result.stderr
    signed = [r.headers.get("authorization", "") for r in fault_proxy.requests]
    assert signed and all("Credential=AKIAGAMSAPROFILE0001/" in a for a in signed), signed
    assert all("/ap-northeast-2/s3/aws4_request" in a for a in signed), signed
    assert env.spool_names() == []

    # Without the files the profile is unknown: one line naming it, exit 3.
    seal_many(env, 1)
    missing = run_ship(aws / "none", aws / "none")
    assert missing.returncode == 3, missing.stderr
    assert "profile 'gamsa-audit' not found" in missing.stderr
    assert "Traceback" not in missing.stderr and len(env.spool_names()) == 1
