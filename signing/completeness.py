"""Fleet completeness: the hosts an auditor expects, and which of them are missing,
silent, or whose evidence objects were deleted or overwritten in the store.

A store can show what it holds, never what it lost. With an organisation root the
set of enrolled hosts is the set expected: an enrolled host with no bundles is a
finding (`host_without_bundles`), and so is one whose newest bundle finished longer
than `max_silence` before the time of the audit (`host_silent`): deleting a host's
newest bundles, invisible as a chain gap, then shows as silence. With keys given
directly (`--trust`), the hosts expected are those whose bundles such a key signed.

On a versioned bucket, every version and delete marker under the evidence keys is
read by the caller (the agent, with boto3) and passed here as plain
`ObjectVersion`s: a delete marker (`object_deleted`) or a second version
(`object_overwritten`) of a create-only object is an error finding naming the key
and the version ids. docs/FORMAT.md §10 has the rules for an independent verifier.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from signing.clock import require_time
from signing.errors import FormatError
from signing.verify import ERROR, WARNING, BundleSummary, Finding, Trust

HOST_WITHOUT_BUNDLES = "host_without_bundles"
HOST_SILENT = "host_silent"
OBJECT_DELETED = "object_deleted"
OBJECT_OVERWRITTEN = "object_overwritten"


@dataclass(frozen=True)
class ObjectVersion:
    """One entry of a bucket's version listing, keys relative to the store prefix."""

    key: str
    version_id: str
    is_delete_marker: bool
    is_latest: bool
    last_modified: str | None = None  # RFC 3339 UTC, when the store reports it


@dataclass(frozen=True)
class Completeness:
    """What a verification expects beyond the bundles themselves.

    `as_of`: the time of the audit (None: now). `max_silence`: how long an expected
    host may go without a bundle (None: silence is not checked). `versions`: every
    version and delete marker under the evidence keys, or None when they were not
    read, with `versions_note` saying why (a file:// store keeps none).
    """

    as_of: dt.datetime | None = None
    max_silence: dt.timedelta | None = None
    versions: Sequence[ObjectVersion] | None = None
    versions_note: str = "object versions not read"


@dataclass
class HostState:
    """One expected host, as the audit sees it."""

    host: str
    expected_by: str  # "enrollment" or "trusted key"
    key_ids: list[str]
    bundles: int = 0
    last_bundle: str | None = None  # manifest key of the newest bundle
    last_finished_at: str | None = None
    silent_seconds: int | None = None
    status: str = "ok"  # ok | silent | no_bundles

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "expected_by": self.expected_by, "key_ids": self.key_ids,
                "bundles": self.bundles, "last_bundle": self.last_bundle,
                "last_finished_at": self.last_finished_at,
                "silent_seconds": self.silent_seconds, "status": self.status}


@dataclass
class FleetSummary:
    """The fleet in one view: for `gamsa verify`'s summary and `--json`."""

    as_of: str | None  # None: the time of the run, not recorded (no --as-of given)
    max_silence_seconds: int | None
    hosts: list[HostState] = field(default_factory=list)
    versions_checked: bool = False
    versions_note: str = ""
    versions_read: int = 0
    deleted: list[str] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)

    @property
    def silent(self) -> list[str]:
        return [h.host for h in self.hosts if h.status == "silent"]

    @property
    def without_bundles(self) -> list[str]:
        return [h.host for h in self.hosts if h.status == "no_bundles"]

    @property
    def bundles(self) -> int:
        return sum(h.bundles for h in self.hosts)

    def as_dict(self) -> dict[str, Any]:
        return {"as_of": self.as_of, "max_silence_seconds": self.max_silence_seconds,
                "expected_hosts": len(self.hosts), "bundles": self.bundles,
                "silent_hosts": self.silent, "hosts_without_bundles": self.without_bundles,
                "hosts": [h.as_dict() for h in self.hosts],
                "versions": {"checked": self.versions_checked,
                             "note": None if self.versions_checked else self.versions_note,
                             "entries": self.versions_read, "deleted": self.deleted,
                             "overwritten": self.overwritten}}


def _speaks_for(trust: Trust, b: BundleSummary) -> bool:
    """Whether the bundle's signer is trusted for its host (any window: a bundle
    outside its key's window is its own finding, but the host did report)."""
    if b.key_id in trust.unbound:
        return True
    return any(e.host_id == b.name.host_id for e in trust.enrollments.get(b.key_id, []))


