"""The shipper: moves sealed bundles from the spool to the store, in seq order.

Per bundle: the records object, then the manifest (the commit mark), each
create-only; a HEAD confirms the manifest (size, and on S3 the retention the put
asked for); only then is the spool entry removed. The agent's public key document
goes first, once per run. A crash anywhere repeats at most a put of identical
bytes, which the store treats as success, so a resumed run neither conflicts nor
duplicates. Retries (backoff with jitter, bounded) happen inside the store; an
error that outlasts them stops the run at that bundle, leaving it and every later
one in the spool.

Each run that had something to ship notes its outcome in the state dir's status
file, which `gamsa status` reads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from agent.crashpoints import crashpoint
from agent.state import SpoolEntry, StateDir
from agent.store import Store
from signing.errors import GamsaError, StoreError
from signing.keys import key_object_name

# Records bytes read into memory for uploads running ahead (one object always may).
MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024


@dataclass
class ShipReport:
    shipped: list[str] = field(default_factory=list)  # manifest keys
    remaining: int = 0


def _confirm(store: Store, key: str, size: int) -> None:
    """HEAD the object just put; raise unless it is there with the expected size."""
    info = store.head(key)
    if info is None or info.size != size:
        found = "missing" if info is None else f"{info.size} bytes"
        raise StoreError(f"store {store.url}: {key} not confirmed after upload "
                         f"({found}, expected {size} bytes)")


def _put(store: Store, key: str, data: bytes, confirm: bool) -> None:
    store.put(key, data, hashlib.sha256(data).hexdigest())
    if confirm:
        _confirm(store, key, len(data))


def ship_spool(state: StateDir, store: Store, key_id: str) -> ShipReport:
    """Ship every complete spool entry. Caller holds `state.locked()` and ran recover()."""
    report = ShipReport()
    entries = state.entries()
    if not entries:
        return report
    try:
        _put(store, key_object_name(key_id), state.key_document_bytes(), confirm=False)
        window = max(1, int(getattr(store, "concurrency", 1)))
        if window == 1:
            _ship_in_turn(state, store, entries, report)
        else:
            _ship_pipelined(state, store, entries, report, window)
    except GamsaError as exc:
        state.record_ship(store=store.url, shipped=report.shipped, error=exc.diagnostics())
        raise
    report.remaining = 0
    state.record_ship(store=store.url, shipped=report.shipped, error=None)
    return report


def _ship_in_turn(state: StateDir, store: Store, entries: list[SpoolEntry],
                  report: ShipReport) -> None:
    """One request at a time (local stores)."""
    for index, entry in enumerate(entries):
        report.remaining = len(entries) - index
        # The records object is confirmed by the put itself (the store checks our
        # SHA-256); the manifest, the commit mark, also by a HEAD.
        _put(store, entry.name.records_key, entry.records_path.read_bytes(), confirm=False)
        crashpoint("records shipped")
        _put(store, entry.name.manifest_key, entry.manifest_path.read_bytes(), confirm=True)
        crashpoint("manifest shipped")
        state.remove_entry(entry)
        report.shipped.append(entry.name.manifest_key)


def _ship_pipelined(state: StateDir, store: Store, entries: list[SpoolEntry],
                    report: ShipReport, window: int) -> None:
    """Network stores: the same order of commits, with the waiting overlapped.

    Records objects of the next `window` bundles upload in parallel. Manifests are
    put one at a time in seq order, each only after its own records object is
    stored and the previous manifest's put succeeded, so the store always holds a
    gap-free prefix of the chain's manifests. The HEAD confirming a manifest and
    the removal of its spool entry run in parallel with the next puts; an entry
    is removed only after its manifest is confirmed.
    """
    with ThreadPoolExecutor(max_workers=window, thread_name_prefix="gamsa-ship") as pool:
        uploads: dict[int, Future[None]] = {}
        confirms: list[tuple[SpoolEntry, Future[None]]] = []
        sizes = [entry.records_path.stat().st_size for entry in entries]
        queued = 0

        def put_records(entry: SpoolEntry) -> None:
            _put(store, entry.name.records_key, entry.records_path.read_bytes(), False)

        def fill() -> None:
            """Start records uploads ahead, within the window and the byte budget."""
            nonlocal queued
            while queued < len(entries) and len(uploads) < window:
                in_flight = sum(sizes[i] for i in uploads)
                if uploads and in_flight + sizes[queued] > MAX_IN_FLIGHT_BYTES:
                    break
                uploads[queued] = pool.submit(put_records, entries[queued])
                queued += 1

        def confirm(entry: SpoolEntry, manifest: bytes) -> None:
            _confirm(store, entry.name.manifest_key, len(manifest))
            state.remove_entry(entry)

        def collect_confirmed(block: bool) -> None:
            while confirms and (block or confirms[0][1].done()):
                entry, done = confirms.pop(0)
                done.result()
                report.shipped.append(entry.name.manifest_key)

        try:
            fill()
            for index, entry in enumerate(entries):
                report.remaining = len(entries) - index
                uploads.pop(index).result()
                fill()
                crashpoint("records shipped")
                manifest = entry.manifest_path.read_bytes()
                _put(store, entry.name.manifest_key, manifest, confirm=False)  # HEAD below
                crashpoint("manifest shipped")
                confirms.append((entry, pool.submit(confirm, entry, manifest)))
                collect_confirmed(block=False)
            collect_confirmed(block=True)
        except BaseException:
            for future in uploads.values():
                future.cancel()
            for _, future in confirms:
                future.cancel()
            # Let the puts and confirmations already running finish, so the report
            # names every entry that was removed from the spool.
            wait([*uploads.values(), *(f for _, f in confirms)])
            for entry, future in confirms:
                if not future.cancelled() and future.exception() is None:
                    report.shipped.append(entry.name.manifest_key)
            raise


def _age_seconds(timestamp: str, now: dt.datetime) -> int | None:
    try:
        then = dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return max(0, int((now - then).total_seconds()))


def agent_status(state: StateDir, store_url: str, max_bytes: int,
                 now: dt.datetime | None = None) -> dict[str, Any]:
    """What `gamsa status` shows, with `problems`: reasons to exit non-zero.

    Problems: the spool is over its cap (new bundles hold only a `spool_full`
    record), or the last ship run failed.
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
        "chain": None if head is None else {"id": head.chain_id, "seq": head.seq,
                                            "key_id": head.key_id,
                                            "finished_at": head.finished_at},
        "last_success": status.get("last_success"),
        "last_error": last_error,
        "last_result": status.get("last_result"),
        "failing_since": status.get("failing_since"),
    }
