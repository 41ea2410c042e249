"""The verifier: proves a store's bundles untampered, trusting only given public keys
(or agent keys an organisation root enrolled, each for its host and window only).

Per bundle: the manifest's DSSE signature by a trusted key, the statement's shape,
the object key against the predicate, the records object's digest, every line
canonical, the record count and the Merkle root. Per host chain: gaps, forks,
broken `prev` links, time running backwards, and each new genesis. Per fleet
(signing.completeness): expected hosts without bundles or silent too long, and
deleted or overwritten objects in a bucket's version listing. Every finding
names the object it is about; nothing stops at the first finding.

Works on anything with `list(prefix)` and `get(key)` (and `open(key)` to stream):
the agent's stores, or `DirectoryReader` over a downloaded copy of a bucket (what a
regulator runs). What a store holds cannot exhaust it (signing/reading.py, and
`check_records_object`: digest first, lines capped at the signed count + 1,
findings capped per object). The per-bundle checks are one pure function,
`check_bundle`, run by a `Mapper` (in process, threads for a network store,
processes: signing/fanout.py, or a Dask cluster); the chain and fleet checks reduce
over its outcomes, so the findings and their order do not depend on which ran them.
"""

from __future__ import annotations

import gc
import hashlib
import io
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter
from typing import TYPE_CHECKING, Any, BinaryIO

from signing.bundle import (
    BundleName,
    iter_record_batches,
    manifest_sha256,
    max_records_object_bytes,
    parse_bundle_key,
)
from signing.canonical import canonical_record_hosts, gc_paused, parse_canonical_lines
from signing.clock import ClockFacts, TimedBundle, clock_facts, clock_findings, explained_step_back
from signing.dsse import is_exact_gamsa_envelope, parse_envelope, verify_envelope
from signing.enrollment import (
    ENROLLMENT_KEY,
    KEYS_PREFIX,
    MAX_DOCUMENT_BYTES,
    Enrollment,
    check_binding,
    verify_enrollment,
)
from signing.errors import FormatError, GamsaError, SignatureError
from signing.follows import Linked, follows_findings
from signing.keys import PublicKey
from signing.merkle import MerkleBuilder
from signing.ordered import in_order
from signing.predicate import ChainFollows, parse_bundle_statement
from signing.reading import (
    MAX_MANIFEST_BYTES,
    ObjectRefused,
    copy_capped,
    get_capped,
    open_object,
    too_large,
)

# Re-exported: the store readers live in signing.reading.
from signing.reading import DirectoryReader as DirectoryReader
from signing.reading import ObjectReader as ObjectReader
from signing.revocation import REVOCATION_KEY, revocation_findings
from signing.rotation import ROTATION_KEY, Problem, rotation_findings

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

    from signing.completeness import Completeness, FleetSummary
    from signing.timestamp import TimestampSummary

ERROR = "error"
WARNING = "warning"
INFO = "info"


# At most this many findings are listed per object; the rest are counted in one
# `findings_capped` finding, so a records object of 10^7 bad lines is one screen.
MAX_FINDINGS_PER_OBJECT = 20
SPOOL_BYTES = 16 * 1024 * 1024  # a streamed (network) object kept in memory up to this
YOUNG_GC_EVERY = 4096  # outcomes checked here between young collections (GC paused)


@dataclass(frozen=True)
class Finding:
    """One thing wrong (or worth showing) about one object."""

    key: str
    code: str
    message: str
    severity: str = ERROR

    def as_dict(self) -> dict[str, str]:
        return {"key": self.key, "code": self.code, "message": self.message,
                "severity": self.severity}


@dataclass
class BundleSummary:
    """A bundle whose manifest was read, with what the chain check needs."""

    name: BundleName
    manifest_key: str
    manifest_sha256: str
    chain_id: str
    seq: int
    prev: str | None
    started_at: str
    finished_at: str
    records: int
    key_id: str
    genesis_reason: str | None
    ok: bool
    # agent-side truth (signing/follows.py, signing/clock.py): informational fields
    follows: ChainFollows | None = None
    clock: ClockFacts = field(default_factory=ClockFacts)


