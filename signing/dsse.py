"""DSSE envelopes carrying in-toto Statements: how a bundle manifest is signed and checked.

The envelope follows the DSSE v1 protocol (github.com/secure-systems-lab/dsse):
the signature covers PAE(payloadType, payload), never the JSON around it, so the
envelope's own encoding does not matter to verification. We write envelopes as
canonical JSON with standard base64; we read what the spec allows any signer to
write (URL-safe or standard base64, with or without padding, unknown fields).

The payload of a manifest is an in-toto Statement v1 whose predicate describes
the bundle (docs/DESIGN.md, "Bundle").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from signing.canonical import canonical_bytes
from signing.errors import FormatError, SignatureError
from signing.keys import PublicKey, Signer

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "urn:gamsa:evidence-bundle:v1"

_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_PRINTABLE_KEYID = re.compile(r"[\x21-\x7e]{1,128}")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding: the bytes that are actually signed."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def _b64encode(data: bytes) -> str:
    return base64.standard_b64encode(data).decode("ascii")


def _b64decode(value: Any, field: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not, as DSSE readers must."""
    if not isinstance(value, str):
        raise SignatureError(f"envelope field {field} is not a string")
    if not _BASE64.fullmatch(value):
        raise SignatureError(f"envelope field {field} is not base64")
    text = value.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise SignatureError(f"envelope field {field} is not base64") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may pick different values for a repeated key; refuse the ambiguity.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _load_json(data: bytes, what: str, error: type[SignatureError] | type[FormatError]) -> Any:
    try:
        return json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{what} is not JSON ({reason})") from None


