"""Agent-side truth and clock sanity, through the real `gamsa` CLI (issue 9).

A restored state snapshot must give a new chain linked to the store's bundle and a
loud line, never a fork; a fresh install's genesis says "first collection"; a run
with the clock far ahead must not pin later bundles to the future, and the
verifier reports the bundle that claimed the future time. Clock steps are made
with libfaketime (Debian `faketime`, LD_PRELOAD) in the agent process only.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agent.s3_fixtures import S3GamsaEnv, free_port, s3_env
from tests.conftest import GamsaEnv, ok

FAKETIME_LIBS = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
needs_faketime = pytest.mark.skipif(
    not FAKETIME_LIBS, reason="libfaketime not installed (Debian package faketime; "
                              ".ci/run installs it)")


def faked(offset: str) -> dict[str, str]:
    """Environment making the agent's clock read `offset` off (e.g. '+26000d', '-5m')."""
    return {"LD_PRELOAD": FAKETIME_LIBS[0], "FAKETIME": offset,
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def ok_or_findings(result: subprocess.CompletedProcess[str]
                   ) -> subprocess.CompletedProcess[str]:
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def collect(env: GamsaEnv, *args: str, extra_env: dict[str, str] | None = None,
            ) -> tuple[dict[str, Any], str]:
    result = ok(env.run("collect", "--json", *args, extra_env=extra_env))
    return json.loads(result.stdout), result.stderr


def predicates(store: Path) -> dict[str, dict[str, Any]]:
    """Every manifest in a file:// store by key, with its predicate and sha256."""
    found = {}
    for path in sorted(store.rglob("*.manifest.dsse.json")):
        data = path.read_bytes()
        payload = json.loads(base64.b64decode(json.loads(data)["payload"]))
        found[str(path.relative_to(store))] = {**payload["predicate"],
                                               "sha256": hashlib.sha256(data).hexdigest()}
    return found


def verify(env: GamsaEnv) -> tuple[int, dict[str, Any]]:
    result = env.run("verify", "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def codes(report: dict[str, Any], severity: str | None = None) -> list[str]:
    return [f["code"] for f in report["findings"]
            if severity is None or f["severity"] == severity]


def restore(env: GamsaEnv, snapshot: Path) -> None:
    shutil.rmtree(env.state_dir)
    shutil.copytree(snapshot, env.state_dir, symlinks=True)


# genesis reasons --------------------------------------------------------------------


def test_fresh_install_after_keys_init_says_first_collection(gamsa_env: GamsaEnv) -> None:
    ok(gamsa_env.run("keys", "init"))
    sealed, _ = collect(gamsa_env)
    assert sealed["genesis_reason"] == "first collection"
    chain = next(iter(predicates(gamsa_env.store).values()))["chain"]
    assert chain["genesis_reason"] == "first collection" and "follows" not in chain


def test_every_genesis_path_says_what_happened(tmp_path: Path, gamsa_env: GamsaEnv) -> None:
    first, _ = collect(gamsa_env)  # the key is made by this collect; shipped
    assert first["genesis_reason"] == "first collection (new agent key)"
    # chain.json lost, the store not asked: the state dir shows it shipped before
    (gamsa_env.state_dir / "chain.json").unlink()
    lost, _ = collect(gamsa_env, "--no-ship")
    assert lost["genesis_reason"].startswith("chain state missing (chain.json is gone")
    # a new key: the old chain is named
    (gamsa_env.state_dir / "keys" / "agent.key").unlink()
    (gamsa_env.state_dir / "keys" / "agent.json").unlink()
    time.sleep(1.1)  # collection ids order by the second: the most recent is followed
    rekeyed, _ = collect(gamsa_env)
    assert rekeyed["genesis_reason"].startswith(
        f"new agent key (chain {lost['chain_id']} ended at seq 1 under key ")
    # chain.json lost, the store asked: it holds this host's chain, which is followed
    (gamsa_env.state_dir / "chain.json").unlink()
    again, stderr = collect(gamsa_env)
    assert again["genesis_reason"].startswith("no local chain state, but the store already "
                                              f"holds seq 1 of chain {rekeyed['chain_id']}")
    assert again["follows"]["chain_id"] == rekeyed["chain_id"]
    assert "Refusing to fork" in stderr


# restored snapshot ------------------------------------------------------------------


@pytest.mark.slow
def test_restored_snapshot_starts_a_new_linked_chain_not_a_fork(tmp_path: Path,
                                                               gamsa_env: GamsaEnv) -> None:
    first, _ = collect(gamsa_env)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(gamsa_env.state_dir, snapshot, symlinks=True)
    collect(gamsa_env)
    third, _ = collect(gamsa_env)
    assert third["seq"] == 3
    # On the agent's host, verify sees the store beyond the restored head.
    restore(gamsa_env, snapshot)
    code, report = verify(gamsa_env)
    assert code == 1 and "chain_beyond_head" in codes(report, "error"), report
    assert "chain_fork" not in codes(report)

    sealed, stderr = collect(gamsa_env)
    assert sealed["seq"] == 1 and sealed["chain_id"] != first["chain_id"]
    assert sealed["genesis_reason"] == (
        f"local chain head seq 1 is behind the store (seq 3, chain {first['chain_id']}): "
        f"state restored from a snapshot, or copied?")
    store_third = next(p for p in predicates(gamsa_env.store).values()
                       if p["chain"]["id"] == first["chain_id"] and p["chain"]["seq"] == 3)
    assert sealed["follows"] == {"chain_id": first["chain_id"], "seq": 3,
                                 "manifest_sha256": store_third["sha256"]}
    assert "WARNING" in stderr and "Refusing to fork" in stderr
    genesis = next(p for p in predicates(gamsa_env.store).values()
                   if p["chain"]["id"] == sealed["chain_id"])
    assert genesis["chain"]["follows"] == sealed["follows"]

    code, report = verify(gamsa_env)
    assert code == 0, report
    assert "chain_fork" not in codes(report) and "chain_beyond_head" not in codes(report)
    linked = [f for f in report["findings"] if f["code"] == "chain_follows"]
    assert len(linked) == 1 and f"linked to chain {first['chain_id']} seq 3" in \
        linked[0]["message"]

    # status says so, exit 1, until the operator removes the note
    status = gamsa_env.run("status")
    assert status.returncode == 1 and "chain divergence" in status.stderr
    (gamsa_env.state_dir / "divergence.json").unlink()
    ok(gamsa_env.run("status"))
    nxt, stderr = collect(gamsa_env)  # the new chain goes on, no new divergence
    assert nxt["seq"] == 2 and nxt["genesis_reason"] is None and "WARNING" not in stderr


@pytest.mark.slow
def test_restored_snapshot_sealed_offline_is_quarantined_at_ship_not_forked(
        tmp_path: Path, gamsa_env: GamsaEnv) -> None:
    first, _ = collect(gamsa_env)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(gamsa_env.state_dir, snapshot, symlinks=True)
    collect(gamsa_env)
    collect(gamsa_env)
    restore(gamsa_env, snapshot)
    # The store cannot be asked (--no-ship): sealing goes on in the old chain.
    offline2, _ = collect(gamsa_env, "--no-ship")
    offline3, _ = collect(gamsa_env, "--no-ship")
    assert (offline2["seq"], offline3["seq"]) == (2, 3)
    before = set(predicates(gamsa_env.store))

    shipped = gamsa_env.run("ship", "--json")
    assert shipped.returncode == 1, shipped.stderr
    assert json.loads(shipped.stdout)["quarantined"] and json.loads(shipped.stdout)[
        "remaining"] == 0  # not a stuck spool
    assert "would fork the store" in shipped.stderr
    assert "the store already holds seq 2 of chain" in shipped.stderr
    assert set(predicates(gamsa_env.store)) == before  # nothing of the fork was stored
    quarantined = sorted(p.name for p in (gamsa_env.state_dir / "quarantine").iterdir())
    assert [n.split("-")[0] for n in quarantined] == ["0000000002", "0000000003"]
    status = gamsa_env.run("status")
    assert status.returncode == 1 and "the next collection starts a new chain" in status.stderr
    noted = json.loads(ok_or_findings(gamsa_env.run("status", "--json")).stdout)["divergence"]
    assert noted["chain_id"] == first["chain_id"] and noted["new_chain"] is None

    # The next collection looks again: it follows the store's newest bundle (seq 3).
    sealed, stderr = collect(gamsa_env)
    assert sealed["seq"] == 1 and sealed["genesis_reason"].startswith(
        f"local chain head seq 3 of chain {first['chain_id']} is not the store's")
    assert sealed["follows"]["chain_id"] == first["chain_id"] and \
        sealed["follows"]["seq"] == 3
    assert "Refusing to fork" in stderr
    code, report = verify(gamsa_env)
    assert code == 0, report
    assert "chain_follows" in codes(report) and "chain_fork" not in codes(report)
    assert "chain_follows_continued" not in codes(report)


def test_shipper_note_alone_starts_the_linked_chain_when_the_store_shows_no_more(
        tmp_path: Path, gamsa_env: GamsaEnv) -> None:
    first, _ = collect(gamsa_env)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(gamsa_env.state_dir, snapshot, symlinks=True)
    collect(gamsa_env)  # the store's chain ends at seq 2
    restore(gamsa_env, snapshot)
    for _ in range(3):  # offline: seq 2, 3, 4 of the old chain
        collect(gamsa_env, "--no-ship")
    assert gamsa_env.run("ship").returncode == 1  # seq 2 collides: 2..4 quarantined
    sealed, _ = collect(gamsa_env)
    assert "forked from the store at seq 2 (found when shipping)" in sealed["genesis_reason"]
    assert (sealed["follows"]["chain_id"], sealed["follows"]["seq"]) == (first["chain_id"], 2)
    code, report = verify(gamsa_env)
    assert code == 0 and "chain_follows" in codes(report), report


def test_verify_on_a_copied_host_names_a_different_head_manifest(
        tmp_path: Path, gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env)
    copy = tmp_path / "copy"
    shutil.copytree(gamsa_env.state_dir, copy, symlinks=True)
    collect(gamsa_env)  # seq 2 shipped from the original
    restore(gamsa_env, copy)
    mine, _ = collect(gamsa_env, "--no-ship")  # the copy's own seq 2, not shipped
    assert mine["seq"] == 2
    code, report = verify(gamsa_env)
    assert code == 1
    mismatch = [f for f in report["findings"] if f["code"] == "chain_head_mismatch"]
    assert len(mismatch) == 1 and "at seq 2" in mismatch[0]["message"], report


# clock ---------------------------------------------------------------------------------


@needs_faketime
@pytest.mark.slow
def test_forward_clock_step_does_not_pin_later_bundles(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env)
    future, _ = collect(gamsa_env, extra_env=faked("+26000d"))  # a run in the 2090s
    later, stderr = collect(gamsa_env)
    last, _ = collect(gamsa_env)
    manifests = {p["chain"]["seq"]: p for p in predicates(gamsa_env.store).values()}
    assert manifests[2]["collection"]["started_at"][:2] == "20"
    assert manifests[2]["collection"]["started_at"][:4] > manifests[1]["collection"][
        "started_at"][:4]
    for seq in (3, 4):  # the real clock again, not the 2090s
        assert manifests[seq]["collection"]["started_at"][:4] == \
            manifests[1]["collection"]["started_at"][:4]
    assert manifests[3]["collection"]["clock_stepped_back"] == {
        "previous_finished_at": manifests[2]["collection"]["finished_at"],
        "clock": manifests[3]["collection"]["started_at"]}
    assert "clock_stepped_back" not in manifests[4]["collection"]
    assert "clock_ahead" in stderr
    code, report = verify(gamsa_env)
    assert code == 1
    ahead = [f for f in report["findings"] if f["code"] == "clock_ahead"]
    assert [f["key"] for f in ahead] == [future["manifest_key"]], report
    assert "time_backwards" not in codes(report)
    del later, last


@needs_faketime
def test_small_clock_step_back_still_holds_time_in_the_chain(gamsa_env: GamsaEnv) -> None:
    collect(gamsa_env)
    collect(gamsa_env, extra_env=faked("-2m"))  # within the tolerance: held, as before
    manifests = {p["chain"]["seq"]: p["collection"] for p in
                 predicates(gamsa_env.store).values()}
    assert manifests[2]["started_at"] == manifests[1]["finished_at"]
    assert manifests[2]["clock_started_at"] < manifests[2]["started_at"]
    assert "clock_stepped_back" not in manifests[2]
    code, report = verify(gamsa_env)
    assert code == 0 and "clock_ahead" not in codes(report), report


@needs_faketime
@pytest.mark.slow
def test_clock_ahead_of_the_s3_date_header_is_recorded_and_reported(
        s3_gamsa: S3GamsaEnv) -> None:
    honest, _ = collect(s3_gamsa)
    ahead, stderr = collect(s3_gamsa, extra_env=faked("+2h"))
    assert "ahead of the store's Date" in stderr
    result = s3_gamsa.run("verify", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr
    flagged = [f for f in report["findings"] if f["code"] == "clock_ahead"]
    assert ahead["manifest_key"] in [f["key"] for f in flagged], report
    assert honest["manifest_key"] not in [f["key"] for f in flagged]
    assert any("Date said" in f["message"] for f in flagged)


def test_an_unreachable_store_does_not_stop_sealing_and_says_it_was_not_asked(
        tmp_path: Path) -> None:
    env = s3_env(tmp_path, f"http://127.0.0.1:{free_port()}", "evidence-bucket")
    result = env.run("collect", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["seq"] == 1 and summary["spooled"] == 1  # sealed, waiting to ship
    assert "cannot connect to" in summary["store_check_problem"]
    assert "could not check the store before sealing" in result.stderr
    # asked once: the look does not wait out the retries (the ship does, 3 tries)
    assert "after 3 tries" not in summary["store_check_problem"]
    assert "after 3 tries" in summary["ship_error"]
