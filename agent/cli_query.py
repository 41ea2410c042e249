"""`gamsa query` and `gamsa diff`: the auditor's questions over a verified mirror
(made by `gamsa pull`). DuckDB (the `audit` extra) is imported only when a query
runs, so `gamsa --help` and `gamsa query --list` stay light."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.cli_common import MIRROR_DIR, emit_json
from signing.errors import FINDINGS, UsageError

if TYPE_CHECKING:
    from agent.diff import DiffResult
    from agent.mirror import MirrorView
    from agent.query import MirrorDatabase

_MIRROR_HELP = "A mirror made by `gamsa pull --to DIR`."


def _mirror_option(func: Any) -> Any:
    return click.option("--mirror", "mirror", type=MIRROR_DIR,
                        metavar="DIR", help=_MIRROR_HELP + " Required.")(func)


def _required_mirror(mirror: Path | None) -> MirrorView:
    from agent.mirror import open_mirror

    if mirror is None:
        raise UsageError("--mirror DIR is required",
                         hint="make one with `gamsa pull --store URL --to DIR`")
    return open_mirror(mirror)


def _output_format(as_csv: bool, as_json: bool) -> str:
    if as_csv and as_json:
        raise UsageError("--csv and --json: choose one")
    if as_csv:
        return "csv"
    if as_json:
        return "json"
    return "table" if sys.stdout.isatty() else "csv"


@click.command()
@click.argument("sql", required=False)
@_mirror_option
@click.option("--named", metavar="NAME", help="Run a shipped query (see --list).")
@click.option("--list", "list_named", is_flag=True, help="List the shipped queries.")
@click.option("--schema", is_flag=True, help="List the views and their columns.")
@click.option("--host", "hosts", multiple=True, metavar="HOST_ID",
              help="Only this host's bundles (repeatable).")
@click.option("--collector", "-c", "collectors", multiple=True, metavar="NAME",
              help="Only this collector's records and entries (repeatable).")
@click.option("--since", metavar="TIME",
              help="Only bundles collected at or after TIME (UTC date or time).")
@click.option("--until", metavar="TIME",
              help="Only bundles collected at or before TIME (a date includes that day).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (the default off a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
@click.option("--memory-limit", metavar="SIZE",
              help="DuckDB's memory limit, e.g. 2GB (default: DuckDB's, 80% of RAM); "
                   "beyond it large sorts and joins spill to a temp directory.")
def query(sql: str | None, mirror: Path | None, named: str | None, list_named: bool, schema: bool,
          hosts: tuple[str, ...], collectors: tuple[str, ...], since: str | None,
          until: str | None, as_csv: bool, as_json: bool, memory_limit: str | None) -> None:
    """Run SQL over a verified mirror: views records, manifests, collectors.

    \b
    records     one row per record: host, date, seq, bundle (manifest key), line
                (1-based: `gamsa prove --store file://DIR BUNDLE LINE`),
                collector, type, key, observed_at, data (JSON)
    manifests   one row per bundle: chain, collection time and trigger, record
                count, Merkle root, key id, host facts, predicate (JSON)
    collectors  one row per collector of each bundle: status, records, gaps
    Times are UTC. --host/--since/--until narrow what is read; a WHERE on the
    records view still reads every records object in scope.
    """
    from agent.named_queries import NAMED_QUERIES

    if list_named:
        _list_named(as_json)
        return
    if named is not None:
        if sql is not None:
            raise UsageError("give SQL or --named NAME, not both")
        if named not in NAMED_QUERIES:
            raise UsageError(f"--named {named}: no such query",
                             hint="known: " + ", ".join(NAMED_QUERIES))
        sql = NAMED_QUERIES[named].sql
    if sql is None and not schema:
        raise UsageError("give SQL, --named NAME, --list or --schema",
                         hint="e.g. gamsa query --mirror DIR "
                              "\"SELECT host, count(*) FROM records GROUP BY host\"")
    fmt = _output_format(as_csv, as_json)
    from agent.query_output import WRITERS
    from agent.when import parse_when

    window = (parse_when(since, "--since") if since else None,
              parse_when(until, "--until", end_of_day=True) if until else None)
    view = _required_mirror(mirror)
    unknown = sorted(set(hosts) - set(view.hosts()))
    if unknown:
        raise UsageError(f"--host {unknown[0]}: no bundles of this host in the mirror",
                         hint="hosts: " + (", ".join(view.hosts()[:10]) or "none"))
    with _database(view, hosts, collectors, window, memory_limit,
                   progress=fmt == "table") as db:
        if schema:
            sql = ("SELECT table_name AS view, column_name AS column, data_type AS type "
                   "FROM information_schema.columns WHERE table_name IN "
                   "('records', 'manifests', 'collectors') ORDER BY table_name, "
                   "ordinal_position")
        assert sql is not None
        result = db.query(sql)
        WRITERS[fmt](sys.stdout, result.columns, result.batches())


def _database(view: MirrorView, hosts: tuple[str, ...], collectors: tuple[str, ...],
              window: tuple[dt.datetime | None, dt.datetime | None],
              memory_limit: str | None, progress: bool) -> MirrorDatabase:
    try:
        from agent.query import MirrorDatabase, Scope
    except ModuleNotFoundError as exc:
        if exc.name != "duckdb":
            raise
        raise UsageError("gamsa query needs DuckDB, which agents do not carry",
                         hint="pip install 'gamsa[audit]'") from None
    return MirrorDatabase(view, Scope(frozenset(hosts), frozenset(collectors), *window),
                          memory_limit=memory_limit, progress=progress)


def _list_named(as_json: bool) -> None:
    from agent.named_queries import NAMED_QUERIES

    if as_json:
        emit_json([{"name": q.name, "description": q.description, "sql": q.sql.strip()}
                   for q in NAMED_QUERIES.values()])
        return
    width = max(len(name) for name in NAMED_QUERIES)
    for q in NAMED_QUERIES.values():
        click.echo(f"{q.name.ljust(width)}  {q.description}")


@click.command()
@_mirror_option
@click.option("--host", required=True, metavar="HOST_ID", help="The host to compare.")
@click.option("--from", "at_from", required=True, metavar="TIME",
              help="The earlier time (UTC date or time; a date is its first instant).")
@click.option("--to", "at_to", required=True, metavar="TIME",
              help="The later time (UTC date or time; a date includes that day).")
@click.option("--collector", "-c", "collectors", multiple=True, metavar="NAME",
              help="Only this collector (repeatable). Default: every collector.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def diff(mirror: Path | None, host: str, at_from: str, at_to: str, collectors: tuple[str, ...],
         as_json: bool) -> None:
    """What changed on a host between two times: records added, removed and changed
    by (collector, type, key), each side citing its sealed bundle and line.

    The state at a time is each collector's newest full collection finished by then
    (plus file-change bundles after it). Event record types (log lines, logins,
    journal entries) are not states and are left out: query them instead.
    Exit 0 when nothing differs, 1 when something does.
    """
    from agent.diff import diff_host
    from agent.when import parse_when

    view = _required_mirror(mirror)
    result = diff_host(view, host, parse_when(at_from, "--from"),
                       parse_when(at_to, "--to", end_of_day=True), frozenset(collectors))
    if as_json:
        emit_json(result.as_dict())
    else:
        _print_diff(result)
    if result.changes:
        sys.exit(FINDINGS)  # drift, as `diff` itself exits 1 on differences


def _print_diff(result: DiffResult) -> None:
    """Sources first (which collection each side's state is), then one block per
    difference with the bundle and line of each side, never cut: they are evidence."""
    click.echo(f"host {result.host}: state at {_stamp(result.at_from)} -> "
               f"{_stamp(result.at_to)}")
    for name in sorted(set(result.sources_from) | set(result.sources_to)):
        sides = [result.sources_from.get(name), result.sources_to.get(name)]
        click.echo(f"  {name}:")
        for label, source in zip(("from", "to"), sides, strict=True):
            if source is None:
                click.echo(f"    {label:<4} no collection (everything on the other side "
                           "counts as added or removed)")
                continue
            updates = f", then {len(source.updates)} file-change bundle(s)" \
                if source.updates else ""
            click.echo(f"    {label:<4} {source.bundle} ({source.status}, started "
                       f"{source.started_at}{updates})")
    if result.left_out:
        click.echo("  not compared (event types): " + ", ".join(result.left_out))
    counts = {k: sum(1 for c in result.changes if c.kind == k)
              for k in ("added", "removed", "changed")}
    click.echo(", ".join(f"{n} {k}" for k, n in counts.items()))
    for change in result.changes:
        fields = f"  [{', '.join(change.fields)}]" if change.fields else ""
        click.echo(f"{change.kind:<8} {change.collector}/{change.type} {change.key}{fields}")
        for label, cited in (("from", change.before), ("to", change.after)):
            if cited is not None:
                click.echo(f"           {label:<4} {cited.bundle} line {cited.line}")


def _stamp(moment: dt.datetime) -> str:
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S" + (".%f" if moment.microsecond else "") + "Z")
