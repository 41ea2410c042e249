"""Running an external tool safely: no shell, closed stdin, a fixed environment,
a wall-clock timeout and bounded output, killed with everything it started.

Shared by the collectors that ask a tool (rpm, systemctl, nft, chronyc, auditctl);
a tool that is absent is an `unsupported` record, one that fails a
`command_failed` record.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from collector._linux import decode, key_text, os_reason
from collector.record import Record
from collector.registry import COMMAND_FAILED_TYPE, Field, RecordType
from collector.scrub import scrub_text

__all__ = ["COMMAND_FAILED", "COMMAND_FAILED_TYPE", "TOOL_PATH", "ToolRun",
           "command_failed_record", "run_tool", "which"]


@dataclass
class ToolRun:
    """What one command run gave: its output, exit status, or why it gave none."""

    argv: list[str]
    returncode: int | None
    stdout: bytes
    stderr: bytes
    error: str | None  # spawn failure, timeout or output cap; None when it ran to its end

    @property
    def ok(self) -> bool:
        return self.error is None and self.returncode == 0

    def failure(self) -> str:
        """Why the run is not usable, in a few words (scrubbed stderr included)."""
        if self.error is not None:
            return self.error
        first = decode(self.stderr).strip().splitlines()
        detail = scrub_text(first[0][:200])[0] if first else ""
        return f"exit status {self.returncode}" + (f": {detail}" if detail else "")


# Tools live in sbin too, which a non-root PATH often lacks; children get a small,
# fixed environment (no inherited LD_PRELOAD, proxies or locale surprises).
TOOL_PATH = os.pathsep.join(("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                             "/sbin", "/bin"))
_TOOL_ENV = {"PATH": TOOL_PATH, "LC_ALL": "C", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}


def which(tool: str) -> str | None:
    """The tool's path on $PATH or in the usual bin and sbin directories."""
    return shutil.which(tool, path=os.pathsep.join((os.environ.get("PATH", ""), TOOL_PATH)))


def run_tool(argv: list[str], timeout: float, max_bytes: int = 64 << 20) -> ToolRun:
    """Run `argv` (no shell; give the tool's full path, see `which`) with stdin
    closed, a fixed environment (C locale), a wall-clock `timeout`
    and at most `max_bytes` of stdout and of stderr each; the process is killed
    when either limit is hit. POSIX only (pipes are polled with `selectors`)."""
    try:
        # Its own session, so a timeout kills whatever the tool started too.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=_TOOL_ENV, start_new_session=True)
    except OSError as exc:
        return ToolRun(argv, None, b"", b"", os_reason(exc))
    out, err = bytearray(), bytearray()
    error: str | None = None
    deadline = time.monotonic() + timeout
    with proc, selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)  # type: ignore[arg-type]
        selector.register(proc.stderr, selectors.EVENT_READ, err)  # type: ignore[arg-type]
        error = _pump(selector, deadline, timeout, max_bytes)
        if error is None:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                error = f"timed out after {timeout:g} s"
        if error is not None:
            _kill_group(proc)
    return ToolRun(argv, None if error else proc.returncode, bytes(out), bytes(err), error)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group of the session started above
    except OSError:
        proc.kill()


def _pump(selector: selectors.BaseSelector, deadline: float, timeout: float,
          max_bytes: int) -> str | None:
    """Read both pipes to their end into their buffers; the reason to stop early."""
    while selector.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"timed out after {timeout:g} s"
        for key, _events in selector.select(remaining):
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            buffer: bytearray = key.data
            buffer += chunk
            if len(buffer) > max_bytes:
                return f"output over {max_bytes} bytes"
    return None


def command_failed_record(collector: str, tool: str, run: ToolRun) -> Record:
    """The record for a tool that is installed but whose run gave no usable output."""
    stderr = decode(run.stderr[:4096]).strip()
    return Record(collector, COMMAND_FAILED_TYPE, tool, {
        "argv": [key_text(a) for a in run.argv],
        "exit_code": run.returncode,
        "reason": key_text(run.failure()),
        "stderr": key_text(scrub_text(stderr)[0]) if stderr else None,
    })


COMMAND_FAILED = RecordType(
    doc="An installed tool was run but gave no usable output (non-zero exit, timeout, "
        "output over the cap); the records it would have given are absent. Makes the "
        "collector `partial`.",
    key="the tool's name (`rpm`, `systemctl`, ...)",
    fields={
        "argv": Field((list,), "the command line run (no shell)"),
        "exit_code": Field((int, type(None)), "exit status; null when it was killed or "
                                              "never started"),
        "reason": Field((str,), "e.g. `exit status 1: <first stderr line>`, `timed out "
                                "after 60 s`"),
        "stderr": Field((str, type(None)), "the first 4 KiB of its stderr, secrets "
                                           "scrubbed; null when empty"),
    },
)
