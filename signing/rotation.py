"""Key rotation: an agent's old key hands its chain over to a new key.

`gamsa keys rotate` makes a new agent key; the OLD key signs a rotation statement
(a DSSE envelope whose payload is an in-toto Statement v1 of predicate type
`urn:gamsa:key-rotation:v1`) naming the new key, the host, and the chain head the
new key continues from. The first bundle the new key seals links to that head
(same chain id, seq + 1, prev = the head's manifest digest), so removing the old
key's bundles is a gap in one chain, not a new genesis. The bytes are in
docs/FORMAT.md §8.

Store layout (create-only, beside the key documents):

    v1/keys/<new_key_id>.rotation.<sha256>.dsse.json

named by the SHA-256 of the envelope's own bytes, like enrollments: a name cannot
be squatted by a forger, and publishing the same statement twice is one object.

The verifier's rule (`rotation_findings`): wherever a chain's signing key changes
between seq N and seq N+1, a rotation statement must exist that verifies with the
key of seq N (never the new key, never another host's) and names exactly that
host, chain id, seq N, N's manifest digest and the key of seq N+1; otherwise the
link is an error (`key_change_without_rotation`). A bundle the old key signs in
that chain after the rotation point is an error too (`key_used_after_rotation`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from signing.bundle import HOST_ID, BundleName
from signing.canonical import canonical_bytes
from signing.clock import require_time
from signing.dsse import (
    envelope_payload,
    make_statement,
    parse_statement,
    sign_envelope,
    verify_envelope,
)
from signing.enrollment import (
    KEYS_PREFIX,
    MAX_DOCUMENT_BYTES,
    key_statement_name,
    show,
)
from signing.errors import FormatError, SignatureError, UsageError
from signing.keys import ALGORITHM, PublicKey, Signer, public_key_from_pem
from signing.reading import get_capped

PREDICATE_TYPE = "urn:gamsa:key-rotation:v1"
ROTATION_KEY = re.compile(r"^v1/keys/([0-9a-f]{64})\.rotation\.([0-9a-f]{64})\.dsse\.json$")
KEY_CHANGE_WITHOUT_ROTATION = "key_change_without_rotation"
KEY_USED_AFTER_ROTATION = "key_used_after_rotation"
ROTATION_INVALID = "rotation_invalid"

_HOST_ID = re.compile(HOST_ID)
_HEX64 = re.compile(r"[0-9a-f]{64}")


def rotation_object_name(new_key_id: str, envelope: bytes) -> str:
    """Where a rotation statement is published: beside the new key's document."""
    return key_statement_name(new_key_id, "rotation", envelope)


@dataclass(frozen=True)
class ChainPoint:
    """The chain head a new key continues from."""

    chain_id: str
    seq: int
    manifest_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.chain_id, "seq": self.seq, "manifest_sha256": self.manifest_sha256}


@dataclass(frozen=True)
class Rotation:
    """What a rotation statement says (its signature checked or not: see callers)."""

    host_id: str
    old_key_id: str
    new_key: PublicKey
    continues: ChainPoint | None  # None: the old key had sealed nothing
    rotated_at: str
    source: str = ""

    @property
    def new_key_id(self) -> str:
        return self.new_key.key_id


def rotation_statement(rotation: Rotation) -> dict[str, Any]:
    """The in-toto statement the old key signs."""
    predicate = {
        "host_id": rotation.host_id,
        "old_key_id": rotation.old_key_id,
        "new_key_id": rotation.new_key_id,
        "algorithm": ALGORITHM,
        "new_public_key_pem": rotation.new_key.pem(),
        "chain": None if rotation.continues is None else rotation.continues.to_json(),
        "rotated_at": rotation.rotated_at,
    }
    return make_statement(rotation.new_key_id, rotation.new_key_id, predicate, PREDICATE_TYPE)


def sign_rotation(rotation: Rotation, old_signer: Signer) -> bytes:
    """The rotation statement's DSSE envelope, signed by the OLD key."""
    if old_signer.key_id != rotation.old_key_id:
        raise UsageError(f"rotation of key {rotation.old_key_id} must be signed by that key, "
                         f"not by {old_signer.key_id}")
    if rotation.old_key_id == rotation.new_key_id:
        raise UsageError("a rotation needs a new key, not the old one again")
    return sign_envelope(canonical_bytes(rotation_statement(rotation)), old_signer)


def _string(predicate: Mapping[str, Any], name: str) -> str:
    value = predicate.get(name)
    if not isinstance(value, str):
        raise FormatError(f"rotation field predicate.{name} is missing or not a string")
    return value