def sign_envelope(payload: bytes, signer: Signer, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """Sign `payload` and return the DSSE envelope as canonical JSON bytes."""
    message = pae(payload_type, payload)
    signature = signer.sign(message)
    # A signer that is not a local key (token, KMS) may return garbage or sign with
    # another key than it claims; find out now, not when an auditor verifies.
    public = signer.public_key()
    if public.key_id != signer.key_id or not public.verify(signature, message):
        raise SignatureError(f"signer {signer.key_id} produced a signature that does not verify")
    envelope = {
        "payload": _b64encode(payload),
        "payloadType": payload_type,
        "signatures": [{"keyid": signer.key_id, "sig": _b64encode(signature)}],
    }
    return canonical_bytes(envelope)


@dataclass(frozen=True)
class VerifiedEnvelope:
    """The content of an envelope whose signature verified with a trusted key."""

    payload_type: str
    payload: bytes
    key_id: str  # the trusted key that verified, not the envelope's unauthenticated keyid
    # every signature of the envelope, decoded, in order (is_exact_gamsa_envelope)
    signatures: tuple[bytes, ...] = field(default=(), compare=False, repr=False)


def parse_envelope(data: bytes) -> dict[str, Any]:
    """Parse a DSSE envelope and check its structure; nothing here is authenticated.

    Returns the JSON object as read (unknown fields kept). Raises SignatureError for
    bytes that are not JSON, a missing or mistyped payload, payloadType or
    signatures field, or base64 that does not decode.
    """
    return _parse_envelope(data)[0]


def _parse_envelope(data: bytes) -> tuple[dict[str, Any], bytes, list[bytes]]:
    """`parse_envelope`, with the payload and signatures it decoded on the way (so a
    verifier decodes each once)."""
    envelope = _load_json(data, "envelope", SignatureError)
    if not isinstance(envelope, dict):
        raise SignatureError("envelope is not a JSON object")
    payload = _b64decode(envelope.get("payload"), "payload")
    if not isinstance(envelope.get("payloadType"), str):
        raise SignatureError("envelope field payloadType is missing or not a string")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise SignatureError("envelope field signatures is missing or empty")
    decoded: list[bytes] = []
    for i, entry in enumerate(signatures):
        if not isinstance(entry, dict):
            raise SignatureError(f"envelope field signatures[{i}] is not an object")
        decoded.append(_b64decode(entry.get("sig"), f"signatures[{i}].sig"))
        keyid = entry.get("keyid")
        if keyid is not None and not isinstance(keyid, str):
            raise SignatureError(f"envelope field signatures[{i}].keyid is not a string")
    return envelope, payload, decoded


def envelope_payload(data: bytes) -> bytes:
    """The payload bytes of a DSSE envelope, NOT authenticated (for a sender's own
    checks before anything is trusted; verifiers use `verify_envelope`)."""
    return _b64decode(parse_envelope(data)["payload"], "payload")


def _show_keyid(keyid: str) -> str:
    if not keyid:
        return "(none)"
    return keyid if _PRINTABLE_KEYID.fullmatch(keyid) else repr(keyid[:64])


def verify_envelope(data: bytes, trusted: Mapping[str, PublicKey],
                    expected_type: str = PAYLOAD_TYPE) -> VerifiedEnvelope:
    """Verify a DSSE envelope against trusted keys (by key id) and return its payload.

    The envelope verifies when any of its signatures verifies with a trusted key.
    `keyid` is an unauthenticated hint (DSSE): the key it names is tried first, then
    every other trusted key, so an envelope from a signer that names keys
    differently still verifies. Raises SignatureError otherwise, or when the
    payloadType is not `expected_type`.
    """
    envelope, payload, signatures = _parse_envelope(data)
    payload_type: str = envelope["payloadType"]
    if payload_type != expected_type:
        raise SignatureError(f"envelope payloadType is {payload_type[:100]!r}, "
                             f"expected {expected_type!r}")
    message = pae(payload_type, payload)
    keyids: list[str] = []
    named_trusted: list[str] = []
    for entry, signature in zip(envelope["signatures"], signatures, strict=True):
        keyid: str = entry.get("keyid") or ""
        keyids.append(keyid)
        hinted = trusted.get(keyid) if keyid else None
        verifier = None
        if hinted is not None:
            named_trusted.append(keyid)
            if hinted.verify(signature, message):
                verifier = hinted
        if verifier is None:
            verifier = next((key for key in trusted.values()
                             if key is not hinted and key.verify(signature, message)), None)
        if verifier is not None:
            return VerifiedEnvelope(payload_type, payload, verifier.key_id, tuple(signatures))
    if named_trusted:
        # The envelope names a key we trust but its signature fails: altered bytes,
        # not an unknown signer. Worded apart so callers can tell the two cases.
        raise SignatureError(f"signature by key {named_trusted[0]} does not verify "
                             "(payload or signature altered)")
    shown = ", ".join(_show_keyid(k) for k in keyids[:8])
    if len(keyids) > 8:
        shown += f", ... {len(keyids) - 8} more"
    raise SignatureError(f"no signature by a trusted key (keyids: {shown})")


def make_statement(subject_name: str, subject_sha256: str, predicate: dict[str, Any],
                   predicate_type: str = PREDICATE_TYPE) -> dict[str, Any]:
    """An in-toto Statement v1 about one subject."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": {"sha256": subject_sha256}}],
        "predicateType": predicate_type,
        "predicate": predicate,
    }


def parse_statement(payload: bytes, predicate_type: str = PREDICATE_TYPE) -> dict[str, Any]:
    """Parse an in-toto Statement v1 with one subject named by its SHA-256.

    Raises FormatError naming the first field that is missing or wrong.
    """
    statement = _load_json(payload, "statement", FormatError)
    if not isinstance(statement, dict):
        raise FormatError("statement is not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE:
        raise FormatError(f"statement field _type is not {STATEMENT_TYPE!r}")
    if statement.get("predicateType") != predicate_type:
        raise FormatError(f"statement field predicateType is not {predicate_type!r}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise FormatError("statement field subject must hold exactly one subject")
    subject = subjects[0]
    if not isinstance(subject, dict) or not isinstance(subject.get("name"), str):
        raise FormatError("statement field subject[0].name is missing or not a string")
    digest = subject.get("digest")
    sha256 = digest.get("sha256") if isinstance(digest, dict) else None
    if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
        raise FormatError("statement field subject[0].digest.sha256 is not a lower-case hex "
                          "SHA-256")
    if not isinstance(statement.get("predicate"), dict):
        raise FormatError("statement field predicate is missing or not an object")
    return statement


def is_exact_gamsa_envelope(data: bytes, verified: VerifiedEnvelope) -> bool:
    """True if `data` is byte for byte what `sign_envelope` writes for `verified`.

    DSSE readers must tolerate other encodings (URL-safe base64, unknown fields, a
    wrong keyid hint), so signatures alone do not pin a manifest's bytes. The chain
    links manifests by the hash of their exact bytes, so gamsa's verifier also
    requires the exact form gamsa writes: any byte changed in a stored manifest is
    found, even in a part the signature does not cover.
    """
    signatures = verified.signatures or tuple(_parse_envelope(data)[2])
    expected = {
        "payload": _b64encode(verified.payload),
        "payloadType": verified.payload_type,
        "signatures": [{"keyid": verified.key_id, "sig": _b64encode(signature)}
                       for signature in signatures],
    }
    return canonical_bytes(expected) == data