@dataclass
class VerifyResult:
    """Everything the verifier found, in a form for humans and for `--json`."""

    findings: list[Finding] = field(default_factory=list)
    bundles: list[BundleSummary] = field(default_factory=list)
    fleet: FleetSummary | None = None  # signing.completeness
    timestamps: TimestampSummary | None = None  # signing.timestamp, with a TSA chain given
    untrusted_key_ids: list[str] = field(default_factory=list)  # keyids no trusted key matched

    @property
    def ok(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)

    @property
    def records(self) -> int:
        return sum(b.records for b in self.bundles)

    def summary(self) -> dict[str, Any]:
        """The run at a glance: what `gamsa verify` prints last, and `--json`'s `summary`.

        `gaps` counts `chain_gap` findings (each a run of missing seqs), `forks` the
        seqs held by more than one manifest, `untrusted_keys` the distinct keyids of
        manifests no trusted key verified.
        """
        started = [b.started_at for b in self.bundles]
        finished = [b.finished_at for b in self.bundles]
        return {
            "hosts": len({b.name.host_id for b in self.bundles}),
            "bundles": len(self.bundles),
            "records": self.records,
            "first": min(started) if started else None,
            "last": max(finished) if finished else None,
            "gaps": sum(1 for f in self.findings if f.code == "chain_gap"),
            # every manifest of a forked seq has the same chain_fork message
            "forks": len({f.message for f in self.findings if f.code == "chain_fork"}),
            "silent_hosts": len(self.fleet.silent) if self.fleet is not None else 0,
            "untrusted_keys": len(self.untrusted_key_ids),
            "errors": sum(1 for f in self.findings if f.severity == ERROR),
        }

    def as_dict(self) -> dict[str, Any]:
        chains: dict[str, dict[str, Any]] = {}
        for b in self.bundles:
            chain = chains.setdefault(f"{b.name.host_id}/{b.chain_id}", {
                "host": b.name.host_id, "chain_id": b.chain_id, "bundles": 0,
                "first_seq": b.seq, "last_seq": b.seq, "key_ids": []})
            chain["bundles"] += 1
            chain["first_seq"] = min(chain["first_seq"], b.seq)
            chain["last_seq"] = max(chain["last_seq"], b.seq)
            if b.key_id not in chain["key_ids"]:
                chain["key_ids"].append(b.key_id)
        return {"ok": self.ok, "bundles": len(self.bundles), "records": self.records,
                "summary": self.summary(), "untrusted_key_ids": self.untrusted_key_ids,
                "chains": list(chains.values()),
                "findings": [f.as_dict() for f in self.findings],
                **({} if self.fleet is None else {"fleet": self.fleet.as_dict()}),
                **({} if self.timestamps is None
                   else {"timestamps": self.timestamps.as_dict()})}


Progress = Callable[[int, int], None]


class _Capped:
    """Findings about one object, at most MAX_FINDINGS_PER_OBJECT listed; the rest counted."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.findings: list[Finding] = []
        self.dropped = 0

    def add(self, code: str, message: str) -> None:
        if len(self.findings) < MAX_FINDINGS_PER_OBJECT:
            self.findings.append(Finding(self.key, code, message))
        else:
            self.dropped += 1

    def close(self) -> list[Finding]:
        if self.dropped:
            self.findings.append(Finding(
                self.key, "findings_capped",
                f"{self.dropped} more finding(s) about this object not listed (at most "
                f"{MAX_FINDINGS_PER_OBJECT} per object)"))
            self.dropped = 0
        return self.findings


def _hosts(values: list[Any]) -> set[Any] | None:
    """The distinct `host` values of records, or None when one is not an object."""
    try:
        return set(map(dict.get, values, repeat("host")))
    except TypeError:  # dict.get on a value that is not a dict
        return None


def _check_lines(batches: Iterable[list[bytes]], found: _Capped,
                 expected_host: str | None) -> tuple[int, str]:
    """Count and Merkle root (hex) of the lines; each line's findings go to `found`."""
    tree = MerkleBuilder()
    try:
        with gc_paused():
            for lines in batches:
                first = tree.size + 1
                tree.add_leaves(lines)
                hosts = canonical_record_hosts(lines)
                if hosts is not None and (expected_host is None or hosts == {expected_host}):
                    continue  # the common case: all canonical records of this host
                values, errors = parse_canonical_lines(lines)
                for index, message in errors.items():
                    found.add("not_canonical", f"line {first + index}: {message}")
                if expected_host is None:
                    continue
                if not errors and _hosts(values) == {expected_host}:
                    continue  # the common case, at C speed: this runs for every record
                for index, record in enumerate(values):
                    if index not in errors and (record.__class__ is not dict
                                                or record.get("host") != expected_host):
                        found.add("record_host_mismatch", f"line {first + index}: record "
                                  f"host is not {expected_host}")
    except FormatError as exc:
        found.add("records_unreadable", exc.message)
    return tree.size, tree.root().hex()


