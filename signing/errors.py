"""The one error root of gamsa and its exit codes.

Every module raises a `GamsaError` subclass for anything a user can cause or fix;
only the CLI turns it into a message and an exit code. This module imports nothing
of ours so that `signing/` stays usable alone.
"""

from __future__ import annotations

import errno
import os

OK = 0
FINDINGS = 1  # verification failed, drift found
USAGE = 2  # bad command line, bad config, bad input file
RUNTIME = 3  # store unreachable, permission denied, I/O failure


class GamsaError(Exception):
    """A failure with a one-line message, an optional hint and an exit code."""

    exit_code: int = RUNTIME

    def __init__(self, message: str, *, hint: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def diagnostics(self) -> str:
        """The one line (plus hint) a user sees."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(GamsaError):
    """Bad command line, configuration or input file."""

    exit_code = USAGE


class KeyFileError(UsageError):
    """A key file that is missing, malformed or has unsafe permissions."""


class CanonicalError(GamsaError):
    """A value outside the canonical-JSON domain, or bytes that are not canonical."""

    exit_code = FINDINGS


class SignatureError(GamsaError):
    """A DSSE envelope that is malformed or whose signature does not verify."""

    exit_code = FINDINGS


class ProofError(GamsaError):
    """A Merkle inclusion or consistency proof that does not verify."""

    exit_code = FINDINGS


class FormatError(GamsaError):
    """A bundle object that does not follow docs/FORMAT.md."""

    exit_code = FINDINGS


class StoreError(GamsaError):
    """A store that cannot be reached or written."""

    exit_code = RUNTIME


class ConflictError(StoreError):
    """A create-only write found a different object already at the key."""


# What an operator does about an OS error on a path gamsa reads or writes.
_FIX_PERMISSION = ("check the owner and mode of it and its directories, or run gamsa as a "
                   "user allowed to use it")
_OS_HINTS = {
    errno.EACCES: _FIX_PERMISSION,
    errno.EPERM: _FIX_PERMISSION,
    errno.ENOSPC: "free space on that filesystem",
    errno.EDQUOT: "the disk quota is used up: free space or raise the quota",
    errno.EFBIG: "over the file size limit: raise ulimit -f or systemd LimitFSIZE=",
    errno.EROFS: "the filesystem is mounted read-only",
    errno.ENOTDIR: "a file is where a directory should be: move it away",
    errno.EISDIR: "a directory is where a file should be: move it away",
    errno.EMFILE: "too many open files: raise ulimit -n or systemd LimitNOFILE=",
    errno.ENFILE: "the system's open file table is full",
    errno.ELOOP: "too many symbolic links on the way",
    errno.EIO: "an I/O error: check the disk",
    errno.ENAMETOOLONG: "the path is too long",
}


def is_os_failure(exc: OSError) -> bool:
    """An OS error about the machine (a path, space, permissions, limits), not a bug."""
    return exc.filename is not None or exc.errno in _OS_HINTS


def os_error(exc: OSError, path: str | os.PathLike[str] | None = None,
             action: str = "access") -> GamsaError:
    """One line for an OS error on a path: the action, the path, the cause and what to do;
    exit RUNTIME. `path` defaults to the one the error names."""
    target = path if path is not None else exc.filename
    cause = exc.strerror or str(exc) or type(exc).__name__
    where = f" {os.fsdecode(target)}" if target is not None else ""
    return GamsaError(f"cannot {action}{where}: {cause}", hint=_OS_HINTS.get(exc.errno or 0, ""),
                      exit_code=RUNTIME)
