"""`gamsa report`: one pass over a verified mirror gathering what the HTML report shows.

Each selected bundle's manifest is read once and its records streamed once (memory
grows with hosts, days and distinct findings, not with records). The timeline comes
from agent/report_timeline.py, the other numbers from agent/report_facts.py; the
page is written by agent/report_html.py. A bundle that cannot be read is listed in
the report and makes the command exit 1: what could not be read is said, never
counted as fine.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from agent.mirror import BundleFilter, MirroredBundle, MirrorView, QuarantinedBundle
from agent.pull import FINDINGS_NAME
from agent.report_facts import Facts, wanted_line
from agent.report_timeline import (
    GAP,
    BundlePoint,
    Timeline,
    build_timeline,
    summary_of,
)
from signing.bundle import manifest_sha256
from signing.clock import require_time
from signing.errors import GamsaError
from signing.verify import BundleSummary


@dataclass
class Report:
    """Everything the page shows."""

    mirror: str
    as_of: dt.datetime
    max_silence: dt.timedelta
    selection: BundleFilter
    timeline: Timeline
    facts: Facts
    bundles: int = 0
    records: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (object, why)
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (manifest key, why)

    @property
    def hosts(self) -> list[str]:
        return sorted(self.timeline.points)

    def summary(self) -> dict[str, Any]:
        """The numbers `--json` prints (and the page's header states)."""
        t = self.timeline
        return {"mirror": self.mirror, "as_of": self.as_of.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "max_silence_seconds": int(self.max_silence.total_seconds()),
                "hosts": len(self.hosts), "bundles": self.bundles, "records": self.records,
                "gaps": t.count("gap"), "silences": t.count("silence"),
                "breaks": t.count("break"), "not_fully_collected": t.count("coverage"),
                "ai_egress_rows": len(self.facts.egress),
                "access_anomalies": len(self.facts.anomalies()),
                "unreadable": [{"object": o, "error": e} for o, e in self.unreadable],
                "quarantined": [{"object": o, "findings": f} for o, f in self.quarantined]}


def build_report(view: MirrorView, selection: BundleFilter, as_of: dt.datetime,
                 max_silence: dt.timedelta,
                 progress: Callable[[int, int], None] | None = None) -> Report:
    """Read the selected bundles of the mirror once; `progress(done, total)` after each."""
    facts = Facts()
    points: list[BundlePoint] = []
    summaries: list[BundleSummary] = []
    unreadable: list[tuple[str, str]] = []
    records = 0
    selected = list(view.bundles(selection))
    for done, bundle in enumerate(selected, 1):
        try:
            point, summary, count = _read_bundle(view, bundle, facts)
        except GamsaError as exc:
            unreadable.append((bundle.manifest_key, exc.message))
        else:
            points.append(point)
            summaries.append(summary)
            records += count
        if progress is not None:
            progress(done, len(selected))
    continued = _continued(view, summaries) if selection.since is not None else set()
    timeline = build_timeline(points, summaries, as_of, max_silence, continued)
    quarantined = view.quarantined(selection)
    note_quarantine(timeline, {(q.name.host_id, q.name.seq) for q in quarantined})
    held = [(q.name.manifest_key, _quarantine_codes(q)) for q in quarantined]
    return Report(str(view.root), as_of, max_silence, selection, timeline, facts,
                  len(points), records, unreadable, held)


def note_quarantine(timeline: Timeline, held: set[tuple[str, int]]) -> None:
    """Say on a gap which of its seqs the mirror holds in quarantine (refused when
    pulled), so the gap is not read as a deletion."""
    for host, marks in timeline.marks.items():
        for i, mark in enumerate(marks):
            if mark.kind != GAP:
                continue
            first, _, last = mark.label.partition("-")
            seqs = range(int(first), int(last or first) + 1)
            there = [seq for seq in seqs if (host, seq) in held]
            if there:
                marks[i] = replace(mark, text=f"{mark.text}; held in quarantine (failed "
                                              f"verification when pulled): seq "
                                              f"{', '.join(map(str, there))}")


def _quarantine_codes(held: QuarantinedBundle) -> str:
    """What `gamsa pull` found wrong with a bundle it held back (its findings.json)."""
    try:
        findings = json.loads((held.directory / FINDINGS_NAME).read_bytes())["findings"]
        return ", ".join(sorted({str(f["code"]) for f in findings})) or "no finding recorded"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{FINDINGS_NAME} unreadable ({exc})"


def default_as_of(until: dt.date | None) -> dt.datetime:
    """When silence is judged without `--as-of`: now, or the end of the `--until` day
    when that came first (bundles after it are not selected, so not seen)."""
    now = dt.datetime.now(dt.UTC)
    if until is None:
        return now
    end = dt.datetime.combine(until + dt.timedelta(days=1), dt.time(), dt.UTC)
    return min(now, end)


def _continued(view: MirrorView, summaries: list[BundleSummary]) -> set[str]:
    """First selected bundles of a chain whose bundle at seq - 1 of the same chain is in
    the mirror before `--since`: their chain starts outside the selection, not in a gap."""
    first: dict[tuple[str, str], BundleSummary] = {}
    for s in summaries:
        key = (s.name.host_id, s.chain_id)
        if key not in first or s.seq < first[key].seq:
            first[key] = s
    found: set[str] = set()
    for (host, chain_id), s in first.items():
        if s.seq == 1:
            continue
        for before in view.bundles_at(host, s.seq - 1):
            try:
                before_id = view.predicate(before).chain.id
            except GamsaError:
                continue
            if before_id == chain_id:
                found.add(s.manifest_key)
    return found


def _read_bundle(view: MirrorView, bundle: MirroredBundle,
                 facts: Facts) -> tuple[BundlePoint, BundleSummary, int]:
    manifest = view.signed_manifest(bundle)
    predicate = manifest.predicate
    summary = summary_of(bundle.manifest_key, bundle.name, manifest_sha256(manifest.raw),
                         manifest.key_id, predicate)
    collection = predicate.collection
    started = require_time(collection.started_at, "collection.started_at")
    finished = require_time(collection.finished_at, "collection.finished_at")
    not_ok = tuple(sorted(e.name for e in predicate.collectors
                          if e.status in ("partial", "error")))
    accounts_ok = any(e.name == "accounts" and e.status == "ok" for e in predicate.collectors)
    facts.add_manifest(bundle.host, bundle.seq, bundle.name.date, predicate)
    users: dict[str, bool] | None = {} if accounts_ok else None
    count = 0
    try:
        for line in view.record_lines(bundle):
            count += 1
            if not wanted_line(line):
                continue
            record = json.loads(line)
            if not isinstance(record, dict):
                raise GamsaError(f"{bundle.records_key}: line {count} is not a JSON object")
            facts.add_record(bundle.host, record, users)
    except ValueError as exc:  # a line that is not JSON (the pull checked it was)
        raise GamsaError(f"{bundle.records_key}: unreadable records ({exc})") from exc
    if users is not None:
        facts.end_accounts(bundle.host, users)
    point = BundlePoint(bundle.host, summary.seq, summary.chain_id, started, finished,
                        collection.trigger, count, bundle.manifest_key,
                        not_ok)
    return point, summary, count
