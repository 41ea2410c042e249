"""`gamsa export`: an inspection package of a verified mirror (agent/export.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.cli_common import MIRROR_DIR, config_option, emit_json, json_option, load, progress_bar
from signing.errors import FINDINGS


@click.command()
@config_option
@click.option("--mirror", "mirror_dir", required=True, type=MIRROR_DIR,
              metavar="DIR", help="The verified mirror to export from (made by gamsa pull).")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="FILE.zip",
              help="The package to write (never replaced: it must not exist).")
@click.option("--host", "hosts", multiple=True, metavar="HOST_ID",
              help="Only this host's bundles; repeatable.")
@click.option("--since", metavar="YYYY-MM-DD", help="Only bundles dated this day or later.")
@click.option("--until", metavar="YYYY-MM-DD", help="Only bundles dated this day or earlier.")
@click.option("--prove-lines", type=click.Path(path_type=Path), metavar="FILE",
              help="Add an inclusion proof of each record FILE names: CSV or JSON with "
                   "`bundle` and `line` columns (what `gamsa query --csv/--json` prints).")
@click.option("--include-failures", is_flag=True,
              help="Export a selection that does not verify: failing bundles go under "
                   "failures/, marked in the report and README (exit 1).")
@click.option("--trust", multiple=True, type=click.Path(path_type=Path), metavar="KEY.pem",
              help="Agent key of the mirror's trust (default: the keys it was pulled under).")
@click.option("--trust-org", multiple=True, type=click.Path(path_type=Path), metavar="ORG.pub",
              help="Organisation root of the mirror's trust (default: as pulled).")
@click.option("--tsa-cert", type=click.Path(path_type=Path), metavar="CHAIN.pem",
              help="Ship this TSA certificate chain (PEM) and judge each bundle's RFC 3161 "
                   "token by it, in the report and for the inspector.")
@json_option
def export(config_path: Path | None, mirror_dir: Path, out: Path, hosts: tuple[str, ...],
           since: str | None, until: str | None, prove_lines: Path | None,
           include_failures: bool, trust: tuple[Path, ...], trust_org: tuple[Path, ...],
           tsa_cert: Path | None, as_json: bool) -> None:
    """Write an inspection package (zip) a supervisor checks alone: the selected
    bundles untouched, keys, trust, proofs, the verifier's report, a README and the
    verifier itself. Refuses (exit 1) a selection that does not verify."""
    from agent.export import ExportRequest, resolve_trust
    from agent.export import export as export_package
    from agent.mirror import BundleFilter, open_mirror
    from agent.pull import parse_selection

    load(config_path, auditor=True)
    if tsa_cert is not None:
        from signing.timestamp import load_tsa_chain

        load_tsa_chain(tsa_cert)  # a usage error naming the file, before any work
    selection = parse_selection(hosts, since, until)
    view = open_mirror(mirror_dir)
    trusted, org_keys = resolve_trust(view, trust, trust_org)
    request = ExportRequest(view, out.absolute(),
                            BundleFilter(frozenset(selection.hosts), selection.since,
                                         selection.until),
                            trusted, org_keys, prove_lines, include_failures, tsa_cert)
    result = export_package(request, progress_bar(sys.stderr.isatty() and not as_json))
    if as_json:
        emit_json(result.as_dict())
    else:
        for finding in (f for f in result.findings if f.severity != "info"):
            click.echo(f"{finding.severity.upper():7} {finding.code}: {finding.key}: "
                       f"{finding.message}")
        verdict = "OK" if result.ok else "EXPORTED WITH FAILURES"
        click.echo(f"{verdict}: {result.bundles} bundle(s) ({len(result.failures)} failing), "
                   f"{result.records} records, {result.proofs} proof(s), {result.files} "
                   f"files, {result.bytes} bytes in {result.out}")
    if not result.ok:
        sys.exit(FINDINGS)
