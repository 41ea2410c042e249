"""`gamsa pull` end to end: the real command against a file:// store and moto's S3
server; tampered, foreign and new bundles; a kill -9 at every step; filters."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from signing.dsse import parse_envelope, sign_envelope
from signing.keys import FileSigner
from tests.agent.mirror_fixtures import agent_key, pull, seal
from tests.agent.s3_fixtures import S3GamsaEnv
from tests.conftest import GamsaEnv

RECORDS = ".records.jsonl.gz"
MANIFEST = ".manifest.dsse.json"


def verify_mirror(env: GamsaEnv, mirror: Path) -> dict[str, Any]:
    result = env.run("verify", "--store", f"file://{mirror}", "--trust", agent_key(env),
                     "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def mirrored(mirror: Path, suffix: str) -> list[str]:
    return sorted(p.relative_to(mirror).as_posix() for p in (mirror / "v1").rglob(f"*{suffix}"))


def store_objects(env: GamsaEnv, suffix: str) -> list[Path]:
    return sorted(env.store.rglob(f"*{suffix}"))


def rewrite(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(data)


def test_pull_verifies_and_rerun_pulls_only_new_bundles(gamsa_env: GamsaEnv,
                                                         tmp_path: Path) -> None:
    seal(gamsa_env, 3)
    mirror = tmp_path / "mirror"
    code, report, _ = pull(gamsa_env, mirror)
    assert code == 0, report
    assert (report["pulled"], report["skipped"], report["quarantined"]) == (3, 0, 0)
    assert report["bytes"] > 0 and report["keys"] == 1
    assert [Path(k).name for k in mirrored(mirror, MANIFEST)] == [
        p.name for p in store_objects(gamsa_env, MANIFEST)]
    for key in mirrored(mirror, RECORDS):
        assert (mirror / key).read_bytes() == (gamsa_env.store / key).read_bytes()
    assert not list(mirror.rglob(".tmp-*"))
    state = json.loads((mirror / ".gamsa-mirror.json").read_text())
    assert state["store"] == gamsa_env.store_url and len(state["trust"]["keys"]) == 1
    assert state["last_pull"]["pulled"] == 3
    assert verify_mirror(gamsa_env, mirror)["bundles"] == 3

    code, report, _ = pull(gamsa_env, mirror)
    assert code == 0 and (report["pulled"], report["skipped"]) == (0, 3)

    seal(gamsa_env, 2)
    code, report, _ = pull(gamsa_env, mirror)
    assert code == 0 and (report["pulled"], report["skipped"]) == (2, 3)
    checked = verify_mirror(gamsa_env, mirror)
    assert checked["bundles"] == 5
    assert checked["chains"][0]["first_seq"] == 1 and checked["chains"][0]["last_seq"] == 5

    human = gamsa_env.run("pull", "--store", gamsa_env.store_url, "--to", str(mirror),
                          "--trust", agent_key(gamsa_env))
    assert human.returncode == 0 and human.stderr == ""
    assert human.stdout.startswith("OK: 0 bundle(s) pulled, 5 already mirrored")


def test_flipped_byte_is_quarantined_not_mirrored(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    seal(gamsa_env, 3)
    target = store_objects(gamsa_env, RECORDS)[1]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    rewrite(target, bytes(data))
    mirror = tmp_path / "mirror"
    code, report, _ = pull(gamsa_env, mirror)
    assert code == 1
    assert (report["pulled"], report["quarantined"]) == (2, 1)
    key = target.relative_to(gamsa_env.store).as_posix()
    stem = key.removesuffix(RECORDS)
    assert {(f["key"], f["code"]) for f in report["findings"]} >= {(key, "digest_mismatch")}
    assert not (mirror / key).exists() and not (mirror / (stem + MANIFEST)).exists()
    held = mirror / "quarantine" / stem
    findings = json.loads((held / "findings.json").read_text())
    assert findings["key"] == stem
    assert "digest_mismatch" in {f["code"] for f in findings["findings"]}
    assert (held / target.name).read_bytes() == bytes(data)
    # The mirror holds only what verified: verify reports the hole, nothing tampered.
    result = gamsa_env.run("verify", "--store", f"file://{mirror}", "--trust",
                           agent_key(gamsa_env), "--json")
    codes = {f["code"] for f in json.loads(result.stdout)["findings"]
             if f["severity"] == "error"}
    assert codes == {"chain_gap"}

    code, report, _ = pull(gamsa_env, mirror)
    assert code == 1, "a held bundle keeps the pull failing"
    assert (report["pulled"], report["skipped"], report["quarantined"],
            report["quarantined_before"]) == (0, 2, 0, 1)


def test_foreign_key_is_quarantined(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    seal(gamsa_env, 2)
    target = store_objects(gamsa_env, MANIFEST)[1]
    envelope = parse_envelope(target.read_bytes())
    payload = base64.b64decode(envelope["payload"])
    rewrite(target, sign_envelope(payload, FileSigner(Ed25519PrivateKey.generate())))
    mirror = tmp_path / "mirror"
    code, report, _ = pull(gamsa_env, mirror)
    assert code == 1 and (report["pulled"], report["quarantined"]) == (1, 1)
    key = target.relative_to(gamsa_env.store).as_posix()
    assert (key, "untrusted_key") in {(f["key"], f["code"]) for f in report["findings"]}
    assert not (mirror / key).exists()
    assert (mirror / "quarantine" / key.removesuffix(MANIFEST) / "findings.json").exists()


def test_store_object_changed_since_pulled_is_a_finding(gamsa_env: GamsaEnv,
                                                        tmp_path: Path) -> None:
    seal(gamsa_env, 1)
    mirror = tmp_path / "mirror"
    assert pull(gamsa_env, mirror)[0] == 0
    key_doc = next((gamsa_env.store / "v1" / "keys").glob("*.json"))
    rewrite(key_doc, key_doc.read_bytes().replace(b'"host"', b'"host" '))
    code, report, _ = pull(gamsa_env, mirror)
    assert code == 1
    key = key_doc.relative_to(gamsa_env.store).as_posix()
    assert (key, "store_object_changed") in {(f["key"], f["code"]) for f in report["findings"]}
    assert (mirror / key).read_bytes() != key_doc.read_bytes(), "the mirror keeps the first"


@pytest.mark.slow
def test_kill_9_at_every_step_then_rerun_completes(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    seal(gamsa_env, 3)
    mirror = tmp_path / "mirror"
    step = 0
    while True:
        step += 1
        code, report, stderr = pull(gamsa_env, mirror, "--jobs", "2", crash_at=step)
        if code == 0:
            break
        assert code == -9, stderr
        assert f"crashpoint {step}" in stderr
        # Whole objects only, and a manifest only beside its records.
        for manifest in mirrored(mirror, MANIFEST):
            assert (mirror / manifest.replace(MANIFEST, RECORDS)).exists()
        assert step < 50
    assert step > 3, "the pull passed crash points"
    assert report["pulled"] + report["skipped"] == 3
    assert not list(mirror.rglob(".tmp-*"))
    assert verify_mirror(gamsa_env, mirror)["bundles"] == 3


def test_host_and_date_filters(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    seal(gamsa_env, 2, host="web-01")
    seal(gamsa_env, 1, host="db-01")
    mirror = tmp_path / "mirror"
    code, report, _ = pull(gamsa_env, mirror, "--host", "db-01")
    assert code == 0 and report["pulled"] == 1
    assert all("host=db-01/" in k for k in mirrored(mirror, MANIFEST))
    today = dt.datetime.now(dt.UTC).date()
    tomorrow, yesterday = today + dt.timedelta(days=1), today - dt.timedelta(days=1)
    code, report, _ = pull(gamsa_env, mirror, "--since", tomorrow.isoformat())
    assert code == 0 and report["pulled"] == 0 and report["skipped"] == 0
    code, report, _ = pull(gamsa_env, mirror, "--until", yesterday.isoformat())
    assert code == 0 and report["pulled"] == 0
    code, report, _ = pull(gamsa_env, mirror, "--since", yesterday.isoformat(),
                           "--until", tomorrow.isoformat())
    assert code == 0 and (report["pulled"], report["skipped"]) == (2, 1)


def test_usage_errors(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    seal(gamsa_env, 1)
    mirror = tmp_path / "mirror"
    plain = gamsa_env.run("pull", "--store", gamsa_env.store_url, "--to", str(mirror))
    assert plain.returncode == 2 and "--trust" in plain.stderr
    for args, said in ((("--since", "May 1"), "--since 'May 1': not a date"),
                       (("--host", "../x"), "--host '../x': not a host id")):
        code, _, stderr = pull(gamsa_env, mirror, *args)
        assert code == 2 and said in stderr, stderr
        assert len(stderr.strip().splitlines()) == 1
    assert pull(gamsa_env, mirror)[0] == 0
    other = tmp_path / "other-store"
    other.mkdir()
    code, _, stderr = pull(gamsa_env, mirror, store=f"file://{other}")
    assert code == 2 and "mirrors file://" in stderr
    full = tmp_path / "not-a-mirror"
    full.mkdir()
    (full / "something").write_text("x")
    code, _, stderr = pull(gamsa_env, full)
    assert code == 2 and "not a gamsa mirror" in stderr


def test_pull_from_s3(s3_gamsa: S3GamsaEnv, s3_client: Any, tmp_path: Path) -> None:
    seal(s3_gamsa, 3)
    mirror = tmp_path / "mirror"
    store = f"s3://{s3_gamsa.bucket}/{s3_gamsa.prefix}"
    code, report, _ = pull(s3_gamsa, mirror, store=store)
    assert code == 0 and report["pulled"] == 3, report
    assert verify_mirror(s3_gamsa, mirror)["bundles"] == 3
    # A new version of one records object (the bucket is versioned): quarantined on a
    # fresh mirror, and a store object that changed for the existing one.
    listed = s3_client.list_objects_v2(Bucket=s3_gamsa.bucket, Prefix="evidence/v1/host=")
    records = sorted(o["Key"] for o in listed["Contents"] if o["Key"].endswith(RECORDS))
    s3_client.put_object(Bucket=s3_gamsa.bucket, Key=records[2], Body=b"not gzip")
    fresh = tmp_path / "fresh"
    code, report, _ = pull(s3_gamsa, fresh, store=store)
    assert code == 1 and (report["pulled"], report["quarantined"]) == (2, 1)
    key = records[2].removeprefix("evidence/")
    assert (key, "digest_mismatch") in {(f["key"], f["code"]) for f in report["findings"]}
    assert (fresh / "quarantine" / key.removesuffix(RECORDS) / "findings.json").exists()
    code, report, _ = pull(s3_gamsa, mirror, store=store)
    assert code == 0 and report["skipped"] == 3


def test_pull_of_store_unreachable_is_exit_3(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    seal(gamsa_env, 1)
    store_file = tmp_path / "a-file"
    store_file.write_text("x")
    result = gamsa_env.run("pull", "--store", f"file://{store_file}", "--to",
                           str(tmp_path / "m"), "--trust", agent_key(gamsa_env))
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bundle_not_linking_to_the_mirror_is_quarantined(gamsa_env: GamsaEnv,
                                                         tmp_path: Path) -> None:
    """A bundle signed by the host's own key whose prev is not the mirror's bundle
    before it (a forged or replayed continuation) stays out of the mirror."""
    from signing.canonical import canonical_bytes
    from signing.keys import load_private_key

    seal(gamsa_env, 2)
    mirror = tmp_path / "mirror"
    assert pull(gamsa_env, mirror)[0] == 0
    manifest = store_objects(gamsa_env, MANIFEST)[1]
    statement = json.loads(base64.b64decode(parse_envelope(manifest.read_bytes())["payload"]))
    predicate = statement["predicate"]
    predicate["chain"].update(seq=3, prev="0" * 64)
    predicate["collection"]["id"] = "20990101T000000Z-forged00"
    stem = manifest.name.removesuffix(MANIFEST).split("-", 1)[0]
    new_stem = manifest.parent / f"{3:010d}-{predicate['collection']['id']}"
    records_key = new_stem.relative_to(gamsa_env.store).as_posix() + RECORDS
    statement["subject"][0]["name"] = records_key
    (gamsa_env.store / records_key).write_bytes(
        (manifest.parent / (manifest.name.removesuffix(MANIFEST) + RECORDS)).read_bytes())
    signer = FileSigner(load_private_key(gamsa_env.state_dir / "keys" / "agent.key"))
    forged = Path(str(new_stem) + MANIFEST)
    forged.write_bytes(sign_envelope(canonical_bytes(statement), signer))
    assert stem == f"{2:010d}"
    code, report, _ = pull(gamsa_env, mirror)
    assert code == 1 and (report["pulled"], report["quarantined"]) == (0, 1), report
    key = forged.relative_to(gamsa_env.store).as_posix()
    assert (key, "chain_prev_mismatch") in {(f["key"], f["code"]) for f in report["findings"]}
    assert not (mirror / key).exists()
