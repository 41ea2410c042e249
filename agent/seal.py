"""One collection, sealed: run collectors, write the bundle, spool it, move the head.

This is the whole of `gamsa collect` but shipping. It runs under the state lock,
so a daemon and an on-demand run never interleave their chains.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from agent import __version__, resources
from agent.chainguard import StoreView, note_divergence, sealed_before
from agent.config import Config
from agent.crashpoints import crashpoint
from agent.fsutil import failing
from agent.identity import host_description
from agent.lifelog import note_trouble
from agent.records import Emit, Run, seal_records
from agent.rotate import continues_after_rotation
from agent.state import ChainHead, SpoolEntry, SpoolUsage, StateDir, spool_full_collector
from collector._timeout import stream_bounded
from collector.accounts import local_account_names
from collector.agent import NAME as AGENT
from collector.privacy import BundlePseudonymizer, key_id, load_pseudonym_key, scopes
from collector.record import format_time, utc_now
from collector.registry import (
    CollectContext,
    Collector,
    CollectorResult,
    all_collectors,
)
from signing.bundle import BundleName, manifest_sha256, sign_manifest
from signing.clock import CLOCK_TOLERANCE_SECONDS, seconds_between
from signing.errors import GamsaError
from signing.predicate import (
    AgentInfo,
    Chain,
    ClockCheck,
    ClockSteppedBack,
    Collection,
    CollectorEntry,
    ManifestPredicate,
    Privacy,
    RecordsSummary,
)

TRIGGERS = ("schedule", "on-demand", "file-change", "heartbeat")


@dataclass(frozen=True)
class Sealed:
    """What a sealing run produced."""

    entry: SpoolEntry
    head: ChainHead
    results: list[CollectorResult]
    record_count: int
    genesis_reason: str | None
    spool: SpoolUsage  # before this bundle; over its cap: only a spool_full record was sealed
    view: StoreView | None = None  # what the store said before sealing (chainguard)
    clock_warning: str | None = None  # the clock read far from the store's or the chain's

    def summary(self) -> dict[str, Any]:
        """What the daemon logs and reports of it, as JSON values (a sweep sealed in a
        child process sends this back: agent/store_child.py)."""
        return {"seq": self.head.seq, "chain_id": self.head.chain_id,
                "finished_at": self.head.finished_at, "records": self.record_count,
                "results": [[r.name, r.status, [g.to_json() for g in r.gaps]]
                            for r in self.results],
                "manifest_key": self.entry.name.manifest_key,
                "store_problem": None if self.view is None else self.view.problem,
                "genesis_reason": self.genesis_reason, "clock_warning": self.clock_warning,
                "spool": {"bundles": self.spool.bundles, "bytes": self.spool.bytes,
                          "max_bytes": self.spool.max_bytes}}


def new_collection_id(now: dt.datetime) -> str:
    """Sortable and unique: UTC second plus 32 random bits."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def genesis_reason(head: ChainHead | None, key_id: str, key_created: bool,
                   sealed_before: bool = False) -> str | None:
    """Why a new chain starts here, or None when this bundle extends the head.

    `sealed_before`: the state dir shows an earlier collection (spool, quarantine,
    ship status, checkpoints) although the chain head is gone. A key made by
    `gamsa keys init` with nothing sealed yet is a first collection.
    """
    if head is not None and head.key_id == key_id:
        return None
    if head is not None:
        return (f"new agent key (chain {head.chain_id} ended at seq {head.seq} under key "
                f"{head.key_id[:16]}…)")
    if sealed_before:
        return "chain state missing (chain.json is gone, but this state dir sealed before)"
    return "first collection" + (" (new agent key)" if key_created else "")


def collect_context(config: Config, state: StateDir) -> CollectContext:
    """The live context: this machine's root, per-collector config, caches."""
    options = copy.deepcopy(config.collectors.options)  # a collector may not change config
    with failing("create the cache directory", state.cache):
        state.cache.mkdir(mode=0o700, exist_ok=True)
    return CollectContext(options=options, state_dir=state.root)


