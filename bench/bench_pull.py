"""Benchmark: `gamsa pull` of a bucket prefix against `aws s3 sync` of the same prefix.

    python bench/bench_pull.py [--bundles 1000] [--hosts 4] [--repeat 3] [--aws PATH] [--out FILE]

One run, one moto server (a real subprocess on loopback), one bucket:

1. seal BUNDLES small bundles (a few KB each, like a real collection) spread over
   HOSTS hosts, each host in its own state dir, and upload them under their store
   keys (with the key documents) to an Object Lock bucket;
2. `gamsa pull` (the real CLI, subprocess) the prefix into a fresh directory: every
   bundle downloaded, verified and linked into the mirror;
3. `aws s3 sync` the same prefix into another fresh directory (download only).

gamsa and awscli alternate which goes first. Beside wall time it reports the HTTP
requests the server logged and both sides' CPU time. awscli must come from its
own virtualenv (not gamsa's). Helpers are bench_ship's.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_ship import (
    CREDS,
    GAMSA,
    Run,
    Server,
    client,
    seal,
    stage_for_awscli,
    start_moto,
    timed,
    write_config,
)

BUCKET = "pull-bench"


def populate(work: Path, endpoint: str, bundles: int, hosts: int) -> tuple[int, int, list[str]]:
    """Seal the bundles, upload them under their keys; (objects, bytes, key files)."""
    stage = work / "stage"
    keys: list[str] = []
    for number in range(hosts):
        directory = work / f"host-{number}"
        directory.mkdir()
        config = write_config(directory, endpoint, BUCKET, f"bench-{number}")
        seal(config, f"bench-{number}", bundles // hosts, 20, 96)
        stage_for_awscli(directory / "state", stage)
        keys.append(str(directory / "state" / "keys" / "agent.json"))
    s3 = client(endpoint)
    s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    files = sorted(p for p in stage.rglob("*") if p.is_file())

    def upload(path: Path) -> int:
        data = path.read_bytes()
        s3.put_object(Bucket=BUCKET, Key=f"evidence/{path.relative_to(stage).as_posix()}",
                      Body=data)
        return len(data)

    with ThreadPoolExecutor(max_workers=8) as pool:
        total = sum(pool.map(upload, files))
    return len(files), total, keys


def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="gamsa-bench-pull-"))
    process, endpoint = start_moto(work)
    server = Server(process, work / "moto.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GAMSA_"))}
    env.update(CREDS)
    results: dict[str, list[Run]] = {}
    try:
        objects, size, keys = populate(work, endpoint, args.bundles, args.hosts)
        config = write_config(work, endpoint, BUCKET, "auditor")
        trust = [part for key in keys for part in ("--trust", key)]
        for rep in range(args.repeat):
            for tool in (("gamsa", "aws") if rep % 2 == 0 else ("aws", "gamsa")):
                target = work / f"{tool}-{rep}"
                if tool == "gamsa":
                    name = "gamsa pull (download + verify every bundle)"
                    command = [GAMSA, "pull", "--store", f"s3://{BUCKET}/evidence", "--to",
                               str(target), *trust]
                    outcome = timed(command, {**env, "GAMSA_CONFIG": str(config)}, server)
                    pulled = len(list(target.rglob("*.manifest.dsse.json")))
                    if pulled != args.bundles // args.hosts * args.hosts:
                        raise SystemExit(f"gamsa pull mirrored {pulled} bundles")
                else:
                    name = "aws s3 sync (download only)"
                    outcome = timed([args.aws, "s3", "sync", "--only-show-errors",
                                     "--endpoint-url", endpoint, f"s3://{BUCKET}/evidence",
                                     str(target)], env, server)
                results.setdefault(name, []).append(outcome)
                shutil.rmtree(target, ignore_errors=True)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    aws_version = subprocess.run([args.aws, "--version"], capture_output=True, text=True,
                                 check=False)
    medians = {name: statistics.median(r.seconds for r in runs)
               for name, runs in results.items()}
    aws_median = next(v for k, v in medians.items() if k.startswith("aws"))
    lines = [
        "| tool | objects | MB | median s | best s | objects/s | speed vs aws s3 sync "
        "| requests | server CPU s | client CPU s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in results.items():
        median = medians[name]
        lines.append(
            f"| {name} | {objects} | {size / 1e6:.1f} | {median:.2f} | "
            f"{min(r.seconds for r in runs):.2f} | {objects / median:.0f} | "
            f"{aws_median / median:.2f}x | {statistics.median(r.requests for r in runs):.0f} | "
            f"{statistics.median(r.server_cpu for r in runs):.2f} | "
            f"{statistics.median(r.client_cpu for r in runs):.2f} |")
    cpu = ""
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return "\n".join([
        "",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- awscli: {(aws_version.stdout or aws_version.stderr).strip()}",
        f"- one moto_server on 127.0.0.1; {args.bundles} bundles of {args.hosts} hosts "
        f"in one Object Lock bucket; each run into a fresh directory; gamsa and awscli "
        f"alternate which goes first; {args.repeat} runs each; times include process start",
        "",
        *lines,
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool")
    parser.add_argument("--aws", default=shutil.which("aws") or "/tmp/awsvenv/bin/aws")
    parser.add_argument("--out", type=Path, help="append the results to this Markdown file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    report = run(args)
    print(report)
    if args.out:
        with args.out.open("a", encoding="utf-8") as out:
            out.write(report)


if __name__ == "__main__":
    main()
