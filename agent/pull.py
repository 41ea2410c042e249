"""`gamsa pull`: a local mirror of a store, every bundle verified before it enters.

The mirror is a directory with the store layout (`v1/host=…/date=…/…`, `v1/keys/…`),
so `gamsa verify --store file://DIR` and `signing.verify.DirectoryReader` read it
as they read a store, plus:

- `.gamsa-mirror.json`: which store it mirrors, under which trust, and the last
  pull's summary (hidden from `DirectoryReader`: its name starts with a dot);
- `quarantine/<bundle stem>/`: a bundle that failed, its objects and
  `findings.json` (written last: the marker that the bundle was judged).

A bundle is fetched (manifest first, then records, RFC 3161 reply when present),
each object streamed into a fsynced file of the temp area up to a cap (the records
object's from the signed record count: what a store holds cannot exhaust memory or
disk), checked by the verifier's own per-bundle code under the given trust, linked
to the previous bundle of its chain already in the mirror, then each file is linked
to its name, records before manifest: a manifest in the mirror means its bundle is
whole.
Links are create-only, so a kill -9 at any instant leaves whole objects only (a
records object without its manifest at worst, completed by the next run), and an
object already in the mirror is never replaced: different bytes under a mirrored
key are a finding (`store_object_changed`), the new bytes go to quarantine.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from agent.crashpoints import crashpoint
from agent.fsutil import create_atomic, failing, fsync_dir, replace_atomic, write_all
from agent.store import Store
from signing.bundle import HOST_ID, BundleName, max_records_object_bytes, parse_bundle_key
from signing.dsse import envelope_payload, verify_envelope
from signing.enrollment import KEYS_PREFIX
from signing.enrollment import MAX_DOCUMENT_BYTES as MAX_KEY_FOLDER_BYTES
from signing.errors import GamsaError, StoreError, UsageError
from signing.keys import PublicKey
from signing.ordered import in_order
from signing.predicate import parse_bundle_statement
from signing.reading import (
    MAX_MANIFEST_BYTES,
    ObjectRefused,
    copy_capped,
    get_capped,
    open_object,
    open_regular,
    too_large,
)
from signing.timestamp import MAX_RESPONSE_BYTES
from signing.verify import (
    ERROR,
    WARNING,
    BundleSummary,
    Finding,
    Trust,
    check_bundle,
    load_trust,
)

STATE_NAME = ".gamsa-mirror.json"
QUARANTINE_NAME = "quarantine"
TEMP_NAME = ".gamsa-pull"
FINDINGS_NAME = "findings.json"
MIRROR_FORMAT = 1
DEFAULT_JOBS = 16  # the S3 store's connection pool (agent.s3_store) holds 16
# Directories fsynced together, not once per bundle (12 ms each on a loaded disk, on
# the one ordered thread). A kill -9 never loses a link; a power loss may lose the
# links since the last sync (journaled in order: never a manifest without its
# records), and the next run pulls those again.
SYNC_EVERY_BUNDLES = 1000
_KINDS_IN_ORDER = ("records", "timestamp", "manifest")  # the manifest last: it completes


# -- the one place that calls the verifier's internals (signing/verify.py) -----------


def trust_for(store: Store, trusted: Mapping[str, PublicKey],
              org_keys: Mapping[str, PublicKey] | None,
              workers: int) -> tuple[Trust, list[Finding]]:
    """The trust the pull verifies under, and findings about enrollment objects (read
    capped: an enrollment over the key folder's cap is `enrollment_invalid`)."""
    return load_trust(_KeyFolder(store), trusted, org_keys, workers)


def verify_bundle(staged: Staged, name: BundleName,
                  trust: Trust) -> tuple[BundleSummary | None, list[Finding]]:
    """The verifier's per-bundle checks on one bundle's downloaded objects, plus a
    finding for each object refused or cut that the checks did not come to read."""
    outcome = check_bundle(staged, name, frozenset(staged.kinds), trust)
    findings = outcome.findings
    said = {(f.key, f.code) for f in findings}
    findings += [Finding(key, exc.code, exc.message) for key, exc in staged.refused.items()
                 if (key, exc.code) not in said]
    return outcome.summary, findings


@dataclass(frozen=True)
class _KeyFolder:
    """`store` with each object read whole only up to the key folder's cap (the
    enrollment, rotation and revocation documents' own limit: signing.enrollment)."""

    store: Store

    def list(self, prefix: str) -> Iterable[str]:
        return self.store.list(prefix)

    def get(self, key: str) -> bytes:
        return get_capped(self.store, key, MAX_KEY_FOLDER_BYTES)


@dataclass
class Staged:
    """One bundle's objects downloaded into the mirror's temp area, each up to its cap,
    read back as a store (`open` streams, as `signing.verify.check_bundle` reads).

    `refused`: objects not downloaded (not a regular file) or cut at their cap (the
    temp file then holds the first cap + 1 bytes); reading one raises its refusal,
    so the verifier reports it as a finding on that key.
    """

    files: dict[str, Path] = field(default_factory=dict)
    refused: dict[str, ObjectRefused] = field(default_factory=dict)
    kinds: set[str] = field(default_factory=set)

    def list(self, prefix: str) -> Iterator[str]:
        return iter(sorted(k for k in self.files if k.startswith(prefix)))

    def open(self, key: str) -> BinaryIO:
        refused = self.refused.get(key)
        if refused is not None:
            raise refused
        return open_regular(self.files[key], key)

    def get(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def size(self) -> int:
        return sum(path.stat().st_size for path in self.files.values())

    def release(self) -> None:
        """Remove the temp files not linked into the mirror."""
        for path in self.files.values():
            path.unlink(missing_ok=True)
        self.files.clear()


# -- what a pull is asked and what it did --------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which bundles to pull: hosts (none = all), and dates from the key, inclusive."""

    hosts: tuple[str, ...] = ()
    since: dt.date | None = None
    until: dt.date | None = None

    def prefixes(self) -> list[str]:
        return [f"v1/host={h}/" for h in self.hosts] or ["v1/host="]

    def wants(self, name: BundleName) -> bool:
        day = dt.date.fromisoformat(name.date)
        return ((self.since is None or day >= self.since)
                and (self.until is None or day <= self.until))


def parse_selection(hosts: Iterable[str], since: str | None, until: str | None) -> Selection:
    """A `Selection` from the command line; UsageError naming the bad option."""
    chosen = tuple(hosts)
    for host in chosen:
        if not re.fullmatch(HOST_ID, host):
            raise UsageError(f"--host {host!r}: not a host id", hint=f"a host id is {HOST_ID}")

    def day(option: str, value: str | None) -> dt.date | None:
        if value is None:
            return None
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise UsageError(f"{option} {value!r}: not a date",
                             hint="give the bundle date as YYYY-MM-DD") from None

    selection = Selection(chosen, day("--since", since), day("--until", until))
    if selection.since and selection.until and selection.since > selection.until:
        raise UsageError(f"--since {since} is after --until {until}")
    return selection


@dataclass
class PullResult:
    """What one pull did, for humans and for `--json`."""

    store: str
    mirror: str
    pulled: int = 0
    skipped: int = 0
    quarantined: int = 0  # this run
    quarantined_before: int = 0  # in quarantine from earlier runs, within the selection
    bytes: int = 0
    keys: int = 0  # key-folder objects newly mirrored
    unread: int = 0  # bundles with an object this user may not read: not pulled
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.quarantined and not self.quarantined_before and not self.unread
                and not any(f.severity == ERROR for f in self.findings))

    @property
    def judged_bad(self) -> bool:
        """Evidence found wrong (exit 1), as against only not read (exit 3)."""
        return bool(self.quarantined or self.quarantined_before or any(
            f.severity == ERROR and f.code != UNREADABLE for f in self.findings))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "store": self.store, "mirror": self.mirror,
                "pulled": self.pulled, "skipped": self.skipped,
                "quarantined": self.quarantined,
                "quarantined_before": self.quarantined_before, "unread": self.unread,
                "bytes": self.bytes,
                "keys": self.keys, "findings": [f.as_dict() for f in self.findings]}