def check_records(data: bytes, key: str, expected_host: str | None = None,
                  ) -> tuple[int, str, list[Finding]]:
    """Count, Merkle root (hex) and findings for one records object's bytes."""
    found = _Capped(key)
    count, root = _check_lines(iter_record_batches(io.BytesIO(data), key), found,
                               expected_host)
    return count, root, found.close()


def _digest_pass(stream: BinaryIO, limit: int) -> tuple[str, BinaryIO] | None:
    """The SHA-256 of `stream`, and a stream of the same bytes from the start: the
    same file sought back, or (a network body) a spool of what was read. None (and
    the stream closed) when it holds more than `limit` bytes: nothing past that byte
    is read, hashed or spooled."""
    digest = hashlib.sha256()
    if stream.seekable():
        try:
            over = copy_capped(stream, digest.update, limit)
            stream.seek(0)
        except BaseException:
            stream.close()
            raise
        if over:
            stream.close()
            return None
        return digest.hexdigest(), stream
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)

    def take(chunk: bytes) -> None:
        digest.update(chunk)
        spool.write(chunk)

    try:
        over = copy_capped(stream, take, limit)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    finally:
        stream.close()
    if over:
        spool.close()
        return None
    return digest.hexdigest(), spool  # type: ignore[return-value]


def check_records_object(stream: BinaryIO, key: str, signed_digest: Any, signed_count: int,
                         signed_root: str, expected_host: str) -> list[Finding]:
    """The records checks of one bundle (docs/FORMAT.md §4 step 5-6), bounded.

    The digest is checked first, streaming, and at most the bytes `signed_count`
    records can take are read (`object_too_large` past that): on a mismatch the
    object is not what was signed and nothing more is read from it. Then lines are decoded, at most
    the signed count + 1 (more is `count_mismatch` without reading the rest), each
    checked; findings past MAX_FINDINGS_PER_OBJECT are counted, not listed.
    """
    limit = max_records_object_bytes(signed_count)
    passed = _digest_pass(stream, limit)
    if passed is None:  # more than any object of the signed count can be: not what was signed
        refused = too_large(key, limit, f" (the most {signed_count} records can take)")
        return [Finding(key, refused.code, refused.message)]
    digest, source = passed
    with source:
        if digest != signed_digest:
            return [Finding(key, "digest_mismatch",
                            f"sha256 is {digest}, signed manifest says {signed_digest}; "
                            "records not read further")]
        found = _Capped(key)
        count, root = _check_lines(iter_record_batches(source, key, signed_count + 1), found,
                                   expected_host)
    findings = found.close()
    if count > signed_count:
        findings.append(Finding(key, "count_mismatch",
                                f"more than the {signed_count} records the signed manifest "
                                f"says; reading stopped at record {count}"))
    elif count != signed_count:
        findings.append(Finding(key, "count_mismatch",
                                f"{count} records, signed manifest says {signed_count}"))
    if count <= signed_count and root != signed_root:
        findings.append(Finding(key, "merkle_root_mismatch",
                                f"Merkle root is {root}, signed manifest says {signed_root}"))
    return findings


KEY_DOCUMENT_KEY = re.compile(r"^v1/keys/[0-9a-f]{64}\.json$")


