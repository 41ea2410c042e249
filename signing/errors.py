"""The one error root of gamsa and its exit codes.

Every module raises a `GamsaError` subclass for anything a user can cause or fix;
only the CLI turns it into a message and an exit code. This module imports nothing
of ours so that `signing/` stays usable alone.
"""

from __future__ import annotations

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
