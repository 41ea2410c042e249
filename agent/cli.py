"""The `gamsa` command line: thin click commands over the agent's functions.

Errors are decided in one place (`main`): a `GamsaError` prints its one line and
exits with its code; a click usage error exits 2; anything unexpected is a bug and
exits 3 with a line saying so (`--verbose` shows the traceback). Heavy modules are
imported inside commands so `gamsa --help` stays instant and never imports boto3.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from signing.errors import (
    FINDINGS,
    OK,
    RUNTIME,
    USAGE,
    GamsaError,
    UsageError,
    is_os_failure,
    os_error,
)

if TYPE_CHECKING:
    from agent.config import Config
    from signing.keys import PublicKey

F = TypeVar("F", bound=Callable[..., Any])

_verbose = False


def config_option(func: F) -> F:
    return click.option("--config", "config_path", type=click.Path(path_type=Path),
                        envvar="GAMSA_CONFIG", default=None,
                        help="Config file (default: $GAMSA_CONFIG, /etc/gamsa/agent.toml, "
                             "built-in defaults).")(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def load(config_path: Path | None) -> Config:
    from agent.config import load_config, resolve_config_path

    return load_config(resolve_config_path(config_path, os.environ), os.environ)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def warn(message: str) -> None:
    click.echo(f"gamsa: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="gamsa")
def cli(verbose: bool) -> None:
    """gamsa (감사): collect, seal, ship and verify audit evidence."""
    global _verbose
    _verbose = verbose


# collect / ship -------------------------------------------------------------------


def _selected_collectors(config: Config, names: tuple[str, ...]) -> list[Any]:
    from collector.registry import all_collectors

    available = all_collectors()
    wanted = list(names) or list(config.collectors.enabled) or list(available)
    unknown = [n for n in wanted if n not in available]
    if unknown:
        source = "--collector" if names else f"{config.source}: collectors.enabled"
        raise UsageError(f"{source}: unknown collector {unknown[0]!r}",
                         hint=f"known: {', '.join(available)}")
    return [available[n] for n in wanted]


@cli.command()
@config_option
@click.option("--collector", "-c", "names", multiple=True, metavar="NAME",
              help="Run only this collector (repeatable). Default: collectors.enabled or all.")
@click.option("--trigger", type=click.Choice(["on-demand", "schedule", "file-change"]),
              default="on-demand", show_default=True, help="Recorded in the manifest.")
@click.option("--no-ship", is_flag=True, help="Seal into the spool only; ship later.")
@json_option
def collect(config_path: Path | None, names: tuple[str, ...], trigger: str, no_ship: bool,
            as_json: bool) -> None:
    """Collect evidence now, seal it into a bundle, spool it and ship it."""
    from agent.identity import resolve_host_id
    from agent.seal import seal_collection
    from agent.ship import ship_spool
    from agent.state import StateDir
    from agent.store import open_store

    config = load(config_path)
    collectors = _selected_collectors(config, names)
    store = None if no_ship else open_store(config.store.url, config.store)
    state = StateDir(config.state_dir, config.keys.agent)
    host_id = resolve_host_id(config.host_id)
    look = None if store is None else _store_look(store, state, host_id)
    with state.locked():
        sealed = seal_collection(config, host_id, collectors, trigger, state, look=look)
        ship_error: GamsaError | None = None
        shipped: list[str] = []
        quarantined: list[str] = []
        stamps = None
        if store is not None:
            try:
                report = ship_spool(state, store, sealed.head.key_id, config.timestamp)
                shipped, quarantined = report.shipped, report.quarantined
                stamps = report.timestamps
                if report.status_problem:
                    warn(report.status_problem)
            except GamsaError as exc:
                ship_error = exc
        spooled = len(state.entries())
    summary = {
        "host_id": host_id, "seq": sealed.head.seq, "chain_id": sealed.head.chain_id,
        "records": sealed.record_count, "manifest_key": sealed.entry.name.manifest_key,
        "genesis_reason": sealed.genesis_reason,
        "follows": sealed.view.divergence.follows if sealed.view and sealed.view.divergence
        else None,
        "store_check_problem": sealed.view.problem if sealed.view else None,
        "clock_warning": sealed.clock_warning,
        "collectors": {r.name: r.status for r in sealed.results},
        "gaps": {r.name: [g.as_dict() for g in r.gaps] for r in sealed.results if r.gaps},
        "shipped": shipped, "spooled": spooled, "store": None if store is None else store.url,
        "ship_error": None if ship_error is None else ship_error.diagnostics(),
        "quarantined": quarantined,
        "spool_over_cap": sealed.spool.over_cap,
        "timestamps": _stamps_summary(stamps),
    }
    if as_json:
        emit_json(summary)
    else:
        statuses = ", ".join(f"{r.name} {r.status}" for r in sealed.results)
        click.echo(f"sealed {host_id} seq {sealed.head.seq}: {sealed.record_count} records "
                   f"({statuses})")
        if sealed.genesis_reason:
            click.echo(f"new chain {sealed.head.chain_id}: {sealed.genesis_reason}")
        if store is not None and ship_error is None:
            click.echo(f"shipped {len(shipped)} bundle(s) to {store.url}")
    _warn_store_view(sealed)
    _warn_coverage(sealed.results)
    spool = sealed.spool
    if spool.over_cap:
        warn(f"spool over its cap ({spool.bytes} > {spool.max_bytes} bytes, spool.max_bytes): "
             f"sealed a spool_full record instead of a collection")
    _warn_quarantined(quarantined)
    _warn_stamps(stamps)
    if ship_error is not None:
        warn(f"sealed and spooled, but shipping failed: {ship_error.diagnostics()} "
             f"({spooled} bundle(s) wait in the spool; `gamsa ship` retries)")


@cli.command()
@config_option
@json_option
def ship(config_path: Path | None, as_json: bool) -> None:
    """Ship spooled bundles to the store now."""
    from agent.identity import resolve_host_id
    from agent.ship import ship_spool
    from agent.state import StateDir
    from agent.store import open_store

    config = load(config_path)
    store = open_store(config.store.url, config.store)
    state = StateDir(config.state_dir, config.keys.agent)
    with state.locked():
        signer, _ = state.signer(resolve_host_id(config.host_id))
        state.recover()
        report = ship_spool(state, store, signer.key_id, config.timestamp)
    if as_json:
        emit_json({"shipped": report.shipped, "store": store.url,
                   "remaining": len(state.entries()), "quarantined": report.quarantined,
                   "timestamps": _stamps_summary(report.timestamps)})
    else:
        click.echo(f"shipped {len(report.shipped)} bundle(s) to {store.url}")
    _warn_quarantined(report.quarantined)
    _warn_stamps(report.timestamps)
    if report.status_problem:
        warn(report.status_problem)
    if report.quarantined:
        sys.exit(FINDINGS)


def _stamps_summary(report: Any) -> dict[str, Any] | None:
    """A ship run's TSA tokens (agent/timestamp.py), for --json; None: no TSA."""
    if report is None:
        return None
    return {"added": report.added, "pending": report.pending, "error": report.error}


