"""Seal and verify throughput against the raw SHA-256 rate over the same bytes.

Run by hand (not in CI):  python bench/bench_seal.py [--sizes 10000 1000000]

For each size it builds synthetic ~250-byte records like the collectors emit, then
times, in the same process and run:
  limit   hashlib.sha256 over each record's canonical bytes (the leaf hashes alone)
  seal    write_records (canonical JSON, leaf hashes, Merkle root, gzip) + DSSE sign
  verify  digest, gunzip, canonical check of every line, Merkle root, DSSE verify
and reports records/s and each rate as a fraction of the limit (target >= 1/3).
`--stdlib` repeats seal and verify without msgspec (what a regulator with only the
stdlib and cryptography runs).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import time
from typing import Any

from signing import canonical
from signing.bundle import BundleName, sign_manifest, write_records
from signing.canonical import canonical_bytes
from signing.dsse import verify_envelope
from signing.keys import FileSigner, generate_private_key
from signing.predicate import (
    Chain,
    Collection,
    Host,
    ManifestPredicate,
    RecordsSummary,
    parse_bundle_statement,
)
from signing.verify import check_records

STARTED = "2026-11-25T06:00:00.000000Z"


def synthetic_records(n: int) -> list[dict[str, Any]]:
    rng = random.Random(42)
    shells = ["/bin/bash", "/usr/sbin/nologin", "/bin/sh", "/bin/zsh"]
    return [{"v": 1, "collector": "accounts", "type": "user", "key": f"user{i:07d}",
             "host": "web-01-3f2a9c1d",
             "observed_at": f"2026-11-25T06:{i % 60:02d}:{i % 59:02d}.{i % 999999:06d}Z",
             "data": {"uid": 1000 + i, "gid": rng.randint(0, 60000),
                      "shell": shells[i % 4], "home": f"/home/user{i:07d}",
                      "groups": ["users", "adm"] if i % 3 else ["users"],
                      "sudo": i % 17 == 0, "gecos": f"User {rng.getrandbits(32):08x}"}}
            for i in range(n)]


def best_of(runs: int, fn: Any) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(n: int, runs: int) -> dict[str, float]:
    records = synthetic_records(n)
    lines = [canonical_bytes(r) for r in records]
    avg = sum(map(len, lines)) / n
    signer = FileSigner.from_key(generate_private_key())
    trusted = {signer.key_id: signer.public_key()}
    name = BundleName("web-01-3f2a9c1d", "2026-11-25", 1, "bench")

    def limit() -> None:
        sha = hashlib.sha256
        for line in lines:
            sha(b"\x00" + line).digest()

    holder: dict[str, Any] = {}

    def seal() -> None:
        obj = write_records(records)
        predicate = ManifestPredicate(
            Host(name.host_id), Collection(name.collection_id, "schedule", STARTED, STARTED),
            RecordsSummary(obj.count, obj.merkle_root), Chain(name.collection_id, 1, None), ())
        holder["obj"], holder["manifest"] = obj, sign_manifest(name, obj, predicate, signer)

    def verify() -> None:
        statement = parse_bundle_statement(verify_envelope(holder["manifest"], trusted).payload)
        data = holder["obj"].data
        assert hashlib.sha256(data).hexdigest() == statement.subject_sha256
        count, root, findings = check_records(data, name.records_key, "web-01-3f2a9c1d")
        assert not findings and count == n
        assert root == statement.predicate.records.merkle_root

    t_limit = best_of(runs, limit)
    t_seal = best_of(runs, seal)
    t_verify = best_of(runs, verify)
    return {"n": n, "avg_bytes": avg, "limit": n / t_limit, "seal": n / t_seal,
            "verify": n / t_verify, "gz_bytes": len(holder["obj"].data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stdlib", action="store_true", help="also without msgspec")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"# {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs ({cpu}), msgspec fast path: {canonical.using_fast_encoder()}")
    print("| records | avg bytes | limit rec/s | seal rec/s | seal/limit | verify rec/s "
          "| verify/limit | encoder |")
    print("|---|---|---|---|---|---|---|---|")
    modes = [("msgspec", canonical._FAST)] + ([("stdlib", None)] if args.stdlib else [])
    for label, fast in modes:
        canonical._FAST = fast
        for n in args.sizes:
            r = bench(n, args.runs if n <= 100_000 else 1)
            print(f"| {n:,} | {r['avg_bytes']:.0f} | {r['limit']:,.0f} | {r['seal']:,.0f} | "
                  f"{r['seal'] / r['limit']:.2f} | {r['verify']:,.0f} | "
                  f"{r['verify'] / r['limit']:.2f} | {label} |", flush=True)


if __name__ == "__main__":
    main()
