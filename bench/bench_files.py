"""The `files` collector against `find DIR -type f -print0 | xargs -0 sha256sum`.

Run by hand (not in CI), from the repository root, as root if page caches are to
be dropped:

    python bench/bench_files.py [DIR ...] [--repeats 3] [--output bench/results/files.md]

DIR defaults to /usr/lib; each DIR gets its own table. In one run, each repeat times:

  disk-cold (only when `echo 3 > /proc/sys/vm/drop_caches` works; dropped before each):
    find+sha256sum     the two processes piped (no shell), output to /dev/null
    collector cold     paths = [DIR/**], content_max_bytes 0, empty hash cache
  page-cache warm (the tree was just read):
    find+sha256sum
    collector cold     empty hash cache (a fresh state dir)
    collector warm     the same state dir again: unchanged files come from the cache
    default cap cold   content_max_bytes 65536 (the agent default): small files are
    default cap warm   read and scrubbed for content on every run, cache or not
                       (only in the first --cap-repeats repeats: scrubbing is slow)

and reports the median seconds, MB/s and files/s, and each collector throughput as a
ratio of find+sha256sum's in the same cache state (target >= 0.9 cold). The results,
with the command and the machine, are written as Markdown to --output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from collector.files import Limits, scan
from collector.registry import CollectContext

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass
class Census:
    files: int = 0
    bytes: int = 0
    dirs: int = 0
    other: int = 0  # symlinks, FIFOs, sockets, devices


def census(top: str) -> Census:
    """What `find -type f` sees: regular files below `top`, no symlink followed."""
    found = Census()
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    found.dirs += 1
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    found.files += 1
                    found.bytes += entry.stat(follow_symlinks=False).st_size
                else:
                    found.other += 1
    return found


def drop_caches() -> bool:
    """Write back and drop the page cache; False where not allowed (not root, a
    container's read-only /proc/sys)."""
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def find_sha256sum(top: str) -> None:
    find = subprocess.Popen(["find", top, "-type", "f", "-print0"], stdout=subprocess.PIPE)
    xargs = subprocess.Popen(["xargs", "-0", "sha256sum"], stdin=find.stdout,
                             stdout=subprocess.DEVNULL)
    assert find.stdout is not None
    find.stdout.close()  # xargs alone holds the pipe, so find sees EPIPE if xargs dies
    xargs.wait(timeout=3600)
    find.wait(timeout=60)
    if xargs.returncode not in (0, 123):  # 123: some file could not be read
        raise RuntimeError(f"xargs sha256sum exited {xargs.returncode}")


@dataclass
class Collected:
    files_read: int = 0
    bytes_read: int = 0
    cache_hits: int = 0
    records: int = 0


def collector_run(top: str, state_dir: Path, content_max_bytes: int,
                  into: Collected) -> None:
    ctx = CollectContext(options={"files": {"paths": [top.rstrip("/") + "/**"],
                                            "content_max_bytes": content_max_bytes}},
                         state_dir=state_dir)
    result = scan(ctx)
    into.files_read, into.bytes_read = result.stats.files_read, result.stats.bytes_read
    into.cache_hits, into.records = result.stats.cache_hits, len(result.records)


@dataclass
class Scenario:
    name: str
    cache_state: str  # disk-cold | page-cache warm
    baseline: str | None  # the scenario whose throughput this one is compared with
    seconds: list[float] = field(default_factory=list)
    last: Collected | None = None


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_repeat(top: str, can_drop: bool, with_cap: bool,
               scenarios: dict[str, Scenario]) -> None:
    def collector(name: str, state_dir: Path, cap: int, drop: bool = False) -> None:
        stats = Collected()
        if drop:
            drop_caches()
        scenarios[name].seconds.append(timed(lambda: collector_run(top, state_dir, cap, stats)))
        scenarios[name].last = stats

    with tempfile.TemporaryDirectory(prefix="gamsa-bench-") as tmp:
        if can_drop:
            drop_caches()
            scenarios["disk find"].seconds.append(timed(lambda: find_sha256sum(top)))
            collector("disk cold", Path(tmp, "disk"), 0, drop=True)
        scenarios["warm find"].seconds.append(timed(lambda: find_sha256sum(top)))
        collector("page cold", Path(tmp, "page"), 0)
        collector("page warm", Path(tmp, "page"), 0)
        if with_cap:
            collector("cap cold", Path(tmp, "cap"), 65536)
            collector("cap warm", Path(tmp, "cap"), 65536)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{mem_kib / 1024**2:.1f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "unknown"
    try:
        sha_version = subprocess.run(["sha256sum", "--version"], capture_output=True,
                                     text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        sha_version = "unknown"
    return {"nproc": str(len(os.sched_getaffinity(0))), "cpu": cpu, "memory": memory,
            "python": platform.python_version(), "kernel": platform.release(),
            "sha256sum": sha_version, "hashing threads": str(Limits().threads)}


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f}"


_LABELS = {
    "disk find": "find \\| xargs sha256sum", "disk cold": "collector, empty cache",
    "warm find": "find \\| xargs sha256sum", "page cold": "collector, empty cache",
    "page warm": "collector, rerun (cache)",
    "cap cold": "collector, content cap 64 KiB, empty cache",
    "cap warm": "collector, content cap 64 KiB, rerun (cache)",
}


def report_header(command: str, can_drop: bool) -> list[str]:
    return [
        "# `files` collector vs `find | xargs sha256sum`", "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC with:", "",
        f"    {command}", "",
        "| machine | |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine().items()], "",
        "Page cache: " + ("dropped (`sync; echo 3 > /proc/sys/vm/drop_caches` worked) "
                          "before each disk-cold run." if can_drop else
                          "could NOT be dropped here (no permission), so there are no "
                          "disk-cold figures: every run below reads from a warm page "
                          "cache."),
        "",
        "Median of the repeats (all runs in the last column); MB = 10^6 bytes; "
        "throughput = the tree's regular-file bytes / wall seconds; ratio = collector "
        "throughput / find+sha256sum throughput in the same cache state (higher is better; "
        "the issue's target is >= 0.9 cold). The machine was shared with other work "
        "while this ran: the spread between runs is part of the result.", "",
    ]


def report_tree(top: str, tree: Census, scenarios: dict[str, Scenario]) -> list[str]:
    lines = [
        f"## `{top}`", "",
        f"{tree.files:,} regular files, {mb(tree.bytes)} MB ({tree.bytes:,} bytes), "
        f"{tree.dirs:,} directories, {tree.other:,} other entries (symlinks and the like: "
        "`find -type f` skips them, the collector records them without reading).", "",
        "| cache state | run | seconds (median) | MB/s | files/s | ratio | files read | "
        "bytes read | cache hits | all runs (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, scenario in scenarios.items():
        if not scenario.seconds:
            continue
        median = statistics.median(scenario.seconds)
        ratio = ""
        if scenario.baseline is not None:
            base = statistics.median(scenarios[scenario.baseline].seconds)
            ratio = f"{base / median:.2f}x"
        got = scenario.last
        read = (f"{got.files_read:,} | {got.bytes_read:,} | {got.cache_hits:,}"
                if got else "| |")
        lines.append(f"| {scenario.cache_state} | {_LABELS[key]} | {median:.2f} | "
                     f"{mb(tree.bytes / median)} | {tree.files / median:,.0f} | {ratio} | "
                     f"{read} | {', '.join(f'{s:.2f}' for s in scenario.seconds)} |")
    return [*lines, ""]


def bench_tree(top: str, args: argparse.Namespace, can_drop: bool) -> list[str]:
    tree = census(top)
    scenarios = {
        "disk find": Scenario("disk find", "disk-cold", None),
        "disk cold": Scenario("disk cold", "disk-cold", "disk find"),
        "warm find": Scenario("warm find", "page-cache warm", None),
        "page cold": Scenario("page cold", "page-cache warm", "warm find"),
        "page warm": Scenario("page warm", "page-cache warm", "warm find"),
        "cap cold": Scenario("cap cold", "page-cache warm", "warm find"),
        "cap warm": Scenario("cap warm", "page-cache warm", "warm find"),
    }
    find_sha256sum(top)  # fill the page cache once before the first warm run
    for repeat in range(args.repeats):
        run_repeat(top, can_drop, repeat < args.cap_repeats, scenarios)
        print(f"{top} repeat {repeat + 1}/{args.repeats}: " + ", ".join(
            f"{k} {s.seconds[-1]:.2f}s" for k, s in scenarios.items()
            if len(s.seconds) == repeat + 1), file=sys.stderr, flush=True)
    return report_tree(top, tree, scenarios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", default=["/usr/lib"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-drop", action="store_true",
                        help="do not try to drop the page cache")
    parser.add_argument("--cap-repeats", type=int, default=1,
                        help="repeats that also run the 64 KiB content-cap scenarios "
                             "(slow: secret scrubbing of every small text file)")
    parser.add_argument("--output", default="bench/results/files.md")
    args = parser.parse_args()
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    can_drop = not args.no_drop and drop_caches()
    lines = report_header(command, can_drop)
    for top in args.dirs:
        lines += bench_tree(os.path.abspath(top), args, can_drop)
    lines += [f"Peak RSS of the benchmark process (the collector runs in-process, and "
              f"the content-cap runs keep captured text in their records): "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB.", ""]
    text = "\n".join(lines)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
