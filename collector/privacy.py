"""Pseudonymization of personal data named in config, before anything is sealed.

A field named in `[privacy] pseudonymize` (e.g. "user", "src", "subject") has its
value replaced, wherever it appears in a record's `data`, by
`"psn:" + hex(HMAC-SHA256(firm_key, value))[:32]`. The same value and key give the
same pseudonym on every host, so auditors can still correlate; only the firm,
holding the key, can test a guess. The key file must be 0600 (or stricter).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from signing.errors import KeyFileError

PREFIX = "psn:"
MIN_KEY_BYTES = 16


def load_pseudonym_key(path: Path) -> bytes:
    """The firm's HMAC key; refuse a missing, short or group/other-accessible file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KeyFileError(f"privacy.key_file {path}: not found",
                           hint="create it with: head -c 32 /dev/urandom > FILE; "
                                "chmod 600 FILE (the same file on every host)") from None
    except OSError as exc:
        raise KeyFileError(f"privacy.key_file {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"privacy.key_file {path}: not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"privacy.key_file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o})", hint=f"run: chmod 600 {path}")
        key = os.read(fd, 4096)
    finally:
        os.close(fd)
    key = key.strip()
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"privacy.key_file {path}: key shorter than {MIN_KEY_BYTES} bytes")
    return key


def pseudonym(key: bytes, value: str) -> str:
    return PREFIX + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def pseudonymize(data: Any, fields: frozenset[str], key: bytes) -> Any:
    """A copy of `data` with every value under a key in `fields` pseudonymized.

    Strings and integers become pseudonyms (integers by their decimal text); lists
    under such a key are pseudonymized item by item; null stays null; an already
    pseudonymized value is left as is.
    """
    if isinstance(data, dict):
        return {k: (_replace(v, fields, key) if k in fields else pseudonymize(v, fields, key))
                for k, v in data.items()}
    if isinstance(data, list):
        return [pseudonymize(item, fields, key) for item in data]
    return data


def _replace(value: Any, fields: frozenset[str], key: bytes) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value if value.startswith(PREFIX) else pseudonym(key, value)
    if isinstance(value, int):
        return pseudonym(key, str(value))
    if isinstance(value, list):
        return [_replace(item, fields, key) for item in value]
    if isinstance(value, dict):
        return pseudonymize(value, fields, key)
    return value


def field_set(names: Iterable[str]) -> frozenset[str]:
    return frozenset(names)