def duration_text(seconds: float) -> str:
    """`1d2h3m4s` (whole seconds), for messages."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "",
             f"{minutes}m" if minutes else "", f"{secs}s" if secs or not whole else ""]
    return "".join(parts)


def _instant(moment: dt.datetime) -> str:
    """UTC, to the second, or to the microsecond when it has a fraction."""
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if utc.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def expected_hosts(trust: Trust, bundles: Iterable[BundleSummary], as_of: dt.datetime,
                   host: str | None = None) -> dict[str, HostState]:
    """Hosts the auditor expects: each named by a valid enrollment whose window has
    begun by `as_of`, and each whose bundles a directly trusted key signed."""
    found: dict[str, HostState] = {}
    for key_id, enrollments in sorted(trust.enrollments.items()):
        for e in enrollments:
            if e.not_before <= as_of and (host is None or e.host_id == host):
                state = found.setdefault(e.host_id, HostState(e.host_id, "enrollment", []))
                if key_id not in state.key_ids:
                    state.key_ids.append(key_id)
    for b in bundles:
        if b.key_id in trust.unbound and (host is None or b.name.host_id == host):
            state = found.setdefault(b.name.host_id, HostState(b.name.host_id, "trusted key",
                                                               []))
            if b.key_id not in state.key_ids:
                state.key_ids.append(b.key_id)
    return dict(sorted(found.items()))


def _finished(b: BundleSummary) -> dt.datetime | None:
    try:
        return require_time(b.finished_at, "predicate field collection.finished_at")
    except FormatError:
        return None


def _deadline(trust: Trust, state: HostState, as_of: dt.datetime) -> tuple[dt.datetime, str]:
    """Until when the host had to report: `as_of`, or the end of its last enrollment
    when that came first (a retired host whose enrollment ran out is not silent)."""
    if state.expected_by != "enrollment" or any(k in trust.unbound for k in state.key_ids):
        return as_of, ""
    ends = [e.not_after for k in state.key_ids for e in trust.enrollments.get(k, [])
            if e.host_id == state.host]
    last = max(ends, default=as_of)
    if last < as_of:
        return last, " (the end of its last enrollment)"
    return as_of, ""


def check_fleet(trust: Trust, bundles: Sequence[BundleSummary], expect: Completeness,
                host: str | None = None) -> tuple[list[Finding], FleetSummary]:
    """Hosts without bundles and silent hosts, among the hosts the auditor expects."""
    as_of = expect.as_of or dt.datetime.now(dt.UTC)
    silence = expect.max_silence
    summary = FleetSummary(None if expect.as_of is None else _instant(expect.as_of),
                           None if silence is None else int(silence.total_seconds()))
    findings: list[Finding] = []
    states = expected_hosts(trust, bundles, as_of, host)
    by_host: dict[str, list[BundleSummary]] = defaultdict(list)
    for b in bundles:
        if b.name.host_id in states and _speaks_for(trust, b):
            by_host[b.name.host_id].append(b)
    for name, state in states.items():
        summary.hosts.append(state)
        mine = by_host.get(name, [])
        state.bundles = len(mine)
        prefix = f"v1/host={name}/"
        keys = ", ".join(state.key_ids)
        if not mine:
            state.status = "no_bundles"
            windows = "; ".join(f"key {e.key.key_id} {e.window()} ({e.source})"
                                for k in state.key_ids for e in trust.enrollments.get(k, [])
                                if e.host_id == name)
            findings.append(Finding(prefix, HOST_WITHOUT_BUNDLES,
                                    f"host {name} is expected (enrolled: {windows or keys}) "
                                    f"but has no bundle signed by a key trusted for it"))
            continue
        timed = [(t, b) for b in mine if (t := _finished(b)) is not None]
        if not timed:
            findings.append(Finding(prefix, "host_time_unreadable",
                                    f"host {name}: no bundle has a finished_at time that can "
                                    f"be read, so its silence cannot be judged", WARNING))
            continue
        finished, newest = max(timed, key=lambda tb: (tb[0], tb[1].seq))
        state.last_bundle, state.last_finished_at = newest.manifest_key, newest.finished_at
        if silence is None:
            continue
        deadline, why = _deadline(trust, state, as_of)
        quiet = (deadline - finished).total_seconds()
        state.silent_seconds = max(0, int(quiet))
        if quiet > silence.total_seconds():
            state.status = "silent"
            findings.append(Finding(
                prefix, HOST_SILENT,
                f"host {name} has been silent for {duration_text(quiet)} (more than the "
                f"{duration_text(silence.total_seconds())} allowed) as of {_instant(deadline)}"
                f"{why}: "
                f"its newest bundle {newest.manifest_key} finished {newest.finished_at} "
                f"(key {newest.key_id}); newest bundles deleted, or the agent stopped or "
                f"cannot ship"))
    return findings, summary


def check_versions(versions: Iterable[ObjectVersion]) -> tuple[list[Finding], list[str],
                                                                list[str]]:
    """Delete markers and second versions of create-only objects: (findings, deleted
    keys, overwritten keys). Every object gamsa writes has exactly one version."""
    by_key: dict[str, list[ObjectVersion]] = defaultdict(list)
    for version in versions:
        by_key[version.key].append(version)
    findings: list[Finding] = []
    deleted: list[str] = []
    overwritten: list[str] = []

    def ids(entries: list[ObjectVersion]) -> str:
        return ", ".join(f"{v.version_id}{' (latest)' if v.is_latest else ''}"
                         + (f" at {v.last_modified}" if v.last_modified else "")
                         for v in entries)

    for key, entries in sorted(by_key.items()):
        markers = [v for v in entries if v.is_delete_marker]
        stored = [v for v in entries if not v.is_delete_marker]
        if markers:
            deleted.append(key)
            hidden = any(m.is_latest for m in markers)
            findings.append(Finding(
                key, OBJECT_DELETED,
                f"delete marker(s) {ids(markers)} on a create-only evidence object"
                + ("; it no longer lists, so readers see it gone" if hidden else "")
                + (f"; stored version(s) {ids(stored)} are kept by the bucket" if stored
                   else "; no stored version under this key"), ERROR))
        if len(stored) > 1:
            overwritten.append(key)
            findings.append(Finding(
                key, OBJECT_OVERWRITTEN,
                f"{len(stored)} versions of a create-only evidence object: {ids(stored)} "
                f"(gamsa writes each object once; the bundle was checked against the latest)",
                ERROR))
    return findings, deleted, overwritten


def check_completeness(trust: Trust, bundles: Sequence[BundleSummary], expect: Completeness,
                       host: str | None = None) -> tuple[list[Finding], FleetSummary]:
    """Everything this module checks, and the fleet summary."""
    findings, summary = check_fleet(trust, bundles, expect, host)
    if expect.versions is not None:
        version_findings, summary.deleted, summary.overwritten = check_versions(
            expect.versions)
        findings.extend(version_findings)
        summary.versions_checked = True
        summary.versions_read = len(expect.versions)
    else:
        summary.versions_note = expect.versions_note
    return findings, summary
