"""The agent's state directory: key, chain head, spool, and the lock guarding them.

Layout under `state_dir` (docs/OPERATIONS.md):

    lock                      flock(2) held while sealing or shipping
    keys/agent.key            Ed25519 private key, PKCS#8 PEM, 0600
    keys/agent.json           its public key document (shipped to v1/keys/)
    chain.json                chain head: id, seq, manifest sha256, finished_at, key_id
    status.json               the shipper's last success and last error (`gamsa status`)
    daemon.json, daemon.lock  the daemon's report and its life-long flock (agent/daemon*.py)
    lifelog*.jsonl            the agent's own life events (agent/lifelog.py, collector/agent.py)
    checkpoints.json          collector checkpoints (log offsets) of the sealed head
    checkpoints.next.json     checkpoints of a bundle being sealed; promoted once the
                              head names that bundle, discarded otherwise
    cache/                    collector caches (e.g. executable hashes); safe to delete
    egress/open.json          the AI-egress watcher's open window (collector/_egress.py)
    egress/open.log           new connections since open.json was written (its journal)
    egress/batch-<n>.json     closed windows the ai_egress collector seals next
    spool/<seq>-<cid>/        sealed bundles not yet confirmed by the store
    spool/.tmp-*              a bundle being written (discarded on recovery)
    spool/.done-*             a shipped bundle being removed (removed on recovery)

The order of writes makes every crash safe: a bundle is complete in the spool
(temp dir, fsync, rename) before the head moves; a head that lags behind the
spool is advanced from it on the next start (`recover`), so the chain never forks.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.crashpoints import crashpoint
from agent.fsutil import (
    failing,
    fsync_dir,
    make_private_dirs,
    replace_atomic,
    write_all,
    write_new_file,
)
from collector.record import Record, from_epoch, utc_now
from collector.registry import CollectContext, Collector
from signing.bundle import BundleName, manifest_sha256
from signing.dsse import parse_envelope
from signing.errors import GamsaError, os_error
from signing.keys import (
    PublicKey,
    Signer,
    key_document,
    load_or_create_signer,
    load_private_key,
)
from signing.pkcs11_uri import redact
from signing.predicate import BundleStatement, parse_bundle_statement
from signing.signer import load_or_create_signer as load_or_create_signer_uri
from signing.signer import load_signer

RECORDS_FILE = "records.jsonl.gz"
MANIFEST_FILE = "manifest.dsse.json"
QUARANTINE_REASON_FILE = "quarantine-reason.txt"
BUNDLE_FILE = "bundle.json"
STATUS_FILE = "status.json"


@dataclass(frozen=True)
class ChainHead:
    """The last sealed bundle of this agent's chain."""

    chain_id: str
    seq: int
    manifest_sha256: str
    finished_at: str
    key_id: str


def _entry_size(path: Path) -> int:
    """Bytes of a spool entry's files."""
    with failing("read the spool entry", path):
        return sum(p.stat().st_size for p in path.iterdir())


@dataclass(frozen=True)
class SpoolEntry:
    """A sealed bundle waiting in the spool."""

    path: Path
    name: BundleName

    @property
    def records_path(self) -> Path:
        return self.path / RECORDS_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    def size(self) -> int:
        return _entry_size(self.path)

    def sealed_at(self) -> str:
        """When the bundle's collection finished (from its own manifest)."""
        return spooled_statement(self.manifest_path.read_bytes()).predicate.collection.finished_at


@dataclass(frozen=True)
class SpoolUsage:
    """How much sealed evidence waits in the spool."""

    bundles: int
    bytes: int
    max_bytes: int

    @property
    def over_cap(self) -> bool:
        return self.bytes > self.max_bytes


