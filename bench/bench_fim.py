"""File watching in `gamsa agent run` (agent/fim.py): idle cost, latency, a burst.

Run by hand (not in CI), from the repository root:

    python bench/bench_fim.py [--files 10000] [--seconds 120] [--changes 40]
                              [--output bench/results/fim.md]

One run makes a tree of --files small files (100 directories), starts the daemon on
it (`paths = [DIR]`, only the `files` collector, schedule and heartbeat 1 h, a
file:// store) and measures, in this order:

  idle       --seconds with no change: the daemon's RSS (median of 1 s samples, and
             the maximum) and CPU (utime+stime from /proc, % of one core), beside
             the same daemon with `watch = false` on the same tree (what watching
             adds), the same daemon under PYTHONMALLOC=malloc (glibc's allocator
             for every object: what pymalloc's arenas keep after the sweep), a
             bare `python3 -c 'import time; time.sleep(N)'` (the floor) and
             `inotifywait -m -r -q DIR` (inotify-tools: a watcher with no Python,
             no hashing, no sealing), both started with the daemon and measured over
             the same window
  latency    --changes single-file changes, one at a time: from the write to the
             daemon's `sealed` log line of the bundle holding it (the daemon's own
             clock, `--log-format json`): median and p95
  burst      one write to every file, as fast as one process can; the time until
             every one of them is in a sealed bundle, and how many bundles it took

The results, with the command and the machine, are written as Markdown to --output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GAMSA = str(Path(sys.executable).parent / "gamsa")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_tree(root: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        directory = root / f"d{i % 100:03d}"
        directory.mkdir(exist_ok=True)
        path = directory / f"f{i:05d}.conf"
        path.write_bytes(f"setting_{i} = {i}\n".encode() * 4)
        paths.append(path)
    return paths


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def sealed_file_changes(work: Path) -> dict[str, str]:
    """path -> newest sealed sha256 of every file_change in the store and spool."""
    found: dict[str, tuple[str, str]] = {}
    for records in [*(work / "daemon-store").rglob("*.records.jsonl.gz"),
                    *(work / "daemon-state" / "spool").rglob("*.records.jsonl.gz")]:
        try:
            lines = gzip.decompress(records.read_bytes()).splitlines()
        except OSError:
            continue
        for line in lines:
            record = json.loads(line)
            if record["type"] == "file_change":
                key = record["key"]
                if key not in found or found[key][0] < records.name:
                    found[key] = (records.name, record["data"]["sha256"])
    return {k: v[1] for k, v in found.items()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--output", type=Path, default=Path("bench/results/fim.md"))
    args = parser.parse_args()

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="gamsa-bench-fim-"))
    tree = work / "watched" / "tree"  # its parent (watched too) holds nothing else
    tree.mkdir(parents=True)
    paths = make_tree(tree, args.files)
    def run_daemon(name: str, watch: bool, extra_env: dict[str, str] | None = None,
                   ) -> tuple[subprocess.Popen[bytes], Path]:
        config = work / f"{name}.toml"
        config.write_text(f'state_dir = "{work}/{name}-state"\nhost_id = "bench"\n'
                          f'[store]\nurl = "file://{work}/{name}-store"\n'
                          f'[collectors]\nenabled = ["files"]\n'
                          f'[collectors.files]\npaths = ["{tree}"]\n'
                          f'watch = {str(watch).lower()}\n'
                          f'[schedule]\ndefault = "1h"\nheartbeat = "1h"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAMSA_")}
        env["GAMSA_CONFIG"] = str(config)
        env.update(extra_env or {})
        log = work / f"{name}.log"
        with log.open("w") as err:
            proc = subprocess.Popen([GAMSA, "agent", "run", "--log-format", "json"],
                                    env=env, stdout=subprocess.DEVNULL, stderr=err)
        wait_for(lambda: any(e.get("event") == "shipped" for e in log_lines(log)),
                 600, f"{name}: the start sweep to be sealed and shipped")
        return proc, log

    peers: dict[str, subprocess.Popen[bytes]] = {}
    daemon, log_path = run_daemon("daemon", True)
    try:
        peers["gamsa agent run, watch = false"], _ = run_daemon("unwatched", False)
        peers["gamsa agent run, PYTHONMALLOC=malloc"], _ = run_daemon(
            "malloc", True, {"PYTHONMALLOC": "malloc"})
        start_sweep = next(e for e in log_lines(log_path) if e.get("event") == "sealed")
        watching = next(e for e in log_lines(log_path) if e.get("event") == "watching")

        # --- idle -----------------------------------------------------------------------
        peers["python3 sleep (floor)"] = subprocess.Popen(
            [sys.executable, "-c", f"import time; time.sleep({args.seconds + 30})"])
        if shutil.which("inotifywait"):
            peers["inotifywait -m -r"] = subprocess.Popen(
                ["inotifywait", "-m", "-r", "-q", str(tree)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)  # let every process settle (imports, watches)
        procs = {"gamsa agent run": daemon.pid, **{k: p.pid for k, p in peers.items()}}
        cpu0 = {k: cpu_seconds(pid) for k, pid in procs.items()}
        rss: dict[str, list[float]] = {k: [] for k in procs}
        began = time.monotonic()
        while time.monotonic() - began < args.seconds:
            for name, pid in procs.items():
                rss[name].append(rss_mb(pid))
            time.sleep(1)
        elapsed = time.monotonic() - began
        idle = {k: ((cpu_seconds(pid) - cpu0[k]) / elapsed * 100, statistics.median(rss[k]),
                    max(rss[k])) for k, pid in procs.items()}

        # --- latency -----------------------------------------------------------------
        latencies = []
        for i in range(args.changes):
            target = paths[(i * 7919) % len(paths)]
            before = len([e for e in log_lines(log_path) if e.get("event") == "sealed"])
            wrote = time.time()
            target.write_bytes(f"changed {i}\n".encode())
            wait_for(lambda b=before: len([e for e in log_lines(log_path)
                                           if e.get("event") == "sealed"]) > b,
                     60, f"change {i} to be sealed")
            sealed = [e for e in log_lines(log_path) if e.get("event") == "sealed"][before]
            at = dt.datetime.strptime(sealed["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=dt.UTC).timestamp()
            latencies.append(at - wrote)
            time.sleep(0.3)

        # --- burst -------------------------------------------------------------------------
        bundles_before = len([e for e in log_lines(log_path) if e.get("event") == "sealed"])
        expected = {}
        burst_start = time.monotonic()
        for i, target in enumerate(paths):
            content = f"burst {i}\n".encode()
            target.write_bytes(content)
            expected[str(target)] = hashlib.sha256(content).hexdigest()
        written = time.monotonic() - burst_start

        def all_sealed() -> bool:
            sealed = sealed_file_changes(work)
            return all(sealed.get(k) == v for k, v in expected.items())
        deadline = time.monotonic() + 300
        while not all_sealed():
            if time.monotonic() > deadline:
                raise SystemExit("burst not sealed within 300 s")
            time.sleep(0.5)
        burst = time.monotonic() - burst_start
        burst_bundles = len([e for e in log_lines(log_path)
                             if e.get("event") == "sealed"]) - bundles_before
        time.sleep(5)  # what stays once the burst's bundles are shipped
        after_burst = rss_mb(daemon.pid)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        for peer in peers.values():
            peer.kill()
            peer.wait()

    floor = idle["python3 sleep (floor)"]
    lines = [
        "# File watching (bench/bench_fim.py)", "",
        f"Command: `python {shlex.join(sys.argv)}`", "",
        f"Load average at the start: {load_before}; at the end: {os.getloadavg()}.", "",
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Linux "
        f"{platform.release()}, CPython {platform.python_version()}, "
        f"{dt.date.today().isoformat()} (shared with other work: numbers are noisy).", "",
        f"Tree: {args.files:,} files in 100 directories, `paths = [DIR]`; start sweep: "
        f"{start_sweep['message']}; {watching['message']}.", "",
        f"## Idle, {args.seconds} s", "",
        "| process | CPU % of one core | RSS median MB | RSS max MB | RSS over the floor MB |",
        "|---|---|---|---|---|",
    ]
    for name, (cpu, median, peak) in idle.items():
        lines.append(f"| {name} | {cpu:.2f} | {median:.1f} | {peak:.1f} | "
                     f"{median - floor[1]:+.1f} |")
    lines += ["", f"## Change to sealed, {args.changes} single changes", "",
              f"median {statistics.median(latencies) * 1000:.0f} ms, p95 "
              f"{percentile(latencies, 0.95) * 1000:.0f} ms, max "
              f"{max(latencies) * 1000:.0f} ms (debounce 0.5 s, the default)", "",
              "## Burst", "",
              f"{args.files:,} files rewritten in {written:.1f} s; all sealed "
              f"{burst:.1f} s after the first write, in {burst_bundles} bundle(s).", "",
              f"The daemon's RSS 5 s after the burst was sealed (a batch of more than "
              f"200 paths is sealed by the sweep child): {after_burst:.1f} MB.", ""]
    text = "\n".join(lines)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
