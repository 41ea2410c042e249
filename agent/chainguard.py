"""Agent-side truth: never fork this host's chain in the store.

A VM restored from a snapshot, or a state dir copied to another machine, holds a
chain head that is behind what the store already has for this host. Sealing on
from it would put a second manifest at a seq the store already holds: a fork.
Before sealing, `check_store` lists the host's newest manifest keys (only the
date prefixes of the local head and of yesterday and today: a few LIST calls of
one day's keys, however many bundles the host has) and reads the few manifests
at or beyond the local head's seq. When the store is ahead, or holds another
manifest at the head's seq, the next bundle starts a new chain whose genesis
names the reason and `follows` the store's bundle (docs/FORMAT.md §3).

The store may be unreachable then: the agent seals anyway (never lose evidence)
and the shipper checks again (`spool_forks`) before it puts anything. A spool
entry whose seq the store already holds, in the same chain, with another
manifest, is quarantined with every later entry of that chain, and
`divergence.json` tells the next seal to start a new chain that follows the
store's bundle. `gamsa status` reports a divergence until an operator, having
looked, removes that file (docs/OPERATIONS.md).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.fsutil import failing, replace_atomic
from agent.retry import RetryPolicy
from agent.state import ChainHead, SpoolEntry, StateDir, spooled_statement
from agent.store import Store
from signing.bundle import MANIFEST_SUFFIX, BundleName, parse_bundle_key
from signing.errors import FormatError, GamsaError
from signing.predicate import ChainFollows

DIVERGENCE_FILE = "divergence.json"
# Manifests read per check at most (normally one: the head's own, to compare digests).
MAX_READS = 8


@dataclass(frozen=True)
class StoreBundle:
    """One manifest of this host found in the store."""

    name: BundleName
    chain_id: str
    seq: int
    manifest_sha256: str

    def follows(self) -> ChainFollows:
        """The `predicate.chain.follows` value naming this bundle."""
        return ChainFollows(self.chain_id, self.seq, self.manifest_sha256)


@dataclass(frozen=True)
class Divergence:
    """Why the next bundle must start a new chain linked to the store's bundle."""

    reason: str
    follows: ChainFollows


@dataclass(frozen=True)
class StoreView:
    """What the pre-seal look at the store found."""

    divergence: Divergence | None = None
    store_time: dt.datetime | None = None  # the store's Date header, if it has one
    local_time: dt.datetime | None = None  # this clock when that answer came
    problem: str | None = None  # the store could not be asked: sealed unchecked


