"""The shipper: moves sealed bundles from the spool to the store, in seq order.

Per bundle: the records object, then the manifest (the commit mark), each
create-only; each put is checked by the store against its own answer (on S3 the
checksum it reports and, with Object Lock, the version it names), and only then is
the spool entry removed. A HEAD confirms a sample of the manifests, the first of
every run and then one in `store.confirm_every` (size, checksum, and on S3 the
retention the put asked for: the sample is there for S3-compatible servers that
ignore lock headers). A sample that does not confirm stops the run with one error
line naming the object and what the store reported: that entry and every later
one stay in the spool, and since the first manifest of a run is sampled before
any entry is removed, a store that does not lock what it is given empties no
spool at all. Before its records
object is stored, the spooled records file is hashed and compared with the digest
its signed manifest names: bytes that changed in the spool (disk fault, tampering)
are never stored. Such an entry is quarantined (moved whole to the state dir's
`quarantine/`, with the reason) after its manifest alone is committed, so the store
shows that bundle as signed with its records missing, `gamsa status` reports it
until someone removes it, and the chain after it ships on (an entry whose manifest
itself is unreadable is quarantined without committing anything: a gap in the
chain). The agent's public key document (with its enrollments) goes before the
first manifest, once per run. A crash anywhere repeats at most a put of identical
bytes, which the store treats as success, so a resumed run neither conflicts nor duplicates.
Retries (backoff with jitter, bounded) happen inside the store; an error that
outlasts them stops the run at that bundle, leaving it and every later one in the
spool.

Each run that had something to ship notes its outcome in the state dir's status
file, which `gamsa status` reads.
"""

from __future__ import annotations

import binascii
import datetime as dt
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from agent.chainguard import (
    divergence_problems,
    quarantine_forks,
    read_divergence,
    spool_forks,
)
from agent.config import TimestampConfig
from agent.crashpoints import crashpoint
from agent.daemon_status import daemon_state
from agent.enroll import publish_enrollments
from agent.rotate import publish_rotations
from agent.state import SpoolEntry, StateDir, spooled_statement
from agent.store import DigestMismatchError, Store, confirm, put_file
from agent.timestamp import (
    TimestampReport,
    add_timestamps,
    note_shipped,
    timestamp_problem,
    timestamp_status,
)
from signing.clock import parse_time
from signing.errors import GamsaError
from signing.keys import key_object_name

# Records bytes read into memory for uploads running ahead (one object always may).
MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024
QUARANTINE_HINT = ("investigate (disk fault, tampering, or a restored or copied state), "
                   "then remove it; "
                   "`gamsa status` reports it until then")


@dataclass
class ShipReport:
    shipped: list[str] = field(default_factory=list)  # manifest keys
    confirmed: list[str] = field(default_factory=list)  # manifest keys confirmed by a HEAD
    remaining: int = 0
    quarantined: list[str] = field(default_factory=list)  # one line each: where and why
    status_problem: str | None = None  # the status file could not be written
    timestamps: TimestampReport | None = None  # with a TSA configured


@dataclass(frozen=True)
class _Staged:
    """A bundle ready to commit: its records object stored, or, if `problem` says
    why not, a spool entry to quarantine (after its manifest, if `commit`)."""

    entry: SpoolEntry
    manifest: bytes
    sha256: str
    problem: str | None = None
    commit: bool = True


class _UnreadableManifest(Exception):
    """A spooled manifest that does not parse or does not name its records object."""


def _signed_records_digest(entry: SpoolEntry, manifest: bytes) -> str:
    """The records digest the spooled manifest signs (its subject), checked to name
    this bundle's records object. The signature itself is checked by `verify`."""
    try:
        statement = spooled_statement(manifest)
    except (GamsaError, binascii.Error, ValueError) as exc:
        detail = exc.message if isinstance(exc, GamsaError) else str(exc)
        raise _UnreadableManifest(f"the manifest is unreadable ({detail})") from exc
    if statement.subject_name != entry.name.records_key:
        raise _UnreadableManifest(f"the manifest signs {statement.subject_name!r}, "
                                  f"not {entry.name.records_key!r}")
    return statement.subject_sha256


def _store_records(store: Store, entry: SpoolEntry) -> _Staged:
    """Store the records object, verified against its signed manifest; the manifest.

    Bytes that do not match are not stored: the entry comes back with a problem.
    """
    manifest = entry.manifest_path.read_bytes()
    sha256 = hashlib.sha256(manifest).hexdigest()
    try:
        expected = _signed_records_digest(entry, manifest)
    except _UnreadableManifest as exc:
        return _Staged(entry, manifest, sha256, f"{exc}; nothing of it was stored",
                       commit=False)
    try:
        put_file(store, entry.name.records_key, entry.records_path, expected)
    except DigestMismatchError as exc:
        return _Staged(entry, manifest, sha256,
                       f"the records file hashes to {exc.actual}, not to the "
                       f"{exc.expected} its signed manifest names; only the manifest "
                       f"was stored")
    return _Staged(entry, manifest, sha256)


