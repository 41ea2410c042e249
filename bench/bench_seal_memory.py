"""Peak memory and throughput of one collection of N records through the real seal path.

Run by hand (not in CI), from the repository root:

    python bench/bench_seal_memory.py [--records 1000000] [--runs 1] [--privacy] \
        [--code DIR ...]

Each run is a fresh `python -I` process (so ru_maxrss is this collection's peak and
nothing else's) that imports gamsa from DIR (default: this checkout), registers a
synthetic collector that *yields* N account-like records (~275 bytes each once
canonical; the collector exists only here), and calls `agent.seal.seal_collection`
on a fresh state dir exactly as `gamsa collect --no-ship` does: collectors, record
JSON, pseudonymization when `--privacy` (`pseudonymize = ["user"]`), canonical lines,
gzip, Merkle root, signature, spool. It prints, per DIR:

  floor MiB   ru_maxrss after imports, key and state dir, before collecting
  peak MiB    ru_maxrss after sealing (the process's peak)
  records/s   N / wall time of `seal_collection`
  bundle      the records object as spooled: bytes and the start of its SHA-256 (the
              same records give the same bytes, whichever code sealed them)

Give several `--code` directories to compare in one run, e.g. the code before a change
exported with `git archive <commit> | tar -x -C /tmp/before`:

    python bench/bench_seal_memory.py --code /tmp/before --code .
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Runs inside the fresh process: argv = [code_dir, records, privacy(0|1), work_dir].
WORKER = r"""
import json, os, resource, sys, time
code, n, privacy, work = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
sys.path.insert(0, code)
from pathlib import Path
from agent.config import parse_config
from agent.seal import seal_collection
from agent.state import StateDir
from collector.record import Record
from collector.registry import Collector, Field, RecordType
import agent.seal
assert agent.seal.__file__.startswith(os.path.realpath(code)), agent.seal.__file__

SHELLS = ["/bin/bash", "/usr/sbin/nologin", "/bin/sh", "/bin/zsh"]

def synthetic(_ctx):
    for i in range(n):
        yield Record("synthetic", "user", f"user{i:07d}", {
            "uid": 1000 + i, "gid": (i * 7919) % 60000, "shell": SHELLS[i % 4],
            "home": f"/home/user{i:07d}",
            "groups": ["users", "adm"] if i % 3 else ["users"],
            "sudo": i % 17 == 0, "gecos": f"User {(i * 2654435761) % 2**32:08x}"},
            f"2026-11-25T06:{i % 60:02d}:{i % 59:02d}.{i % 999999:06d}Z")

COLLECTOR = Collector(
    name="synthetic", version="1", description="bench only", platforms=("linux",),
    record_types={"user": RecordType(doc="an account", key="name", fields={
        "uid": Field((int,), "uid")})},
    collect=synthetic)

work = Path(work)
toml = f'state_dir = "{work / "state"}"\n[store]\nurl = "file://{work / "store"}"\n'
if privacy:
    key = work / "pseudonym.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    toml += f'[privacy]\npseudonymize = ["user"]\nkey_file = "{key}"\n'
config = parse_config(toml.encode(), "bench.toml", {})
state = StateDir(config.state_dir)
with state.locked():
    state.signer("bench-host")
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    sealed = seal_collection(config, "bench-host", [COLLECTOR], "on-demand", state)
    wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert sealed.record_count == n, sealed.record_count
import hashlib
data = sealed.entry.records_path.read_bytes()
print(json.dumps({"floor_kib": floor, "peak_kib": peak, "wall": wall,
                  "bundle_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}))
"""


def run_one(code: Path, records: int, privacy: bool, python: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gamsa-bench-mem-") as work:
        result = subprocess.run(
            [python, "-I", "-c", WORKER, str(code.resolve()), str(records),
             "1" if privacy else "0", work],
            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"bench run failed for {code}:\n{result.stderr}")
    measured: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--privacy", action="store_true",
                        help='seal with [privacy] pseudonymize = ["user"]')
    parser.add_argument("--code", type=Path, action="append",
                        help="a gamsa source tree to measure (repeatable; default: .)")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    codes = args.code or [Path(".")]
    print(f"{args.records:,} records, privacy {'on' if args.privacy else 'off'}; "
          f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}")
    print("| code | run | floor MiB | peak MiB | records/s | bundle bytes | sha256 |")
    print("|---|---|---|---|---|---|---|")
    for run in range(1, args.runs + 1):
        for code in codes:  # alternate the trees within a run: same load for both
            m = run_one(code, args.records, args.privacy, args.python)
            print(f"| {code} | {run} | {m['floor_kib'] / 1024:.1f} | "
                  f"{m['peak_kib'] / 1024:.1f} | {args.records / m['wall']:,.0f} | "
                  f"{m['bundle_bytes']:,} | {m['sha256'][:12]} |", flush=True)


if __name__ == "__main__":
    main()
