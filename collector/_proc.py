"""Who a live process is: its user, executable and the executable's SHA-256.

Shared by the collectors that name processes (`processes` lists them all, `network`
names the one behind a connection). Executables are hashed in 1 MiB chunks and the
digests kept in a `collector._hashcache.HashCache`, keyed by the file's identity
(device, inode, size, mtime and ctime in nanoseconds; ctime although the issue
asked for mtime only, see that module), so a rerun hashes only what changed.

On Linux the file hashed is `/proc/<pid>/exe`, the very inode the process runs,
so a process in a container (another mount namespace) is not given the hash of
the host file that happens to sit at the same path. A running executable that was
deleted or replaced (link count 0) gets no hash: the file at its path is another.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from collector._hashcache import HashCache, file_identity
from collector._linux import record_text
from collector.record import from_epoch, text_or_b64

CHUNK_BYTES = 1 << 20
CACHE_FILE = Path("cache") / "exe_hashes.json"
_LINUX = sys.platform.startswith("linux")
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_BINARY", 0))


def as_text(value: str) -> str | dict[str, str]:
    """A string from psutil or the OS as record data (`{"b64": ...}` if not UTF-8)."""
    try:
        return record_text(value)
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (Windows)
        return text_or_b64(value.encode("utf-8", "surrogatepass"))


def exe_hash_cache(state_dir: Path | None) -> HashCache:
    """The loaded cache at `<state_dir>/cache/exe_hashes.json` (memory only if None)."""
    return HashCache.under(state_dir, CACHE_FILE)


def exe_hash(path: str, cache: HashCache) -> str | None:
    """Hex SHA-256 of the regular file at `path` (symlinks followed), from `cache`
    when its identity is known; None when it cannot be opened or is not a regular
    file (a FIFO is never waited on). A file that changes while being hashed gets
    its digest returned but not cached. Raises PermissionError when it may not be
    opened: a gap in the agent's coverage, not an absent hash."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except PermissionError:
        raise
    except OSError:
        return None
    try:
        before = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(before.st_mode):
        os.close(fd)
        return None
    identity = file_identity(before)
    with os.fdopen(fd, "rb", buffering=0) as stream:
        cached = cache.get(identity)
        if cached is not None:
            return cached
        try:
            digest = hashlib.sha256()
            buffer = bytearray(CHUNK_BYTES)
            view = memoryview(buffer)
            while size := stream.readinto(buffer):
                digest.update(view[:size])
            after = os.fstat(fd)
        except OSError:
            return None
    cache.computed += 1
    hexdigest = digest.hexdigest()
    if file_identity(after) == identity:
        cache.put(identity, hexdigest)
    return hexdigest


@dataclass(frozen=True)
class ExeInfo:
    """A process's executable: `path` None when it has none (kernel threads);
    `sha256` None when it could not be hashed or was `deleted` (the running file
    was unlinked or replaced since the process started)."""

    path: str | None
    sha256: str | None
    deleted: bool
    hash_denied: bool = False  # the file exists but the agent may not read it


def process_exe(proc: psutil.Process, cache: HashCache) -> ExeInfo:
    """The executable of a live process. Raises psutil.AccessDenied when its path
    cannot be read, psutil.NoSuchProcess when the process is gone."""
    path = proc.exe()
    if not path:
        return ExeInfo(None, None, False)
    if _LINUX:
        running = f"/proc/{proc.pid}/exe"
        try:
            deleted = os.stat(running).st_nlink == 0
        except PermissionError:
            return ExeInfo(path, None, False, hash_denied=True)
        except OSError:
            return ExeInfo(path, None, False)
    else:
        running = path
        deleted = not os.path.lexists(path)
    if deleted:
        return ExeInfo(path, None, True)
    try:
        return ExeInfo(path, exe_hash(running, cache), False)
    except PermissionError:
        return ExeInfo(path, None, False, hash_denied=True)


class FieldReader:
    """Reads psutil values of one process, noting which were denied.

    AccessDenied gives None and the field name in `denied`; ZombieProcess (the
    value is gone with the process, the entry remains) gives None alone;
    NoSuchProcess propagates: the process no longer exists.
    """

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.denied: list[str] = []

    def get(self, field: str, method: str | None = None) -> Any:
        try:
            return getattr(self.proc, method or field)()
        except psutil.AccessDenied:
            self.denied.append(field)
        except psutil.ZombieProcess:
            pass
        return None


def process_identity(proc: psutil.Process, cache: HashCache,
                     reader: FieldReader | None = None) -> dict[str, Any]:
    """`{pid, name, user, exe, exe_sha256, exe_deleted, started}` as record data.

    Denied fields are null and named in `reader.denied`. Raises psutil.NoSuchProcess
    when the process is gone. Call inside `proc.oneshot()` when reading more.
    """
    reader = reader or FieldReader(proc)
    name = reader.get("name")
    user = reader.get("user", "username")
    created = reader.get("started", "create_time")
    try:
        exe: ExeInfo | None = process_exe(proc, cache)
    except psutil.AccessDenied:
        reader.denied.append("exe")
        exe = None
    except psutil.ZombieProcess:
        exe = None
    if exe is not None and exe.hash_denied:
        reader.denied.append("exe_sha256")
    return {
        "pid": proc.pid,
        "name": None if name is None else as_text(name),
        "user": None if user is None else as_text(user),
        "exe": None if exe is None or exe.path is None else as_text(exe.path),
        "exe_sha256": None if exe is None else exe.sha256,
        "exe_deleted": None if exe is None else exe.deleted,
        "started": None if created is None else from_epoch(created),
    }


def process_key(pid: int, create_time: float | None) -> str:
    """`<pid>:<create time in epoch microseconds>`: pids are reused, the pair is not."""
    return f"{pid}:{'' if create_time is None else round(create_time * 1_000_000)}"
