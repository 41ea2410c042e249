"""The `files` collector: configured files and globs, hashed, with their metadata.

Each configured pattern (`[collectors.files] paths`) is expanded under the context
root: `*`, `?` and `[...]` match within one path component (hidden names too: a
dotfile in /etc/sudoers.d is evidence), `**` matches zero or more directories, and
a directory that matches stands for itself and everything under it. Walking never
follows a directory symlink below a wildcard or `**`, is bounded in depth and in
matches per pattern, and works on bytes so no file name is lost.

Every match becomes one `file` record (metadata from `lstat`, never following a
symlink). Only regular files are opened: with O_NOFOLLOW|O_NONBLOCK, so a symlink
or FIFO swapped in after the `lstat` can neither redirect nor hang the read, and
`fstat` after opening must show the same regular file. Small text files (at most
`content_max_bytes`, valid UTF-8, no NUL) are captured with secrets scrubbed;
files secret by nature (`collector.scrub.SECRET_FILES`: shadow, private keys,
keytabs, credential stores; or any file holding a PEM private key) never are,
whatever `paths` says: only their hash and metadata.
Files over `hash_max_bytes` are not read at all (a 10 GB sparse file costs one
`lstat`). Digests of files not read for content are cached in
`<state_dir>/cache/file_hashes.json` by (device, inode, size, mtime, ctime), so
a rerun reads only what changed; a file changed within a second of the scan is
not cached, since a second write in the same clock tick would keep its key. Large
files are hashed in a small thread pool while the main thread goes on walking;
records stay in path order.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import posixpath
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector._hashcache import HashCache, file_identity
from collector._hashrate import HashBudget, budget_for, wait_bound
from collector._linux import MAX_SAFE_INT, os_reason, parse_colon_file
from collector.options import BOOL, PATH_GLOB_LIST, SHORT_SECONDS, SIZE, SIZE_OR_ZERO, Option
from collector.record import Record, text_or_b64
from collector.registry import (
    SOURCE_MISSING_TYPE,
    SOURCE_UNREADABLE_TYPE,
    CollectContext,
    Collector,
    Field,
    RecordType,
    coverage_gap,
)
from collector.scrub import (
    PRIVATE_KEY_CONTENT,
    is_private_key_content,
    scrub_text,
    secret_file_rule,
)

if sys.platform != "win32":
    import grp
    import pwd

NAME = "files"

DEFAULT_PATHS = (
    "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d/*",
    "/etc/sudoers",
    "/etc/sudoers.d/*",
    "/etc/pam.d/*",
    "/etc/login.defs",
    "/etc/security/*.conf",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nftables.conf",
    "/etc/environment",
    "/etc/profile.d/*",
    "/etc/apt/apt.conf.d/*proxy*",
    "/etc/yum.conf",
    "/etc/nginx/conf.d/*",
    "/etc/gamsa/agent.toml",
    "/etc/audit/rules.d/*",
    "/etc/chrony/chrony.conf",
    "/etc/systemd/timesyncd.conf",
    "/etc/crypttab",
)

# The options (`[collectors.files]`), declared once here: config, docs and
# packaging/agent.toml come from these.
PATHS = Option(NAME, "paths", PATH_GLOB_LIST, list(DEFAULT_PATHS),
               "absolute globs; ** recurses; a directory = all under it")
CONTENT_MAX_BYTES = Option(NAME, "content_max_bytes", SIZE, 65536,
                           "at most this many bytes of a file's content go into a record")
HASH_MAX_BYTES = Option(NAME, "hash_max_bytes", SIZE, "1GiB",
                        "larger files are recorded without a hash (bounded time)")
WATCH = Option(NAME, "watch", BOOL, True,
               "seal a file-change bundle when a watched file changes")
DEBOUNCE = Option(NAME, "debounce", SHORT_SECONDS, "500ms",
                  "quiet time before a watched change is sealed (at most twice this after "
                  "the first event)")
HASH_RATE = Option(NAME, "hash_rate", SIZE_OR_ZERO, "1GiB",
                    "bytes hashed per minute at most (0 = no cap); a file whose turn "
                    "would come later than halfway to the run's timeout is not hashed this "
                    "run (`hash_rate`), and a `coverage_gap` counts them")

CACHE_FILE = Path("cache") / "file_hashes.json"
_CHUNK = 1024 * 1024  # hashlib releases the GIL on buffers this size
_POOL_MIN_BYTES = 256 * 1024  # smaller files: hashing costs less than handing them over


@dataclass(frozen=True)
class Limits:
    """Bounds on one run. Not config options: tests and benchmarks lower them."""

    max_matches: int = 100_000  # per pattern; beyond -> a `truncated` record
    max_depth: int = 64  # directory levels below a `**` or a matched directory
    threads: int = 4  # hashing threads; 1 = no thread pool
    # A file whose ctime is this close to the scan start is hashed but not cached: a
    # write in the same clock tick as the one we read after would leave every key
    # field unchanged (git's "racily clean" problem).
    racy_ns: int = 1_000_000_000


@dataclass
class ScanStats:
    """What a run cost: lets tests and the benchmark see that the cache worked."""

    matches: int = 0
    files_read: int = 0  # regular files opened and read
    bytes_read: int = 0
    cache_hits: int = 0


@dataclass
class ScanResult:
    records: list[Record]
    stats: ScanStats


@dataclass(frozen=True)
class _Settings:
    content_max_bytes: int
    hash_max_bytes: int
    budget: HashBudget | None = None  # the hash_rate cap; None = no cap
    wait_until: float = 0.0  # monotonic time after which a file's turn is too late


def _int_option(ctx: CollectContext, option: Option[int]) -> int:
    value = ctx.value(option)
    if type(value) is not int or value < 0:
        raise ValueError(f"{option.key} must be a non-negative integer")
    return value


def _patterns(ctx: CollectContext) -> list[str]:
    value = ctx.value(PATHS)
    if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
        raise ValueError("collectors.files.paths must be a list of strings")
    return list(value)


# --- names and keys --------------------------------------------------------------

def path_key(host_path: bytes) -> str:
    """A host path as a record key: itself if UTF-8, else `b64:<base64 of the bytes>`."""
    try:
        return host_path.decode("utf-8")
    except UnicodeDecodeError:
        return "b64:" + base64.b64encode(host_path).decode("ascii")


def _time_ns(ns: int) -> str | None:
    """Nanoseconds since the epoch as RFC 3339 UTC with microseconds (the format of
    `record.format_time`, several times faster: it runs once per file); None for a
    time outside years 1-9999, which RFC 3339 cannot write."""
    seconds, rest = divmod(ns, 10**9)
    try:
        t = time.gmtime(seconds)
    except (OverflowError, OSError, ValueError):
        return None
    if not 1 <= t.tm_year <= 9999:
        return None
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:"
            f"{t.tm_min:02d}:{t.tm_sec:02d}.{rest // 1000:06d}Z")


def _safe_int(value: int) -> int | str:
    return value if value <= MAX_SAFE_INT else str(value)


_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "char_device",
          stat.S_IFBLK: "block_device"}


class _Names:
    """uid/gid -> name: the live system's databases (NSS too) when reading `/`,
    else the passwd and group files of the root tree (an image has its own)."""

    def __init__(self, ctx: CollectContext) -> None:
        self.live = ctx.is_live and sys.platform != "win32"
        self.users: dict[int, str | None] = {}
        self.groups: dict[int, str | None] = {}
        self.lock = threading.Lock()
        if not ctx.is_live:
            self.users = self._read_file(ctx, "/etc/passwd", 7)
            self.groups = self._read_file(ctx, "/etc/group", 4)

    @staticmethod
    def _read_file(ctx: CollectContext, path: str, nfields: int) -> dict[int, str | None]:
        try:
            raw = ctx.path(path).read_bytes()
        except OSError:
            return {}
        names: dict[int, str | None] = {}
        for entry in parse_colon_file(raw, nfields):
            if entry.reason is None and entry.fields[2].isdigit():
                names.setdefault(int(entry.fields[2]), entry.fields[0] or None)
        return names

    def user(self, uid: int) -> str | None:
        return self._lookup(self.users, uid, True)

    def group(self, gid: int) -> str | None:
        return self._lookup(self.groups, gid, False)

    def _lookup(self, table: dict[int, str | None], ident: int, user: bool) -> str | None:
        if ident in table or not self.live:
            return table.get(ident)
        name: str | None = None
        if sys.platform != "win32":
            try:
                name = pwd.getpwuid(ident).pw_name if user else grp.getgrgid(ident).gr_name
            except (KeyError, OverflowError):
                name = None
        with self.lock:
            table[ident] = name
        return name


# --- expanding patterns ----------------------------------------------------------

class _Truncated(Exception):
    """The per-pattern match cap was reached."""


_MAGIC = frozenset(b"*?[")


def _is_magic(component: bytes) -> bool:
    return any(c in _MAGIC for c in component)


def _normalize(pattern: str) -> bytes | None:
    """The pattern as absolute host-path bytes, or None if it is not one."""
    raw = os.fsencode(pattern)
    if not raw.startswith(b"/") or b"\0" in raw:
        return None
    return b"/" + posixpath.normpath(raw).lstrip(b"/")


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + name if parent.endswith(b"/") else parent + b"/" + name


@dataclass
class _PatternOutcome:
    pattern: str
    matches: int = 0
    max_matches_reached: bool = False
    max_depth_reached: bool = False


class _Walker:
    """Expands patterns into host paths (bytes) under a root prefix."""

    def __init__(self, root: bytes, limits: Limits) -> None:
        self.root = root
        self.limits = limits
        self.found: set[bytes] = set()
        self.problems: dict[tuple[str, str], Record] = {}
        self.current = _PatternOutcome("")
        self.current_found: set[bytes] = set()  # this pattern's matches
        self.expanded: set[bytes] = set()  # this pattern's directories walked in full
        # Entries a walk may enter or match (a watch batch looks at a few paths):
        # None, every entry.
        self.keep: Callable[[bytes], bool] | None = None

    def fs(self, host_path: bytes) -> bytes:
        return self.root + host_path

    def expand(self, pattern: str, host_pattern: bytes) -> _PatternOutcome:
        self.current = _PatternOutcome(pattern)
        self.current_found = set()
        self.expanded = set()
        components = [c for c in host_pattern.split(b"/") if c]
        collapsed: list[bytes] = []
        for component in components:  # `**/**` is `**`
            if not (component == b"**" and collapsed and collapsed[-1] == b"**"):
                collapsed.append(component)
        try:
            self._expand(b"/", collapsed)
        except _Truncated:
            self.current.max_matches_reached = True
        self.current.matches = len(self.current_found)
        self.current_found, self.expanded = set(), set()
        return self.current

    def _expand(self, prefix: bytes, rest: list[bytes]) -> None:
        if not rest:
            self._match(prefix)
            return
        component, tail = rest[0], rest[1:]
        if component == b"**":
            if not os.path.isdir(self.fs(prefix)):  # `**` matches directories only
                return
            self._expand(prefix, tail)
            if tail:  # a trailing `**` is the directory itself, walked in full
                for directory in self._descendant_dirs(prefix):
                    self._expand(directory, tail)
        elif not _is_magic(component):
            child = _join(prefix, component)
            if tail:
                self._expand(child, tail)
            else:
                self._match_literal(child)
        else:
            for entry_path, is_dir in self._list(prefix, component):
                if not tail:
                    self._match(entry_path)
                elif is_dir:
                    self._expand(entry_path, tail)

    def _list(self, directory: bytes, component: bytes) -> Iterator[tuple[bytes, bool]]:
        """(path, is a directory - following symlinks, as a shell glob does in the
        middle of a pattern) for each entry of `directory` whose name matches."""
        try:
            with os.scandir(self.fs(directory)) as entries:
                found = [(_join(directory, e.name), e.is_dir())
                         for e in entries if fnmatch.fnmatchcase(e.name, component)]
            if self.keep is not None:
                found = [(p, d) for p, d in found if self.keep(p)]
        except FileNotFoundError:
            return
        except OSError as exc:
            self._unreadable(directory, exc)
            return
        yield from sorted(found)

    def _match_literal(self, host_path: bytes) -> None:
        try:
            os.lstat(self.fs(host_path))
        except FileNotFoundError:
            return
        except OSError as exc:  # ENOTDIR (a component is a file), EACCES, ELOOP
            self._unreadable(host_path, exc)
            return
        self._match(host_path)

    def _match(self, host_path: bytes) -> None:
        """A pattern match: itself, and everything under it if it is a directory."""
        self._add(host_path)
        if self._inside_expanded(host_path):
            return  # `/a/**/*` matches /a/b and /a/b/c: walk /a/b once
        try:
            is_dir = stat.S_ISDIR(os.lstat(self.fs(host_path)).st_mode)
        except OSError:
            return  # vanished: the describe step records it
        if is_dir:
            self.expanded.add(host_path)
            for _ in self._descendant_dirs(host_path, add_entries=True):
                pass

    def _inside_expanded(self, host_path: bytes) -> bool:
        if not self.expanded:
            return False
        path = host_path
        while True:
            if path in self.expanded:
                return True
            parent = posixpath.dirname(path)
            if parent == path:
                return False
            path = parent

    def _add(self, host_path: bytes) -> None:
        if host_path in self.current_found:
            return
        if len(self.current_found) >= self.limits.max_matches:
            raise _Truncated
        self.current_found.add(host_path)
        self.found.add(host_path)

    def _descendant_dirs(self, top: bytes, add_entries: bool = False) -> Iterator[bytes]:
        """Every directory below `top` (not `top`), breadth-first, never following a
        symlink, at most `max_depth` levels down; with `add_entries`, every entry
        below `top` is added as a match on the way."""
        level = [top]
        for depth in range(1, sys.maxsize):
            next_level: list[bytes] = []
            for directory in level:
                for child, is_dir in self._children(directory):
                    if add_entries:
                        self._add(child)
                    if not is_dir:
                        continue
                    if depth > self.limits.max_depth:
                        self.current.max_depth_reached = True
                        continue
                    yield child
                    next_level.append(child)
            if not next_level:
                return
            level = next_level

    def _children(self, directory: bytes) -> list[tuple[bytes, bool]]:
        try:
            with os.scandir(self.fs(directory)) as entries:
                children = [(_join(directory, e.name), e.is_dir(follow_symlinks=False))
                            for e in entries]
            if self.keep is not None:
                children = [(p, d) for p, d in children if self.keep(p)]
            return sorted(children)
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._unreadable(directory, exc)
            return []

    def _unreadable(self, host_path: bytes, exc: OSError) -> None:
        key = path_key(host_path)
        self.problems[(SOURCE_UNREADABLE_TYPE, key)] = _unreadable_record(key, exc)


# --- reading one regular file ----------------------------------------------------

class _Changed(Exception):
    """The file is not the one lstat saw, or its size changed while read."""


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
    | getattr(os, "O_CLOEXEC", 0)
_NOATIME = getattr(os, "O_NOATIME", 0)  # evidence collection should not touch atime
_buffers = threading.local()
# open() errors meaning the regular file lstat saw is gone: removed, or replaced by a
# symlink (O_NOFOLLOW) or a socket.
_REPLACED = frozenset({errno.ENOENT, errno.ELOOP, errno.ENXIO})


@dataclass
class _Read:
    """What reading a regular file gave: its digest (and bytes, when read for
    content), or why not."""

    digest: str | None = None
    raw: bytes | None = None
    error: OSError | None = None
    changed: bool = False
    opened: bool = False


def _open(path: bytes) -> int:
    if _NOATIME:
        try:
            return os.open(path, _OPEN_FLAGS | _NOATIME)
        except PermissionError:  # O_NOATIME needs ownership or CAP_FOWNER
            pass
    return os.open(path, _OPEN_FLAGS)


def _read_all(fd: int, size: int) -> bytes:
    """The whole file, which lstat said is `size` bytes; _Changed if it is not."""
    chunks: list[bytes] = []
    total = 0
    while total <= size:
        chunk = os.read(fd, size + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total != size:
        raise _Changed
    return b"".join(chunks)


def _hash_stream(fd: int, size: int) -> str:
    """Hex SHA-256 of exactly `size` bytes, read in 1 MiB chunks; _Changed if the
    file is shorter or longer (one more read, so a growing file cannot keep us)."""
    buffer: bytearray | None = getattr(_buffers, "buffer", None)
    if buffer is None:
        buffer = _buffers.buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    digest = hashlib.sha256()
    total = 0
    while total < size:
        count = os.readv(fd, [view[:min(_CHUNK, size - total)]])
        if count == 0:
            raise _Changed
        digest.update(view[:count])
        total += count
    if os.read(fd, 1):
        raise _Changed
    return digest.hexdigest()


def _read_regular(fs_path: bytes, st: os.stat_result, for_content: bool) -> _Read:
    """Open without following a symlink or blocking on a FIFO, check that the open
    file is the regular file lstat saw (TOCTOU), then read it whole (for content)
    or stream it through SHA-256. Never raises an OSError."""
    try:
        fd = _open(fs_path)
    except OSError as exc:
        if exc.errno in _REPLACED:
            return _Read(changed=True)
        return _Read(error=exc)
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or \
                (after.st_dev, after.st_ino) != (st.st_dev, st.st_ino):
            raise _Changed
        if for_content:
            raw = _read_all(fd, st.st_size)
            return _Read(hashlib.sha256(raw).hexdigest(), raw, opened=True)
        return _Read(_hash_stream(fd, st.st_size), opened=True)
    except _Changed:
        return _Read(changed=True, opened=True)
    except OSError as exc:  # EIO and the like, mid-read
        return _Read(error=exc, opened=True)
    finally:
        os.close(fd)


# --- describing one path ---------------------------------------------------------

@dataclass
class _Outcome:
    """One path's record data, or the problem record that replaces it, and what
    reading it cost. `pending` is a hash still running in the pool."""

    key: str
    data: dict[str, Any] | None
    problem: Record | None = None
    cache_key: str | None = None
    cache_hit: bool = False
    opened: bool = False
    pending: Future[_Read] | None = None
    deferred: bool = False  # not hashed this run: over the hash_rate budget


class _Describer:
    """Turns host paths into `file` record data, in path order on the calling
    thread; large files are hashed in the pool, where the GIL is not held."""

    def __init__(self, root: bytes, settings: _Settings, names: _Names,
                 cache: HashCache, pool: ThreadPoolExecutor | None,
                 cache_before_ns: int) -> None:
        self.root = root
        self.cache_before_ns = cache_before_ns
        self.settings = settings
        self.names = names
        self.cache = cache
        self.pool = pool

    def describe(self, host_path: bytes) -> _Outcome:
        key = path_key(host_path)
        fs_path = self.root + host_path
        try:
            st = os.lstat(fs_path)
        except FileNotFoundError:  # removed since the walk
            return _Outcome(key, None, Record(NAME, SOURCE_MISSING_TYPE, key, {"path": key}))
        except OSError as exc:
            return _Outcome(key, None, _unreadable_record(key, exc))
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "other")
        data: dict[str, Any] = {
            "path": text_or_b64(host_path),
            "kind": kind,
            "size": _safe_int(st.st_size),
            "mode": f"{stat.S_IMODE(st.st_mode):04o}",
            "uid": st.st_uid,
            "gid": st.st_gid,
            "owner": self.names.user(st.st_uid),
            "group": self.names.group(st.st_gid),
            "mtime": _time_ns(st.st_mtime_ns),
            "inode": str(st.st_ino),
            "device": str(st.st_dev),
            "sha256": None,
            "hash_omitted_reason": None,
            "symlink_target": None,
            "content": None,
            "content_redactions": 0,
            "content_omitted_reason": None,
            "secret_file_rule": None,
        }
        outcome = _Outcome(key, data)
        if kind == "symlink":
            try:
                data["symlink_target"] = text_or_b64(os.readlink(fs_path))
            except OSError as exc:
                outcome.problem = _unreadable_record(key, exc)
        elif kind == "file":
            # fsdecode, not the key: a `.pgpass` under a non-UTF-8 directory is one too
            data["secret_file_rule"] = secret_file_rule(os.fsdecode(host_path))
            self._regular(fs_path, st, data, outcome)
        return outcome

    def _regular(self, fs_path: bytes, st: os.stat_result, data: dict[str, Any],
                 outcome: _Outcome) -> None:
        size = st.st_size
        rule = data["secret_file_rule"]
        omitted = "over_cap" if rule is None else "secret_file"
        if size > self.settings.hash_max_bytes:  # never opened: bounded time and memory
            data["hash_omitted_reason"] = "over_hash_cap"
            data["content_omitted_reason"] = omitted
            return
        if size <= self.settings.content_max_bytes and rule is None:
            if self._may_hash(size, data, outcome):
                _finish_read(outcome, _read_regular(fs_path, st, for_content=True))
            return
        data["content_omitted_reason"] = omitted
        if st.st_ctime_ns < self.cache_before_ns:
            outcome.cache_key = file_identity(st)
        cached = self.cache.lookup(outcome.cache_key) if outcome.cache_key else None
        if cached is not None:
            data["sha256"] = cached
            outcome.cache_hit = True
        elif not self._may_hash(size, data, outcome):
            outcome.cache_key = None
        elif self.pool is not None and size >= _POOL_MIN_BYTES:
            outcome.pending = self.pool.submit(_read_regular, fs_path, st, False)
        else:
            _finish_read(outcome, _read_regular(fs_path, st, for_content=False))

    def _may_hash(self, size: int, data: dict[str, Any], outcome: _Outcome) -> bool:
        """Wait for this file's turn under `hash_rate`; False (recorded as not hashed,
        `hash_rate`) when the turn would come too late for this run."""
        budget = self.settings.budget
        if budget is None or budget.take(size, self.settings.wait_until):
            return True
        data["hash_omitted_reason"] = HASH_RATE_REASON
        if data["content_omitted_reason"] is None:
            data["content_omitted_reason"] = HASH_RATE_REASON
        outcome.deferred = True
        return False


def _unreadable_record(key: str, exc: OSError) -> Record:
    return Record(NAME, SOURCE_UNREADABLE_TYPE, key, {"path": key, "reason": os_reason(exc)})


def _finish_read(outcome: _Outcome, read: _Read) -> None:
    """Fill a regular file's hash and content fields from what reading it gave."""
    data = outcome.data
    assert data is not None
    outcome.opened = read.opened  # not `read` itself: its bytes must not outlive this
    if read.digest is not None:
        data["sha256"] = read.digest
        if read.raw is not None:
            _set_content(read.raw, data)
        return
    outcome.cache_key = None
    reason = "unreadable" if read.error is not None else "changed_during_read"
    data["hash_omitted_reason"] = reason
    if data["content_omitted_reason"] is None:
        data["content_omitted_reason"] = reason
    if read.error is not None:
        outcome.problem = _unreadable_record(outcome.key, read.error)


