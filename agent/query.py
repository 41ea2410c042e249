"""SQL over a verified mirror with DuckDB: the views `records`, `manifests` and
`collectors` (docs/DESIGN.md, "The auditor's side"). The only module that imports
duckdb (the `audit` extra); `gamsa query` imports it inside the command.

Memory stays bounded by DuckDB, not by the mirror: records are never loaded into
Python. The mirror's bundles are listed (agent/mirror.py), their manifests read
into one small table (one row per bundle), and `records` is a view over DuckDB's
own reader of the gzip'd records objects, read again by each query that uses it.
A record's `line` (1-based, as `gamsa prove` and export take it) is its place in
its records object: the reader numbers the rows of the objects it is given, in the
order given (`WITH ORDINALITY`, which no filter is pushed below), and each
object's first number is the sum of the record counts its manifests sign before
it. A number outside 1..count would mean that order was lost: the query fails
then rather than name a wrong line.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from agent.mirror import BundleFilter, MirrorView
from agent.when import naive_utc
from signing.bundle import MAX_LINE_BYTES
from signing.errors import RUNTIME, GamsaError, UsageError

VIEWS = ("records", "manifests", "collectors")
# The manifests view's text columns: predicate path -> column, in order.
_PREDICATE_TEXT = {
    "chain.id": "chain_id", "chain.seq": "chain_seq", "chain.prev": "chain_prev",
    "chain.genesis_reason": "genesis_reason", "collection.id": "collection_id",
    "collection.trigger": "trigger", "collection.started_at": "started_at",
    "collection.finished_at": "finished_at", "records.count": "record_count",
    "records.merkle_root": "merkle_root", "host.hostname": "hostname",
    "agent.version": "agent_version",
}
_PREDICATE_CAST = {"chain_seq": "::BIGINT", "record_count": "::BIGINT",
                   "started_at": "::TIMESTAMP", "finished_at": "::TIMESTAMP"}
LINE_ORDER_LOST = "gamsa: records line order lost"
BATCH_ROWS = 2048


@dataclass(frozen=True)
class Scope:
    """What the views hold: hosts, collectors, and bundles collected (started_at) in
    [since, until]; empty sets mean all."""

    hosts: frozenset[str] = frozenset()
    collectors: frozenset[str] = frozenset()
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def bundle_filter(self) -> BundleFilter:
        """The mirror directories worth listing: a bundle's `date=` is the UTC day
        its collection started (agent/seal.py names it so)."""
        return BundleFilter(hosts=self.hosts,
                            since=self.since.astimezone(dt.UTC).date() if self.since else None,
                            until=self.until.astimezone(dt.UTC).date() if self.until else None)


@dataclass
class Result:
    """A query's columns (name, DuckDB type) and its rows, fetched in batches."""

    columns: list[tuple[str, str]]
    cursor: Any = field(repr=False)

    def batches(self) -> Iterator[list[tuple[Any, ...]]]:
        try:
            while True:
                rows = self.cursor.fetchmany(BATCH_ROWS)
                if not rows:
                    return
                yield rows
        except duckdb.Error as exc:
            raise _query_error(exc) from None