def _warn_stamps(report: Any) -> None:
    """Say when shipped manifests still wait for a TSA token (never a failure)."""
    if report is not None and report.error is not None:
        warn(f"timestamp: {report.error}" + (
            f"; {report.pending} shipped manifest(s) wait for a token, the next ship "
            f"retries (`gamsa status`)" if report.pending else ""))


def _store_look(store: Any, state: Any, host_id: str) -> Callable[[Any], Any]:
    """The pre-seal look at the store (agent/chainguard.py), bound to this run."""
    from agent.chainguard import look_before_sealing

    return lambda head: look_before_sealing(store, state, host_id, head)


def _warn_store_view(sealed: Any) -> None:
    """Loud lines: a new chain instead of a fork, a store not asked, a clock off."""
    view = sealed.view
    if view is not None and view.divergence is not None:
        follows = view.divergence.follows
        warn(f"WARNING: {view.divergence.reason} Refusing to fork: started new chain "
             f"{sealed.head.chain_id}, linked to the store's chain {follows['chain_id']} "
             f"seq {follows['seq']}; `gamsa status` reports this until you remove "
             f"divergence.json (docs/OPERATIONS.md)")
    if view is not None and view.problem is not None:
        warn(f"could not check the store before sealing ({view.problem}); sealed anyway, "
             f"shipping checks again")
    if sealed.clock_warning:
        warn(f"WARNING: clock: {sealed.clock_warning}")


def _warn_coverage(results: list[Any]) -> None:
    """One line per collector that failed or could not see all it covers
    (docs/OPERATIONS.md): a sealed bundle that says less must not look complete."""
    for result in results:
        if result.status == "error":
            warn(f"{result.name} error: {result.error} (its records up to the error are "
                 f"sealed, with a collector_error record)")
        elif result.status == "partial":
            reasons = "; ".join(f"{g.reason} (x{g.count})" for g in result.gaps)
            warn(f"{result.name} partial: {result.gap_count} item(s) not collected: "
                 f"{reasons}")


def _warn_quarantined(lines: list[str]) -> None:
    """One warning per spool entry the shipper quarantined (collect and ship)."""
    for line in lines:
        warn(f"spool entry quarantined, its records not stored: {line}")


@cli.command()
@config_option
@json_option
def status(config_path: Path | None, as_json: bool) -> None:
    """Spool, last ship, chain head; exit 1 if the spool is over its cap, a spool
    entry is quarantined or the last ship failed."""
    from agent.ship import agent_status
    from agent.state import StateDir

    config = load(config_path)
    state = StateDir(config.state_dir)
    info = agent_status(state, config.store.url, config.spool.max_bytes,
                        timestamp=config.timestamp)
    if as_json:
        emit_json(info)
    else:
        chain, spool = info["chain"], info["spool"]
        click.echo("chain head: " + ("none yet" if chain is None
                                     else f"seq {chain['seq']} ({chain['finished_at']})"))
        age = spool["oldest_age_seconds"]
        click.echo(f"spool: {spool['bundles']} bundle(s) waiting, {spool['bytes']} bytes "
                   f"(cap {spool['max_bytes']})"
                   + (f", oldest sealed {spool['oldest_sealed_at']} ({age} s ago)"
                      if spool["bundles"] else ""))
        success, error = info["last_success"], info["last_error"]
        click.echo("last success: " + (f"{success['at']} to {success['store']}" if success
                                       else "none yet"))
        click.echo("last error: " + (f"{error['at']}: {error['message']}" if error
                                     else "none"))
        if info["quarantined"]:
            click.echo(f"quarantined: {len(info['quarantined'])} spool entry(ies) in "
                       f"{state.quarantine}")
        if (stamps := info["timestamps"]) is not None:
            click.echo(f"timestamps: {stamps['pending']} shipped manifest(s) waiting for a "
                       f"token from {stamps['tsa']}")
        click.echo(_daemon_line(info["daemon"]))
    for problem in info["problems"]:
        warn(problem)
    if info["problems"]:
        sys.exit(FINDINGS)


