"""What an idle `gamsa agent run` costs the host: steady RSS and CPU, next to a bare
`python3 -c 'import time; time.sleep(N)'` (the floor) in the same run.

Run by hand (not in CI), as root or not, from the repository root:

    python bench/bench_daemon_idle.py [--seconds 120] [--before REV] [--s3]

Every daemon gets its own state dir and a file:// store, every collector enabled, the
default schedule (15 min) and heartbeat (5 min), so after the start sweep it is idle.
Sampling starts once the start sweep was shipped (plus 5 s) and lasts `--seconds`:
RSS (VmRSS, the daemon process alone: ship children live a second) every second, and
CPU time (utime + stime) over the window. `--before REV` runs the daemon of that git
revision too (its tree exported with `git archive`), same run, same machine. `--s3`
adds daemons shipping to a moto S3 server on loopback (the test dependency), where a
store client in the daemon would stay resident. `--imports` prints what the daemon's
big imports cost, each in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TICKS = os.sysconf("SC_CLK_TCK")
RUN_DAEMON = "import sys; from agent.cli import main; sys.argv[0] = 'gamsa'; main()"


@dataclass
class Subject:
    """One measured process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path | None = None  # the daemon's stderr; sampling waits for its first ship
    cwd: Path | None = None  # `python -c` puts the cwd first on sys.path: the tree run
    proc: subprocess.Popen[bytes] | None = None
    rss_kib: list[int] = field(default_factory=list)
    cpu_ticks: tuple[int, int] = (0, 0)  # at the window's start and end
    window: tuple[float, float] = (0.0, 0.0)

    def ready(self) -> bool:
        return self.log is None or "shipped" in self.log.read_text(errors="replace")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def daemon(name: str, tree: Path, work: Path, store_url: str, extra_env: dict[str, str],
           enabled: list[str], store_extra: str = "") -> Subject:
    state = work / name / "state"
    state.parent.mkdir(parents=True)
    config = work / name / "agent.toml"
    config.write_text(f'state_dir = "{state}"\nhost_id = "bench-{name}"\n'
                      f'[store]\nurl = "{store_url}"\n{store_extra}'
                      f"[collectors]\nenabled = {json.dumps(enabled)}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMSA_")}
    env.update(extra_env, GAMSA_CONFIG=str(config), PYTHONPATH=str(tree))
    return Subject(name, [sys.executable, "-c", RUN_DAEMON, "agent", "run"], env,
                   log=work / name / "daemon.log", cwd=tree)


def export_tree(rev: str, into: Path) -> Path:
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "agent", "collector",
                              "signing"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def measure(subjects: list[Subject], seconds: float) -> None:
    for s in subjects:
        err = s.log.open("wb") if s.log else subprocess.DEVNULL
        s.proc = subprocess.Popen(s.argv, env=s.env, stdout=subprocess.DEVNULL, stderr=err,
                                  cwd=s.cwd)
    waiting = list(subjects)
    deadline = time.monotonic() + 300
    while waiting and time.monotonic() < deadline:
        waiting = [s for s in waiting if not s.ready()]
        time.sleep(0.5)
    if waiting:
        raise SystemExit(f"never shipped its start sweep: {[s.name for s in waiting]}")
    time.sleep(5)
    start = time.monotonic()
    for s in subjects:
        assert s.proc is not None
        s.cpu_ticks = (cpu_ticks(s.proc.pid), 0)
    while time.monotonic() < start + seconds:
        for s in subjects:
            assert s.proc is not None
            s.rss_kib.append(rss_kib(s.proc.pid))
        time.sleep(1)
    end = time.monotonic()
    for s in subjects:
        assert s.proc is not None
        s.cpu_ticks = (s.cpu_ticks[0], cpu_ticks(s.proc.pid))
        s.window = (start, end)
        s.proc.terminate()
        s.proc.wait(timeout=15)