Progress = Callable[[int, int], None]
UNREADABLE = "object_unreadable"  # the finding of a bundle not pulled: permission denied


# -- the mirror directory ------------------------------------------------------------


class Mirror:
    """The mirror's directory: placing objects create-only, quarantine, its state."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_path = root / STATE_NAME
        self.quarantine = root / QUARANTINE_NAME
        self.temp = root / TEMP_NAME
        self._unsynced: set[Path] = set()
        self._links_unsynced = 0

    def open(self, store_url: str, trust: dict[str, list[str]],
             public_keys: Mapping[str, str] | None = None) -> None:
        """Create the mirror or check that it mirrors `store_url`; record the trust
        (key ids, and the public keys' PEM so `gamsa export` can ship them)."""
        if self.root.exists() and not self.root.is_dir():
            raise UsageError(f"--to {self.root}: exists and is not a directory")
        state: dict[str, Any] = {}
        if self.state_path.exists():
            try:
                state = json.loads(self.state_path.read_bytes())
                mirrored = state["store"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise GamsaError(f"{self.state_path}: not a readable mirror state ({exc})",
                                 hint="move the directory away and pull again") from exc
            if mirrored != store_url:
                raise UsageError(f"--to {self.root} mirrors {mirrored}, not {store_url}",
                                 hint="pull each store into its own directory")
        elif self.root.exists() and any(self.root.iterdir()):
            raise UsageError(f"--to {self.root}: not empty and not a gamsa mirror "
                             f"(no {STATE_NAME})", hint="give a new or empty directory")
        self.clear_temp()
        with failing("create the mirror", self.root):
            self.root.mkdir(parents=True, exist_ok=True, mode=0o750)
            self.temp.mkdir(mode=0o700)
        self.write_state({**state, "format": MIRROR_FORMAT, "store": store_url,
                          "trust": trust, "trust_public_keys": dict(sorted(
                              (public_keys or {}).items()))})

    def write_state(self, state: dict[str, Any]) -> None:
        with failing("write", self.state_path):
            replace_atomic(self.state_path, json.dumps(state, indent=2, sort_keys=True)
                           .encode() + b"\n", mode=0o644)

    def read_state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_path.read_bytes())
        return state

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def quarantine_dir(self, stem: str) -> Path:
        return self.quarantine / stem

    def is_quarantined(self, stem: str) -> bool:
        return (self.quarantine_dir(stem) / FINDINGS_NAME).exists()

    def download(self, store: Store, key: str, limit: int) -> tuple[Path, bool]:
        """`key` streamed from `store` into a new fsynced file of the temp area, at
        most `limit` + 1 bytes (a worker's part of placing it: the download, write and
        fsync run in parallel; `link` only links). (the file, whether the object is
        larger than `limit` and was cut there). An object that is not a regular file
        is `ObjectRefused`, nothing read."""
        source = open_object(store, key)
        temp = self.temp / secrets.token_hex(12)

        def write(chunk: bytes) -> None:
            with failing("write", temp):
                write_all(fd, chunk)

        with source:
            with failing("write", temp):
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o444)
            try:
                cut = copy_capped(source, write, limit)
                with failing("write", temp):
                    os.fsync(fd)
            except BaseException as exc:
                temp.unlink(missing_ok=True)
                if isinstance(exc, OSError):  # a write is named by `failing`: a read
                    raise StoreError(f"store {store.url}: cannot read {key}: "
                                     f"{exc.strerror or exc}") from exc
                raise
            finally:
                os.close(fd)
        return temp, cut

    def place(self, key: str, data: bytes) -> bool:
        """Name `key` in the mirror with `data`, create-only: True if placed now."""
        target = self.path(key)
        with failing("write", target):
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            return create_atomic(target, data, mode=0o444)

    def link(self, key: str, prepared: Path) -> bool:
        """Name `key` in the mirror with the `prepared` temp file, create-only (the temp
        name stays until the bundle is settled). True if linked now or already there
        with the same bytes; False if the mirror holds other bytes. The caller makes
        the name durable (`sync`)."""
        target = self.path(key)
        with failing("write", target):
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            try:
                os.link(prepared, target)
                return True
            except FileExistsError:
                return _sha256_file(target) == _sha256_file(prepared)

    def linked_in(self, key: str) -> None:
        """Note that a name was linked beside `key`: `sync` makes it durable."""
        self._unsynced.add(self.path(key).parent)
        self._links_unsynced += 1
        if self._links_unsynced >= SYNC_EVERY_BUNDLES:
            self.sync()

    def sync(self) -> None:
        """fsync each directory names were linked in since the last sync."""
        for directory in sorted(self._unsynced):
            with failing("write", directory):
                fsync_dir(directory)
        self._unsynced.clear()
        self._links_unsynced = 0

    def clear_temp(self) -> None:
        """Empty the temp area (what a killed pull left there is not in the mirror)."""
        with failing("clear", self.temp):
            shutil.rmtree(self.temp, ignore_errors=True)

    def put_in_quarantine(self, stem: str, objects: Mapping[str, bytes | Path],
                          findings: list[Finding]) -> None:
        """The objects (bytes, or temp files linked, not copied: an object cut at its
        cap stays cut) and their findings under quarantine/<stem>/, findings last."""
        where = self.quarantine_dir(stem)
        with failing("write", where):
            where.mkdir(parents=True, exist_ok=True, mode=0o750)
            for key, data in objects.items():
                target = where / key.rsplit("/", 1)[-1]
                if isinstance(data, bytes):
                    create_atomic(target, data, mode=0o444)
                    continue
                with contextlib.suppress(FileExistsError):  # a rerun after a kill
                    os.link(data, target)
                data.unlink(missing_ok=True)
            fsync_dir(where)
            crashpoint("pull: quarantined objects written")
            create_atomic(where / FINDINGS_NAME, json.dumps(
                {"key": stem, "findings": [f.as_dict() for f in findings]},
                indent=2, sort_keys=True).encode() + b"\n", mode=0o444)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- chains already in the mirror ----------------------------------------------------


