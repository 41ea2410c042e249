"""The `gamsa` command line: thin click commands over the agent's functions.

Errors are decided in one place (`main`): a `GamsaError` prints its one line and
exits with its code; a click usage error exits 2; anything unexpected is a bug and
exits 3 with a line saying so (`--verbose` shows the traceback). Heavy modules are
imported inside commands so `gamsa --help` stays instant and never imports boto3.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from agent import cli_audit, cli_export, cli_keys, cli_query, cli_report
from agent.cli_common import config_option, emit_json, json_option, load, warn
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

_verbose = False


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
        "follows": sealed.view.divergence.follows.to_json()
        if sealed.view and sealed.view.divergence else None,
        "store_check_problem": sealed.view.problem if sealed.view else None,
        "clock_warning": sealed.clock_warning,
        "collectors": {r.name: r.status for r in sealed.results},
        "gaps": {r.name: [g.to_json() for g in r.gaps] for r in sealed.results if r.gaps},
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
    """The pre-seal look at the store (agent/chainguard.py), bound to this run and,
    as the daemon's, given up after LOOK_SECONDS (then sealed unchecked)."""
    from agent.chainguard import LOOK_SECONDS, look_within

    return lambda head: look_within(LOOK_SECONDS, store, state, host_id, head)


def _warn_store_view(sealed: Any) -> None:
    """Loud lines: a new chain instead of a fork, a store not asked, a clock off."""
    view = sealed.view
    if view is not None and view.divergence is not None:
        follows = view.divergence.follows
        warn(f"WARNING: {view.divergence.reason} Refusing to fork: started new chain "
             f"{sealed.head.chain_id}, linked to the store's chain {follows.chain_id} "
             f"seq {follows.seq}; `gamsa status` reports this until you remove "
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


# The command groups that live in their own modules.
cli.add_command(cli_audit.verify)
cli.add_command(cli_audit.pull)
cli.add_command(cli_audit.prove)
cli.add_command(cli_audit.verify_proof_cmd)
cli.add_command(cli_keys.keys)
cli.add_command(cli_keys.org)
cli.add_command(cli_export.export)
cli.add_command(cli_query.query)
cli.add_command(cli_query.diff)
cli.add_command(cli_report.report)


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