class StateDir:
    """Access to one state directory. Use `locked()` around anything that writes."""

    def __init__(self, root: Path, agent_key: str = "") -> None:
        self.root = root
        # `[keys] agent`: a signer URI (a token key); "" = the key file below.
        self.agent_key = agent_key
        self.spool = root / "spool"
        self.quarantine = root / "quarantine"
        self.keys = root / "keys"
        self.key_path = self.keys / "agent.key"
        self.key_doc_path = self.keys / "agent.json"
        self.chain_path = root / "chain.json"
        self.checkpoints_path = root / "checkpoints.json"
        self.next_checkpoints_path = root / "checkpoints.next.json"
        self.cache = root / "cache"

    def ensure(self) -> None:
        """Create the directory tree (0700: it holds the private key)."""
        for path in (self.root, self.spool, self.keys):
            if path.exists() and not path.is_dir():
                raise GamsaError(f"state_dir: {path} exists and is not a directory",
                                 hint="move it away")
            with failing("create the state directory", path):
                make_private_dirs(path)

    @contextlib.contextmanager
    def locked(self, give_up: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold the state lock (blocks while another gamsa seals or ships).

        With `give_up`, the wait is a poll that raises LockAbandoned once it returns
        True (a stopping daemon must not wait out another process's long ship)."""
        self.ensure()
        lock = self.root / "lock"
        with failing("open the state lock", lock):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with failing("take the state lock", lock):
                if give_up is None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                else:
                    _poll_lock(fd, lock, give_up)
            yield
        finally:
            os.close(fd)

    # keys ---------------------------------------------------------------------

    @property
    def key_name(self) -> str:
        """Where the agent key is, for messages: the key file or the signer URI."""
        return redact(self.agent_key) if self.agent_key else str(self.key_path)

    def has_key(self) -> bool:
        """True when an agent key may exist: a configured signer URI, or the key file."""
        return bool(self.agent_key) or self.key_path.exists()

    def public_key(self) -> PublicKey:
        """The agent's public key, without creating a key."""
        if self.agent_key:
            return load_signer(self.agent_key).public_key()
        return PublicKey.from_key(load_private_key(self.key_path).public_key())

    def signer(self, host_id: str, create: bool | None = None) -> tuple[Signer, bool]:
        """The agent's signer and whether this call created its key.

        The state dir's key file is generated on first use; a key named by `[keys]
        agent` is generated only when `create` is true (`gamsa keys init`): sealing
        never makes a token key, so a mistyped label fails instead of forking a chain.
        """
        self.ensure()
        signer: Signer
        if self.agent_key:
            if create:
                signer, created = load_or_create_signer_uri(self.agent_key)
            else:
                signer, created = load_signer(self.agent_key), False
        else:
            signer, created = load_or_create_signer(self.key_path)
        if created:
            crashpoint("key created")
        if not self._key_doc_is_of(signer.key_id):
            # created_at comes from the key file, not the clock: a document rebuilt after
            # loss must be byte-identical to the one already in the create-only store.
            # A token key has no file: its document is dated when first written here.
            with failing("write the public key document", self.key_doc_path):
                created_at = (utc_now() if self.agent_key
                              else from_epoch(self.key_path.stat().st_mtime))
                doc = key_document(signer.public_key(), host_id, created_at)
                replace_atomic(self.key_doc_path, json.dumps(doc, sort_keys=True).encode(),
                               0o644)
        return signer, created

    def _key_doc_is_of(self, key_id: str) -> bool:
        """True when the state dir's key document is that of `key_id`.

        False when it is absent, or names another key: `[keys] agent` now points at a
        different key (moved to a token), and the document must follow the key.
        """
        try:
            doc = json.loads(self.key_doc_path.read_bytes())
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            return True  # unreadable: leave it for the reader that reports it
        return not isinstance(doc, dict) or doc.get("key_id") == key_id

    def key_document_bytes(self) -> bytes:
        with failing("read the public key document", self.key_doc_path):
            return self.key_doc_path.read_bytes()

    # chain head ---------------------------------------------------------------

    def read_head(self) -> ChainHead | None:
        try:
            raw = self.chain_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise os_error(exc, self.chain_path, "read the chain head") from exc
        try:
            return ChainHead(**json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise GamsaError(f"{self.chain_path}: chain state is unreadable ({exc})",
                             hint="move it aside to start a new chain; the verifier will "
                                  "show the new genesis") from exc

    def write_head(self, head: ChainHead) -> None:
        with failing("write the chain head", self.chain_path):
            replace_atomic(self.chain_path, json.dumps(asdict(head), sort_keys=True).encode())

    # collector checkpoints ------------------------------------------------------

    def load_checkpoints(self, head: ChainHead | None) -> dict[str, Any]:
        """The checkpoints that belong to the sealed head (after `recover`)."""
        with failing("read the collector checkpoints", self.checkpoints_path):
            return self._load_checkpoints(head)

    def _load_checkpoints(self, head: ChainHead | None) -> dict[str, Any]:
        try:
            pending = json.loads(self.next_checkpoints_path.read_bytes())
        except FileNotFoundError:
            pending = None
        if pending is not None:
            if head is not None and pending.get("manifest_sha256") == head.manifest_sha256:
                os.replace(self.next_checkpoints_path, self.checkpoints_path)
            else:
                self.next_checkpoints_path.unlink()  # its bundle was never sealed
            fsync_dir(self.root)
        try:
            values: dict[str, Any] = json.loads(self.checkpoints_path.read_bytes())["values"]
        except FileNotFoundError:
            return {}
        return values

    def stage_checkpoints(self, values: dict[str, Any], manifest_digest: str) -> None:
        """Write the checkpoints of a bundle about to be spooled (promoted on load)."""
        data = {"manifest_sha256": manifest_digest, "values": values}
        with failing("write the collector checkpoints", self.next_checkpoints_path):
            replace_atomic(self.next_checkpoints_path,
                           json.dumps(data, sort_keys=True).encode())

    def discard_staged_checkpoints(self) -> None:
        """Drop checkpoints staged for a bundle that was not sealed after all."""
        with failing("remove the staged checkpoints", self.next_checkpoints_path):
            self.next_checkpoints_path.unlink(missing_ok=True)

    def commit_checkpoints(self) -> None:
        """After the head moved: make the staged checkpoints the current ones."""
        if self.next_checkpoints_path.exists():
            with failing("commit the collector checkpoints", self.checkpoints_path):
                os.replace(self.next_checkpoints_path, self.checkpoints_path)
                fsync_dir(self.root)

    # spool --------------------------------------------------------------------

    def entries(self, after_seq: int = 0) -> list[SpoolEntry]:
        """Complete spool entries in seq order (only those past `after_seq`: judged by the
        entry's name, so a seal does not read every spooled entry's metadata)."""
        if not self.spool.is_dir():
            return []
        found: list[SpoolEntry] = []
        for path in self.spool.iterdir():
            if path.name.startswith("."):
                continue
            named_seq = path.name[:10]
            if after_seq and named_seq.isdigit() and int(named_seq) <= after_seq:
                continue
            try:
                meta = json.loads((path / BUNDLE_FILE).read_bytes())
                name = BundleName(meta["host_id"], meta["date"], int(meta["seq"]),
                                  meta["collection_id"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise GamsaError(f"spool entry {path} is unreadable ({exc})",
                                 hint="it is kept untouched; report this") from exc
            found.append(SpoolEntry(path, name))
        found.sort(key=lambda e: (e.name.seq, e.path.name))
        return found

    def usage(self, max_bytes: int, entries: list[SpoolEntry] | None = None) -> SpoolUsage:
        """Bundles and bytes in the spool (or in `entries`), against the configured cap.
        The spool's own count needs no entry's metadata: a seal asks on every bundle."""
        if entries is None:
            if not self.spool.is_dir():
                return SpoolUsage(0, 0, max_bytes)
            with failing("read the spool", self.spool):
                paths = [p for p in self.spool.iterdir() if not p.name.startswith(".")]
            return SpoolUsage(len(paths), sum(_entry_size(p) for p in paths), max_bytes)
        return SpoolUsage(len(entries), sum(e.size() for e in entries), max_bytes)

    # ship status ------------------------------------------------------------------

    @property
    def status_path(self) -> Path:
        return self.root / STATUS_FILE

    def read_status(self) -> dict[str, Any]:
        """The shipper's status file ({} before the first ship or if unreadable)."""
        try:
            status = json.loads(self.status_path.read_bytes())
        except (OSError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}

    def record_ship(self, *, store: str, shipped: list[str], error: str | None) -> str | None:
        """Note a ship run's outcome in the status file (atomic; best effort: returns
        the one-line problem when it could not be written, for a warning).

        `last_result` is "ok" or "error"; `last_success` / `last_error` keep the
        latest of each, so `gamsa status` can say since when shipping fails.
        """
        status = self.read_status()
        now = utc_now()
        if error is None:
            status["last_result"] = "ok"
            status["last_success"] = {"at": now, "store": store, "bundles": len(shipped)}
            status["failing_since"] = None
        else:
            status["last_result"] = "error"
            status["last_error"] = {"at": now, "store": store, "message": error}
            status["failing_since"] = status.get("failing_since") or now
        try:
            with failing("write the ship status", self.status_path):
                replace_atomic(self.status_path, json.dumps(status, sort_keys=True).encode(),
                               0o644)
        except GamsaError as exc:  # a report: never fail a ship (or hide its error) on it
            return f"{exc.diagnostics()}; `gamsa status` shows an older outcome"
        return None

    def begin_bundle(self, name: BundleName) -> PendingBundle:
        """Start writing a bundle into the spool: a temp dir `.tmp-<seq>-<cid>` whose
        records file is open for the records as they stream (`PendingBundle`).

        The temp dir is never read as an entry; `recover` removes it. An OS error
        (no space, ...) is one GamsaError naming the spool, and removes it at once.
        """
        self.ensure()
        pending = PendingBundle(self.spool, name)
        pending.open()
        return pending

    def quarantine_entry(self, entry: SpoolEntry, reason: str) -> Path:
        """Move an entry whose records do not match its signed manifest out of the
        spool, kept whole for investigation, with `reason` beside it (atomic rename)."""
        with failing("quarantine the spool entry", entry.path):
            return self._quarantine_entry(entry, reason)

    def _quarantine_entry(self, entry: SpoolEntry, reason: str) -> Path:
        self.quarantine.mkdir(mode=0o700, exist_ok=True)
        (entry.path / QUARANTINE_REASON_FILE).write_text(reason + "\n", encoding="utf-8")
        crashpoint("quarantine reason written")
        target = self.quarantine / entry.path.name
        os.rename(entry.path, target)
        fsync_dir(self.spool)
        fsync_dir(self.quarantine)
        return target

    def quarantined(self) -> list[tuple[Path, str]]:
        """Quarantined entries and why, oldest name first."""
        if not self.quarantine.is_dir():
            return []
        found = []
        for path in sorted(self.quarantine.iterdir()):
            try:
                reason = (path / QUARANTINE_REASON_FILE).read_text(encoding="utf-8").strip()
            except OSError:
                reason = "reason not recorded"
            found.append((path, reason))
        return found

    def remove_entry(self, entry: SpoolEntry) -> None:
        """Drop a shipped entry: rename to .done-* (atomic), then delete."""
        done = self.spool / f".done-{entry.path.name}"
        with failing("remove the shipped spool entry", entry.path):
            os.rename(entry.path, done)
            fsync_dir(self.spool)
            crashpoint("spool entry marked done")
            shutil.rmtree(done)

    def sweep_stray_temp_files(self) -> int:
        """Remove the named temp files (`.tmp-*`) a kill left in the state dir and its
        egress dir, between linking a finished temp and renaming it over its target
        (agent/fsutil.py `replace_atomic`). Only for the daemon at start, holding
        daemon.lock and the state lock: then no other writer of these files runs.
        Returns how many were removed."""
        removed = 0
        for directory in (self.root, self.root / "egress"):
            try:
                entries = list(directory.iterdir())
            except OSError:
                continue
            for path in entries:
                if path.name.startswith(".tmp-") and path.is_file() and not path.is_symlink():
                    with contextlib.suppress(OSError):
                        path.unlink()
                        removed += 1
        return removed

    def recover(self) -> ChainHead | None:
        """Clean up after a crash and return the chain head.

        Discards half-written bundles (`.tmp-*`: never sealed, the head never
        moved past them), finishes removing shipped ones (`.done-*`), and moves the
        head forward over complete spool entries that were written but whose head
        update was lost.
        """
        self.ensure()
        with failing("clean up the spool", self.spool):
            for path in self.spool.iterdir():
                if path.name.startswith((".tmp-", ".done-")):
                    shutil.rmtree(path)
        head = self.read_head()
        for entry in self.entries(after_seq=0 if head is None else head.seq):
            if entry.name.seq != (1 if head is None else head.seq + 1):
                continue  # cannot follow the head; skip without reading its manifest
            with failing("read the spooled manifest", entry.manifest_path):
                manifest = entry.manifest_path.read_bytes()
            try:
                predicate = spooled_statement(manifest).predicate
            except (GamsaError, ValueError):
                continue  # not a manifest the head can follow; the shipper quarantines it
            chain = predicate.chain
            if predicate.agent is None:
                continue  # names no key: not one this agent sealed
            follows = (
                (head is None and chain.seq == 1 and chain.prev is None)
                or (head is not None and chain.id == head.chain_id
                    and chain.seq == head.seq + 1 and chain.prev == head.manifest_sha256)
            )
            if follows:
                head = ChainHead(chain.id, chain.seq, manifest_sha256(manifest),
                                 predicate.collection.finished_at, predicate.agent.key_id)
                self.write_head(head)
        return head


class LockAbandoned(GamsaError):
    """The state lock was not taken: the caller gave up waiting for it."""


LOCK_POLL_SECONDS = 0.1


def _poll_lock(fd: int, lock: Path, give_up: Callable[[], bool]) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if give_up():
                raise LockAbandoned(f"gave up waiting for the state lock {lock}: another "
                                    f"gamsa process holds it") from None
            time.sleep(LOCK_POLL_SECONDS)


def spooled_statement(manifest: bytes) -> BundleStatement:
    """The statement of one of our own spooled manifests (signature not checked).

    Raises GamsaError, binascii.Error or ValueError on bytes that are not one.
    """
    envelope = parse_envelope(manifest)
    return parse_bundle_statement(base64.b64decode(envelope["payload"]))



class PendingBundle:
    """A bundle on its way into the spool (`StateDir.begin_bundle`): write its records,
    `records_done`, then `commit` the manifest, or `discard` it.

    The order makes every crash safe: the records file and the manifest are fsync'd
    in the temp dir, which is then renamed into place (atomic) before the chain head
    moves; a temp dir left by a crash or a failure is removed by `recover`.
    """

    def __init__(self, spool: Path, name: BundleName) -> None:
        self.spool = spool
        self.name = name
        self.temp = spool / f".tmp-{name.seq:010d}-{name.collection_id}"
        self.final = spool / f"{name.seq:010d}-{name.collection_id}"
        self._fd: int | None = None

    def open(self) -> None:
        try:
            self.temp.mkdir(mode=0o700)
            self._fd = os.open(self.temp / RECORDS_FILE,
                               os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            self.discard()
            raise os_error(exc, self.spool, "write the bundle to the spool") from exc
        crashpoint("spool temp dir made")

    def write_records(self, data: bytes) -> None:
        """Append bytes of the records object (in order; one thread at a time)."""
        if self._fd is None:
            raise GamsaError(f"{self.temp}: records written after records_done (a bug)")
        with failing("write the bundle to the spool", self.spool):
            write_all(self._fd, data)
        crashpoint("spool records part written")

    def records_done(self) -> None:
        """The records object is complete: make it durable and close it."""
        if self._fd is None:
            raise GamsaError(f"{self.temp}: records_done twice (a bug)")
        fd, self._fd = self._fd, None
        try:
            with failing("write the bundle to the spool", self.spool):
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except GamsaError:
            self.discard()
            raise
        crashpoint(f"spool {RECORDS_FILE} written")

    def commit(self, manifest: bytes) -> SpoolEntry:
        """Add the manifest and rename the entry into place. On an OS error the temp
        dir is removed: the spool is as before."""
        try:
            return self._commit(manifest)
        except OSError as exc:  # named by the spool: the temp dir is gone
            self.discard()
            raise os_error(exc, self.spool, "write the bundle to the spool") from exc

    def _commit(self, manifest: bytes) -> SpoolEntry:
        meta = {"host_id": self.name.host_id, "date": self.name.date, "seq": self.name.seq,
                "collection_id": self.name.collection_id}
        for filename, data in ((MANIFEST_FILE, manifest),
                               (BUNDLE_FILE, json.dumps(meta, sort_keys=True).encode())):
            write_new_file(self.temp / filename, data)
            crashpoint(f"spool {filename} written")
        fsync_dir(self.temp)
        os.rename(self.temp, self.final)
        crashpoint("spool entry renamed")
        fsync_dir(self.spool)
        crashpoint("spool dir synced")
        return SpoolEntry(self.final, self.name)

    def discard(self) -> None:
        """Close and remove the temp dir (the bundle is not sealed)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        shutil.rmtree(self.temp, ignore_errors=True)


def spool_full_collector(usage: SpoolUsage) -> Collector:
    """The stand-in collector sealed when the spool is over its cap.

    Sealing goes on (the chain must not stop), but instead of a full collection the
    bundle holds the `agent` collector's records: one small `spool_full` record saying
    so, and the agent's journal (bounded); nothing already sealed is dropped.
    """
    from collector import agent

    def collect(ctx: CollectContext) -> Iterator[Record]:
        yield agent.spool_full_record(usage.bytes, usage.max_bytes, usage.bundles)
        yield from agent.collect(ctx)

    return dataclasses.replace(agent.COLLECTOR, collect=collect)
