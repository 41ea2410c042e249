"""Helpers of the hostile-store tests (test_verify_hostile.py, test_pull_hostile.py):
planting files a store should never hold, and running gamsa with its peak RSS measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import GAMSA, GamsaEnv

PEAK_RSS_LIMIT = 200 * 1024 * 1024  # a verify process is ~60 MB; the bomb would be GBs

# Runs gamsa as its only child and reports that child's peak RSS (the largest of it and
# of the worker processes it waited for), which this test process cannot tell apart.
_MEASURE = ("import resource, subprocess, sys; "
            "code = subprocess.run(sys.argv[1:]).returncode; "
            "sys.stderr.write(f'\\nPEAK_RSS_KB={resource.getrusage(resource.RUSAGE_CHILDREN)"
            ".ru_maxrss}\\n'); sys.exit(code)")


def replace(path: Path, data: bytes | None = None, *, fifo: bool = False,
            link: str | None = None) -> None:
    """Put `data`, a FIFO or a symlink to `link` where the file `path` was."""
    path.unlink()
    if fifo:
        os.mkfifo(path)
    elif link is not None:
        path.symlink_to(link)
    else:
        assert data is not None
        path.write_bytes(data)


def gamsa_measured(env: GamsaEnv, *args: str,
                   timeout: float) -> tuple[int, dict[str, Any], int, float]:
    """`gamsa *args` (a command run with --json) in a subprocess with `env`'s config:
    exit code, JSON report, peak RSS (bytes), seconds taken."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GAMSA_")}
    environ["GAMSA_CONFIG"] = str(env.config)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _MEASURE, GAMSA, *args], env=environ,
                            capture_output=True, text=True, timeout=timeout, check=False)
    taken = time.monotonic() - started
    assert "Traceback" not in result.stderr, result.stderr
    peak = int(result.stderr.rsplit("PEAK_RSS_KB=", 1)[1]) * 1024
    return result.returncode, json.loads(result.stdout), peak, taken
