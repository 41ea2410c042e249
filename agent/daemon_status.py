"""`<state_dir>/daemon.json`: what the running daemon is doing, for `gamsa status`.

Written atomically (temp, fsync, rename) at each event: start, each sealing, each
ship run, a reload, a watcher's change, stop. It is a report, never a source of
truth: whether a daemon runs is decided by `daemon.lock` (a flock the daemon holds
for its life), not by this file, which a kill -9 leaves behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.fsutil import replace_atomic
from collector.record import utc_now

STATUS_FILE = "daemon.json"
LOCK_FILE = "daemon.lock"


@dataclass
class DaemonStatus:
    """The fields of daemon.json."""

    pid: int
    started: str
    config_sha256: str
    config_source: str | None
    updated: str = ""
    stopped: str | None = None
    last_sealed: dict[str, Any] | None = None  # {seq, at, trigger, collectors}
    last_ship: dict[str, Any] | None = None  # {at, result, shipped | error}
    next_due: dict[str, str] = field(default_factory=dict)  # collector -> time
    watchers: dict[str, str] = field(default_factory=dict)  # watcher -> its state


class StatusFile:
    """Thread-safe writer of daemon.json (the main loop and the shipper both report)."""

    def __init__(self, state_dir: Path, status: DaemonStatus) -> None:
        self.path = state_dir / STATUS_FILE
        self.status = status
        self._lock = threading.Lock()

    def update(self, **changes: Any) -> str | None:
        """Apply `changes` and rewrite the file; the one-line problem if it failed."""
        with self._lock:
            for name, value in changes.items():
                setattr(self.status, name, value)
            self.status.updated = utc_now()
            data = json.dumps(asdict(self.status), sort_keys=True, indent=1).encode()
            try:
                replace_atomic(self.path, data + b"\n", 0o644)
            except OSError as exc:
                return f"{self.path}: not updated: {exc.strerror or exc}"
        return None


def daemon_state(state_dir: Path) -> dict[str, Any]:
    """`running` (from the daemon.lock flock), the lock holder's pid, and daemon.json.

    The lock is tried shared and non-blocking and let go at once; the daemon retries
    its own exclusive lock briefly, so this look never keeps a daemon from starting.
    """
    running, pid = _lock_holder(state_dir / LOCK_FILE)
    try:
        report = json.loads((state_dir / STATUS_FILE).read_bytes())
    except (OSError, ValueError):
        report = None
    if not isinstance(report, dict):
        report = None
    return {"running": running, "pid": pid, "status": report}


def _lock_holder(path: Path) -> tuple[bool, int | None]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return True, int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, None
    finally:
        os.close(fd)
