"""Benchmark: ship sealed bundles to moto's S3 server, against `aws s3 cp --recursive`.

    python bench/bench_ship.py [--bundles 1000] [--big-mb 200] [--aws PATH] [--out FILE]

One run, one moto server (a real subprocess on loopback), the same files:

1. seal N small bundles (a few KB each, like a real collection) and one bundle
   whose records object is about BIG MB, each host in its own state dir;
2. `gamsa ship` (the real CLI, subprocess) each spool to an Object Lock bucket;
3. `aws s3 cp --recursive` the very same files, laid out under the same keys, to a
   second Object Lock bucket on the same server;
4. `gamsa verify` the small-bundle store over s3:// (reads and re-hashes every object).

`gamsa ship` runs with the default `store.confirm_every` (a HEAD of the first
manifest of the run, then one in 100). With `--every-manifest`, a third row runs
it with `confirm_every = 1` (a HEAD after every manifest, as before issue 10):
what confirming each one costs.

Beside the wall time of each run it reports the HTTP requests the server logged,
the server's CPU time and the client's (the tool's process and its children), so
a reader can tell whether a run was bound by the server, the client or latency.

Prints a Markdown table and, with --out, writes it with the command line and the
machine. awscli must come from its own virtualenv (not gamsa's).
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BIN = Path(sys.executable).parent
GAMSA = str(BIN / "gamsa")
MOTO = str(BIN / "moto_server")
CREDS = {"AWS_ACCESS_KEY_ID": "AKIABENCH000000000001", "AWS_SECRET_ACCESS_KEY": "bench",
         "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
         "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_moto(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (workdir / "moto.log").open("wb")
    process = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, **CREDS})
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("moto_server did not start")


def client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
                        config=Config(s3={"addressing_style": "path"}))


def write_config(directory: Path, endpoint: str, bucket: str, host: str,
                 store_extra: str = "") -> Path:
    config = directory / "agent.toml"
    config.write_text(
        f'state_dir = "{directory / "state"}"\nhost_id = "{host}"\n'
        f'[store]\nurl = "s3://{bucket}/evidence"\nendpoint_url = "{endpoint}"\n'
        f'region = "us-east-1"\naddressing_style = "path"\nobject_lock_mode = "COMPLIANCE"\n'
        f"retention_days = 1\nread_timeout = 120\n{store_extra}"
        f"[collectors]\nenabled = []\n")
    return config


def bench_collector(records: int, payload: int) -> Any:
    """Records with a random payload (incompressible: sizes are what gets shipped)."""
    from collector.record import Record
    from collector.registry import Collector, Field, RecordType

    def collect(_ctx: Any) -> list[Record]:
        return [Record("bench", "blob", f"{n:08d}",
                       {"blob": base64.b64encode(os.urandom(payload)).decode(), "n": n})
                for n in range(records)]

    return Collector(name="bench", version="1", description="benchmark payload",
                     platforms=("linux", "darwin", "win32"),
                     record_types={"blob": RecordType("payload", "n", {
                         "blob": Field((str,), "random"), "n": Field((int,), "counter")})},
                     collect=collect)


def seal(config_path: Path, host: str, bundles: int, records: int, payload: int) -> float:
    from agent.config import load_config
    from agent.seal import seal_collection
    from agent.state import StateDir

    config = load_config(config_path, {})
    state = StateDir(config.state_dir)
    collector = [bench_collector(records, payload)]
    started = time.perf_counter()
    with state.locked():
        for _ in range(bundles):
            seal_collection(config, host, collector, "schedule", state)
    return time.perf_counter() - started


def stage_for_awscli(state_dir: Path, target: Path) -> tuple[int, int]:
    """Copy the spool's objects (and the key document) under their store keys."""
    from agent.state import StateDir
    from signing.keys import parse_key_document

    state = StateDir(state_dir)
    files = 0
    total = 0
    key_doc = state.key_document_bytes()
    key_path = target / f"v1/keys/{parse_key_document(key_doc).key_id}.json"
    pairs = [(key_path, state.key_doc_path)]
    for entry in state.entries():
        pairs.append((target / entry.name.records_key, entry.records_path))
        pairs.append((target / entry.name.manifest_key, entry.manifest_path))
    for destination, source in pairs:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
        files += 1
        total += destination.stat().st_size
    return files, total


@dataclass
class Run:
    """One timed run: wall seconds, requests the server logged, CPU seconds of each side."""

    seconds: float
    requests: int = 0
    server_cpu: float = 0.0
    client_cpu: float = 0.0


class Server:
    """The moto process, for its CPU time and the requests in its access log."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = psutil.Process(process.pid)
        self.log = log

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def requests(self) -> int:
        with self.log.open("rb") as lines:
            return sum(b'" 2' in line or b'" 4' in line or b'" 5' in line for line in lines)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str], env: dict[str, str], server: Server | None = None) -> Run:
    before = (server.requests(), server.cpu()) if server else (0, 0.0)
    client_before = children_cpu()
    started = time.perf_counter()
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({result.returncode}): "
                         f"{result.stderr[-2000:]}")
    run = Run(elapsed, client_cpu=children_cpu() - client_before)
    if server:
        time.sleep(0.2)  # let the server flush its access log
        run.requests = server.requests() - before[0]
        run.server_cpu = server.cpu() - before[1]
    return run


def prepare(work: Path, endpoint: str, name: str, bundles: int, records: int,
            payload: int) -> tuple[Path, Path, float, int, int]:
    """Seal a host's bundles once; stage the same files for awscli."""
    directory = work / name
    directory.mkdir()
    config = write_config(directory, endpoint, "unused", f"bench-{name}")
    seconds = seal(config, f"bench-{name}", bundles, records, payload)
    stage = work / f"stage-{name}"
    files, size = stage_for_awscli(directory / "state", stage)
    return directory / "state", stage, seconds, files, size


