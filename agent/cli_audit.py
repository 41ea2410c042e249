"""`gamsa verify`, `pull`, `prove` and `verify-proof`: the commands that check evidence."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.cli_common import (
    MIRROR_DIR,
    config_option,
    emit_json,
    json_option,
    load,
    org_root_keys,
    progress_bar,
    trusted_keys,
)
from signing.errors import FINDINGS, RUNTIME, GamsaError, UsageError

if TYPE_CHECKING:
    from agent.config import Config

# verify / prove --------------------------------------------------------------------


@click.command()
@config_option
@click.option("--store", "store_url", metavar="URL", help="Store to verify (default: config).")
@click.option("--host", metavar="HOST_ID", help="Only this host's bundles.")
@click.option("--trust", multiple=True, type=click.Path(path_type=Path), metavar="KEY.pem",
              help="Trusted public key (PEM or key document), for any host; repeatable.")
@click.option("--trust-org", multiple=True, type=click.Path(path_type=Path), metavar="ORG.pub",
              help="Organisation root public key: trust each enrolled key for its enrolled "
                   "host and validity window only; repeatable (default: verify.trust_org).")
@click.option("--max-silence", metavar="DURATION",
              help="Longest an expected host may go without a bundle, e.g. 20m, 6h "
                   "(default: verify.max_silence, 4 x schedule.heartbeat).")
@click.option("--as-of", metavar="TIME",
              help="Judge silence at this UTC time, e.g. 2026-12-01T06:00:00Z (default: now).")
@click.option("--tsa-cert", type=click.Path(path_type=Path), metavar="CHAIN.pem",
              help="Check each bundle's RFC 3161 timestamp token against this TSA "
                   "certificate chain (PEM); a bundle without one is timestamp_missing.")
@click.option("--workers", type=click.IntRange(min=1, max=256), default=None, metavar="N",
              help="Processes checking bundles of a local store (file:// or a mirror; "
                   "default: every core; 1: in this process); on S3, bundles read at "
                   "once (default: store.concurrency).")
@click.option("--dask", "dask_address", metavar="tcp://HOST:8786",
              help="Check the bundles on this Dask cluster (needs the audit extra; the "
                   "workers must see the local store at the same path).")
@json_option
def verify(config_path: Path | None, store_url: str | None, host: str | None,
           trust: tuple[Path, ...], trust_org: tuple[Path, ...], max_silence: str | None,
           as_of: str | None, tsa_cert: Path | None, workers: int | None,
           dask_address: str | None, as_json: bool) -> None:
    """Verify every bundle and chain in a store, and the fleet's completeness;
    exit 1 on any error finding."""
    from agent.completeness import expectations, fleet_lines, parse_as_of, silence_allowed
    from agent.store import open_store
    from signing.verify import verify_store

    config = load(config_path, auditor=True)
    when = parse_as_of(as_of)
    tsa_chain = None
    if tsa_cert is not None:
        from signing.timestamp import load_tsa_chain

        tsa_chain = load_tsa_chain(tsa_cert)
    silence: dt.timedelta | None = silence_allowed(config, max_silence)
    store = open_store(store_url or config.store.url, config.store)
    org_keys = org_root_keys(trust_org or tuple(config.verify.trust_org))
    if not trust and org_keys is None and max_silence is None:
        # The host checking its own store with its own key: no daemon seals heartbeats
        # yet, and truncation is found from the local chain head; silence is judged
        # when asked (--max-silence) or in an audit (--trust, --trust-org).
        silence = None
    # With an organisation root, the agent's own key is not trusted by default.
    trusted = trusted_keys(config, trust) if trust or org_keys is None else {}
    expect, read_findings = expectations(store, host, when, silence)
    threads, mapper = _verify_mapper(store, workers, dask_address)
    result = verify_store(store, trusted, host,
                          progress_bar(sys.stderr.isatty() and not as_json),
                          workers=threads, org_keys=org_keys,
                          expect=expect, tsa_chain=tsa_chain, mapper=mapper)
    result.findings.extend(read_findings)
    if store.url == open_store(config.store.url, config.store).url:
        result.findings.extend(_truncation_findings(config, result, host))
    if as_json:
        emit_json({"store": store.url, **result.as_dict()})
    else:
        for finding in result.findings:
            click.echo(f"{finding.severity.upper():7} {finding.code}: {finding.key}: "
                       f"{finding.message}")
        for line in fleet_lines(result.fleet) if result.fleet is not None else []:
            click.echo(line)
        if (stamps := result.timestamps) is not None:
            click.echo(f"timestamps: {stamps.verified} of {stamps.checked} bundle(s) witnessed "
                       f"in time, {stamps.missing} missing, {stamps.invalid} invalid, "
                       f"{stamps.mismatched} mismatched, {stamps.late} late")
        for line in summary_lines(result.summary()):
            click.echo(line)
        verdict = "OK" if result.ok else "FAILED"
        errors = sum(1 for f in result.findings if f.severity == "error")
        click.echo(f"{verdict}: {len(result.bundles)} bundle(s), {result.records} records, "
                   f"{errors} error finding(s) in {store.url}")
    if not result.ok:
        sys.exit(FINDINGS)


def _verify_mapper(store: Any, workers: int | None,
                   dask_address: str | None) -> tuple[int, Any]:
    """(threads, mapper) for verify_store: processes on a local store, threads on S3."""
    from agent.file_store import FileStore

    if not isinstance(store, FileStore):
        if dask_address is not None:
            raise UsageError(f"--dask needs a local store (file:// or a mirror), not {store.url}",
                             hint="gamsa pull it into a mirror first")
        return workers or int(getattr(store, "concurrency", 1)), None
    if dask_address is not None:
        from agent.verify_dask import dask_mapper

        return 1, dask_mapper(dask_address)
    from signing.fanout import POOL_MIN_BUNDLES, default_workers, processes

    count = workers or default_workers()
    # Asked for: always the pool; by default only where it pays (POOL_MIN_BUNDLES).
    return 1, (processes(count, 0 if workers else POOL_MIN_BUNDLES) if count > 1 else None)


SUMMARY_ROWS = (("hosts", "hosts"), ("bundles", "bundles"), ("records", "records"),
                ("first", "first started"), ("last", "last finished"), ("gaps", "gaps"),
                ("forks", "forks"), ("silent_hosts", "silent hosts"),
                ("untrusted_keys", "untrusted keys"))


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary table `gamsa verify` ends with (`--json` has the same as `summary`)."""
    width = max(len(label) for _, label in SUMMARY_ROWS)
    return ["summary:", *(f"  {label:<{width}}  {'-' if summary[key] is None else summary[key]}"
                          for key, label in SUMMARY_ROWS)]