def _daemon_line(daemon: dict[str, Any]) -> str:
    """`gamsa status`'s daemon line: running or not (by its lock), and its last doings."""
    report = daemon["status"] or {}
    sealed, shipped = report.get("last_sealed"), report.get("last_ship")
    done = "".join([
        f"; last sealed seq {sealed['seq']} ({sealed['trigger']}) at {sealed['at']}"
        if isinstance(sealed, dict) else "",
        f"; last ship {shipped['result']} at {shipped['at']}"
        if isinstance(shipped, dict) else ""])
    if daemon["running"]:
        due = report.get("next_due") or {}
        soonest = min(due.values()) if due else None
        return (f"daemon: running (pid {daemon['pid']}, since {report.get('started', '?')})"
                + done + (f"; next due {soonest}" if soonest else ""))
    if not report:
        return "daemon: not running (no `gamsa agent run` has used this state dir)"
    stopped = report.get("stopped")
    return (f"daemon: not running (pid {report.get('pid')} "
            + (f"stopped at {stopped}" if stopped else
               f"last reported at {report.get('updated')} and did not stop cleanly")
            + ")" + done)


@cli.group("store")
def store_group() -> None:
    """The object store."""


@store_group.command("init")
@config_option
@click.option("--force", is_flag=True,
              help="Change an existing bucket's versioning and Object Lock settings.")
@json_option
def store_init(config_path: Path | None, force: bool, as_json: bool) -> None:
    """Create the bucket with versioning and Object Lock default retention (s3://)."""
    from agent.store import open_store

    config = load(config_path)
    store = open_store(config.store.url, config.store)
    init = getattr(store, "init_bucket", None)
    if init is None:
        path = Path(store.url.removeprefix("file://"))
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise GamsaError(f"store {store.url}: cannot create {path}: {exc.strerror}") from exc
        result: dict[str, Any] = {"store": store.url, "done": [f"directory {path} ready"]}
    else:
        result = init(force=force)
    if as_json:
        emit_json(result)
        return
    if result.get("existed"):
        click.echo(f"bucket {result['bucket']} exists at {result['endpoint']}")
    for line in result["done"] or ["nothing to change"]:
        click.echo(line)
    if "settings" in result:
        settings = result["settings"]
        click.echo(f"versioning {settings['versioning']}, Object Lock "
                   f"{settings['object_lock']}, default retention "
                   f"{settings['default_retention'] or 'none'}")
        days = settings.get("abort_incomplete_uploads_days")
        click.echo(f"incomplete multipart uploads aborted after {days} days" if days else
                   "no lifecycle rule aborts incomplete multipart uploads (recommended: "
                   "docs/OPERATIONS-S3.md)")


# verify / prove --------------------------------------------------------------------


def _trusted_keys(config: Config, trust: tuple[Path, ...]) -> dict[str, PublicKey]:
    from agent.state import StateDir
    from signing.keys import load_public_key_pem

    if trust:
        keys = [load_public_key_pem(p) for p in trust]
        return {k.key_id: k for k in keys}
    state = StateDir(config.state_dir, config.keys.agent)
    if not state.has_key():
        raise UsageError("no --trust key given and this host has no agent key "
                         f"({state.key_name})", hint="pass --trust KEY.pem")
    own = state.public_key()
    warn(f"no --trust given: trusting this agent's own key {own.key_id[:16]}… "
         f"({state.key_name}); pass --trust KEY.pem to verify with a key you hold")
    from agent.rotate import retired_dir  # and the keys it rotated out (keys rotate)

    retired = [load_public_key_pem(p) for p in sorted(retired_dir(state).glob("*.json"))]
    return {k.key_id: k for k in (own, *retired)}


def _progress_bar(enabled: bool, label: str = "verifying") -> Callable[[int, int], None] | None:
    if not enabled:
        return None
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = click.progressbar(length=total, label=label, file=sys.stderr)
            bar.__enter__()
            state["bar"] = bar
        bar.update(1)
        if done == total:
            bar.__exit__(None, None, None)

    return update


def _org_keys(trust_org: tuple[Path, ...]) -> dict[str, PublicKey] | None:
    """The organisation root public keys given (None: no org trust)."""
    from signing.keys import load_public_key_pem

    if not trust_org:
        return None
    keys = [load_public_key_pem(p) for p in trust_org]
    return {k.key_id: k for k in keys}


