"""Inclusion proof of one record: show a regulator one line without the rest.

A proof is a small self-contained JSON document: the record's canonical line, its
index, the RFC 9162 audit path, and the bundle's signed manifest (the DSSE
envelope, verbatim). Checking it needs only the trusted public key: the envelope
signature, then the leaf hash of the line up the audit path to the Merkle root the
signed statement commits to. Format in docs/FORMAT.md ("Inclusion proof").
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from signing.bundle import iter_record_lines
from signing.canonical import canonical_bytes, parse_canonical
from signing.dsse import verify_envelope
from signing.errors import FormatError, ProofError, UsageError
from signing.keys import PublicKey
from signing.merkle import inclusion_proof, leaf_hash, verify_inclusion
from signing.predicate import ManifestPredicate, parse_bundle_statement

PROOF_TYPE = "urn:gamsa:inclusion-proof:v1"


@dataclass(frozen=True)
class ProvenRecord:
    """What a verified proof establishes."""

    record: Any
    line: int
    tree_size: int
    records_key: str
    key_id: str
    predicate: ManifestPredicate


def make_proof(manifest: bytes, records: bytes, line: int, records_key: str) -> bytes:
    """The proof (canonical JSON bytes) that line `line` (1-based) is in the bundle."""
    return make_proofs(manifest, records, [line], records_key)[line]


def make_proofs(manifest: bytes, records: bytes, lines: Iterable[int],
                records_key: str) -> dict[int, bytes]:
    """Proofs of several lines of one bundle, its records read and hashed once."""
    records_lines = list(iter_record_lines(records, records_key))
    leaves = [leaf_hash(item) for item in records_lines]
    proofs: dict[int, bytes] = {}
    for line in lines:
        if not 1 <= line <= len(records_lines):
            raise UsageError(f"{records_key}: line {line} out of range "
                             f"(1..{len(records_lines)})")
        document = {
            "type": PROOF_TYPE,
            "records_key": records_key,
            "line": line,
            "leaf_index": line - 1,
            "tree_size": len(records_lines),
            "record": base64.b64encode(records_lines[line - 1]).decode("ascii"),
            "audit_path": [h.hex() for h in inclusion_proof(line - 1, leaves)],
            "manifest": base64.b64encode(manifest).decode("ascii"),
        }
        proofs[line] = canonical_bytes(document)
    return proofs


def _field(document: Mapping[str, Any], name: str, kind: type) -> Any:
    value = document.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(f"proof field {name!r} is missing or has the wrong type")
    return value


def verify_proof(data: bytes, trusted: Mapping[str, PublicKey]) -> ProvenRecord:
    """Check a proof; raise ProofError / SignatureError / FormatError if it fails."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise FormatError(f"proof is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("type") != PROOF_TYPE:
        raise FormatError(f"not a gamsa inclusion proof (type must be {PROOF_TYPE})")
    try:
        manifest = base64.b64decode(_field(document, "manifest", str), validate=True)
        record_line = base64.b64decode(_field(document, "record", str), validate=True)
        path = [bytes.fromhex(h) for h in _field(document, "audit_path", list)]
    except ValueError as exc:
        raise FormatError(f"proof field is not valid base64/hex: {exc}") from exc
    index = _field(document, "leaf_index", int)
    size = _field(document, "tree_size", int)
    # `line` is for people reading the proof; the math proves `leaf_index`, so the two
    # must agree or the proof would show one line and prove another.
    if document.get("line", index + 1) != index + 1:
        raise ProofError(f"proof says line {document.get('line')!r} but proves leaf_index "
                         f"{index} (line {index + 1})")
    records_key = _field(document, "records_key", str)
    envelope = verify_envelope(manifest, trusted)
    statement = parse_bundle_statement(envelope.payload)
    predicate = statement.predicate
    if statement.subject_name != records_key:
        raise ProofError(f"proof names {records_key}, signed manifest names "
                         f"{statement.subject_name}")
    signed = predicate.records
    if signed.count != size:
        raise ProofError(f"proof tree size {size}, signed record count {signed.count}")
    try:
        root = bytes.fromhex(signed.merkle_root)
    except ValueError as exc:
        raise FormatError("signed merkle_root is not hex") from exc
    verify_inclusion(index, size, leaf_hash(record_line), path, root)
    return ProvenRecord(parse_canonical(record_line), index + 1, size, records_key,
                        envelope.key_id, predicate)
