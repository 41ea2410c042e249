"""The `file://` store: the bundle layout on a local disk, create-only.

The embedded default (no server). Objects are written by temp + fsync + link, so
an existing object is never replaced, and made read-only (0444) once written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlparse

from agent.fsutil import create_atomic
from agent.store import ObjectInfo
from signing.errors import ConflictError, StoreError, UsageError, os_error
from signing.reading import DirectoryReader

if TYPE_CHECKING:
    from agent.config import StoreConfig


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"refusing object key {key!r}: not a plain relative key")
    return key


def _check_is_dir(root: Path) -> None:
    """A file where the store's directory should be is the machine's state, not the
    config's: exit 3 naming it."""
    if root.exists() and not root.is_dir():
        raise StoreError(f"store.url file://{root}: {root} exists and is not a directory",
                         hint="move it away")


def _store_error(exc: OSError, url: str, action: str) -> StoreError:
    """An OS error on the store as one line: the store, what failed, the cause, a hint."""
    return StoreError(f"store {url}: cannot {action}: {exc.strerror or exc}",
                      hint=os_error(exc).hint)


class FileStore:
    """A directory that holds objects under their keys."""

    def __init__(self, root: Path, confirm_every: int = 1) -> None:
        self.root = root
        self.url = f"file://{root}"
        # Manifests per HEAD (a stat) the shipper makes: `store.confirm_every`.
        self.confirm_every = confirm_every
        self._reader = DirectoryReader(root)

    def _ensure_root(self) -> None:
        _check_is_dir(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise _store_error(exc, self.url, f"create {self.root}") from exc

    def put(self, key: str, data: bytes, sha256: str) -> bool:
        self._ensure_root()
        path = self.root / _safe_key(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            if create_atomic(path, data, mode=0o444):
                return True
            existing = hashlib.sha256(path.read_bytes()).hexdigest()
        except NotADirectoryError as exc:
            raise StoreError(f"store {self.url}: a file is in the way of {key}",
                             hint=os_error(exc).hint) from exc
        except OSError as exc:
            raise _store_error(exc, self.url, f"write {key}") from exc
        if existing != sha256:
            raise ConflictError(f"store {self.url}: {key} exists with sha256 {existing}, "
                                f"refusing to replace it with {sha256}")
        return False

    def get(self, key: str) -> bytes:
        with self.open(key) as stream:
            try:
                return stream.read()
            except OSError as exc:
                raise _store_error(exc, self.url, f"read {key}") from exc

    def open(self, key: str) -> BinaryIO:
        """`key` as a stream, if it is a regular file (a FIFO or a symlink named like
        an object is `ObjectRefused`, never a hang: signing.reading)."""
        try:
            return self._reader.open(_safe_key(key))
        except OSError as exc:
            raise _store_error(exc, self.url, f"read {key}") from exc

    def head(self, key: str) -> ObjectInfo | None:
        try:
            size = (self.root / _safe_key(key)).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _store_error(exc, self.url, f"stat {key}") from exc
        return ObjectInfo(key, size, None)

    def list(self, prefix: str) -> Iterator[str]:
        """Keys under `prefix`. A folder this user may not list is a StoreError naming
        it (signing.reading), never a silently shorter listing."""
        try:
            _check_is_dir(self.root)
            present = self.root.exists()
        except OSError as exc:  # a parent of the store not searchable
            raise _store_error(exc, self.url, f"list {self.root}") from exc
        if not present:
            return iter(())
        return self._reader.list(prefix)


def open_store(url: str, config: StoreConfig | None = None) -> FileStore:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise UsageError(f"store.url {url!r}: file URLs name a local path (file:///path)")
    path = Path(unquote(parsed.path))
    if not path.is_absolute():
        raise UsageError(f"store.url {url!r}: the path must be absolute")
    _check_is_dir(path)
    return FileStore(path, config.confirm_every if config else 1)
