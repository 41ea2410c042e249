"""The store interface and the registry that opens a store by URL scheme.

Create-only semantics everywhere: `put` of an existing key with the same SHA-256
is success, with a different one a `ConflictError`, never an overwrite. Keys are
relative to the store's prefix and use "/" separators (docs/FORMAT.md).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from signing.errors import GamsaError, StoreError, UsageError

if TYPE_CHECKING:
    from agent.config import StoreConfig


@dataclass(frozen=True)
class ObjectInfo:
    """What `head` tells of a stored object."""

    key: str
    size: int
    sha256: str | None  # our digest when the store can tell it cheaply, else None


class Store(Protocol):
    """A write-once object store."""

    url: str

    def put(self, key: str, data: bytes, sha256: str) -> bool:
        """Store `data` at `key`; True if written now, False if already there, same bytes."""
        ...

    def get(self, key: str) -> bytes: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str) -> Iterable[str]: ...


class DigestMismatchError(GamsaError):
    """Bytes about to be stored do not hash to the digest they must have; nothing
    was stored."""

    def __init__(self, source: str, actual: str, expected: str) -> None:
        super().__init__(f"{source}: sha256 is {actual}, not {expected} as expected; "
                         f"nothing was stored")
        self.source = source
        self.actual = actual
        self.expected = expected


class AccessDeniedError(StoreError):
    """The store refused a request for lack of a permission (not a network fault)."""


class NotConfirmedError(StoreError):
    """The store does not hold an object as it was put: missing, another size or
    checksum, or (S3) without the retention the put asked for."""


def check_stored(url: str, key: str, info: ObjectInfo | None, size: int,
                 sha256: str) -> None:
    """Raise `NotConfirmedError` unless `info` (a HEAD of the object just put) shows
    it with `size` bytes and, where the store reports one, the checksum `sha256`."""
    if info is None or info.size != size:
        found = "missing" if info is None else f"{info.size} bytes"
        raise NotConfirmedError(f"store {url}: {key} not confirmed after upload "
                                f"({found}, expected {size} bytes)")
    if info.sha256 is not None and info.sha256 != sha256:
        raise NotConfirmedError(f"store {url}: {key} not confirmed after upload (the store "
                                f"reports sha256 {info.sha256}, expected {sha256})")


def confirm(store: Store, key: str, size: int, sha256: str) -> None:
    """HEAD an object just put and raise `NotConfirmedError` unless the store holds
    it as it was put. Stores that can tell more (S3: the retention) provide their
    own `confirm`."""
    own = getattr(store, "confirm", None)
    if own is not None:
        own(key, size, sha256)
        return
    check_stored(store.url, key, store.head(key), size, sha256)


def put_file(store: Store, key: str, path: Path, sha256: str) -> bool:
    """`store.put` of the file at `path`, whose bytes must hash to `sha256`.

    Raises `DigestMismatchError`, storing nothing, when they do not. Stores that
    can do better (S3: a large file read once, hashed while its parts upload)
    provide their own `put_file`.
    """
    streaming = getattr(store, "put_file", None)
    if streaming is not None:
        written: bool = streaming(key, path, sha256)
        return written
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise DigestMismatchError(str(path), actual, sha256)
    return store.put(key, data, sha256)


# Scheme -> module defining `open_store(url, config) -> Store`; imported only when used,
# so `gamsa --help` and file:// users never import boto3.
STORE_MODULES = {"file": "agent.file_store", "s3": "agent.s3_store"}


def open_store(url: str, config: StoreConfig | None = None) -> Store:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    module_name = STORE_MODULES.get(scheme)
    if module_name is None:
        raise UsageError(f"store.url {url!r}: unsupported scheme",
                         hint="use file:///absolute/path or s3://bucket/prefix")
    module = importlib.import_module(module_name)
    store: Store = module.open_store(url, config)
    return store
