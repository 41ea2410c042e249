"""`gamsa query` and `gamsa diff` over a mirror made by the real seal, ship and pull:
the views and their bundle/line citations, the filters, the named queries on planted
records, diffs of a changed file, an added account and a file-change removal, and the
one-line errors (bad SQL, not a mirror)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.mirror import open_mirror
from tests.agent.mirror_fixtures import pull
from tests.agent.query_fixtures import planted, seal_bundles
from tests.conftest import GamsaEnv

SSHD = "/etc/ssh/sshd_config"


@dataclass
class Fleet:
    env: GamsaEnv
    mirror: Path
    t1: str  # after web-1's first bundle
    t2: str  # after its second
    t3: str  # after its file-change bundle

    def run(self, *args: str) -> Any:
        result = self.env.run(*args)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def query(self, *args: str) -> list[dict[str, Any]]:
        result = self.run("query", "--mirror", str(self.mirror), "--json", *args)
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows


def _now() -> str:
    time.sleep(0.01)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(0.01)
    return stamp


def _accounts(*users: tuple[str, int, bool]) -> Any:
    return planted("accounts", [("user", name, {"uid": uid, "sudo": sudo, "shell": "/bin/bash"})
                                for name, uid, sudo in users])


def _file(path: str, sha: str) -> tuple[str, str, dict[str, Any]]:
    return ("file", path, {"path": path, "kind": "file", "sha256": sha, "size": 10})


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    env = GamsaEnv(root, root / "agent.toml", root / "state", root / "store")
    env.write_config()
    seal_bundles(env, "web-1", [[
        _accounts(("root", 0, False), ("bob", 1000, False)),
        planted("files", [_file(SSHD, "a" * 64), _file("/etc/hosts", "c" * 64)])]],
        ship=False)
    t1 = _now()
    seal_bundles(env, "web-1", [[
        _accounts(("root", 0, False), ("bob", 1000, False), ("alice", 1001, True)),
        planted("files", [_file(SSHD, "b" * 64), _file("/etc/hosts", "c" * 64)]),
        planted("logs", [("access", "/var/log/auth.log:7",
                          {"action": "ssh_login_failed", "account": "mallory",
                           "source": "203.0.113.9", "time": "2026-11-30T01:02:03Z"}),
                         ("access", "/var/log/auth.log:8",
                          {"action": "ssh_login", "account": "bob", "source": "10.0.0.1",
                           "time": "2026-11-30T01:03:00Z"})])]], ship=False)
    t2 = _now()
    seal_bundles(env, "web-1", [[planted("files", [
        ("file_change", "/etc/hosts", {"path": "/etc/hosts", "change": "removed",
                                       "changed_fields": [], "detected_by": "watch",
                                       "previous": None, "sha256": None})])]],
        trigger="file-change", ship=False)
    t3 = _now()
    snapshot = planted("network", [("ai_egress", "tcp:10.0.0.5:50000-192.0.2.10:443#42",
                                     {"proto": "tcp", "remote_address": "192.0.2.10",
                                      "remote_port": 443, "pid": 42, "process_name": "curl",
                                      "exe": "/usr/bin/curl",
                                      "matched": ["api.openai.com:443"]})])
    seal_bundles(env, "web-2", [
        [_accounts(("root", 0, False))],
        [planted("ai_egress", [("ai_egress_observed", "api.openai.com:443 42:1",
                                {"endpoint": "api.openai.com:443", "process_name": "python3",
                                 "exe": "/usr/bin/python3", "count": 3,
                                 "first_seen": "2026-12-01T00:00:00Z",
                                 "last_seen": "2026-12-01T00:05:00Z"})]),
         planted("sessions", [("failed_login", "ssh:notty:1:root",
                               {"user": "root", "host": "198.51.100.7", "address": None,
                                "time": "2026-12-01T00:00:01Z"})]), snapshot],
        [planted("sessions", [("failed_login", "ssh:notty:1:root",
                               {"user": "root", "host": "198.51.100.7", "address": None,
                                "time": "2026-12-01T00:00:01Z"})]), snapshot],
    ])
    mirror = root / "mirror"
    code, _, stderr = pull(env, mirror)
    assert code == 0, stderr
    yield Fleet(env, mirror, t1, t2, t3)


def _record_at(fleet: Fleet, bundle: str, line: int) -> dict[str, Any]:
    """The record at (bundle, line), read by the mirror reader, not DuckDB."""
    view = open_mirror(fleet.mirror)
    found = next(b for b in view.bundles() if b.manifest_key == bundle)
    record: dict[str, Any] = list(view.records(found))[line - 1]
    return record


# views ------------------------------------------------------------------------------


def test_records_view_cites_the_bundle_and_line_that_hold_each_record(fleet: Fleet) -> None:
    rows = fleet.query("SELECT host, bundle, line, collector, type, key, data FROM records")
    view = open_mirror(fleet.mirror)
    expected = sum(1 for b in view.bundles() for _ in view.records(b))
    assert len(rows) == expected
    for row in rows:
        record = _record_at(fleet, row["bundle"], row["line"])
        assert (record["collector"], record["type"], record["key"], record["data"]) == \
            (row["collector"], row["type"], row["key"], row["data"])
        assert row["bundle"].startswith(f"v1/host={row['host']}/")


def test_a_cited_record_is_proven_from_the_mirror(fleet: Fleet) -> None:
    row = fleet.query("SELECT bundle, line FROM records WHERE key = 'alice'")[0]
    proof = fleet.env.root / "alice.proof.json"
    made = fleet.run("prove", "--store", f"file://{fleet.mirror}", row["bundle"],
                     str(row["line"]), "-o", str(proof))
    assert made.returncode == 0, made.stderr
    checked = fleet.run("verify-proof", str(proof), "--json", "--trust",
                        str(fleet.env.state_dir / "keys" / "agent.json"))
    assert checked.returncode == 0, checked.stderr
    assert "alice" in checked.stdout


def test_a_query_names_the_records_export_proves(fleet: Fleet) -> None:
    """`gamsa query --csv` output is what `gamsa export --prove-lines` takes."""
    rows = fleet.env.root / "privileged.csv"
    result = fleet.run("query", "--mirror", str(fleet.mirror), "--csv", "--host", "web-1",
                       "--named", "privileged-accounts")
    assert result.returncode == 0, result.stderr
    rows.write_text(result.stdout)
    out = fleet.env.root / "inspection.zip"
    exported = fleet.run("export", "--mirror", str(fleet.mirror), "--out", str(out),
                         "--host", "web-1", "--prove-lines", str(rows), "--json")
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["proofs"] == 2  # root and alice


def test_manifests_and_collectors_views(fleet: Fleet) -> None:
    manifests = fleet.query("SELECT host, seq, trigger, record_count, key_id, chain_id "
                            "FROM manifests")
    assert [(m["host"], m["trigger"]) for m in manifests] == [
        ("web-1", "schedule"), ("web-1", "schedule"), ("web-1", "file-change"),
        ("web-2", "schedule"), ("web-2", "schedule"), ("web-2", "schedule")]
    assert [m["record_count"] for m in manifests] == [4, 7, 1, 1, 3, 2]
    assert all(len(m["key_id"]) == 64 for m in manifests)
    collectors = fleet.query("SELECT host, seq, name, status, records, gap_count "
                             "FROM collectors WHERE host = 'web-1' ORDER BY seq, name")
    assert [(c["name"], c["records"], c["status"]) for c in collectors] == [
        ("accounts", 2, "ok"), ("files", 2, "ok"),
        ("accounts", 3, "ok"), ("files", 2, "ok"), ("logs", 2, "ok"), ("files", 1, "ok")]


def test_schema_lists_the_views_columns(fleet: Fleet) -> None:
    rows = fleet.query("--schema")
    columns = {(r["view"], r["column"]) for r in rows}
    assert {("records", "bundle"), ("records", "line"), ("manifests", "started_at"),
            ("collectors", "gaps")} <= columns


# filters ----------------------------------------------------------------------------


def test_host_collector_and_time_filters(fleet: Fleet) -> None:
    sql = "SELECT host, collector, count(*) AS n FROM records GROUP BY ALL ORDER BY ALL"
    only_web2 = fleet.query("--host", "web-2", sql)
    assert {r["host"] for r in only_web2} == {"web-2"}
    only_files = fleet.query("--collector", "files", sql)
    assert [(r["host"], r["collector"], r["n"]) for r in only_files] == [("web-1", "files", 5)]
    assert fleet.query("--collector", "files",
                       "SELECT count(*) AS n FROM manifests")[0]["n"] == 3
    # --since/--until cut by collection time: only web-1's second bundle lies between.
    between = fleet.query("--host", "web-1", "--since", fleet.t1, "--until", fleet.t2,
                          "SELECT DISTINCT seq FROM records")
    assert len(between) == 1
    future = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    assert fleet.query("--since", future, "SELECT * FROM records") == []
    assert fleet.query("--since", future, "SELECT count(*) AS n FROM manifests") == [{"n": 0}]


def test_csv_output_and_the_table_on_request(fleet: Fleet) -> None:
    result = fleet.run("query", "--mirror", str(fleet.mirror), "--csv",
                       "SELECT host, key FROM records WHERE type = 'user' ORDER BY ALL")
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["host", "key"] and ["web-1", "alice"] in rows


# named queries ----------------------------------------------------------------------


def test_named_queries_are_listed(fleet: Fleet) -> None:
    result = fleet.run("query", "--list")
    assert result.returncode == 0
    for name in ("privileged-accounts", "ai-egress", "failed-logins", "config-changes"):
        assert name in result.stdout


def test_privileged_accounts_as_of_each_hosts_newest_collection(fleet: Fleet) -> None:
    rows = fleet.query("--named", "privileged-accounts")
    assert {(r["host"], r["account"], r["sudo"]) for r in rows} == {
        ("web-1", "root", False), ("web-1", "alice", True), ("web-2", "root", False)}
    alice = next(r for r in rows if r["account"] == "alice")
    assert _record_at(fleet, alice["bundle"], alice["line"])["key"] == "alice"
    # As of t1 alice did not exist yet.
    early = fleet.query("--named", "privileged-accounts", "--until", fleet.t1)
    assert {r["account"] for r in early} == {"root"}


def test_ai_egress_by_host_and_process(fleet: Fleet) -> None:
    rows = fleet.query("--named", "ai-egress")
    assert [(r["host"], r["process"], r["endpoint"], r["seen_by"], r["connections"],
             r["records"]) for r in rows] == [
        ("web-2", "curl", "api.openai.com:443", "snapshot", 1, 2),
        ("web-2", "python3", "api.openai.com:443", "watch", 3, 1)]
    watched = rows[1]
    assert _record_at(fleet, watched["bundle"], watched["line"])["type"] == \
        "ai_egress_observed"


def test_failed_logins_each_once(fleet: Fleet) -> None:
    rows = fleet.query("--named", "failed-logins")
    assert sorted((r["host"], r["account"], r["action"]) for r in rows) == [
        ("web-1", "mallory", "ssh_login_failed"), ("web-2", "root", "failed_login")]
    btmp = next(r for r in rows if r["host"] == "web-2")
    first_bundle = fleet.query("--host", "web-2", "SELECT bundle FROM records WHERE "
                               "type = 'failed_login' ORDER BY seq LIMIT 1")[0]["bundle"]
    assert btmp["bundle"] == first_bundle


def test_config_changes(fleet: Fleet) -> None:
    rows = fleet.query("--named", "config-changes")
    assert [(r["host"], r["path"], r["change"]) for r in rows] == [
        ("web-1", "/etc/hosts", "removed")]


# diff -------------------------------------------------------------------------------


def _diff(fleet: Fleet, *args: str) -> dict[str, Any]:
    result = fleet.run("diff", "--mirror", str(fleet.mirror), "--host", "web-1", "--json",
                       *args)
    data: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == (1 if data["changes"] else 0), result.stderr
    return data


def test_diff_finds_a_changed_file_and_an_added_account(fleet: Fleet) -> None:
    data = _diff(fleet, "--from", fleet.t1, "--to", fleet.t2)
    changes = {(c["change"], c["collector"], c["type"], c["key"]): c for c in data["changes"]}
    assert set(changes) == {("added", "accounts", "user", "alice"),
                            ("changed", "files", "file", SSHD)}
    sshd = changes[("changed", "files", "file", SSHD)]
    assert sshd["fields"] == ["sha256"]
    assert _record_at(fleet, sshd["from"]["bundle"], sshd["from"]["line"])["data"]["sha256"] \
        == "a" * 64
    assert _record_at(fleet, sshd["to"]["bundle"], sshd["to"]["line"])["data"]["sha256"] \
        == "b" * 64
    alice = changes[("added", "accounts", "user", "alice")]
    assert alice["from"] is None
    assert _record_at(fleet, alice["to"]["bundle"], alice["to"]["line"])["key"] == "alice"
    assert "logs/access" in data["event_types_left_out"]
    assert data["collectors"]["logs"]["from"] is None


def test_diff_applies_file_change_bundles_and_the_collector_filter(fleet: Fleet) -> None:
    data = _diff(fleet, "--from", fleet.t2, "--to", fleet.t3, "--collector", "files")
    assert [(c["change"], c["key"]) for c in data["changes"]] == [("removed", "/etc/hosts")]
    assert set(data["collectors"]) == {"files"}
    assert len(data["collectors"]["files"]["to"]["updates"]) == 1
    same = _diff(fleet, "--from", fleet.t2, "--to", fleet.t2)
    assert same["changes"] == []


def test_diff_text_names_each_side(fleet: Fleet) -> None:
    result = fleet.run("diff", "--mirror", str(fleet.mirror), "--host", "web-1",
                       "--from", fleet.t1, "--to", fleet.t2)
    assert result.returncode == 1, result.stderr
    assert "1 added, 0 removed, 1 changed" in result.stdout
    assert f"changed  files/file {SSHD}  [sha256]" in result.stdout
    sshd = next(c for c in _diff(fleet, "--from", fleet.t1, "--to", fleet.t2)["changes"]
                if c["key"] == SSHD)
    for side in ("from", "to"):
        assert f"{sshd[side]['bundle']} line {sshd[side]['line']}" in result.stdout
    assert f"state at {fleet.t1} -> {fleet.t2}" in result.stdout


# errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (("SELEC 1",), "SQL: Parser Error"),
    (("SELECT nope FROM records",), "SQL: Binder Error"),
    (("--named", "nope"), "no such query"),
    (("--since", "yesterday", "SELECT 1"), "--since"),
    (("--host", "nope", "SELECT 1"), "--host nope: no bundles of this host"),
    (("--memory-limit", "lots", "SELECT 1"), "--memory-limit lots"),
])
def test_bad_queries_are_one_line_usage_errors(fleet: Fleet, args: tuple[str, ...],
                                               message: str) -> None:
    result = fleet.run("query", "--mirror", str(fleet.mirror), *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_directory_that_is_not_a_mirror(fleet: Fleet, tmp_path: Path) -> None:
    for args in (("query", "--mirror", str(tmp_path), "SELECT 1"),
                 ("diff", "--mirror", str(tmp_path), "--host", "h", "--from", "2026-01-01",
                  "--to", "2026-01-02")):
        result = fleet.run(*args)
        assert result.returncode == 2
        assert "not a gamsa mirror" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_diff_of_an_unknown_host_or_reversed_times(fleet: Fleet) -> None:
    base = ("diff", "--mirror", str(fleet.mirror))
    unknown = fleet.run(*base, "--host", "nope", "--from", fleet.t1, "--to", fleet.t2)
    assert unknown.returncode == 2 and "no bundles of this host" in unknown.stderr
    backwards = fleet.run(*base, "--host", "web-1", "--from", fleet.t2, "--to", fleet.t1)
    assert backwards.returncode == 2 and "--from is after --to" in backwards.stderr


# line numbers at scale -------------------------------------------------------------


def _write_bundle(root: Path, name: Any, keys: list[str], signer: Any,
                  count: int | None = None) -> None:
    """A bundle sealed by signing/ straight into a mirror's layout (no chain, no pull:
    query verifies nothing again); `count` overrides the signed record count."""
    from signing.bundle import sign_manifest, write_records
    from tests.signing.bundle_fixtures import manifest_predicate

    obj = write_records({"v": 1, "collector": "tick", "type": "tick", "key": k,
                         "host": name.host_id, "observed_at": f"{name.date}T00:00:00.000000Z",
                         "data": {"n": n}} for n, k in enumerate(keys))
    at = f"{name.date}T00:00:{name.seq % 60:02d}.000000Z"
    predicate = manifest_predicate(
        name, obj, at, at, {"id": "c", "seq": name.seq, "prev": None}, count=count,
        collectors=[{"name": "tick", "version": "1", "status": "ok", "records": obj.count,
                     "error": None, "duration_ms": 0, "gaps": []}])
    (root / name.records_key).parent.mkdir(parents=True, exist_ok=True)
    (root / name.records_key).write_bytes(obj.data)
    (root / name.manifest_key).write_bytes(
        sign_manifest(name, obj, predicate, signer))
    (root / ".gamsa-mirror.json").write_text("{}")


def test_line_numbers_hold_over_many_bundles_read_in_parallel(tmp_path: Path) -> None:
    """Hundreds of records objects of uneven sizes (some empty), read by 4 DuckDB
    threads: every (bundle, line) the view gives is where the mirror reader finds
    that record."""
    pytest.importorskip("duckdb")
    import random

    from agent.query import MirrorDatabase, Scope
    from signing.bundle import BundleName
    from signing.keys import FileSigner, generate_private_key

    signer = FileSigner.from_key(generate_private_key())
    rng = random.Random(7)
    expected: dict[tuple[str, int], str] = {}
    for seq in range(1, 301):
        name = BundleName(f"h{seq % 3}", f"2026-11-{1 + seq % 28:02d}", seq, f"c{seq:05d}")
        keys = [f"{seq}-{n}" for n in range(rng.choice([0, 1, 5, 50, 400]))]
        _write_bundle(tmp_path, name, keys, signer)
        expected.update({(name.manifest_key, n): k for n, k in enumerate(keys, start=1)})
    with MirrorDatabase(open_mirror(tmp_path), Scope()) as db:
        db.con.execute("SET threads = 4")
        result = db.query("SELECT bundle, line, key FROM records")
        got = {(b, line): k for batch in result.batches() for b, line, k in batch}
        assert got == expected
    # A host filter keeps the numbering (fewer objects are read).
    with MirrorDatabase(open_mirror(tmp_path), Scope(hosts=frozenset({"h1"}))) as db:
        result = db.query("SELECT bundle, line, key FROM records")
        got = {(b, line): k for batch in result.batches() for b, line, k in batch}
        assert got == {k: v for k, v in expected.items() if "/host=h1/" in k[0]}


def test_a_line_outside_the_signed_count_fails_the_query(tmp_path: Path) -> None:
    """The guard: rows beyond a manifest's signed count would be cited wrongly, so the
    query stops (exit 3) instead. A verified mirror never has this."""
    pytest.importorskip("duckdb")
    from agent.query import MirrorDatabase, Scope
    from signing.bundle import BundleName
    from signing.errors import RUNTIME, GamsaError
    from signing.keys import FileSigner, generate_private_key

    signer = FileSigner.from_key(generate_private_key())
    _write_bundle(tmp_path, BundleName("h", "2026-11-01", 1, "a"), ["x", "y", "z"], signer,
                  count=1)
    with MirrorDatabase(open_mirror(tmp_path), Scope()) as db:
        with pytest.raises(GamsaError, match="line order lost") as caught:
            list(db.query("SELECT line FROM records").batches())
    assert caught.value.exit_code == RUNTIME


def test_a_records_object_gone_from_the_mirror_is_one_line_exit_3(tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    from agent.query import MirrorDatabase, Scope
    from signing.bundle import BundleName
    from signing.errors import RUNTIME, GamsaError
    from signing.keys import FileSigner, generate_private_key

    name = BundleName("h", "2026-11-01", 1, "a")
    _write_bundle(tmp_path, name, ["x"], FileSigner.from_key(generate_private_key()))
    (tmp_path / name.records_key).unlink()
    with pytest.raises(GamsaError, match="reading the mirror failed") as caught:
        MirrorDatabase(open_mirror(tmp_path), Scope())
    assert caught.value.exit_code == RUNTIME