def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="gamsa-bench-"))
    process, endpoint = start_moto(work)
    server = Server(process, work / "moto.log")
    s3 = client(endpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GAMSA_"))}
    env.update(CREDS)
    results: dict[tuple[str, str], list[Run]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    big_records = max(1, args.big_mb * 1024 * 1024 // int(1024 * 4 / 3 * 0.77 + 60))
    try:
        workloads = {
            "small": (f"{args.bundles} bundles",
                      prepare(work, endpoint, "small", args.bundles, 20, 96)),
            "big": ("1 bundle, big records object",
                    prepare(work, endpoint, "big", 1, big_records, 1024)),
        }
        for key, (label, (state_dir, stage, _, files, size)) in workloads.items():
            sizes[label] = (files, size)
            for rep in range(args.repeat):
                order = ("gamsa", "aws") if rep % 2 == 0 else ("aws", "gamsa")
                tools = (*order, "gamsa-every") if args.every_manifest else order
                for tool in tools:
                    bucket = f"{tool}-{key}-{rep}"
                    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
                    if tool.startswith("gamsa"):
                        copy = work / f"run-{key}-{rep}-{tool}"
                        copy.mkdir()
                        shutil.copytree(state_dir, copy / "state")
                        config = write_config(
                            copy, endpoint, bucket, f"bench-{key}",
                            "confirm_every = 1\n" if tool == "gamsa-every" else "")
                        outcome = timed([GAMSA, "ship"], {**env, "GAMSA_CONFIG": str(config)},
                                        server)
                        name = ("gamsa ship" if tool == "gamsa"
                                else "gamsa ship, confirm_every = 1 (a HEAD per manifest)")
                    else:
                        outcome = timed([args.aws, "s3", "cp", "--recursive",
                                         "--only-show-errors", "--endpoint-url", endpoint,
                                         str(stage), f"s3://{bucket}/evidence"], env, server)
                        name = "aws s3 cp --recursive"
                    results.setdefault((label, name), []).append(outcome)
        small_copy = work / "run-small-0-gamsa"
        trust = str(small_copy / "state" / "keys" / "agent.json")
        t_verify = timed([GAMSA, "verify", "--trust", trust],
                         {**env, "GAMSA_CONFIG": str(small_copy / "agent.toml")}).seconds
    finally:
        process.terminate()
        process.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    aws_version = subprocess.run([args.aws, "--version"], capture_output=True, text=True,
                                 check=False)
    lines = [
        "| workload | tool | objects | MB | median s | best s | objects/s | MB/s "
        "| requests | server CPU s | client CPU s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (label, tool), runs in results.items():
        count, nbytes = sizes[label]
        median = statistics.median(r.seconds for r in runs)
        lines.append(
            f"| {label} | {tool} | {count} | {nbytes / 1e6:.1f} | {median:.2f} | "
            f"{min(r.seconds for r in runs):.2f} | {count / median:.0f} | "
            f"{nbytes / 1e6 / median:.1f} | {statistics.median(r.requests for r in runs):.0f} | "
            f"{statistics.median(r.server_cpu for r in runs):.2f} | "
            f"{statistics.median(r.client_cpu for r in runs):.2f} |")
    cpu = ""
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    seal_small, seal_big = workloads["small"][1][2], workloads["big"][1][2]
    return "\n".join([
        "",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- awscli: {(aws_version.stdout or aws_version.stderr).strip()}",
        "- server: one moto_server on 127.0.0.1 for the whole run; every run ships to a "
        "fresh Object Lock bucket; gamsa and awscli alternate which goes first",
        f"- {args.repeat} runs per tool and workload; times include process start",
        f"- sealing (not timed below): {args.bundles} bundles in {seal_small:.1f} s; "
        f"the big bundle ({big_records} records) in {seal_big:.1f} s",
        f"- `gamsa verify` of the {args.bundles} bundles over s3:// (reads and re-hashes "
        f"every object): {t_verify:.1f} s",
        "",
        *lines,
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=int, default=1000)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool and workload")
    parser.add_argument("--aws", default=shutil.which("aws") or "/tmp/awsvenv/bin/aws",
                        help="awscli from its own virtualenv, never gamsa's")
    parser.add_argument("--out", type=Path, help="append the results to this Markdown file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--every-manifest", action="store_true",
                        help="also time gamsa ship with confirm_every = 1 (a HEAD per manifest)")
    args = parser.parse_args()
    report = run(args)
    print(report)
    if args.out:
        with args.out.open("a", encoding="utf-8") as out:
            out.write(report)


if __name__ == "__main__":
    main()
