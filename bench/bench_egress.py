"""The AI-egress watcher's CPU with 10,000 open sockets, against `ss -tn` polling.

Run by hand (not in CI), from the repository root:

    python bench/bench_egress.py [--sockets 10000] [--seconds 60] [--interval 2]
                                 [--output bench/results/egress.md]

The bench process opens `--sockets` TCP sockets on loopback (pairs to a local
server that is not an AI endpoint; RLIMIT_NOFILE raised to its hard limit), plus
a server configured as the AI endpoint with 10 connections held open and one
short call a second made by a child process. Then, one after the other, each for
`--seconds`, it runs as a child process and reads its CPU time (user + system,
its own children included) from wait4(2):

    floor     python3 -c 'import time; time.sleep(S)'
    ss -tn    a python loop running `ss -tn` every --interval (the peer: what an
              operator's script would poll; its children's CPU included)
    watcher (sock_diag)  the daemon's watcher thread (agent/egress.py) with
                         watch_interval = --interval: netlink with the filter
                         program (the default) and socket-destroy events between
                         polls, paced to its CPU budget
    watcher (proc)       the same reading /proc/net/tcp{,6} (the fallback)

and reports each as % of one core, and the watcher's CPU as a ratio of ss's.
The watcher processes set glibc's malloc as the daemon does (agent/memory.py).
Use a long --seconds (e.g. 300): a daemon lives for months, and the "% of one
core" column still counts the interpreter's start and imports.
Target: watcher <= 0.5% of one core.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WATCHER = """
import resource, sys, threading, time
from agent import memory
memory.tune()  # glibc as the daemon sets it, before any thread (agent/daemon.py)
from agent.config import parse_config
from agent.egress import EgressThread
state, endpoint, interval = sys.argv[1], sys.argv[2], int(sys.argv[3])
seconds, netlink = float(sys.argv[4]), sys.argv[5] == "sock_diag"
config = parse_config((f'state_dir = "{state}"\\n[collectors.network]\\n'
                       f'ai_endpoints = ["{endpoint}"]\\nwatch_interval = {interval}\\n').encode(),
                      "bench")
log = lambda _level, _event, message, **_fields: print(message, file=sys.stderr)
thread = EgressThread(config, log, threading.Event(), netlink=netlink)
usage = resource.getrusage(resource.RUSAGE_SELF)
setup = usage.ru_utime + usage.ru_stime  # imports and start-up, not polling
thread.start()
time.sleep(seconds)
watcher = thread.watcher
polls = watcher.window.polls
seen = sum(o.count for o in watcher.window.observations.values())
events = watcher.destroy.events if watcher.destroy is not None else 0
thread.stop()
print(polls, seen, setup, thread.destroy_cost, events, thread.destroy_wakes)
"""

SS_LOOP = """
import subprocess, sys, time
interval, seconds = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds
while time.monotonic() < end:
    time.sleep(interval)
    subprocess.run(["ss", "-tn"], stdout=subprocess.DEVNULL, check=True)
"""

CALLER = """
import socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds
while time.monotonic() < end:
    socket.create_connection(("127.0.0.1", port)).close()
    time.sleep(1)
"""


def cpu_seconds(argv: list[str]) -> tuple[float, float, str]:
    """(CPU seconds of the child and its children, wall seconds, stdout)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env={**os.environ,
                            "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]} exited {proc.returncode}")
    return usage.ru_utime + usage.ru_stime, time.monotonic() - started, out


