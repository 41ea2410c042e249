"""Secret scrubbing: the corpus numbers and the throughput, before and after.

Run by hand (not in CI), from the repository root:

    python bench/bench_scrub_corpus.py [--baseline /path/to/older/checkout]
        [--seconds 3] [--output bench/results/scrub.md]

Corpus (tests/assets/secrets-corpus, its expected.json): every corpus file through
`scrub_text`, every command line through `scrub_argv`, every log line through the
logs collector's own parser (`raw`, `command`, `user_agent` and all). Counted:
seeded secrets still present anywhere (goal 0) and listed policy lines no longer
present byte for byte (goal 0). The same numbers for detect-secrets (Yelp) used
as the detector instead, when it is installed: a secret it does not report is
missed, a policy line it reports would be redacted.

Real configs: every text file under --etc (default /etc) through `scrub_text`;
the lines it changes are listed, for a human to confirm each is a secret.

Throughput: `scrub_text` over each corpus file (config text, ~22 KB in all), and
over auth-log lines one at a time (as the logs collector calls it),
for this checkout and, with --baseline, for another checkout's `collector.scrub`
in a child process. Median of 5 runs of at least --seconds / 5 each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "assets" / "secrets-corpus"

def _rate(fn: Any, units: int, seconds: float) -> float:
    runs = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            fn()
            n += 1
        runs.append(n * units / (time.perf_counter() - start))
    return statistics.median(runs)


def etc_changes(etc: Path) -> dict[str, Any]:
    """Text files under `etc` (at most 64 KiB, UTF-8, not secret by nature when the
    scrubber knows that rule) and the lines scrubbing changes: on a host's real
    configs every changed line should be a secret."""
    import collector.scrub as scrub

    secret_file = getattr(scrub, "secret_file_rule", lambda _path: None)
    files = lines = 0
    changed: list[str] = []
    for path in sorted(etc.rglob("*")):
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > 65536 \
                    or secret_file(str(path)):
                continue
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "\0" in text:
            continue
        files += 1
        before = text.splitlines()
        lines += len(before)
        after = set(scrub.scrub_text(text)[0].splitlines())
        changed += [f"{path}: {line.strip()[:80]}" for line in before if line not in after]
    return {"etc_files": files, "etc_lines": lines, "etc_changed": changed}


def measure(seconds: float, etc: Path) -> dict[str, Any]:
    """Corpus numbers and throughput of the `collector` package first on sys.path."""
    from collector._logformats import LineContext, parse_auth, parse_nginx
    from collector.scrub import scrub_argv, scrub_text

    expected = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
    secrets = missed = keep = altered = 0
    texts = []
    for rel, entry in expected["files"].items():
        text = (CORPUS / "root" / rel).read_text(encoding="utf-8")
        texts.append(text)
        scrubbed = scrub_text(text)[0]
        lines = set(scrubbed.splitlines())
        secrets += len(entry["secrets"])
        missed += sum(s in scrubbed for s in entry["secrets"])
        keep += len(entry["keep"])
        altered += sum(line not in lines for line in entry["keep"])
    for case in expected["argv"]:
        joined = "\0".join(scrub_argv(case["argv"])[0])
        secrets += len(case["secrets"])
        missed += sum(s in joined for s in case["secrets"])
    ctx = LineContext(dt.datetime.now(dt.UTC), dt.UTC)
    for rel, entry in expected["logs"].items():
        lines_of_log = (CORPUS / "logs" / rel).read_text(encoding="utf-8").splitlines()
        parsed = [parse_auth(line, ctx) if rel == "auth.log"
                  else parse_nginx(line, ctx, ai_gateway=True) for line in lines_of_log]
        sealed = json.dumps(parsed)
        secrets += len(entry["secrets"])
        missed += sum(s in sealed for s in entry["secrets"])

    config_bytes = sum(len(t.encode()) for t in texts)
    log_lines = (CORPUS / "logs" / "auth.log").read_text(encoding="utf-8").splitlines()
    plain = ("Nov 25 06:04:30 app-01 sshd[2215]: Failed password for invalid user admin "
             "from 203.0.113.7 port 40112 ssh2")
    log_lines = (log_lines + [plain] * 4) * 20
    return {**etc_changes(etc),
            "secrets": secrets, "missed": missed, "keep": keep, "altered": altered,
            "files": len(expected["files"]), "argv": len(expected["argv"]),
            "config_bytes": config_bytes,
            "config_bytes_per_s": _rate(lambda: [scrub_text(t) for t in texts], config_bytes,
                                        seconds),
            "log_lines_per_s": _rate(lambda: [scrub_text(line) for line in log_lines],
                                     len(log_lines), seconds)}


def measure_in_child(checkout: Path, seconds: float, etc: Path) -> dict[str, Any]:
    run = subprocess.run([sys.executable, __file__, "--measure", str(checkout),
                          "--seconds", str(seconds), "--etc", str(etc)],
                         capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def detect_secrets_numbers() -> dict[str, int] | None:
    """detect-secrets as the detector over the corpus files: seeded secrets it does
    not report, and policy lines on which it reports something."""
    try:
        from detect_secrets import SecretsCollection
        from detect_secrets.settings import default_settings
    except ImportError:
        return None
    expected = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
    secrets = missed = keep = flagged = 0
    with default_settings():
        for rel, entry in expected["files"].items():
            collection = SecretsCollection()
            collection.scan_file(str(CORPUS / "root" / rel))
            found = [(s.line_number, str(s.secret_value)) for _f, s in collection]
            lines = (CORPUS / "root" / rel).read_text(encoding="utf-8").splitlines()
            secrets += len(entry["secrets"])
            missed += sum(not any(s in v or v in s for _n, v in found) for s in entry["secrets"])
            hit_lines = {lines[n - 1] for n, _v in found}
            keep += len(entry["keep"])
            flagged += sum(line in hit_lines for line in entry["keep"])
    return {"secrets": secrets, "missed": missed, "keep": keep, "flagged": flagged}


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} vCPUs ({cpu}), {platform.system()} {platform.release()}, "
            f"CPython {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "scrub.md")
    parser.add_argument("--etc", type=Path, default=Path("/etc"),
                        help="a tree of real configs: lines scrubbing changes there")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.measure is not None:
        sys.path.insert(0, str(args.measure))
        print(json.dumps(measure(args.seconds, args.etc)))
        return

    oracle = detect_secrets_numbers()
    after = measure_in_child(REPO, args.seconds, args.etc)
    before = measure_in_child(args.baseline, args.seconds, args.etc) if args.baseline else None

    command = "python bench/bench_scrub_corpus.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    rows = [("this checkout", after)] + ([(f"baseline ({args.baseline})", before)]
                                         if before else [])
    out = [f"# Secret scrubbing ({dt.date.today().isoformat()})", "",
           f"Command: `{command.strip()}`  ", f"Machine: {machine()}", "",
           "## Corpus (tests/assets/secrets-corpus)", "",
           f"{after['files']} files, {after['argv']} command lines, 2 logs.", "",
           "| detector | seeded secrets | missed | policy lines | altered |",
           "|---|---|---|---|---|"]
    out += [f"| {name} | {row['secrets']} | {row['missed']} | {row['keep']} | {row['altered']} |"
            for name, row in rows]
    if oracle is not None:
        out.append(f"| detect-secrets 1.5 alone (files only) | {oracle['secrets']} | "
                   f"{oracle['missed']} | {oracle['keep']} | {oracle['flagged']} (flagged) |")
    out += ["", f"## This host's {args.etc}", "",
            f"{after['etc_files']} text files, {after['etc_lines']:,} lines (files secret by "
            "nature left out).", "", "| scrubber | lines changed |", "|---|---|"]
    out += [f"| {name} | {len(row['etc_changed'])} |" for name, row in rows]
    out += ["", "Lines this checkout changes (each should be a secret):", "", "```"]
    out += after["etc_changed"] + ["```"]
    out += ["", "## Throughput of `scrub_text`", "",
            f"Config text: each corpus file one call, as the files collector does "
            f"({after['config_bytes']:,} bytes in all, secrets on most lines: a worst case). "
            "Log lines: auth-log lines one call each (the corpus's sudo lines and plain "
            "sshd lines, 1:4), as the logs collector does.", "",
            "| scrubber | config text MB/s | auth-log lines/s |", "|---|---|---|"]
    out += [f"| {name} | {row['config_bytes_per_s'] / 1e6:.2f} | "
            f"{row['log_lines_per_s']:,.0f} |" for name, row in rows]
    text = "\n".join(out) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
