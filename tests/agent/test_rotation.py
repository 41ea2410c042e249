"""Key rotation and revocation, end to end through the real `gamsa` CLI.

A fleet enrolled by an organisation root (tests/agent/test_enrollment.py's
helpers); one host rotates its key with `gamsa keys rotate` and its chain must go
on unbroken under the new key. The attacks: the rotation statement removed,
forged (signed by the new key, or by another host's key) or altered; the old
chain deleted. Revocation: `gamsa org revoke` makes later bundles of a key errors.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path

import pytest

from signing.dsse import sign_envelope
from signing.enrollment import format_time
from signing.keys import FileSigner, generate_private_key, load_private_key
from signing.rotation import PREDICATE_TYPE, rotation_object_name
from tests.agent.test_enrollment import (
    Fleet,
    errors,
    host_env,
    key_id,
    make_fleet,
    ok,
    one_line_error,
)
from tests.conftest import GamsaEnv


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path, ("web-01", "db-01"))


def manifests(store: Path, host: str) -> list[Path]:
    return sorted((store / "v1" / f"host={host}").rglob("*.manifest.dsse.json"))


def statement_of(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(base64.b64decode(json.loads(path.read_bytes())["payload"]))  # type: ignore[no-any-return]


def rotate(fleet: Fleet, host: str) -> dict:  # type: ignore[type-arg]
    """Rotate, have the org sign the new key's pending request, seal with the new key."""
    env = fleet.hosts[host]
    rotated = json.loads(ok(env.run("keys", "rotate", "--json")).stdout)
    ok(fleet.sign_pending("--yes"))
    return rotated


def rotation_objects(fleet: Fleet) -> list[Path]:
    return sorted((fleet.store / "v1" / "keys").glob("*.rotation.*.dsse.json"))


@pytest.mark.slow
def test_a_rotation_keeps_one_unbroken_chain(fleet: Fleet) -> None:
    env = fleet.hosts["web-01"]
    old = key_id(env)
    old_private = (env.state_dir / "keys" / "agent.key").read_bytes()
    rotated = rotate(fleet, "web-01")
    new = key_id(env)
    assert (rotated["old_key_id"], rotated["new_key_id"]) == (old, new) and old != new
    # The old private key is gone; its public document is kept for this host's verify.
    assert (env.state_dir / "keys" / "agent.key").read_bytes() != old_private
    assert (env.state_dir / "keys" / "agent.key").stat().st_mode & 0o777 == 0o600
    assert (env.state_dir / "keys" / "retired" / f"{old}.json").exists()
    assert rotated["enrollment_request"] == f"v1/enroll/pending/web-01/{new}.json"
    sealed = json.loads(ok(env.run("collect", "--json")).stdout)
    assert sealed["seq"] == 3 and sealed["genesis_reason"] is None
    assert sealed["chain_id"] == rotated["continues"]["id"]

    # The statement, as docs/FORMAT.md §8 says: signed by the old key, naming the head.
    (obj,) = rotation_objects(fleet)
    assert obj.name.startswith(f"{new}.rotation.")
    assert json.loads(obj.read_bytes())["signatures"][0]["keyid"] == old
    statement = statement_of(obj)
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["subject"] == [{"name": new, "digest": {"sha256": new}}]
    predicate = statement["predicate"]
    seq2 = manifests(fleet.store, "web-01")[1]
    assert predicate["chain"] == {"id": sealed["chain_id"], "seq": 2,
                                  "manifest_sha256": _sha256(seq2)}
    assert (predicate["host_id"], predicate["old_key_id"], predicate["new_key_id"]) == (
        "web-01", old, new)
    # Shipped: no longer kept in the state dir.
    assert not list((env.state_dir / "keys" / "rotations").iterdir())

    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 0, errors(report)
    (web_chain,) = [c for c in report["chains"] if c["host"] == "web-01"]
    assert (web_chain["first_seq"], web_chain["last_seq"]) == (1, 3)
    assert web_chain["key_ids"] == [old, new]
    assert len([f for f in report["findings"] if f["code"] == "chain_genesis"]) == 2
    # On the host itself, without --trust: its own key and the keys it rotated out.
    local = ok(env.run("verify", "--host", "web-01"))
    assert "OK: 3 bundle(s)" in local.stdout


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_deleting_the_pre_rotation_bundles_is_a_gap_not_a_genesis(fleet: Fleet) -> None:
    rotate(fleet, "web-01")
    ok(fleet.hosts["web-01"].run("collect"))
    host_dir = fleet.store / "v1" / "host=web-01"
    for path in sorted(host_dir.rglob("000000000[12]-*")):
        path.unlink()
    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 1
    (gap,) = errors(report)
    assert gap["code"] == "chain_gap" and "seq 1..2 missing before seq 3" in gap["message"]
    assert not [f for f in report["findings"] if f["code"] == "chain_genesis"
                and "host=web-01" in f["key"]]