class Server:
    """Accepts and holds every connection (the far ends of the load sockets)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4096)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("bench/results/egress.md"))
    args = parser.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load, ai = Server(), Server()
    clients = [socket.create_connection(("127.0.0.1", load.port))
               for _ in range(args.sockets // 2)]
    held = [socket.create_connection(("127.0.0.1", ai.port)) for _ in range(10)]
    while len(load.held) < len(clients) or len(ai.held) < len(held):
        time.sleep(0.05)
    with open("/proc/net/tcp", "rb") as table:
        rows = table.read().count(b"\n") - 1
    print(f"{rows} rows in /proc/net/tcp", file=sys.stderr)

    load_before = os.getloadavg()[0]
    runs: dict[str, tuple[float, float, str]] = {}
    seconds = str(args.seconds)
    runs["floor"] = cpu_seconds([sys.executable, "-c", "import time, sys; "
                                 "time.sleep(float(sys.argv[1]))", seconds])
    runs["ss -tn"] = cpu_seconds([sys.executable, "-c", SS_LOOP, str(args.interval), seconds])
    for source in ("sock_diag", "proc"):
        caller = subprocess.Popen([sys.executable, "-c", CALLER, str(ai.port), seconds])
        with tempfile.TemporaryDirectory() as state:
            runs[f"watcher ({source})"] = cpu_seconds(
                [sys.executable, "-c", WATCHER, state, f"127.0.0.1:{ai.port}",
                 str(args.interval), seconds, source])
        caller.wait()
    polls, seen, _setup, destroy_cpu, destroy_events, wakes = \
        runs["watcher (sock_diag)"][2].split()

    def steady(name: str) -> float:
        """CPU seconds without the start-up (imports) of a watcher run."""
        cpu, _wall, out = runs[name]
        return cpu - float(out.split()[2]) if name.startswith("watcher") else cpu

    def percent(name: str) -> float:
        cpu, wall, _out = runs[name]
        return 100 * cpu / wall

    lines = [
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Linux "
        f"{platform.release()}, Python {platform.python_version()}. Machine shared with "
        f"other work (load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at "
        f"end); CPU from wait4(2) (user + system).",
        "",
        f"Command: `{shlex.join(['python', 'bench/bench_egress.py', *sys.argv[1:]])}`",
        "",
        f"{rows} rows in /proc/net/tcp ({args.sockets} load sockets on loopback, 10 held "
        f"AI-endpoint connections, one short AI call a second); poll every "
        f"{args.interval} s (ss) and watch_interval = {args.interval} s (the watcher, paced "
        f"to its budget) for {args.seconds:g} s. The sock_diag watcher polled {polls} "
        f"times and counted {seen} connections (10 held, the rest short calls); between "
        f"polls it read {destroy_events} socket-destroy events in {wakes} wakes (those "
        f"the kernel-side filter let through: AI-endpoint sockets only) for "
        f"{float(destroy_cpu):.2f} CPU s, included below.",
        "",
        "| process | CPU s | % of one core | polling only: CPU s | % of one core | "
        "polls | per poll ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("floor", "ss -tn", "watcher (sock_diag)", "watcher (proc)"):
        cpu, wall, _ = runs[name]
        if name.startswith("watcher"):
            per_poll = f"{1000 * steady(name) / max(1, int(runs[name][2].split()[0])):.1f}"
        elif name == "ss -tn":
            per_poll = f"{1000 * cpu / max(1, int(args.seconds / args.interval)):.1f}"
        else:
            per_poll = ""
        count = runs[name][2].split()[0] if name.startswith("watcher") else \
            str(int(args.seconds / args.interval)) if name == "ss -tn" else ""
        lines.append(f"| {name} | {cpu:.2f} | {percent(name):.2f} | {steady(name):.2f} | "
                     f"{100 * steady(name) / wall:.2f} | {count} | {per_poll} |")
    lines.append("")
    for name in ("watcher (sock_diag)", "watcher (proc)"):
        wall = runs[name][1]
        lines.append(f"{name} / ss -tn CPU: {runs[name][0] / runs['ss -tn'][0]:.2f}x; above "
                     f"the floor: {percent(name) - percent('floor'):.2f}% of one core, "
                     f"polling only {100 * steady(name) / wall:.2f}% (target <= 0.5%).  ")
    text = "\n".join(lines) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    for sock in clients + held + load.held + ai.held:
        sock.close()


if __name__ == "__main__":
    main()
