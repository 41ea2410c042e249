"""Fleet completeness through the real `gamsa verify`: enrolled hosts with no bundles,
silent hosts (and truncation showing up as silence), and on S3, delete markers and
second versions of evidence objects.

The fleet is built with test_enrollment's helpers (real CLI runs, one file:// store,
an organisation key). Silence is judged with `--as-of`, placed between bundle times
read from the store, so no test sleeps.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.agent.s3_fixtures import S3GamsaEnv, object_versions
from tests.agent.test_enrollment import (
    Fleet,
    errors,
    host_env,
    key_id,
    make_fleet,
    ok,
    one_line_error,
    sign_in_process,
)
from tests.conftest import GamsaEnv

Report = dict[str, Any]


def audit(fleet: Fleet, auditor: GamsaEnv, *args: str) -> tuple[int, Report]:
    """`gamsa verify --trust-org` as an auditor: its own config, no agent state."""
    result = auditor.run("verify", "--store", f"file://{fleet.store}", "--trust-org",
                         str(fleet.org_pub), "--json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def auditor_env(tmp_path: Path, fleet: Fleet) -> GamsaEnv:
    return host_env(tmp_path, "auditor", fleet.store)


def hosts(report: Report) -> dict[str, Report]:
    return {h["host"]: h for h in report["fleet"]["hosts"]}


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.slow
def test_an_enrolled_host_without_bundles_is_reported(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, ("web-01", "db-01"))
    auditor = auditor_env(tmp_path, fleet)
    late = host_env(tmp_path, "app-01", fleet.store)
    fleet.hosts["app-01"] = late
    ok(late.run("keys", "init"))
    ok(late.run("keys", "enroll"))
    now = dt.datetime.now(dt.UTC)
    # Enrolled from tomorrow: not expected yet.
    sign_in_process(fleet, "app-01", now + dt.timedelta(days=1), now + dt.timedelta(days=30))
    code, report = audit(fleet, auditor)
    assert code == 0, errors(report)
    assert report["fleet"]["expected_hosts"] == 2
    # As of the day after tomorrow it is expected, and it has shown nothing.
    code, report = audit(fleet, auditor, "--as-of", stamp(now + dt.timedelta(days=2)),
                         "--max-silence", "30d")
    assert code == 1
    (finding,) = errors(report)
    assert finding["code"] == "host_without_bundles"
    assert finding["key"] == "v1/host=app-01/"
    assert "app-01" in finding["message"] and key_id(late) in finding["message"]
    fleet_view = report["fleet"]
    assert fleet_view["hosts_without_bundles"] == ["app-01"]
    assert fleet_view["expected_hosts"] == 3 and fleet_view["bundles"] == 4
    assert hosts(report)["app-01"]["key_ids"] == [key_id(late)]
    # An enrollment valid now: expected now; the text summary says it too.
    sign_in_process(fleet, "app-01", now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    text = auditor.run("verify", "--store", f"file://{fleet.store}", "--trust-org",
                       str(fleet.org_pub))
    assert text.returncode == 1
    assert "ERROR   host_without_bundles: v1/host=app-01/" in text.stdout
    assert ("fleet: 3 host(s) expected, 4 bundle(s); 0 silent, 1 without bundles (app-01)"
            in text.stdout)
    assert "object versions: not checked (a file:// store keeps no object versions" in text.stdout
    # Once it reports, the fleet is complete.
    ok(late.run("collect"))
    code, report = audit(fleet, auditor)
    assert code == 0, errors(report)
    assert report["fleet"]["hosts_without_bundles"] == []
    assert hosts(report)["app-01"]["bundles"] == 1


def test_a_forged_bundle_does_not_count_for_the_host_it_names(tmp_path: Path) -> None:
    """A host whose only bundles are signed by another host's key has no bundles."""
    store = tmp_path / "store"
    fleet = make_fleet(tmp_path, ("db-01",))
    web = host_env(tmp_path, "web-01", store)
    fleet.hosts["web-01"] = web
    ok(web.run("keys", "init"))
    ok(web.run("keys", "enroll"))
    ok(fleet.sign_pending("--yes"))
    forger = host_env(tmp_path, "forger", store)
    forger.config.write_text(forger.config.read_text().replace('"forger"', '"web-01"'))
    forger.state_dir.mkdir(mode=0o700)
    shutil.copytree(fleet.hosts["db-01"].state_dir / "keys", forger.state_dir / "keys")
    ok(forger.run("collect"))
    code, report = audit(fleet, auditor_env(tmp_path, fleet))
    assert code == 1
    assert {f["code"] for f in errors(report)} == {"key_not_enrolled_for_host",
                                                   "host_without_bundles"}
    assert hosts(report)["web-01"]["status"] == "no_bundles"


