"""Inline SVG charts for `gamsa report`: the hosts' timeline, the coverage grid and
the monthly access bars. Plain strings, every text and attribute from evidence
escaped (`esc`); no script, no external reference.

The timeline's marks carry `data-kind`, `data-host` and `data-seq` so a reader (or a
test) can find, for example, the gap drawn for host H at seq N.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from html import escape

from agent.report_timeline import BREAK, COVERAGE, GAP, SILENCE, BundlePoint, Mark, Timeline

# Colours (the legend in agent/report_html.py names them; a test looks for GAP_COLOUR).
GAP_COLOUR = "#d40000"
SILENCE_COLOUR = "#f2b84b"
BREAK_COLOUR = "#7b2cbf"
BUNDLE_COLOUR = "#3c6fb0"
HEARTBEAT_COLOUR = "#9bb7dd"
PARTIAL_COLOUR = "#e8a317"
STATUS_COLOURS = {"ok": "#4caf50", "unsupported": "#bdbdbd", "partial": PARTIAL_COLOUR,
                  "error": "#8e24aa"}
GROUP_COLOURS = ("#3c6fb0", "#d9534f", "#5cb85c", "#f0ad4e", "#5bc0de", "#8e6c8a")

LABEL_WIDTH = 190
PLOT_WIDTH = 900
ROW_HEIGHT = 22
AXIS_HEIGHT = 26
MIN_MARK_WIDTH = 6


def esc(value: object) -> str:
    """Text or attribute value, escaped for HTML and SVG (quotes too)."""
    return escape(str(value), quote=True)


def _short(text: str, limit: int = 26) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


class _Scale:
    def __init__(self, start: dt.datetime, end: dt.datetime) -> None:
        self.start = start
        self.seconds = max((end - start).total_seconds(), 1.0)

    def x(self, moment: dt.datetime) -> float:
        return LABEL_WIDTH + PLOT_WIDTH * (moment - self.start).total_seconds() / self.seconds


def timeline_svg(timeline: Timeline) -> str:
    """One row per host: bundles as ticks, marks over them, a time axis on top."""
    span = timeline.span()
    hosts = sorted(timeline.points)
    if span is None or not hosts:
        return "<p>No bundles in the selection.</p>"
    scale = _Scale(*span)
    height = AXIS_HEIGHT + ROW_HEIGHT * len(hosts) + 4
    width = LABEL_WIDTH + PLOT_WIDTH + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="bundles per host over time">']
    out.append(_axis(scale, span, height))
    for row, host in enumerate(hosts):
        y = AXIS_HEIGHT + row * ROW_HEIGHT
        out.append(f'<g class="host-row" data-host="{esc(host)}" '
                   f'transform="translate(0,{y})">')
        shade = "#f6f6f6" if row % 2 else "#ffffff"
        out.append(f'<rect x="0" y="0" width="{width}" height="{ROW_HEIGHT}" fill="{shade}"/>')
        out.append(f'<text x="4" y="{ROW_HEIGHT - 7}" class="host-label">'
                   f'<title>{esc(host)}</title>{esc(_short(host))}</text>')
        marks = timeline.marks.get(host, [])
        out.extend(_mark(scale, m) for m in marks if m.kind == SILENCE)
        out.extend(_tick(scale, p) for p in timeline.points[host])
        out.extend(_mark(scale, m) for m in marks if m.kind in (GAP, BREAK))
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _axis(scale: _Scale, span: tuple[dt.datetime, dt.datetime], height: int) -> str:
    start, end = span
    length = end - start
    fmt = ("%Y-%m-%d" if length > dt.timedelta(days=2) else
           "%m-%d %H:%M" if length > dt.timedelta(hours=1) else "%H:%M:%S")
    parts = []
    for i in range(6):
        moment = start + (end - start) * i / 5
        x = scale.x(moment)
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"
        parts.append(f'<line x1="{x:.1f}" y1="{AXIS_HEIGHT - 6}" x2="{x:.1f}" y2="{height}" '
                     f'stroke="#dddddd"/><text x="{x:.1f}" y="{AXIS_HEIGHT - 10}" '
                     f'text-anchor="{anchor}" class="axis">{moment.strftime(fmt)}</text>')
    return "".join(parts)


def _tick(scale: _Scale, p: BundlePoint) -> str:
    x = scale.x(p.started)
    width = max(1.0, scale.x(p.finished) - x)
    colour = (PARTIAL_COLOUR if p.not_ok else
              HEARTBEAT_COLOUR if p.trigger == "heartbeat" else BUNDLE_COLOUR)
    kind = COVERAGE if p.not_ok else "bundle"
    note = f"; not fully collected: {', '.join(p.not_ok)}" if p.not_ok else ""
    return (f'<rect class="bundle" data-kind="{kind}" data-seq="{p.seq}" x="{x:.1f}" y="4" '
            f'width="{width:.1f}" height="{ROW_HEIGHT - 8}" fill="{colour}"><title>'
            f'{esc(p.manifest_key)} ({esc(p.trigger)}, {p.records} records{esc(note)})'
            f'</title></rect>')


def _mark(scale: _Scale, m: Mark) -> str:
    x0, x1 = scale.x(m.start), scale.x(m.end)
    colour = {GAP: GAP_COLOUR, SILENCE: SILENCE_COLOUR, BREAK: BREAK_COLOUR}[m.kind]
    minimum = 3.0 if m.kind == BREAK else MIN_MARK_WIDTH
    width = max(minimum, x1 - x0)
    x = min(x0, LABEL_WIDTH + PLOT_WIDTH - width)
    y, h = (0, ROW_HEIGHT) if m.kind != SILENCE else (2, ROW_HEIGHT - 4)
    return (f'<rect class="mark {m.kind}" data-kind="{m.kind}" data-host="{esc(m.host)}" '
            f'data-seq="{esc(m.label)}" x="{x:.1f}" y="{y}" width="{width:.1f}" '
            f'height="{h}" fill="{colour}"><title>{esc(m.text)}</title></rect>')


def coverage_svg(coverage: Mapping[tuple[str, str], Mapping[str, int]]) -> str:
    """Collectors by day, each cell the worst status that day (ok, unsupported,
    partial, error), its counts in the cell's tooltip."""
    collectors = sorted({c for c, _ in coverage})
    days = sorted({d for _, d in coverage})
    if not collectors:
        return "<p>No collector ran in the selection.</p>"
    cell = max(4, min(16, PLOT_WIDTH // max(len(days), 1)))
    width = LABEL_WIDTH + cell * len(days) + 80  # room for the last day's label
    height = AXIS_HEIGHT + 16 * len(collectors) + 4
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="coverage" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="collector coverage by day">']
    step = max(1, len(days) // 8)
    for i, day in enumerate(days):
        if i % step == 0:
            out.append(f'<text x="{LABEL_WIDTH + i * cell}" y="{AXIS_HEIGHT - 10}" '
                       f'class="axis">{esc(day)}</text>')
    order = ("ok", "unsupported", "partial", "error")
    for row, collector in enumerate(collectors):
        y = AXIS_HEIGHT + row * 16
        out.append(f'<text x="4" y="{y + 12}" class="host-label">{esc(_short(collector))}'
                   f'</text>')
        for i, day in enumerate(days):
            counts = coverage.get((collector, day))
            if not counts:
                continue
            worst = max(counts, key=lambda s: order.index(s) if s in order else len(order))
            colour = STATUS_COLOURS.get(worst, "#000000")
            tip = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
            out.append(f'<rect data-collector="{esc(collector)}" data-day="{esc(day)}" '
                       f'data-status="{esc(worst)}" x="{LABEL_WIDTH + i * cell}" y="{y}" '
                       f'width="{cell - 1}" height="14" fill="{colour}"><title>'
                       f'{esc(collector)} {esc(day)}: {esc(tip)}</title></rect>')
    out.append("</svg>")
    return "".join(out)


def access_svg(months: Sequence[str], groups: Sequence[str],
               totals: Mapping[tuple[str, str], int],
               flagged: set[tuple[str, str]]) -> str:
    """Grouped bars: per month, one bar per action group; anomalies outlined."""
    if not months:
        return "<p>No access records (logs collector, type access) in the selection.</p>"
    top = max(totals.values(), default=0) or 1
    plot_h = 160
    group_w = max(len(groups) * 8 + 10, min(90, PLOT_WIDTH // len(months)))
    bar_w = (group_w - 10) / len(groups)
    width = max(60 + group_w * len(months) + 10, 60 + 120 * len(groups))
    height = plot_h + 70
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="access" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="access records per month">',
           f'<text x="4" y="14" class="axis">{top}</text>',
           f'<line x1="56" y1="10" x2="56" y2="{plot_h + 10}" stroke="#999999"/>']
    for i, month in enumerate(months):
        x0 = 60 + i * group_w
        for j, group in enumerate(groups):
            count = totals.get((month, group), 0)
            h = plot_h * count / top
            outline = (f' stroke="{GAP_COLOUR}" stroke-width="2"'
                       if (month, group) in flagged else "")
            out.append(f'<rect data-month="{esc(month)}" data-group="{esc(group)}" '
                       f'x="{x0 + j * bar_w:.1f}" y="{plot_h + 10 - h:.1f}" '
                       f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" '
                       f'fill="{GROUP_COLOURS[j % len(GROUP_COLOURS)]}"{outline}><title>'
                       f'{esc(month)} {esc(group)}: {count}</title></rect>')
        out.append(f'<text x="{x0}" y="{plot_h + 26}" class="axis">{esc(month)}</text>')
    for j, group in enumerate(groups):
        x = 60 + j * 120
        out.append(f'<rect x="{x}" y="{plot_h + 40}" width="10" height="10" '
                   f'fill="{GROUP_COLOURS[j % len(GROUP_COLOURS)]}"/><text x="{x + 14}" '
                   f'y="{plot_h + 49}" class="axis">{esc(group)}</text>')
    out.append("</svg>")
    return "".join(out)
