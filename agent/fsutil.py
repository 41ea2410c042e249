"""Crash-safe file primitives: durable atomic writes and directory fsync.

Every piece of state gamsa writes goes through these, so that a SIGKILL or power
loss at any instant leaves either the old content or the new, never a torn file.
An OS error (no space, no permission, a read-only filesystem) leaves no partial
file behind and names the path it happened on; `failing` turns it into the one
line the CLI shows (exit 3).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from signing.errors import os_error

PROC_FDS = "/proc/self/fd"


@contextlib.contextmanager
def failing(action: str, path: Path | None = None) -> Iterator[None]:
    """Turn an OSError inside into a GamsaError naming the path and cause (exit 3).
    The line names `path` (the file meant, not a temp file beside it), else the
    path the error names."""
    try:
        yield
    except OSError as exc:
        raise os_error(exc, path, action) from exc


def _name(exc: OSError, path: Path) -> None:
    """Make `exc` name `path` when it names nothing (errors on a descriptor)."""
    if exc.filename is None:
        exc.filename = str(path)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        _name(exc, path)
        raise
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
    """Create `path` (it must not exist), write `data`, fsync; on failure remove it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException as exc:  # ENOSPC, EIO, SystemExit at a SIGTERM: no partial file
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        if isinstance(exc, OSError):
            _name(exc, path)
        raise
    os.close(fd)


def _unnamed_file(directory: Path, data: bytes, mode: int) -> int | None:
    """A new file in `directory` with `data`, fsynced, that has no name yet
    (O_TMPFILE): a process killed before it is linked leaves nothing behind. Its
    descriptor, or None where the kernel, filesystem or a missing /proc cannot do it
    (then a named temp file is used)."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir(PROC_FDS):
        return None
    try:
        fd = os.open(directory, flag | os.O_WRONLY, mode)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None  # e.g. NFS, or a kernel older than 3.11
        raise
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException as exc:  # ENOSPC, EIO: the file had no name, nothing stays
        os.close(fd)
        if isinstance(exc, OSError):
            _name(exc, directory)
        raise
    return fd


def _link_unnamed(fd: int, path: Path) -> bool:
    """Give the O_TMPFILE file `fd` the name `path` (linkat(2) through /proc, as
    open(2) shows); FileExistsError when `path` exists. False where /proc will not
    link it (EXDEV across bind mounts, EPERM): the caller writes a named temp file,
    which meets any error of the directory itself."""
    try:
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        # A dir fd makes CPython call linkat(2) with AT_SYMLINK_FOLLOW; without one it
        # calls link(2), which links the /proc symlink itself: EXDEV, every time.
        os.link(f"{PROC_FDS}/{fd}", path.name, dst_dir_fd=directory, follow_symlinks=True)
    except FileExistsError:
        raise
    except OSError:
        return False
    finally:
        os.close(directory)
    return True


def replace_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically replace `path` with `data` (temp, fsync, rename, fsync dir).

    The temp file is written unnamed where possible and named only for the rename,
    so a kill leaves a stray temp file only in that instant."""
    temp = path.parent / f".tmp-{secrets.token_hex(8)}"
    try:  # from here on, an exception (SystemExit at a SIGTERM too) leaves no temp file
        fd = _unnamed_file(path.parent, data, mode)
        linked = False
        if fd is not None:
            try:
                linked = _link_unnamed(fd, temp)
            finally:
                os.close(fd)
        if not linked:
            write_new_file(temp, data, mode)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def create_atomic(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Create `path` with `data` unless it exists; True if created now.

    temp + fsync + link: link(2) fails if the target exists, so two writers never
    overwrite each other and a reader never sees a partial file. The temp file has
    no name where the filesystem allows (O_TMPFILE): a kill leaves nothing behind.
    """
    fd = _unnamed_file(path.parent, data, mode)
    if fd is not None:
        try:
            linked = _link_unnamed(fd, path)
        except FileExistsError:
            return False
        finally:
            os.close(fd)
        if linked:
            fsync_dir(path.parent)
            return True
    temp = write_temp(path.parent, data, mode)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def make_private_dirs(path: Path) -> None:
    """`mkdir -p path` where every directory it makes, the parents too, is 0700: the
    state dir's parents by default are ~/.local/state (XDG: "create it with
    permission 0700"), which `mkdir(parents=True)` would make 0777 minus the umask."""
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
