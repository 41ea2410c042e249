"""`gamsa export` end to end: a mirror made by the real seal, ship and pull; the package
checked by its own verifier (here, and in a fresh venv holding only `cryptography`),
by the README's standard-tools commands run as written, and once tampered."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from signing.keys import PublicKey
from tests.agent.mirror_fixtures import pull, seal, ticks_collector
from tests.conftest import GamsaEnv

RECORDS = ".records.jsonl.gz"
MANIFEST = ".manifest.dsse.json"


def make_mirror(env: GamsaEnv, tmp_path: Path) -> Path:
    """Host a: 3 bundles of 5 records; host b: 1 bundle; pulled into a mirror."""
    seal(env, 3, host="host-a", collector=ticks_collector(5))
    seal(env, 1, host="host-b", collector=ticks_collector(2))
    mirror = tmp_path / "mirror"
    code, report, _ = pull(env, mirror)
    assert code == 0, report
    return mirror


def manifests(mirror: Path, host: str) -> list[str]:
    return sorted(p.relative_to(mirror).as_posix()
                  for p in (mirror / "v1" / f"host={host}").rglob(f"*{MANIFEST}"))


def export(env: GamsaEnv, mirror: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = env.run("export", "--mirror", str(mirror), "--out", str(out), *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def unzip(package: Path, into: Path) -> Path:
    subprocess.run(["unzip", "-q", str(package), "-d", str(into)], check=True)
    return into


def verify_package(root: Path, python: str = sys.executable,
                   *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "verify.py", *args], cwd=root, capture_output=True,
                          text=True, timeout=120, check=False, env={"PATH": os.environ["PATH"]})


def readme_recipe(root: Path) -> str:
    """The README's standard-tools commands (section 2), as one script."""
    text = (root / "README.md").read_text()
    section = text.split("## 2.", 1)[1].split("## 3.", 1)[0]
    return "\n\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))


def flip_byte(path: Path, offset: int = -20) -> bytes:
    original = path.read_bytes()
    os.chmod(path, 0o644)
    changed = bytearray(original)
    changed[offset] ^= 0x01
    path.write_bytes(bytes(changed))
    return original


def test_export_holds_the_selection_untouched_and_is_byte_identical(gamsa_env: GamsaEnv,
                                                                     tmp_path: Path) -> None:
    mirror = make_mirror(gamsa_env, tmp_path)
    bundles = manifests(mirror, "host-a")
    rows = tmp_path / "rows.csv"
    rows.write_text(f"host,bundle,line\nhost-a,{bundles[1]},2\nhost-a,{bundles[1]},5\n")
    out = tmp_path / "inspection.zip"
    result = export(gamsa_env, mirror, out, "--host", "host-a", "--prove-lines", str(rows),
                    "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert (summary["bundles"], summary["records"], summary["proofs"]) == (3, 15, 2)

    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        for manifest in bundles:
            records = manifest.removesuffix(MANIFEST) + RECORDS
            for key in (manifest, records):
                assert archive.read(key) == (mirror / key).read_bytes(), key
        assert not [n for n in names if "host=host-b" in n]
        for key_file in (mirror / "v1" / "keys").iterdir():
            assert archive.read(f"v1/keys/{key_file.name}") == key_file.read_bytes()
        listed = archive.read("MANIFEST.sha256").decode().splitlines()
        assert sorted(line.split("  ", 1)[1] for line in listed) == sorted(
            set(names) - {"MANIFEST.sha256"})
        report = json.loads(archive.read("report.json"))
        assert report["ok"] and report["evidence"]["bundles"] == 3
        assert [p["line"] for p in report["proofs"]] == [2, 5]
        assert any(n.startswith("trust/keys/") for n in names)
        assert "signing/verify_package.py" in names and "verify.py" in names

    again = tmp_path / "again.zip"
    assert export(gamsa_env, mirror, again, "--host", "host-a", "--prove-lines",
                  str(rows)).returncode == 0
    assert again.read_bytes() == out.read_bytes()

    before = out.read_bytes()
    refused = export(gamsa_env, mirror, out)
    assert refused.returncode == 2 and "already exists" in refused.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    package = unzip(out, tmp_path / "package")
    checked = verify_package(package)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK: 3 bundle(s), 15 records, 2 proof(s)" in checked.stdout
    recipe = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_recipe(package)],
                            cwd=package, capture_output=True, text=True, timeout=60,
                            check=False)
    assert recipe.returncode == 0, recipe.stdout + recipe.stderr
    for said in ("all files match", "records digest OK", "key id OK",
                 "Signature Verified Successfully", "Merkle root OK: 5 records",
                 f"proof OK: line 2 of {bundles[1].removesuffix(MANIFEST) + RECORDS}",
                 "chain link OK"):
        assert said in recipe.stdout, recipe.stdout

    os.mkfifo(package / "v1" / "keys" / "stuck.json")  # must not hang the verifier
    fifo = verify_package(package)
    assert fifo.returncode == 1
    assert "package_file_unlisted: v1/keys/stuck.json" in fifo.stdout
    assert "evidence_not_checked" in fifo.stdout