@dataclass(frozen=True)
class Trust:
    """Which keys a manifest signature may verify with, and what each is trusted for.

    A key in `unbound` (given directly: `--trust`, or the agent's own key) is
    trusted for any host at any time. A key with `enrollments` is trusted only for
    the host and window one of them names (docs/FORMAT.md, "Enrollment").
    """

    keys: Mapping[str, PublicKey]
    unbound: frozenset[str]
    enrollments: Mapping[str, list[Enrollment]] = field(default_factory=dict)

    @classmethod
    def direct(cls, trusted: Mapping[str, PublicKey]) -> Trust:
        return cls(trusted, frozenset(trusted))


def load_trust(reader: ObjectReader, trusted: Mapping[str, PublicKey],
               org_keys: Mapping[str, PublicKey] | None,
               workers: int = 1) -> tuple[Trust, list[Finding]]:
    """The trust a verification runs under, and findings about enrollment objects.

    Without `org_keys`, the `trusted` keys are trusted directly. With them, every
    `v1/keys/<key_id>.enrollment.<sha256>.dsse.json` in the store is verified with
    the organisation key(s); one that does not verify, or is filed under another
    key's name, is an error finding and trusts nothing. A key both given directly
    and enrolled is held to its enrollments.
    """
    if org_keys is None:
        return Trust.direct(trusted), []
    org = dict(org_keys)
    names: list[str] = []
    strays: list[Finding] = []
    for key in reader.list(KEYS_PREFIX):
        if ENROLLMENT_KEY.match(key):
            names.append(key)
        elif not KEY_DOCUMENT_KEY.match(key) and not is_key_lifecycle_object(key):
            strays.append(Finding(key, "unexpected_object", "object under v1/keys/ is neither "
                                  "a key document, an enrollment, a rotation nor a "
                                  "revocation (docs/FORMAT.md §7-9)", WARNING))

    def one(key: str) -> Enrollment | Finding:
        try:
            enrollment = verify_enrollment(get_capped(reader, key, MAX_DOCUMENT_BYTES), org,
                                           key)
        except SignatureError as exc:
            code = ("enrollment_untrusted" if "trusted key" in exc.message
                    else "enrollment_invalid")
            return Finding(key, code, f"enrollment not accepted: {exc.message}")
        except FormatError as exc:
            return Finding(key, "enrollment_invalid", f"enrollment not accepted: {exc.message}")
        match = ENROLLMENT_KEY.match(key)
        if match is not None and match.group(1) != enrollment.key.key_id:
            return Finding(key, "enrollment_invalid",
                           f"enrollment of key {enrollment.key.key_id} (host "
                           f"{enrollment.host_id}) is filed under key {match.group(1)}")
        return enrollment

    if workers > 1 and len(names) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gamsa-trust") as pool:
            outcomes = list(pool.map(one, names))
    else:
        outcomes = [one(key) for key in names]
    findings = strays + [o for o in outcomes if isinstance(o, Finding)]
    enrollments: dict[str, list[Enrollment]] = defaultdict(list)
    for outcome in outcomes:
        if isinstance(outcome, Enrollment):
            enrollments[outcome.key.key_id].append(outcome)
    keys = {key_id: found[0].key for key_id, found in enrollments.items()}
    keys.update({k: v for k, v in trusted.items() if k not in keys})
    unbound = frozenset(k for k in trusted if k not in enrollments)
    return Trust(keys, unbound, dict(enrollments)), findings


def is_key_lifecycle_object(key: str) -> bool:
    """A rotation statement or a revocation, by its object key."""
    return bool(ROTATION_KEY.match(key) or REVOCATION_KEY.match(key))


def key_lifecycle_problems(reader: ObjectReader, keys: Mapping[str, PublicKey],
                           org_keys: Mapping[str, PublicKey] | None,
                           bundles: list[BundleSummary]) -> list[Problem]:
    """Key changes inside chains without a valid rotation; under org trust, bundles
    of revoked keys sealed after the revocation."""
    problems = rotation_findings(reader, keys, bundles)
    if org_keys:
        problems += revocation_findings(reader, org_keys, bundles)
    return problems


