"""Benchmark: a full default `gamsa collect` against `lynis audit system` and `sos report`.

Run by hand, as root, from the repository root (it is not part of CI, and lynis and
sos are never test dependencies; install them for the benchmark only):

    apt-get update && apt-get install -y lynis sosreport
    /work/venv/bin/python bench/bench_collect.py [--runs 3] [--sos-runs N] \
        [--lynis-runs N] [--out bench/results/collect.md]

In one run, each of --runs rounds runs, in a rotating order:

  gamsa cold   `gamsa collect --no-ship --json --config T/agent.toml`, T a fresh temp
               dir holding only `state_dir = "T/state"`: a first run, with key
               generation, an empty chain and empty caches; every collector (the default)
  gamsa warm   the same command again on that same state dir: key, chain, log offsets
               and hash caches are there (the second collection of a host)
  lynis        `lynis audit system --quick --no-colors --log-file T/lynis.log
               --report-file T/report.dat` (log and report in a temp dir, not /var/log)
  sos          `sos report --batch --quiet --tmp-dir T` (the archive is measured, then
               deleted with T)

What is measured, per command, by a fresh helper process (`python -I -c WRAPPER`) that
makes itself the child subreaper (prctl PR_SET_CHILD_SUBREAPER), starts the command
(no shell), waits for it, then reaps every descendant that was orphaned to it:

  wall     time.perf_counter around start..exit of the command (not the helper's own
           start-up)
  CPU      user + system seconds of every reaped descendant (RUSAGE_CHILDREN)
  peak RSS ru_maxrss of RUSAGE_CHILDREN: the peak RSS of the largest *single* process
           in the command's tree (Linux keeps the maximum, not a sum). Each helper starts
           from zero. Floor: a child is born with the helper's memory image, so nothing
           reads below the helper's own RSS; a run of `true` measures that floor.
  tree RSS the sum of RSS over the helper's live descendants, sampled every
           --sample-ms from /proc (shared pages counted once per process; processes
           shorter than the interval are missed). A sampled estimate, not a peak.

Medians and every run are written as Markdown (with the command and the machine) to
--out. gamsa collects different evidence from lynis (a hardening audit) and sos (a
support dump): this compares what each costs the host, not what it finds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The helper: stdlib only, argv = [stdout_file, stderr_file, sample_ms, command...].
# Prints one JSON line: rc, wall, cpu, maxrss_kib, tree_rss_kib, stragglers.
WRAPPER = r"""
import ctypes, json, os, resource, subprocess, sys, threading, time
out_path, err_path, sample_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
cmd = sys.argv[4:]
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come back to us
me = os.getpid()
page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
tree_peak = 0
done = threading.Event()

def descendants():
    parent, rss = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid = int(name)
        parent[pid] = int(fields[1])
        rss[pid] = int(fields[21]) * page_kib
    found = {}
    for pid in parent:
        ancestor, hops = parent.get(pid), 0
        while ancestor and ancestor != me and hops < 64:
            ancestor, hops = parent.get(ancestor), hops + 1
        if ancestor == me:
            found[pid] = rss[pid]
    return found

def sample():
    global tree_peak
    while not done.wait(sample_ms / 1000):
        tree_peak = max(tree_peak, sum(descendants().values()))

if sample_ms > 0:
    threading.Thread(target=sample, daemon=True).start()
with open(out_path, "wb") as out, open(err_path, "wb") as err:
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    rc = child.wait()
    wall = time.perf_counter() - start
done.set()
deadline = time.monotonic() + 5
stragglers = 0
while True:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:
        if time.monotonic() > deadline:
            stragglers = len(descendants())
            break
        time.sleep(0.05)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
                  "maxrss_kib": usage.ru_maxrss, "tree_rss_kib": tree_peak,
                  "stragglers": stragglers}))
"""


PREAMBLE = """\
# Collection benchmark: `gamsa collect` next to `lynis audit system` and `sos report`

`bench/bench_collect.py` runs, in the same run on the same machine, a full default
`gamsa collect` (every collector, `--no-ship`), `lynis audit system --quick` and
`sos report --batch` (the Debian packages `lynis` and `sosreport`, installed by hand
for the benchmark only). The three gather different things: gamsa seals host evidence
into a signed bundle, lynis runs a hardening audit, sos makes a support archive. This
compares what each costs the host (wall time, CPU, memory), not what it finds; the
last column says what each produced.

Reproduce (as root, from the repository root; run by hand, never in CI):

```sh
apt-get update && apt-get install -y lynis sosreport
/work/venv/bin/python bench/bench_collect.py --runs 3 --out bench/results/collect.md
```

