"""Crash-safe file primitives: durable atomic writes and directory fsync.

Every piece of state gamsa writes goes through these, so that a SIGKILL or power
loss at any instant leaves either the old content or the new, never a torn file.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(directory: Path, data: bytes, mode: int = 0o600) -> Path:
    """Write `data` to a new hidden temp file in `directory`, fsynced; return its path."""
    temp = directory / f".tmp-{secrets.token_hex(8)}"
    write_new_file(temp, data, mode)
    return temp


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (it may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create `path` (it must not exist), write `data`, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically replace `path` with `data` (temp, fsync, rename, fsync dir)."""
    temp = write_temp(path.parent, data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_atomic(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create `path` with `data` unless it exists; True if created now.

    temp + fsync + link: link(2) fails if the target exists, so two writers never
    overwrite each other and a reader never sees a partial file.
    """
    temp = write_temp(path.parent, data, mode)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True