@cli.command()
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
@json_option
def verify(config_path: Path | None, store_url: str | None, host: str | None,
           trust: tuple[Path, ...], trust_org: tuple[Path, ...], max_silence: str | None,
           as_of: str | None, tsa_cert: Path | None, as_json: bool) -> None:
    """Verify every bundle and chain in a store, and the fleet's completeness;
    exit 1 on any error finding."""
    from agent.completeness import expectations, fleet_lines, parse_as_of, silence_allowed
    from agent.store import open_store
    from signing.verify import verify_store

    config = load(config_path)
    when = parse_as_of(as_of)
    tsa_chain = None
    if tsa_cert is not None:
        from signing.timestamp import load_tsa_chain

        tsa_chain = load_tsa_chain(tsa_cert)
    silence: dt.timedelta | None = silence_allowed(config, max_silence)
    store = open_store(store_url or config.store.url, config.store)
    org_keys = _org_keys(trust_org or tuple(config.verify.trust_org))
    if not trust and org_keys is None and max_silence is None:
        # The host checking its own store with its own key: no daemon seals heartbeats
        # yet, and truncation is found from the local chain head; silence is judged
        # when asked (--max-silence) or in an audit (--trust, --trust-org).
        silence = None
    # With an organisation root, the agent's own key is not trusted by default.
    trusted = _trusted_keys(config, trust) if trust or org_keys is None else {}
    expect, read_findings = expectations(store, host, when, silence)
    result = verify_store(store, trusted, host,
                          _progress_bar(sys.stderr.isatty() and not as_json),
                          workers=int(getattr(store, "concurrency", 1)), org_keys=org_keys,
                          expect=expect, tsa_chain=tsa_chain)
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
        verdict = "OK" if result.ok else "FAILED"
        errors = sum(1 for f in result.findings if f.severity == "error")
        click.echo(f"{verdict}: {len(result.bundles)} bundle(s), {result.records} records, "
                   f"{errors} error finding(s) in {store.url}")
    if not result.ok:
        sys.exit(FINDINGS)