class MirrorDatabase:
    """A DuckDB connection with the mirror's views; close it (or use `with`)."""

    def __init__(self, view: MirrorView, scope: Scope, *,
                 memory_limit: str | None = None, progress: bool = False) -> None:
        """`progress`: DuckDB's progress bar, which it draws on stdout: only for a
        table on a terminal."""
        self.view = view
        self.scope = scope
        # Spills (large sorts, joins) go to a private temp dir, never the cwd.
        self._spill = Path(tempfile.mkdtemp(prefix="gamsa-query-"))
        config: dict[str, str | bool | int | float | list[str]] = {
            "temp_directory": str(self._spill), "enable_external_access": "true",
            "autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}
        if memory_limit:
            config["memory_limit"] = memory_limit
        try:
            self.con = duckdb.connect(":memory:", config=config)
        except duckdb.Error as exc:  # the one value a user gives here
            shutil.rmtree(self._spill, ignore_errors=True)
            raise UsageError(f"--memory-limit {memory_limit}: {_first_line(exc)}",
                             hint="e.g. 2GB or 512MB") from None
        self.con.execute(f"SET enable_progress_bar = {'true' if progress else 'false'}")
        try:
            self._build()
        except duckdb.Error as exc:
            self.close()
            raise _build_error(exc) from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> MirrorDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self._spill, ignore_errors=True)

    # building ------------------------------------------------------------------

    # The SQL below formats in only our own fragments (S608); values are parameters.

    def _build(self) -> None:
        bundles = list(self.view.bundles(self.scope.bundle_filter()))
        self.con.execute(
            "CREATE TEMP TABLE _bundle AS SELECT unnest($idx) AS idx, unnest($host) AS host,"
            " unnest($day)::DATE AS date, unnest($seq)::BIGINT AS seq,"
            " unnest($key) AS bundle, unnest($records) AS records_key,"
            " unnest($mpath) AS manifest_path, unnest($rpath) AS records_path",
            {"idx": list(range(len(bundles))), "host": [b.host for b in bundles],
             "day": [b.name.date for b in bundles], "seq": [b.seq for b in bundles],
             "key": [b.manifest_key for b in bundles],
             "records": [b.records_key for b in bundles],
             "mpath": [str(b.manifest_path) for b in bundles],
             "rpath": [str(b.records_path) for b in bundles]})
        self.con.execute("CREATE TEMP TABLE _wanted AS SELECT unnest($names)::VARCHAR AS name",
                         {"names": sorted(self.scope.collectors)})
        self._manifests(bool(bundles))
        self._scope_manifests()
        self._collectors_view()
        self._records_view()

    def _manifests(self, any_bundle: bool) -> None:
        """One row per bundle from its manifest (verified when it was pulled)."""
        if not any_bundle:
            source = ("SELECT NULL::VARCHAR AS filename, NULL::VARCHAR AS payload,"
                      " NULL::JSON AS signatures WHERE false")
            params: dict[str, Any] = {}
        else:
            # read_text and DuckDB's JSON functions: several times faster than
            # read_json over many small files.
            source = ("SELECT filename, content::JSON->>'payload' AS payload,"
                      " content::JSON->'signatures' AS signatures FROM read_text($paths)")
            params = {"paths": self.con.execute(
                "SELECT list(manifest_path ORDER BY idx) FROM _bundle").fetchall()[0][0]}
        # Each statement is decoded once and parsed once per group of fields (an
        # expression per field would decode and parse it again, row by row).
        self.con.execute(f"""
            CREATE TEMP TABLE _statement AS
            WITH env AS ({source})
            SELECT filename, signatures->>'$[0].keyid' AS key_id,
                   decode(from_base64(payload))::JSON->'$.predicate' AS predicate
            FROM env""", params)  # noqa: S608
        fields = ", ".join(f"'$.{path}'" for path in _PREDICATE_TEXT)
        names = ",\n".join(
            f"f[{n}]{_PREDICATE_CAST.get(name, '')} AS {name}"
            for n, name in enumerate(_PREDICATE_TEXT.values(), start=1))
        self.con.execute(f"""
            CREATE TEMP TABLE _manifest AS
            WITH p AS (SELECT filename, key_id, predicate,
                              json_extract_string(predicate, [{fields}]) AS f,
                              json_extract(predicate, ['$.host.os', '$.collectors']) AS j
                       FROM _statement)
            SELECT b.idx, b.host, b.date, b.seq, b.bundle, b.records_key, b.records_path,
                   {names}, p.key_id, j[1] AS os, j[2] AS collectors_json, p.predicate
            FROM _bundle b JOIN p ON p.filename = b.manifest_path""")  # noqa: S608
        self.con.execute("DROP TABLE _statement")

    def _scope_manifests(self) -> None:
        """Drop the bundles outside the time range and, with --collector, those
        holding none of the collectors; number what remains (the records order)."""
        conditions: list[str] = []
        params: dict[str, Any] = {}
        if self.scope.since is not None:
            conditions.append("started_at >= $since")
            params["since"] = naive_utc(self.scope.since)
        if self.scope.until is not None:
            conditions.append("started_at <= $until")
            params["until"] = naive_utc(self.scope.until)
        if self.scope.collectors:
            conditions.append("EXISTS (SELECT 1 FROM unnest(json_extract_string("
                              "collectors_json, '$[*].name')) AS c(name)"
                              " WHERE c.name IN (SELECT name FROM _wanted))")
        where = " AND ".join(conditions) or "true"
        self.con.execute(f"""
            CREATE TEMP TABLE _scoped AS
            SELECT * EXCLUDE (idx, records_path, collectors_json),
                   row_number() OVER (ORDER BY idx) AS _order,
                   records_path AS _records_path,
                   coalesce(sum(record_count) OVER (ORDER BY idx ROWS BETWEEN UNBOUNDED
                            PRECEDING AND 1 PRECEDING), 0) AS _first_row,
                   collectors_json AS _collectors
            FROM _manifest WHERE {where} ORDER BY idx""", params)  # noqa: S608
        self.con.execute("CREATE TEMP VIEW manifests AS SELECT * EXCLUDE (_order,"
                         " _records_path, _first_row, _collectors, predicate), predicate"
                         " FROM _scoped ORDER BY host, date, seq")

    def _collectors_view(self) -> None:
        where = ("WHERE c->>'name' IN (SELECT name FROM _wanted)"
                 if self.scope.collectors else "")
        self.con.execute(f"""
            CREATE TEMP VIEW collectors AS
            SELECT m.host, m.date, m.seq, m.bundle, m.started_at, m.trigger,
                   c->>'name' AS name, c->>'version' AS version, c->>'status' AS status,
                   (c->>'records')::BIGINT AS records, c->>'error' AS error,
                   (c->>'duration_ms')::BIGINT AS duration_ms,
                   coalesce(c->'gaps', '[]'::JSON) AS gaps,
                   coalesce((SELECT sum((g->>'count')::BIGINT) FROM
                             unnest(from_json(c->'gaps', '["JSON"]')) AS t(g)), 0)::BIGINT
                       AS gap_count
            FROM _scoped m, unnest(from_json(m._collectors, '["JSON"]')) AS u(c)
            {where}""")  # noqa: S608

    def _records_view(self) -> None:
        row = self.con.execute("SELECT list(_records_path ORDER BY _order),"
                               " coalesce(sum(record_count), 0) FROM _scoped").fetchall()
        paths, total = row[0][0] or [], row[0][1]
        if not paths or not total:
            self.con.execute(
                "CREATE TEMP VIEW records AS SELECT NULL::VARCHAR AS host, NULL::DATE AS date,"
                " NULL::BIGINT AS seq, NULL::VARCHAR AS bundle, NULL::BIGINT AS line,"
                " NULL::VARCHAR AS collector, NULL::VARCHAR AS type, NULL::VARCHAR AS key,"
                " NULL::TIMESTAMP AS observed_at, NULL::JSON AS data WHERE false")
            return
        collector_filter = ("WHERE r.collector IN (SELECT name FROM _wanted)"
                            if self.scope.collectors else "")
        # Each records line read whole as one CSV field (a canonical JSON line holds no
        # raw control character, so \x01 never splits it and nothing is quoted), then
        # its fields taken by DuckDB's JSON functions: faster than read_json here.
        relation = self.con.sql(f"""
            WITH lines AS (
                SELECT filename, ordinality, json_extract_string(line,
                       ['$.collector', '$.type', '$.key', '$.observed_at']) AS f,
                       line->'$.data' AS data
                FROM read_csv($paths, columns={{'line': 'VARCHAR'}}, header=false,
                              delim='\x01', quote='', escape='', auto_detect=false,
                              filename=true, hive_partitioning=false,
                              max_line_size={MAX_LINE_BYTES + 1}) WITH ORDINALITY),
            r AS (SELECT filename, ordinality, f[1] AS collector, f[2] AS type,
                         f[3] AS key, f[4] AS observed_at, data FROM lines)
            SELECT m.host, m.date, m.seq, m.bundle,
                   (CASE WHEN r.ordinality - m._first_row BETWEEN 1 AND m.record_count
                         THEN r.ordinality - m._first_row
                         ELSE error('{LINE_ORDER_LOST} in ' || m.bundle) END)::BIGINT
                       AS line,
                   r.collector, r.type, r.key,
                   r.observed_at::TIMESTAMP AS observed_at, r.data
            FROM r JOIN _scoped m ON m._records_path = r.filename
            {collector_filter}""", params={"paths": paths})  # noqa: S608
        relation.create_view("records", replace=True)

    # querying ------------------------------------------------------------------

    def query(self, sql: str) -> Result:
        """Run one SQL statement; a bad one is a one-line UsageError (exit 2)."""
        try:
            cursor = self.con.execute(sql)
        except duckdb.Error as exc:
            raise _query_error(exc) from None
        if cursor.description is None:
            raise UsageError("SQL: the statement returns no rows (give a SELECT)")
        columns = [(str(d[0]), str(d[1])) for d in cursor.description]
        return Result(columns, cursor)


def _first_line(exc: duckdb.Error) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _build_error(exc: duckdb.Error) -> GamsaError:
    """Reading the mirror's manifests or listing its records objects failed: a
    mirror damaged after the pull (a file removed or unreadable)."""
    first = _first_line(exc)
    return GamsaError(f"query: reading the mirror failed: {first}",
                      hint="run `gamsa verify --store file://DIR` on the mirror",
                      exit_code=RUNTIME)


def _query_error(exc: duckdb.Error) -> GamsaError:
    first = _first_line(exc)
    if LINE_ORDER_LOST in first:
        return GamsaError(f"query: {first.split(': ', 1)[-1]}; this is a bug",
                          exit_code=RUNTIME)
    if isinstance(exc, duckdb.IOException):
        return GamsaError(f"query: reading the mirror failed: {first}", exit_code=RUNTIME)
    return UsageError(f"SQL: {first}", hint="the views: " + ", ".join(VIEWS)
                      + " (`gamsa query --schema` lists their columns)")