@pytest.mark.slow
def test_a_key_change_without_a_rotation_statement_is_an_error(fleet: Fleet,
                                                               tmp_path: Path) -> None:
    env = fleet.hosts["web-01"]
    old = key_id(env)
    rotate(fleet, "web-01")
    sealed = json.loads(ok(env.run("collect", "--json")).stdout)
    (obj,) = rotation_objects(fleet)
    obj.unlink()
    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 1
    (finding,) = errors(report)
    assert finding["code"] == "key_change_without_rotation"
    assert finding["key"] == sealed["manifest_key"]
    assert old in finding["message"] and key_id(env) in finding["message"]
    assert "no rotation statement names this change" in finding["message"]
    # Direct trust of both keys does not excuse it either.
    pems = []
    for name, kid in (("old", old), ("new", key_id(env))):
        pem = tmp_path / f"{name}.pem"
        pem.write_bytes((fleet.store / "v1" / "keys" / f"{kid}.json").read_bytes())
        pems += ["--trust", str(pem)]
    code, report = fleet.verify("--host", "web-01", *pems)
    assert code == 1
    assert [f["code"] for f in errors(report)] == ["key_change_without_rotation"]


def forge_rotation(fleet: Fleet, signer: FileSigner) -> Path:
    """Replace web-01's rotation statement by the same claims signed by `signer`."""
    (obj,) = rotation_objects(fleet)
    payload = base64.b64decode(json.loads(obj.read_bytes())["payload"])
    forged = sign_envelope(payload, signer)
    obj.unlink()
    new = statement_of_bytes(payload)["predicate"]["new_key_id"]
    path = fleet.store / rotation_object_name(new, forged)
    path.write_bytes(forged)
    return path


def statement_of_bytes(payload: bytes) -> dict:  # type: ignore[type-arg]
    return json.loads(payload)  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize("forger", ["new key", "another host's key"])
def test_a_forged_rotation_is_an_error(fleet: Fleet, forger: str) -> None:
    env = fleet.hosts["web-01"]
    rotate(fleet, "web-01")
    sealed = json.loads(ok(env.run("collect", "--json")).stdout)
    holder = env if forger == "new key" else fleet.hosts["db-01"]
    signer = FileSigner.from_key(load_private_key(holder.state_dir / "keys" / "agent.key"))
    forged = forge_rotation(fleet, signer)
    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 1
    found = {f["code"]: f for f in errors(report)}
    assert set(found) == {"key_change_without_rotation", "rotation_invalid"}
    change = found["key_change_without_rotation"]
    assert change["key"] == sealed["manifest_key"]
    assert forged.name in change["message"] and "no signature by a trusted key" in \
        change["message"]
    assert found["rotation_invalid"]["key"] == f"v1/keys/{forged.name}"


@pytest.mark.slow
def test_a_tampered_or_misfiled_rotation_is_a_finding(fleet: Fleet) -> None:
    rotate(fleet, "web-01")
    ok(fleet.hosts["web-01"].run("collect"))
    (obj,) = rotation_objects(fleet)
    envelope = json.loads(obj.read_bytes())
    statement = statement_of(obj)
    statement["predicate"]["chain"]["seq"] = 1  # claim the handover at another point
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    obj.write_text(json.dumps(envelope))
    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 1
    codes = {f["code"] for f in errors(report)}
    assert codes == {"key_change_without_rotation", "rotation_invalid"}
    assert any("does not verify" in f["message"] for f in errors(report))
    # Filed under another key's name: reported, and it hands over nothing.
    obj.write_bytes(b"not json")
    misfiled = obj.with_name(f"{'0' * 64}.rotation.{'1' * 64}.dsse.json")
    obj.rename(misfiled)
    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 1
    invalid = [f for f in errors(report) if f["code"] == "rotation_invalid"]
    assert invalid and invalid[0]["key"] == f"v1/keys/{misfiled.name}"
    assert not [f for f in report["findings"] if f["code"] == "unexpected_object"]


