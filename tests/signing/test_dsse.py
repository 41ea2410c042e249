"""DSSE envelopes and in-toto statements, checked against the spec and securesystemslib."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from signing.canonical import canonical_bytes, parse_canonical
from signing.dsse import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    VerifiedEnvelope,
    make_statement,
    pae,
    parse_envelope,
    parse_statement,
    sign_envelope,
    verify_envelope,
)
from signing.errors import FormatError, SignatureError
from signing.keys import FileSigner, PublicKey, generate_private_key

SHA = "ab" * 32


def new_signer() -> FileSigner:
    return FileSigner.from_key(generate_private_key())


def trust(*signers: FileSigner) -> dict[str, PublicKey]:
    return {s.key_id: s.public_key() for s in signers}


def statement_bytes() -> bytes:
    predicate = {"host": {"id": "web-01"}, "records": {"count": 2, "merkle_root": SHA}}
    return canonical_bytes(make_statement("v1/host=web-01/x.records.jsonl.gz", SHA, predicate))


def b64(data: bytes) -> str:
    return base64.standard_b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.standard_b64decode(text)


def envelope_dict(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    assert isinstance(value, dict)
    return value


def encode(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope).encode()


# --- PAE ---------------------------------------------------------------------

def test_pae_spec_example() -> None:
    assert (pae("http://example.com/HelloWorld", b"hello world")
            == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world")


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("tÿpe", "é".encode()) == b"DSSEv1 5 t\xc3\xbfpe 2 \xc3\xa9"
    assert pae("", b"") == b"DSSEv1 0  0 "


# --- sign / verify -------------------------------------------------------------

def test_sign_verify_round_trip() -> None:
    signer = new_signer()
    payload = statement_bytes()
    data = sign_envelope(payload, signer)
    assert parse_canonical(data) == envelope_dict(data)  # written as canonical JSON
    env = envelope_dict(data)
    assert env["payloadType"] == PAYLOAD_TYPE
    assert unb64(env["payload"]) == payload
    assert env["signatures"][0]["keyid"] == signer.key_id
    assert signer.public_key().verify(unb64(env["signatures"][0]["sig"]),
                                      pae(PAYLOAD_TYPE, payload))
    assert verify_envelope(data, trust(signer)) == VerifiedEnvelope(PAYLOAD_TYPE, payload,
                                                                    signer.key_id)


def test_custom_payload_type() -> None:
    signer = new_signer()
    data = sign_envelope(b"{}", signer, payload_type="application/x-test")
    verified = verify_envelope(data, trust(signer), expected_type="application/x-test")
    assert verified.payload == b"{}"
    with pytest.raises(SignatureError, match="payloadType"):
        verify_envelope(data, trust(signer))


def test_tampered_payload_is_rejected() -> None:
    signer = new_signer()
    env = envelope_dict(sign_envelope(statement_bytes(), signer))
    env["payload"] = b64(statement_bytes().replace(b"web-01", b"web-02"))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(encode(env), trust(signer))


def test_tampered_signature_is_rejected() -> None:
    signer = new_signer()
    env = envelope_dict(sign_envelope(statement_bytes(), signer))
    sig = bytearray(unb64(env["signatures"][0]["sig"]))
    sig[0] ^= 1
    env["signatures"][0]["sig"] = b64(bytes(sig))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(encode(env), trust(signer))


def test_wrong_key_is_rejected() -> None:
    signer, stranger = new_signer(), new_signer()
    data = sign_envelope(statement_bytes(), stranger)
    with pytest.raises(SignatureError) as info:
        verify_envelope(data, trust(signer))
    assert info.value.message == f"no signature by a trusted key (keyids: {stranger.key_id})"


def test_no_trusted_keys_is_rejected() -> None:
    with pytest.raises(SignatureError, match="no signature by a trusted key"):
        verify_envelope(sign_envelope(b"{}", new_signer()), {})


def test_wrong_payload_type_is_rejected() -> None:
    signer = new_signer()
    env = envelope_dict(sign_envelope(statement_bytes(), signer))
    env["payloadType"] = "application/json"
    with pytest.raises(SignatureError, match="payloadType"):
        verify_envelope(encode(env), trust(signer))
    # The type is inside the signature: a correctly signed envelope of another type
    # is refused too.
    other = sign_envelope(statement_bytes(), signer, payload_type="application/json")
    with pytest.raises(SignatureError, match="payloadType"):
        verify_envelope(other, trust(signer))


def test_signature_over_other_type_does_not_verify_as_ours() -> None:
    signer = new_signer()
    env = envelope_dict(sign_envelope(statement_bytes(), signer, payload_type="text/plain"))
    env["payloadType"] = PAYLOAD_TYPE
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(encode(env), trust(signer))


def test_any_trusted_signature_suffices() -> None:
    signer, stranger = new_signer(), new_signer()
    payload = statement_bytes()
    env = envelope_dict(sign_envelope(payload, signer))
    foreign = envelope_dict(sign_envelope(payload, stranger))
    env["signatures"] = foreign["signatures"] + env["signatures"]
    assert verify_envelope(encode(env), trust(signer)).key_id == signer.key_id


def test_missing_or_unknown_keyid_tries_all_trusted_keys() -> None:
    signer, other = new_signer(), new_signer()
    env = envelope_dict(sign_envelope(statement_bytes(), signer))
    for keyid in (None, "", "some-other-naming-scheme", other.key_id):
        sig = dict(env["signatures"][0])
        if keyid is None:
            del sig["keyid"]
        else:
            sig["keyid"] = keyid
        data = encode({**env, "signatures": [sig]})
        assert verify_envelope(data, trust(other, signer)).key_id == signer.key_id


def test_url_safe_and_unpadded_base64_are_accepted() -> None:
    signer = new_signer()
    # Lengths that need padding and bytes that differ between the two alphabets.
    payload = b'{"x":"\xfb\xff\xfe?>"}'
    env = envelope_dict(sign_envelope(payload, signer))
    std_payload, std_sig = env["payload"], env["signatures"][0]["sig"]
    raw_sig = unb64(std_sig)
    variants = {
        "urlsafe": (base64.urlsafe_b64encode(payload).decode(),
                    base64.urlsafe_b64encode(raw_sig).decode()),
        "unpadded": (std_payload.rstrip("="), std_sig.rstrip("=")),
        "urlsafe-unpadded": (base64.urlsafe_b64encode(payload).decode().rstrip("="),
                             base64.urlsafe_b64encode(raw_sig).decode().rstrip("=")),
    }
    assert variants["urlsafe"][0] != std_payload and "=" in std_payload
    for name, (p, s) in variants.items():
        data = encode({**env, "payload": p, "signatures": [{"keyid": signer.key_id, "sig": s}]})
        assert verify_envelope(data, trust(signer)).payload == payload, name


def test_unknown_fields_are_ignored() -> None:
    signer = new_signer()
    env = envelope_dict(sign_envelope(statement_bytes(), signer))
    env["extension"] = {"kind": "future"}
    env["signatures"][0]["cert"] = "-----BEGIN CERTIFICATE-----"
    env["signatures"][0]["x-note"] = 1
    assert verify_envelope(encode(env), trust(signer)).key_id == signer.key_id
    assert parse_envelope(encode(env))["extension"] == {"kind": "future"}


@pytest.mark.parametrize(("data", "field"), [
    (b"not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"payloadType":"t","signatures":[{"sig":"AA=="}]}', "payload"),
    (b'{"payload":"e30=","signatures":[{"sig":"AA=="}]}', "payloadType"),
    (b'{"payload":"e30=","payloadType":"t"}', "signatures"),
    (b'{"payload":"e30=","payloadType":"t","signatures":[]}', "signatures"),
    (b'{"payload":"e30=","payloadType":"t","signatures":["x"]}', r"signatures\[0\]"),
    (b'{"payload":"e30=","payloadType":"t","signatures":[{"keyid":"k"}]}',
     r"signatures\[0\]\.sig"),
    (b'{"payload":"e30=","payloadType":"t","signatures":[{"sig":"AA==","keyid":3}]}',
     r"signatures\[0\]\.keyid"),
    (b'{"payload":"e3 0=","payloadType":"t","signatures":[{"sig":"AA=="}]}', "payload"),
    (b'{"payload":"e","payloadType":"t","signatures":[{"sig":"AA=="}]}', "payload"),
    (b'{"payload":"e30=","payloadType":"t","signatures":[{"sig":"A*=="}]}', "sig"),
    (b'{"payload":"e30=","payload":"e30=","payloadType":"t","signatures":[{"sig":"AA=="}]}',
     "duplicate"),
])
def test_malformed_envelopes(data: bytes, field: str) -> None:
    with pytest.raises(SignatureError, match=field) as info:
        parse_envelope(data)
    assert "\n" not in info.value.message
    with pytest.raises(SignatureError):
        verify_envelope(data, trust(new_signer()))


def test_signer_that_lies_is_caught_at_signing() -> None:
    honest, other = new_signer(), new_signer()

    class Lying:
        key_id = honest.key_id

        def sign(self, data: bytes) -> bytes:
            return other.sign(data)

        def public_key(self) -> PublicKey:
            return honest.public_key()

    with pytest.raises(SignatureError, match="does not verify"):
        sign_envelope(b"{}", Lying())


# --- interop with securesystemslib ---------------------------------------------

def sslib_key(public: PublicKey) -> SSlibKey:
    raw = public.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return SSlibKey(public.key_id, "ed25519", "ed25519", {"public": raw.hex()})


def test_securesystemslib_verifies_our_envelope() -> None:
    signer = new_signer()
    payload = statement_bytes()
    envelope = Envelope.from_dict(json.loads(sign_envelope(payload, signer)))
    assert envelope.payload == payload
    assert envelope.payload_type == PAYLOAD_TYPE
    accepted = envelope.verify([sslib_key(signer.public_key())], threshold=1)
    assert list(accepted) == [signer.key_id]


def test_securesystemslib_rejects_our_tampered_envelope() -> None:
    signer = new_signer()
    env = envelope_dict(sign_envelope(statement_bytes(), signer))
    env["payload"] = b64(statement_bytes().replace(b"web-01", b"web-02"))
    envelope = Envelope.from_dict(env)
    with pytest.raises(VerificationError):
        envelope.verify([sslib_key(signer.public_key())], threshold=1)


def test_securesystemslib_rejects_our_envelope_under_another_key() -> None:
    signer, stranger = new_signer(), new_signer()
    env = envelope_dict(sign_envelope(statement_bytes(), stranger))
    env["signatures"][0]["keyid"] = signer.key_id  # claim the trusted key
    envelope = Envelope.from_dict(env)
    with pytest.raises(VerificationError):
        envelope.verify([sslib_key(signer.public_key())], threshold=1)


def test_we_verify_securesystemslib_envelope() -> None:
    private_key = generate_private_key()
    public = FileSigner.from_key(private_key).public_key()
    payload = statement_bytes()
    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    envelope.sign(CryptoSigner(private_key, sslib_key(public)))
    data = json.dumps(envelope.to_dict()).encode()
    verified = verify_envelope(data, {public.key_id: public})
    assert verified == VerifiedEnvelope(PAYLOAD_TYPE, payload, public.key_id)


def test_we_verify_securesystemslib_envelope_with_its_own_keyid() -> None:
    # securesystemslib's default keyid is a hash of its key dict, not ours: keyid is
    # only a hint, so the envelope still verifies with the trusted key.
    private_key = generate_private_key()
    public = FileSigner.from_key(private_key).public_key()
    sslib_signer = CryptoSigner(private_key)
    assert sslib_signer.public_key.keyid != public.key_id
    envelope = Envelope(b"{}", PAYLOAD_TYPE, {})
    envelope.sign(sslib_signer)
    data = json.dumps(envelope.to_dict()).encode()
    assert verify_envelope(data, {public.key_id: public}).key_id == public.key_id


def test_we_reject_tampered_securesystemslib_envelope() -> None:
    private_key = generate_private_key()
    public = FileSigner.from_key(private_key).public_key()
    envelope = Envelope(statement_bytes(), PAYLOAD_TYPE, {})
    envelope.sign(CryptoSigner(private_key, sslib_key(public)))
    env = envelope.to_dict()
    env["payload"] = b64(b'{"forged":true}')
    with pytest.raises(SignatureError, match="does not verify"):
        verify_envelope(encode(env), {public.key_id: public})


# --- statements ----------------------------------------------------------------

def test_make_and_parse_statement() -> None:
    predicate = {"records": {"count": 0}}
    statement = make_statement("v1/host=h/date=2026-11-25/x.records.jsonl.gz", SHA, predicate)
    assert statement == {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "v1/host=h/date=2026-11-25/x.records.jsonl.gz",
                     "digest": {"sha256": SHA}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }
    assert parse_statement(canonical_bytes(statement)) == statement


def good_statement() -> dict[str, Any]:
    return make_statement("name", SHA, {"k": "v"})


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: s.update({"_type": "https://in-toto.io/Statement/v0.1"}), "_type"),
    (lambda s: s.pop("_type"), "_type"),
    (lambda s: s.update({"predicateType": "https://slsa.dev/provenance/v1"}), "predicateType"),
    (lambda s: s.update({"subject": []}), "subject"),
    (lambda s: s.update({"subject": s["subject"] * 2}), "subject"),
    (lambda s: s["subject"][0].pop("name"), r"subject\[0\]\.name"),
    (lambda s: s["subject"][0].update({"digest": {"sha512": SHA}}), "digest.sha256"),
    (lambda s: s["subject"][0].update({"digest": {"sha256": SHA.upper()}}), "digest.sha256"),
    (lambda s: s["subject"][0].update({"digest": {"sha256": "ab"}}), "digest.sha256"),
    (lambda s: s.update({"predicate": None}), "predicate"),
])
def test_parse_statement_names_bad_field(mutate: Any, field: str) -> None:
    statement = good_statement()
    mutate(statement)
    with pytest.raises(FormatError, match=field) as info:
        parse_statement(json.dumps(statement).encode())
    assert "\n" not in info.value.message


@pytest.mark.parametrize("payload", [b"not json", b"[1]", b'{"_type":1,"_type":2}'])
def test_parse_statement_rejects_non_statements(payload: bytes) -> None:
    with pytest.raises(FormatError, match="statement"):
        parse_statement(payload)