def _set_content(raw: bytes, data: dict[str, Any]) -> None:
    if is_private_key_content(raw):  # a key under any name: never captured
        data["content_omitted_reason"] = "secret_file"
        data["secret_file_rule"] = PRIVATE_KEY_CONTENT
        return
    if b"\0" in raw:
        data["content_omitted_reason"] = "binary"
        return
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        data["content_omitted_reason"] = "binary"
        return
    data["content"], data["content_redactions"] = scrub_text(text)


# --- the run ---------------------------------------------------------------------

def _expand_patterns(ctx: CollectContext, limits: Limits,
                     under: Scope | None = None) -> tuple[_Walker, list[Record]]:
    walker = _Walker(os.fsencode(ctx.root).rstrip(b"/"), limits)
    if under is not None and under.under is not None and b"/" not in under.under:
        on_the_way = {a for u in under.under for a in _ancestors(u)}
        walker.keep = lambda path: path in on_the_way or path in under
    records: list[Record] = []
    for pattern in dict.fromkeys(_patterns(ctx)):
        host_pattern = _normalize(pattern)
        if host_pattern is None:
            records.append(Record(NAME, "no_match", pattern,
                                  {"pattern": pattern, "reason": "not an absolute path"}))
            continue
        records += _pattern_records(walker.expand(pattern, host_pattern), limits)
    return walker, records