def _chain(value: Any) -> ChainPoint | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FormatError("rotation field predicate.chain is not an object or null")
    chain_id, seq, digest = value.get("id"), value.get("seq"), value.get("manifest_sha256")
    if not isinstance(chain_id, str) or not chain_id:
        raise FormatError("rotation field predicate.chain.id is missing or not a string")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise FormatError("rotation field predicate.chain.seq is not a positive integer")
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise FormatError("rotation field predicate.chain.manifest_sha256 is not a "
                          "lower-case hex SHA-256")
    return ChainPoint(chain_id, seq, digest)


def rotation_fields(payload: bytes, source: str = "") -> Rotation:
    """What a rotation statement's bytes say (signature NOT checked).

    Raises FormatError naming the first field that is wrong, or SignatureError for a
    new key id that is not its public key's.
    """
    statement = parse_statement(payload, PREDICATE_TYPE)
    predicate = statement["predicate"]
    subject = statement["subject"][0]
    host_id = _string(predicate, "host_id")
    if not _HOST_ID.fullmatch(host_id):
        raise FormatError(f"rotation field predicate.host_id {show(host_id)[:80]} is not a "
                          f"host id")
    old_key_id = _string(predicate, "old_key_id")
    if not _HEX64.fullmatch(old_key_id):
        raise FormatError("rotation field predicate.old_key_id is not a key id")
    if _string(predicate, "algorithm") != ALGORITHM:
        raise FormatError(f"rotation field predicate.algorithm is not {ALGORITHM!r}")
    try:
        new_key = public_key_from_pem(_string(predicate, "new_public_key_pem"))
    except UsageError as exc:
        raise FormatError(f"rotation field predicate.new_public_key_pem: {exc.message}") \
            from None
    new_key_id = _string(predicate, "new_key_id")
    if (new_key_id != new_key.key_id or subject["name"] != new_key_id
            or subject["digest"]["sha256"] != new_key_id):
        raise SignatureError(f"rotation names new key {show(new_key_id)[:80]} but its "
                             f"new_public_key_pem is key {new_key.key_id} (subject name and "
                             f"digest must be the new key id)")
    if new_key_id == old_key_id:
        raise FormatError("rotation field predicate.new_key_id is the old key id")
    rotated_at = _string(predicate, "rotated_at")
    require_time(rotated_at, "rotation field predicate.rotated_at")
    return Rotation(host_id, old_key_id, new_key, _chain(predicate.get("chain")), rotated_at,
                    source)


def read_rotation(data: bytes, source: str) -> Rotation:
    """A rotation object's claims, unauthenticated: for matching it to a chain link
    before its signature is checked with the key that link says must have signed."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FormatError("too large to be a rotation statement")
    return rotation_fields(envelope_payload(data), source)


def verify_rotation(data: bytes, old_key: PublicKey, source: str) -> Rotation:
    """Verify a rotation statement with the old key it must be signed by.

    Raises SignatureError (not signed by `old_key`, or altered) or FormatError.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise FormatError("too large to be a rotation statement")
    envelope = verify_envelope(data, {old_key.key_id: old_key})
    rotation = rotation_fields(envelope.payload, source)
    if rotation.old_key_id != old_key.key_id:
        raise SignatureError(f"rotation is signed by key {old_key.key_id} but names old key "
                             f"{rotation.old_key_id}")
    return rotation


# what a verifier concludes ----------------------------------------------------------


class KeysReader(Protocol):
    def list(self, prefix: str) -> Iterable[str]: ...

    def get(self, key: str) -> bytes: ...


class SignedBundle(Protocol):
    """What the check reads of signing.verify.BundleSummary."""

    @property
    def manifest_key(self) -> str: ...
    @property
    def manifest_sha256(self) -> str: ...
    @property
    def chain_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def key_id(self) -> str: ...
    @property
    def name(self) -> BundleName: ...
    @property
    def finished_at(self) -> str: ...


@dataclass(frozen=True)
class Problem:
    """A finding before signing.verify wraps it: (object key, code, message)."""

    key: str
    code: str
    message: str


def load_rotations(reader: KeysReader) -> tuple[dict[tuple[str, str], list[tuple[str, bytes]]],
                                             list[Problem]]:
    """Every rotation object in the store, indexed by the (old, new) key ids it claims
    (unauthenticated); an unreadable one, or one filed under another key, is a problem."""
    index: dict[tuple[str, str], list[tuple[str, bytes]]] = defaultdict(list)
    problems: list[Problem] = []
    for key in reader.list(KEYS_PREFIX):
        match = ROTATION_KEY.match(key)
        if match is None:
            continue
        try:
            data = get_capped(reader, key, MAX_DOCUMENT_BYTES)
            claimed = read_rotation(data, key)
        except (FormatError, SignatureError) as exc:
            problems.append(Problem(key, ROTATION_INVALID,
                                    f"rotation statement not accepted: {exc.message}"))
            continue
        if match.group(1) != claimed.new_key_id:
            problems.append(Problem(key, ROTATION_INVALID,
                                    f"rotation to key {claimed.new_key_id} is filed under key "
                                    f"{match.group(1)}"))
            continue
        index[(claimed.old_key_id, claimed.new_key_id)].append((key, data))
    return index, problems