@click.command()
@config_option
@click.option("--store", "store_url", metavar="URL", help="Store to pull from (default: config).")
@click.option("--to", "mirror", required=True, type=MIRROR_DIR, metavar="DIR",
              help="The mirror directory (created; a re-run continues it).")
@click.option("--host", "hosts", multiple=True, metavar="HOST_ID",
              help="Only this host's bundles; repeatable.")
@click.option("--since", metavar="YYYY-MM-DD", help="Only bundles dated this day or later.")
@click.option("--until", metavar="YYYY-MM-DD", help="Only bundles dated this day or earlier.")
@click.option("--trust", multiple=True, type=click.Path(path_type=Path), metavar="KEY.pem",
              help="Trusted public key (PEM or key document), for any host; repeatable.")
@click.option("--trust-org", multiple=True, type=click.Path(path_type=Path), metavar="ORG.pub",
              help="Organisation root public key (default: verify.trust_org); repeatable.")
@click.option("--jobs", type=click.IntRange(min=1, max=64), default=None,
              help="Bundles downloaded and checked at once (default 16).")
@json_option
def pull(config_path: Path | None, store_url: str | None, mirror: Path, hosts: tuple[str, ...],
         since: str | None, until: str | None, trust: tuple[Path, ...],
         trust_org: tuple[Path, ...], jobs: int | None, as_json: bool) -> None:
    """Copy a store's bundles into a local mirror, verifying each on arrival; bundles that
    fail go to DIR/quarantine (exit 1)."""
    from agent.pull import DEFAULT_JOBS, parse_selection
    from agent.pull import pull as pull_store
    from agent.store import open_store
    from signing.keys import load_public_key_pem

    config = load(config_path, auditor=True)
    selection = parse_selection(hosts, since, until)
    org_keys = org_root_keys(trust_org or tuple(config.verify.trust_org))
    if not trust and org_keys is None:
        raise UsageError("pull needs the keys to verify with",
                         hint="pass --trust KEY.pem or --trust-org ORG.pub "
                              "(or set verify.trust_org)")
    trusted = {k.key_id: k for k in (load_public_key_pem(p) for p in trust)}
    store = open_store(store_url or config.store.url, config.store)
    result = pull_store(store, mirror.absolute(), selection, trusted, org_keys,
                        jobs or DEFAULT_JOBS,
                        progress_bar(sys.stderr.isatty() and not as_json, "pulling"))
    if as_json:
        emit_json(result.as_dict())
    else:
        for finding in result.findings:
            click.echo(f"{finding.severity.upper():7} {finding.code}: {finding.key}: "
                       f"{finding.message}")
        held = (f", {result.quarantined_before} held in quarantine from earlier pulls"
                if result.quarantined_before else "")
        unread = f", {result.unread} not read (permission)" if result.unread else ""
        verdict = ("OK" if result.ok else "QUARANTINED" if result.judged_bad
                   else "INCOMPLETE")
        click.echo(f"{verdict}: {result.pulled} bundle(s) "
                   f"pulled, {result.skipped} already mirrored, {result.quarantined} "
                   f"quarantined{held}{unread}, {result.bytes} bytes from {result.store} "
                   f"into {result.mirror}")
    if result.judged_bad:
        sys.exit(FINDINGS)
    if not result.ok:
        sys.exit(RUNTIME)  # only what this user may not read is missing


