"""What a burst of file changes leaves resident in `gamsa agent run` (in-process probe).

Run by hand (not in CI), from the repository root, on Linux with glibc:

    python bench/bench_burst_memory.py [--files 10000] [--singles 5] [--burst N]

Makes a tree of --files small files, runs the daemon's `Daemon.run` in this process
(only the `files` collector watching the tree, a file:// store, schedule and
heartbeat 1 h) and, from a side thread, measures at four moments: after the start
sweep, after --singles single changes, after one write to every file (the burst;
--burst N: to the first N only, e.g. a batch just under the child's threshold),
and after 4x --singles more single changes. Each time: VmRSS and RssAnon, pymalloc's
arenas and live blocks (`sys._debugmallocstats`), glibc's heap (`mallinfo2`), and
which mappings of /proc/self/smaps grew since the last moment. This process imports
a little more than `gamsa agent run` (its RSS is ~6 MB higher): compare moments,
not absolute figures. docs/BENCHMARKS.md ("After a burst") has a run.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SETTLE = 3.0  # seconds without a sealing before a moment is measured


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def pymalloc_stats() -> dict[str, int]:
    """Arenas and block bytes from `sys._debugmallocstats` (it writes to fd 2)."""
    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    os.close(write)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    os.set_blocking(read, False)
    out = b""
    try:
        while chunk := os.read(read, 65536):
            out += chunk
    except BlockingIOError:
        pass
    os.close(read)
    wanted = {"# arenas allocated current": "arenas",
              "# bytes in allocated blocks": "live_bytes",
              "# bytes in available blocks": "free_block_bytes"}
    stats = {}
    for line in out.decode().splitlines():
        for prefix, name in wanted.items():
            if line.startswith(prefix):
                stats[name] = int(line.split("=")[1].replace(",", ""))
    return stats


def smaps() -> dict[tuple[str, str], int]:
    """(start address, name) -> Rss kB of each mapping."""
    found: dict[tuple[str, str], int] = {}
    current: tuple[str, str] | None = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and ":" not in parts[0]:
            current = (parts[0].split("-")[0], parts[5] if len(parts) > 5 else "[anon]")
        elif line.startswith("Rss:") and current is not None:
            found[current] = int(parts[1])
    return found


class Probe:
    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None)
        self.libc.mallinfo2.restype = MallInfo2
        self.maps: dict[tuple[str, str], int] = {}

    def measure(self, moment: str) -> None:
        gc.collect()
        status = dict(line.split(":", 1) for line in
                      Path("/proc/self/status").read_text().splitlines() if ":" in line)
        py = pymalloc_stats()
        info = self.libc.mallinfo2()
        now = smaps()
        grown = sorted(((now.get(k, 0) - self.maps.get(k, 0), k[1]) for k in now
                        if now.get(k, 0) - self.maps.get(k, 0) >= 100), reverse=True)
        print(f"{moment}: RSS {int(status['VmRSS'].split()[0]) / 1024:.1f} MB "
              f"(anon {int(status['RssAnon'].split()[0]) / 1024:.1f}); pymalloc "
              f"{py.get('arenas')} arenas, {py.get('live_bytes', 0) / 2**20:.1f} MB live, "
              f"{py.get('free_block_bytes', 0) / 2**20:.1f} MB free blocks; glibc heap "
              f"{info.arena / 2**20:.1f} MB ({info.uordblks / 2**20:.1f} in use), mmapped "
              f"{info.hblkhd / 2**20:.1f} MB", flush=True)
        if self.maps:
            print("  grown mappings (kB):", [(kb, Path(name).name or name)
                                             for kb, name in grown[:10]], flush=True)
        self.maps = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=5)
    parser.add_argument("--burst", type=int, default=None, help="files written in the burst")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gamsa-bench-burst-"))
    tree = work / "watched" / "tree"
    tree.mkdir(parents=True)
    paths = []
    for i in range(args.files):
        directory = tree / f"d{i % 100:03d}"
        directory.mkdir(exist_ok=True)
        path = directory / f"f{i:05d}.conf"
        path.write_bytes(f"setting_{i} = {i}\n".encode() * 4)
        paths.append(path)
    config = work / "agent.toml"
    config.write_text(f'state_dir = "{work}/state"\nhost_id = "bench"\n'
                      f'[store]\nurl = "file://{work}/store"\n'
                      f'[collectors]\nenabled = ["files"]\n'
                      f'[collectors.files]\npaths = ["{tree}"]\n'
                      f'[schedule]\ndefault = "1h"\nheartbeat = "1h"\n')
    os.environ["GAMSA_CONFIG"] = str(config)

    from agent.cli import _selected_collectors
    from agent.cli_common import load
    from agent.daemon import Daemon, Log

    sealed: list[float] = []

    def log(level: str, event: str, message: str, **fields: Any) -> None:
        if event == "sealed":
            sealed.append(time.monotonic())
        if level in ("warning", "error"):
            print(f"daemon: {message}", flush=True)

    daemon = Daemon(lambda: load(None), lambda c: _selected_collectors(c, ()), Log("text"))
    daemon.log = log  # type: ignore[method-assign]
    probe = Probe()

    def settled(count: int) -> None:
        while len(sealed) < count or time.monotonic() - sealed[-1] < SETTLE \
                or (daemon.watch is not None and daemon.watch.pending.due_in(
                    time.monotonic(), 0) is not None):
            time.sleep(0.2)

    def singles(count: int, tag: bytes) -> None:
        for i in range(count):
            before = len(sealed)
            paths[(i * 7919) % len(paths)].write_bytes(tag + b"%d\n" % i)
            settled(before + 1)

    def side() -> None:
        try:
            settled(1)
            probe.measure("after the start sweep")
            singles(args.singles, b"single ")
            probe.measure(f"after {args.singles} single changes")
            before, began = len(sealed), time.monotonic()
            for i, path in enumerate(paths[:args.burst]):
                path.write_bytes(f"burst {i}\n".encode())
            settled(before + 1)
            print(f"burst: {len(sealed) - before} bundle(s), sealed "
                  f"{sealed[-1] - began:.1f} s after the first write", flush=True)
            probe.measure("after the burst")
            singles(4 * args.singles, b"again ")
            probe.measure(f"after {4 * args.singles} more single changes")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=side, daemon=True).start()
    try:
        daemon.run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