def unbound_findings(trust: Trust, bundles: Iterable[BundleSummary]) -> list[Finding]:
    """One note per directly trusted key that signed bundles: it is bound to no host."""
    hosts: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    for b in bundles:
        if b.key_id in trust.unbound:
            hosts[b.key_id].add(b.name.host_id)
            counts[b.key_id] += 1
    return [Finding(f"{KEYS_PREFIX}{key_id}.json", "key_unbound",
                    f"key {key_id} is trusted as given (a --trust key, or this host's own), "
                    f"not bound to a host by an organisation enrollment: it signed "
                    f"{counts[key_id]} bundle(s) of host(s) "
                    f"{', '.join(sorted(hosts[key_id]))} and would pass for any host", INFO)
            for key_id in sorted(hosts)]


@dataclass
class BundleOutcome:
    """What the per-bundle checks found: picklable, so a worker process or a Dask
    worker can return it; `check_chains` and the fleet checks reduce over them."""

    findings: list[Finding] = field(default_factory=list)
    summary: BundleSummary | None = None
    untrusted_key_ids: tuple[str, ...] = ()  # keyid hints of a manifest nobody trusted


def check_bundle(reader: ObjectReader, name: BundleName, kinds: frozenset[str],
                 trust: Trust) -> BundleOutcome:
    """Every per-bundle check (docs/FORMAT.md §4 steps 1-6) of the bundle `name`,
    whose objects in the store are `kinds` ("records", "manifest", "timestamp").

    A pure function of the store's content and `trust`: the same on one core, in a
    process pool or on a Dask worker. Reads the manifest up to MAX_MANIFEST_BYTES
    and the records object as a stream (check_records_object).
    """
    if kinds == {"timestamp"}:
        return BundleOutcome([Finding(name.timestamp_key, "timestamp_orphan",
                                      "timestamp token without its bundle", WARNING)])
    if "manifest" not in kinds:
        return BundleOutcome([Finding(
            name.records_key, "manifest_missing",
            "records object without a manifest (an upload in progress, or a manifest "
            "removed: the chain check tells which)", WARNING)])
    mkey = name.manifest_key
    outcome = BundleOutcome()
    try:
        manifest = get_capped(reader, mkey, MAX_MANIFEST_BYTES)
    except ObjectRefused as exc:
        outcome.findings.append(Finding(mkey, exc.code, exc.message))
        return outcome
    try:
        envelope = verify_envelope(manifest, trust.keys)
        statement = parse_bundle_statement(envelope.payload)
        predicate = statement.predicate
        host_id = predicate.host.id
        collection_id = predicate.collection.id
        started_at = predicate.collection.started_at
        finished_at = predicate.collection.finished_at
        count = predicate.records.count
        merkle_root = predicate.records.merkle_root
        seq, prev = predicate.chain.seq, predicate.chain.prev
        chain_id = predicate.chain.id
        genesis = predicate.chain.genesis_reason
        follows = predicate.chain.follows
        clock = clock_facts(predicate.collection)
    except SignatureError as exc:
        if "trusted key" in exc.message:
            outcome.findings.append(Finding(mkey, "untrusted_key", exc.message))
            outcome.untrusted_key_ids = _keyid_hints(manifest)
        else:
            outcome.findings.append(Finding(mkey, "signature_invalid", exc.message))
        return outcome
    except GamsaError as exc:
        outcome.findings.append(Finding(mkey, "manifest_invalid", exc.message))
        return outcome

    findings = outcome.findings
    enrolled = trust.enrollments.get(envelope.key_id)
    if enrolled is not None:
        problem = check_binding(enrolled, envelope.key_id, host_id, started_at, finished_at)
        if problem is not None:
            findings.append(Finding(mkey, *problem))
    if not is_exact_gamsa_envelope(manifest, envelope):
        findings.append(Finding(
            mkey, "manifest_not_exact",
            "signature verifies but the manifest bytes differ from the form gamsa writes "
            "(a keyid, base64 padding or an added field was changed)"))
    for what, stated, actual in (("host", host_id, name.host_id),
                                 ("collection id", collection_id, name.collection_id),
                                 ("seq", seq, name.seq),
                                 ("date", started_at[:10], name.date)):
        if stated != actual:
            findings.append(Finding(mkey, "key_mismatch",
                                    f"object key says {what} {actual!r}, signed manifest "
                                    f"says {stated!r}"))
    if statement.subject_name != name.records_key:
        findings.append(Finding(mkey, "subject_mismatch",
                                f"manifest subject is {statement.subject_name!r}, expected "
                                f"{name.records_key!r}"))
    if "records" not in kinds:
        findings.append(Finding(name.records_key, "records_missing",
                                "records object named by a manifest is missing"))
    else:
        try:
            stream = open_object(reader, name.records_key)
        except ObjectRefused as exc:
            findings.append(Finding(name.records_key, exc.code, exc.message))
        else:
            findings.extend(check_records_object(
                stream, name.records_key, statement.subject_sha256, count, merkle_root,
                host_id))
    outcome.summary = BundleSummary(
        name, mkey, manifest_sha256(manifest), chain_id, seq, prev, started_at, finished_at,
        count, envelope.key_id, genesis, not findings, follows, clock)
    return outcome


