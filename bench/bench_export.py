"""Benchmark: `gamsa export` of a mirror against what an auditor would do by hand,
`gamsa verify` of the mirror then `zip -r -X` of its evidence.

    python bench/bench_export.py [--bundles 1000] [--hosts 4] [--repeat 3] [--out FILE]

1. seal BUNDLES small bundles (20 records of 96 random bytes, like bench_pull) over
   HOSTS hosts, stage them under their store keys and `gamsa pull` them into a mirror
   (file:// store; setup, not timed);
2. `gamsa export --mirror M --out FILE.zip` (the real CLI): stage, verify once, write
   README, MANIFEST.sha256 and the deterministic zip;
3. the peer: `gamsa verify --store file://M --trust ...` then `zip -q -r -X` of `v1/`.

The two alternate which goes first; medians of REPEAT runs. Ratio: peer time / export
time (above 1.0x: export is faster than doing it by hand).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_ship import GAMSA, seal, stage_for_awscli


def write_config(directory: Path, host: str) -> Path:
    config = directory / "agent.toml"
    config.write_text(f'state_dir = "{directory / "state"}"\nhost_id = "{host}"\n'
                      f'[store]\nurl = "file://{directory / "store"}"\n'
                      f"[collectors]\nenabled = []\n")
    return config


def timed(args: list[str], cwd: Path | None = None) -> float:
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("GAMSA_")})
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({result.returncode}): "
                         f"{result.stderr[-2000:]}")
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> str:
    work = Path(tempfile.mkdtemp(prefix="gamsa-bench-export-"))
    stage = work / "stage"
    keys: list[str] = []
    for number in range(args.hosts):
        directory = work / f"host-{number}"
        directory.mkdir()
        seal(write_config(directory, f"bench-{number}"), f"bench-{number}",
             args.bundles // args.hosts, 20, 96)
        stage_for_awscli(directory / "state", stage)
        keys.append(str(directory / "state" / "keys" / "agent.json"))
    trust = [arg for key in keys for arg in ("--trust", key)]
    mirror = work / "mirror"
    timed([GAMSA, "pull", "--store", f"file://{stage}", "--to", str(mirror), *trust])
    size = sum(p.stat().st_size for p in (mirror / "v1").rglob("*") if p.is_file())
    exports: list[float] = []
    peers: list[float] = []
    for turn in range(args.repeat):
        out = work / f"export-{turn}.zip"
        peer_zip = work / f"peer-{turn}.zip"

        def export(out: Path = out) -> None:
            exports.append(timed([GAMSA, "export", "--mirror", str(mirror), "--out", str(out)]))

        def peer(peer_zip: Path = peer_zip) -> None:
            seconds = timed([GAMSA, "verify", "--store", f"file://{mirror}", *trust])
            peers.append(seconds + timed(["zip", "-q", "-r", "-X", str(peer_zip), "v1"],
                                         cwd=mirror))

        for step in ((export, peer) if turn % 2 == 0 else (peer, export)):
            step()
    ratio = statistics.median(peers) / statistics.median(exports)
    load = os.getloadavg()[0]
    lines = [
        f"# gamsa export vs gamsa verify + zip -r -X ({time.strftime('%Y-%m-%d')})",
        "",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {load:.1f}",
        f"mirror: {args.bundles} bundles of {args.hosts} hosts, {size} bytes",
        "",
        "| run | gamsa export | verify + zip | ratio (peer / export) |",
        "|---|---|---|---|",
        *(f"| {n + 1} | {e:.2f} s | {p:.2f} s | {p / e:.2f}x |"
          for n, (e, p) in enumerate(zip(exports, peers, strict=True))),
        f"| median | {statistics.median(exports):.2f} s | {statistics.median(peers):.2f} s |"
        f" **{ratio:.2f}x** |",
        "",
        f"export zip {(work / 'export-0.zip').stat().st_size} bytes, peer zip "
        f"{(work / 'peer-0.zip').stat().st_size} bytes",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = run(args)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