@dataclass(frozen=True)
class _Link:
    manifest_key: str
    manifest_sha256: str


class _MirrorChains:
    """(host, chain id, seq) -> the bundle the mirror holds there, read lazily per host
    from the mirror's manifests (verified when they were pulled)."""

    def __init__(self, mirror: Mirror) -> None:
        self._mirror = mirror
        self._loaded: set[str] = set()
        self._links: dict[tuple[str, str, int], list[_Link]] = {}

    def _load(self, host: str) -> None:
        if host in self._loaded:
            return
        self._loaded.add(host)
        base = self._mirror.root / f"v1/host={host}"
        for path in sorted(base.glob("date=*/*.manifest.dsse.json")):
            key = path.relative_to(self._mirror.root).as_posix()
            parsed = parse_bundle_key(key)
            if parsed is None:
                continue
            data = path.read_bytes()
            try:
                chain_id = parse_bundle_statement(envelope_payload(data)).predicate.chain.id
            except GamsaError:
                continue  # not ours to judge here: `gamsa verify` on the mirror reports it
            self._links.setdefault((host, chain_id, parsed[0].seq), []).append(
                _Link(key, hashlib.sha256(data).hexdigest()))

    def at(self, host: str, chain_id: str, seq: int) -> list[_Link]:
        self._load(host)
        return self._links.get((host, chain_id, seq), [])

    def add(self, summary: BundleSummary) -> None:
        self._load(summary.name.host_id)
        self._links.setdefault((summary.name.host_id, summary.chain_id, summary.seq),
                               []).append(_Link(summary.manifest_key, summary.manifest_sha256))