def _keyid_hints(manifest: bytes) -> tuple[str, ...]:
    """The keyids an unverified envelope names (hints only: for the summary's count)."""
    try:
        signatures = parse_envelope(manifest)["signatures"]
    except GamsaError:
        return ()
    return tuple(sorted({str(s.get("keyid") or "") for s in signatures
                         if isinstance(s, dict)} - {""}))


def check_chains(bundles: Iterable[BundleSummary]) -> list[Finding]:
    """Gaps, forks, broken links, time going backwards and new genesis, per host chain."""
    findings: list[Finding] = []
    chains: dict[tuple[str, str], list[BundleSummary]] = defaultdict(list)
    for b in bundles:
        chains[(b.name.host_id, b.chain_id)].append(b)
    for (host, chain_id), members in sorted(chains.items()):
        by_seq: dict[int, list[BundleSummary]] = defaultdict(list)
        for b in members:
            by_seq[b.seq].append(b)
        for seq, same in sorted(by_seq.items()):
            if len(same) > 1:
                keys = ", ".join(sorted(b.manifest_key for b in same))
                for b in same:
                    findings.append(Finding(b.manifest_key, "chain_fork",
                                            f"host {host} chain {chain_id}: {len(same)} "
                                            f"manifests at seq {seq} ({keys})"))
        seqs = sorted(by_seq)
        expected = 1
        for seq in seqs:
            if seq > expected:
                first = by_seq[seq][0]
                missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
                findings.append(Finding(first.manifest_key, "chain_gap",
                                        f"host {host} chain {chain_id}: seq {missing} missing "
                                        f"before seq {seq}"))
            expected = seq + 1
        for seq in seqs:
            for b in by_seq[seq]:
                if seq == 1:
                    if b.prev is not None:
                        findings.append(Finding(b.manifest_key, "chain_prev_mismatch",
                                                "seq 1 must have prev null"))
                    findings.append(Finding(
                        b.manifest_key, "chain_genesis",
                        f"host {host}: chain {chain_id} starts here "
                        f"({b.genesis_reason or 'no reason given'})", INFO))
                    continue
                before = by_seq.get(seq - 1, [])
                if len(before) != 1:
                    continue  # a gap or a fork, already reported
                parent = before[0]
                if b.prev != parent.manifest_sha256:
                    findings.append(Finding(
                        b.manifest_key, "chain_prev_mismatch",
                        f"prev is {b.prev}, manifest at seq {seq - 1} hashes to "
                        f"{parent.manifest_sha256}"))
                if b.started_at < parent.finished_at and not explained_step_back(
                        parent.finished_at, b.started_at, b.clock):  # clock_ahead instead
                    findings.append(Finding(
                        b.manifest_key, "time_backwards",
                        f"started {b.started_at}, before seq {seq - 1} finished "
                        f"{parent.finished_at}"))
    return findings


BundleTask = tuple[BundleName, frozenset[str]]  # a bundle and the kinds of its objects
# Runs check_bundle over tasks; yields the outcomes in the tasks' order.
Mapper = Callable[[ObjectReader, Trust, list[BundleTask]], Iterator[BundleOutcome]]