def _describe_all(ctx: CollectContext, settings: _Settings, paths: list[bytes],
                  cache: HashCache, limits: Limits, root: bytes) -> list[_Outcome]:
    names = _Names(ctx)
    cache_before_ns = time.time_ns() - limits.racy_ns
    if limits.threads <= 1:
        describer = _Describer(root, settings, names, cache, None, cache_before_ns)
        return [describer.describe(p) for p in paths]
    with ThreadPoolExecutor(max_workers=limits.threads,
                            thread_name_prefix="gamsa-files-hash") as pool:
        describer = _Describer(root, settings, names, cache, pool, cache_before_ns)
        outcomes = [describer.describe(p) for p in paths]
        for outcome in outcomes:
            if outcome.pending is not None:
                _finish_read(outcome, outcome.pending.result())
                outcome.pending = None
    return outcomes


@dataclass
class Observation:
    """The current state of the configured paths (all, or those under some paths).

    `files`: `file` record data by key for each matched path in scope; `problems`:
    records of paths in scope that could not be described; `complete`: no pattern
    was truncated, so a path missing from `files` is really gone.
    """

    under: list[bytes] | None
    files: dict[str, dict[str, Any]]
    problems: list[Record]
    pattern_records: list[Record]
    stats: ScanStats
    complete: bool