def test_rotate_bad_input_is_one_line(tmp_path: Path) -> None:
    env = host_env(tmp_path, "web-01", tmp_path / "store")
    assert "no agent key" in one_line_error(env.run("keys", "rotate"), 2)
    ok(env.run("collect"))
    ok(env.run("keys", "rotate", "--no-ship", "--no-enroll"))
    # Rotating again before the new key sealed anything would leave the chain behind.
    line = one_line_error(env.run("keys", "rotate", "--no-ship"), 2)
    assert "chain head (seq 1) was sealed by key" in line
    sealed = json.loads(ok(env.run("collect", "--json")).stdout)
    assert sealed["seq"] == 2 and sealed["genesis_reason"] is None
    assert len(list((tmp_path / "store" / "v1" / "keys").glob("*.rotation.*"))) == 1


def test_an_unfinished_rotation_is_never_published(tmp_path: Path) -> None:
    """A crash after the statement was kept but before the new key took its place."""
    from agent.rotate import NEXT_KEY_FILE, rotations_dir
    from agent.state import StateDir
    from signing.keys import PublicKey
    from signing.rotation import ChainPoint, Rotation, sign_rotation

    env = host_env(tmp_path, "web-01", tmp_path / "store")
    ok(env.run("collect"))
    state = StateDir(env.state_dir)
    old = FileSigner.from_key(load_private_key(state.key_path))
    never = PublicKey.from_key(generate_private_key().public_key())
    head = json.loads(state.chain_path.read_text())
    envelope = sign_rotation(Rotation("web-01", old.key_id, never,
                                      ChainPoint(head["chain_id"], 1, head["manifest_sha256"]),
                                      format_time(dt.datetime.now(dt.UTC))), old)
    rotations_dir(state).mkdir(mode=0o700)
    (rotations_dir(state) / "left.dsse.json").write_bytes(envelope)
    (state.keys / NEXT_KEY_FILE).write_bytes(b"half")
    ok(env.run("collect"))  # the old key goes on; nothing of the rotation is published
    assert not list((tmp_path / "store" / "v1" / "keys").glob("*.rotation.*"))
    ok(env.run("keys", "rotate"))  # cleans up what the crash left, then rotates
    assert not (state.keys / NEXT_KEY_FILE).exists()
    (obj,) = (tmp_path / "store" / "v1" / "keys").glob("*.rotation.*")
    assert never.key_id not in obj.name
    ok(env.run("collect"))
    assert "OK: 3 bundle(s)" in ok(env.run("verify")).stdout