def _freeing_cycles(outcomes: Iterable[BundleOutcome]) -> Iterator[BundleOutcome]:
    """Outcomes of checks run in this process, with a young collection every
    YOUNG_GC_EVERY of them while the GC is paused (verify_store): it frees any cycle
    a check leaves. Outcomes from worker processes need none (nothing here made them
    but unpickling), and scanning them would cost the parent 0.65 s per 100,000."""
    for done, outcome in enumerate(outcomes, start=1):
        yield outcome
        if not done % YOUNG_GC_EVERY and not gc.isenabled():
            gc.collect(1)


def in_process(reader: ObjectReader, trust: Trust,
               tasks: list[BundleTask]) -> Iterator[BundleOutcome]:
    """The per-bundle checks one after another, in this process."""
    return _freeing_cycles(check_bundle(reader, name, kinds, trust) for name, kinds in tasks)


def threads(workers: int) -> Mapper:
    """`workers` bundles read and checked at once on threads (a network store: the
    time goes in round trips), no more bundles in hand than workers."""

    def run(reader: ObjectReader, trust: Trust,
            tasks: list[BundleTask]) -> Iterator[BundleOutcome]:
        with ThreadPoolExecutor(max_workers=workers,
                                thread_name_prefix="gamsa-verify") as pool:
            yield from _freeing_cycles(in_order(
                lambda task: pool.submit(check_bundle, reader, *task, trust), tasks, workers))

    return run


class _KeysListedOnce:
    """`reader` with `v1/keys/` listed once per verification: the trust, rotation and
    revocation checks each read that folder, and on S3 every listing is paged requests."""

    def __init__(self, reader: ObjectReader) -> None:
        self._reader = reader
        self._keys: list[str] | None = None

    def list(self, prefix: str) -> Iterable[str]:
        if prefix != KEYS_PREFIX:
            return self._reader.list(prefix)
        if self._keys is None:
            self._keys = list(self._reader.list(KEYS_PREFIX))
        return iter(self._keys)

    def get(self, key: str) -> bytes:
        return self._reader.get(key)

    def open(self, key: str) -> BinaryIO:  # the reader's stream: reads stay capped
        return open_object(self._reader, key)


def verify_store(reader: ObjectReader, trusted: Mapping[str, PublicKey],
                 host: str | None = None, progress: Progress | None = None,
                 workers: int = 1,
                 org_keys: Mapping[str, PublicKey] | None = None,
                 expect: Completeness | None = None,
                 tsa_chain: list[Certificate] | None = None,
                 mapper: Mapper | None = None) -> VerifyResult:
    """Verify every bundle under `v1/` (or one host's) in `reader`.

    `trusted` keys are trusted for any host (reported as `key_unbound`); with
    `org_keys`, keys enrolled by the organisation are trusted too, each only for
    its enrolled host and window (`load_trust`). `expect` says what else the
    fleet must show (signing.completeness: the time of the audit, the longest
    silence allowed, the bucket's object versions); without it, hosts expected
    but without bundles are still reported. With `tsa_chain` (the TSA certificates
    the auditor trusts), each bundle's RFC 3161 token is checked (signing.timestamp).

    The per-bundle checks (`check_bundle`) run through `mapper`: `in_process`,
    `threads(n)` (the default with `workers` > 1: for a network store, n bundles
    read at once), `signing.fanout.processes(n)` (a local store on every core) or
    a Dask cluster (agent.verify_dask). Every mapper yields outcomes in key order,
    and the chain and fleet checks reduce over them here, so the findings are the
    same, in the same order, whichever runs them. An error reading the store (not a
    finding) propagates after the bundles already started finish.

    The cyclic GC is paused throughout: a fleet's summaries (millions of small
    objects, none in a cycle) would otherwise be rescanned by every full collection
    as they pile up, a third of this process's own work with 20,000 bundles. Where
    the checks run in this process, a young collection every YOUNG_GC_EVERY outcomes
    still frees any cycle a check leaves (`_freeing_cycles`).
    """
    with gc_paused():
        return _verify_store(reader, trusted, host, progress, workers, org_keys, expect,
                             tsa_chain, mapper)


