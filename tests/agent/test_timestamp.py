"""Witnessed time end to end: the real `gamsa` asks a local `openssl ts` TSA over HTTP
for a token over each shipped manifest, and `gamsa verify --tsa-cert` checks it.
A TSA that is down never stops sealing or shipping; a later ship adds the token."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.s3_fixtures import S3GamsaEnv
from tests.conftest import GamsaEnv
from tests.tsa import FAKETIME_LIBS, OPENSSL, LocalTsa, running_tsa

needs_faketime = pytest.mark.skipif(
    not FAKETIME_LIBS, reason="libfaketime not installed (Debian package faketime; "
                              ".ci/run installs it)")


@pytest.fixture
def local_tsa(tmp_path: Path) -> Iterator[LocalTsa]:
    with running_tsa(tmp_path / "tsa") as tsa:
        yield tsa


def with_tsa(env: GamsaEnv, tsa: LocalTsa) -> None:
    env.write_config(f'[timestamp]\nurl = "{tsa.url}"\ntimeout = 5\n')


def run_ok(env: GamsaEnv, *args: str) -> subprocess.CompletedProcess[str]:
    result = env.run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def verify(env: GamsaEnv, tsa: LocalTsa) -> tuple[int, dict[str, Any]]:
    result = env.run("verify", "--json", "--tsa-cert", str(tsa.chain))
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def codes(report: dict[str, Any]) -> dict[str, str]:
    return {f["code"]: f["severity"] for f in report["findings"]}


def tokens(store: Path) -> list[Path]:
    return sorted(store.rglob("*.manifest.tsr"))


def test_each_shipped_manifest_gets_a_token_that_verifies(gamsa_env: GamsaEnv,
                                                          local_tsa: LocalTsa) -> None:
    with_tsa(gamsa_env, local_tsa)
    first = json.loads(run_ok(gamsa_env, "collect", "--json").stdout)
    run_ok(gamsa_env, "collect")
    assert first["timestamps"] == {
        "added": [first["manifest_key"].removesuffix(".manifest.dsse.json") + ".manifest.tsr"],
        "pending": 0, "error": None}
    found = tokens(gamsa_env.store)
    assert len(found) == 2
    code, report = verify(gamsa_env, local_tsa)
    assert code == 0, report
    assert report["timestamps"] == {"checked": 2, "verified": 2, "missing": 0, "invalid": 0,
                                    "mismatched": 0, "late": 0}
    assert not {c for c in codes(report) if c.startswith("timestamp")}
    # What a third party runs, with nothing of gamsa: openssl over the stored objects.
    manifest = Path(str(found[0]).removesuffix(".tsr") + ".dsse.json")
    assert OPENSSL is not None
    check = subprocess.run([OPENSSL, "ts", "-verify", "-in", str(found[0]), "-data",
                            str(manifest), "-CAfile", str(local_tsa.chain)],
                           capture_output=True, text=True, check=False)
    assert "Verification: OK" in check.stdout, check.stderr
    status = run_ok(gamsa_env, "status", "--json")
    assert json.loads(status.stdout)["timestamps"]["pending"] == 0


def test_tsa_down_the_bundle_ships_status_says_so_and_a_later_ship_adds_the_token(
        gamsa_env: GamsaEnv, local_tsa: LocalTsa) -> None:
    with_tsa(gamsa_env, local_tsa)
    local_tsa.mode = "down"
    sealed = run_ok(gamsa_env, "collect", "--json")
    summary = json.loads(sealed.stdout)
    assert summary["shipped"] == [summary["manifest_key"]]  # shipped without a token
    assert summary["timestamps"]["pending"] == 1
    assert "HTTP 503" in summary["timestamps"]["error"]
    assert "timestamp:" in sealed.stderr and "the next ship retries" in sealed.stderr
    assert tokens(gamsa_env.store) == []
    status = gamsa_env.run("status")
    assert status.returncode == 1
    assert "1 shipped manifest(s) have no timestamp token yet" in status.stderr
    assert "HTTP 503" in status.stderr
    code, report = verify(gamsa_env, local_tsa)
    assert code == 0 and codes(report)["timestamp_missing"] == "warning", report
    # Down again for a second bundle: one request per run, not one per bundle.
    asked = local_tsa.requests
    run_ok(gamsa_env, "collect")
    assert local_tsa.requests == asked + 1
    local_tsa.mode = "up"
    shipped = json.loads(run_ok(gamsa_env, "ship", "--json").stdout)
    assert len(shipped["timestamps"]["added"]) == 2 and shipped["timestamps"]["pending"] == 0
    assert len(tokens(gamsa_env.store)) == 2
    assert run_ok(gamsa_env, "status").returncode == 0
    code, report = verify(gamsa_env, local_tsa)
    assert code == 0 and report["timestamps"]["verified"] == 2, report


def test_an_unreachable_tsa_is_said_in_one_line(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    gamsa_env.write_config('[timestamp]\nurl = "http://127.0.0.1:9/"\ntimeout = 2\n')
    result = run_ok(gamsa_env, "collect")
    assert "not reachable" in result.stderr and "127.0.0.1:9" in result.stderr
    assert len(list(gamsa_env.store.rglob("*.manifest.dsse.json"))) == 1


@needs_faketime
def test_a_bundle_whose_time_disagrees_with_its_token_is_reported(
        gamsa_env: GamsaEnv, local_tsa: LocalTsa) -> None:
    with_tsa(gamsa_env, local_tsa)
    local_tsa.faketime = "-1d"  # the witness saw the manifest a day before it claims to end
    ahead = json.loads(run_ok(gamsa_env, "collect", "--json").stdout)
    local_tsa.faketime = "+1d"  # a day after: a token fetched late, or a backdated bundle
    late = json.loads(run_ok(gamsa_env, "collect", "--json").stdout)
    code, report = verify(gamsa_env, local_tsa)
    assert code == 1
    by_code = {f["code"]: f for f in report["findings"]}
    assert by_code["timestamp_mismatch"]["key"] == ahead["manifest_key"]
    assert by_code["timestamp_mismatch"]["severity"] == "error"
    assert by_code["timestamp_late"]["key"] == late["manifest_key"]
    assert by_code["timestamp_late"]["severity"] == "warning"


def test_a_tampered_or_foreign_token_is_reported(gamsa_env: GamsaEnv, local_tsa: LocalTsa,
                                                 tmp_path: Path) -> None:
    with_tsa(gamsa_env, local_tsa)
    run_ok(gamsa_env, "collect")
    run_ok(gamsa_env, "collect")
    first, second = tokens(gamsa_env.store)
    os.chmod(first, stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(first.read_bytes())
    data[-20] ^= 0x01  # inside the signature
    first.write_bytes(bytes(data))
    os.chmod(second, stat.S_IRUSR | stat.S_IWUSR)
    second.write_bytes(first.read_bytes()[:100])  # truncated
    code, report = verify(gamsa_env, local_tsa)
    assert code == 1
    invalid = {f["key"]: f["message"] for f in report["findings"]
               if f["code"] == "timestamp_invalid"}
    rel = {str(p.relative_to(gamsa_env.store)) for p in (first, second)}
    assert set(invalid) == rel, report
    assert report["timestamps"]["invalid"] == 2
    other = LocalTsa(tmp_path / "other")
    other.make_pki()
    result = gamsa_env.run("verify", "--tsa-cert", str(other.chain))
    assert result.returncode == 1 and "timestamp_invalid" in result.stdout


def test_bad_timestamp_config_and_tsa_cert_are_usage_errors(gamsa_env: GamsaEnv,
                                                            tmp_path: Path) -> None:
    gamsa_env.write_config('[timestamp]\nurl = "ftp://tsa.example/"\n')
    result = gamsa_env.run("collect")
    assert result.returncode == 2 and '"timestamp.url"' in result.stderr
    gamsa_env.write_config('[timestamp]\ntimeout = 0\n')
    result = gamsa_env.run("collect")
    assert result.returncode == 2 and '"timestamp.timeout"' in result.stderr
    gamsa_env.write_config()
    run_ok(gamsa_env, "collect")
    result = gamsa_env.run("verify", "--tsa-cert", str(tmp_path / "nope.pem"))
    assert result.returncode == 2 and "nope.pem" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_tokens_ship_to_s3_beside_their_manifests(s3_gamsa: S3GamsaEnv,
                                                  local_tsa: LocalTsa) -> None:
    s3_gamsa.write_config(f'[timestamp]\nurl = "{local_tsa.url}"\ntimeout = 5\n')
    local_tsa.mode = "down"
    run_ok(s3_gamsa, "collect", "--no-ship")
    run_ok(s3_gamsa, "collect", "--no-ship")
    shipped = json.loads(run_ok(s3_gamsa, "ship", "--json").stdout)  # pipelined commits
    assert len(shipped["shipped"]) == 2 and shipped["timestamps"]["pending"] == 2
    local_tsa.mode = "up"
    added = json.loads(run_ok(s3_gamsa, "ship", "--json").stdout)["timestamps"]["added"]
    assert sorted(added) == sorted(k.removesuffix(".manifest.dsse.json") + ".manifest.tsr"
                                   for k in shipped["shipped"])
    result = s3_gamsa.run("verify", "--json", "--tsa-cert", str(local_tsa.chain))
    report = json.loads(result.stdout)
    assert result.returncode == 0, report
    assert report["timestamps"]["verified"] == 2
    assert not [f for f in report["findings"] if f["code"].startswith(("object_", "unexpected"))]


def test_a_token_already_in_the_store_is_left_and_judged(gamsa_env: GamsaEnv,
                                                         local_tsa: LocalTsa) -> None:
    with_tsa(gamsa_env, local_tsa)
    local_tsa.mode = "down"
    sealed = json.loads(run_ok(gamsa_env, "collect", "--json").stdout)
    planted = gamsa_env.store / (sealed["manifest_key"].removesuffix(".manifest.dsse.json")
                                 + ".manifest.tsr")
    planted.write_bytes(b"not a token")
    local_tsa.mode = "up"
    shipped = run_ok(gamsa_env, "ship")
    assert "already holds another token" in shipped.stderr
    assert run_ok(gamsa_env, "status").returncode == 0  # nothing left waiting
    assert planted.read_bytes() == b"not a token"
    code, report = verify(gamsa_env, local_tsa)
    assert code == 1 and codes(report)["timestamp_invalid"] == "error", report