def _ancestors(host_path: bytes) -> Iterator[bytes]:
    """Every directory above `host_path`, up to "/"."""
    path = host_path
    while True:
        parent = posixpath.dirname(path)
        if parent == path:
            return
        yield parent
        path = parent


class Scope:
    """Host paths equal to or below any of `under` (None: every path); a lookup costs
    one set probe per ancestor, however many paths `under` holds."""

    def __init__(self, under: list[bytes] | None) -> None:
        self.under = None if under is None else \
            frozenset(u.rstrip(b"/") or b"/" for u in under)

    def __contains__(self, host_path: bytes) -> bool:
        if self.under is None or b"/" in self.under:
            return True
        path = host_path
        while path not in self.under:
            parent = posixpath.dirname(path)
            if parent == path:
                return False
            path = parent
        return True


def observe(ctx: CollectContext, under: list[bytes] | None = None,
            limits: Limits | None = None) -> Observation:
    """Expand every configured pattern and describe the matches equal to or below one
    of `under` (host paths; None: every match). The expansion is the one `scan`
    does, so a watcher and a sweep agree on what is covered."""
    limits = limits or Limits()
    settings = _Settings(_int_option(ctx, CONTENT_MAX_BYTES), _int_option(ctx, HASH_MAX_BYTES),
                         budget_for(_int_option(ctx, HASH_RATE)),
                         wait_bound(ctx.deadline, time.monotonic()))
    scope = Scope(under)
    walker, pattern_records = _expand_patterns(ctx, limits, scope)
    paths = sorted(p for p in walker.found if p in scope)
    cache = HashCache.under(ctx.state_dir, CACHE_FILE)
    outcomes = _describe_all(ctx, settings, paths, cache, limits, walker.root)

    stats = ScanStats(matches=len(walker.found))
    files: dict[str, dict[str, Any]] = {}
    problems = {k: r for k, r in walker.problems.items() if key_path(r.key) in scope}
    deferred = sum(outcome.deferred for outcome in outcomes)
    if deferred:
        gap = coverage_gap(NAME, "sha256", f"{HASH_RATE_REASON}: deferred to a later run",
                           deferred)
        problems[(gap.type, gap.key)] = gap
    for outcome in outcomes:
        if outcome.data is not None:
            files[outcome.key] = outcome.data
        if outcome.problem is not None:
            problems[(outcome.problem.type, outcome.problem.key)] = outcome.problem
        if outcome.cache_key is not None and outcome.data is not None:
            cache.put(outcome.cache_key, outcome.data["sha256"])
        stats.cache_hits += outcome.cache_hit
        if outcome.opened:
            stats.files_read += 1
            stats.bytes_read += outcome.data["size"] if outcome.data else 0
    with contextlib.suppress(OSError):  # a cache not written costs time, not evidence
        cache.save(prune=under is None)
    complete = not any(r.type == "truncated" for r in pattern_records)
    return Observation(under, files, [problems[k] for k in sorted(problems)],
                       pattern_records, stats, complete)


