"""Bad S3 settings: each is one line naming the bucket or endpoint and the cause,
exit 3, with the spool intact. And the least-privilege IAM policies, per-host
confinement included, enforced by a moto server with IAM authentication over TLS
(policy variables and s3:prefix evaluated by tests/agent/moto_iam_context.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.agent.s3_fixtures import (
    REGION,
    MotoServer,
    S3GamsaEnv,
    TlsFiles,
    free_port,
    make_lock_bucket,
    make_tls_files,
    s3_env,
    start_moto,
    unique_bucket,
)

RUNTIME = 3
ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "packaging" / "iam-policy.json"
AUDITOR_POLICY = ROOT / "packaging" / "iam-policy-auditor.json"


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == RUNTIME, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_spool_kept(env: S3GamsaEnv, bundles: int) -> None:
    assert len(env.spool_names()) == bundles
    status = env.run("status", "--json")
    report = json.loads(status.stdout)
    assert report["spool"]["bundles"] == bundles
    assert status.returncode == 1 and report["last_result"] == "error", status.stdout


def check_fails_cleanly(env: S3GamsaEnv, *needles: str, reading_fails: bool = True) -> str:
    """collect seals and warns (exit 0); ship and verify fail with one line (exit 3)."""
    collected = env.run("collect")
    assert collected.returncode == 0, collected.stderr
    assert "sealed and spooled, but shipping failed" in collected.stderr
    assert "Traceback" not in collected.stderr
    line = one_line_error(env.run("ship"), *needles)
    print(line)  # shown with -rP: what a user reads
    assert_spool_kept(env, 1)
    if reading_fails:
        trust = str(env.state_dir / "keys" / "agent.json")
        one_line_error(env.run("verify", "--trust", trust, "--json"), *needles)
    return line


def test_wrong_bucket(tmp_path: Path, moto_server: MotoServer) -> None:
    env = s3_env(tmp_path, moto_server.url, "no-such-bucket-here")
    line = check_fails_cleanly(env, "no-such-bucket-here", "does not exist", moto_server.url)
    assert "NoSuchBucket" in line


def test_unreachable_endpoint(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    env = s3_env(tmp_path, dead, "evidence-bucket")
    line = check_fails_cleanly(env, "cannot connect to", dead, "s3://evidence-bucket")
    assert "after 3 tries" in line


def test_unresolvable_profile_is_a_store_error_after_sealing(s3_gamsa: S3GamsaEnv) -> None:
    s3_gamsa.write_config(store_extra='profile = "no-such-profile"\n')
    check_fails_cleanly(s3_gamsa, "profile 'no-such-profile' not found")


def test_bucket_without_object_lock(tmp_path: Path, moto_server: MotoServer,
                                    s3_client: Any) -> None:
    bucket = unique_bucket("nolock")
    s3_client.create_bucket(Bucket=bucket)
    env = s3_env(tmp_path, moto_server.url, bucket)
    check_fails_cleanly(env, bucket, "refused Object Lock", reading_fails=False)


# --------------------------------------------------------------------------- TLS + IAM


@dataclass
class SecureMoto:
    server: MotoServer
    tls: TlsFiles
    bucket: str
    agent: dict[str, str]
    auditor: dict[str, str]
    admin: dict[str, str]

    def client(self, who: dict[str, str]) -> Any:
        return self.server.client(key=who["AWS_ACCESS_KEY_ID"],
                                  secret=who["AWS_SECRET_ACCESS_KEY"])


def moto_policy(path: Path, bucket: str, prefix: str) -> str:
    """A packaged policy for this bucket/prefix, as an operator makes it with sed. The
    server evaluates its policy variables and s3:prefix conditions
    (tests/agent/moto_iam_context.py): nothing is dropped."""
    return path.read_text().replace("EXAMPLE-BUCKET", bucket).replace("EXAMPLE-PREFIX", prefix)


@pytest.fixture(scope="module")
def secure_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureMoto]:
    """A second moto server: HTTPS with a private CA, and IAM authentication on."""
    import boto3  # type: ignore[import-untyped]

    base = tmp_path_factory.mktemp("secure-moto")
    tls = make_tls_files(base / "tls")
    server = start_moto(base, cert=tls.cert, key=tls.key, ca_file=tls.ca, iam_context=True)
    try:
        iam = boto3.client("iam", endpoint_url=server.url, region_name=REGION,
                           aws_access_key_id="AKIASETUP", aws_secret_access_key="setup",
                           verify=str(tls.ca))
        bucket = make_lock_bucket(server.client(), unique_bucket("secure"))
        users: dict[str, dict[str, str]] = {}
        for name, policy in (("agent", moto_policy(POLICY, bucket, "evidence")),
                             ("auditor", moto_policy(AUDITOR_POLICY, bucket, "evidence")),
                             ("admin", json.dumps({"Version": "2012-10-17", "Statement": [
                                 {"Effect": "Allow", "Action": "*", "Resource": "*"}]}))):
            # The agent's policy confines it by this tag to host=test-host (s3_env's host).
            iam.create_user(UserName=f"gamsa-{name}", Tags=[
                {"Key": "gamsa-host", "Value": "test-host"}] if name == "agent" else [])
            iam.put_user_policy(UserName=f"gamsa-{name}", PolicyName=name,
                                PolicyDocument=policy)
            key = iam.create_access_key(UserName=f"gamsa-{name}")["AccessKey"]
            users[name] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                           "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        server.post("/moto-api/reset-auth", b"0")  # from now on every request is checked
        yield SecureMoto(server, tls, bucket, users["agent"], users["auditor"],
                         users["admin"])
    finally:
        server.stop()


def secure_env(tmp_path: Path, secure: SecureMoto, ca: Path,
               who: dict[str, str]) -> S3GamsaEnv:
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = s3_env(tmp_path, secure.server.url, secure.bucket,
                 store_extra=f'ca_bundle = "{ca}"\n')
    env.env.update(who)
    return env


def test_agent_policy_ships_and_cannot_delete(tmp_path: Path, secure_moto: SecureMoto) -> None:
    env = secure_env(tmp_path / "agent", secure_moto, secure_moto.tls.ca, secure_moto.agent)
    for _ in range(2):
        result = env.run("collect")
        assert result.returncode == 0 and "shipped 1 bundle" in result.stdout, result.stderr
    verified = env.run("verify", "--host", "test-host", "--json")  # its own prefix only
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["bundles"] == 2
    # The agent may not list versions (no s3:ListBucketVersions): said, not fatal.
    unread = [f for f in json.loads(verified.stdout)["findings"]
              if f["code"] == "versions_unreadable"]
    assert len(unread) == 1 and "access denied" in unread[0]["message"], verified.stdout

    agent = secure_moto.client(secure_moto.agent)
    keys = [o["Key"] for o in agent.list_objects_v2(
        Bucket=secure_moto.bucket, Prefix="evidence/v1/host=test-host/")["Contents"]]
    with pytest.raises(agent.exceptions.ClientError) as caught:
        agent.delete_object(Bucket=secure_moto.bucket, Key=keys[0])  # not even a marker
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(agent.exceptions.ClientError) as caught:
        agent.put_object(Bucket=secure_moto.bucket, Key="elsewhere/x", Body=b"x")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"

    # The auditor reads and verifies, and cannot write.
    auditor_env = secure_env(tmp_path / "auditor", secure_moto, secure_moto.tls.ca,
                             secure_moto.auditor)
    trust = env.state_dir / "keys" / "agent.json"
    audited = auditor_env.run("verify", "--trust", str(trust), "--json")
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert json.loads(audited.stdout)["fleet"]["versions"]["checked"]  # ListBucketVersions
    auditor = secure_moto.client(secure_moto.auditor)
    with pytest.raises(auditor.exceptions.ClientError) as caught:
        auditor.put_object(Bucket=secure_moto.bucket, Key="evidence/x", Body=b"x")
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    # The auditor's credentials cannot ship.
    sealed = auditor_env.run("collect")
    assert "shipping failed" in sealed.stderr
    one_line_error(auditor_env.run("ship"), "access denied", "iam-policy.json")


def test_bad_secret_key(tmp_path: Path, secure_moto: SecureMoto) -> None:
    wrong = {**secure_moto.agent, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    env = secure_env(tmp_path, secure_moto, secure_moto.tls.ca, wrong)
    check_fails_cleanly(env, "rejected the credentials", "SignatureDoesNotMatch",
                        secure_moto.server.url)


def test_unknown_access_key(tmp_path: Path, secure_moto: SecureMoto) -> None:
    wrong = {"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000", "AWS_SECRET_ACCESS_KEY": "x"}
    env = secure_env(tmp_path, secure_moto, secure_moto.tls.ca, wrong)
    check_fails_cleanly(env, "rejected the credentials", "InvalidAccessKeyId")


def test_ca_bundle_that_does_not_match(tmp_path: Path, secure_moto: SecureMoto) -> None:
    env = secure_env(tmp_path, secure_moto, secure_moto.tls.other_ca, secure_moto.agent)
    line = check_fails_cleanly(env, "TLS certificate", "does not verify",
                               str(secure_moto.tls.other_ca))
    assert "tries" not in line  # a wrong CA is not retried


def test_system_trust_store_does_not_know_a_private_ca(tmp_path: Path,
                                                      secure_moto: SecureMoto) -> None:
    env = s3_env(tmp_path, secure_moto.server.url, secure_moto.bucket)
    env.env.update(secure_moto.agent)
    check_fails_cleanly(env, "TLS certificate", "system CAs")


# --------------------------------------------------------------------------- per-host confinement


def host_credentials(secure: SecureMoto, user: str, host: str | None,
                     policy: str | None = None) -> dict[str, str]:
    """An IAM user with the packaged agent policy (or `policy`), tagged `gamsa-host` =
    `host` (untagged when None), as docs/OPERATIONS-S3.md tells an operator to make one."""
    import boto3

    iam = boto3.client("iam", endpoint_url=secure.server.url, region_name=REGION,
                       aws_access_key_id=secure.admin["AWS_ACCESS_KEY_ID"],
                       aws_secret_access_key=secure.admin["AWS_SECRET_ACCESS_KEY"],
                       verify=str(secure.tls.ca))
    tags = [{"Key": "gamsa-host", "Value": host}] if host else []
    iam.create_user(UserName=user, Tags=tags)
    iam.put_user_policy(UserName=user, PolicyName="gamsa-agent",
                        PolicyDocument=policy or moto_policy(POLICY, secure.bucket,
                                                             "evidence"))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}


def host_env(tmp_path: Path, secure: SecureMoto, host: str, who: dict[str, str]) -> S3GamsaEnv:
    env = secure_env(tmp_path, secure, secure.tls.ca, who)
    env.config.write_text(env.config.read_text().replace(
        'host_id = "test-host"', f'host_id = "{host}"'))
    return env


def denied(call: Any) -> str:
    with pytest.raises(Exception) as caught:
        call()
    return str(getattr(caught.value, "response", {}).get("Error", {}).get("Code"))


@pytest.mark.slow
def test_agent_policy_confines_each_host_to_its_own_prefix(tmp_path: Path,
                                                           secure_moto: SecureMoto) -> None:
    alpha_keys = host_credentials(secure_moto, "gamsa-host-alpha", "alpha")
    bravo_keys = host_credentials(secure_moto, "gamsa-host-bravo", "bravo")
    alpha = host_env(tmp_path / "alpha", secure_moto, "alpha", alpha_keys)
    bravo = host_env(tmp_path / "bravo", secure_moto, "bravo", bravo_keys)

    # Each host ships its own bundles and verifies its own prefix.
    for env, host in ((alpha, "alpha"), (bravo, "bravo")):
        shipped = env.run("collect")
        assert shipped.returncode == 0 and "shipped 1 bundle" in shipped.stdout, shipped.stderr
        verified = env.run("verify", "--host", host, "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert json.loads(verified.stdout)["bundles"] == 1

    # Alpha's credentials with host_id = bravo: sealed locally, refused at the store
    # (the shipper's look at bravo's prefix before it writes there is the first call
    # refused), one line naming bravo's prefix, the spool kept.
    impostor = host_env(tmp_path / "impostor", secure_moto, "bravo", alpha_keys)
    sealed = impostor.run("collect")
    assert sealed.returncode == 0 and "shipping failed" in sealed.stderr, sealed.stderr
    line = one_line_error(impostor.run("ship"), "access denied", "v1/host=bravo/",
                          "iam-policy.json")
    print(line)
    assert_spool_kept(impostor, 1)
    # ... nor may alpha list or read bravo's prefix, or list the whole fleet.
    alpha_trust = str(alpha.state_dir / "keys" / "agent.json")
    one_line_error(alpha.run("verify", "--trust", alpha_trust, "--host", "bravo", "--json"),
                   "access denied", "v1/host=bravo/")
    one_line_error(alpha.run("verify", "--trust", alpha_trust, "--json"),
                   "access denied", "v1/host=")
    client = secure_moto.client(alpha_keys)
    bucket = secure_moto.bucket
    entry = next((impostor.state_dir / "spool").iterdir())
    assert denied(lambda: client.put_object(  # the write itself, as the shipper makes it
        Bucket=bucket, Key=f"evidence/v1/host=bravo/date=2026-12-02/{entry.name}"
        ".records.jsonl.gz", Body=(entry / "records.jsonl.gz").read_bytes(),
        IfNoneMatch="*")) == "AccessDenied"
    assert denied(lambda: client.list_objects_v2(
        Bucket=bucket, Prefix="evidence/v1/host=bravo/")) == "AccessDenied"
    assert denied(lambda: client.list_objects_v2(
        Bucket=bucket, Prefix="evidence/v1/host=")) == "AccessDenied"
    bravo_objects = [o["Key"] for o in secure_moto.client(bravo_keys).list_objects_v2(
        Bucket=bucket, Prefix="evidence/v1/host=bravo/")["Contents"]]
    assert len(bravo_objects) == 2  # records + manifest: the impostor added nothing
    assert denied(lambda: client.get_object(Bucket=bucket,
                                            Key=bravo_objects[0])) == "AccessDenied"
    assert denied(lambda: client.put_object(
        Bucket=bucket, Key="evidence/v1/enroll/pending/bravo/x.json",
        Body=b"{}")) == "AccessDenied"
    # Its own prefix it may list, and still never delete.
    own = client.list_objects_v2(Bucket=bucket, Prefix="evidence/v1/host=alpha/")["Contents"]
    assert denied(lambda: client.delete_object(Bucket=bucket,
                                               Key=own[0]["Key"])) == "AccessDenied"

    # A principal without the tag is confined to nothing: it cannot ship at all.
    untagged = host_env(tmp_path / "untagged", secure_moto, "alpha",
                        host_credentials(secure_moto, "gamsa-host-untagged", None))
    assert "shipping failed" in untagged.run("collect").stderr
    one_line_error(untagged.run("ship"), "access denied")


def test_agent_policy_by_user_name_variant(tmp_path: Path, secure_moto: SecureMoto) -> None:
    """The variant for servers without principal tags (MinIO): one user per host, named
    as the host id, `${aws:username}` in place of the tag (docs/OPERATIONS-S3.md). All
    the agent does in a run stays inside its prefix: the pre-seal look, the store's
    clock, a multipart upload."""
    policy = moto_policy(POLICY, secure_moto.bucket, "evidence").replace(
        "${aws:PrincipalTag/gamsa-host}", "${aws:username}")
    keys = host_credentials(secure_moto, "charlie", None, policy)
    charlie = host_env(tmp_path, secure_moto, "charlie", keys)
    shipped = charlie.run("collect", "--json")
    assert shipped.returncode == 0 and shipped.stderr == "", shipped.stderr
    # The confined agent still looks at its own prefix before sealing (agent-side
    # truth) and reads the store's clock: nothing it needs lies outside its prefix.
    report = json.loads(shipped.stdout)
    assert report["store_check_problem"] is None, report
    # A multipart upload (its listing of unfinished uploads included) is allowed too.
    client = secure_moto.client(keys)
    multipart = charlie.run("collect", extra_env={"GAMSA_STORE_MULTIPART_THRESHOLD": "1"})
    assert multipart.returncode == 0 and "shipped 1 bundle" in multipart.stdout, \
        multipart.stderr
    etags = [o["ETag"] for o in client.list_objects_v2(
        Bucket=secure_moto.bucket, Prefix="evidence/v1/host=charlie/")["Contents"]
        if o["Key"].endswith(".records.jsonl.gz")]
    assert any("-" in etag for etag in etags), etags  # a multipart object's ETag
    assert denied(lambda: client.put_object(
        Bucket=secure_moto.bucket, Key="evidence/v1/host=delta/date=2026-01-01/x",
        Body=b"x", IfNoneMatch="*")) == "AccessDenied"
    assert denied(lambda: client.list_objects_v2(
        Bucket=secure_moto.bucket, Prefix="evidence/v1/host=delta/")) == "AccessDenied"
