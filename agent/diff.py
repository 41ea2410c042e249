"""`gamsa diff`: a host's state at one time against another, from the verified mirror.

The state of a collector at time T is its newest full collection that finished at or
before T (a bundle whose trigger is not `file-change` and where its status is `ok`
or `partial`), updated by the `file-change` bundles after it up to T (they hold only
what changed; an event type that `removes` a state type, `files` `file_change` with
`change` `removed`, takes that record out). Records are compared by their identity
(collector, type, key) (docs/DESIGN.md, "Record"); record types declared `event` in
their collector (log lines, logins, journal entries) are not states and are left
out. Every side of every difference cites the sealed bundle (manifest key) and the
1-based line that proves it, as `gamsa prove` takes them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agent.mirror import BundleFilter, MirroredBundle, MirrorView
from signing.clock import parse_time
from signing.errors import UsageError

FILE_CHANGE_TRIGGER = "file-change"
STATE_STATUSES = ("ok", "partial")


@dataclass(frozen=True)
class Cited:
    """One record as sealed: where it is (bundle, line) and its data."""

    bundle: str
    line: int
    observed_at: str
    data: Any


@dataclass(frozen=True)
class Source:
    """The collection a collector's state at a time comes from."""

    collector: str
    bundle: str
    started_at: str
    finished_at: str
    status: str
    updates: tuple[str, ...] = ()  # file-change bundles applied after it

    def as_dict(self) -> dict[str, Any]:
        return {"collector": self.collector, "bundle": self.bundle,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "status": self.status, "updates": list(self.updates)}


@dataclass(frozen=True)
class Change:
    kind: str  # added | removed | changed
    collector: str
    type: str
    key: str
    before: Cited | None
    after: Cited | None
    fields: tuple[str, ...] = ()  # the data fields that differ (changed)

    def as_dict(self) -> dict[str, Any]:
        def side(cited: Cited | None) -> dict[str, Any] | None:
            if cited is None:
                return None
            return {"bundle": cited.bundle, "line": cited.line,
                    "observed_at": cited.observed_at, "data": cited.data}

        return {"change": self.kind, "collector": self.collector, "type": self.type,
                "key": self.key, "fields": list(self.fields), "from": side(self.before),
                "to": side(self.after)}


@dataclass
class DiffResult:
    host: str
    at_from: dt.datetime
    at_to: dt.datetime
    sources_from: dict[str, Source]
    sources_to: dict[str, Source]
    changes: list[Change] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # event types seen, not compared

    def as_dict(self) -> dict[str, Any]:
        collectors = sorted(set(self.sources_from) | set(self.sources_to))
        return {
            "host": self.host, "from": _stamp(self.at_from), "to": _stamp(self.at_to),
            "collectors": {name: {"from": _source(self.sources_from.get(name)),
                                  "to": _source(self.sources_to.get(name))}
                           for name in collectors},
            "changes": [c.as_dict() for c in self.changes],
            "counts": {kind: sum(1 for c in self.changes if c.kind == kind)
                       for kind in ("added", "removed", "changed")},
            "event_types_left_out": self.left_out,
        }