def link_findings(chains: _MirrorChains, summary: BundleSummary) -> list[Finding]:
    """A bundle against its chain in the mirror: a second bundle at its seq (a fork),
    or a `prev` that is not the digest of the mirror's bundle at seq - 1."""
    host, key = summary.name.host_id, summary.manifest_key
    same = [link for link in chains.at(host, summary.chain_id, summary.seq)
            if link.manifest_key != key]
    if same:
        return [Finding(key, "chain_fork",
                        f"host {host} chain {summary.chain_id}: the mirror already holds "
                        f"{same[0].manifest_key} at seq {summary.seq}")]
    if summary.seq <= 1:
        return []
    before = chains.at(host, summary.chain_id, summary.seq - 1)
    if len(before) == 1 and summary.prev != before[0].manifest_sha256:
        return [Finding(key, "chain_prev_mismatch",
                        f"prev is {summary.prev}, the mirror's manifest at seq "
                        f"{summary.seq - 1} ({before[0].manifest_key}) hashes to "
                        f"{before[0].manifest_sha256}")]
    return []


# -- the pull ------------------------------------------------------------------------


@dataclass
class _Fetched:
    """One bundle downloaded and checked on its own (a worker's result)."""

    name: BundleName
    staged: Staged  # its objects in the temp area
    size: int  # bytes downloaded
    summary: BundleSummary | None
    findings: list[Finding]
    unread: bool = False  # an object of it this user may not read: not judged

    @property
    def ok(self) -> bool:
        return self.summary is not None and self.summary.ok and not any(
            f.severity == ERROR for f in self.findings)


