"""SHA-256 digests of files by file identity, kept between runs under the state dir.

One cache type for every collector that hashes files (`files` for configured
paths, `processes` and `network` for executables), each in its own file under
`<state_dir>/cache/`. The key is a file's identity (`file_identity`): device,
inode, size, mtime and ctime in nanoseconds. ctime is in the key because `touch
-d` can put back an old mtime after a file is swapped in place, but nothing can
put back a ctime. A cache is only ever an optimisation: a missing, unreadable or
corrupt cache file is an empty cache, and one that cannot be written costs the
next run time, never evidence.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

_VERSION = 1


def file_identity(info: os.stat_result) -> str:
    """The cache key of a file: `<dev>:<ino>:<size>:<mtime_ns>:<ctime_ns>`."""
    return (f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:"
            f"{info.st_ctime_ns}")


class HashCache:
    """Hex SHA-256 digests by file identity, optionally persisted as JSON.

    `path` None keeps the cache in memory only. `load()` never fails; `save()`
    writes atomically (temp file in the same directory, fsync, `os.replace`), by
    default keeping only the entries used since this object was made, and skips the
    write when nothing changed. `get` counts `hits`; callers count `computed`.
    `lookup` is `get` without side effects, safe from worker threads.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[str, str] = {}
        self._used: set[str] = set()
        self._changed = False
        self.computed = 0
        self.hits = 0

    @classmethod
    def under(cls, state_dir: Path | None, name: Path) -> HashCache:
        """The loaded cache at `<state_dir>/<name>` (memory only if state_dir is None)."""
        cache = cls(None if state_dir is None else state_dir / name)
        cache.load()
        return cache

    def __len__(self) -> int:
        return len(self._entries)

    def load(self) -> None:
        if self.path is None:
            return
        try:
            document = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return
        if not isinstance(document, dict) or document.get("version") != _VERSION:
            return
        entries = document.get("entries")
        if isinstance(entries, dict):
            self._entries.update(
                (k, v) for k, v in entries.items()
                if isinstance(k, str) and isinstance(v, str) and len(v) == 64)

    def lookup(self, identity: str) -> str | None:
        return self._entries.get(identity)

    def get(self, identity: str) -> str | None:
        digest = self._entries.get(identity)
        if digest is not None:
            self._used.add(identity)
            self.hits += 1
        return digest

    def put(self, identity: str, digest: str) -> None:
        if self._entries.get(identity) != digest:
            self._entries[identity] = digest
            self._changed = True
        self._used.add(identity)

    def save(self, prune: bool = True) -> None:
        """Write the cache; `prune` drops entries not used since it was made (pass
        False from a collector that looks at a few files, not all). Raises OSError."""
        if self.path is None:
            return
        if prune and len(self._used) != len(self._entries):
            self._entries = {k: v for k, v in self._entries.items() if k in self._used}
            self._changed = True
        if not self._changed:
            return
        document = {"version": _VERSION, "entries": dict(sorted(self._entries.items()))}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                    dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(json.dumps(document, separators=(",", ":")).encode("ascii"))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        self._changed = False