@dataclass
class _Sampler:
    """Which committed manifests a HEAD confirms: the first of the run, then one in
    `every` (1: each)."""

    every: int
    committed: int = 0

    def due(self) -> bool:
        due = self.committed % self.every == 0
        self.committed += 1
        return due


def _commit(store: Store, staged: _Staged) -> None:
    """The manifest put: the commit mark of its bundle."""
    if staged.commit:
        store.put(staged.entry.name.manifest_key, staged.manifest, staged.sha256)


def _confirm_sampled(store: Store, staged: _Staged, sampler: _Sampler,
                     report: ShipReport) -> None:
    """HEAD the manifest just committed if it is one the sample takes; raise
    (`NotConfirmedError`) if the store does not hold it as it was put."""
    if staged.commit and sampler.due():
        key = staged.entry.name.manifest_key
        confirm(store, key, len(staged.manifest), staged.sha256)
        report.confirmed.append(key)


def _remove(state: StateDir, staged: _Staged, stamp: bool = False) -> None:
    """Drop the committed entry from the spool, or quarantine it. With `stamp`, the
    manifest is first noted for a TSA token (agent/timestamp.py)."""
    if staged.commit and stamp:
        note_shipped(state.root, staged.entry.name.manifest_key, staged.sha256)
    if staged.problem is None:
        state.remove_entry(staged.entry)
    else:
        state.quarantine_entry(staged.entry, staged.problem)


def _note(report: ShipReport, state: StateDir, staged: _Staged) -> None:
    """Count a bundle whose removal from the spool (or quarantine) finished."""
    if staged.problem is None:
        report.shipped.append(staged.entry.name.manifest_key)
    else:
        report.quarantined.append(f"{state.quarantine / staged.entry.path.name}: "
                                  f"{staged.problem}")


def _put_key_document(state: StateDir, store: Store, key_id: str) -> None:
    data = state.key_document_bytes()
    store.put(key_object_name(key_id), data, hashlib.sha256(data).hexdigest())
    publish_enrollments(state, store)  # its signed enrollments, beside it
    publish_rotations(state, store, key_id)  # and how it took over from the key before


def ship_spool(state: StateDir, store: Store, key_id: str,
               timestamp: TimestampConfig | None = None) -> ShipReport:
    """Ship every complete spool entry. Caller holds `state.locked()` and ran recover().

    The store's `confirm_every` (from `store.confirm_every`; 1 where a store has
    none) sets how many committed manifests there are per HEAD. With a TSA
    configured (`timestamp.url`), each committed manifest then gets its token, and
    those a down TSA left without one are retried (agent/timestamp.py).
    """
    report = ShipReport()
    entries = state.entries()
    stamp = timestamp is not None and bool(timestamp.url)
    if not entries:
        if stamp and timestamp is not None:
            try:
                report.timestamps = add_timestamps(state.root, store, timestamp)
            except GamsaError as exc:
                state.record_ship(store=store.url, shipped=[], error=exc.diagnostics())
                raise
        return report
    try:
        # Never put a second manifest at a seq the store holds (restored or copied state).
        forks, after = spool_forks(store, entries)
        if forks:
            report.quarantined.extend(quarantine_forks(state, forks, after, state.read_head()))
            gone = {f.entry.path for f in forks} | {e.path for e in after}
            entries = [e for e in entries if e.path not in gone]
        window = max(1, int(getattr(store, "concurrency", 1)))
        sampler = _Sampler(max(1, int(getattr(store, "confirm_every", 1))))
        if window == 1:
            _put_key_document(state, store, key_id)
            _ship_in_turn(state, store, entries, report, sampler, stamp)
        else:
            _ship_pipelined(state, store, key_id, entries, report, window, sampler, stamp)
        if stamp and timestamp is not None:
            report.timestamps = add_timestamps(state.root, store, timestamp)
    except GamsaError as exc:
        state.record_ship(store=store.url, shipped=report.shipped, error=exc.diagnostics())
        raise
    report.remaining = 0
    report.status_problem = state.record_ship(store=store.url, shipped=report.shipped,
                                              error=None)
    return report


def _ship_in_turn(state: StateDir, store: Store, entries: list[SpoolEntry],
                  report: ShipReport, sampler: _Sampler, stamp: bool) -> None:
    """One request at a time (local stores)."""
    for index, entry in enumerate(entries):
        report.remaining = len(entries) - index
        staged = _store_records(store, entry)
        crashpoint("records shipped")
        _commit(store, staged)
        crashpoint("manifest shipped")
        _confirm_sampled(store, staged, sampler, report)
        _remove(state, staged, stamp)
        _note(report, state, staged)


