"""The organisation's side of enrollment: its root key, and signing hosts' requests.

`gamsa org init` makes the root key (meant to live offline); `gamsa org
sign-enrollment` gathers requests (files, or every pending one in a store),
decides what it would sign and what it must refuse, and, once a human has seen
the list, signs each (signing/enrollment.py). This module plans and signs; the CLI
shows and asks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from agent.fsutil import create_atomic
from agent.store import Store
from signing.clock import require_time
from signing.enrollment import (
    PENDING_KEY,
    PENDING_PREFIX,
    EnrollmentRequest,
    enrollment_object_name,
    format_time,
    parse_request,
    sign_enrollment,
    verify_enrollment,
)
from signing.errors import (
    FormatError,
    GamsaError,
    KeyFileError,
    SignatureError,
    UsageError,
    os_error,
)
from signing.keys import PublicKey, Signer, generate_private_key, save_private_key

ORG_KEY_FILE = "org.key"
ORG_PUB_FILE = "org.pub"


@dataclass(frozen=True)
class OrgKey:
    """A freshly made organisation key: where its halves are, and its id."""

    private_path: Path
    public_path: Path
    key_id: str


def init_org(out: Path) -> OrgKey:
    """Make the organisation key in `out` (org.key 0600, org.pub); never overwrite."""
    private_path, public_path = out / ORG_KEY_FILE, out / ORG_PUB_FILE
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise KeyFileError(f"{path} exists",
                               hint="refusing to replace an organisation key; choose another "
                                    "--out")
    key = generate_private_key()
    save_private_key(private_path, key)  # makes `out` 0700 if it is new
    public = PublicKey.from_key(key.public_key())
    try:
        create_atomic(public_path, public.pem().encode("ascii"), 0o644)
    except OSError as exc:
        raise os_error(exc, public_path, "write") from exc
    return OrgKey(private_path, public_path, public.key_id)


def init_org_on_token(uri: str, out: Path) -> tuple[Path, str, bool]:
    """Make (or find) the organisation key a signer URI names, e.g. on a PKCS#11 token.

    The private key stays where the URI says; only org.pub is written to `out`, and an
    existing org.pub is kept only if it is this key's. Returns (org.pub, key id, created).
    """
    from signing.signer import load_or_create_signer

    public_path = out / ORG_PUB_FILE
    signer, created = load_or_create_signer(uri)
    pem = signer.public_key().pem().encode("ascii")
    if public_path.exists() or public_path.is_symlink():
        if public_path.read_bytes() != pem:
            raise KeyFileError(f"{public_path} exists and is not the public key of this "
                               "organisation key", hint="choose another --out")
        return public_path, signer.key_id, created
    try:
        out.mkdir(parents=True, exist_ok=True)
        create_atomic(public_path, pem, 0o644)
    except OSError as exc:
        raise os_error(exc, public_path, "write") from exc
    return public_path, signer.key_id, created


@dataclass(frozen=True)
class Candidate:
    """A request read from a file or the store, and what signing it would state."""

    source: str
    request: EnrollmentRequest
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass
class Plan:
    """What `sign-enrollment` will sign, refuses and leaves alone, before it signs."""

    sign: list[Candidate] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (source, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, why)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def validity(request: EnrollmentRequest, now: dt.datetime,
             valid_days: int) -> tuple[dt.datetime, dt.datetime]:
    """From when the key was made (bundles sealed before enrollment stay valid), or
    now if that claims to be later, until `valid_days` from now."""
    created = require_time(request.key_created_at, "key_created_at").replace(microsecond=0)
    return min(created, now), now + dt.timedelta(days=valid_days)


def plan_from_sources(sources: list[tuple[str, bytes]], now: dt.datetime, valid_days: int,
                      expected: dict[str, tuple[str, str]] | None = None) -> Plan:
    """Check each request; refuse a malformed one, one filed under another host or
    key (`expected`: source -> (host_id, key_id)), and every request of a key that
    two hosts claim."""
    plan = Plan()
    read: list[tuple[str, EnrollmentRequest]] = []
    for source, data in sources:
        try:
            request = parse_request(data, source)
        except GamsaError as exc:
            plan.rejected.append((source, exc.message))
            continue
        where = (expected or {}).get(source)
        if where is not None and where != (request.host_id, request.key.key_id):
            plan.rejected.append((source, f"filed under host {where[0]} key {where[1]} but "
                                          f"asks for host {request.host_id} key "
                                          f"{request.key.key_id}"))
            continue
        read.append((source, request))
    hosts_of_key: dict[str, set[str]] = defaultdict(set)
    for _, request in read:
        hosts_of_key[request.key.key_id].add(request.host_id)
    seen: set[tuple[str, str]] = set()
    for source, request in read:
        hosts = hosts_of_key[request.key.key_id]
        if len(hosts) > 1:
            plan.rejected.append((source, f"key {request.key.key_id} is claimed by hosts "
                                          f"{', '.join(sorted(hosts))}; a key belongs to one "
                                          f"host"))
            continue
        pair = (request.host_id, request.key.key_id)
        if pair in seen:
            plan.skipped.append((source, "same host and key as a request above"))
            continue
        seen.add(pair)
        not_before, not_after = validity(request, now, valid_days)
        plan.sign.append(Candidate(source, request, not_before, not_after))
    return plan


def plan_from_files(paths: list[Path], now: dt.datetime, valid_days: int) -> Plan:
    sources = []
    for path in paths:
        try:
            sources.append((str(path), path.read_bytes()))
        except OSError as exc:
            raise UsageError(f"enrollment request {path}: {exc.strerror or exc}") from exc
    return plan_from_sources(sources, now, valid_days)


def plan_from_store(store: Store, org: PublicKey, now: dt.datetime, valid_days: int,
                    renew_within_days: int) -> Plan:
    """Every pending request in the store, less those already enrolled by `org` for
    the same host beyond `renew_within_days` from now (renewals are due inside
    that), and refusing keys `org` enrolled for another host."""
    sources: list[tuple[str, bytes]] = []
    expected: dict[str, tuple[str, str]] = {}
    plan = Plan()
    for key in store.list(PENDING_PREFIX):
        match = PENDING_KEY.match(key)
        if match is None:
            plan.rejected.append((key, "not a request key (v1/enroll/pending/<host_id>/"
                                       "<key_id>.json)"))
            continue
        sources.append((key, store.get(key)))
        expected[key] = (match.group(1), match.group(2))
    found = plan_from_sources(sources, now, valid_days, expected)
    plan.rejected.extend(found.rejected)
    plan.skipped.extend(found.skipped)
    for candidate in found.sign:
        reason = _already(store, org, candidate,
                          now + dt.timedelta(days=renew_within_days))
        if reason is None:
            plan.sign.append(candidate)
        elif reason[0] == "skip":
            plan.skipped.append((candidate.source, reason[1]))
        else:
            plan.rejected.append((candidate.source, reason[1]))
    return plan


def _already(store: Store, org: PublicKey, candidate: Candidate,
             until: dt.datetime) -> tuple[str, str] | None:
    """("skip", why) if `org` already enrolled this key for this host until later
    than `until`; ("reject", why) if it enrolled the key for another host."""
    key_id = candidate.request.key.key_id
    for name in store.list(f"v1/keys/{key_id}.enrollment."):
        try:
            enrollment = verify_enrollment(store.get(name), {org.key_id: org}, name)
        except (SignatureError, FormatError):
            continue  # not ours, or broken: `gamsa verify` reports it
        if enrollment.key.key_id != key_id:
            continue
        if enrollment.host_id != candidate.request.host_id:
            return ("reject", f"key {key_id} is already enrolled for host "
                              f"{enrollment.host_id} ({name})")
        if enrollment.not_after > until:
            return ("skip", f"already enrolled until {format_time(enrollment.not_after)} "
                            f"({name})")
    return None


@dataclass(frozen=True)
class Signed:
    candidate: Candidate
    envelope: bytes

    @property
    def object_name(self) -> str:
        return enrollment_object_name(self.candidate.request.key.key_id, self.envelope)


def sign_plan(plan: Plan, signer: Signer, now: dt.datetime) -> list[Signed]:
    return [Signed(c, sign_enrollment(c.request, signer, c.not_before, c.not_after, now))
            for c in plan.sign]


def write_signed(signed: Signed, out: Path) -> Path:
    """Write a signed enrollment into `out` under its object's file name (create-only)."""
    path = out / Path(signed.object_name).name
    try:
        out.mkdir(parents=True, exist_ok=True)
        create_atomic(path, signed.envelope, 0o644)
    except OSError as exc:
        raise os_error(exc, path, "write") from exc
    return path


def publish_signed(signed: Signed, store: Store) -> str:
    name = signed.object_name
    store.put(name, signed.envelope, hashlib.sha256(signed.envelope).hexdigest())
    return name
