"""The host's side of enrollment: ask for it, keep the signed answer, publish it.

`gamsa keys enroll` builds a request from the agent key and this machine's facts
and writes it to a file and/or the store's pending area; `gamsa keys
install-enrollment` keeps a signed enrollment in the state dir
(`keys/enrollments/<sha256>.dsse.json`), and every ship publishes what is kept there
beside the key document (`v1/keys/<key_id>.enrollment.<sha256>.dsse.json`). The
formats are in signing/enrollment.py and docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.fsutil import create_atomic
from agent.identity import host_description
from agent.state import StateDir
from agent.store import Store
from collector.record import utc_now
from signing.dsse import envelope_payload
from signing.enrollment import (
    EnrollmentRequest,
    enrollment_fields,
    enrollment_object_name,
    pending_request_key,
    verify_enrollment,
)
from signing.errors import FormatError, SignatureError, UsageError
from signing.keys import PublicKey, parse_key_document

ENROLLMENTS_DIR = "enrollments"  # under the state dir's keys/


def enrollments_dir(state: StateDir) -> Path:
    return state.keys / ENROLLMENTS_DIR


def build_request(state: StateDir, host_id: str) -> EnrollmentRequest:
    """This agent's enrollment request (makes the agent key if there is none).

    Caller holds `state.locked()`.
    """
    signer, _ = state.signer(host_id)
    doc = json.loads(state.key_document_bytes())
    public = parse_key_document(state.key_document_bytes())
    if public.key_id != signer.key_id:
        raise UsageError(f"{state.key_doc_path} is not the document of {state.key_path}",
                         hint="move the document aside; it is rebuilt from the key")
    facts = {k: v for k, v in host_description(host_id).to_json().items() if k != "id"}
    return EnrollmentRequest(host_id, public, str(doc["created_at"]), utc_now(), facts)


@dataclass(frozen=True)
class Submitted:
    """Where a request went in the store, and whether it was already there."""

    key: str
    already: bool


def submit_request(store: Store, request: EnrollmentRequest) -> Submitted:
    """Put the request under the store's pending area, create-only.

    A request for this host and key already pending is left as it is (a write-once
    store cannot replace it, and the key is what the signer binds).
    """
    key = pending_request_key(request.host_id, request.key.key_id)
    if store.head(key) is not None:
        return Submitted(key, True)
    data = request.to_bytes()
    store.put(key, data, hashlib.sha256(data).hexdigest())
    return Submitted(key, False)


def install_enrollment(state: StateDir, data: bytes, source: str, key_id: str,
                       host_id: str, org_keys: Mapping[str, PublicKey] | None) -> Path:
    """Keep a signed enrollment of this agent's key for this host; its path.

    Refuses an enrollment of another key or host, and, given the organisation
    key(s), one they did not sign.
    """
    try:
        if org_keys:
            enrollment = verify_enrollment(data, org_keys, source)
            key, enrolled_host = enrollment.key, enrollment.host_id
        else:
            key, enrolled_host, _, _ = enrollment_fields(envelope_payload(data))
    except (SignatureError, FormatError) as exc:
        raise UsageError(f"{source}: not a valid enrollment: {exc.message}") from None
    if key.key_id != key_id or enrolled_host != host_id:
        raise UsageError(f"{source}: enrollment is for key {key.key_id} of host "
                         f"{enrolled_host}; this agent is key {key_id} of host {host_id}")
    directory = enrollments_dir(state)
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{hashlib.sha256(data).hexdigest()}.dsse.json"
    create_atomic(path, data, 0o644)
    return path


def installed_enrollments(state: StateDir) -> list[bytes]:
    """The signed enrollments kept in the state dir, by name."""
    directory = enrollments_dir(state)
    if not directory.is_dir():
        return []
    return [p.read_bytes() for p in sorted(directory.glob("*.dsse.json"))]


def publish_enrollments(state: StateDir, store: Store) -> list[str]:
    """Put every kept enrollment beside its key's document (create-only, idempotent)."""
    published = []
    for data in installed_enrollments(state):
        key, _, _, _ = enrollment_fields(envelope_payload(data))
        name = enrollment_object_name(key.key_id, data)
        store.put(name, data, hashlib.sha256(data).hexdigest())
        published.append(name)
    return published