@cli.command()
@config_option
@click.option("--store", "store_url", metavar="URL", help="Store to pull from (default: config).")
@click.option("--to", "mirror", required=True, type=click.Path(path_type=Path), metavar="DIR",
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

    config = load(config_path)
    selection = parse_selection(hosts, since, until)
    org_keys = _org_keys(trust_org or tuple(config.verify.trust_org))
    if not trust and org_keys is None:
        raise UsageError("pull needs the keys to verify with",
                         hint="pass --trust KEY.pem or --trust-org ORG.pub "
                              "(or set verify.trust_org)")
    trusted = {k.key_id: k for k in (load_public_key_pem(p) for p in trust)}
    store = open_store(store_url or config.store.url, config.store)
    result = pull_store(store, mirror.absolute(), selection, trusted, org_keys,
                        jobs or DEFAULT_JOBS,
                        _progress_bar(sys.stderr.isatty() and not as_json, "pulling"))
    if as_json:
        emit_json(result.as_dict())
    else:
        for finding in result.findings:
            click.echo(f"{finding.severity.upper():7} {finding.code}: {finding.key}: "
                       f"{finding.message}")
        held = (f", {result.quarantined_before} held in quarantine from earlier pulls"
                if result.quarantined_before else "")
        click.echo(f"{'OK' if result.ok else 'QUARANTINED'}: {result.pulled} bundle(s) "
                   f"pulled, {result.skipped} already mirrored, {result.quarantined} "
                   f"quarantined{held}, {result.bytes} bytes from {result.store} "
                   f"into {result.mirror}")
    if not result.ok:
        sys.exit(FINDINGS)


def _truncation_findings(config: Config, result: Any, host: str | None) -> list[Any]:
    """What only this host can tell: has its own store lost the newest bundles?

    The store alone cannot show its last bundles being deleted. On the agent's host,
    the chain head says how far the chain goes and the spool what is not shipped yet;
    everything before the oldest spooled bundle must be in the store.
    """
    from agent.identity import resolve_host_id
    from agent.state import StateDir
    from signing.verify import Finding

    state = StateDir(config.state_dir)
    if not state.chain_path.exists():
        return []
    head = state.read_head()
    host_id = resolve_host_id(config.host_id)
    if head is None or (host is not None and host != host_id):
        return []
    spooled = [e.name.seq for e in state.entries() if e.name.host_id == host_id]
    shipped_up_to = min(spooled) - 1 if spooled else head.seq
    in_store = max((b.seq for b in result.bundles if b.chain_id == head.chain_id
                    and b.name.host_id == host_id), default=0)
    from agent.chainguard import head_findings

    found = [Finding(*f) for f in head_findings(
        head, {e.name.seq: e.name.manifest_key for e in state.entries()
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
        matches = [k for k in store.list("v1/host=") if k.endswith(MANIFEST_SUFFIX)
                   and k.removesuffix(MANIFEST_SUFFIX).endswith(stem)]
        if len(matches) != 1:
            raise UsageError(f"bundle {ref!r}: {len(matches)} matching bundles in {store.url}",
                             hint="give the full object key")
        stem = matches[0].removesuffix(MANIFEST_SUFFIX)
    return stem + RECORDS_SUFFIX, stem + MANIFEST_SUFFIX


@cli.command()
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

    config = load(config_path)
    store = open_store(store_url or config.store.url, config.store)
    records_key, manifest_key = _resolve_bundle(store, bundle)
    proof = make_proof(store.get(manifest_key), store.get(records_key), line, records_key)
    if output is None:
        click.echo(proof.decode())
    else:
        output.write_bytes(proof)
        click.echo(f"proof of {records_key} line {line} written to {output}", err=True)


@cli.command("verify-proof")
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

    config = load(config_path)
    trusted = _trusted_keys(config, trust)
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


# keys / collectors / config ---------------------------------------------------------------


@cli.group()
def keys() -> None:
    """The agent's signing key."""


@keys.command("init")
@config_option
@json_option
def keys_init(config_path: Path | None, as_json: bool) -> None:
    """Create the agent key if there is none (never replaces one)."""
    from agent.identity import resolve_host_id
    from agent.state import StateDir

    config = load(config_path)
    state = StateDir(config.state_dir, config.keys.agent)
    with state.locked():
        signer, created = state.signer(resolve_host_id(config.host_id), create=True)
    if as_json:
        emit_json({"key_id": signer.key_id, "created": created, "path": state.key_name})
    else:
        click.echo(f"{'created' if created else 'exists'}: {state.key_name} "
                   f"key_id {signer.key_id}")


@keys.command("show")
@config_option
@json_option
def keys_show(config_path: Path | None, as_json: bool) -> None:
    """Print the agent's public key (PEM) and key id; never the private key."""
    from agent.state import StateDir

    config = load(config_path)
    state = StateDir(config.state_dir, config.keys.agent)
    if not state.has_key():
        raise UsageError(f"no agent key at {state.key_name}", hint="run: gamsa keys init")
    public = state.public_key()
    if as_json:
        emit_json({"key_id": public.key_id, "public_key_pem": public.pem(),
                   "path": state.key_name})
    else:
        click.echo(f"key_id {public.key_id}")
        click.echo(public.pem().rstrip())


@keys.command("enroll")
@config_option
@click.option("--out", "-o", type=click.Path(path_type=Path), metavar="FILE",
              help="Also write the request to FILE ('-': stdout).")
@click.option("--submit/--no-submit", default=True, show_default=True,
              help="Put the request in the store's pending area (v1/enroll/pending/).")
@json_option
def keys_enroll(config_path: Path | None, out: Path | None, submit: bool,
                as_json: bool) -> None:
    """Ask the organisation to enroll this agent's key for this host."""
    from agent.enroll import build_request, submit_request
    from agent.fsutil import create_atomic
    from agent.identity import resolve_host_id
    from agent.state import StateDir
    from agent.store import open_store

    config = load(config_path)
    if out is None and not submit:
        raise UsageError("nothing to do: --no-submit without --out FILE")
    if as_json and out is not None and str(out) == "-":
        raise UsageError("--out - and --json both write to stdout; give --out a file")
    store = open_store(config.store.url, config.store) if submit else None
    state = StateDir(config.state_dir, config.keys.agent)
    host_id = resolve_host_id(config.host_id)
    with state.locked():
        request = build_request(state, host_id)
    data = request.to_bytes()
    written = None
    if out is not None and str(out) == "-":
        click.echo(data.decode())
    elif out is not None:
        try:
            if not create_atomic(out.absolute(), data, 0o644):
                raise UsageError(f"{out} exists", hint="refusing to overwrite; choose another "
                                                       "--out")
        except OSError as exc:
            raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from exc
        written = str(out)
    submitted = submit_request(store, request) if store is not None else None
    summary = {"host_id": host_id, "key_id": request.key.key_id, "file": written,
               "store_key": None if submitted is None else submitted.key,
               "already_pending": bool(submitted and submitted.already)}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"enrollment request: host {host_id} key_id {request.key.key_id}", err=True)
    if written:
        click.echo(f"written to {written}", err=True)
    if submitted is not None and store is not None:
        state_word = "already pending at" if submitted.already else "submitted to"
        click.echo(f"{state_word} {store.url} {submitted.key}", err=True)


@keys.command("rotate")
@config_option
@click.option("--enroll/--no-enroll", default=None,
              help="Submit an enrollment request for the new key to the store (default: "
                   "when the old key is enrolled, here or in the store).")
@click.option("--enroll-out", type=click.Path(path_type=Path), metavar="FILE",
              help="Also write the new key's enrollment request to FILE.")
@click.option("--no-ship", is_flag=True, help="Keep the statement only; publish with the "
                                              "next ship.")
@json_option
def keys_rotate(config_path: Path | None, enroll: bool | None, enroll_out: Path | None,
                no_ship: bool, as_json: bool) -> None:
    """Replace the agent key; the old key signs a rotation statement so the chain
    goes on unbroken under the new key."""
    from agent.enroll import build_request, installed_enrollments, submit_request
    from agent.fsutil import create_atomic
    from agent.identity import resolve_host_id
    from agent.rotate import publish_rotations, rotate_key
    from agent.state import StateDir
    from agent.store import open_store

    config = load(config_path)
    state = StateDir(config.state_dir, config.keys.agent)
    host_id = resolve_host_id(config.host_id)
    store = None if no_ship else open_store(config.store.url, config.store)
    now = dt_now()
    with state.locked():
        if enroll is None:  # was the old key enrolled? then the new one must be too
            old_key_id = state.signer(host_id)[0].key_id if state.key_path.exists() else ""
            enroll = bool(installed_enrollments(state)) or (store is not None and any(
                True for _ in store.list(f"v1/keys/{old_key_id}.enrollment.")))
        rotated = rotate_key(state, host_id, now)
        rotation = rotated.rotation
        request = build_request(state, host_id) if enroll or enroll_out else None
        published: list[str] = []
        submitted = None
        ship_error: GamsaError | None = None
        if store is not None:
            try:
                published = publish_rotations(state, store, rotation.new_key_id)
                if enroll and request is not None:
                    submitted = submit_request(store, request)
            except GamsaError as exc:
                ship_error = exc
    if enroll_out is not None and request is not None:
        try:
            if not create_atomic(enroll_out.absolute(), request.to_bytes(), 0o644):
                raise UsageError(f"{enroll_out} exists",
                                 hint="the key is rotated; write the request with: gamsa "
                                      "keys enroll --no-submit --out FILE")
        except OSError as exc:
            raise UsageError(f"cannot write {enroll_out}: {exc.strerror or exc}") from exc
    chain = rotation.continues
    summary = {"host_id": host_id, "old_key_id": rotation.old_key_id,
               "new_key_id": rotation.new_key_id, "rotated_at": rotation.rotated_at,
               "continues": None if chain is None else chain.to_json(),
               "statement": str(rotated.statement_path), "published": published,
               "enrollment_request": None if submitted is None else submitted.key,
               "ship_error": None if ship_error is None else ship_error.diagnostics()}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"rotated {host_id}: key {rotation.old_key_id} -> {rotation.new_key_id} "
                   f"at {rotation.rotated_at}")
        click.echo("the chain continues: " + ("no bundle sealed yet" if chain is None else
                   f"the next bundle is chain {chain.chain_id} seq {chain.seq + 1}"))
        click.echo(f"rotation statement (signed by the old key) kept in "
                   f"{rotated.statement_path}")
        for name in published:
            click.echo(f"published {name}")
        click.echo(f"the old private key is destroyed; its public document is kept in "
                   f"{state.keys / 'retired'}")
    click.echo("under organisation trust the new key needs its own enrollment before "
               "verifiers accept its bundles: " + (
                   f"request submitted to {submitted.key}; sign it with `gamsa org "
                   f"sign-enrollment --pending`" if submitted is not None else
                   "run `gamsa keys enroll`"), err=True)
    if ship_error is not None:
        warn(f"rotated, but publishing failed: {ship_error.diagnostics()} (every ship "
             f"retries)")


def dt_now() -> dt.datetime:
    """Now, to the second (rotation and revocation times are kept to the second)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@keys.command("install-enrollment")
@config_option
@click.argument("enrollment", type=click.Path(path_type=Path))
@click.option("--trust-org", multiple=True, type=click.Path(path_type=Path), metavar="ORG.pub",
              help="Also check the organisation's signature.")
@click.option("--no-ship", is_flag=True, help="Keep it only; publish with the next ship.")
def keys_install_enrollment(config_path: Path | None, enrollment: Path,
                            trust_org: tuple[Path, ...], no_ship: bool) -> None:
    """Keep a signed enrollment of this agent's key and publish it to the store."""
    from agent.enroll import install_enrollment, publish_enrollments
    from agent.identity import resolve_host_id
    from agent.state import StateDir
    from agent.store import open_store

    config = load(config_path)
    try:
        data = enrollment.read_bytes()
    except OSError as exc:
        raise UsageError(f"enrollment {enrollment}: {exc.strerror or exc}") from exc
    org_keys = _org_keys(trust_org)
    state = StateDir(config.state_dir, config.keys.agent)
    host_id = resolve_host_id(config.host_id)
    with state.locked():
        signer, _ = state.signer(host_id)
        path = install_enrollment(state, data, str(enrollment), signer.key_id, host_id,
                                  org_keys)
        click.echo(f"installed {path} (key {signer.key_id}, host {host_id})")
        if no_ship:
            return
        store = open_store(config.store.url, config.store)
        try:
            for name in publish_enrollments(state, store):
                click.echo(f"published {name} to {store.url}")
        except GamsaError as exc:
            warn(f"installed, but publishing failed: {exc.diagnostics()} (every ship "
                 f"retries)")


@cli.group()
def org() -> None:
    """The organisation root key: enroll host keys (keep the key offline)."""


@org.command("init")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Directory for org.key (0600) and org.pub.")
@click.option("--key", "key_uri", metavar="URI", default=None,
              help="Make the key where a signer URI says (pkcs11:...): only org.pub is "
                   "written to --out.")
@json_option
def org_init(out: Path, key_uri: str | None, as_json: bool) -> None:
    """Make the organisation's Ed25519 root key (never replaces one)."""
    from agent.org import init_org, init_org_on_token

    if key_uri is not None:
        from signing.pkcs11_uri import redact

        public_path, key_id, created = init_org_on_token(key_uri, out)
        if as_json:
            emit_json({"key_id": key_id, "created": created, "private_key": redact(key_uri),
                       "public_key": str(public_path)})
            return
        click.echo(f"organisation key_id {key_id}")
        click.echo(f"private key {'created' if created else 'exists'}: {redact(key_uri)}")
        click.echo(f"public key {public_path} (give it to verifiers: --trust-org)")
        return
    made = init_org(out)
    if as_json:
        emit_json({"key_id": made.key_id, "private_key": str(made.private_path),
                   "public_key": str(made.public_path)})
        return
    click.echo(f"organisation key_id {made.key_id}")
    click.echo(f"private key {made.private_path} (0600: keep it offline)")
    click.echo(f"public key {made.public_path} (give it to verifiers: --trust-org)")


@org.command("sign-enrollment")
@config_option
@click.argument("requests", nargs=-1, type=click.Path(path_type=Path))
@click.option("--org-key", required=True, metavar="URI",
              help="Organisation signing key: a key file path, file:PATH or a pkcs11: URI.")
@click.option("--store", "store_url", metavar="URL",
              help="Store to read pending requests from (with --pending) and publish to.")
@click.option("--pending", is_flag=True, help="Sign every pending request in --store.")
@click.option("--valid-days", type=click.IntRange(min=1, max=3660),
              default=365, show_default=True, help="Validity from now.")
@click.option("--renew-within", "renew_within", type=click.IntRange(min=0, max=3660),
              default=30, show_default=True, metavar="DAYS",
              help="With --pending: re-sign a key whose enrollment for its host ends "
                   "within DAYS; skip it otherwise.")
@click.option("--out", type=click.Path(path_type=Path), metavar="DIR",
              help="Write each signed enrollment here (default: . without --store).")
@click.option("--publish/--no-publish", default=True, show_default=True,
              help="With --store: put each signed enrollment in the store.")
@click.option("--yes", is_flag=True, help="Sign without asking.")
@json_option
def org_sign_enrollment(config_path: Path | None, requests: tuple[Path, ...],
                        org_key: str, store_url: str | None, pending: bool, valid_days: int,
                        renew_within: int, out: Path | None, publish: bool, yes: bool,
                        as_json: bool) -> None:
    """Review and sign enrollment requests (files, or all pending in a store)."""
    from agent.org import (
        now_utc,
        plan_from_files,
        plan_from_store,
        publish_signed,
        sign_plan,
        write_signed,
    )
    from agent.store import open_store
    from signing.signer import load_signer

    if pending == bool(requests):
        raise UsageError("give REQUEST.json files or --store URL --pending (one of the two)")
    if pending and not store_url:
        raise UsageError("--pending needs --store URL")
    signer = load_signer(org_key)
    org_public = signer.public_key()
    now = now_utc()
    store = None
    if store_url:
        store = open_store(store_url, load(config_path).store)
    if pending and store is not None:
        plan = plan_from_store(store, org_public, now, valid_days, renew_within)
    else:
        plan = plan_from_files(list(requests), now, valid_days)
    out_dir = out if out is not None else (None if store is not None else Path("."))
    _show_plan(plan, org_public.key_id)
    if plan.sign and not yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to sign without confirmation (not a terminal)",
                             hint="review the list above, then pass --yes")
        if not click.confirm(f"sign {len(plan.sign)} enrollment(s)?", err=True):
            raise GamsaError("nothing signed", exit_code=FINDINGS)
    signed = sign_plan(plan, signer, now)
    done = []
    for item in signed:
        entry: dict[str, Any] = {"host_id": item.candidate.request.host_id,
                                 "key_id": item.candidate.request.key.key_id,
                                 "source": item.candidate.source, "file": None,
                                 "object": None}
        if out_dir is not None:
            entry["file"] = str(write_signed(item, out_dir))
        if store is not None and publish:
            entry["object"] = publish_signed(item, store)
        done.append(entry)
        if not as_json:
            where = " and ".join(w for w in (entry["file"], entry["object"]) if w)
            click.echo(f"signed {entry['host_id']} key {entry['key_id']}: {where or '-'}",
                       err=True)
    if as_json:
        emit_json({"org_key_id": org_public.key_id, "signed": done,
                   "rejected": [{"source": s, "reason": r} for s, r in plan.rejected],
                   "skipped": [{"source": s, "reason": r} for s, r in plan.skipped]})
    if plan.rejected:
        sys.exit(FINDINGS)


@org.command("revoke")
@config_option
@click.option("--org-key", required=True, metavar="URI",
              help="Organisation signing key: a key file path, file:PATH or a pkcs11: URI.")
@click.option("--key-id", "revoked_key_id", required=True, metavar="KEY_ID",
              help="The agent key to revoke (64 hex digits).")
@click.option("--at", "at", metavar="TIME", default=None,
              help="Bundles finished after this UTC time (2026-01-31T00:00:00Z) are not "
                   "trusted (default: now).")
@click.option("--reason", required=True, help="Why, one line (kept in the revocation).")
@click.option("--store", "store_url", metavar="URL", help="Publish the revocation here.")
@click.option("--out", type=click.Path(path_type=Path), metavar="DIR",
              help="Write the revocation here (default: . without --store).")
@json_option
def org_revoke(config_path: Path | None, org_key: str, revoked_key_id: str, at: str | None,
               reason: str, store_url: str | None, out: Path | None, as_json: bool) -> None:
    """Sign a revocation of an agent key with the organisation key and publish it."""
    import hashlib

    from agent.fsutil import create_atomic
    from agent.store import open_store
    from signing.enrollment import format_time, parse_time
    from signing.errors import FormatError
    from signing.revocation import revocation_object_name, sign_revocation
    from signing.signer import load_signer

    now = dt_now()
    try:
        revoked_at = now if at is None else parse_time(at, f"--at {at[:40]!r}")
    except FormatError as exc:
        raise UsageError(exc.message) from None
    signer = load_signer(org_key)
    envelope = sign_revocation(revoked_key_id, revoked_at, reason, now, signer)
    name = revocation_object_name(revoked_key_id, envelope)
    store = open_store(store_url, load(config_path).store) if store_url else None
    out_dir = out if out is not None else (None if store is not None else Path("."))
    written = None
    if out_dir is not None:
        path = out_dir / Path(name).name
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            create_atomic(path, envelope, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        written = str(path)
    if store is not None:
        store.put(name, envelope, hashlib.sha256(envelope).hexdigest())
    summary = {"key_id": revoked_key_id, "revoked_at": format_time(revoked_at),
               "org_key_id": signer.key_id, "file": written,
               "object": None if store is None else name}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"revoked key {revoked_key_id} from {format_time(revoked_at)} "
               f"(organisation key {signer.key_id})")
    for where in (written, None if store is None else f"{store.url} {name}"):
        if where:
            click.echo(f"written to {where}")


def _show_plan(plan: Any, org_key_id: str) -> None:
    """Exactly what will be signed (on stderr, so --json stays data), and what not."""
    from signing.enrollment import format_time, show

    if not plan.sign:
        click.echo("nothing to sign", err=True)
    else:
        click.echo(f"will sign {len(plan.sign)} enrollment(s) with organisation key "
                   f"{org_key_id}:", err=True)
    for c in plan.sign:
        r = c.request
        facts = " ".join(f"{k}={show(str(v))}" for k, v in sorted(r.facts.items()))
        click.echo(f"  host {r.host_id}  key {r.key.key_id}\n"
                   f"    valid {format_time(c.not_before)} .. {format_time(c.not_after)}\n"
                   f"    facts {facts or '(none)'}\n"
                   f"    from {show(c.source)} (requested {r.created_at})", err=True)
    for source, reason in plan.skipped:
        click.echo(f"  skipped {show(source)}: {reason}", err=True)
    for source, reason in plan.rejected:
        click.echo(f"  REJECTED {show(source)}: {show(reason)}", err=True)


@cli.group("agent")
def agent_group() -> None:
    """The agent as a daemon."""


@agent_group.command("run")
@config_option
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="stderr lines: `gamsa: ...` text or JSON objects.")
def agent_run(config_path: Path | None, log_format: str) -> None:
    """Run in the foreground: schedule, seal, ship (systemd Type=notify)."""
    from agent.daemon import Daemon, Log

    Daemon(lambda: load(config_path), lambda c: _selected_collectors(c, ()),
           Log(log_format)).run()