def _next_second(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    return moment.replace(microsecond=0) + dt.timedelta(seconds=1)


def revoke(env: GamsaEnv, fleet: Fleet, kid: str, at: dt.datetime,
           org_key: Path | None = None) -> dict:  # type: ignore[type-arg]
    return json.loads(ok(env.run(  # type: ignore[no-any-return]
        "org", "revoke", "--org-key", str(org_key or fleet.org_key), "--key-id", kid,
        "--at", format_time(at), "--reason", "host decommissioned; disk not wiped",
        "--store", f"file://{fleet.store}", "--json")).stdout)


@pytest.mark.slow
def test_a_revoked_keys_later_bundles_are_errors(fleet: Fleet, tmp_path: Path) -> None:
    env = fleet.hosts["web-01"]
    kid = key_id(env)
    last = statement_of(manifests(fleet.store, "web-01")[-1])
    at = _next_second(last["predicate"]["collection"]["finished_at"])
    while dt.datetime.now(dt.UTC) <= at:
        time.sleep(0.1)
    later = json.loads(ok(env.run("collect", "--json")).stdout)
    revoked = revoke(env, fleet, kid, at)
    assert revoked["object"].startswith(f"v1/keys/{kid}.revocation.")
    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 1
    (finding,) = errors(report)  # seq 1 and 2 were sealed before: still fine
    assert finding["code"] == "key_revoked"
    assert finding["key"] == later["manifest_key"]
    assert revoked["object"] in finding["message"] and kid in finding["message"]
    assert "host decommissioned" in finding["message"]
    # Without the org root, a revocation (org-signed) is not read: direct trust as before.
    pem = tmp_path / "web.pem"
    pem.write_bytes((fleet.store / "v1" / "keys" / f"{kid}.json").read_bytes())
    assert fleet.verify("--host", "web-01", "--trust", str(pem))[0] == 0


@pytest.mark.slow
def test_a_revocation_by_another_org_key_revokes_nothing(fleet: Fleet,
                                                         tmp_path: Path) -> None:
    env = fleet.hosts["web-01"]
    other = tmp_path / "other-org"
    ok(env.run("org", "init", "--out", str(other)))
    revoked = revoke(env, fleet, key_id(env), dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                     other / "org.key")
    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 1
    (finding,) = errors(report)
    assert finding["code"] == "revocation_invalid" and finding["key"] == revoked["object"]
    assert "no signature by a trusted key" in finding["message"]


@pytest.mark.parametrize(("args", "expected"), [
    (("--key-id", "abc"), "is not a key id"),
    (("--key-id", "a" * 64, "--at", "yesterday"), "--at 'yesterday'"),
    (("--key-id", "a" * 64, "--reason", ""), "--reason is missing or empty"),
])
def test_revoke_bad_input_is_one_line(gamsa_env: GamsaEnv, tmp_path: Path,
                                      args: tuple[str, ...], expected: str) -> None:
    org = tmp_path / "org"
    ok(gamsa_env.run("org", "init", "--out", str(org)))
    extra = list(args) if "--reason" in args else [*args, "--reason", "lost"]
    result = gamsa_env.run("org", "revoke", "--org-key", str(org / "org.key"),
                           "--out", str(tmp_path / "out"), *extra)
    assert expected in one_line_error(result, 2)
    assert not (tmp_path / "out").exists()
    # The organisation's *public* key given as the signing key.
    result = gamsa_env.run("org", "revoke", "--org-key", str(org / "org.pub"), "--key-id",
                           "a" * 64, "--reason", "lost", "--out", str(tmp_path / "out"))
    assert "public key" in one_line_error(result, 2)


@pytest.mark.slow
def test_rotation_and_revocation_through_an_s3_store(s3_gamsa: GamsaEnv,
                                                     tmp_path: Path) -> None:
    """The statements are published create-only on a moto S3 bucket (Object Lock)."""
    env = s3_gamsa
    org = tmp_path / "org"
    ok(env.run("org", "init", "--out", str(org)))
    ok(env.run("collect"))
    ok(env.run("keys", "enroll"))
    sign = ("org", "sign-enrollment", "--org-key", str(org / "org.key"), "--store",
            env.store_url, "--pending", "--yes")
    ok(env.run(*sign))
    rotated = json.loads(ok(env.run("keys", "rotate", "--json")).stdout)
    (published,) = rotated["published"]
    assert published.startswith(f"v1/keys/{rotated['new_key_id']}.rotation.")
    assert rotated["enrollment_request"] is not None
    ok(env.run(*sign))
    sealed = json.loads(ok(env.run("collect", "--json")).stdout)
    assert sealed["seq"] == 2 and sealed["genesis_reason"] is None
    trust_org = ("verify", "--trust-org", str(org / "org.pub"), "--json")
    report = json.loads(ok(env.run(*trust_org)).stdout)
    assert report["ok"] and report["bundles"] == 2
    ok(env.run("org", "revoke", "--org-key", str(org / "org.key"), "--key-id",
               rotated["new_key_id"], "--at", "2020-01-01T00:00:00Z", "--reason", "test",
               "--store", env.store_url))
    result = env.run(*trust_org)
    assert result.returncode == 1
    assert [f["code"] for f in errors(json.loads(result.stdout))] == ["key_revoked"]