def _truncation_findings(config: Config, result: Any, host: str | None) -> list[Any]:
    """What only this host can tell: has its own store lost the newest bundles?

    The store alone cannot show its last bundles being deleted. On the agent's host,
    the chain head says how far the chain goes and the spool what is not shipped yet;
    everything before the oldest spooled bundle must be in the store.
    """
    from agent.identity import resolve_host_id
    from agent.state import StateDir
    from signing.errors import os_error
    from signing.verify import WARNING, Finding

    state = StateDir(config.state_dir)
    try:
        if not state.chain_path.exists():
            return []
        head = state.read_head()
        entries = list(state.entries())
    except (OSError, GamsaError) as exc:
        # An auditor's account on the agent's host: the store is readable, the agent's
        # state dir is not. Verify the store; say that this one check was not made.
        cause = exc if isinstance(exc, OSError) else exc.__cause__
        if not isinstance(cause, OSError):
            raise
        return [Finding(str(config.state_dir), "chain_head_unread",
                        f"{os_error(cause).message}: this host's chain head is not read, so "
                        "the truncation of its newest bundles in the store is not checked "
                        "(run as the agent's user to check it)", WARNING)]
    host_id = resolve_host_id(config.host_id)
    if head is None or (host is not None and host != host_id):
        return []
    spooled = [e.name.seq for e in entries if e.name.host_id == host_id]
    shipped_up_to = min(spooled) - 1 if spooled else head.seq
    in_store = max((b.seq for b in result.bundles if b.chain_id == head.chain_id
                    and b.name.host_id == host_id), default=0)
    from agent.chainguard import head_findings

    found = [Finding(*f) for f in head_findings(
        head, {e.name.seq: e.name.manifest_key for e in entries
               if e.name.host_id == host_id}, host_id, result.bundles)]
    if in_store >= shipped_up_to:
        return found
    return [Finding(f"v1/host={host_id}/", "chain_truncated",
                    f"this host's chain {head.chain_id} has shipped up to seq {shipped_up_to} "
                    f"(head {head.seq}), but the store ends at seq {in_store}"), *found]


