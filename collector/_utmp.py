"""A streaming reader for Linux utmp-format files: wtmp, btmp and their rotations.

The layout is glibc's `struct utmp` on 64-bit (and 32-bit x86) Linux: 384 bytes
per record in the machine's own byte order, times as 32-bit seconds and
microseconds. Files are read in chunks, never whole, so a 100 MB wtmp costs a
chunk of memory, and `.gz` rotations are decompressed on the fly. A trailing
partial record is reported as `Truncated`, not guessed at.
"""

from __future__ import annotations

import datetime as dt
import gzip
import ipaddress
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from collector.record import format_time

# short ut_type (+2 padding), pid_t ut_pid, char ut_line[32], ut_id[4], ut_user[32],
# ut_host[256], struct exit_status {short, short}, int32 ut_session,
# struct {int32 tv_sec, int32 tv_usec} ut_tv, int32 ut_addr_v6[4], char unused[20].
# tv_sec is read unsigned: a login before 1970 is impossible, one after 2038 is not.
RECORD = struct.Struct("=h2xi32s4s32s256shhiIi16s20x")
RECORD_SIZE = RECORD.size
assert RECORD_SIZE == 384

EMPTY = 0
RUN_LVL = 1
BOOT_TIME = 2
NEW_TIME = 3
OLD_TIME = 4
INIT_PROCESS = 5
LOGIN_PROCESS = 6
USER_PROCESS = 7
DEAD_PROCESS = 8
ACCOUNTING = 9

_CHUNK_RECORDS = 2730  # ~1 MiB per read


def c_string(raw: bytes) -> bytes:
    """A NUL-padded char array up to its first NUL (it may fill the array unterminated)."""
    return raw.split(b"\0", 1)[0]


@dataclass(frozen=True, slots=True)
class UtmpEntry:
    """One decoded record. `index` is 1-based within its file."""

    index: int
    type: int
    pid: int
    line: bytes
    id: bytes
    user: bytes
    host: bytes
    exit_termination: int
    exit_status: int
    session: int
    sec: int
    usec: int
    addr: bytes

    @property
    def epoch_usec(self) -> int:
        return self.sec * 1_000_000 + self.usec

    @property
    def time(self) -> str:
        """RFC 3339 UTC, exact to the microsecond (no float on the way)."""
        moment = dt.datetime.fromtimestamp(self.sec, dt.UTC)
        return format_time(moment + dt.timedelta(microseconds=self.usec))

    @property
    def address(self) -> str | None:
        """`ut_addr_v6` as text: IPv4 when only the first word is set, null when zero."""
        if not any(self.addr):
            return None
        if not any(self.addr[4:]):
            return str(ipaddress.IPv4Address(self.addr[:4]))
        return str(ipaddress.IPv6Address(self.addr))


@dataclass(frozen=True, slots=True)
class Truncated:
    """A partial record at the end of a file: `size` bytes of record `index`."""

    index: int
    size: int


def unpack(index: int, raw: bytes) -> UtmpEntry:
    (ut_type, pid, line, ut_id, user, host, termination, exit_status, session, sec, usec,
     addr) = RECORD.unpack(raw)
    return UtmpEntry(index, ut_type, pid, c_string(line), c_string(ut_id), c_string(user),
                     c_string(host), termination, exit_status, session, sec, usec, addr)


def read_entries(stream: BinaryIO) -> Iterator[UtmpEntry | Truncated]:
    """Every record of `stream` in order, reading about 1 MiB at a time."""
    index = 0
    pending = b""
    # read1: what one underlying read gives, so the records before a break in a
    # compressed stream come out before the error does.
    read = getattr(stream, "read1", stream.read)
    while True:
        chunk = read(RECORD_SIZE * _CHUNK_RECORDS)
        if not chunk:
            break
        data = pending + chunk if pending else chunk
        whole = len(data) - len(data) % RECORD_SIZE
        for offset in range(0, whole, RECORD_SIZE):
            index += 1
            yield unpack(index, data[offset:offset + RECORD_SIZE])
        pending = data[whole:]
    if pending:
        yield Truncated(index + 1, len(pending))


class NotRegularFile(OSError):
    """The path is a FIFO, device, socket or directory: never read (it could hang)."""


@contextmanager
def open_utmp(path: Path) -> Iterator[BinaryIO]:
    """Open a utmp file for streaming, `.gz` decompressed; refuses non-regular files.

    O_NONBLOCK keeps a FIFO planted at the path from blocking the open itself.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(0, "not a regular file")
    except OSError:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as raw:
        if not path.name.endswith(".gz"):
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            yield unzipped  # type: ignore[misc]  # GzipFile is a BinaryIO in all but name


def pack(ut_type: int, *, pid: int = 0, line: bytes = b"", ut_id: bytes = b"",
         user: bytes = b"", host: bytes = b"", sec: int = 0, usec: int = 0,
         addr: bytes = b"", exit_status: tuple[int, int] = (0, 0), session: int = 0) -> bytes:
    """One record in this machine's layout (the inverse of `unpack`; tests build files
    with it)."""
    return RECORD.pack(ut_type, pid, line, ut_id, user, host, exit_status[0], exit_status[1],
                       session, sec, usec, addr.ljust(16, b"\0"))
