"""Verifying a local mirror at scale: one process, worker processes, a Dask cluster.

Run by hand (not in CI):  python bench/bench_verify.py [--bundles 100000] [--records 20]

Builds once (cached under /tmp/gamsa-bench-verify-<bundles>x<records>/) a store of
`--hosts` hosts' chains of small bundles, sealed by the real format code
(signing.bundle.write_records + sign_manifest, chained by prev), then times in one
run, on the same machine:
  limit      hashlib.sha256 of each record's canonical bytes (the raw leaf-hash rate,
             per CPU second: the machine is shared, so rates are taken in CPU time)
  1 process  signing.verify.verify_store, in_process
  N procs    the same with signing.fanout.processes(N) (gamsa verify's default)
  dask       the same on a Dask LocalCluster of N worker processes over TCP
             (agent.verify_dask; cluster start-up not timed)
  records    check_records over one large records object (bench_seal's verify part):
             the per-core record rate without per-bundle costs
and prints the speed-ups against one process and per-core rates against the limit.
With `--rounds R` the three runs alternate R times (this VM's speed drifts by a third
from one minute to the next: a ratio of runs minutes apart says more about the drift
than about the code) and medians of each round's ratios are reported, next to the
ceiling: N processes of pure leaf hashing against one, in the same round.
Targets (issue 11): N=2 processes >= 1.8x, Dask of 2 >= 1.6x, per core >= 0.2.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import statistics
import sys
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.signing

from signing.bundle import BundleName, manifest_sha256, sign_manifest, write_records
from signing.canonical import canonical_bytes
from signing.fanout import processes
from signing.keys import FileSigner, generate_private_key, load_private_key, save_private_key
from signing.verify import DirectoryReader, check_records, in_process, verify_store
from tests.signing.bundle_fixtures import manifest_predicate

HOST_PREFIX = "bench-host-"


def record(host: str, seq: int, i: int) -> dict[str, Any]:
    return {"v": 1, "collector": "files", "type": "file", "key": f"/etc/conf.d/f{i:04d}",
            "host": host, "observed_at": f"2026-11-25T06:00:{i % 60:02d}.{seq % 999999:06d}Z",
            "data": {"mode": "0644", "uid": 0, "gid": 0, "size": 1000 + i * 7,
                     "sha256": hashlib.sha256(f"{host}{seq}{i}".encode()).hexdigest(),
                     "owner": "root", "mtime": "2026-11-20T01:02:03Z"}}


def build(root: Path, bundles: int, per_bundle: int, hosts: int) -> FileSigner:
    """The store (cached: built once per size), and the key that signed it."""
    key_path = root / "bench.key"
    done = root / ".complete"
    if done.exists():
        return FileSigner.from_key(load_private_key(key_path))
    root.mkdir(parents=True, exist_ok=True)
    private = generate_private_key()
    save_private_key(key_path, private)
    signer = FileSigner.from_key(private)
    started = time.perf_counter()
    per_host = bundles // hosts
    for h in range(hosts):
        host = f"{HOST_PREFIX}{h:04d}"
        prev: str | None = None
        for seq in range(1, per_host + 1):
            minute, second = divmod(seq, 60)
            stamp = f"2026-11-25T{minute // 60:02d}:{minute % 60:02d}:{second:02d}"
            name = BundleName(host, "2026-11-25", seq, f"c{seq:07d}")
            obj = write_records(record(host, seq, i) for i in range(per_bundle))
            chain: dict[str, Any] = {"id": "c0000001", "seq": seq, "prev": prev}
            if seq == 1:
                chain["genesis_reason"] = "first collection"
            predicate = manifest_predicate(name, obj, f"{stamp}.000000Z", f"{stamp}.500000Z",
                                           chain)
            manifest = sign_manifest(name, obj, predicate, signer)
            directory = root / f"v1/host={host}/date={name.date}"
            directory.mkdir(parents=True, exist_ok=True)
            (root / name.records_key).write_bytes(obj.data)
            (root / name.manifest_key).write_bytes(manifest)
            prev = manifest_sha256(manifest)
        print(f"# built host {h + 1}/{hosts} ({time.perf_counter() - started:.0f} s)",
              flush=True)
    done.write_text("ok\n")
    return signer


def sample_records(per_bundle: int) -> list[dict[str, Any]]:
    """100,000 records of the kind the store holds."""
    return [record("bench-host-0000", s, i)
            for s in range(1, 1 + 100_000 // per_bundle) for i in range(per_bundle)]


def limit_rate(lines: list[bytes]) -> float:
    """Leaf hashes per CPU second of this thread over `lines` (best of 5). Thread, not
    process, time: a thread Dask's client leaves behind would count otherwise (it
    made the records part look 1.7x slower at the end of a run)."""
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        sha = hashlib.sha256
        for line in lines:
            sha(b"\x00" + line).digest()
        best = min(best, time.thread_time() - start)
    return len(lines) / best


def records_rate(data: bytes, count: int) -> float:
    """check_records over one records object (best of 3): the per-line cost."""
    best = float("inf")
    for _ in range(3):
        start = time.thread_time()
        found, _root, findings = check_records(data, "k", "bench-host-0000")
        best = min(best, time.thread_time() - start)
        assert found == count and not findings
    return count / best


def _hash_for(seconds: float, out: Any) -> None:
    lines = [os.urandom(300) for _ in range(10_000)]
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for line in lines:
            hashlib.sha256(b"\x00" + line).digest()
        count += len(lines)
    out.put(count)


def hash_ceiling(workers: int, seconds: float = 3.0) -> float:
    """How many times one process's leaf hashing `workers` processes do at once here
    (2.0 on two free cores; less where the cores are shared or throttled)."""
    context = get_context("fork")

    def run(n: int) -> int:
        out = context.Queue()
        procs = [context.Process(target=_hash_for, args=(seconds, out)) for _ in range(n)]
        for proc in procs:
            proc.start()
        total = sum(out.get() for _ in procs)
        for proc in procs:
            proc.join()
        return total

    single = run(1)
    return run(workers) / single


def warm(root: Path) -> None:
    """Read every object once, so no run pays for a cold page cache (a first
    one-process run did: 80 s wall for 65 CPU s, and a 3.3x 'speed-up' after it)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                while handle.read(1 << 20):
                    pass


def cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (pool workers)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def timed(label: str, fn: Any, bundles: int, records: int,
          workers_cpu: Any = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every process that took part) of one run."""
    before_cpu, before_workers = cpu_seconds(), workers_cpu() if workers_cpu else 0.0
    start = time.perf_counter()
    result = fn()
    taken = time.perf_counter() - start
    cpu = cpu_seconds() - before_cpu + ((workers_cpu() - before_workers) if workers_cpu
                                        else 0.0)
    assert result.ok, [f for f in result.findings if f.severity == "error"][:3]
    assert len(result.bundles) == bundles and result.records == records
    print(f"| {label} | {taken:.1f} | {cpu:.1f} | {bundles / taken:,.0f} | "
          f"{records / taken:,.0f} |", flush=True)
    return taken, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=20, help="records per bundle")
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--dask-profiler", action="store_true",
                        help="leave the Dask workers' statistical profiler on (Dask's default)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the runs this many times; medians of the ratios")
    args = parser.parse_args()
    root = Path(f"/tmp/gamsa-bench-verify-{args.bundles}x{args.records}")
    signer = build(root, args.bundles, args.records, args.hosts)
    warm(root)
    trusted = {signer.key_id: signer.public_key()}
    reader = DirectoryReader(root)
    bundles = args.hosts * (args.bundles // args.hosts)
    records = bundles * args.records
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    print(f"# CPython {platform.python_version()}, {os.cpu_count()} CPUs ({cpu}); "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"# {bundles:,} bundles of {args.records} records, {args.hosts} hosts, {root}")
    sample = sample_records(args.records)
    lines = [canonical_bytes(r) for r in sample]
    sample_object = write_records(sample)
    # The records part first, in this fresh process: after a verify of 100,000
    # bundles here, glibc's heap makes check_records ~30% slower (0.18 -> 0.13 of the
    # limit; malloc_trim gives back half), which says nothing about check_records.
    # The limit and check_records alternate, a ratio per pair.
    parts = []
    for _ in range(5):
        limit = limit_rate(lines)
        parts.append((limit, records_rate(sample_object.data, sample_object.count)))
    part_ratio = statistics.median(rate / limit for limit, rate in parts)
    print("| run | wall s | CPU s (all processes) | bundles/s | records/s |")
    print("|---|---|---|---|---|")
    pool = processes(args.workers, start_method="fork")  # workers are our children: CPU counted
    rounds: list[dict[str, float]] = []
    cluster = client = None
    if not args.no_dask:
        import dask
        from dask.distributed import Client, LocalCluster

        from agent.verify_dask import dask_mapper

        # As OPERATIONS.md says to start verify workers: the worker's statistical
        # profiler (a stack sample of the task thread every 10 ms, for the dashboard)
        # off. --dask-profiler keeps Dask's default.
        dask.config.set({"distributed.worker.profile.enabled": args.dask_profiler})
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        client = Client(cluster.scheduler_address)
    scheduler = "" if cluster is None else cluster.scheduler_address
    try:
        for number in range(1, args.rounds + 1):
            tag = f" (round {number})" if args.rounds > 1 else ""
            one = timed(f"1 process{tag}",
                        lambda: verify_store(reader, trusted, mapper=in_process),
                        bundles, records)
            many = timed(f"{args.workers} processes{tag}",
                         lambda: verify_store(reader, trusted, mapper=pool), bundles, records)
            # The limit is taken in each round, next to the run it divides: this
            # VM's speed drifts by a third between minutes.
            limit = limit_rate(lines)
            found = {"one_wall": one[0], "one_cpu": one[1], "many": one[0] / many[0],
                     "many_cpu": one[1] / many[1],
                     "ceiling": hash_ceiling(args.workers), "limit": limit,
                     "whole_per_core": records / one[1] / limit}
            if client is not None and cluster is not None:
                def workers_cpu() -> float:
                    assert client is not None
                    return float(sum(client.run(time.process_time).values()))

                dask = timed(f"Dask LocalCluster, {args.workers} workers{tag}",
                             lambda: verify_store(reader, trusted,
                                                  mapper=dask_mapper(scheduler)),
                             bundles, records, workers_cpu)
                found.update(dask=one[0] / dask[0], dask_cpu=one[1] / dask[1])
            rounds.append(found)
    finally:
        if client is not None and cluster is not None:
            client.close()
            cluster.close()

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    if args.rounds > 1:
        print("| round | " + " | ".join(f"{k}" for k in rounds[0]) + " |")
        print("|---" * (len(rounds[0]) + 1) + "|")
        for number, r in enumerate(rounds, start=1):
            print(f"| {number} | " + " | ".join(f"{v:,.0f}" if v >= 1000 else f"{v:.3f}"
                                               for v in r.values()) + " |")
    dask_medians = "" if "dask" not in rounds[0] else (
        f"; Dask {median('dask'):.2f}x one process")
    print(f"# load average at end {os.getloadavg()[0]:.2f}")
    print(f"# limit (leaf hashes): {median('limit'):,.0f} rec/s (median of the rounds')")
    print(f"# wall (median of {len(rounds)} round(s)): {args.workers} processes "
          f"{median('many'):.2f}x one process{dask_medians}")
    # On a shared machine the wall ratio says how much CPU the others left us; the
    # CPU ratio says what the fan-out costs: N free cores give ~N x (this).
    print(f"# CPU efficiency (1-process CPU / all CPU): {args.workers} processes "
          f"{median('many_cpu'):.2f}"
          + ("" if "dask" not in rounds[0] else f"; Dask {median('dask_cpu'):.2f}"))
    print(f"# ceiling: {args.workers} processes of pure leaf hashing give "
          f"{median('ceiling'):.2f}x one on this machine, same rounds")
    one_cpu = median("one_cpu")
    print(f"# per core, whole bundles: {records / one_cpu:,.0f} rec/CPU-s = "
          f"{median('whole_per_core'):.3f} of the limit (median of each round's ratio)")
    print(f"# per core, records part (check_records, 100,000 records): "
          f"{statistics.median(rate for _, rate in parts):,.0f} rec/s = {part_ratio:.3f} of "
          f"the limit (median of 5 alternated pairs)")

if __name__ == "__main__":
    main()