def report(subjects: list[Subject]) -> str:
    floor = subjects[0]
    floor_rss = statistics.median(floor.rss_kib)
    lines = ["| process | steady RSS MiB (median / max) | over the floor MiB | "
             "CPU % of one core |", "|---|---|---|---|"]
    for s in subjects:
        median, peak = statistics.median(s.rss_kib), max(s.rss_kib)
        cpu = (s.cpu_ticks[1] - s.cpu_ticks[0]) / TICKS / (s.window[1] - s.window[0]) * 100
        lines.append(f"| {s.name} | {median / 1024:.1f} / {peak / 1024:.1f} | "
                     f"{(median - floor_rss) / 1024:+.1f} | {cpu:.2f} |")
    return "\n".join(lines)


IMPORTS = {
    "bare interpreter": "",
    "agent.daemon (as `agent run` starts)": "import agent.cli, agent.daemon",
    "+ every collector module": "import agent.daemon; "
                                "from collector.registry import all_collectors; "
                                "all_collectors()",
    "+ sealing (agent.seal: cryptography, psutil, ...)": "import agent.daemon, agent.seal; "
                                                         "from collector.registry import "
                                                         "all_collectors; all_collectors()",
    "psutil alone": "import psutil",
    "cryptography Ed25519 alone": "from cryptography.hazmat.primitives.asymmetric import "
                                  "ed25519",
    "boto3 + botocore client (what the ship child loads)": "import boto3; "
                                                           "boto3.session.Session()"
                                                           ".client('s3', region_name="
                                                           "'us-east-1')",
}


def import_costs() -> str:
    lines = ["| imported | RSS MiB |", "|---|---|"]
    for label, code in IMPORTS.items():
        probe = (f"{code}\nfor l in open('/proc/self/status'):\n"
                 f"    l.startswith('VmRSS:') and print(int(l.split()[1]))")
        out = subprocess.run([sys.executable, "-c", probe], env={**os.environ,
                             "PYTHONPATH": str(ROOT)}, check=True, capture_output=True,
                             text=True).stdout
        lines.append(f"| {label} | {int(out) / 1024:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--before", metavar="REV", help="also run the daemon of this revision")
    parser.add_argument("--s3", action="store_true", help="also ship to a moto S3 server")
    parser.add_argument("--imports", action="store_true", help="print import costs too")
    parser.add_argument("--collector", action="append", default=[], metavar="NAME",
                        help="enable only this collector (repeatable; default: all)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gamsa-idle-"))
    moto = None
    try:
        trees = {"now": ROOT}
        if args.before:
            trees[f"before ({args.before})"] = export_tree(args.before, work / "before")
        subjects = [Subject(f"`python3 -c 'import time; time.sleep({int(args.seconds)})'`",
                            [sys.executable, "-c", "import time; time.sleep(100000)"],
                            dict(os.environ))]
        for index, (label, tree) in enumerate(trees.items()):
            subjects.append(daemon(f"d{index}-file", tree, work,
                                   f"file://{work}/d{index}-file/store", {}, args.collector))
            subjects[-1].name = f"`gamsa agent run`, file store, {label}"
        if args.s3:
            from tests.agent.s3_fixtures import (
                ISOLATED_AWS_ENV,
                REGION,
                TEST_CREDENTIALS,
                make_lock_bucket,
                start_moto,
            )
            moto = start_moto(work / "moto")
            aws = {**ISOLATED_AWS_ENV, **TEST_CREDENTIALS}
            for index, (label, tree) in enumerate(trees.items()):
                bucket = make_lock_bucket(moto.client())
                subjects.append(daemon(
                    f"d{index}-s3", tree, work, f"s3://{bucket}/bench", aws, args.collector,
                    f'endpoint_url = "{moto.url}"\nregion = "{REGION}"\n'
                    f'addressing_style = "path"\nretention_days = 1\n'))
                subjects[-1].name = f"`gamsa agent run`, S3 store (moto), {label}"
        measure(subjects, args.seconds)
        print(f"{os.cpu_count()} CPUs, {args.seconds:.0f} s idle window after the start "
              f"sweep shipped; collectors: {', '.join(args.collector) or 'all'}\n")
        print(report(subjects))
        if args.imports:
            print()
            print(import_costs())
    finally:
        for s in locals().get("subjects", []):
            if s.proc is not None and s.proc.poll() is None:
                s.proc.kill()
        if moto is not None:
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