def _accepting(parent: SignedBundle, child: SignedBundle, keys: Mapping[str, PublicKey],
               candidates: list[tuple[str, bytes]]) -> tuple[Rotation | None, list[str]]:
    """The rotation that hands `parent`'s chain over to `child`'s key, or why none."""
    why: list[str] = []
    old_key = keys.get(parent.key_id)
    if old_key is None:
        return None, [f"old key {parent.key_id} is not trusted"]
    for source, data in candidates:
        try:
            rotation = verify_rotation(data, old_key, source)
        except (FormatError, SignatureError) as exc:
            why.append(f"{source}: {exc.message}")
            continue
        expected = ChainPoint(parent.chain_id, parent.seq, parent.manifest_sha256)
        if rotation.host_id != parent.name.host_id:
            why.append(f"{source} rotates a key of host {rotation.host_id}, not "
                       f"{parent.name.host_id}")
        elif rotation.continues != expected:
            said = ("no chain" if rotation.continues is None else
                    f"chain {rotation.continues.chain_id} seq {rotation.continues.seq} "
                    f"manifest {rotation.continues.manifest_sha256}")
            why.append(f"{source} continues from {said}, not from seq {parent.seq} "
                       f"manifest {parent.manifest_sha256}")
        else:
            return rotation, []
    return None, why


def rotation_findings(reader: KeysReader, keys: Mapping[str, PublicKey],
                      bundles: Iterable[SignedBundle]) -> list[Problem]:
    """Key changes inside chains, checked against the store's rotation statements.

    `keys` are the keys trusted for manifest signatures (a rotation is only as good
    as the old key that signed it). Under org trust the new key's bundles are also
    held to its own enrollment, by the per-bundle check.
    """
    index, problems = load_rotations(reader)
    members = list(bundles)
    signers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for b in members:
        signers[(b.name.host_id, b.chain_id)].add(b.key_id)
    chains: dict[tuple[str, str], dict[int, list[SignedBundle]]] = defaultdict(
        lambda: defaultdict(list))
    for b in members:  # only chains signed by more than one key can hold a key change
        if len(signers[(b.name.host_id, b.chain_id)]) > 1:
            chains[(b.name.host_id, b.chain_id)][b.seq].append(b)
    used: set[str] = set()
    for (host, chain_id), by_seq in sorted(chains.items()):
        handed_over: list[tuple[int, str, str]] = []  # (seq, old key id, rotation source)
        for seq in sorted(by_seq):
            before = by_seq.get(seq - 1, [])
            if len(before) != 1 or len(by_seq[seq]) != 1:
                continue  # no parent (genesis, gap) or a fork: check_chains says so
            parent, child = before[0], by_seq[seq][0]
            if parent.key_id == child.key_id:
                continue
            rotation, why = _accepting(parent, child, keys,
                                       index.get((parent.key_id, child.key_id), []))
            if rotation is not None:
                used.add(rotation.source)
                handed_over.append((parent.seq, parent.key_id, rotation.source))
                continue
            detail = "; ".join(why) if why else "no rotation statement names this change"
            problems.append(Problem(
                child.manifest_key, KEY_CHANGE_WITHOUT_ROTATION,
                f"host {host} chain {chain_id}: seq {seq} is signed by key {child.key_id}, "
                f"seq {parent.seq} by key {parent.key_id}, and no rotation statement signed "
                f"by key {parent.key_id} hands the chain over at seq {parent.seq} "
                f"({detail})"))
        for point, old_key_id, source in handed_over:
            for seq in sorted(s for s in by_seq if s > point):
                for b in by_seq[seq]:
                    if b.key_id == old_key_id:
                        problems.append(Problem(
                            b.manifest_key, KEY_USED_AFTER_ROTATION,
                            f"host {host} chain {chain_id}: key {old_key_id} signed seq {seq} "
                            f"after it handed the chain over at seq {point} ({source})"))
    # A statement no link used is still checked when its old key is trusted: a
    # tampered one must not sit in the store unnoticed.
    for (old_key_id, _), found in sorted(index.items()):
        old_key = keys.get(old_key_id)
        for source, data in found:
            if source in used or old_key is None:
                continue
            try:
                verify_rotation(data, old_key, source)
            except (FormatError, SignatureError) as exc:
                problems.append(Problem(source, ROTATION_INVALID,
                                        f"rotation statement not accepted: {exc.message}"))
    return problems