def _day(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _dates(head: ChainHead | None, now: dt.datetime) -> list[str]:
    days = {_day(now), _day(now - dt.timedelta(days=1))}
    if head is not None:
        try:
            finished = dt.datetime.strptime(head.finished_at[:10], "%Y-%m-%d")
        except ValueError:
            finished = None
        if finished is not None:  # started the day before, around midnight
            days |= {_day(finished), _day(finished - dt.timedelta(days=1))}
    return sorted(days)


def _manifests(store: Store, host_id: str, dates: Iterable[str]) -> list[BundleName]:
    found = []
    for date in dates:
        for key in store.list(f"v1/host={host_id}/date={date}/"):
            parsed = parse_bundle_key(key) if key.endswith(MANIFEST_SUFFIX) else None
            if parsed is not None and parsed[0].host_id == host_id:
                found.append(parsed[0])
    return found


def read_store_bundle(store: Store, name: BundleName) -> StoreBundle | None:
    """The chain fields of a stored manifest (None if they cannot be read: the
    verifier reports such a manifest; here it simply cannot be followed)."""
    data = store.get(name.manifest_key)
    try:
        chain = spooled_statement(data).predicate.chain
    except (GamsaError, ValueError):
        return None
    return StoreBundle(name, chain.id, chain.seq, hashlib.sha256(data).hexdigest())


def _newest_first(names: list[BundleName]) -> list[BundleName]:
    return sorted(names, key=lambda n: (n.seq, n.date, n.collection_id), reverse=True)


def check_store(store: Store, host_id: str, head: ChainHead | None,
                now: dt.datetime) -> Divergence | None:
    """A divergence when the store is ahead of `head` in its chain, or holds another
    manifest at its seq; without a local head, when the store has bundles of this
    host at all (lost or restored state). Raises StoreError when unreachable."""
    names = _manifests(store, host_id, _dates(head, now))
    if head is None:  # the most recent bundle, whatever its chain
        recent = sorted(names, key=lambda n: (n.date, n.collection_id, n.seq), reverse=True)
        for name in recent[:MAX_READS]:
            found = read_store_bundle(store, name)
            if found is not None:
                return Divergence(
                    f"no local chain state, but the store already holds seq {found.seq} of "
                    f"chain {found.chain_id} for this host: state lost or restored?",
                    found.follows())
        return None
    candidates = _newest_first([n for n in names if n.seq >= head.seq])
    for name in candidates[:MAX_READS]:
        found = read_store_bundle(store, name)
        if found is None or found.chain_id != head.chain_id:
            continue
        if found.seq > head.seq:
            return Divergence(
                f"local chain head seq {head.seq} is behind the store (seq {found.seq}, "
                f"chain {found.chain_id}): state restored from a snapshot, or copied?",
                found.follows())
        if found.seq == head.seq and found.manifest_sha256 != head.manifest_sha256:
            return Divergence(
                f"local chain head seq {head.seq} of chain {head.chain_id} is not the "
                f"store's (manifest {found.manifest_sha256[:16]}…, not "
                f"{head.manifest_sha256[:16]}…): state copied to another machine, or "
                f"restored?", found.follows())
    return None


def look_before_sealing(store: Store, state: StateDir, host_id: str,
                        head: ChainHead | None) -> StoreView:
    """The store's view for the next seal: a divergence found earlier by the shipper
    (divergence.json, still to act on), else `check_store`; and the store's time.
    A store that cannot be asked is a `problem`, not an error: seal anyway."""
    pending = pending_divergence(state, head)
    local = dt.datetime.now(dt.UTC)
    store = _one_try(store)
    try:
        server_time = getattr(store, "server_time", None)
        store_time = (server_time(f"v1/host={host_id}/")  # all a confined agent may list
                      if server_time is not None else None)
        local = dt.datetime.now(dt.UTC) if store_time is not None else local
        # A fresh look names the store's newest bundle; the shipper's note (the bundle
        # it collided with) stands when the store shows nothing beyond the head.
        found = check_store(store, host_id, head, local) or pending
    except GamsaError as exc:
        return StoreView(pending, problem=exc.diagnostics())
    return StoreView(found, store_time, local if store_time is not None else None)


# The daemon's pre-seal look at a network store gives up after this long and seals
# unchecked (a store that accepts connections and never answers would otherwise hold
# a sweep for the client's read timeout, twice over).
LOOK_SECONDS = 20.0


def look_within(seconds: float, store: Store, state: StateDir, host_id: str,
                head: ChainHead | None) -> StoreView:
    """`look_before_sealing`, given up after `seconds`: then a `problem`, as for a
    store that cannot be asked. The look goes on in a daemon thread that the process
    (a short-lived sweep child) leaves behind when it exits."""
    box: list[StoreView | BaseException] = []

    def run() -> None:
        try:
            box.append(look_before_sealing(store, state, host_id, head))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            box.append(exc)

    thread = threading.Thread(target=run, name="gamsa-look", daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        return unchecked_view(state, head, f"the store gave no answer within {seconds:.0f} s")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def unchecked_view(state: StateDir, head: ChainHead | None, problem: str) -> StoreView:
    """The view when the look gave up (`problem` says why): the bundle is sealed
    unchecked, still answering a divergence the shipper recorded earlier."""
    return StoreView(pending_divergence(state, head), problem=problem)


def _one_try(store: Store) -> Store:
    """The store asking each question once: sealing never waits out the retries of
    a store that is down (the shipper, after sealing, retries and checks again)."""
    retry = getattr(store, "retry", None)
    if not isinstance(retry, RetryPolicy):
        return store
    quick = copy.copy(store)
    quick.retry = dataclasses.replace(retry, max_attempts=1)  # type: ignore[attr-defined]
    return quick


# divergence.json ---------------------------------------------------------------------


def _path(state: StateDir) -> Any:
    return state.root / DIVERGENCE_FILE


def read_divergence(state: StateDir) -> dict[str, Any] | None:
    """The recorded divergence ({} if the file is unreadable), None if there is none."""
    try:
        data = json.loads(_path(state).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pending_divergence(state: StateDir, head: ChainHead | None) -> Divergence | None:
    """A divergence the shipper found that no new chain has answered yet."""
    data = read_divergence(state)
    if not data or data.get("new_chain") is not None or head is None:
        return None
    if data.get("chain_id") != head.chain_id:
        return None  # the head has moved on to another chain already
    reason = data.get("reason")
    try:
        follows = ChainFollows.read(data.get("follows"), f"{_path(state)}: follows")
    except FormatError:
        return None
    if not isinstance(reason, str):
        return None
    return Divergence(reason, follows)


def note_divergence(state: StateDir, divergence: Divergence, chain_id: str,
                    new_chain: str | None) -> None:
    """Record a divergence: found by the shipper in `chain_id` (new_chain None: the
    next seal answers it), or answered by the new chain `new_chain`."""
    data = {"reason": divergence.reason, "follows": divergence.follows.to_json(),
            "chain_id": chain_id, "new_chain": new_chain,
            "at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    with failing("write the divergence note", _path(state)):
        replace_atomic(_path(state), json.dumps(data, sort_keys=True).encode(), 0o600)


def divergence_problems(state: StateDir) -> list[str]:
    """`gamsa status` lines (each a reason to exit 1) until the note is removed."""
    data = read_divergence(state)
    if data is None:
        return []
    where = _path(state)
    if not data:
        return [f"{where} is unreadable: a chain divergence was recorded; look at the "
                f"store, then remove it"]
    if data.get("new_chain") is None:
        return [f"chain divergence found at {data.get('at')}: {data.get('reason')}; the next "
                f"collection starts a new chain linked to the store's bundle ({where})"]
    follows = data.get("follows")
    if not isinstance(follows, dict):
        follows = {}
    return [f"chain divergence at {data.get('at')}: {data.get('reason')}; new chain "
            f"{data.get('new_chain')} follows the store's chain {follows.get('chain_id')} seq "
            f"{follows.get('seq')} (find out how this state was restored or copied, then "
            f"remove {where})"]


# ship time -------------------------------------------------------------------------


@dataclass(frozen=True)
class Fork:
    """A spool entry the store already holds another manifest for, in its chain."""

    entry: SpoolEntry
    chain_id: str
    theirs: StoreBundle


def _entry_chain(entry: SpoolEntry) -> tuple[str, str] | None:
    """(chain id, manifest sha256) of a spooled manifest; None if unreadable (the
    shipper quarantines those itself)."""
    try:
        data = entry.manifest_path.read_bytes()
        chain_id = spooled_statement(data).predicate.chain.id
    except (OSError, GamsaError, ValueError):
        return None
    return chain_id, hashlib.sha256(data).hexdigest()


def spool_forks(store: Store, entries: list[SpoolEntry]) -> tuple[list[Fork], list[SpoolEntry]]:
    """Entries that would fork the store, and the entries after them in their chain.

    One LIST per date the spool covers; a manifest is read only where the store
    holds another bundle at an entry's seq.
    """
    listed: dict[tuple[str, str], dict[int, list[BundleName]]] = {}
    forks: list[Fork] = []
    forked_chains: dict[str, int] = {}
    after: list[SpoolEntry] = []
    for entry in entries:
        mine = _entry_chain(entry)
        if mine is None:
            continue
        chain_id, digest = mine
        if chain_id in forked_chains:
            after.append(entry)
            continue
        where = (entry.name.host_id, entry.name.date)
        if where not in listed:
            by_seq: dict[int, list[BundleName]] = {}
            for name in _manifests(store, entry.name.host_id, [entry.name.date]):
                by_seq.setdefault(name.seq, []).append(name)
            listed[where] = by_seq
        for name in listed[where].get(entry.name.seq, []):
            if name == entry.name:
                continue  # our own, shipped before: same key, create-only
            theirs = read_store_bundle(store, name)
            if theirs is not None and theirs.chain_id == chain_id \
                    and theirs.manifest_sha256 != digest:
                forks.append(Fork(entry, chain_id, theirs))
                forked_chains[chain_id] = entry.name.seq
                break
    return forks, after


def fork_reason(fork: Fork) -> str:
    t = fork.theirs
    return (f"the store already holds seq {t.seq} of chain {t.chain_id} with another "
            f"manifest ({t.name.manifest_key}): this state was restored from a snapshot "
            f"or copied; not shipped, to keep the store free of forks")


def quarantine_forks(state: StateDir, forks: list[Fork], after: list[SpoolEntry],
                     head: ChainHead | None) -> list[str]:
    """Quarantine forking entries (and those after them) and note the divergence so the
    next seal starts a linked chain. One line per entry, for the report."""
    lines = []
    for fork in forks:
        reason = fork_reason(fork)
        lines.append(f"{state.quarantine_entry(fork.entry, reason)}: {reason}")
    first = {f.chain_id: f for f in forks}
    for entry in after:
        mine = _entry_chain(entry)
        cause = first.get(mine[0]) if mine else None
        reason = (f"follows a bundle of chain {cause.chain_id} that would fork the store "
                  f"(seq {cause.entry.name.seq}); not shipped" if cause else "not shipped")
        lines.append(f"{state.quarantine_entry(entry, reason)}: {reason}")
    if head is not None and head.chain_id in first:
        ours = first[head.chain_id]
        note_divergence(state, Divergence(
            f"local chain {ours.chain_id} forked from the store at seq {ours.entry.name.seq} "
            f"(found when shipping): state restored from a snapshot, or copied?",
            ours.theirs.follows()), head.chain_id, None)
    return lines


def head_findings(head: ChainHead, spooled: Mapping[int, str], host_id: str,
                  bundles: Iterable[Any]) -> list[tuple[str, str, str]]:
    """On the agent's host: (key, code, message) when the store's bundles of this
    host's chain go beyond the local head, or its manifest at the head's seq is not
    the head's. `spooled` maps seqs not yet shipped to their manifest keys."""
    mine = [b for b in bundles if b.chain_id == head.chain_id and b.name.host_id == host_id]
    found = []
    beyond = sorted((b for b in mine if b.seq > head.seq), key=lambda b: b.seq)
    if beyond:
        found.append((beyond[0].manifest_key, "chain_beyond_head",
                      f"the store holds seq {beyond[0].seq}..{beyond[-1].seq} of this host's "
                      f"chain {head.chain_id}, beyond the local head seq {head.seq} "
                      f"({len(beyond)} bundle(s)): another machine with a copy of this "
                      f"state, or this state restored from a snapshot"))
    for b in mine:
        if b.seq == head.seq and b.manifest_sha256 != head.manifest_sha256 \
                and spooled.get(b.seq) != b.manifest_key:
            found.append((b.manifest_key, "chain_head_mismatch",
                          f"the local head of chain {head.chain_id} at seq {head.seq} is "
                          f"manifest sha256 {head.manifest_sha256}, the store's is "
                          f"{b.manifest_sha256}: a fork (copied or restored state)"))
    return found


def sealed_before(state: StateDir) -> bool:
    """Whether this state dir shows an earlier collection (for a head that is gone):
    a spooled or quarantined bundle, a ship status, collector checkpoints."""
    return (bool(state.entries()) or bool(state.quarantined())
            or state.status_path.exists() or state.checkpoints_path.exists())