def scan(ctx: CollectContext, limits: Limits | None = None) -> ScanResult:
    """Records for every configured pattern, and what producing them cost.

    Also the `file_change` records of what differs from the last sealed baseline
    (`detected_by` `sweep`), and the new baseline proposed as this collector's
    checkpoint, so it moves exactly when the bundle is sealed."""
    observation = observe(ctx, None, limits)
    now = _time_ns(time.time_ns()) or ""
    records = [Record(NAME, "file", key, data, now) for key, data in observation.files.items()]
    diff = changes(observation, ctx.checkpoint(NAME), "sweep")
    if diff.checkpoint is not None:
        ctx.set_checkpoint(NAME, diff.checkpoint)
    return ScanResult(records + observation.problems + observation.pattern_records
                      + [r for r in diff.records if r.type == CHANGE_TYPE],
                      observation.stats)


# --- the baseline and what changed since it was sealed ----------------------------

CHANGE_TYPE = "file_change"
BASELINE_VERSION = 1
# What a `file_change` compares: the `file` record fields that say the file is
# another one (content, type, owner, permissions, identity); not the content text
# (its hash says it) nor names looked up from ids.
BASELINE_FIELDS = ("kind", "sha256", "size", "mode", "uid", "gid", "mtime", "inode",
                   "device", "symlink_target")