def _list_bundles(store: Store, selection: Selection,
                  result: PullResult) -> dict[BundleName, dict[str, str]]:
    """The selected bundles in the store: name -> kind -> key."""
    found: dict[BundleName, dict[str, str]] = {}
    for prefix in selection.prefixes():
        for key in store.list(prefix):
            parsed = parse_bundle_key(key)
            if parsed is None:
                result.findings.append(Finding(key, "unexpected_object",
                                               "object key does not follow the bundle "
                                               "layout; not pulled", WARNING))
                continue
            if selection.wants(parsed[0]):
                found.setdefault(parsed[0], {})[parsed[1]] = key
    return found


def _pull_keys(store: Store, mirror: Mirror, trust_findings: list[Finding],
               result: PullResult) -> None:
    """Mirror the key folder: key documents, enrollments, rotations, revocations.
    An enrollment the organisation root does not vouch for goes to quarantine."""
    refused = {f.key: f for f in trust_findings if f.severity == ERROR}
    folder = _KeyFolder(store)
    for key in store.list(KEYS_PREFIX):
        try:
            data = folder.get(key)
        except ObjectRefused as exc:  # not a regular file, or over the cap: not kept
            unread = refused.get(key) or Finding(key, exc.code, exc.message)
            if key not in refused:
                result.findings.append(unread)
            if not mirror.is_quarantined(key):
                mirror.put_in_quarantine(key, {}, [unread])
            continue
        if key in refused:
            if not mirror.is_quarantined(key):
                mirror.put_in_quarantine(key, {key: data}, [refused[key]])
            continue
        if mirror.has(key):
            if _sha256_file(mirror.path(key)) != hashlib.sha256(data).hexdigest():
                changed = Finding(key, "store_object_changed",
                                  "the store's object differs from the one mirrored earlier; "
                                  "the mirror keeps the earlier one")
                result.findings.append(changed)
                if not mirror.is_quarantined(key):
                    mirror.put_in_quarantine(key, {key: data}, [changed])
            continue
        mirror.place(key, data)
        result.keys += 1
        result.bytes += len(data)


