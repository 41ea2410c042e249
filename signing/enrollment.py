"""Host-key enrollment: an organisation root key binds an agent key to one host.

A host asks (an enrollment request: its host id, its public key, a few machine
facts); the organisation's offline root key answers with a signed enrollment, a
DSSE envelope whose payload is an in-toto Statement v1 of predicate type
`urn:gamsa:key-enrollment:v1` binding key id <-> host id <-> validity window. A
verifier holding only the organisation's public key then trusts an agent key for
the host its enrollment names, for bundles collected inside the window, and for
nothing else. The bytes are in docs/FORMAT.md ("Enrollment").

Store layout (keys relative to the store prefix; every object create-only):

    v1/enroll/pending/<host_id>/<key_id>.json             a host's request
    v1/keys/<key_id>.enrollment.<sha256>.dsse.json         a signed enrollment

A signed enrollment is named by the SHA-256 of its own bytes: a key may gather
several over time (renewals) in a write-once store, and publishing the same one
twice (by the signer, then by the agent) is the same object. Nothing here trusts a
name: the verifier reads every field from the signed statement.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from signing.bundle import HOST_ID
from signing.canonical import canonical_bytes
from signing.clock import require_time
from signing.dsse import _load_json, make_statement, parse_statement, sign_envelope, verify_envelope
from signing.errors import FormatError, SignatureError, UsageError
from signing.keys import ALGORITHM, PublicKey, Signer, public_key_from_pem

REQUEST_TYPE = "urn:gamsa:enrollment-request:v1"
PREDICATE_TYPE = "urn:gamsa:key-enrollment:v1"
PENDING_PREFIX = "v1/enroll/pending/"
KEYS_PREFIX = "v1/keys/"
ENROLLMENT_SUFFIX = ".dsse.json"
MAX_DOCUMENT_BYTES = 64 * 1024

_HOST_ID = re.compile(HOST_ID)
_KEY_ID = re.compile(r"[0-9a-f]{64}")
PENDING_KEY = re.compile(r"^v1/enroll/pending/(" + HOST_ID + r")/([0-9a-f]{64})\.json$")
ENROLLMENT_KEY = re.compile(r"^v1/keys/([0-9a-f]{64})\.enrollment\.([0-9a-f]{64})\.dsse\.json$")
_FACT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_FACT_CHARS = 256


def pending_request_key(host_id: str, key_id: str) -> str:
    """Where a host's enrollment request waits in the store."""
    return f"{PENDING_PREFIX}{host_id}/{key_id}.json"


def key_statement_name(key_id: str, kind: str, envelope: bytes) -> str:
    """Where a signed statement about a key (enrollment, rotation, revocation) is
    published: beside the key document, named by the envelope's digest, so nobody can
    take the name first and publishing the same statement twice is one object."""
    digest = hashlib.sha256(envelope).hexdigest()
    return f"{KEYS_PREFIX}{key_id}.{kind}.{digest}.dsse.json"


def enrollment_object_name(key_id: str, envelope: bytes) -> str:
    """Where a signed enrollment is published."""
    return key_statement_name(key_id, "enrollment", envelope)


def format_time(moment: dt.datetime) -> str:
    """`2026-01-31T00:00:00Z`: enrollment windows are kept to the second."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def show(text: str) -> str:
    """Text from a host, safe to print on an operator's terminal (no escapes)."""
    return text if text.isprintable() else repr(text)


# requests ------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrollmentRequest:
    """A host's request to have its agent key enrolled (unsigned: reviewed by a human)."""

    host_id: str
    key: PublicKey
    key_created_at: str
    created_at: str
    facts: dict[str, str | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": REQUEST_TYPE, "host_id": self.host_id, "key_id": self.key.key_id,
                "algorithm": ALGORITHM, "public_key_pem": self.key.pem(),
                "key_created_at": self.key_created_at, "created_at": self.created_at,
                "facts": dict(self.facts)}

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.to_json())