DETECTED_BY = ("sweep", "watch", "rescan")


@dataclass
class Changes:
    """Records of what differs from a baseline, and the baseline after them."""

    records: list[Record]
    checkpoint: dict[str, Any] | None  # None: nothing to propose (no baseline, a part)
    changed: int


def key_path(key: str) -> bytes:
    """The host path a record key stands for (inverse of `path_key`)."""
    if key.startswith("b64:"):
        return base64.b64decode(key[4:])
    return key.encode("utf-8")


_DIR_IGNORED = (BASELINE_FIELDS.index("size"), BASELINE_FIELDS.index("mtime"))
_SHA256 = BASELINE_FIELDS.index("sha256")


def _hash_skipped(data: dict[str, Any]) -> bool:
    """A regular file whose hash is missing for a passing reason (unreadable this
    time, changed while read, any later cap on hashing), not because it is over
    `hash_max_bytes` for good: its hash is not a change, and the last known one
    stays in the baseline until it is read again."""
    return data["kind"] == "file" and data["sha256"] is None \
        and data["hash_omitted_reason"] not in (None, "over_hash_cap")


def _compared(entry: list[Any] | None) -> list[Any] | None:
    """What counts as a change: a directory's mtime and size move with every entry
    made or removed in it, and those entries are reported themselves."""
    if entry is None or entry[0] != "dir":
        return entry
    return [None if i in _DIR_IGNORED else v for i, v in enumerate(entry)]


# The baseline is one string in the checkpoint, a line per path: the JSON string of
# its key, a tab, the JSON array of its BASELINE_FIELDS values. The checkpoint file
# is decoded and encoded again with every bundle that moves any checkpoint; as one
# string, 10,000 paths cost milliseconds there instead of a quarter of a second,
# and only the lines of the paths looked at are parsed.

def _line(key: str, values: list[Any]) -> str:
    return (json.dumps(key, ensure_ascii=False) + "\t"
            + json.dumps(values, ensure_ascii=False, separators=(",", ":")))


def _values(line: str) -> list[Any]:
    values: list[Any] = json.loads(line.partition("\t")[2])
    return values


def baseline_of(checkpoint: Any) -> dict[str, str] | None:
    """Path key -> its baseline line, from the collector's checkpoint; None when
    there is none or it is of another form (then nothing is reported as changed)."""
    if not isinstance(checkpoint, dict) or checkpoint.get("v") != BASELINE_VERSION \
            or checkpoint.get("fields") != list(BASELINE_FIELDS) \
            or not isinstance(checkpoint.get("paths"), str):
        return None
    baseline: dict[str, str] = {}
    for line in checkpoint["paths"].split("\n"):
        head, tab, _ = line.partition("\t")
        if not tab or len(head) < 2:
            continue  # only an empty baseline has no line
        key = json.loads(head) if "\\" in head else head[1:-1]
        baseline[key] = line
    return baseline


def baseline_values(checkpoint: Any) -> dict[str, dict[str, Any]]:
    """The baseline as path key -> {field: value} (for tests and tools; slow)."""
    return {k: dict(zip(BASELINE_FIELDS, _values(v), strict=True))
            for k, v in (baseline_of(checkpoint) or {}).items()}


def _keys_in_scope(keys: dict[str, Any], under: list[bytes] | None) -> list[str]:
    """The keys of `keys` whose paths are in `Scope(under)`, without testing every key
    when `under` is a few paths (a watch batch against a baseline of thousands)."""
    if under is None:
        return list(keys)
    scope = Scope(under)
    odd = [k for k in keys if k.startswith("b64:")]  # rare: names that are not UTF-8
    found = [k for k in odd if key_path(k) in scope]
    ordered = sorted(keys)
    for prefix in sorted(scope.under or ()):
        text = path_key(prefix)
        if text.startswith("b64:"):
            continue
        start = bisect.bisect_left(ordered, text)
        for key in ordered[start:]:
            if not key.startswith(text):
                break
            if key == text or key[len(text)] == "/" or text == "/":
                found.append(key)
    return found


