"""Benchmark: generate the issue's fleet (50 hosts x 200 bundles) and audit it.

    python bench/bench_fleet.py [--hosts 50] [--bundles 200] [--workers N] [--agents DIR]
                                [--no-audit] [--out FILE]

One moto server (a real subprocess on loopback), one Object Lock bucket. The fleet is
tests/fleet.py's, as tests/agent/test_fleet.py makes it in CI at a smaller size:
every bundle sealed by `agent.seal.seal_collection` and shipped by `agent.ship`, in
worker processes, the planted defects added. Then, unless `--no-audit`, the real
`gamsa pull` of the bucket and `gamsa verify` of the bucket and of the mirror, each
checked against what was planted (the test's assertions). Reports wall times, the
moto server's CPU time (the bottleneck on a small machine) and the load average.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from tests.agent.s3_fixtures import make_lock_bucket, start_moto
from tests.fleet import (
    Auditor,
    FleetSpec,
    assert_mirror_defects,
    assert_pull_defects,
    assert_store_defects,
    make_fleet,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--bundles", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None,
                        help="sealing processes (default: the CPU count, at least 2)")
    parser.add_argument("--agents", type=Path, default=None,
                        help="where the hosts' state dirs go (default: a dir on /dev/shm)")
    parser.add_argument("--no-audit", action="store_true", help="generate only")
    parser.add_argument("--out", type=Path, default=None, help="append the result here")
    args = parser.parse_args()
    spec = FleetSpec(args.hosts, args.bundles) if args.workers is None else FleetSpec(
        args.hosts, args.bundles, workers=args.workers)
    work = Path(tempfile.mkdtemp(prefix="gamsa-bench-fleet-"))
    agents = args.agents or Path(tempfile.mkdtemp(prefix="gamsa-bench-agents-",
                                                  dir="/dev/shm"))
    load_before = os.getloadavg()
    server = start_moto(work / "moto")
    moto = psutil.Process(server.process.pid)
    rows: list[tuple[str, float, float, float]] = []  # (phase, wall s, moto CPU s, ours)
    try:
        s3 = server.client()

        def moto_cpu() -> float:
            times = moto.cpu_times()
            return float(times.user + times.system)

        def our_cpu() -> float:
            """This process and its finished children (sealing workers, gamsa runs)."""
            own = resource.getrusage(resource.RUSAGE_SELF)
            kids = resource.getrusage(resource.RUSAGE_CHILDREN)
            return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

        def phase(name: str, began: float, cpu: float, ours: float) -> None:
            rows.append((name, time.perf_counter() - began, moto_cpu() - cpu,
                         our_cpu() - ours))

        cpu, ours, began = moto_cpu(), our_cpu(), time.perf_counter()
        fleet = make_fleet(spec, work / "fleet", server.url, s3, make_lock_bucket(s3),
                           agents=agents)
        phase("generate (seal + ship + tamper)", began, cpu, ours)
        if not args.no_audit:
            auditor = Auditor(fleet, fleet.auditor_config(work / "auditor.toml"))
            mirror = work / "mirror"
            cpu, ours, began = moto_cpu(), our_cpu(), time.perf_counter()
            pulled = auditor.run("pull", "--store", fleet.store_url, "--to", str(mirror),
                                 *auditor.trust(), "--json")
            phase("gamsa pull", began, cpu, ours)
            assert_pull_defects(json.loads(pulled.stdout), mirror, fleet)
            cpu, ours, began = moto_cpu(), our_cpu(), time.perf_counter()
            assert_store_defects(auditor.verify(fleet.store_url), fleet)
            phase("gamsa verify (bucket)", began, cpu, ours)
            cpu, ours, began = moto_cpu(), our_cpu(), time.perf_counter()
            assert_mirror_defects(auditor.verify(f"file://{mirror}"), fleet)
            phase("gamsa verify (mirror)", began, cpu, ours)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
        if args.agents is None:
            shutil.rmtree(agents, ignore_errors=True)
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    lines = [
        f"## Fleet, {spec.hosts} hosts x {spec.bundles} bundles "
        f"({dt.date.today().isoformat()})",
        "",
        f"- command: `python bench/bench_fleet.py --hosts {spec.hosts} --bundles "
        f"{spec.bundles}{' --no-audit' if args.no_audit else ''}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after",
        f"- {len(fleet.bundles)} bundles sealed in {spec.workers} worker processes, agents' "
        f"state dirs in {agents} ({'tmpfs' if str(agents).startswith('/dev/shm') else 'disk'})"
        + ("; not audited (--no-audit)" if args.no_audit
           else "; every planted defect reported as expected"),
        "",
        f"| phase | wall s | bundles/s | moto CPU s | gamsa CPU s | CPU s / {cores} cores |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {name} | {wall:.1f} | {len(fleet.bundles) / wall:.0f} | {cpu:.1f} | "
          f"{ours:.1f} | {(cpu + ours) / cores:.1f} |" for name, wall, cpu, ours in rows),
        "",
        "gamsa CPU: the sealing workers', or the `gamsa` process's; the last column is",
        f"the least wall time the phase could take on {cores} idle cores.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        with args.out.open("a") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