def _field(doc: Mapping[str, Any], name: str, source: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise UsageError(f"{source}: field {name} is missing or not a string")
    return value


def _facts(value: Any, source: str) -> dict[str, str | None]:
    if not isinstance(value, dict):
        raise UsageError(f"{source}: field facts is missing or not an object")
    facts: dict[str, str | None] = {}
    for name, fact in value.items():
        if not _FACT_NAME.fullmatch(name):
            raise UsageError(f"{source}: facts.{show(name)[:40]} is not a fact name")
        if fact is not None and (not isinstance(fact, str) or len(fact) > MAX_FACT_CHARS):
            raise UsageError(f"{source}: facts.{name} must be a string of at most "
                             f"{MAX_FACT_CHARS} characters or null")
        facts[name] = fact
    return facts


def parse_request(data: bytes, source: str) -> EnrollmentRequest:
    """Check an enrollment request; UsageError naming `source` and the field."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise UsageError(f"{source}: too large to be an enrollment request")
    try:
        doc = _load_json(data, f"{source}: enrollment request", FormatError)
    except FormatError as exc:
        raise UsageError(exc.message) from None
    if not isinstance(doc, dict):
        raise UsageError(f"{source}: enrollment request is not a JSON object")
    if doc.get("type") != REQUEST_TYPE:
        raise UsageError(f"{source}: field type is not {REQUEST_TYPE!r}",
                         hint="make one with: gamsa keys enroll")
    host_id = _field(doc, "host_id", source)
    if not _HOST_ID.fullmatch(host_id):
        raise UsageError(f"{source}: field host_id {show(host_id)[:80]} is not a host id")
    if _field(doc, "algorithm", source) != ALGORITHM:
        raise UsageError(f"{source}: field algorithm is not {ALGORITHM!r}")
    try:
        key = public_key_from_pem(_field(doc, "public_key_pem", source))
    except UsageError as exc:
        raise UsageError(f"{source}: field public_key_pem: {exc.message}") from None
    key_id = _field(doc, "key_id", source)
    if key_id != key.key_id:
        raise UsageError(f"{source}: field key_id {show(key_id)[:80]} is not the id of its "
                         f"public_key_pem ({key.key_id})")
    times = {}
    for name in ("key_created_at", "created_at"):
        value = _field(doc, name, source)
        try:
            require_time(value, f"{source}: field {name}")
        except FormatError as exc:
            raise UsageError(exc.message) from None
        times[name] = value
    return EnrollmentRequest(host_id, key, times["key_created_at"], times["created_at"],
                             _facts(doc.get("facts"), source))


# signed enrollments -------------------------------------------------------------------


def enrollment_statement(request: EnrollmentRequest, not_before: dt.datetime,
                         not_after: dt.datetime, signed_at: dt.datetime) -> dict[str, Any]:
    """The in-toto statement an organisation key signs for one request."""
    if not not_before < not_after:
        raise UsageError(f"enrollment of {request.host_id}: not_before {format_time(not_before)} "
                         f"is not before not_after {format_time(not_after)}")
    predicate = {
        "key_id": request.key.key_id,
        "algorithm": ALGORITHM,
        "public_key_pem": request.key.pem(),
        "host_id": request.host_id,
        "not_before": format_time(not_before),
        "not_after": format_time(not_after),
        "signed_at": format_time(signed_at),
        "facts": dict(request.facts),
        "request_sha256": hashlib.sha256(request.to_bytes()).hexdigest(),
    }
    return make_statement(request.key.key_id, request.key.key_id, predicate, PREDICATE_TYPE)


def sign_enrollment(request: EnrollmentRequest, signer: Signer, not_before: dt.datetime,
                    not_after: dt.datetime, signed_at: dt.datetime) -> bytes:
    """The signed enrollment (DSSE envelope bytes) for `request`."""
    statement = enrollment_statement(request, not_before, not_after, signed_at)
    return sign_envelope(canonical_bytes(statement), signer)


@dataclass(frozen=True)
class Enrollment:
    """A verified enrollment: `key` is trusted for `host_id` from not_before to not_after."""

    key: PublicKey
    host_id: str
    not_before: dt.datetime
    not_after: dt.datetime
    signed_by: str  # the organisation key id that verified it
    source: str  # object key or file name, for messages

    def window(self) -> str:
        return f"{format_time(self.not_before)} .. {format_time(self.not_after)}"


def enrollment_fields(payload: bytes) -> tuple[PublicKey, str, dt.datetime, dt.datetime]:
    """Key, host id and window of an enrollment statement's bytes (signature not checked).

    Raises FormatError (or SignatureError for a key id that is not its key's) naming
    the first field that is wrong.
    """
    statement = parse_statement(payload, PREDICATE_TYPE)
    predicate = statement["predicate"]
    subject = statement["subject"][0]
    for name in ("key_id", "algorithm", "public_key_pem", "host_id"):
        if not isinstance(predicate.get(name), str):
            raise FormatError(f"enrollment field predicate.{name} is missing or not a string")
    if predicate["algorithm"] != ALGORITHM:
        raise FormatError(f"enrollment field predicate.algorithm is not {ALGORITHM!r}")
    try:
        key = public_key_from_pem(predicate["public_key_pem"])
    except UsageError as exc:
        raise FormatError(f"enrollment field predicate.public_key_pem: {exc.message}") from None
    key_id = predicate["key_id"]
    if key_id != key.key_id or subject["name"] != key_id or subject["digest"]["sha256"] != key_id:
        raise SignatureError(f"enrollment names key {show(key_id)[:80]} but its public_key_pem "
                             f"is key {key.key_id} (subject name and digest must be the key id)")
    host_id = predicate["host_id"]
    if not _HOST_ID.fullmatch(host_id):
        raise FormatError(f"enrollment field predicate.host_id {show(host_id)[:80]} is not a "
                          f"host id")
    not_before = require_time(predicate.get("not_before"), "enrollment field predicate.not_before")
    not_after = require_time(predicate.get("not_after"), "enrollment field predicate.not_after")
    if not not_before < not_after:
        raise FormatError("enrollment field predicate.not_before is not before not_after")
    return key, host_id, not_before, not_after


def verify_enrollment(data: bytes, org_keys: Mapping[str, PublicKey],
                      source: str) -> Enrollment:
    """Verify a signed enrollment with the organisation's public key(s).

    Raises SignatureError (not signed by an organisation key, altered, or a key id
    that is not its key's) or FormatError (a field missing or wrong).
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FormatError("too large to be an enrollment")
    envelope = verify_envelope(data, org_keys)
    key, host_id, not_before, not_after = enrollment_fields(envelope.payload)
    return Enrollment(key, host_id, not_before, not_after, envelope.key_id, source)


# what a verifier concludes -------------------------------------------------------------


KEY_NOT_ENROLLED_FOR_HOST = "key_not_enrolled_for_host"
KEY_OUTSIDE_VALIDITY = "key_outside_validity"


def check_binding(enrollments: list[Enrollment], key_id: str, host_id: str,
                  started_at: str, finished_at: str) -> tuple[str, str] | None:
    """None if an enrollment of `key_id` names `host_id` and its window holds the
    collection (not_before <= started_at and finished_at <= not_after); else the
    finding code and message, naming the bundle's host and the host(s) the key is
    enrolled for."""
    for_host = [e for e in enrollments if e.host_id == host_id]
    if not for_host:
        others = ", ".join(sorted({f"{e.host_id} ({e.source})" for e in enrollments}))
        return (KEY_NOT_ENROLLED_FOR_HOST,
                f"bundle of host {host_id} is signed by key {key_id}, which is enrolled "
                f"for host {others}, not for host {host_id}")
    try:
        started = require_time(started_at, "predicate field collection.started_at")
        finished = require_time(finished_at, "predicate field collection.finished_at")
    except FormatError as exc:
        return KEY_OUTSIDE_VALIDITY, f"{exc.message}: cannot place it in an enrollment window"
    if any(e.not_before <= started and finished <= e.not_after for e in for_host):
        return None
    windows = "; ".join(f"{e.window()} ({e.source})" for e in for_host)
    return (KEY_OUTSIDE_VALIDITY,
            f"bundle of host {host_id} collected {started_at} .. {finished_at} is outside "
            f"the enrollment window of key {key_id} for that host: {windows}")