@cli.command("collectors")
@json_option
def collectors_cmd(as_json: bool) -> None:
    """List the collectors, their platforms and record types."""
    from collector.registry import all_collectors

    found = all_collectors()
    if as_json:
        emit_json([{"name": c.name, "version": c.version, "platforms": list(c.platforms),
                    "supported_here": c.supported(), "description": c.description,
                    "record_types": sorted(c.record_types),
                    "options": [o.name for o in c.options], "schedule": c.schedule_seconds}
                   for c in found.values()])
        return
    import shutil
    import textwrap

    from collector.registry import COMMON_RECORD_TYPES

    width = max(40, shutil.get_terminal_size().columns - 1)  # honours $COLUMNS

    def block(label: str, text: str) -> str:
        return textwrap.fill(text, width, initial_indent=f"    {label}",
                             subsequent_indent=" " * (4 + len(label)),
                             break_on_hyphens=False)

    for c in found.values():
        here = "" if c.supported() else "  (not on this platform)"
        click.echo(f"{c.name} (version {c.version}; {', '.join(c.platforms)}){here}")
        click.echo(block("", c.description))
        click.echo(block("record types: ", ", ".join(c.record_types)))
        if c.options:
            click.echo(block(f"options [collectors.{c.name}]: ",
                             ", ".join(o.name for o in c.options)))
        if c.schedule is not None:
            click.echo(block("schedule: ", f"every {c.schedule} (declared)"))
        click.echo()
    click.echo(textwrap.fill("Any collector may also emit: " + ", ".join(COMMON_RECORD_TYPES)
                             + ". Every field: docs/COLLECTORS.md.", width))


