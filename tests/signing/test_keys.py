"""Ed25519 key files: safe creation, refusal of unsafe or wrong keys, key ids, key documents."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from signing.errors import RUNTIME, GamsaError, KeyFileError, SignatureError, UsageError
from signing.keys import (
    FileSigner,
    PublicKey,
    Signer,
    generate_private_key,
    key_document,
    key_id_of,
    key_object_name,
    load_or_create_signer,
    load_private_key,
    load_public_key_pem,
    parse_key_document,
    public_key_from_pem,
    save_private_key,
)


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_save_load_round_trip(tmp_path: Path) -> None:
    key = generate_private_key()
    path = tmp_path / "host.key"
    save_private_key(path, key)
    loaded = load_private_key(path)
    assert raw_public(loaded) == raw_public(key)
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert [p.name for p in tmp_path.iterdir()] == ["host.key"]  # no temp file left


def test_saved_key_mode_is_exactly_0600(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    old = os.umask(0)  # a permissive umask must not widen the key file
    try:
        save_private_key(path, generate_private_key())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_creates_missing_parent_with_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "keys" / "host.key"
    save_private_key(path, generate_private_key())
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_private_key(path)


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    first = generate_private_key()
    save_private_key(path, first)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="key file exists") as info:
        save_private_key(path, generate_private_key())
    assert str(path) in info.value.message
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["host.key"]


# A key that cannot be written is the machine's fault (permission, space, a file in
# the way), not bad input: a runtime error (exit 3) naming the path and the cause.

def test_save_into_unwritable_dir_is_a_runtime_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(GamsaError, match="cannot write the private key") as info:
        save_private_key(locked / "host.key", generate_private_key())
    assert info.value.exit_code == RUNTIME and "Permission denied" in info.value.message


def test_save_under_a_file_is_a_runtime_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    path = blocker / "host.key"
    with pytest.raises(GamsaError, match="cannot write the private key") as info:
        save_private_key(path, generate_private_key())
    assert str(path) in info.value.message and "Not a directory" in info.value.message
    assert info.value.exit_code == RUNTIME and "move it away" in info.value.hint


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    save_private_key(path, generate_private_key())
    path.chmod(0o644)
    with pytest.raises(KeyFileError) as info:
        load_private_key(path)
    err = info.value
    assert isinstance(err, UsageError) and err.exit_code == 2
    assert err.message == f"private key {path} is readable by group or others (mode 0644)"
    assert err.hint == f"run: chmod 600 {path}"
    assert "chmod 600" in err.diagnostics() and str(path) in err.diagnostics()
    assert "\n" not in err.diagnostics()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660])
def test_any_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "host.key"
    save_private_key(path, generate_private_key())
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="by group or others") as info:
        load_private_key(path)
    assert f"mode {mode:04o}" in info.value.message


def test_0400_key_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    save_private_key(path, generate_private_key())
    path.chmod(0o400)
    assert load_private_key(path)


def test_key_id_is_hex_sha256_of_raw_public_key(tmp_path: Path) -> None:
    key = generate_private_key()
    expected = hashlib.sha256(raw_public(key)).hexdigest()
    assert len(raw_public(key)) == 32
    assert key_id_of(key.public_key()) == expected
    signer = FileSigner.from_key(key)
    assert signer.key_id == expected
    assert signer.public_key().key_id == expected
    assert key_object_name(expected) == f"v1/keys/{expected}.json"


def test_file_signer_signs_and_public_key_verifies() -> None:
    signer: Signer = FileSigner.from_key(generate_private_key())
    signature = signer.sign(b"data")
    assert len(signature) == 64
    public = signer.public_key()
    assert public.verify(signature, b"data")
    assert not public.verify(signature, b"other")
    assert not public.verify(b"\x00" * 64, b"data")
    assert not public.verify(b"short", b"data")


def test_file_signer_repr_hides_private_key() -> None:
    signer = FileSigner.from_key(generate_private_key())
    assert "private_key" not in repr(signer)
    assert signer.key_id in repr(signer)


def test_public_key_rejects_wrong_key_id() -> None:
    key = generate_private_key().public_key()
    with pytest.raises(ValueError, match="key_id"):
        PublicKey(key, "00" * 32)


def test_public_key_pem_round_trip() -> None:
    public = FileSigner.from_key(generate_private_key()).public_key()
    pem = public.pem()
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert public_key_from_pem(pem) == public
    assert public_key_from_pem(pem.encode()) == public


def test_missing_key_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(KeyFileError, match="does not exist") as info:
        load_private_key(path)
    assert str(path) in info.value.message


def test_garbage_key_file_names_path(tmp_path: Path) -> None:
    path = write(tmp_path / "garbage.key", b"this is not a key\n")
    with pytest.raises(KeyFileError, match="not a PEM private key") as info:
        load_private_key(path)
    assert str(path) in info.value.message
    assert "\n" not in info.value.message


def test_directory_as_key_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "dir.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file") as info:
        load_private_key(path)
    assert str(path) in info.value.message


def test_rsa_key_file_is_refused(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path = write(tmp_path / "rsa.key", pem)
    with pytest.raises(KeyFileError, match=r"not an Ed25519 key \(found RSA\)") as info:
        load_private_key(path)
    assert str(path) in info.value.message


def test_encrypted_key_file_is_refused(tmp_path: Path) -> None:
    pem = generate_private_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    path = write(tmp_path / "enc.key", pem)
    with pytest.raises(KeyFileError, match="encrypted") as info:
        load_private_key(path)
    assert str(path) in info.value.message


def test_load_or_create_signer(tmp_path: Path) -> None:
    path = tmp_path / "state" / "host.key"
    signer, created = load_or_create_signer(path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created_again = load_or_create_signer(path)
    assert not created_again
    assert again.key_id == signer.key_id


def test_load_or_create_signer_does_not_replace_unsafe_key(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    save_private_key(path, generate_private_key())
    path.chmod(0o644)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="readable by group or others") as info:
        load_or_create_signer(path)
    assert info.value.hint == f"run: chmod 600 {path}"
    assert path.read_bytes() == before


def test_load_public_key_pem_accepts_pem_file(tmp_path: Path) -> None:
    public = FileSigner.from_key(generate_private_key()).public_key()
    path = tmp_path / "trusted.pem"
    path.write_text(public.pem())
    path.chmod(0o644)  # public keys may be world-readable
    assert load_public_key_pem(path) == public


def test_load_public_key_pem_accepts_key_document(tmp_path: Path) -> None:
    public = FileSigner.from_key(generate_private_key()).public_key()
    doc = key_document(public, "web-01", "2026-11-25T06:00:00Z")
    path = tmp_path / f"{public.key_id}.json"
    path.write_text(json.dumps(doc, indent=2))
    assert load_public_key_pem(path) == public


def test_load_public_key_pem_missing_names_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.pem"
    with pytest.raises(KeyFileError, match="does not exist") as info:
        load_public_key_pem(path)
    assert str(path) in info.value.message


@pytest.mark.parametrize("content", [b"garbage", b"{not json", b"{}"])
def test_load_public_key_pem_bad_content_names_path(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "bad.pem", content)
    with pytest.raises(KeyFileError) as info:
        load_public_key_pem(path)
    assert str(path) in info.value.message
    assert "\n" not in info.value.message


def test_load_public_key_pem_refuses_private_key(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    save_private_key(path, generate_private_key())
    with pytest.raises(KeyFileError, match="private key, not a public key"):
        load_public_key_pem(path)


def test_public_key_from_pem_refuses_non_ed25519() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(KeyFileError, match=r"not Ed25519 \(found EC\)"):
        public_key_from_pem(ec_pem)


def test_key_document_shape_and_round_trip() -> None:
    public = FileSigner.from_key(generate_private_key()).public_key()
    doc = key_document(public, "web-01-3f2a9c1d", "2026-11-25T06:00:00Z")
    assert doc == {
        "key_id": public.key_id,
        "algorithm": "ed25519",
        "public_key_pem": public.pem(),
        "host": "web-01-3f2a9c1d",
        "created_at": "2026-11-25T06:00:00Z",
        "enrollment": None,
    }
    assert parse_key_document(json.dumps(doc).encode()) == public
    enrollment = {"payload": "e30", "payloadType": "x", "signatures": []}
    assert key_document(public, "h", "t", enrollment)["enrollment"] == enrollment


def test_parse_key_document_rejects_mismatched_key_id() -> None:
    public = FileSigner.from_key(generate_private_key()).public_key()
    other = FileSigner.from_key(generate_private_key()).public_key()
    doc = key_document(public, "web-01", "2026-11-25T06:00:00Z")
    doc["key_id"] = other.key_id
    with pytest.raises(SignatureError, match="does not match") as info:
        parse_key_document(json.dumps(doc).encode())
    assert "key_id" in info.value.message


@pytest.mark.parametrize(("change", "field"), [
    ({"algorithm": "rsa"}, "algorithm"),
    ({"public_key_pem": None}, "public_key_pem"),
    ({"public_key_pem": "nonsense"}, "public_key_pem"),
    ({"key_id": 7}, "key_id"),
])
def test_parse_key_document_names_bad_field(change: dict[str, object], field: str) -> None:
    public = FileSigner.from_key(generate_private_key()).public_key()
    doc = {**key_document(public, "web-01", "2026-11-25T06:00:00Z"), **change}
    with pytest.raises(KeyFileError, match=field):
        parse_key_document(json.dumps(doc).encode())


@pytest.mark.parametrize("bad", ["../../etc/passwd", "AB" * 32, "ab" * 31, ""])
def test_key_object_name_refuses_non_key_ids(bad: str) -> None:
    with pytest.raises(SignatureError, match="not a key id"):
        key_object_name(bad)
