"""What `gamsa report` draws on each host's timeline, from the verifier's own notions.

Gaps and breaks are the verifier's chain findings (`signing.verify.check_chains`:
`chain_gap`, `chain_fork`, `chain_genesis`; `agent_truth_findings`: `chain_follows`)
run over the mirror's manifests; a silence is the completeness rule of
`signing.completeness` (a host whose newest bundle finished more than `max_silence`
before the time judged), applied also between two bundles of a host; a coverage
mark is a bundle in which a collector was `partial` or failed. Nothing here decides
what counts as a gap or a silence on its own.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

from signing.bundle import BundleName
from signing.clock import clock_facts, require_time
from signing.completeness import Completeness, check_fleet, duration_text
from signing.predicate import ManifestPredicate
from signing.verify import BundleSummary, Trust, agent_truth_findings, check_chains

GAP = "gap"
SILENCE = "silence"
BREAK = "break"
COVERAGE = "coverage"


@dataclass(frozen=True)
class BundlePoint:
    """One bundle on a host's timeline."""

    host: str
    seq: int
    chain_id: str
    started: dt.datetime
    finished: dt.datetime
    trigger: str
    records: int
    manifest_key: str
    not_ok: tuple[str, ...] = ()  # collectors partial or failed in this bundle


@dataclass(frozen=True)
class Mark:
    """Something marked on a host's timeline: a gap, a silence, a break, a coverage hole."""

    kind: str
    host: str
    start: dt.datetime
    end: dt.datetime
    label: str  # the seq or seq range it is about ("" for silences)
    text: str


@dataclass
class Timeline:
    """Every host's bundles and marks, and the span the chart covers."""

    as_of: dt.datetime
    max_silence: dt.timedelta
    points: dict[str, list[BundlePoint]] = field(default_factory=dict)
    marks: dict[str, list[Mark]] = field(default_factory=dict)

    def span(self) -> tuple[dt.datetime, dt.datetime] | None:
        starts = [p.started for pts in self.points.values() for p in pts]
        ends = [p.finished for pts in self.points.values() for p in pts]
        ends += [m.end for marks in self.marks.values() for m in marks]
        if not starts:
            return None
        return min(starts), max(ends)

    def count(self, kind: str) -> int:
        return sum(1 for marks in self.marks.values() for m in marks if m.kind == kind)


def summary_of(manifest_key: str, name: BundleName, raw_sha256: str, key_id: str,
               predicate: ManifestPredicate) -> BundleSummary:
    """The verifier's view of a mirrored bundle, for its chain checks."""
    chain, collection = predicate.chain, predicate.collection
    return BundleSummary(
        name, manifest_key, raw_sha256, chain.id, chain.seq, chain.prev,
        collection.started_at, collection.finished_at, predicate.records.count, key_id,
        chain.genesis_reason, True, chain.follows, clock_facts(collection))


def build_timeline(points: Sequence[BundlePoint], summaries: Sequence[BundleSummary],
                   as_of: dt.datetime, max_silence: dt.timedelta,
                   continued: Set[str] = frozenset()) -> Timeline:
    """Marks for every host: chain gaps, forks and new chains, silences, coverage.

    `continued`: manifest keys of bundles whose chain goes on before the selection
    (`--since`): the seqs before them are not a gap."""
    timeline = Timeline(as_of, max_silence)
    for point in sorted(points, key=lambda p: (p.host, p.started, p.seq)):
        timeline.points.setdefault(point.host, []).append(point)
        timeline.marks.setdefault(point.host, [])
    by_key = {p.manifest_key: p for p in points}
    _chain_marks(timeline, summaries, by_key, continued)
    _silence_marks(timeline, summaries, as_of, max_silence)
    for host, pts in timeline.points.items():
        for p in pts:
            if p.not_ok:
                timeline.marks[host].append(Mark(
                    COVERAGE, host, p.started, p.finished, str(p.seq),
                    f"seq {p.seq}: not fully collected: {', '.join(p.not_ok)}"))
    for marks in timeline.marks.values():
        marks.sort(key=lambda m: (m.start, m.kind))
    return timeline


def _chain_marks(timeline: Timeline, summaries: Sequence[BundleSummary],
                 by_key: dict[str, BundlePoint], continued: Set[str]) -> None:
    chains: dict[tuple[str, str], list[int]] = defaultdict(list)
    for s in summaries:
        chains[(s.name.host_id, s.chain_id)].append(s.seq)
    findings = check_chains(summaries) + agent_truth_findings(list(summaries))
    for finding in findings:
        point = by_key.get(finding.key)
        if point is None:
            continue
        host = point.host
        if finding.code == "chain_gap":
            if finding.key in continued and not any(
                    q.chain_id == point.chain_id and q.seq < point.seq
                    for q in timeline.points[host]):
                continue  # the chain began before --since
            before = [q for q in timeline.points[host]
                      if q.chain_id == point.chain_id and q.seq < point.seq]
            prev = max(before, key=lambda q: q.seq, default=None)
            first = prev.seq + 1 if prev is not None else 1
            label = str(first) if first == point.seq - 1 else f"{first}-{point.seq - 1}"
            start = prev.finished if prev is not None else point.started
            timeline.marks[host].append(Mark(GAP, host, min(start, point.started),
                                             point.started, label, finding.message))
        elif finding.code in ("chain_fork", "chain_prev_mismatch", "chain_follows",
                              "chain_follows_mismatch", "chain_follows_missing",
                              "chain_follows_continued"):
            timeline.marks[host].append(Mark(BREAK, host, point.started, point.started,
                                             str(point.seq), f"{finding.code}: "
                                             f"{finding.message}"))
        elif finding.code == "chain_genesis":
            first_of_host = point is timeline.points[host][0]
            if not first_of_host:  # the host's first bundle starts a chain by nature
                timeline.marks[host].append(Mark(BREAK, host, point.started, point.started,
                                                 str(point.seq),
                                                 f"new chain: {finding.message}"))


def _silence_marks(timeline: Timeline, summaries: Sequence[BundleSummary],
                   as_of: dt.datetime, max_silence: dt.timedelta) -> None:
    # Between bundles: the same rule as at the end, judged at the next bundle's start.
    for host, pts in timeline.points.items():
        by_end = sorted(pts, key=lambda p: p.finished)
        latest: dt.datetime | None = None
        for p in by_end:
            if latest is not None and p.started - latest > max_silence:
                timeline.marks[host].append(Mark(
                    SILENCE, host, latest, p.started, "",
                    f"no bundle for {duration_text((p.started - latest).total_seconds())} "
                    f"(more than the {duration_text(max_silence.total_seconds())} allowed) "
                    f"before seq {p.seq}"))
            latest = p.finished if latest is None else max(latest, p.finished)
    # At the end: signing.completeness itself, every key in the mirror trusted (the
    # mirror holds only bundles that verified under the pull's trust).
    trust = Trust({}, frozenset(s.key_id for s in summaries))
    findings, summary = check_fleet(trust, summaries, Completeness(as_of, max_silence))
    silent = {state.host: state for state in summary.hosts if state.status == "silent"}
    for finding in findings:
        host = finding.key.removeprefix("v1/host=").rstrip("/")
        state = silent.get(host)
        if state is None or host not in timeline.points or state.last_finished_at is None:
            continue
        since = require_time(state.last_finished_at, "collection.finished_at")
        timeline.marks[host].append(Mark(SILENCE, host, since, as_of, "", finding.message))

