"""Benchmark: `gamsa query` and `gamsa diff` over a year of one host and a day of a fleet.

    python bench/bench_query.py [--year-hosts 1] [--days 365] [--fleet-hosts 200]
                                [--hourly 40] [--daily 1600] [--out FILE]

Writes two mirrors in the layout `gamsa pull` makes (bundles sealed by signing/:
canonical records, gzip, Merkle root, a signed DSSE manifest; no chain or pull
verification, which query does not repeat): hourly bundles of HOURLY records
(processes, connections, auth-log lines) and one daily bundle of DAILY records
(accounts, files, packages, services) per host. Then runs the real CLI on each
(a fresh process per command: wall time includes Python and DuckDB start-up) and
reports seconds, peak RSS and the record counts. As a reference, the same
count by collector in plain Python over agent/mirror.py (json.loads per record).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GAMSA = str(Path(sys.executable).with_name("gamsa"))

from agent.mirror import open_mirror  # noqa: E402
from agent.pull import STATE_NAME  # noqa: E402
from signing.bundle import BundleName, sign_manifest, write_records  # noqa: E402
from signing.keys import FileSigner, generate_private_key  # noqa: E402
from signing.predicate import parse_predicate  # noqa: E402

SHA = "0" * 64


def _record(host: str, at: str, collector: str, rtype: str, key: str,
            data: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "collector": collector, "type": rtype, "key": key, "host": host,
            "observed_at": at, "data": data}


def hourly_records(host: str, at: str, count: int, hour: int) -> list[dict[str, Any]]:
    out = []
    for n in range(count):
        if n % 4 == 0:
            out.append(_record(host, at, "logs", "access", f"/var/log/auth.log:{hour}{n}",
                               {"action": "ssh_login_failed" if n % 8 == 0 else "ssh_login",
                                "account": f"user{n % 17}", "source": f"10.0.{n % 5}.{n}",
                                "time": at}))
        elif n % 4 == 1:
            out.append(_record(host, at, "network", "connection",
                               f"tcp:10.0.0.1:{40000 + n}-203.0.113.{n % 200}:443",
                               {"proto": "tcp", "remote_address": f"203.0.113.{n % 200}",
                                "remote_port": 443, "pid": 1000 + n,
                                "process_name": "python3" if n % 3 else "curl"}))
        else:
            out.append(_record(host, at, "processes", "process", f"{1000 + n}:{hour}",
                               {"pid": 1000 + n, "name": f"proc{n % 23}", "user": "svc",
                                "exe": f"/usr/bin/proc{n % 23}", "exe_sha256": SHA,
                                "cmdline": f"/usr/bin/proc{n % 23} --serve"}))
    if hour % 6 == 0:
        out.append(_record(host, at, "ai_egress", "ai_egress_observed",
                           f"api.openai.com:443 {hour}:1",
                           {"endpoint": "api.openai.com:443", "process_name": "python3",
                            "exe": "/usr/bin/python3", "count": 2, "first_seen": at,
                            "last_seen": at}))
    return out


def daily_records(host: str, at: str, count: int, day: int) -> list[dict[str, Any]]:
    out = []
    users = 30 + day % 3  # an account comes and goes
    for n in range(users):
        out.append(_record(host, at, "accounts", "user", f"user{n}",
                           {"uid": 0 if n == 0 else 1000 + n, "sudo": n < 3,
                            "shell": "/bin/bash", "login_allowed": True}))
    files = count // 8
    for n in range(files):
        sha = f"{(day if n == 0 else 0):064x}"  # one file changes every day
        out.append(_record(host, at, "files", "file", f"/etc/conf{n}",
                           {"path": f"/etc/conf{n}", "kind": "file", "sha256": sha,
                            "size": 100 + n}))
    for n in range(count - users - files):
        out.append(_record(host, at, "packages", "package", f"dpkg:pkg{n}:amd64",
                           {"manager": "dpkg", "name": f"pkg{n}", "version": f"1.{n % 9}",
                            "arch": "amd64"}))
    return out


def _collectors(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    counts = Counter(r["collector"] for r in records)
    return [{"name": name, "version": "1", "status": "ok", "records": n, "error": None,
             "duration_ms": 1, "gaps": []} for name, n in sorted(counts.items())]


def make_mirror(root: Path, hosts: int, days: int, hourly: int, daily: int,
                start: dt.date) -> tuple[int, int]:
    """Write the mirror; (bundles, records)."""
    signer = FileSigner.from_key(generate_private_key())
    bundles = total = 0
    for h in range(hosts):
        host = f"host-{h:04d}"
        seq = 0
        for d in range(days):
            day = start + dt.timedelta(days=d)
            for hour in range(24):
                at = f"{day.isoformat()}T{hour:02d}:00:00.000000Z"
                records = hourly_records(host, at, hourly, hour)
                if hour == 0:
                    records = daily_records(host, at, daily, d) + records
                seq += 1
                cid = f"{day.strftime('%Y%m%d')}T{hour:02d}0000Z-{h:04x}{seq % 65536:04x}"
                name = BundleName(host, day.isoformat(), seq, cid)
                obj = write_records(records)
                predicate = {
                    "host": {"id": host, "hostname": host, "os": "Linux"},
                    "agent": {"name": "gamsa", "version": "bench", "config_sha256": SHA,
                              "key_id": signer.key_id},
                    "collection": {"id": cid, "trigger": "schedule", "started_at": at,
                                   "finished_at": at},
                    "collectors": _collectors(records),
                    "records": {"count": obj.count, "merkle_root": obj.merkle_root},
                    "chain": {"id": "bench", "seq": seq, "prev": None},
                }
                manifest = sign_manifest(name, obj, parse_predicate(predicate), signer)
                directory = root / f"v1/host={host}/date={day.isoformat()}"
                directory.mkdir(parents=True, exist_ok=True)
                (root / name.records_key).write_bytes(obj.data)
                (root / name.manifest_key).write_bytes(manifest)
                bundles += 1
                total += obj.count
    (root / STATE_NAME).write_text(json.dumps({"store": "bench", "trust": {}}))
    return bundles, total


def timed(args: list[str]) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, peak RSS in MiB, stdout) of one CLI run."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([GAMSA, *args], stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{args}: exit {proc.returncode}: {err.read().decode()[-500:]}")
        cpu = usage.ru_utime + usage.ru_stime
        return seconds, cpu, usage.ru_maxrss // 1024, out.read().decode()


def python_count(mirror: Path) -> tuple[float, int]:
    started = time.perf_counter()
    view = open_mirror(mirror)
    counts: Counter[str] = Counter()
    for bundle in view.bundles():
        for record in view.records(bundle):
            counts[record["collector"]] += 1
    return time.perf_counter() - started, sum(counts.values())


def bench(label: str, mirror: Path, host: str, first: dt.date, last: dt.date,
          lines: list[str]) -> None:
    base = ["query", "--mirror", str(mirror), "--json"]
    runs = [
        ("count by collector", [*base, "SELECT collector, count(*) AS n FROM records "
                                       "GROUP BY ALL ORDER BY ALL"]),
        ("manifests: bundles per host", [*base, "SELECT host, count(*) AS n, "
                                                "sum(record_count) AS records FROM manifests "
                                                "GROUP BY ALL"]),
        ("named privileged-accounts", [*base, "--named", "privileged-accounts"]),
        ("named failed-logins", [*base, "--named", "failed-logins"]),
        ("named ai-egress", [*base, "--named", "ai-egress"]),
        ("one host, --collector accounts", [*base, "--host", host, "--collector", "accounts",
                                            "SELECT count(*) AS n FROM records"]),
        ("diff first..last day", ["diff", "--mirror", str(mirror), "--host", host, "--json",
                                  "--from", f"{first}T12:00:00Z",
                                  "--to", f"{last}T12:00:00Z"]),
    ]
    for what, args in runs:
        seconds, cpu, rss, out = timed(args)
        data = json.loads(out)
        size = (len(data) if isinstance(data, list) else
                f"{sum(data['counts'].values())} changes")
        if what == "count by collector":
            size = f"{sum(r['n'] for r in data)} records"
        lines.append(f"| {label} | {what} | {seconds:.2f} | {cpu:.2f} | {rss} | {size} |")
        print(lines[-1], flush=True)
    cpu_before = time.process_time()
    seconds, count = python_count(mirror)
    lines.append(f"| {label} | reference: count in Python (mirror.py, json.loads) | "
                 f"{seconds:.2f} | {time.process_time() - cpu_before:.2f} | - | "
                 f"{count} records |")
    print(lines[-1], flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--fleet-hosts", type=int, default=200)
    parser.add_argument("--hourly", type=int, default=40)
    parser.add_argument("--daily", type=int, default=1600)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", type=Path, help="Build the mirrors here and keep them.")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="gamsa-bench-query-"))
    start = dt.date(2025, 12, 1)
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores, "
             f"load {os.getloadavg()[0]:.1f}; python {platform.python_version()}", "",
             "| mirror | query | seconds | CPU s | peak RSS MiB | rows |",
             "|---|---|---|---|---|---|"]
    try:
        for label, hosts, days in (("year, 1 host", 1, args.days),
                                   ("day, fleet", args.fleet_hosts, 1)):
            mirror = work / label.replace(", ", "-").replace(" ", "")
            if not mirror.exists():
                began = time.perf_counter()
                bundles, records = make_mirror(mirror, hosts, days, args.hourly,
                                               args.daily, start)
                print(f"{label}: {bundles} bundles, {records} records "
                      f"(written in {time.perf_counter() - began:.0f} s)", flush=True)
                lines.append(f"| {label} | {bundles} bundles, {records} records | | | | |")
            last = start + dt.timedelta(days=days - 1)
            bench(label, mirror, "host-0000", start, last, lines)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
