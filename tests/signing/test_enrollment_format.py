"""The enrollment format and the binding rule, and signers by URI (signing/ alone)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from signing.canonical import canonical_bytes
from signing.dsse import make_statement, sign_envelope
from signing.enrollment import (
    KEY_NOT_ENROLLED_FOR_HOST,
    KEY_OUTSIDE_VALIDITY,
    PREDICATE_TYPE,
    Enrollment,
    EnrollmentRequest,
    check_binding,
    enrollment_object_name,
    parse_request,
    sign_enrollment,
    verify_enrollment,
)
from signing.errors import FormatError, KeyFileError, SignatureError, UsageError
from signing.keys import FileSigner, PublicKey, generate_private_key, save_private_key
from signing.signer import load_signer, split_signer_uri

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T1 = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)


def signer() -> FileSigner:
    return FileSigner.from_key(generate_private_key())


def request(host: str = "web-01", agent: FileSigner | None = None) -> EnrollmentRequest:
    agent = agent or signer()
    return EnrollmentRequest(host, agent.public_key(), "2025-12-31T23:00:00.000000Z",
                             "2026-01-01T00:00:00.000000Z", {"hostname": "web-01", "os": "Linux"})


def org_trust(org: FileSigner) -> dict[str, PublicKey]:
    return {org.key_id: org.public_key()}


@pytest.mark.parametrize(("uri", "expected"), [
    ("org.key", ("file", "org.key")),
    ("/secure/org.key", ("file", "/secure/org.key")),
    ("./a:b.key", ("file", "./a:b.key")),
    ("file:org.key", ("file", "org.key")),
    ("file:/secure/org.key", ("file", "/secure/org.key")),
    ("file:///secure/org.key", ("file", "/secure/org.key")),
    ("file://localhost/secure/org.key", ("file", "/secure/org.key")),
    ("pkcs11:token=org;object=root", ("pkcs11", "token=org;object=root")),
])
def test_signer_uris(uri: str, expected: tuple[str, str]) -> None:
    assert split_signer_uri(uri) == expected


def test_load_signer_by_uri_and_its_errors(tmp_path: Path) -> None:
    key = generate_private_key()
    save_private_key(tmp_path / "org.key", key)
    for uri in (str(tmp_path / "org.key"), f"file://{tmp_path}/org.key"):
        loaded = load_signer(uri)
        assert loaded.key_id == FileSigner.from_key(key).key_id
        assert loaded.public_key().verify(loaded.sign(b"x"), b"x")
    with pytest.raises(UsageError, match="unsupported scheme 'awskms'"):
        load_signer("awskms:alias/org")
    with pytest.raises(UsageError, match="no key named"):  # pkcs11: exists, wants object=
        load_signer("pkcs11:token=org")
    with pytest.raises(UsageError, match="cannot name host"):
        load_signer("file://elsewhere/org.key")
    with pytest.raises(UsageError, match="no key location"):
        load_signer("file:")
    with pytest.raises(KeyFileError, match="does not exist"):
        load_signer(str(tmp_path / "missing.key"))


def test_a_signed_enrollment_verifies_with_the_org_key_only() -> None:
    org, agent = signer(), signer()
    envelope = sign_enrollment(request(agent=agent), org, T0, T1, T0)
    assert envelope == sign_enrollment(request(agent=agent), org, T0, T1, T0)  # deterministic
    enrollment = verify_enrollment(envelope, org_trust(org), "x")
    assert (enrollment.key.key_id, enrollment.host_id) == (agent.key_id, "web-01")
    assert (enrollment.not_before, enrollment.not_after, enrollment.signed_by) == (T0, T1,
                                                                                   org.key_id)
    assert enrollment_object_name(agent.key_id, envelope).startswith(
        f"v1/keys/{agent.key_id}.enrollment.")
    with pytest.raises(SignatureError, match="no signature by a trusted key"):
        verify_enrollment(envelope, org_trust(signer()), "x")
    # A bundle key may not enroll keys: its envelope is not an enrollment statement.
    with pytest.raises(SignatureError):
        verify_enrollment(envelope, {agent.key_id: agent.public_key()}, "x")


def signed_statement(org: FileSigner, mutate: dict[str, object],
                     subject_name: str | None = None) -> bytes:
    agent = signer()
    predicate: dict[str, object] = {
        "key_id": agent.key_id, "algorithm": "ed25519", "public_key_pem": agent.public_key().pem(),
        "host_id": "web-01", "not_before": "2026-01-01T00:00:00Z",
        "not_after": "2026-07-01T00:00:00Z", **mutate}
    statement = make_statement(subject_name or agent.key_id, agent.key_id, predicate,
                               PREDICATE_TYPE)
    return sign_envelope(canonical_bytes(statement), org)


@pytest.mark.parametrize(("mutate", "error", "match"), [
    ({"key_id": "0" * 64}, SignatureError, "public_key_pem is key"),
    ({"host_id": "../etc"}, FormatError, "host_id"),
    ({"not_after": "2025-01-01T00:00:00Z"}, FormatError, "not before not_after"),
    ({"not_before": "yesterday"}, FormatError, "not_before is not a UTC time"),
    ({"not_after": "2026-02-30T00:00:00Z"}, FormatError, "not a valid date"),
    ({"algorithm": "rsa"}, FormatError, "algorithm"),
    ({"public_key_pem": "nope"}, FormatError, "public_key_pem"),
])
def test_a_signed_but_malformed_enrollment_is_refused(mutate: dict[str, object],
                                                      error: type[Exception], match: str) -> None:
    org = signer()
    with pytest.raises(error, match=match):
        verify_enrollment(signed_statement(org, mutate), org_trust(org), "x")


def test_subject_must_be_the_key() -> None:
    org = signer()
    with pytest.raises(SignatureError, match="subject"):
        verify_enrollment(signed_statement(org, {}, subject_name="f" * 64), org_trust(org), "x")


def enrolled(host: str, start: dt.datetime, end: dt.datetime) -> Enrollment:
    return Enrollment(signer().public_key(), host, start, end, "org", f"enr-{host}")


def test_binding_window_is_inclusive_at_both_ends() -> None:
    e = [enrolled("web-01", T0, T1)]
    assert check_binding(e, "k", "web-01", "2026-01-01T00:00:00.000000Z",
                         "2026-07-01T00:00:00.000000Z") is None
    early = check_binding(e, "k", "web-01", "2025-12-31T23:59:59.999999Z",
                          "2026-01-01T00:00:01.000000Z")
    late = check_binding(e, "k", "web-01", "2026-06-30T23:59:00.000000Z",
                         "2026-07-01T00:00:00.000001Z")
    for problem in (early, late):
        assert problem is not None and problem[0] == KEY_OUTSIDE_VALIDITY
        assert "web-01" in problem[1]
        assert "2026-01-01T00:00:00Z .. 2026-07-01T00:00:00Z" in problem[1]


def test_binding_names_both_hosts_and_accepts_any_matching_enrollment() -> None:
    e = [enrolled("db-01", T0, T1)]
    problem = check_binding(e, "k", "web-01", "2026-02-01T00:00:00.000000Z",
                            "2026-02-01T00:00:01.000000Z")
    assert problem is not None and problem[0] == KEY_NOT_ENROLLED_FOR_HOST
    assert "host web-01" in problem[1] and "db-01 (enr-db-01)" in problem[1]
    renewed = [enrolled("web-01", T0, T1), enrolled("web-01", T1, T1 + dt.timedelta(days=90))]
    assert check_binding(renewed, "k", "web-01", "2026-08-01T00:00:00.000000Z",
                         "2026-08-01T00:00:01.000000Z") is None
    bad_time = check_binding(renewed, "k", "web-01", "soon", "later")
    assert bad_time is not None and bad_time[0] == KEY_OUTSIDE_VALIDITY


@pytest.mark.parametrize(("change", "match"), [
    ({"type": "x"}, "field type"),
    ({"host_id": "-bad"}, "host_id"),
    ({"key_id": "0" * 64}, "not the id of its public_key_pem"),
    ({"public_key_pem": "x"}, "public_key_pem"),
    ({"created_at": "now"}, "created_at"),
    ({"facts": {"Bad Name": "x"}}, "not a fact name"),
    ({"facts": {"os": "x" * 300}}, "facts.os"),
])
def test_a_bad_request_names_its_field(change: dict[str, object], match: str) -> None:
    doc = {**request().to_json(), **change}
    with pytest.raises(UsageError, match=match) as info:
        parse_request(json.dumps(doc).encode(), "req.json")
    assert info.value.message.startswith("req.json: ")


def test_a_request_round_trips() -> None:
    original = request()
    assert parse_request(original.to_bytes(), "r") == original
    with pytest.raises(UsageError, match="not JSON"):
        parse_request(b"{", "r")
