"""The store interface and the registry that opens a store by URL scheme.

Create-only semantics everywhere: `put` of an existing key with the same SHA-256
is success, with a different one a `ConflictError`, never an overwrite. Keys are
relative to the store's prefix and use "/" separators (docs/FORMAT.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from signing.errors import UsageError

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