def _resolve_bundle(store: Any, ref: str) -> tuple[str, str]:
    """(records key, manifest key) for a bundle given by either key or its stem."""
    from signing.bundle import MANIFEST_SUFFIX, RECORDS_SUFFIX

    stem = ref.removesuffix(RECORDS_SUFFIX).removesuffix(MANIFEST_SUFFIX)
    if not stem.startswith("v1/"):
        # Whole path components only: "1" must not pick the bundle whose id ends in 1.
        matches = [k for k in store.list("v1/host=") if k.endswith(MANIFEST_SUFFIX)
                   and k.removesuffix(MANIFEST_SUFFIX).endswith(f"/{stem}")]
        if len(matches) != 1:
            raise UsageError(f"bundle {ref!r}: {len(matches)} matching bundles in {store.url}",
                             hint="give the full object key")
        stem = matches[0].removesuffix(MANIFEST_SUFFIX)
    return stem + RECORDS_SUFFIX, stem + MANIFEST_SUFFIX


@click.command()
@config_option
@click.argument("bundle")
@click.argument("line", type=click.IntRange(min=1))
@click.option("--store", "store_url", metavar="URL", help="Store holding the bundle.")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Write the proof here.")
def prove(config_path: Path | None, bundle: str, line: int, store_url: str | None,
          output: Path | None) -> None:
    """Write an inclusion proof of LINE (1-based) of BUNDLE (object key or seq-id)."""
    from agent.store import open_store
    from signing.proof import make_proof

    config = load(config_path, auditor=True)
    store = open_store(store_url or config.store.url, config.store)
    records_key, manifest_key = _resolve_bundle(store, bundle)
    proof = make_proof(store.get(manifest_key), store.get(records_key), line, records_key)
    if output is None:
        click.echo(proof.decode())
    else:
        from agent.fsutil import failing, replace_atomic

        with failing("write the proof", output):  # 0640: it holds a record of evidence
            replace_atomic(output, proof, 0o640)
        click.echo(f"proof of {records_key} line {line} written to {output}", err=True)


@click.command("verify-proof")
@config_option
@click.argument("proof", type=click.Path(path_type=Path))
@click.option("--trust", multiple=True, type=click.Path(path_type=Path), metavar="KEY.pem",
              help="Trusted public key (PEM or key document); repeatable.")
@json_option
def verify_proof_cmd(config_path: Path | None, proof: Path, trust: tuple[Path, ...],
                     as_json: bool) -> None:
    """Check an inclusion proof against its signed manifest; print the record."""
    from signing.errors import ProofError, SignatureError
    from signing.proof import verify_proof

    config = load(config_path, auditor=True)
    trusted = trusted_keys(config, trust)
    try:
        data = proof.read_bytes()
    except OSError as exc:
        raise UsageError(f"proof file {proof}: {exc.strerror}") from exc
    try:
        proven = verify_proof(data, trusted)
    except (ProofError, SignatureError) as exc:
        raise GamsaError(f"{proof}: proof does not verify: {exc.message}",
                         exit_code=FINDINGS) from exc
    if as_json:
        emit_json({"ok": True, "records_key": proven.records_key, "line": proven.line,
                   "tree_size": proven.tree_size, "key_id": proven.key_id,
                   "record": proven.record})
    else:
        click.echo(f"OK: line {proven.line} of {proven.tree_size} in {proven.records_key}, "
                   f"signed by {proven.key_id[:16]}…")
        click.echo(json.dumps(proven.record, ensure_ascii=False, sort_keys=True))