def test_a_tampered_mirror_is_refused_unless_failures_are_included(gamsa_env: GamsaEnv,
                                                                   tmp_path: Path) -> None:
    mirror = make_mirror(gamsa_env, tmp_path)
    bad = manifests(mirror, "host-a")[1].removesuffix(MANIFEST) + RECORDS
    flip_byte(mirror / bad)
    out = tmp_path / "inspection.zip"
    refused = export(gamsa_env, mirror, out)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "export refused" in refused.stderr
    assert bad in refused.stderr and "--include-failures" in refused.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    marked = export(gamsa_env, mirror, out, "--include-failures", "--json")
    assert marked.returncode == 1, marked.stderr
    assert json.loads(marked.stdout)["failures"] == [bad.removesuffix(RECORDS) + MANIFEST]
    with zipfile.ZipFile(out) as archive:
        assert f"failures/{bad}" in archive.namelist() and bad not in archive.namelist()
        report = json.loads(archive.read("report.json"))
        readme = archive.read("README.md").decode()
    assert not report["ok"]
    codes = {f["code"] for entry in report["failures"] for f in entry["findings"]}
    assert "digest_mismatch" in codes
    assert "does NOT verify" in readme and bad.removesuffix(RECORDS) in readme
    package = unzip(out, tmp_path / "package")
    checked = verify_package(package)
    assert checked.returncode == 1
    assert f"bundle_failed: failures/{bad.removesuffix(RECORDS) + MANIFEST}" in checked.stdout
    assert "chain_gap" in checked.stdout  # the hole it leaves in host-a's chain


def test_prove_lines_rows_that_name_nothing_exported_are_usage_errors(
        gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    mirror = make_mirror(gamsa_env, tmp_path)
    other = manifests(mirror, "host-b")[0]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"bundle": manifests(mirror, "host-a")[0], "line": 1}) + "\n"
                    + json.dumps({"bundle": other, "line": 1}) + "\n")
    out = tmp_path / "inspection.zip"
    result = export(gamsa_env, mirror, out, "--host", "host-a", "--prove-lines", str(rows))
    assert result.returncode == 2
    assert f"{rows} line 2: bundle {other} is not in this export's selection" in result.stderr
    rows.write_text(json.dumps([{"bundle": other, "line": 3}]))
    result = export(gamsa_env, mirror, out, "--prove-lines", str(rows))
    assert result.returncode == 2 and "line 3 out of range (1..2)" in result.stderr
    no_line = tmp_path / "rows.csv"
    no_line.write_text(f"bundle\n{other}\n")
    result = export(gamsa_env, mirror, out, "--prove-lines", str(no_line))
    assert result.returncode == 2 and "has no line column" in result.stderr
    assert not out.exists()

    stranger = tmp_path / "stranger.pub"
    key = PublicKey.from_key(Ed25519PrivateKey.generate().public_key())
    stranger.write_text(key.pem())
    result = export(gamsa_env, mirror, out, "--trust-org", str(stranger))
    assert result.returncode == 2
    assert f"--trust-org: key {key.key_id} is not in the trust the mirror was pulled under" \
        in result.stderr
    for args, said in ((("--since", "2026-13-01"), "--since '2026-13-01': not a date"),
                       (("--host", "no/such"), "--host 'no/such': not a host id")):
        result = export(gamsa_env, mirror, out, *args)
        assert result.returncode == 2 and said in result.stderr, result.stderr
    result = export(gamsa_env, tmp_path / "nothing", out)
    assert result.returncode == 2 and "not a gamsa mirror" in result.stderr
    assert not out.exists()