def seal_collection(config: Config, host_id: str, collectors: Iterable[Collector],
                    trigger: str, state: StateDir,
                    context: CollectContext | None = None,
                    look: Callable[[ChainHead | None], StoreView] | None = None) -> Sealed:
    """Collect, seal and spool one bundle. Caller holds `state.locked()`.

    `look` asks the store about this host's chain first (agent/chainguard.py): when
    the store is ahead of the local head, the bundle starts a new chain that follows
    the store's bundle instead of forking it.
    """
    privacy_key = (load_pseudonym_key(config.privacy.key_file)
                   if config.privacy.pseudonymize else None)
    signer, key_created = state.signer(host_id)
    head = state.recover()
    spool = state.usage(config.spool.max_bytes)
    if spool.over_cap:  # seal only a small record saying so; drop nothing already sealed
        collectors = [spool_full_collector(spool)]
    checkpoints = state.load_checkpoints(head)
    ctx = context or collect_context(config, state)
    ctx.checkpoints = checkpoints
    view = look(head) if look is not None else None
    divergence = view.divergence if view is not None else None
    # A store ahead of the local head wins over a rotation: that head may not be extended.
    if divergence is not None:
        reason: str | None = divergence.reason
    elif continues_after_rotation(state, head, signer.key_id):
        reason = None
    else:
        reason = genesis_reason(head, signer.key_id, key_created,
                                head is None and sealed_before(state))
    started = dt.datetime.now(dt.UTC)
    started_at = started.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    clock_at = started_at
    stepped_back: ClockSteppedBack | None = None
    if head is not None and reason is None and started_at < head.finished_at:
        if (seconds_between(head.finished_at, started_at) or 0) > CLOCK_TOLERANCE_SECONDS:
            # The previous bundle claims a time far ahead of this clock (a run with the
            # clock in 2099): never pin this and every later bundle to it. The verifier
            # reports that bundle `clock_ahead`; this one says what it saw.
            stepped_back = ClockSteppedBack(head.finished_at, started_at)
        else:
            # A small step back (NTP step): time in the chain must not run backwards,
            # so the bundle starts where the last ended and says what the clock read.
            started_at = head.finished_at
    collection_id = new_collection_id(started)
    seq = 1 if reason is not None or head is None else head.seq + 1
    name = BundleName(host_id, started_at[:10], seq, collection_id)
    usage_before = resources.snapshot()
    rewriter: BundlePseudonymizer | None = None
    if privacy_key is not None:  # before anything is hashed: see collector/privacy.py
        names = config.privacy.pseudonymize
        system, people = local_account_names(ctx)
        # The host's own user names are searched for in every bundle, whether or not
        # the accounts collector ran in this one, so a file-change bundle agrees.
        rewriter = BundlePseudonymizer(privacy_key, scopes(names, all_collectors()), system,
                                       people if "user" in names else frozenset())
    # The records stream from the collectors into this bundle's temp dir in the spool
    # (agent/records.py), never held in memory. Until `commit` renames it into place
    # it is no spool entry; `recover` removes what a crash (or a failed signer) leaves.
    pending = state.begin_bundle(name)
    try:
        results, records_object = seal_records(
            sorted(collectors, key=lambda c: c.name == AGENT), ctx, host_id,
            pending.write_records, rewriter, bounded_runner(ctx, config, state))
        pending.records_done()
    except BaseException:
        pending.discard()
        raise
    finished_at = max(utc_now(), started_at)
    crashpoint("collected")

    chain_id = collection_id if seq == 1 else head.chain_id  # type: ignore[union-attr]
    chain = Chain(chain_id, seq, None if seq == 1 else head.manifest_sha256,  # type: ignore[union-attr]
                  reason if seq == 1 else None,
                  divergence.follows if seq == 1 and divergence is not None else None)
    clock_warning = None
    if stepped_back is not None:
        clock_warning = (f"the previous bundle claims to have finished at "
                         f"{head.finished_at}, ahead of this clock ({started_at}): not held "  # type: ignore[union-attr]
                         f"at that time; the verifier reports that bundle as clock_ahead")
    check: ClockCheck | None = None
    if view is not None and view.store_time is not None and view.local_time is not None:
        check = clock_check(view.local_time, view.store_time)
        if check.ahead_seconds > CLOCK_TOLERANCE_SECONDS:
            clock_warning = (f"this clock ({check.local_time}) reads "
                             f"{check.ahead_seconds} s ahead of the store's Date "
                             f"({check.store_date}); the bundle records it (clock_check)")
    collection = Collection(collection_id, trigger, started_at, finished_at,
                            clock_at if clock_at != started_at else None, stepped_back, check)
    entries = tuple(r.manifest_entry() for r in results)
    privacy: Privacy | None = None
    if rewriter is not None and privacy_key is not None:  # an error may quote a home path
        entries = tuple(pseudonymized_entry(entry, rewriter) for entry in entries)
        privacy = Privacy(tuple(sorted(set(config.privacy.pseudonymize))), key_id(privacy_key))
    predicate = ManifestPredicate(
        host=host_description(host_id),
        collection=collection,
        records=RecordsSummary(records_object.count, records_object.merkle_root),
        chain=chain,
        collectors=entries,
        agent=AgentInfo("gamsa", __version__, config.sha256, signer.key_id,
                        resources.snapshot().since(usage_before)),
        privacy=privacy)
    manifest = sign_manifest(name, records_object, predicate, signer)
    crashpoint("sealed in memory")
    digest = manifest_sha256(manifest)
    try:
        if ctx.new_checkpoints:
            state.stage_checkpoints({**checkpoints, **ctx.new_checkpoints}, digest)
            crashpoint("checkpoints staged")
        entry = pending.commit(manifest)
    except GamsaError:  # not sealed (no space, ...): leave the state as it was
        pending.discard()
        if ctx.new_checkpoints:
            with contextlib.suppress(GamsaError):
                state.discard_staged_checkpoints()
        raise
    new_head = ChainHead(chain_id, seq, digest, finished_at, signer.key_id)
    state.write_head(new_head)
    crashpoint("chain head written")
    state.commit_checkpoints()
    if divergence is not None:  # `gamsa status` says so until an operator looked
        with contextlib.suppress(GamsaError):  # sealed: the genesis itself says why
            note_divergence(state, divergence, head.chain_id if head else chain_id, chain_id)
    return Sealed(entry, new_head, results, records_object.count, reason, spool, view,
                  clock_warning)