@dataclass
class _Plan:
    """The bundles a state at T is built from, per collector."""

    base: dict[str, tuple[MirroredBundle, Source]] = field(default_factory=dict)
    updates: dict[str, list[MirroredBundle]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Kinds:
    """What the collectors declare of their record types: events, and removals."""

    events: frozenset[tuple[str, str]]
    removes: Mapping[tuple[str, str], str]

    @classmethod
    def declared(cls, names: Iterable[str]) -> _Kinds:
        from collector.registry import COMMON_RECORD_TYPES, load_collector

        events, removes = set(), {}
        for name in names:
            declared = load_collector(name)
            types = {**COMMON_RECORD_TYPES, **(declared.record_types if declared else {})}
            for type_name, record_type in types.items():
                if record_type.event:
                    events.add((name, type_name))
                if record_type.removes is not None:
                    removes[(name, type_name)] = record_type.removes
        return cls(frozenset(events), removes)


def diff_host(view: MirrorView, host: str, at_from: dt.datetime, at_to: dt.datetime,
              collectors: frozenset[str] = frozenset()) -> DiffResult:
    """The differences of `host`'s state between `at_from` and `at_to`."""
    if host not in view.hosts():
        raise UsageError(f"--host {host}: no bundles of this host in the mirror",
                         hint="hosts: " + (", ".join(view.hosts()[:10]) or "none"))
    if at_from > at_to:
        raise UsageError("--from is after --to")
    plan_from, plan_to = _plans(view, host, (at_from, at_to), collectors)
    names = sorted(set(plan_from.base) | set(plan_to.base))
    kinds = _Kinds.declared(names)
    left_out: set[str] = set()
    before = _state(view, plan_from, kinds, left_out)
    after = _state(view, plan_to, kinds, left_out)
    result = DiffResult(host, at_from, at_to,
                        {n: s for n, (_, s) in plan_from.base.items()},
                        {n: s for n, (_, s) in plan_to.base.items()},
                        left_out=sorted(left_out))
    for identity in sorted(set(before) | set(after)):
        old, new = before.get(identity), after.get(identity)
        collector, type_name, key = identity
        if old is None:
            result.changes.append(Change("added", collector, type_name, key, None, new))
        elif new is None:
            result.changes.append(Change("removed", collector, type_name, key, old, None))
        elif old.data != new.data:
            result.changes.append(Change("changed", collector, type_name, key, old, new,
                                         _differing(old.data, new.data)))
    return result


def _plans(view: MirrorView, host: str, times: tuple[dt.datetime, dt.datetime],
           wanted: frozenset[str]) -> tuple[_Plan, _Plan]:
    """Walk the host's bundles newest first (up to the later time) and pick, for each
    time, each collector's newest full collection and the file-change bundles after."""
    plans = (_Plan(), _Plan())
    # A bundle's `date=` is the UTC day its collection started, before it finished.
    last_day = times[1].astimezone(dt.UTC).date()
    bundles = list(view.bundles(BundleFilter(hosts=frozenset({host}), until=last_day)))
    for bundle in reversed(bundles):
        predicate = view.predicate(bundle)
        collection = predicate.collection
        finished = parse_time(collection.finished_at)
        if finished is None:
            continue
        for entry in predicate.collectors:
            name = entry.name
            if wanted and name not in wanted:
                continue
            for plan, moment in zip(plans, times, strict=True):
                if finished > moment or name in plan.base:
                    continue
                if collection.trigger == FILE_CHANGE_TRIGGER:
                    plan.updates.setdefault(name, []).insert(0, bundle)
                elif entry.status in STATE_STATUSES:
                    plan.base[name] = (bundle, Source(
                        name, bundle.manifest_key, collection.started_at,
                        collection.finished_at, entry.status))
        if wanted and all(wanted <= set(plan.base) for plan in plans):
            break
    for plan in plans:
        for name, (bundle, source) in list(plan.base.items()):
            updates = tuple(b.manifest_key for b in plan.updates.get(name, []))
            plan.base[name] = (bundle, replace(source, updates=updates))
    return plans


def _state(view: MirrorView, plan: _Plan, kinds: _Kinds,
           left_out: set[str]) -> dict[tuple[str, str, str], Cited]:
    """(collector, type, key) -> the record proving it, for every planned collector."""
    state: dict[tuple[str, str, str], Cited] = {}
    by_bundle: dict[str, tuple[MirroredBundle, set[str]]] = {}
    for name, (bundle, _) in plan.base.items():
        by_bundle.setdefault(bundle.manifest_key, (bundle, set()))[1].add(name)
    for bundle, names in by_bundle.values():
        _apply(view, bundle, names, kinds, left_out, state)
    updates: dict[str, tuple[MirroredBundle, set[str]]] = {}
    for name in plan.base:
        for bundle in plan.updates.get(name, []):
            updates.setdefault(bundle.manifest_key, (bundle, set()))[1].add(name)
    for bundle, names in sorted(updates.values(), key=lambda u: (u[0].name.date, u[0].seq)):
        _apply(view, bundle, names, kinds, left_out, state)
    return state


def _apply(view: MirrorView, bundle: MirroredBundle, names: set[str], kinds: _Kinds,
           left_out: set[str], state: dict[tuple[str, str, str], Cited]) -> None:
    for line, raw in enumerate(view.record_lines(bundle), start=1):
        record = json.loads(raw)
        collector = record.get("collector")
        if collector not in names:
            continue
        type_name, key = str(record.get("type")), str(record.get("key"))
        if (collector, type_name) in kinds.events:
            removed_type = kinds.removes.get((collector, type_name))
            data = record.get("data")
            if removed_type is not None and isinstance(data, dict) \
                    and data.get("change") == "removed":
                state.pop((collector, removed_type, key), None)
            left_out.add(f"{collector}/{type_name}")
            continue
        state[(collector, type_name, key)] = Cited(bundle.manifest_key, line,
                                                   str(record.get("observed_at")),
                                                   record.get("data"))


def _differing(old: Any, new: Any) -> tuple[str, ...]:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ("data",)
    return tuple(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)))


def _stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _source(source: Source | None) -> dict[str, Any] | None:
    return source.as_dict() if source is not None else None
