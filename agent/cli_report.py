"""`gamsa report`: an HTML report of a verified mirror, one self-contained file."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.cli_common import (
    MIRROR_DIR,
    config_option,
    emit_json,
    json_option,
    load,
    progress_bar,
    warn,
)
from signing.errors import FINDINGS, UsageError


@click.command()
@config_option
@click.option("--mirror", "mirror", required=True, type=MIRROR_DIR,
              metavar="DIR", help="A mirror made by `gamsa pull`.")
@click.option("--html", "out", required=True, type=click.Path(path_type=Path),
              metavar="FILE", help="Write the report here (refused if it exists).")
@click.option("--host", "hosts", multiple=True, metavar="HOST_ID",
              help="Only this host's bundles; repeatable.")
@click.option("--since", metavar="YYYY-MM-DD", help="Only bundles dated this day or later.")
@click.option("--until", metavar="YYYY-MM-DD", help="Only bundles dated this day or earlier.")
@click.option("--max-silence", metavar="DURATION",
              help="Longest time without a bundle before a host reads as silent, e.g. 20m "
                   "(default: verify.max_silence, 4 x schedule.heartbeat).")
@click.option("--as-of", metavar="TIME",
              help="Judge silence at this UTC time, e.g. 2026-12-01T06:00:00Z (default: now, or "
                   "the end of the --until day when earlier).")
@click.option("--replace", is_flag=True, help="Replace FILE if it exists.")
@json_option
def report(config_path: Path | None, mirror: Path, out: Path, hosts: tuple[str, ...],
           since: str | None, until: str | None, max_silence: str | None, as_of: str | None,
           replace: bool, as_json: bool) -> None:
    """Write an HTML report of a mirror: timelines with gaps, silences and breaks,
    collector coverage, drift, AI egress and monthly access records (exit 1 when a
    bundle could not be read or is held in quarantine)."""
    from agent.completeness import parse_as_of, silence_allowed
    from agent.fsutil import create_atomic, failing, replace_atomic
    from agent.mirror import BundleFilter, open_mirror
    from agent.pull import parse_selection
    from agent.report import build_report, default_as_of
    from agent.report_html import render

    config = load(config_path, auditor=True)
    selection = parse_selection(hosts, since, until)
    when = parse_as_of(as_of) if as_of is not None else default_as_of(selection.until)
    silence = silence_allowed(config, max_silence)
    if not out.parent.is_dir():
        raise UsageError(f"--html {out}: directory {out.parent} does not exist")
    if out.exists() and not replace:
        raise UsageError(f"--html {out}: exists", hint="choose another name or pass --replace")
    view = open_mirror(mirror)
    result = build_report(view, BundleFilter(frozenset(selection.hosts), selection.since,
                                             selection.until), when, silence,
                          progress_bar(sys.stderr.isatty() and not as_json, "reading"))
    page = render(result).encode()
    with failing("write the report", out):
        if replace:
            replace_atomic(out, page, 0o640)
        elif not create_atomic(out, page, 0o640):
            raise UsageError(f"--html {out}: exists", hint="choose another name or pass "
                                                           "--replace")
    summary = {**result.summary(), "html": str(out)}
    if as_json:
        emit_json(summary)
    else:
        for name, why in result.unreadable:
            warn(f"not read: {name}: {why}")
        for name, codes in result.quarantined:
            warn(f"held in quarantine: {name}: {codes}")
        click.echo(f"report: {out}: {summary['hosts']} host(s), {summary['bundles']} "
                   f"bundle(s), {summary['gaps']} gap(s), {summary['silences']} "
                   f"silence(s), {summary['breaks']} break(s), "
                   f"{summary['access_anomalies']} access anomaly(ies)"
                   + (f", {len(result.unreadable)} bundle(s) not read"
                      if result.unreadable else "")
                   + (f", {len(result.quarantined)} held in quarantine"
                      if result.quarantined else ""))
    if result.unreadable or result.quarantined:
        sys.exit(FINDINGS)