def _ship_pipelined(state: StateDir, store: Store, key_id: str, entries: list[SpoolEntry],
                    report: ShipReport, window: int, sampler: _Sampler,
                    stamp: bool) -> None:
    """Network stores: the same order of commits, with the waiting overlapped.

    The commit chain, in this thread, is one manifest put after another, in seq
    order, each only after its own records object is stored and the previous
    manifest's put succeeded, so the store always holds a gap-free prefix of the
    chain's manifests; between two of them this thread only HEADs the sampled
    ones (the run's first before any entry leaves the spool). Around it:
    `window` workers store the records objects of the bundles ahead (each
    verified against its signed manifest first, which they also read and hash for
    the commit), and one remover drops the committed entries from the spool, in
    order. The key document is stored before the first manifest.
    """
    with ThreadPoolExecutor(max_workers=window, thread_name_prefix="gamsa-ship") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="gamsa-remove") as remover:
        key_document = pool.submit(_put_key_document, state, store, key_id)
        uploads: dict[int, Future[_Staged]] = {}
        removals: list[tuple[_Staged, Future[None]]] = []
        sizes = [entry.records_path.stat().st_size for entry in entries]
        queued = 0

        def fill() -> None:
            """Start records uploads ahead, within the window and the byte budget."""
            nonlocal queued
            while queued < len(entries) and len(uploads) < window:
                in_flight = sum(sizes[i] for i in uploads)
                if uploads and in_flight + sizes[queued] > MAX_IN_FLIGHT_BYTES:
                    break
                uploads[queued] = pool.submit(_store_records, store, entries[queued])
                queued += 1

        def collect_removed(block: bool) -> None:
            while removals and (block or removals[0][1].done()):
                staged, done = removals.pop(0)
                done.result()
                _note(report, state, staged)

        try:
            fill()
            key_document.result()
            for index in range(len(entries)):
                report.remaining = len(entries) - index
                staged = uploads.pop(index).result()
                crashpoint("records shipped")
                _commit(store, staged)
                crashpoint("manifest shipped")
                _confirm_sampled(store, staged, sampler, report)
                removals.append((staged, remover.submit(_remove, state, staged, stamp)))
                fill()
                collect_removed(block=False)
            collect_removed(block=True)
        except BaseException:
            unstarted: list[Future[Any]] = [key_document, *uploads.values()]
            for future in unstarted:
                future.cancel()
            # Let the puts already running finish, and the removals of committed
            # entries (each put was checked), so the report names every entry
            # that was removed from the spool.
            wait([*unstarted, *(done for _, done in removals)])
            for staged, done in removals:
                if not done.cancelled() and done.exception() is None:
                    _note(report, state, staged)
            raise


def _age_seconds(timestamp: str, now: dt.datetime) -> int | None:
    then = parse_time(timestamp)
    if then is None:
        return None
    return max(0, int((now - then).total_seconds()))


def agent_status(state: StateDir, store_url: str, max_bytes: int,
                 now: dt.datetime | None = None,
                 timestamp: TimestampConfig | None = None) -> dict[str, Any]:
    """What `gamsa status` shows, with `problems`: reasons to exit non-zero.

    Problems: the spool is over its cap (new bundles hold only a `spool_full`
    record), an entry is quarantined, or the last ship run failed.
    """
    now = now or dt.datetime.now(dt.UTC)
    entries = state.entries()
    usage = state.usage(max_bytes, entries) if entries else None
    oldest_at = entries[0].sealed_at() if entries else None
    head = state.read_head()
    status = state.read_status()
    problems: list[str] = []
    spool_bytes = usage.bytes if usage else 0
    if usage is not None and usage.over_cap:
        problems.append(f"spool over its cap: {usage.bytes} bytes in {usage.bundles} "
                        f"bundle(s), cap {max_bytes} (spool.max_bytes); new collections "
                        f"seal only a spool_full record until shipping catches up")
    quarantined = state.quarantined()
    for path, reason in quarantined:
        problems.append(f"spool entry quarantined in {path}: {reason} ({QUARANTINE_HINT})")
    problems.extend(divergence_problems(state))
    stamps = timestamp_status(state.root, timestamp or TimestampConfig())
    if (waiting := timestamp_problem(stamps)) is not None:
        problems.append(waiting)
    last_error = status.get("last_error")
    if status.get("last_result") == "error" and isinstance(last_error, dict):
        problems.append(f"last ship failed at {last_error.get('at')}: "
                        f"{last_error.get('message')}")
    return {
        "ok": not problems,
        "problems": problems,
        "state_dir": str(state.root),
        "store": store_url,
        "spool": {"bundles": len(entries), "bytes": spool_bytes, "max_bytes": max_bytes,
                  "over_cap": bool(usage and usage.over_cap),
                  "oldest": entries[0].name.manifest_key if entries else None,
                  "oldest_sealed_at": oldest_at,
                  "oldest_age_seconds": _age_seconds(oldest_at, now) if oldest_at else None},
        "quarantined": [{"path": str(path), "reason": reason} for path, reason in quarantined],
        "divergence": read_divergence(state),
        "timestamps": stamps,
        "chain": None if head is None else {"id": head.chain_id, "seq": head.seq,
                                            "key_id": head.key_id,
                                            "finished_at": head.finished_at},
        "last_success": status.get("last_success"),
        "last_error": last_error,
        "last_result": status.get("last_result"),
        "failing_since": status.get("failing_since"),
        "daemon": daemon_state(state.root),
    }
