"""Shipping to S3 through outages, faults and crashes; the spool cap; `gamsa status`.

Everything goes over HTTP to moto's S3 server, through the fault-injecting proxy
when a test wants the network to misbehave. "No duplicate" is checked where it
shows: the bucket is versioned, so a second write of a key would be a second version.
"""

from __future__ import annotations

import gzip
import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agent.s3_fixtures import (
    FaultProxy,
    MotoServer,
    S3GamsaEnv,
    object_versions,
    s3_env,
    seal_many,
)
from tests.conftest import GamsaEnv

MIB = 1024 * 1024


def verify_clean(env: GamsaEnv, bundles: int) -> dict[str, Any]:
    trust = str(env.state_dir / "keys" / "agent.json")
    result = env.run("verify", "--trust", trust, "--json")
    report: dict[str, Any] = json.loads(result.stdout)
    assert result.returncode == 0, report["findings"][:5]
    assert report["bundles"] == bundles
    assert len(report["chains"]) == 1
    chain = report["chains"][0]
    assert (chain["first_seq"], chain["last_seq"], chain["bundles"]) == (1, bundles, bundles)
    return report


def assert_each_key_written_once(client: Any, env: S3GamsaEnv, bundles: int) -> None:
    versions = object_versions(client, env.bucket, f"{env.prefix}/")
    assert len(versions) == 2 * bundles + 1, len(versions)  # + the key document
    again = {key: len(v) for key, v in versions.items() if len(v) != 1}
    assert not again, again


def status_of(env: GamsaEnv) -> tuple[int, dict[str, Any]]:
    result = env.run("status", "--json")
    return result.returncode, json.loads(result.stdout)


@pytest.mark.slow
def test_outage_spools_then_ships_everything_in_order(
        tmp_path: Path, moto_server: MotoServer, lock_bucket: str, s3_client: Any,
        fault_proxy: FaultProxy) -> None:
    env = s3_env(tmp_path, fault_proxy.url, lock_bucket)
    first = env.run("collect")
    assert first.returncode == 0 and "shipped 1 bundle" in first.stdout, first.stderr
    assert status_of(env)[0] == 0

    fault_proxy.refuse()  # the store is down: connections are refused
    for _ in range(5):
        result = env.run("collect")
        assert result.returncode == 0, result.stderr  # sealed and spooled all the same
        assert "shipping failed" in result.stderr and "cannot connect" in result.stderr
    code, status = status_of(env)
    assert code == 1
    assert status["spool"]["bundles"] == 5 and status["spool"]["bytes"] > 0
    assert status["spool"]["oldest_age_seconds"] >= 0
    assert status["chain"]["seq"] == 6
    assert status["last_success"] is not None and status["last_result"] == "error"
    assert "cannot connect" in status["last_error"]["message"]
    human = env.run("status")
    assert human.returncode == 1
    assert "5 bundle(s) waiting" in human.stdout
    assert "last ship failed" in human.stderr
    shipped_before = env.run("ship")
    assert shipped_before.returncode == 3 and "cannot connect" in shipped_before.stderr

    fault_proxy.restore()
    result = env.run("ship", "--json")
    assert result.returncode == 0, result.stderr
    shipped = json.loads(result.stdout)["shipped"]
    assert [int(Path(k).name[:10]) for k in shipped] == [2, 3, 4, 5, 6]
    code, status = status_of(env)
    assert code == 0 and status["spool"]["bundles"] == 0 and status["last_result"] == "ok"
    assert status["failing_since"] is None
    verify_clean(env, 6)
    assert_each_key_written_once(s3_client, env, 6)


@pytest.mark.slow
def test_200_bundles_through_resets_stalls_and_slowdowns(
        tmp_path: Path, moto_server: MotoServer, lock_bucket: str, s3_client: Any,
        fault_proxy: FaultProxy) -> None:
    # store.proxy: the agent reaches the server through the faulty proxy.
    env = s3_env(tmp_path, moto_server.url, lock_bucket,
                 store_extra=f'proxy = "{fault_proxy.url}"\n', read_timeout=1)
    env.env.update({"GAMSA_STORE_MAX_ATTEMPTS": "12", "GAMSA_STORE_RETRY_MAX_SECONDS": "30"})
    seal_many(env, 200)
    fault_proxy.set_rates(reset=0.04, reset_after=0.04, stall=0.004, slowdown=0.08)
    started = time.monotonic()
    result = env.run("ship", "--json")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    shipped = json.loads(result.stdout)["shipped"]
    assert [int(Path(k).name[:10]) for k in shipped] == list(range(1, 201))
    counts = dict(fault_proxy.counts)
    assert all(counts.get(f, 0) > 0 for f in ("reset", "reset_after", "stall", "slowdown")), \
        counts
    print(f"200 bundles through faults {counts} in {elapsed:.1f} s")
    assert env.spool_names() == []
    fault_proxy.set_rates(reset=0, reset_after=0, stall=0, slowdown=0)
    verify_clean(env, 200)
    assert_each_key_written_once(s3_client, env, 200)