@cli.group("config")
def config_group() -> None:
    """Configuration."""


@config_group.command("check")
@config_option
@json_option
def config_check(config_path: Path | None, as_json: bool) -> None:
    """Load and validate the config; print the effective settings."""
    from agent.config import config_as_dict, config_as_toml
    from agent.identity import resolve_host_id

    config = load(config_path)
    _selected_collectors(config, ())
    if config.privacy.pseudonymize:  # a missing or unsafe key would stop every collection
        from collector.privacy import load_pseudonym_key

        load_pseudonym_key(config.privacy.key_file)
    if as_json:
        emit_json({**config_as_dict(config), "resolved_host_id": resolve_host_id(config.host_id)})
    else:
        click.echo(f"# OK: {config.source or 'built-in defaults'}; the effective settings, "
                   f"defaults filled in (sizes in bytes, durations in seconds)")
        click.echo(f"# host_id resolves to {resolve_host_id(config.host_id)}")
        click.echo(config_as_toml(config), nl=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, map every error to one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="gamsa", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("gamsa: aborted", err=True)
        sys.exit(RUNTIME)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(USAGE)
    except GamsaError as exc:
        if _verbose:
            traceback.print_exc()
        click.echo(f"gamsa: error: {exc.diagnostics()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        # Last resort for a write site that does not map its own errors: a path that is
        # full, read-only or not ours is the machine's state, not a bug.
        if _verbose:
            traceback.print_exc()
        if not is_os_failure(exc):
            _bug(exc)
        click.echo(f"gamsa: error: {os_error(exc).diagnostics()}", err=True)
        sys.exit(RUNTIME)
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into exit 3
        if _verbose:
            traceback.print_exc()
        _bug(exc)
    sys.exit(OK)


def _bug(exc: BaseException) -> NoReturn:
    click.echo(f"gamsa: internal error (this is a bug, please report it): "
               f"{type(exc).__name__}: {exc}", err=True)
    sys.exit(RUNTIME)
