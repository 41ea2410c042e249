"""Key revocation: the organisation root withdraws its trust in an agent key from a time on.

`gamsa org revoke` signs, with the organisation key, a DSSE envelope whose payload
is an in-toto Statement v1 of predicate type `urn:gamsa:key-revocation:v1` naming
the key, the time from which it is no longer trusted, and why. Published
create-only, named by its own digest (docs/FORMAT.md §9):

    v1/keys/<key_id>.revocation.<sha256>.dsse.json

Under org trust the verifier reports every bundle of a revoked key whose
collection finished after the revocation time as an error (`key_revoked`), naming
the revocation; bundles sealed before it stay valid (they were sealed while the
key was trusted, and the write-once store has kept them since). A revocation that
does not verify with an organisation key revokes nothing and is itself an error.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from signing.canonical import canonical_bytes
from signing.clock import require_time
from signing.dsse import make_statement, parse_statement, sign_envelope, verify_envelope
from signing.enrollment import (
    KEYS_PREFIX,
    MAX_DOCUMENT_BYTES,
    format_time,
    key_statement_name,
    show,
)
from signing.errors import FormatError, SignatureError, UsageError
from signing.keys import PublicKey, Signer
from signing.reading import get_capped
from signing.rotation import KeysReader, Problem, SignedBundle

PREDICATE_TYPE = "urn:gamsa:key-revocation:v1"
MAX_REASON_CHARS = 512
REVOCATION_KEY = re.compile(r"^v1/keys/([0-9a-f]{64})\.revocation\.([0-9a-f]{64})\.dsse\.json$")
KEY_REVOKED = "key_revoked"
REVOCATION_INVALID = "revocation_invalid"

_KEY_ID = re.compile(r"[0-9a-f]{64}")


def revocation_object_name(key_id: str, envelope: bytes) -> str:
    """Where a revocation is published: beside the revoked key's document."""
    return key_statement_name(key_id, "revocation", envelope)


@dataclass(frozen=True)
class Revocation:
    """A verified revocation: `key_id` is not trusted for bundles finished after `at`."""

    key_id: str
    at: dt.datetime
    reason: str
    signed_by: str
    source: str


def _check_reason(reason: Any, what: str, error: type[FormatError] | type[UsageError]) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise error(f"{what} is missing or empty")
    if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise error(f"{what} must be one printable line of at most {MAX_REASON_CHARS} "
                    f"characters")
    return reason


def revocation_statement(key_id: str, at: dt.datetime, reason: str,
                         signed_at: dt.datetime) -> dict[str, Any]:
    if not _KEY_ID.fullmatch(key_id):
        raise UsageError(f"--key-id {show(key_id)[:80]} is not a key id (64 lower-case hex "
                         f"digits)")
    predicate = {"key_id": key_id, "revoked_at": format_time(at),
                 "reason": _check_reason(reason, "--reason", UsageError),
                 "signed_at": format_time(signed_at)}
    return make_statement(key_id, key_id, predicate, PREDICATE_TYPE)


def sign_revocation(key_id: str, at: dt.datetime, reason: str, signed_at: dt.datetime,
                    org: Signer) -> bytes:
    """The revocation's DSSE envelope, signed by the organisation key."""
    statement = revocation_statement(key_id, at, reason, signed_at)
    return sign_envelope(canonical_bytes(statement), org)


def verify_revocation(data: bytes, org_keys: Mapping[str, PublicKey],
                      source: str) -> Revocation:
    """Verify a revocation with the organisation key(s); SignatureError or FormatError."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FormatError("too large to be a revocation")
    envelope = verify_envelope(data, org_keys)
    statement = parse_statement(envelope.payload, PREDICATE_TYPE)
    predicate, subject = statement["predicate"], statement["subject"][0]
    key_id = predicate.get("key_id")
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise FormatError("revocation field predicate.key_id is not a key id")
    if subject["name"] != key_id or subject["digest"]["sha256"] != key_id:
        raise FormatError("revocation subject name and digest must be its key id")
    at = require_time(predicate.get("revoked_at"), "revocation field predicate.revoked_at")
    reason = _check_reason(predicate.get("reason"), "revocation field predicate.reason",
                           FormatError)
    return Revocation(key_id, at, reason, envelope.key_id, source)


def revocation_findings(reader: KeysReader, org_keys: Mapping[str, PublicKey],
                        bundles: Iterable[SignedBundle]) -> list[Problem]:
    """Bundles signed by a revoked key after its revocation time; invalid revocation objects."""
    problems: list[Problem] = []
    revoked: dict[str, list[Revocation]] = defaultdict(list)
    for key in reader.list(KEYS_PREFIX):
        match = REVOCATION_KEY.match(key)
        if match is None:
            continue
        try:
            revocation = verify_revocation(get_capped(reader, key, MAX_DOCUMENT_BYTES),
                                           org_keys, key)
        except (FormatError, SignatureError) as exc:
            problems.append(Problem(key, REVOCATION_INVALID,
                                    f"revocation not accepted: {exc.message}"))
            continue
        if match.group(1) != revocation.key_id:
            problems.append(Problem(key, REVOCATION_INVALID,
                                    f"revocation of key {revocation.key_id} is filed under "
                                    f"key {match.group(1)}"))
            continue
        revoked[revocation.key_id].append(revocation)
    for b in bundles:
        found = revoked.get(b.key_id)
        if not found:
            continue
        first = min(found, key=lambda r: r.at)
        try:
            finished = require_time(b.finished_at, "collection.finished_at")
        except FormatError:
            finished = None
        if finished is None or finished > first.at:
            problems.append(Problem(
                b.manifest_key, KEY_REVOKED,
                f"bundle of host {b.name.host_id} finished {b.finished_at} "
                f"is signed by key {b.key_id}, revoked from {format_time(first.at)} "
                f"({show(first.reason)}; {first.source})"))
    return problems
