"""Pseudonymization throughput: one bundle of auth-log records through the real
`BundlePseudonymizer` (collector/privacy.py), as `gamsa collect` runs it before sealing.

    python bench/bench_pseudonymize.py [--records 100000] [--people 3000] [--repeat 5]

Reports records/s for the rewrite alone and, in the same run, for the step it sits
beside in every collection (canonical encoding + leaf hashing of the same records),
so the ratio says what pseudonymization adds to sealing on this machine.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import time
from typing import Any

from collector.privacy import BundlePseudonymizer, scopes
from collector.registry import all_collectors
from signing.canonical import canonical_bytes

KEY = b"bench-pseudonym-key-0123456789ab"


def bundle(n: int, people: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        user, address = f"u{i % people:05d}", f"10.{i % people // 256}.{i % 256}.9"
        out.append({"v": 1, "collector": "logs", "type": "access",
                    "key": f"/var/log/auth.log:{i}", "host": "web-01",
                    "observed_at": "2026-12-02T00:00:00.000000Z",
                    "data": {"account": user, "source": address, "raw_truncated": False,
                             "raw": f"sshd[1]: Accepted publickey for {user} from {address} "
                                    f"port 5123 ssh2", "raw_sha256": "ab" * 32}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--people", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    type_scopes = scopes(["account", "source"], all_collectors())
    rewrite, seal = [], []
    for _ in range(args.repeat):
        records = bundle(args.records, args.people)
        started = time.perf_counter()
        BundlePseudonymizer(KEY, type_scopes, frozenset({"root"})).apply(records)
        rewrite.append(time.perf_counter() - started)
        records = bundle(args.records, args.people)
        started = time.perf_counter()
        for record in records:
            hashlib.sha256(b"\x00" + canonical_bytes(record)).digest()
        seal.append(time.perf_counter() - started)
    r, s = statistics.median(rewrite), statistics.median(seal)
    print(f"# Pseudonymization ({time.strftime('%Y-%m-%d')})\n")
    print(f"Machine: {platform.machine()}, CPython {platform.python_version()}; "
          f"{args.records:,} auth-log records, {args.people:,} people "
          f"({2 * args.people:,} distinct values), median of {args.repeat}\n")
    print("| step | records/s |\n|---|---|")
    print(f"| pseudonymize (account, source) | {args.records / r:,.0f} |")
    print(f"| canonical encoding + leaf hash, same records | {args.records / s:,.0f} |")
    print(f"\nratio: pseudonymization takes {r / s:.2f}x the time of encoding and hashing")


if __name__ == "__main__":
    main()
