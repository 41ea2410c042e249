"""Benchmark: `gamsa report` over a pulled mirror, against `gamsa verify` of the same
mirror and a bare read of every record (gzip + json.loads) in the same run.

    python bench/bench_report.py [--hosts 50] [--bundles 200] [--repeat 3] [--out FILE]

1. Seal HOSTS x BUNDLES bundles (each host its own state dir and key) with records
   like a day of a server: 20 access records (logins, sudo, a failure), one AI egress
   observation, 5 accounts, one file change, and 20 process records the report does
   not read; lay them out as a file:// store.
2. `gamsa pull` them into a mirror (real CLI).
3. Time, in turn in each repeat, `gamsa report --mirror … --html …`, `gamsa verify --store
   file://MIRROR --trust …` (what the report is next to in an audit) and the bare
   read; wall time and the child's peak RSS (wait4).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_ship import GAMSA, stage_for_awscli

ACTIONS = ("ssh_login",) * 12 + ("sudo",) * 6 + ("ssh_login_failed", "su")


def day_collectors(host: str, n: int) -> list[Any]:
    from collector.record import Record
    from collector.registry import Collector, RecordType

    month = f"2026-{1 + n % 12:02d}"

    def records() -> list[Record]:
        out = [Record("logs", "access", f"/var/log/auth.log:{n}:{i}",
                      {"action": action, "time": f"{month}-10T09:00:00Z",
                       "account": f"user{i % 7}", "source": "10.0.0.9"})
               for i, action in enumerate(ACTIONS)]
        out.append(Record("ai_egress", "ai_egress_observed", f"api.openai.com {n}:1",
                          {"endpoint": "api.openai.com", "count": 3,
                           "process_name": f"worker{n % 3}", "user": "svc",
                           "first_seen": "2026-11-01T00:00:00.000000Z",
                           "last_seen": "2026-11-01T00:01:00.000000Z"}))
        out += [Record("accounts", "user", f"user{i}", {"uid": 1000 + i, "sudo": i == 0})
                for i in range(5)]
        out.append(Record("files", "file_change", "/etc/hosts",
                          {"path": "/etc/hosts", "change": "modified"}))
        out += [Record("processes", "process", f"{pid}:1",  # read by nothing in the report
                       {"pid": pid, "name": f"proc{pid}", "exe": f"/usr/bin/proc{pid}",
                        "cmdline": [f"/usr/bin/proc{pid}", "--serve"], "user": "root"})
                for pid in range(100, 120)]
        return out

    return [Collector(name="day", version="1", description="bench",
                      platforms=("linux",),
                      record_types={"any": RecordType(doc="bench", key="k", fields={})},
                      collect=lambda _ctx: records())]


def build(work: Path, hosts: int, bundles: int) -> tuple[Path, list[str]]:
    from agent.config import load_config
    from agent.seal import seal_collection
    from agent.state import StateDir

    store = work / "store"
    keys: list[str] = []
    for number in range(hosts):
        host = f"bench-{number:03d}"
        directory = work / host
        directory.mkdir()
        config_path = directory / "agent.toml"
        config_path.write_text(f'state_dir = "{directory / "state"}"\nhost_id = "{host}"\n'
                               f'[store]\nurl = "file://{store}"\n[collectors]\nenabled = []\n')
        config = load_config(config_path, {})
        state = StateDir(config.state_dir)
        with state.locked():
            for n in range(bundles):
                seal_collection(config, host, day_collectors(host, n), "schedule", state)
        stage_for_awscli(directory / "state", store)
        keys.append(str(directory / "state" / "keys" / "agent.json"))
    return store, keys


def run(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child."""
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0, 1):
        assert process.stderr is not None
        raise SystemExit(f"{args[:3]} failed: {process.stderr.read()[-2000:]!r}")
    return elapsed, usage.ru_maxrss


def bare_read(mirror: Path) -> tuple[float, int]:
    started = time.perf_counter()
    lines = 0
    for path in sorted(mirror.glob("v1/host=*/date=*/*.records.jsonl.gz")):
        for line in gzip.decompress(path.read_bytes()).splitlines():
            json.loads(line)
            lines += 1
    return time.perf_counter() - started, lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--bundles", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        store, keys = build(work, opts.hosts, opts.bundles)
        sealed = time.perf_counter() - started
        mirror = work / "mirror"
        trust = [arg for key in keys for arg in ("--trust", key)]
        pulled, _ = run([GAMSA, "pull", "--store", f"file://{store}", "--to", str(mirror),
                         *trust])
        report_runs, verify_runs, bare_runs = [], [], []
        records = 0
        for i in range(opts.repeat):
            out = work / f"report-{i}.html"
            report_runs.append(run([GAMSA, "report", "--mirror", str(mirror), "--html",
                                    str(out), "--as-of", "2026-12-01T00:00:00Z"]))
            verify_runs.append(run([GAMSA, "verify", "--store", f"file://{mirror}", *trust]))
            seconds, records = bare_read(mirror)
            bare_runs.append((seconds, 0))
        size = (work / "report-0.html").stat().st_size
    report_s = statistics.median(r[0] for r in report_runs)
    verify_s = statistics.median(r[0] for r in verify_runs)
    bare_s = statistics.median(r[0] for r in bare_runs)
    lines = [
        f"## gamsa report: {opts.hosts} hosts x {opts.bundles} bundles, {records} records",
        "",
        f"`python bench/bench_report.py --hosts {opts.hosts} --bundles {opts.bundles} "
        f"--repeat {opts.repeat}`; {platform.node()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end; "
        f"medians of {opts.repeat}. Sealing took {sealed:.0f} s, the pull {pulled:.0f} s.",
        "",
        "| run | wall s | peak RSS MiB | vs report |",
        "| --- | --- | --- | --- |",
        f"| `gamsa report` ({size // 1024} KiB of HTML) | {report_s:.2f} | "
        f"{max(r[1] for r in report_runs) / 1024:.0f} | 1.00x |",
        f"| `gamsa verify` of the mirror (one process) | {verify_s:.2f} | "
        f"{max(r[1] for r in verify_runs) / 1024:.0f} | {verify_s / report_s:.2f}x |",
        f"| bare read: gzip + json.loads of every record (in process) | {bare_s:.2f} | - | "
        f"{bare_s / report_s:.2f}x |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        opts.out.write_text(text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
