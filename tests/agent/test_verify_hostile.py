"""`gamsa verify` over a store whose content is hostile: every planted object is a plain
finding on the right key, memory stays bounded, nothing hangs; and the same findings,
in the same order, from one process and from a pool of worker processes."""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from typing import Any

import pytest

from signing.bundle import BundleName, parse_bundle_key
from signing.canonical import canonical_bytes
from signing.dsse import envelope_payload, sign_envelope
from signing.keys import FileSigner, load_private_key
from tests.agent.hostile_fixtures import PEAK_RSS_LIMIT, gamsa_measured, replace
from tests.agent.mirror_fixtures import agent_key, seal
from tests.conftest import GamsaEnv

BAD_LINES = 10**7


def bomb() -> bytes:
    """A gzip of 10^7 lines that are not JSON: ~90 MB inflated from ~90 KB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"not json\n" * 100_000
    data = b"".join(compressor.compress(block) for _ in range(BAD_LINES // 100_000))
    return data + compressor.flush()


def resign(env: GamsaEnv, name: BundleName, records: bytes, count: int) -> None:
    """Give bundle `name` the records `records` under a manifest validly signed by the
    host's own key, claiming `count` records (a signer gone rogue)."""
    manifest = env.store / name.manifest_key
    statement = json.loads(envelope_payload(manifest.read_bytes()))
    statement["subject"][0]["digest"]["sha256"] = hashlib.sha256(records).hexdigest()
    statement["predicate"]["records"]["count"] = count
    signer = FileSigner.from_key(load_private_key(env.state_dir / "keys" / "agent.key"))
    replace(manifest, sign_envelope(canonical_bytes(statement), signer))
    replace(env.store / name.records_key, records)


@pytest.fixture
def hostile(gamsa_env: GamsaEnv) -> tuple[GamsaEnv, dict[str, BundleName]]:
    seal(gamsa_env, 8)
    names = sorted({parsed[0] for p in gamsa_env.store.rglob("*")
                    if (parsed := parse_bundle_key(str(p.relative_to(gamsa_env.store))))},
                   key=lambda n: n.seq)
    assert len(names) == 8
    store = gamsa_env.store
    planted = dict(zip(["fifo", "zero", "truncated", "not_json", "bomb", "big_manifest",
                        "zero_manifest", "signed_bomb"], names, strict=True))
    replace(store / planted["fifo"].records_key, fifo=True)
    replace(store / planted["zero"].records_key, link="/dev/zero")
    truncated = (store / planted["truncated"].records_key).read_bytes()
    replace(store / planted["truncated"].records_key, truncated[:len(truncated) // 2])
    replace(store / planted["not_json"].manifest_key, b"this is not JSON {")
    payload = bomb()
    assert len(payload) < 200_000
    replace(store / planted["bomb"].records_key, payload)
    replace(store / planted["big_manifest"].manifest_key, b" " * (5 * 1024 * 1024))
    replace(store / planted["zero_manifest"].manifest_key, link="/dev/zero")
    resign(gamsa_env, planted["signed_bomb"], payload, 1000)
    day = store / f"v1/host=test-host/date={names[0].date}"
    (day / "README.txt").write_text("a foreign object")
    (store / "v1/host=test-host/junk").mkdir()
    (store / "v1/host=test-host/junk/blob.bin").write_bytes(os.urandom(64))
    keys = store / "v1/keys"  # key-folder documents are read up to their 64 KiB cap
    with open(keys / f"{'a' * 64}.rotation.{'b' * 64}.dsse.json", "wb") as sparse:
        sparse.truncate(2**30)
    os.mkfifo(keys / f"{'c' * 64}.enrollment.{'d' * 64}.dsse.json")
    (keys / f"{'e' * 64}.revocation.{'f' * 64}.dsse.json").symlink_to("/dev/zero")
    return gamsa_env, planted


def verify_json(env: GamsaEnv, *args: str) -> tuple[int, dict[str, Any], int, float]:
    """`gamsa verify --json` in a subprocess: exit code, report, peak RSS (bytes),
    seconds taken."""
    return gamsa_measured(env, "verify", "--trust", agent_key(env), "--json", *args,
                          timeout=60)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hostile_store_is_findings_not_exhaustion(
        hostile: tuple[GamsaEnv, dict[str, BundleName]]) -> None:
    env, planted = hostile
    code, report, rss, taken = verify_json(env, "--workers", "1")
    assert code == 1
    assert rss < PEAK_RSS_LIMIT, f"peak RSS {rss / 2**20:.0f} MiB"
    assert taken < 30
    found = [(f["code"], f["key"]) for f in report["findings"]]

    def codes(key: str) -> list[str]:
        return [c for c, k in found if k == key]

    assert codes(planted["fifo"].records_key) == ["object_not_regular"]
    assert codes(planted["zero"].records_key) == ["object_not_regular"]
    assert codes(planted["truncated"].records_key) == ["digest_mismatch"]
    assert codes(planted["not_json"].manifest_key) == ["signature_invalid"]
    assert codes(planted["bomb"].records_key) == ["digest_mismatch"]
    assert "object_too_large" in codes(planted["big_manifest"].manifest_key)
    assert "object_not_regular" in codes(planted["zero_manifest"].manifest_key)
    # Signed by the host's own key: read, but only to the signed count + 1, with the
    # line findings capped and counted.
    signed = codes(planted["signed_bomb"].records_key)
    assert signed == ["not_canonical"] * 20 + ["findings_capped", "count_mismatch"]
    capped = next(f for f in report["findings"] if f["code"] == "findings_capped")
    assert capped["message"].startswith("981 more finding(s)")
    rotation = [f for f in report["findings"] if ".rotation." in f["key"]]
    assert [f["code"] for f in rotation] == ["rotation_invalid"], rotation
    assert "larger than 65536 bytes; not read further" in rotation[0]["message"]
    foreign = {k for c, k in found if c == "unexpected_object"}
    assert any(k.endswith("README.txt") for k in foreign)
    assert any(k.endswith("junk/blob.bin") for k in foreign)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_worker_processes_give_the_same_findings_in_the_same_order(
        hostile: tuple[GamsaEnv, dict[str, BundleName]]) -> None:
    env, _planted = hostile
    as_of = ("--as-of", "2030-01-01T00:00:00Z")
    one = verify_json(env, "--workers", "1", *as_of)
    many = verify_json(env, "--workers", "3", *as_of)
    assert one[0] == many[0] == 1
    assert one[1]["findings"] == many[1]["findings"]
    assert one[1]["summary"] == many[1]["summary"]
    assert many[2] < PEAK_RSS_LIMIT