@pytest.mark.slow
def test_a_silent_host_and_a_truncated_chain_are_reported(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, ("web-01", "db-01"))
    auditor = auditor_env(tmp_path, fleet)
    code, report = audit(fleet, auditor)
    assert code == 0, errors(report)
    web, db = hosts(report)["web-01"], hosts(report)["db-01"]
    assert web["status"] == db["status"] == "ok" and web["bundles"] == 2
    t_web, t_db = instant(web["last_finished_at"]), instant(db["last_finished_at"])
    assert t_web < t_db  # make_fleet collects web-01 first
    # One second allowed; judged halfway between: web-01 is past it, db-01 is not.
    as_of = t_web + dt.timedelta(seconds=1) + (t_db - t_web) / 2
    code, report = audit(fleet, auditor, "--as-of", stamp(as_of), "--max-silence", "1s")
    assert code == 1
    (finding,) = errors(report)
    assert finding["code"] == "host_silent" and finding["key"] == "v1/host=web-01/"
    assert web["last_finished_at"] in finding["message"]
    assert web["last_bundle"] in finding["message"]
    assert report["fleet"]["silent_hosts"] == ["web-01"]
    assert report["fleet"]["max_silence_seconds"] == 1
    assert hosts(report)["db-01"]["status"] == "ok"

    # Truncation: web-01 seals seq 3, then seq 3 vanishes from the store. No gap, no
    # broken link: only silence can show it.
    ok(fleet.hosts["web-01"].run("collect"))
    ok(fleet.hosts["db-01"].run("collect"))
    code, report = audit(fleet, auditor)
    assert code == 0, errors(report)
    newest = hosts(report)["web-01"]
    t_web3 = instant(newest["last_finished_at"])
    as_of = t_web + dt.timedelta(seconds=1) + (t_web3 - t_web) / 2
    judged = ("--as-of", stamp(as_of), "--max-silence", "1s")
    code, report = audit(fleet, auditor, *judged)
    assert code == 0, errors(report)
    manifest = fleet.store / newest["last_bundle"]
    records = Path(str(manifest).replace(".manifest.dsse.json", ".records.jsonl.gz"))
    manifest.unlink()
    records.unlink()
    code, report = audit(fleet, auditor, *judged)
    assert code == 1
    (finding,) = errors(report)
    assert finding["code"] == "host_silent" and "host web-01" in finding["message"]
    assert web["last_bundle"] in finding["message"]  # seq 2 is now the newest
    # Without the silence check, the truncated store passes: this is what it adds.
    code, report = audit(fleet, auditor, "--as-of", stamp(as_of), "--max-silence", "1d")
    assert code == 0, errors(report)


def test_with_trusted_keys_the_hosts_seen_are_expected(gamsa_env: GamsaEnv,
                                                       tmp_path: Path) -> None:
    ok(gamsa_env.run("collect"))
    pem = tmp_path / "agent.pem"
    pem.write_text(json.loads(ok(gamsa_env.run("keys", "show", "--json")).stdout)
                   ["public_key_pem"])
    gamsa_env.write_config('[verify]\nmax_silence = "2d"\n')

    def run(*args: str) -> tuple[int, Report]:
        result = gamsa_env.run("verify", "--trust", str(pem), "--json", *args)
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, json.loads(result.stdout)

    now = dt.datetime.now(dt.UTC)
    code, report = run("--as-of", stamp(now + dt.timedelta(days=1)))
    assert code == 0, errors(report)
    (state,) = report["fleet"]["hosts"]
    assert state["host"] == "test-host" and state["expected_by"] == "trusted key"
    assert report["fleet"]["max_silence_seconds"] == 2 * 86400  # from [verify]
    code, report = run("--as-of", stamp(now + dt.timedelta(days=3)))
    assert code == 1
    assert [f["code"] for f in errors(report)] == ["host_silent"]
    assert "silent for 3d" in errors(report)[0]["message"]
    # --max-silence wins over the config.
    assert run("--as-of", stamp(now + dt.timedelta(days=3)), "--max-silence", "4d")[0] == 0


def test_verify_max_silence_defaults_to_four_heartbeats(gamsa_env: GamsaEnv) -> None:
    gamsa_env.write_config('[schedule]\nheartbeat = "10m"\n')
    checked = json.loads(ok(gamsa_env.run("config", "check", "--json")).stdout)
    assert checked["verify"]["max_silence"] == 2400
    gamsa_env.write_config('[verify]\nmax_silence = "6h"\n')
    checked = json.loads(ok(gamsa_env.run("config", "check", "--json")).stdout)
    assert checked["verify"]["max_silence"] == 6 * 3600