def _verify_store(reader: ObjectReader, trusted: Mapping[str, PublicKey],
                  host: str | None, progress: Progress | None, workers: int,
                  org_keys: Mapping[str, PublicKey] | None, expect: Completeness | None,
                  tsa_chain: list[Certificate] | None, mapper: Mapper | None,
                  ) -> VerifyResult:
    prefix = f"v1/host={host}/" if host else "v1/host="
    result = VerifyResult()
    keys_reader = _KeysListedOnce(reader)
    trust, trust_findings = load_trust(keys_reader, trusted, org_keys, workers)
    result.findings.extend(trust_findings)
    names: dict[BundleName, set[str]] = {}
    for key in reader.list(prefix):
        parsed = parse_bundle_key(key)
        if parsed is None:
            result.findings.append(Finding(key, "unexpected_object",
                                           "object key does not follow the bundle layout",
                                           WARNING))
            continue
        names.setdefault(parsed[0], set()).add(parsed[1])
    tasks = [(name, frozenset(names[name]))
             for name in sorted(names, key=attrgetter("host_id", "seq", "collection_id"))]
    if mapper is None:
        mapper = in_process if workers <= 1 or len(tasks) <= 1 else threads(workers)
    untrusted: set[str] = set()
    for done, outcome in enumerate(mapper(reader, trust, tasks), start=1):
        result.findings.extend(outcome.findings)
        if outcome.summary is not None:
            result.bundles.append(outcome.summary)
        untrusted.update(outcome.untrusted_key_ids)
        if progress is not None:
            progress(done, len(tasks))
    result.untrusted_key_ids = sorted(untrusted)
    if not any("manifest" in kinds for kinds in names.values()):
        # Nothing to verify is not a pass: a wrong --host, prefix or store, or evidence
        # that was never shipped or was removed, must not read as "OK".
        what = f"host {host}" if host else "any host"
        result.findings.append(Finding(prefix, "no_bundles",
                                       f"no bundles found for {what} (nothing under {prefix})"))
    result.findings.extend(check_chains(result.bundles))
    # Key rotation and revocation (signing/rotation.py, signing/revocation.py).
    result.findings.extend(Finding(p.key, p.code, p.message)
                           for p in key_lifecycle_problems(keys_reader, trust.keys, org_keys,
                                                           result.bundles))
    result.findings.extend(agent_truth_findings(result.bundles))
    result.findings.extend(unbound_findings(trust, result.bundles))
    # Imported here: signing.completeness builds on this module's types.
    from signing.completeness import Completeness, check_completeness

    fleet_findings, result.fleet = check_completeness(trust, result.bundles,
                                                      expect or Completeness(), host)
    result.findings.extend(fleet_findings)
    if tsa_chain is not None:
        from signing.timestamp import Stamped, check_timestamps

        result.timestamps = check_timestamps(reader.get, (
            Stamped(b.manifest_key, b.name.timestamp_key
                    if "timestamp" in names.get(b.name, set()) else None,
                    b.manifest_sha256, b.finished_at) for b in result.bundles), tsa_chain)
        result.findings.extend(Finding(*f) for f in result.timestamps.findings)
    return result


def agent_truth_findings(bundles: list[BundleSummary]) -> list[Finding]:
    """Chains linked by `follows`, and bundles whose claimed time is far ahead."""
    linked = [Linked(b.manifest_key, b.name.host_id, b.chain_id, b.seq, b.manifest_sha256,
                     b.follows) for b in bundles] if any(b.follows for b in bundles) else []
    findings = [Finding(key, code, message, ERROR if is_error else
                        (INFO if code == "chain_follows" else WARNING))  # see follows.py
                for key, code, message, is_error in follows_findings(linked)]
    findings.extend(Finding(key, code, message) for key, code, message in clock_findings(
        TimedBundle(b.manifest_key, b.name.host_id, b.chain_id, b.seq, b.started_at,
                    b.finished_at, b.clock) for b in bundles))
    return findings
