"""Real journal files for tests: entries written in the journal export format and
turned into a `.journal` file by `systemd-journal-remote` (Debian package
systemd-journal-remote), read back by the real `journalctl --file`. Without those
tools the tests that need them skip, saying why."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REMOTE_PATHS = ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
BOOT_ID = "0123456789abcdef0123456789abcdef"
START_US = 1_796_000_000_000_000  # 2026-11-28, in microseconds


def journal_tools() -> str:
    """The path of systemd-journal-remote, or a skip saying what is missing."""
    if shutil.which("journalctl") is None:
        pytest.skip("needs journalctl (systemd) to read a journal file")
    for path in REMOTE_PATHS:
        if Path(path).exists():
            return path
    pytest.skip("needs systemd-journal-remote (Debian package systemd-journal-remote) "
                "to write a journal file")


@dataclass
class Journal:
    """A journal file that grows by `append`; each sshd login carries a unique port."""

    path: Path
    written: int = 0

    def append(self, entries: list[tuple[str, str | bytes]]) -> None:
        """Add (identifier, message) entries, one microsecond apart; a message with a
        newline or given as bytes is written in the export format's binary form."""
        tool = journal_tools()
        export = bytearray()
        for identifier, message in entries:
            n = self.written
            self.written += 1
            export += (f"__REALTIME_TIMESTAMP={START_US + n}\n__MONOTONIC_TIMESTAMP={1000 + n}\n"
                       f"_BOOT_ID={BOOT_ID}\n_HOSTNAME=web-01\nSYSLOG_IDENTIFIER={identifier}\n"
                       f"_COMM={identifier}\n_PID={100 + n}\nPRIORITY=6\n").encode()
            data = message if isinstance(message, bytes) else message.encode()
            if isinstance(message, bytes) or "\n" in message:
                # binary field form: name, newline, 64-bit little-endian length, data
                export += b"MESSAGE\n" + len(data).to_bytes(8, "little") + data + b"\n\n"
            else:
                export += b"MESSAGE=" + data + b"\n\n"
        source = self.path.with_suffix(".export")
        source.write_bytes(bytes(export))
        subprocess.run([tool, "-o", str(self.path), str(source)], check=True,
                       capture_output=True, timeout=60)

    def logins(self, first: int, count: int) -> list[tuple[str, str | bytes]]:
        return [("sshd", f"Accepted publickey for u{n} from 10.0.0.1 port {n} ssh2")
                for n in range(first, first + count)]