@pytest.mark.parametrize(("args", "config", "expected"), [
    (("--as-of", "yesterday"), "", "--as-of 'yesterday'"),
    (("--as-of", "2026-13-01T00:00:00Z"), "", "--as-of '2026-13-01T00:00:00Z'"),
    (("--max-silence", "soon"), "", "--max-silence"),
    (("--max-silence", "0"), "", "--max-silence must be at least 1 second"),
    ((), '[verify]\nmax_silence = "forever"\n', "verify.max_silence"),
    ((), "[verify]\nmax_silence = 0\n", "verify.max_silence"),
])
def test_bad_completeness_input_is_one_line(gamsa_env: GamsaEnv, args: tuple[str, ...],
                                            config: str, expected: str) -> None:
    gamsa_env.write_config(config)
    result = gamsa_env.run("verify", *args)
    assert expected in one_line_error(result, 2)


# --------------------------------------------------------------------------- S3 versions


def test_delete_marker_and_second_version_on_s3(s3_gamsa: S3GamsaEnv, s3_client: Any,
                                                tmp_path: Path) -> None:
    env = s3_gamsa
    for _ in range(2):
        ok(env.run("collect"))
    clean = ok(env.run("verify", "--json"))
    report = json.loads(clean.stdout)
    assert report["fleet"]["versions"]["checked"]
    assert report["fleet"]["versions"]["deleted"] == []
    bucket, prefix = env.bucket, f"{env.prefix}/"
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(
        Bucket=bucket, Prefix=prefix)["Contents"])
    records = next(k for k in keys if k.endswith(".records.jsonl.gz"))
    key_doc = next(k for k in keys if k.startswith(f"{prefix}v1/keys/") and
                   k.endswith(".json"))
    # Object Lock keeps versions, not keys: a plain DELETE adds a marker that hides
    # the object, and a plain PUT adds a second version over it.
    marker = s3_client.delete_object(Bucket=bucket, Key=records)
    assert marker["DeleteMarker"]
    body = s3_client.get_object(Bucket=bucket, Key=key_doc)["Body"].read()
    s3_client.put_object(Bucket=bucket, Key=key_doc, Body=body, ChecksumAlgorithm="SHA256")
    stored = object_versions(s3_client, bucket, key_doc)[key_doc]
    assert len(stored) == 2

    result = env.run("verify", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    found = errors(report)
    deleted = [f for f in found if f["code"] == "object_deleted"]
    overwritten = [f for f in found if f["code"] == "object_overwritten"]
    assert len(deleted) == 1 and len(overwritten) == 1, found
    assert deleted[0]["key"] == records.removeprefix(prefix)
    assert marker["VersionId"] in deleted[0]["message"]
    assert overwritten[0]["key"] == key_doc.removeprefix(prefix)
    assert all(v["VersionId"] in overwritten[0]["message"] for v in stored)
    # The hidden records object is also missing to the bundle check.
    assert {f["code"] for f in found} == {"object_deleted", "object_overwritten",
                                          "records_missing"}
    versions = report["fleet"]["versions"]
    assert versions["deleted"] == [records.removeprefix(prefix)]
    assert versions["overwritten"] == [key_doc.removeprefix(prefix)]
    text = env.run("verify")
    assert "object versions: " in text.stdout and "1 deleted, 1 overwritten" in text.stdout


def test_object_versions_are_read_page_by_page(s3_gamsa: S3GamsaEnv, s3_client: Any,
                                               aws_env: None) -> None:
    from agent.config import load_config
    from agent.s3_store import S3Store

    env = s3_gamsa
    for _ in range(2):
        ok(env.run("collect"))
    bucket, prefix = env.bucket, f"{env.prefix}/"
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(
        Bucket=bucket, Prefix=prefix)["Contents"])
    for key in keys[:3]:
        s3_client.delete_object(Bucket=bucket, Key=key)
    config = load_config(env.config, {})
    store = S3Store(env.store_url, config.store, list_page_size=2)
    read = list(store.object_versions("v1/"))
    expected = object_versions(s3_client, bucket, f"{prefix}v1/")
    assert len(read) == sum(len(v) for v in expected.values()) > 2 * 2
    assert {(v.key, v.version_id, v.is_delete_marker) for v in read} == {
        (key.removeprefix(prefix), str(v["VersionId"]), bool(v.get("DeleteMarker")))
        for key, found in expected.items() for v in found}
    assert sum(v.is_delete_marker for v in read) == 3


def test_the_hosts_own_check_judges_silence_only_when_asked(gamsa_env: GamsaEnv) -> None:
    """`gamsa verify` on the agent's host with its own key (no daemon yet seals
    heartbeats) does not fail a day after the last collection; --max-silence asks."""
    ok(gamsa_env.run("collect"))
    tomorrow = stamp(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    result = gamsa_env.run("verify", "--as-of", tomorrow)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "silence not judged (this host's own key" in result.stdout
    result = gamsa_env.run("verify", "--as-of", tomorrow, "--max-silence", "1h", "--json")
    assert result.returncode == 1
    assert [f["code"] for f in errors(json.loads(result.stdout))] == ["host_silent"]