def pull(store: Store, mirror_dir: Path, selection: Selection,
         trusted: Mapping[str, PublicKey], org_keys: Mapping[str, PublicKey] | None,
         jobs: int = DEFAULT_JOBS, progress: Progress | None = None) -> PullResult:
    """Pull the selected bundles of `store` into the mirror at `mirror_dir`."""
    mirror = Mirror(mirror_dir)
    mirror.open(store.url, {"keys": sorted(trusted), "org": sorted(org_keys or {})},
                {k.key_id: k.pem() for k in (*trusted.values(), *(org_keys or {}).values())})
    result = PullResult(store.url, str(mirror_dir))
    trust, trust_findings = trust_for(store, trusted, org_keys, jobs)
    result.findings.extend(trust_findings)
    _pull_keys(store, mirror, trust_findings, result)

    bundles = _list_bundles(store, selection, result)
    todo: list[BundleName] = []
    for name in sorted(bundles, key=lambda n: (n.host_id, n.seq, n.collection_id)):
        kinds = bundles[name]
        if "manifest" not in kinds:
            result.findings.append(Finding(
                name.records_key if "records" in kinds else name.timestamp_key,
                "manifest_missing", "no manifest in the store (an upload in progress, or "
                "a manifest removed); not pulled", WARNING))
        elif mirror.is_quarantined(name.stem):
            result.quarantined_before += 1
        elif mirror.has(name.manifest_key):
            result.skipped += 1
        else:
            todo.append(name)

    def fetch(name: BundleName) -> _Fetched:
        staged = Staged()
        try:
            download_bundle(store, mirror, name, bundles[name], trust, staged)
            summary, findings = verify_bundle(staged, name, trust)
            return _Fetched(name, staged, staged.size(), summary, findings)
        except StoreError as exc:
            staged.release()
            if not isinstance(exc.__cause__, PermissionError):
                raise  # the store is down or full: stop, the next run continues
            # One object this user may not read (a file:// store of mixed owners):
            # say so and go on, as the rest is readable; never judged, never quarantined.
            return _Fetched(name, Staged(), 0, None, [Finding(
                name.manifest_key, UNREADABLE, f"{exc.message}; not pulled (the next pull "
                "tries again)")], unread=True)
        except BaseException:
            staged.release()
            raise

    chains = _MirrorChains(mirror)

    def settle(fetched: _Fetched) -> None:
        findings = list(fetched.findings)
        if fetched.unread:
            result.unread += 1
            result.findings.extend(findings)
            return
        if fetched.summary is not None and fetched.ok:
            findings += link_findings(chains, fetched.summary)
        if not findings or all(f.severity != ERROR for f in findings):
            placed = _place_bundle(mirror, fetched)
            if placed is None:
                assert fetched.summary is not None
                chains.add(fetched.summary)
                result.pulled += 1
                result.bytes += fetched.size
                result.findings.extend(findings)
                fetched.staged.release()
                return
            findings.append(placed)
        mirror.put_in_quarantine(fetched.name.stem, fetched.staged.files, findings)
        fetched.staged.release()
        result.quarantined += 1
        result.findings.extend(findings)

    for done, fetched in enumerate(_in_order(fetch, todo, jobs), start=1):
        settle(fetched)
        if progress is not None:
            progress(done, len(todo))
    mirror.sync()
    mirror.clear_temp()
    state = mirror.read_state()
    state["last_pull"] = {"at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                          **{k: v for k, v in result.as_dict().items() if k != "findings"}}
    mirror.write_state(state)
    return result


def download_bundle(store: Store, mirror: Mirror, name: BundleName, keys: Mapping[str, str],
                    trust: Trust, staged: Staged) -> None:
    """The bundle's objects (kind -> key) into `staged`, each capped: the manifest at
    MAX_MANIFEST_BYTES, first; the records object at the most its signed record count
    can take (`max_records_object_bytes`; one record's worth when the manifest does
    not verify under `trust`: the checks will not read it, quarantine keeps that
    much); the RFC 3161 reply at MAX_RESPONSE_BYTES."""
    def one(kind: str, limit: int, why: str = "") -> None:
        key = keys[kind]
        staged.kinds.add(kind)
        try:
            path, cut = mirror.download(store, key, limit)
        except ObjectRefused as exc:
            staged.refused[key] = exc
            return
        staged.files[key] = path
        if cut:
            staged.refused[key] = too_large(
                key, limit, f"{why}; the first {limit + 1} bytes are kept where it is "
                "quarantined")

    if "manifest" in keys:
        one("manifest", MAX_MANIFEST_BYTES)
    if "records" in keys:
        count = _signed_count(staged, name, trust)
        one("records", max_records_object_bytes(1 if count is None else count),
            " (the most a records object of 1 record can take: its manifest does not "
            "verify)" if count is None else
            f" (the most a records object of the {count} signed record(s) can take)")
    if "timestamp" in keys:
        one("timestamp", MAX_RESPONSE_BYTES)


def _signed_count(staged: Staged, name: BundleName, trust: Trust) -> int | None:
    """The record count of the bundle's manifest if it verifies under `trust`."""
    try:
        manifest = get_capped(staged, name.manifest_key, MAX_MANIFEST_BYTES)
        payload = verify_envelope(manifest, trust.keys).payload
        return parse_bundle_statement(payload).predicate.records.count
    except (GamsaError, KeyError):
        return None


def _place_bundle(mirror: Mirror, fetched: _Fetched) -> Finding | None:
    """Link a verified bundle's objects into the mirror, manifest last; a finding if the
    mirror already holds other bytes under one of its keys (then not completed)."""
    files = fetched.staged.files
    keys = {kind: key for kind in _KINDS_IN_ORDER
            if (key := getattr(fetched.name, f"{kind}_key")) in files}
    for kind, key in keys.items():
        if not mirror.link(key, files[key]):
            return Finding(key, "store_object_changed",
                           "the mirror holds other bytes under this key (pulled earlier); "
                           "the store's object changed since")
        crashpoint(f"pull: {kind} placed")
    mirror.linked_in(fetched.name.manifest_key)
    return None


def _in_order(fetch: Callable[[BundleName], _Fetched], names: list[BundleName],
              jobs: int) -> Iterator[_Fetched]:
    """`fetch` of each name, `jobs` at once, yielded in the order of `names`."""
    if jobs <= 1 or len(names) <= 1:
        yield from (fetch(name) for name in names)
        return
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="gamsa-pull") as pool:
        # A few in hand beyond the workers.
        yield from in_order(lambda name: pool.submit(fetch, name), names, jobs * 2)