def changes(observation: Observation, checkpoint: Any, detected_by: str) -> Changes:
    """Compare an observation with the baseline in `checkpoint`.

    Within the observation's scope, a path that appeared, vanished or whose
    BASELINE_FIELDS differ gives its `file` record (when present) and a
    `file_change` record; outside it the baseline is kept as it was. A path that
    could not be described keeps its baseline (its problem record says why), and
    nothing is called removed when a pattern was truncated. Without a baseline
    (first run) nothing is reported and the observation becomes the baseline.
    """
    baseline = baseline_of(checkpoint)
    first = baseline is None
    baseline = baseline or {}
    updated = dict(baseline)
    unreadable = {r.key for r in observation.problems}
    now = _time_ns(time.time_ns()) or ""
    records: list[Record] = []
    scope = set(observation.files)
    if observation.complete:
        scope.update(_keys_in_scope(baseline, observation.under))
    changed = 0
    for key in sorted(scope - unreadable):
        data = observation.files.get(key)
        line = baseline.get(key)
        before = None if line is None else _values(line)
        after = None if data is None else [data[f] for f in BASELINE_FIELDS]
        if data is not None and after is not None and _hash_skipped(data):  # keep the
            after[_SHA256] = None if before is None else before[_SHA256]  # last hash
        if after is None:
            updated.pop(key, None)
        else:
            updated[key] = _line(key, after)
        old, new = _compared(before), _compared(after)
        if first or old == new:
            continue
        changed += 1
        if data is not None:
            records.append(Record(NAME, "file", key, data, now))
        fields = [f for i, f in enumerate(BASELINE_FIELDS)
                  if old is not None and new is not None and old[i] != new[i]]
        records.append(Record(NAME, CHANGE_TYPE, key, {
            "path": text_or_b64(key_path(key)),
            "change": "created" if before is None else "removed" if after is None
            else "modified",
            "changed_fields": sorted(fields),
            "detected_by": detected_by,
            "previous": None if before is None else dict(zip(BASELINE_FIELDS, before,
                                                             strict=True)),
            "sha256": None if data is None else data["sha256"],
        }, now))
    if detected_by != "sweep":  # a sweep has them already
        records += observation.problems
    # A first baseline must cover everything, else the rest would later read as created.
    proposed = None if first and observation.under is not None else \
        {"v": BASELINE_VERSION, "fields": list(BASELINE_FIELDS),
         "paths": "\n".join(updated.values())}
    return Changes(records, proposed, changed)


def _pattern_records(outcome: _PatternOutcome, limits: Limits) -> list[Record]:
    records = []
    if outcome.matches == 0:
        records.append(Record(NAME, "no_match", outcome.pattern,
                              {"pattern": outcome.pattern, "reason": "nothing matched"}))
    reasons = [name for name, hit in (("max_matches", outcome.max_matches_reached),
                                      ("max_depth", outcome.max_depth_reached)) if hit]
    if reasons:
        records.append(Record(NAME, "truncated", outcome.pattern,
                              {"pattern": outcome.pattern, "reasons": reasons,
                               "max_matches": limits.max_matches,
                               "max_depth": limits.max_depth}))
    return records


def collect(ctx: CollectContext) -> list[Record]:
    return scan(ctx).records


HASH_RATE_REASON = "hash_rate"
_NONE = type(None)
_PATTERN_DOC = "the configured pattern, as written"

