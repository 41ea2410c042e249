"""`gamsa pull` from a store whose content is hostile: a records object far larger than
its manifest allows, a huge manifest, FIFOs and symlinks to /dev/zero named like
bundle and key objects. The real command in a subprocess: it finishes, quarantines or
reports each object with a finding naming it, keeps only what it read up to the cap,
and its peak RSS stays bounded while an object is a 1 GiB (sparse) file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from signing.bundle import BundleName, max_records_object_bytes, parse_bundle_key
from signing.reading import MAX_MANIFEST_BYTES
from tests.agent.hostile_fixtures import PEAK_RSS_LIMIT, gamsa_measured, replace
from tests.agent.mirror_fixtures import agent_key, pull, seal
from tests.agent.s3_fixtures import S3GamsaEnv
from tests.conftest import GamsaEnv

GIB = 1 << 30
ONE_RECORD_CAP = max_records_object_bytes(1)  # the bundles here hold one record each


def sparse(path: Path, size: int) -> None:
    """`path` replaced by a file of `size` bytes that takes no disk (a hole)."""
    path.unlink()
    with path.open("wb") as out:
        out.truncate(size)


def bundle_names(env: GamsaEnv) -> list[BundleName]:
    return sorted({parsed[0] for p in env.store.rglob("*")
                   if (parsed := parse_bundle_key(str(p.relative_to(env.store))))},
                  key=lambda n: n.seq)


def pull_measured(env: GamsaEnv, mirror: Path) -> tuple[int, dict[str, Any], int]:
    """`gamsa pull --json` in a subprocess: exit code, report, peak RSS (bytes)."""
    code, report, peak, _ = gamsa_measured(env, "pull", "--store", env.store_url, "--to",
                                           str(mirror), "--trust", agent_key(env), "--json",
                                           timeout=90)
    return code, report, peak


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hostile_store_is_quarantined_with_bounded_reads(gamsa_env: GamsaEnv,
                                                          tmp_path: Path) -> None:
    seal(gamsa_env, 6)
    names = bundle_names(gamsa_env)
    planted = dict(zip(["huge_records", "fifo", "zero", "huge_manifest", "zero_manifest",
                        "good"], names, strict=True))
    store = gamsa_env.store
    sparse(store / planted["huge_records"].records_key, GIB)
    replace(store / planted["fifo"].records_key, fifo=True)
    replace(store / planted["zero"].records_key, link="/dev/zero")
    sparse(store / planted["huge_manifest"].manifest_key, GIB)
    replace(store / planted["zero_manifest"].manifest_key, link="/dev/zero")
    keys = store / "v1" / "keys"
    fifo_key, huge_key = f"v1/keys/{'a' * 64}.json", f"v1/keys/{'b' * 64}.json"
    os.mkfifo(store / fifo_key)
    with (store / huge_key).open("wb") as out:
        out.truncate(GIB)
    assert len(list(keys.iterdir())) == 3

    mirror = tmp_path / "mirror"
    code, report, rss = pull_measured(gamsa_env, mirror)
    assert code == 1
    assert rss < PEAK_RSS_LIMIT, f"peak RSS {rss / 2**20:.0f} MiB"
    assert (report["pulled"], report["quarantined"], report["keys"]) == (1, 5, 1), report
    found = [(f["key"], f["code"]) for f in report["findings"]]

    def codes(key: str) -> list[str]:
        return [c for k, c in found if k == key]

    huge = planted["huge_records"]
    assert codes(huge.records_key) == ["object_too_large"]
    assert codes(planted["fifo"].records_key) == ["object_not_regular"]
    assert codes(planted["zero"].records_key) == ["object_not_regular"]
    assert codes(planted["huge_manifest"].manifest_key) == ["object_too_large"]
    assert codes(planted["zero_manifest"].manifest_key) == ["object_not_regular"]
    assert codes(fifo_key) == ["object_not_regular"]
    assert codes(huge_key) == ["object_too_large"]
    assert (mirror / planted["good"].manifest_key).is_file()

    # Quarantine keeps what was read, up to the cap, and says it was cut.
    held = mirror / "quarantine" / huge.stem
    kept = held / huge.records_key.rsplit("/", 1)[-1]
    assert kept.stat().st_size == ONE_RECORD_CAP + 1
    said = json.loads((held / "findings.json").read_text())["findings"]
    assert [f["code"] for f in said] == ["object_too_large"]
    assert f"larger than {ONE_RECORD_CAP} bytes" in said[0]["message"]
    assert "first" in said[0]["message"] and "kept" in said[0]["message"]
    held = mirror / "quarantine" / planted["huge_manifest"].stem
    manifest = held / planted["huge_manifest"].manifest_key.rsplit("/", 1)[-1]
    assert manifest.stat().st_size == MAX_MANIFEST_BYTES + 1
    assert not (mirror / "quarantine" / planted["fifo"].stem
                / planted["fifo"].records_key.rsplit("/", 1)[-1]).exists()
    for key in (fifo_key, huge_key):
        assert not (mirror / key).exists()
        assert (mirror / "quarantine" / key / "findings.json").is_file()
    assert not (mirror / ".gamsa-pull").exists(), "the temp area is removed"

    # A rerun reads nothing new and keeps saying what it could not read.
    code, report, _ = pull(gamsa_env, mirror)
    assert code == 1
    assert (report["pulled"], report["skipped"], report["quarantined_before"]) == (0, 1, 5)
    assert {(f["key"], f["code"]) for f in report["findings"]} >= {
        (fifo_key, "object_not_regular"), (huge_key, "object_too_large")}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_oversized_s3_records_object_is_cut_at_its_cap(s3_gamsa: S3GamsaEnv, s3_client: Any,
                                                        tmp_path: Path) -> None:
    seal(s3_gamsa, 2)
    listed = s3_client.list_objects_v2(Bucket=s3_gamsa.bucket, Prefix="evidence/v1/host=")
    records = sorted(o["Key"] for o in listed["Contents"]
                     if o["Key"].endswith(".records.jsonl.gz"))
    s3_client.put_object(Bucket=s3_gamsa.bucket, Key=records[0],
                         Body=b"\0" * (ONE_RECORD_CAP + (8 << 20)))
    mirror = tmp_path / "mirror"
    code, report, _ = pull(s3_gamsa, mirror, store=s3_gamsa.store_url)
    assert code == 1 and (report["pulled"], report["quarantined"]) == (1, 1), report
    key = records[0].removeprefix("evidence/")
    assert [f["code"] for f in report["findings"] if f["key"] == key] == ["object_too_large"]
    kept = mirror / "quarantine" / key.removesuffix(".records.jsonl.gz") / key.rsplit("/")[-1]
    assert kept.stat().st_size == ONE_RECORD_CAP + 1


@pytest.mark.timeout(20)
def test_enrollments_read_for_the_trust_are_capped(tmp_path: Path) -> None:
    """Under an organisation root, pull reads every enrollment to build its trust: a
    1 GiB one is refused at the key folder's cap, a FIFO is never opened."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.file_store import FileStore
    from agent.pull import trust_for
    from signing.enrollment import MAX_DOCUMENT_BYTES
    from signing.keys import PublicKey

    keys = tmp_path / "store" / "v1" / "keys"
    keys.mkdir(parents=True)
    huge = f"v1/keys/{'a' * 64}.enrollment.{'0' * 64}.dsse.json"
    fifo = f"v1/keys/{'b' * 64}.enrollment.{'1' * 64}.dsse.json"
    with (tmp_path / "store" / huge).open("wb") as out:
        out.truncate(GIB)
    os.mkfifo(tmp_path / "store" / fifo)
    org = PublicKey.from_key(Ed25519PrivateKey.generate().public_key())
    trust, findings = trust_for(FileStore(tmp_path / "store"), {}, {org.key_id: org}, 2)
    assert not trust.keys
    said = {f.key: (f.code, f.message) for f in findings}
    assert said[huge][0] == "enrollment_invalid"
    assert f"larger than {MAX_DOCUMENT_BYTES} bytes" in said[huge][1]
    assert said[fifo][0] == "enrollment_invalid" and "FIFO" in said[fifo][1]