def fresh_venv(where: Path) -> str:
    """A venv holding only `cryptography` (and what it needs): no gamsa, no msgspec."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    python = str(where / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "cryptography"], check=True,
                   timeout=600, capture_output=True)
    return python


def tamper_proof(path: Path) -> None:
    document: dict[str, Any] = json.loads(path.read_bytes())
    record = json.loads(base64.b64decode(document["record"]))
    record["data"]["n"] += 1
    document["record"] = base64.b64encode(
        json.dumps(record, separators=(",", ":"), sort_keys=True).encode()).decode()
    os.chmod(path, 0o644)
    path.write_text(json.dumps(document))


@pytest.mark.slow
def test_the_package_verifies_alone_in_a_venv_with_only_cryptography(
        gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    mirror = make_mirror(gamsa_env, tmp_path)
    bundle = manifests(mirror, "host-a")[2]
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"bundle": bundle, "line": 3}]))
    out = tmp_path / "inspection.zip"
    assert export(gamsa_env, mirror, out, "--prove-lines", str(rows)).returncode == 0
    package = unzip(out, tmp_path / "package")
    python = fresh_venv(tmp_path / "venv")
    for missing in ("msgspec", "agent", "click"):  # signing/ falls back without msgspec
        absent = subprocess.run([python, "-c", f"import {missing}"], cwd=package,
                                capture_output=True, check=False, env={})
        assert absent.returncode != 0, missing

    clean = verify_package(package, python)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "OK: 4 bundle(s), 17 records, 1 proof(s)" in clean.stdout
    as_module = subprocess.run([python, "-m", "signing.verify_package", "."], cwd=package,
                               capture_output=True, text=True, check=False, timeout=120)
    assert as_module.returncode == 0, as_module.stdout + as_module.stderr

    records = package / (bundle.removesuffix(MANIFEST) + RECORDS)
    original = flip_byte(records)
    tampered = verify_package(package, python)
    assert tampered.returncode == 1
    assert f"package_file_changed: {records.relative_to(package)}" in tampered.stdout
    assert f"digest_mismatch: {records.relative_to(package)}" in tampered.stdout
    records.write_bytes(original)

    proof = next((package / "proofs").rglob("*.proof.json"))
    tamper_proof(proof)
    forged = verify_package(package, python)
    assert forged.returncode == 1
    assert f"proof_invalid: {proof.relative_to(package)}" in forged.stdout
    by_hand = next(block for block in map(str.strip, readme_recipe(package).split("\n\n"))
                   if block.startswith("P="))
    refused = subprocess.run(["bash", "-euo", "pipefail", "-c", by_hand], cwd=package,
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode != 0
    assert "the record is not under the signed root" in refused.stderr


def test_a_selection_starting_mid_chain_warns_and_a_hole_inside_is_refused(
        gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    mirror = make_mirror(gamsa_env, tmp_path)
    first, second, _ = manifests(mirror, "host-a")
    for manifest in (first,):  # as if the mirror were pulled from a later date
        for key in (manifest, manifest.removesuffix(MANIFEST) + RECORDS):
            (mirror / key).unlink()
    out = tmp_path / "later.zip"
    result = export(gamsa_env, mirror, out, "--host", "host-a")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"WARNING chain_starts_before_package: {second}" in result.stdout
    assert "seq 1 is not in this package" in result.stdout
    checked = verify_package(unzip(out, tmp_path / "later"))
    assert checked.returncode == 0 and "chain_starts_before_package" in checked.stdout

    for key in (second, second.removesuffix(MANIFEST) + RECORDS):
        (mirror / key).unlink()
    seal(gamsa_env, 1, host="host-a", collector=ticks_collector(1))
    assert pull(gamsa_env, mirror)[0] == 0  # seq 4 arrives; seq 2 stays missing
    refused = export(gamsa_env, mirror, tmp_path / "holed.zip", "--host", "host-a")
    assert refused.returncode == 1 and "chain_gap" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_an_org_trusted_mirror_ships_its_root_and_the_enrollment_recipe_runs(
        tmp_path: Path) -> None:
    from tests.agent.test_enrollment import make_fleet

    fleet = make_fleet(tmp_path, ("web-01", "db-01"))
    mirror = tmp_path / "mirror"
    pulled = fleet.any.run("pull", "--store", f"file://{fleet.store}", "--to", str(mirror),
                           "--trust-org", str(fleet.org_pub))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    out = tmp_path / "web.zip"
    result = fleet.any.run("export", "--mirror", str(mirror), "--out", str(out),
                           "--host", "web-01")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING host_not_in_package: v1/host=db-01/" in result.stdout
    package = unzip(out, tmp_path / "package")
    org_id = next((package / "trust" / "org").iterdir()).stem
    assert (package / "trust" / "org" / f"{org_id}.pem").read_text() == "".join(
        fleet.org_pub.read_text())
    assert not (package / "trust" / "keys").exists()
    recipe = readme_recipe(package)
    assert "enrollment" in recipe
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", recipe], cwd=package,
                         capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.count("Signature Verified Successfully") == 2
    checked = verify_package(package)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"trusting organisation root {org_id}" in checked.stdout
    wrong = tmp_path / "other-org"
    assert fleet.any.run("org", "init", "--out", str(wrong)).returncode == 0
    foreign = verify_package(package, sys.executable, "--trust-org", str(wrong / "org.pub"))
    assert foreign.returncode == 1 and "report_differs" in foreign.stdout


def test_bundles_held_in_the_mirrors_quarantine_are_never_left_out_unsaid(
        gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    mirror = make_mirror(gamsa_env, tmp_path)
    seal(gamsa_env, 1, host="host-a", collector=ticks_collector(5))
    newest = sorted((gamsa_env.store / "v1" / "host=host-a").rglob(f"*{RECORDS}"))[-1]
    flip_byte(newest)
    code, report, _ = pull(gamsa_env, mirror)
    assert code == 1 and report["quarantined"] == 1  # the newest bundle: no gap shows it
    held = newest.relative_to(gamsa_env.store).as_posix()
    out = tmp_path / "inspection.zip"
    refused = export(gamsa_env, mirror, out, "--host", "host-a")
    assert refused.returncode == 1 and "1 held in the mirror's quarantine" in refused.stderr
    assert not out.exists()
    assert export(gamsa_env, mirror, out, "--host", "host-b").returncode == 0

    marked = export(gamsa_env, mirror, tmp_path / "marked.zip", "--host", "host-a",
                    "--include-failures")
    assert marked.returncode == 1
    package = unzip(tmp_path / "marked.zip", tmp_path / "package")
    assert (package / "failures" / held).read_bytes() == newest.read_bytes()
    checked = verify_package(package)
    assert checked.returncode == 1
    assert f"bundle_failed: failures/{held.removesuffix(RECORDS) + MANIFEST}" in checked.stdout
    assert "digest_mismatch" in checked.stdout


@pytest.mark.slow
def test_timestamp_tokens_are_judged_by_the_shipped_tsa_chain(gamsa_env: GamsaEnv,
                                                               tmp_path: Path) -> None:
    from tests.agent.test_timestamp import with_tsa
    from tests.tsa import running_tsa

    with running_tsa(tmp_path / "tsa") as tsa:
        with_tsa(gamsa_env, tsa)
        for _ in range(2):
            assert gamsa_env.run("collect").returncode == 0
    mirror = tmp_path / "mirror"
    assert pull(gamsa_env, mirror)[0] == 0
    out = tmp_path / "stamped.zip"
    result = export(gamsa_env, mirror, out, "--tsa-cert", str(tsa.chain))
    assert result.returncode == 0, result.stdout + result.stderr
    package = unzip(out, tmp_path / "package")
    report = json.loads((package / "report.json").read_text())
    assert report["evidence"]["timestamps"]["verified"] == 2
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_recipe(package)],
                         cwd=package, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Verification: OK" in ran.stdout and "Time stamp:" in ran.stdout
    token = next(package.rglob("*.manifest.tsr"))
    flip_byte(token, -40)
    tampered = verify_package(package)
    assert tampered.returncode == 1
    assert f"timestamp_invalid: {token.relative_to(package)}" in tampered.stdout, tampered.stdout