def bounded_runner(ctx: CollectContext, config: Config, state: StateDir) -> Run:
    """How the agent runs one collector: under its timeout, its trouble noted in the
    life journal. Collectors run with the `agent` collector last (seal_collection), so
    it seals the life events this run noted (a timeout, a skip, a failure) in this
    bundle."""
    def run(collector: Collector, emit: Emit) -> CollectorResult:
        timeout = config.schedule.timeout_for(collector.name)
        result = stream_bounded(collector, ctx, timeout, emit)
        with contextlib.suppress(GamsaError):  # the manifest says it too (status, error)
            note_trouble(state.root, result, timeout)
        return result
    return run


def clock_check(local: dt.datetime, store: dt.datetime) -> ClockCheck:
    """`predicate.collection.clock_check`: this clock against the store's Date header
    (1 s resolution; taken just before collecting)."""
    return ClockCheck("store_date", format_time(local), format_time(store),
                      int((local - store).total_seconds()), CLOCK_TOLERANCE_SECONDS)


def pseudonymized_entry(entry: CollectorEntry, rewriter: BundlePseudonymizer) -> CollectorEntry:
    """A collector entry with the bundle's person values replaced in its texts (an
    error may quote a home path); name, version and status are the schema's."""
    return replace(entry, error=None if entry.error is None else rewriter.rewrite(entry.error),
                   gaps=None if entry.gaps is None else tuple(
                       replace(gap, reason=rewriter.rewrite(gap.reason)) for gap in entry.gaps))