@pytest.mark.slow
def test_shipper_killed_50_times_then_completes(
        tmp_path: Path, moto_server: MotoServer, lock_bucket: str, s3_client: Any) -> None:
    env = s3_env(tmp_path, moto_server.url, lock_bucket)
    rng = random.Random(50)
    sealed = 40
    seal_many(env, sealed)
    kills = 0
    timer_kills = 0
    while kills < 50:
        if len(env.spool_names()) < 12:
            seal_many(env, 12)
            sealed += 12
        if kills % 2 == 0:
            # At a random step boundary of the shipper (3 per bundle: records put,
            # manifest put, spool entry marked done).
            step = rng.randint(1, 9)
            result = env.run("ship", crash_at=step)
            if result.returncode == 0:
                continue  # fewer steps than that: nothing was killed
            assert result.returncode == -signal.SIGKILL, result.stderr
        else:
            # At a random instant, wherever the process is (starting, mid-request, ...).
            process = env.start("ship")
            time.sleep(rng.uniform(0.1, 0.8))
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=30)
            timer_kills += process.returncode == -signal.SIGKILL
            assert process.returncode in (0, -signal.SIGKILL), process.returncode
        kills += 1
    print(f"{timer_kills} of 25 timer kills hit a running shipper; {sealed} bundles sealed")
    assert timer_kills >= 10  # most of the 25 timer kills landed before the run finished
    final = env.run("ship")
    assert final.returncode == 0, final.stderr
    assert env.spool_names() == []
    code, status = status_of(env)
    assert code == 0 and status["chain"]["seq"] == sealed
    verify_clean(env, sealed)
    assert_each_key_written_once(s3_client, env, sealed)


def test_spool_cap_seals_spool_full_records_and_status_says_why(gamsa_env: GamsaEnv) -> None:
    gamsa_env.write_config(extra="[spool]\nmax_bytes = 1\n")
    assert gamsa_env.run("collect", "--no-ship").returncode == 0  # a full collection
    assert status_of(gamsa_env)[0] == 1  # one bundle is already over a 1-byte cap
    result = gamsa_env.run("collect", "--no-ship", "--json")
    assert result.returncode == 0, result.stderr
    assert "spool over its cap" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["spool_over_cap"] is True and summary["collectors"] == {"agent": "ok"}
    assert summary["records"] == 2  # spool_full, and the agent journal's `journal` record
    spooled = sorted((gamsa_env.state_dir / "spool").iterdir())
    assert len(spooled) == 2  # nothing sealed was dropped
    lines = gzip.decompress((spooled[-1] / "records.jsonl.gz").read_bytes()).splitlines()
    record = json.loads(lines[0])
    assert (record["collector"], record["type"], record["key"]) == ("agent", "spool_full",
                                                                  "spool")
    assert record["data"]["max_bytes"] == 1 and record["data"]["bundles"] == 1
    assert record["data"]["spool_bytes"] > 1

    code, status = status_of(gamsa_env)
    assert code == 1 and status["spool"]["over_cap"] is True
    assert any("spool over its cap" in p for p in status["problems"])
    human = gamsa_env.run("status")
    assert human.returncode == 1 and "spool over its cap" in human.stderr

    # Shipping drains the spool; the next collection is a full one again.
    assert gamsa_env.run("ship").returncode == 0
    assert status_of(gamsa_env)[0] == 0
    full = gamsa_env.run("collect", "--json")
    assert full.returncode == 0
    assert json.loads(full.stdout)["collectors"] == {"host": "ok"}
    verify_clean(gamsa_env, 3)


def seal_big_bundle(env: S3GamsaEnv, megabytes: int) -> None:
    """One bundle whose records object is about `megabytes` MB (incompressible)."""
    import base64
    import os

    from agent.config import load_config
    from agent.seal import seal_collection
    from agent.state import StateDir
    from collector.record import Record
    from collector.registry import Collector, Field, RecordType

    count = megabytes * 1024 * 1024 // 1000  # base64 of 1 KiB gzips back to ~1 KiB
    big = Collector(
        name="blob", version="1", description="random payload (tests)",
        platforms=("linux", "darwin", "win32"),
        record_types={"blob": RecordType(doc="a blob", key="n", fields={
            "n": Field((int,), "a counter"), "blob": Field((str,), "random")})},
        collect=lambda _ctx: [Record("blob", "blob", f"{n:08d}", {
            "n": n, "blob": base64.b64encode(os.urandom(1024)).decode()})
            for n in range(count)])
    config = load_config(env.config, {})
    state = StateDir(config.state_dir)
    with state.locked():
        seal_collection(config, "test-host", [big], "schedule", state)


@pytest.mark.slow
def test_shipper_killed_during_a_multipart_upload_leaves_no_upload_behind(
        tmp_path: Path, moto_server: MotoServer, lock_bucket: str, s3_client: Any) -> None:
    from agent.state import StateDir

    env = s3_env(tmp_path, moto_server.url, lock_bucket)
    env.env = {"GAMSA_STORE_MULTIPART_THRESHOLD": str(5 * MIB),
               "GAMSA_STORE_PART_SIZE": str(5 * MIB)}
    seal_big_bundle(env, 16)
    (entry,) = StateDir(env.state_dir).entries()
    assert 15 * MIB < entry.records_path.stat().st_size < 20 * MIB  # 4 parts of 5 MiB
    full = f"{env.prefix}/{entry.name.records_key}"
    # What a shipper killed after starting its upload leaves: an upload in progress.
    s3_client.create_multipart_upload(Bucket=lock_bucket, Key=full)
    rng = random.Random(7)
    for _ in range(6):  # and real kills at random instants, wherever the shipper is
        process = env.start("ship")
        time.sleep(rng.uniform(0.3, 1.5))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        assert process.returncode in (0, -signal.SIGKILL), process.returncode
    if env.spool_names():
        final = env.run("ship")
        assert final.returncode == 0, final.stderr
    assert env.spool_names() == []
    uploads = s3_client.list_multipart_uploads(Bucket=lock_bucket).get("Uploads", [])
    assert uploads == [], [u["Key"] for u in uploads]
    verify_clean(env, 1)
    assert_each_key_written_once(s3_client, env, 1)
    head = s3_client.head_object(Bucket=lock_bucket, Key=full)
    assert head["ETag"].endswith('-4"'), head["ETag"]