COLLECTOR = Collector(
    name=NAME,
    version="3",
    description="Configured files and globs (`paths`; default: sshd, sudoers, PAM, "
                "login.defs, security limits, resolver and hosts, nftables, environment "
                "and proxy settings, nginx and gamsa configs, audit rules, time sync, "
                "crypttab): metadata from lstat, SHA-256 of regular files (cached across "
                "runs by device, inode, size, mtime and ctime), and the content of small "
                "text files with secrets scrubbed. `*`, `?`, `[...]` match within a "
                "component (dotfiles too), `**` any number of directories; a matched "
                "directory means itself and everything under it. Symlinks are recorded, "
                "never followed; FIFOs, sockets and devices are recorded, never opened. "
                "Each run compares every path with the state last sealed (the baseline, kept "
                "as this collector's checkpoint) and adds a `file_change` record for each "
                "difference; `gamsa agent run` also watches the paths and seals a change "
                "in a `file-change` bundle within about a second (docs/DESIGN.md, "
                "\"Agent (daemon)\").",
    platforms=("linux", "darwin"),
    options=(PATHS, CONTENT_MAX_BYTES, HASH_MAX_BYTES, HASH_RATE, WATCH, DEBOUNCE),
    record_types={
        "file": RecordType(
            doc="One path matched by a configured pattern.",
            key="the absolute path on the host; `b64:<base64>` of the raw bytes when the "
                "name is not UTF-8",
            fields={
                "path": Field((str, dict), "the absolute path; `{b64}` when not UTF-8"),
                "kind": Field((str,), "`file`, `dir`, `symlink`, `fifo`, `socket`, "
                                      "`char_device`, `block_device` or `other` (from "
                                      "lstat: a symlink is never followed)"),
                "size": Field((int, str), "size in bytes from lstat (a decimal string if "
                                          "above 2^53-1, as a sparse file can be)"),
                "mode": Field((str,), "permission bits in octal, with setuid/setgid/"
                                      "sticky, e.g. `0644`, `4755`"),
                "uid": Field((int,), "owner uid"),
                "gid": Field((int,), "group gid"),
                "owner": Field((str, _NONE), "owner name (live: the system's user "
                                             "database; fixture: the root's /etc/passwd); "
                                             "null if unknown", personal=True),
                "group": Field((str, _NONE), "group name (as `owner`, from /etc/group); "
                                             "null if unknown"),
                "mtime": Field((str, _NONE), "modification time, RFC 3339 UTC; null if "
                                             "outside the years 1-9999"),
                "inode": Field((str,), "inode number (a string: it can exceed 2^53)"),
                "device": Field((str,), "device id (a string: it can exceed 2^53)"),
                "sha256": Field((str, _NONE), "hex SHA-256 of a regular file's bytes; null "
                                              "for other kinds and when "
                                              "`hash_omitted_reason` is set"),
                "hash_omitted_reason": Field((str, _NONE),
                                             "why a regular file has no hash: "
                                             "`over_hash_cap` (larger than "
                                             "`hash_max_bytes`, default 1 GiB: not read at "
                                             "all), `unreadable` (see the "
                                             "`source_unreadable` record), "
                                             "`changed_during_read` (replaced, or its size "
                                             "changed, between lstat and the end of the "
                                             "read), `hash_rate` (its turn under "
                                             "`hash_rate` would have come too late for "
                                             "this run: hashed by a later one); null "
                                             "otherwise"),
                "symlink_target": Field((str, dict, _NONE),
                                        "a symlink's target as stored (readlink, never "
                                        "followed); `{b64}` when not UTF-8; null for "
                                        "other kinds"),
                "content": Field((str, _NONE),
                                 "the text of a regular file of at most "
                                 "`content_max_bytes` that is valid UTF-8 without NUL "
                                 "bytes, secrets replaced by `[REDACTED:<kind>]` (see "
                                 "Secret scrubbing); null otherwise"),
                "content_redactions": Field((int,), "secrets replaced in `content` (0 when "
                                                    "there is no content)"),
                "content_omitted_reason": Field((str, _NONE),
                                                "why a regular file has no content: "
                                                "`over_cap` (larger than "
                                                "`content_max_bytes`: never read for "
                                                "content), `binary` (not UTF-8, or has a "
                                                "NUL byte), `secret_file` (secret by "
                                                "nature: see `secret_file_rule`), "
                                                "`unreadable`, `changed_during_read`, "
                                                "`hash_rate`; null "
                                                "when content is captured or the path is "
                                                "not a regular file"),
                "secret_file_rule": Field((str, _NONE),
                                          "for a regular file never captured because it "
                                          "is secret by nature (shadow, keys, credential "
                                          "stores), the rule that matched: a glob of "
                                          "Secret scrubbing's file list, or `content: a "
                                          "PEM private key`; its hash and metadata are "
                                          "still recorded. Null otherwise"),
            },
        ),
        CHANGE_TYPE: RecordType(
            event=True,
            removes="file",
            doc="A path whose state differs from the one last sealed (the baseline: "
                "kept as this collector's checkpoint, so it moves exactly when a bundle "
                "is sealed). Beside it, the path's new `file` record (none when "
                "removed). Emitted by every full run against the last sealed state (in "
                "`gamsa agent run`'s start sweep: a change made while the agent was "
                "stopped) and by the daemon's file watching in `file-change` bundles. "
                "A first run, with no baseline, reports none. A hash missing for a "
                "passing reason (`hash_omitted_reason` other than `over_hash_cap`) is "
                "not a change: the last known hash stays in the baseline until the "
                "file is read again.",
            key="the path, as in `file`",
            fields={
                "path": Field((str, dict), "the absolute path; `{b64}` when not UTF-8"),
                "change": Field((str,), "`created` (not in the baseline), `modified` "
                                        "or `removed` (no longer there or no longer "
                                        "matched)"),
                "changed_fields": Field((list,), "for `modified`, the `file` fields that "
                                        "differ (a directory's `mtime` and `size` are "
                                        "not compared: its entries are): of "
                                        + ", ".join(f"`{f}`" for f in BASELINE_FIELDS)
                                        + " (an `inode` change is a replaced file: "
                                          "rename-over, editor save); else empty"),
                "detected_by": Field((str,), "`sweep` (a full run compared every path), "
                                             "`watch` (a file event), `rescan` (a rescan "
                                             "after `watch_overflow` or `watch_limit`)"),
                "previous": Field((dict, _NONE), "the baseline fields last sealed (" +
                                  ", ".join(f"`{f}`" for f in BASELINE_FIELDS) +
                                  "); null for `created`"),
                "sha256": Field((str, _NONE), "the new SHA-256, as in the `file` record; "
                                              "null when removed or not hashed"),
            },
        ),
        "watch_overflow": RecordType(
            event=True,
            doc="File watching lost events (the kernel's inotify queue overflowed: "
                "`fs.inotify.max_queued_events`), so every configured path was rescanned "
                "and compared with the baseline; the `file_change` records beside it "
                "(`detected_by` `rescan`) are what changed. Emitted by `gamsa agent run`.",
            key="`inotify`",
            fields={
                "reason": Field((str,), "what was lost and why"),
                "rescanned": Field((int,), "paths described by the rescan"),
                "changed": Field((int,), "paths found changed by the rescan"),
            },
        ),
        "watch_limit": RecordType(
            event=True,
            doc="A directory that could not be watched with inotify (the watch or "
                "instance limit: `fs.inotify.max_user_watches`, "
                "`max_user_instances`), so it is polled instead, after a rescan of what "
                "lies under it. Emitted by `gamsa agent run`.",
            key="the directory's path",
            fields={
                "path": Field((str, dict), "the directory; `{b64}` when not UTF-8"),
                "reason": Field((str,), "the error, e.g. `inotify watch limit reached "
                                        "(ENOSPC)`"),
                "poll_seconds": Field((int,), "how often it is polled instead"),
                "rescanned": Field((int,), "paths under it described by the rescan"),
                "changed": Field((int,), "paths under it found changed by the rescan"),
            },
        ),
        "no_match": RecordType(
            doc="A configured pattern that matched nothing, so an auditor sees that an "
                "expected file is absent.",
            key="the pattern",
            fields={
                "pattern": Field((str,), _PATTERN_DOC),
                "reason": Field((str,), "`nothing matched`, or `not an absolute path` for a "
                                        "pattern that was not expanded"),
            },
        ),
        "truncated": RecordType(
            doc="A pattern whose expansion stopped at a limit; the matches before it are "
                "recorded.",
            key="the pattern",
            fields={
                "pattern": Field((str,), _PATTERN_DOC),
                "reasons": Field((list,), "`max_matches` (more matches than `max_matches`) "
                                          "and/or `max_depth` (directories deeper than "
                                          "`max_depth` levels below a `**` or a matched "
                                          "directory were not entered)"),
                "max_matches": Field((int,), "the per-pattern match limit"),
                "max_depth": Field((int,), "the directory depth limit"),
            },
        ),
    },
    collect=collect,
)
