"""The page of `gamsa report`: one self-contained HTML file.

Inline CSS and inline SVG only; no script, no font, no image, no link to anything.
A Content-Security-Policy meta tag (`default-src 'none'`) makes a browser refuse any
fetch the page might still try, so the file opens the same offline. Everything that
comes from evidence (host ids, process names, paths, reasons) is escaped here or in
agent/report_svg.py, never pasted in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from agent.report import Report
from agent.report_facts import ACCESS_GROUPS, Anomaly
from agent.report_svg import (
    BREAK_COLOUR,
    BUNDLE_COLOUR,
    GAP_COLOUR,
    HEARTBEAT_COLOUR,
    PARTIAL_COLOUR,
    SILENCE_COLOUR,
    STATUS_COLOURS,
    access_svg,
    coverage_svg,
    esc,
    timeline_svg,
)
from agent.report_timeline import COVERAGE

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
ROWS_SHOWN = 500  # per table; the rest is counted, and `gamsa query` lists it all
TIME = "%Y-%m-%d %H:%M:%S"

STYLE = """
body{font-family:sans-serif;margin:16px;color:#222;font-size:14px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f0f0f0}td.n{text-align:right}
.axis{font-size:10px;fill:#555}.host-label{font-size:11px;fill:#222}
.key{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
.note{color:#555;font-size:12px}.bad{color:#b00000;font-weight:bold}
svg{display:block;margin:6px 0}
"""


def render(report: Report) -> str:
    """The whole page."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>gamsa report</title>",
        f"<style>{STYLE}</style></head><body>",
        _header(report),
        _timeline(report),
        _coverage(report),
        _drift(report),
        _egress(report),
        _access(report),
        _unreadable(report),
        _sources(report),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _table(head: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = (),
           empty: str = "none") -> str:
    out = ["<table><tr>", *(f"<th>{esc(h)}</th>" for h in head), "</tr>"]
    shown = 0
    more = 0
    for row in rows:
        if shown >= ROWS_SHOWN:
            more += 1
            continue
        shown += 1
        cells = (f'<td class="n">{esc(v)}</td>' if i in numeric else f"<td>{esc(v)}</td>"
                 for i, v in enumerate(row))
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    if not shown:
        return f"<p>{esc(empty)}</p>"
    if more:
        out.append(f'<p class="note">{more} more row(s) not shown.</p>')
    return "".join(out)


def _key(colour: str, label: str) -> str:
    return f'<span class="key" style="background:{colour}"></span>{esc(label)}'


def _header(report: Report) -> str:
    s = report.summary()
    sel = report.selection
    chosen = ", ".join(sorted(sel.hosts)) if sel.hosts else "all hosts"
    span = (f"{sel.since or 'the first'} to {sel.until or 'the last'} bundle date")
    unread = (f'<p class="bad">{len(report.unreadable)} bundle(s) could not be read: see '
              f'"Not read" below.</p>' if report.unreadable else "")
    if report.quarantined:
        unread += (f'<p class="bad">{len(report.quarantined)} bundle(s) of the selection are '
                   f'held in quarantine (they failed verification when pulled): see "Not '
                   f'read" below.</p>')
    return (f"<h1>gamsa report</h1><p>Mirror <code>{esc(report.mirror)}</code>; {esc(chosen)}; "
            f"{esc(span)}. Judged as of {esc(s['as_of'])} UTC with a longest silence of "
            f"{esc(_duration(s['max_silence_seconds']))}.</p>"
            + _table(("hosts", "bundles", "records", "gaps", "silences", "breaks",
                      "bundles not fully collected", "AI egress rows", "access anomalies"),
                     [(s["hosts"], s["bundles"], s["records"], s["gaps"], s["silences"],
                       s["breaks"], s["not_fully_collected"], s["ai_egress_rows"],
                       s["access_anomalies"])], numeric=range(9))
            + unread)


def _duration(seconds: int) -> str:
    from signing.completeness import duration_text

    return duration_text(seconds)


def _timeline(report: Report) -> str:
    t = report.timeline
    legend = ("<p>" + _key(BUNDLE_COLOUR, "bundle") + _key(HEARTBEAT_COLOUR, "heartbeat")
              + _key(PARTIAL_COLOUR, "a collector partial or failed")
              + _key(GAP_COLOUR, "chain gap (missing seq)")
              + _key(SILENCE_COLOUR, "silence") + _key(BREAK_COLOUR, "new chain, fork or "
                                                                   "follows") + "</p>")
    # Bundles not fully collected are amber in the chart and listed under Coverage: a
    # host whose agent is not root is partial in every bundle, which would bury the rest.
    rows = [(m.host, m.kind, m.label, m.start.strftime(TIME), m.end.strftime(TIME), m.text)
            for host in sorted(t.marks) for m in t.marks[host] if m.kind != COVERAGE]
    return ('<h2 id="timeline">Timeline</h2>' + legend + timeline_svg(t)
            + _table(("host", "mark", "seq", "from", "to", "what"), rows,
                     empty="No gap, silence or break."))


def _coverage(report: Report) -> str:
    legend = "<p>" + "".join(_key(c, s) for s, c in STATUS_COLOURS.items()) + "</p>"
    rows = [(host, collector, len(days), f"{min(days)} to {max(days)}",
             "; ".join(sorted({r for reasons in days.values() for r in reasons})))
            for (host, collector), days in sorted(report.facts.not_ok.items())]
    gaps = report.facts.coverage_gap_records
    gap_rows = [(host, n) for host, n in sorted(gaps.items())]
    return ('<h2 id="coverage">Collector coverage</h2>' + legend
            + coverage_svg(report.facts.coverage)
            + "<p>Collectors partial or failed, per host:</p>"
            + _table(("host", "collector", "days", "between", "reasons"), rows,
                     numeric=(2,), empty="Every collector ran ok (or is unsupported).")
            + "<p>Items not seen, from coverage_gap records:</p>"
            + _table(("host", "items not seen"), gap_rows, numeric=(1,),
                     empty="No coverage_gap record."))


def _drift(report: Report) -> str:
    rows = []
    for host, d in sorted(report.facts.drift.items()):
        if not d.any():
            continue
        changes = ", ".join(f"{kind} {n}" for kind, n in sorted(d.file_changes.items()))
        paths = "; ".join(d.paths) + (f" (+{d.paths_total - len(d.paths)} more changes)"
                                      if d.paths_total > len(d.paths) else "")
        config = ", ".join(f"seq {seq} ({day})" for seq, day in d.config_changes)
        rows.append((host, changes, paths, config, ", ".join(d.accounts_added),
                     ", ".join(d.accounts_removed), ", ".join(d.sudo_granted)))
    return ('<h2 id="drift">Drift</h2>'
            + _table(("host", "file changes", "paths", "agent config changed at",
                      "accounts added", "accounts removed", "sudo granted"), rows,
                     empty="No file change, agent config change or account change."))


def _egress(report: Report) -> str:
    rows = [(host, process, endpoint, row.connections, row.snapshots, row.first_seen,
             row.last_seen, ", ".join(sorted(row.users)), ", ".join(sorted(row.exes)))
            for (host, process, endpoint), row in sorted(report.facts.egress.items())]
    return ('<h2 id="egress">AI egress</h2>'
            + _table(("host", "process", "endpoint", "connections", "seen open at collection",
                      "first seen", "last seen", "users", "executables"), rows,
                     numeric=(3, 4), empty="No connection to an AI endpoint was recorded."))


def _access(report: Report) -> str:
    facts = report.facts
    months = facts.months()
    groups = list(ACCESS_GROUPS)
    totals: Counter[tuple[str, str]] = Counter()
    for (_, month, group), n in facts.access.items():
        totals[(month, group)] += n
    anomalies = facts.anomalies()
    flagged = {(a.month, a.group) for a in anomalies if a.host == ""}
    per_host = [(host, month, *(facts.access.get((host, month, g), 0) for g in groups))
                for host in sorted({h for h, _, _ in facts.access})
                for month in months if any(facts.access.get((host, month, g)) for g in groups)]
    return ('<h2 id="access">Access records by month</h2>'
            + '<p class="note">For the monthly review of access records: logins, sudo and su '
              "from the logs collector, by the month the event happened.</p>"
            + access_svg(months, groups, totals, flagged)
            + _table(("host", "month", *groups), per_host, numeric=range(2, 2 + len(groups)),
                     empty="No access record.")
            + "<p>Anomalies (a month above the mean + 3 standard deviations of the other "
              "months):</p>" + _anomalies(anomalies))


def _anomalies(anomalies: Sequence[Anomaly]) -> str:
    rows = [(a.host or "whole fleet", a.group, a.month, a.count, f"{a.mean:.1f}", f"{a.sd:.1f}")
            for a in anomalies]
    return _table(("host", "records", "month", "count", "mean of other months", "sd"), rows,
                  numeric=(3, 4, 5), empty="None.")


def _unreadable(report: Report) -> str:
    if not report.unreadable and not report.quarantined:
        return ""
    rows = [(key, "could not be read", why) for key, why in report.unreadable]
    rows += [(key, "held in quarantine by gamsa pull", codes)
             for key, codes in report.quarantined]
    return ('<h2 id="unread" class="bad">Not read</h2>'
            "<p>These bundles of the selection were not read: nothing of them is counted "
            "above. A bundle in quarantine failed verification when it was pulled (its "
            "objects and findings are in the mirror's quarantine/); the store still holds "
            "it.</p>" + _table(("bundle", "state", "why"), rows))


def _sources(report: Report) -> str:
    return """<h2 id="sources">Where the numbers come from</h2><ul class="note">
<li>Timeline: each bundle's manifest (<code>collection.started_at</code> to
<code>finished_at</code>). Gaps, forks and new chains are the verifier's chain checks
(<code>chain_gap</code>, <code>chain_fork</code>, <code>chain_genesis</code>,
<code>chain_follows</code>); a silence is a time longer than the longest silence allowed
without a bundle (the rule of <code>host_silent</code>, also between bundles).</li>
<li>Coverage: <code>predicate.collectors[].status</code> and <code>gaps</code>; items not seen
from <code>coverage_gap</code> records.</li>
<li>Drift: <code>files</code> <code>file_change</code> records; the agent's
<code>config_sha256</code> changing between bundles; <code>accounts</code> <code>user</code>
records against the previous bundle where accounts ran ok.</li>
<li>AI egress: <code>ai_egress</code> <code>ai_egress_observed</code> records (connections)
and <code>network</code> <code>ai_egress</code> records (sockets open at collection).</li>
<li>Access: <code>logs</code> <code>access</code> records by <code>action</code>.</li>
</ul><p class="note">Only bundles that verified when pulled are in a mirror; run
<code>gamsa verify --store file://MIRROR</code> for the findings themselves.</p>"""