How it is measured: each command runs under a fresh helper process (`python -I -c`)
that makes itself child subreaper, starts the command without a shell, waits for it and
reaps every orphaned descendant. *wall* is `time.perf_counter` from start to exit of
the command; *CPU* is user + system of every reaped descendant (`RUSAGE_CHILDREN`);
*peak RSS* is `RUSAGE_CHILDREN` `ru_maxrss`: the peak of the largest **single**
process in the tree, not a sum (floor: the helper's own RSS, measured with `true`
below); *tree RSS* is the largest sum of RSS over the live tree seen by a /proc
sampler every 100 ms (shared pages counted per process, short-lived processes missed):
an estimate. gamsa *cold* uses a fresh state dir (key generation, empty chain, empty
hash caches); *warm* runs again on that state dir (key, chain, log offsets and
executable/file hash caches present). The bundle size is the new spool entry
(`records.jsonl.gz`, manifest, bundle.json). The page cache is warm for everybody
after the first round (nothing drops caches).

## Result
"""


@dataclass
class Run:
    rc: int
    wall: float
    cpu: float
    maxrss_kib: int
    tree_rss_kib: int
    stragglers: int
    output: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class Row:
    tool: str
    variant: str
    command: list[str]
    runs: list[Run] = field(default_factory=list)

    def ok(self) -> list[Run]:
        return [run for run in self.runs if run.rc == 0]


def measure(command: list[str], workdir: Path, sample_ms: int) -> tuple[Run, Path, Path]:
    """Run `command` under a fresh helper; its stdout/stderr go to files in `workdir`."""
    out, err = workdir / "stdout", workdir / "stderr"
    helper = subprocess.run(
        [sys.executable, "-I", "-c", WRAPPER, str(out), str(err), str(sample_ms), *command],
        capture_output=True, text=True, check=False)
    if helper.returncode != 0:
        raise SystemExit(f"helper failed for {command}: {helper.stderr.strip()}")
    data = json.loads(helper.stdout.strip().splitlines()[-1])
    run = Run(rc=data["rc"], wall=data["wall"], cpu=data["cpu"],
              maxrss_kib=data["maxrss_kib"], tree_rss_kib=data["tree_rss_kib"],
              stragglers=data["stragglers"])
    if run.rc != 0:
        lines = [line for line in err.read_text(errors="replace").splitlines() if line.strip()]
        run.error = lines[0].strip() if lines else "(no stderr)"
    return run, out, err


def dir_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def gamsa_output(stdout: Path, state: Path) -> dict[str, Any]:
    summary = json.loads(stdout.read_text())
    seq = int(summary["seq"])
    entries = [entry for entry in (state / "spool").iterdir()
               if entry.name.startswith(f"{seq:010d}-")]
    failed = sorted(name for name, status in summary["collectors"].items() if status != "ok")
    return {"records": int(summary["records"]),
            "bundle_bytes": dir_bytes(entries[0]) if entries else 0,
            "collectors": len(summary["collectors"]), "collectors_not_ok": failed,
            "seq": seq}


def lynis_output(report: Path) -> dict[str, Any]:
    counts = {"tests": 0, "suggestions": 0, "warnings": 0, "hardening_index": 0}
    for line in report.read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key == "lynis_tests_done":
            counts["tests"] = int(value)
        elif key == "hardening_index":
            counts["hardening_index"] = int(value)
        elif key == "suggestion[]":
            counts["suggestions"] += 1
        elif key == "warning[]":
            counts["warnings"] += 1
    return counts


def sos_output(tmp: Path) -> dict[str, Any]:
    archives = sorted(item for item in tmp.glob("sosreport-*.tar*")
                      if not item.name.endswith((".md5", ".sha256")))
    if not archives:
        return {}
    archive = archives[0]
    plugins = 0
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            if member.name.endswith("sos_reports/manifest.json"):
                handle = tar.extractfile(member)
                if handle is not None:
                    manifest = json.load(handle)
                    plugins = len(manifest["components"]["report"]["plugins"])
    return {"archive_bytes": archive.stat().st_size,
            "files": sum(1 for member in members if member.isfile()), "plugins": plugins}


def run_gamsa(gamsa: str, sample_ms: int) -> tuple[Run, Run]:
    """A cold collection in a fresh state dir, then a warm one in the same dir."""
    with tempfile.TemporaryDirectory(prefix="bench-gamsa-") as name:
        tmp = Path(name)
        state = tmp / "state"
        config = tmp / "agent.toml"
        config.write_text(f'state_dir = "{state}"\n')
        results = []
        for _ in ("cold", "warm"):
            run, out, _err = measure(gamsa_command(gamsa, config), tmp, sample_ms)
            if run.rc == 0:
                run.output = gamsa_output(out, state)
            results.append(run)
        return results[0], results[1]


def gamsa_command(gamsa: str, config: Path) -> list[str]:
    return [gamsa, "collect", "--no-ship", "--json", "--config", str(config)]


def lynis_command(lynis: str, tmp: Path) -> list[str]:
    return [lynis, "audit", "system", "--quick", "--no-colors",
            "--log-file", str(tmp / "lynis.log"), "--report-file", str(tmp / "report.dat")]


def run_lynis(lynis: str, sample_ms: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="bench-lynis-") as name:
        tmp = Path(name)
        work = tmp / "io"
        work.mkdir()
        run, _out, _err = measure(lynis_command(lynis, tmp), work, sample_ms)
        if (tmp / "report.dat").exists():
            run.output = lynis_output(tmp / "report.dat")
        return run


def sos_command(sos: str, tmp: Path) -> list[str]:
    return [sos, "report", "--batch", "--quiet", "--tmp-dir", str(tmp)]


def run_sos(sos: str, sample_ms: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="bench-sos-") as name:
        tmp = Path(name)
        work = Path(tempfile.mkdtemp(prefix="bench-sos-io-"))
        try:
            run, _out, _err = measure(sos_command(sos, tmp), work, sample_ms)
            run.output = sos_output(tmp)
        finally:
            shutil.rmtree(work)
        return run  # the archive goes with `tmp`


def run_true(sample_ms: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="bench-true-") as name:
        run, _out, _err = measure(["true"], Path(name), sample_ms)
        return run


def version(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unavailable ({error})"
    return (result.stdout.strip() or result.stderr.strip()).splitlines()[0]


def deb_version(package: str) -> str:
    return version(["dpkg-query", "-W", "-f", "${Package} ${Version}", package])


def machine(gamsa: str) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                   .splitlines() if line.startswith("MemTotal:"))
    init = Path("/proc/1/comm").read_text().strip()
    return [
        f"CPUs: {len(os.sched_getaffinity(0))} (nproc), {cpu}, {platform.machine()}",
        f"memory: {mem_kib / 1024 / 1024:.1f} GiB",
        f"kernel: {platform.system()} {platform.release()}",
        f"Python: {platform.python_version()} ({sys.executable})",
        f"PID 1: `{init}` (a container: no systemd, so `systemctl` answers nothing)"
        if init != "systemd" else "PID 1: systemd",
        f"user: uid {os.geteuid()}",
        f"gamsa: {version([gamsa, '--version'])}",
        f"lynis: {version(['lynis', '--version'])} ({deb_version('lynis')})",
        f"sos: {deb_version('sosreport')}",
    ]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def what(row: Row) -> str:
    runs = row.ok()
    if not runs:
        return ""
    if row.tool == "gamsa":
        records = sorted({run.output["records"] for run in runs})
        kib = median([run.output["bundle_bytes"] / 1024 for run in runs])
        not_ok = sorted({name for run in runs for name in run.output["collectors_not_ok"]})
        text = (f"{'/'.join(map(str, records))} records, "
                f"{runs[0].output['collectors']} collectors, bundle {kib:.0f} KiB")
        return text + (f" (not ok: {', '.join(not_ok)})" if not_ok else "")
    if row.tool == "lynis" and runs[0].output:
        out = runs[0].output
        return (f"{out['tests']} tests, {out['suggestions']} suggestions, "
                f"{out['warnings']} warnings, hardening index {out['hardening_index']}")
    if row.tool == "sos" and runs[0].output:
        out = runs[0].output
        kib = median([run.output["archive_bytes"] / 1024 for run in runs])
        return f"{out['plugins']} plugins, {out['files']} files, archive {kib:.0f} KiB"
    return ""


def table(rows: list[Row], baseline: float) -> list[str]:
    lines = [
        "| tool | variant | ok runs | wall s (median) | wall s (all runs) | wall / gamsa cold "
        "| CPU s (median) | peak RSS MiB, largest process (median; max) "
        "| tree RSS MiB, sampled (median) | produced |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        runs = row.ok()
        walls = ", ".join(f"{run.wall:.2f}" if run.rc == 0 else f"failed (rc {run.rc})"
                          for run in row.runs)
        wall = median([run.wall for run in runs])
        rss = [run.maxrss_kib / 1024 for run in runs]
        lines.append(
            f"| {row.tool} | {row.variant} | {len(runs)}/{len(row.runs)} | {wall:.2f} "
            f"| {walls} | {wall / baseline:.1f}x | {median([run.cpu for run in runs]):.2f} "
            f"| {median(rss):.1f}; {max(rss, default=float('nan')):.1f} "
            f"| {median([run.tree_rss_kib / 1024 for run in runs]):.1f} | {what(row)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="rounds for gamsa (default 3)")
    parser.add_argument("--lynis-runs", type=int, default=None, help="default: --runs")
    parser.add_argument("--sos-runs", type=int, default=None, help="default: --runs")
    parser.add_argument("--sample-ms", type=int, default=100,
                        help="tree RSS sampling interval; 0 turns sampling off")
    parser.add_argument("--gamsa", default=str(Path(sys.executable).parent / "gamsa"))
    parser.add_argument("--lynis", default=shutil.which("lynis") or "/usr/sbin/lynis")
    parser.add_argument("--sos", default=shutil.which("sos") or "/usr/bin/sos")
    parser.add_argument("--out", type=Path, help="write the Markdown report here")
    args = parser.parse_args()
    lynis_runs = args.runs if args.lynis_runs is None else args.lynis_runs
    sos_runs = args.runs if args.sos_runs is None else args.sos_runs
    have_lynis, have_sos = Path(args.lynis).exists(), Path(args.sos).exists()

    placeholder = Path("T")
    rows = {
        "cold": Row("gamsa", "cold (fresh state dir: key generation, empty caches)",
                    gamsa_command(args.gamsa, placeholder / "agent.toml")),
        "warm": Row("gamsa", "warm (same state dir again)",
                    gamsa_command(args.gamsa, placeholder / "agent.toml")),
        "lynis": Row("lynis", "audit system --quick", lynis_command(args.lynis, placeholder)),
        "sos": Row("sos", "report --batch", sos_command(args.sos, placeholder)),
    }
    floor = run_true(args.sample_ms)
    started = dt.datetime.now(dt.UTC)
    rounds = max(args.runs, lynis_runs, sos_runs)
    for index in range(rounds):
        jobs: list[str] = []
        if index < args.runs:
            jobs.append("gamsa")
        if have_lynis and index < lynis_runs:
            jobs.append("lynis")
        if have_sos and index < sos_runs:
            jobs.append("sos")
        shift = index % len(jobs) if jobs else 0
        for job in jobs[shift:] + jobs[:shift]:  # rotate which tool goes first
            print(f"round {index + 1}/{rounds}: {job} ...", file=sys.stderr, flush=True)
            if job == "gamsa":
                cold, warm = run_gamsa(args.gamsa, args.sample_ms)
                rows["cold"].runs.append(cold)
                rows["warm"].runs.append(warm)
            elif job == "lynis":
                rows["lynis"].runs.append(run_lynis(args.lynis, args.sample_ms))
            else:
                rows["sos"].runs.append(run_sos(args.sos, args.sample_ms))
    elapsed = (dt.datetime.now(dt.UTC) - started).total_seconds()

    present = [row for row in rows.values() if row.runs]
    baseline = median([run.wall for run in rows["cold"].ok()])
    failures = [f"- {row.tool} {row.variant}, run {number}: rc {run.rc}, first stderr line: "
                f"`{run.error}`"
                for row in present for number, run in enumerate(row.runs, 1) if run.rc != 0]
    stragglers = [f"- {row.tool}, run {number}: {run.stragglers} descendant(s) still "
                  "running 5 s after the command exited (not reaped, not in RSS/CPU)"
                  for row in present for number, run in enumerate(row.runs, 1)
                  if run.stragglers]
    missing = [f"- {name}: not installed at {path}, not run" for name, path, have in
               (("lynis", args.lynis, have_lynis), ("sos", args.sos, have_sos)) if not have]
    command = shlex.join(["python", "bench/bench_collect.py", *sys.argv[1:]])
    report = [
        *PREAMBLE.splitlines(),
        f"- date: {started:%Y-%m-%d %H:%M} UTC; whole run {elapsed:.0f} s",
        f"- command: `{command}`",
        f"- runs: gamsa {args.runs} (each a cold and a warm collection), lynis "
        f"{lynis_runs if have_lynis else 0}, sos {sos_runs if have_sos else 0}; "
        "the tool that goes first rotates each round",
        *[f"- {line}" for line in machine(args.gamsa)],
        f"- measurement floor (`true` under the same helper): peak RSS "
        f"{floor.maxrss_kib / 1024:.1f} MiB, wall {floor.wall * 1000:.1f} ms",
        "",
        "Commands as run (`T` is a fresh temp dir per run; gamsa's `T/agent.toml` holds "
        'only `state_dir = "T/state"`):',
        "",
        *[f"- {row.tool} {row.variant.split(' (')[0]}: `{shlex.join(row.command)}`"
          for row in present],
        "",
        *table(present, baseline),
        *(["", "Failures:", *failures] if failures else []),
        *(["", "Stragglers:", *stragglers] if stragglers else []),
        *(["", *missing] if missing else []),
    ]
    text = "\n".join(report) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
