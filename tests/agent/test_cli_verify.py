"""End to end through the real `gamsa` command: collect, verify, and every tamper case."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from signing.bundle import iter_record_lines, write_records
from signing.dsse import parse_envelope, sign_envelope
from signing.keys import FileSigner
from tests.conftest import GamsaEnv


def collect(env: GamsaEnv, times: int = 1) -> None:
    for _ in range(times):
        result = env.run("collect")
        assert result.returncode == 0, result.stderr


def objects(env: GamsaEnv, suffix: str) -> list[Path]:
    return sorted(env.store.rglob(f"*{suffix}"))


def flip_byte(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def verify_json(env: GamsaEnv) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = env.run("verify", "--json")
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


def codes_by_key(report: dict) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(Path(f["key"]).name, f["code"]) for f in report["findings"]
            if f["severity"] == "error"}


def test_collect_twice_verifies_clean(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env, 2)
    code, report = verify_json(gamsa_env)
    assert code == 0, report
    assert report["ok"] and report["bundles"] == 2
    assert len(report["chains"]) == 1 and report["chains"][0]["last_seq"] == 2
    human = gamsa_env.run("verify")
    assert human.returncode == 0
    assert "trusting this agent's own key" in human.stderr
    assert human.stdout.strip().splitlines()[-1].startswith("OK: 2 bundle(s)")
    assert not list((gamsa_env.state_dir / "spool").iterdir())


def test_flipped_byte_in_records_object_is_found(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env, 2)
    target = objects(gamsa_env, ".records.jsonl.gz")[0]
    flip_byte(target, target.stat().st_size // 2)
    code, report = verify_json(gamsa_env)
    assert code == 1
    assert (target.name, "digest_mismatch") in codes_by_key(report)
    human = gamsa_env.run("verify")
    assert human.returncode == 1 and target.name in human.stdout


def test_flipped_byte_in_manifest_is_found(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env, 2)
    target = objects(gamsa_env, ".manifest.dsse.json")[0]
    envelope = json.loads(target.read_bytes())
    # Flip a byte inside the signed payload, keeping the JSON well-formed.
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[len(payload) // 2] ^= 0x01
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()
    os.chmod(target, 0o644)
    target.write_text(json.dumps(envelope))
    code, report = verify_json(gamsa_env)
    assert code == 1
    assert (target.name, "signature_invalid") in codes_by_key(report)


def test_raw_byte_flip_anywhere_in_manifest_is_found(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env, 1)
    target = objects(gamsa_env, ".manifest.dsse.json")[0]
    size = target.stat().st_size
    original = target.read_bytes()
    for offset in range(0, size, max(1, size // 12)):
        os.chmod(target, 0o644)
        target.write_bytes(original)
        flip_byte(target, offset)
        code, report = verify_json(gamsa_env)
        # A flip in JSON whitespace-free structure may only break syntax; either way it is found,
        # unless the flip lands in a field the verifier ignores (none in our envelopes).
        assert code == 1, (offset, report)
        assert any(Path(f["key"]).name == target.name for f in report["findings"])


def test_deleting_the_middle_bundle_is_a_gap(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env, 3)
    manifests = objects(gamsa_env, ".manifest.dsse.json")
    records = objects(gamsa_env, ".records.jsonl.gz")
    manifests[1].unlink()
    records[1].unlink()
    code, report = verify_json(gamsa_env)
    assert code == 1
    assert (manifests[2].name, "chain_gap") in codes_by_key(report)
    gap = next(f for f in report["findings"] if f["code"] == "chain_gap")
    assert "seq 2 missing" in gap["message"]


def test_swapping_two_manifests_is_found(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env, 3)
    first, second = objects(gamsa_env, ".manifest.dsse.json")[:2]
    a, b = first.read_bytes(), second.read_bytes()
    for path, data in ((first, b), (second, a)):
        os.chmod(path, 0o644)
        path.write_bytes(data)
    code, report = verify_json(gamsa_env)
    assert code == 1
    found = codes_by_key(report)
    assert (first.name, "key_mismatch") in found
    assert (second.name, "key_mismatch") in found


def test_resigned_changed_bundle_with_another_key_is_found(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env, 2)
    manifest_path = objects(gamsa_env, ".manifest.dsse.json")[1]
    records_path = objects(gamsa_env, ".records.jsonl.gz")[1]
    # An attacker drops the first record, rebuilds the bundle and signs it with their key.
    lines = list(iter_record_lines(records_path.read_bytes(), "x"))
    forged = write_records(json.loads(line) for line in lines[1:])
    envelope = parse_envelope(manifest_path.read_bytes())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = forged.sha256
    statement["predicate"]["records"] = {"count": forged.count,
                                         "merkle_root": forged.merkle_root}
    attacker = FileSigner.from_key(Ed25519PrivateKey.generate())
    forged_manifest = sign_envelope(json.dumps(statement).encode(), attacker)
    for path, data in ((records_path, forged.data), (manifest_path, forged_manifest)):
        os.chmod(path, 0o644)
        path.write_bytes(data)
    code, report = verify_json(gamsa_env)
    assert code == 1
    assert (manifest_path.name, "untrusted_key") in codes_by_key(report)


def test_verify_with_explicit_trust_key(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    collect(gamsa_env, 1)
    shown = gamsa_env.run("keys", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    pem = tmp_path / "agent.pem"
    pem.write_text(json.loads(shown.stdout)["public_key_pem"])
    result = gamsa_env.run("verify", "--trust", str(pem))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "trusting this agent's own key" not in result.stderr
    other = tmp_path / "other.pem"
    from cryptography.hazmat.primitives import serialization
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    result = gamsa_env.run("verify", "--trust", str(other), "--json")
    assert result.returncode == 1
    assert {f["code"] for f in json.loads(result.stdout)["findings"]} >= {"untrusted_key"}


def test_prove_and_verify_proof(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    collect(gamsa_env, 1)
    manifest = objects(gamsa_env, ".manifest.dsse.json")[0]
    key = str(manifest.relative_to(gamsa_env.store))
    proof_path = tmp_path / "proof.json"
    result = gamsa_env.run("prove", key, "1", "-o", str(proof_path))
    assert result.returncode == 0, result.stderr
    checked = gamsa_env.run("verify-proof", str(proof_path), "--json")
    assert checked.returncode == 0, checked.stderr
    proven = json.loads(checked.stdout)
    assert proven["line"] == 1 and proven["record"]["collector"] == "host"
    # Swap the record for another one: the audit path no longer leads to the signed root.
    document = json.loads(proof_path.read_bytes())
    record = json.loads(base64.b64decode(document["record"]))
    record["key"] = "forged"
    from signing.canonical import canonical_bytes
    document["record"] = base64.b64encode(canonical_bytes(record)).decode()
    proof_path.write_text(json.dumps(document))
    bad = gamsa_env.run("verify-proof", str(proof_path))
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) <= 2
    out_of_range = gamsa_env.run("prove", key, "100000")
    assert out_of_range.returncode == 2 and "out of range" in out_of_range.stderr
    # A proof whose `line` says another line than the leaf it proves is refused.
    ok_proof = gamsa_env.run("prove", key, "1", "-o", str(proof_path.with_suffix(".2")))
    assert ok_proof.returncode == 0, ok_proof.stderr
    relabelled = json.loads(proof_path.with_suffix(".2").read_bytes())
    relabelled["line"] = 7
    proof_path.write_text(json.dumps(relabelled))
    mislabelled = gamsa_env.run("verify-proof", str(proof_path))
    assert mislabelled.returncode == 1, mislabelled.stderr
    assert "proves leaf_index 0" in mislabelled.stderr


def test_store_and_spool_files_are_protected(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env, 1)
    for path in gamsa_env.store.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o444, path
    key = gamsa_env.state_dir / "keys" / "agent.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (gamsa_env.state_dir).stat().st_mode & 0o077 == 0
    shutil.rmtree(gamsa_env.store / "v1" / "keys")  # keys in the store are never trusted
    assert verify_json(gamsa_env)[0] == 0


def test_lost_key_document_is_rebuilt_identically(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env, 1)
    doc = gamsa_env.state_dir / "keys" / "agent.json"
    before = doc.read_bytes()
    doc.unlink()
    result = gamsa_env.run("collect")  # ships the rebuilt document: must not conflict
    assert result.returncode == 0 and "shipping failed" not in result.stderr, result.stderr
    assert doc.read_bytes() == before


def test_deleting_the_newest_bundle_is_caught_on_the_agent_host(gamsa_env: GamsaEnv) -> None:
    """The store alone cannot show truncation; the host's chain head can."""
    collect(gamsa_env, 3)
    for suffix in (".manifest.dsse.json", ".records.jsonl.gz"):
        objects(gamsa_env, suffix)[-1].unlink()
    code, report = verify_json(gamsa_env)
    assert code == 1
    (finding,) = [f for f in report["findings"] if f["code"] == "chain_truncated"]
    assert "shipped up to seq 3" in finding["message"] and "ends at seq 2" in finding["message"]
    # Bundles still in the spool (not shipped yet) are not counted as missing.
    result = gamsa_env.run("collect", "--no-ship")
    assert result.returncode == 0
    assert "chain_truncated" in gamsa_env.run("verify").stdout  # seq 3 is still gone


def test_unshipped_bundles_are_not_truncation(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env, 1)
    assert gamsa_env.run("collect", "--no-ship").returncode == 0
    code, report = verify_json(gamsa_env)
    assert code == 0, report["findings"]


def test_prove_names_a_bundle_by_whole_id_and_writes_0640(gamsa_env: GamsaEnv,
                                                          tmp_path: Path) -> None:
    collect(gamsa_env, 1)
    manifest = objects(gamsa_env, ".manifest.dsse.json")[0]
    stem = manifest.name.removesuffix(".manifest.dsse.json")  # <seq>-<collection id>
    # The id's last character is not a bundle id (it used to pick whichever bundle's
    # id ended with it: "prove 1" proved seq 2 of a chain whose second id ended in 1).
    tail = gamsa_env.run("prove", stem[-1], "1")
    assert tail.returncode == 2 and "0 matching bundles" in tail.stderr, tail.stderr
    proof_path = tmp_path / "proof.json"
    made = gamsa_env.run("prove", stem, "1", "-o", str(proof_path))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(proof_path.stat().st_mode) == 0o640  # a record of evidence
