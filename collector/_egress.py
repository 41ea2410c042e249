"""The AI-egress watcher's core: poll the socket tables, coalesce, persist, cut.

The daemon (agent/egress.py) runs `EgressWatcher.poll` every `watch_interval` in
a thread; the `ai_egress` collector (collector/ai_egress.py) drains what it left.
No thread here, so tests drive it poll by poll.

Observations are coalesced per (process, endpoint) into the *open window*, kept in
`<state_dir>/egress/open.json` (rewritten atomically at most every PERSIST_EVERY
seconds, and at a cut). A new connection is made durable at once by appending its
observation to `open.log` (one JSON line, fdatasync): rewriting open.json each time
(a new file, fsync, rename over) cost 1.3-1.7 ms of CPU, an append 0.07 ms
(docs/BENCHMARKS.md). `read_open` replays the journal over open.json; it is emptied
whenever open.json is rewritten. `cut()` closes the window as
`batch-<n>.json` (create-only) and opens window n+1; batch numbers are contiguous,
so the collector's checkpoint (the last batch sealed) says exactly what was sealed.
A crash loses nothing: a leftover open.json is closed as a batch at the next start
(or dropped when its batch already exists: the crash came between the two writes).

Connections: a row is one connection by its ends and inode, counted once: in the
window where it was first seen (`count`), and as `continued` in later ones. The kernel keeps a
closed connection in TIME_WAIT (about 60 s) with inode 0 and no process; such a
row continues the connection of the same ends seen in the previous poll (so the
TIME_WAIT row of a call seen while open is not counted twice and keeps its
process), else it is a new connection whose process is unknown (`closed`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

from collector._endpoints import (
    Matcher,
    build_matcher,
    hosts_names,
    parse_endpoints,
    parse_hosts,
)
from collector._hashcache import HashCache
from collector._linux import lines
from collector._proc import as_text, exe_hash_cache, process_identity, process_key
from collector._socktable import (
    PROC,
    TABLES,
    DestroyEvents,
    Row,
    TableReader,
    destroy_filter,
    socket_owners,
)
from collector.record import utc_now
from collector.scrub import scrub_argv

EGRESS_DIR = "egress"
OPEN_FILE = "open.json"
JOURNAL_FILE = "open.log"  # new connections since open.json was written, one line each
BATCH_PREFIX = "batch-"
RESOLVE_EVERY = 300.0  # seconds between re-resolutions of the endpoint host names
PERSIST_EVERY = 30.0  # seconds: last_seen-only changes are written at most this often
REMOTES_MAX = 32  # distinct remote ends kept per observation
HOSTS = "/etc/hosts"

# Why an observation has no process.
CLOSED = "closed"  # first seen with inode 0 (TIME_WAIT...): the kernel keeps no owner
DENIED = "denied"  # the owner's fds may not be listed (not root)
GONE = "gone"  # the socket or its process was gone by the time it was looked up


def batch_name(number: int) -> str:
    return f"{BATCH_PREFIX}{number:010d}.json"


def batch_numbers(directory: Path) -> list[int]:
    """The numbers of the closed windows in `directory`, ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        digits = name[len(BATCH_PREFIX):-len(".json")]
        if name.startswith(BATCH_PREFIX) and name.endswith(".json") and digits.isdigit():
            found.append(int(digits))
    return sorted(found)


def _write_file(path: Path, data: bytes, replace: bool) -> bool:
    """Durably write `path` (temp, fsync, rename or link, dir fsync). With `replace`
    False an existing file is kept and False returned."""
    temp = path.parent / f".tmp-{secrets.token_hex(6)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(temp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


@dataclass
class Observation:
    """Connections of one process to one endpoint within a window."""

    endpoint: str  # the first matching entry in normal form
    matched: list[str]  # every matching entry as configured
    process: dict[str, Any] | None  # process_identity() plus a scrubbed cmdline
    process_unknown_reason: str | None
    socket_uid: int | None  # from the table (closed rows have none)
    first_seen: str
    last_seen: str
    states: list[str] = field(default_factory=list)
    remotes: list[str] = field(default_factory=list)
    count: int = 0  # connections first seen in this window
    continued: int = 0  # connections first seen in an earlier window, seen in this one


@dataclass
class Window:
    """One window of watching: what was seen between `started` and `ended`."""

    number: int
    started: str
    ended: str | None = None
    polls: int = 0
    interval_seconds: int = 0
    endpoints: list[dict[str, Any]] = field(default_factory=list)  # {entry, addresses}
    owner_denied: int = 0  # connections whose owner could not be looked for (not root)
    read_errors: list[str] = field(default_factory=list)
    source: str = ""  # sock_diag | proc, and why not sock_diag
    observations: dict[str, Observation] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Window:
        observations = {k: Observation(**v) for k, v in data["observations"].items()}
        return Window(**{**data, "observations": observations})


def read_window(path: Path) -> Window | None:
    """A window file, or None when it is absent or unreadable as one."""
    try:
        return Window.from_dict(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _merge_observation(into: Observation, other: Observation) -> None:
    """Fold `other` (an earlier or later state of the same observation) into `into`:
    every field only grows within a window, so the union is the latest state."""
    into.first_seen = min(into.first_seen, other.first_seen)
    into.last_seen = max(into.last_seen, other.last_seen)
    into.states = sorted(set(into.states) | set(other.states))
    into.remotes = sorted(set(into.remotes) | set(other.remotes))[:REMOTES_MAX]
    into.count = max(into.count, other.count)
    into.continued = max(into.continued, other.continued)


def read_open(directory: Path) -> Window | None:
    """The open window: open.json with the journal's observations of that window
    replayed over it (a line cut by a crash is ignored: it was never synced)."""
    window = read_window(directory / OPEN_FILE)
    if window is None:
        return None
    try:
        journal = (directory / JOURNAL_FILE).read_bytes()
    except OSError:
        return window
    for line in journal.splitlines():
        try:
            entry = json.loads(line)
            if entry["window"] != window.number:
                continue  # a window already closed as a batch
            observation = Observation(**entry["observation"])
            window.owner_denied = max(window.owner_denied, int(entry["owner_denied"]))
            window.read_errors += [e for e in entry["read_errors"]
                                   if e not in window.read_errors]
        except (ValueError, TypeError, KeyError):
            continue
        known = window.observations.get(entry["key"])
        if known is None:
            window.observations[entry["key"]] = observation
        else:
            _merge_observation(known, observation)
    return window


@dataclass
class _Conn:
    """A connection seen in the last poll, with what its observation needs."""

    key: str  # its Observation's key: endpoint and process
    window: int  # the window where it was first seen
    endpoint: str
    matched: list[str]
    process: dict[str, Any] | None
    reason: str | None
    socket_uid: int | None
    counted_in: int = 0  # the window whose observation lists it already

    def observation(self, seen_at: str) -> Observation:
        return Observation(self.endpoint, list(self.matched), self.process, self.reason,
                           self.socket_uid, seen_at, seen_at)


def _ends(row: Row) -> str:
    local = f"[{row.local_address}]" if ":" in row.local_address else row.local_address
    remote = f"[{row.remote_address}]" if ":" in row.remote_address else row.remote_address
    return f"{local}:{row.local_port}>{remote}:{row.remote_port}"


def _remote(row: Row) -> str:
    address = row.remote_address
    return f"[{address}]:{row.remote_port}" if ":" in address else f"{address}:{row.remote_port}"


class EgressWatcher:
    """Polls the tables for AI endpoints and keeps the open window on disk."""

    def __init__(self, state_dir: Path, ai_endpoints: Sequence[str], interval: int,
                 proc: str = PROC, hosts_file: str = HOSTS,
                 clock: Callable[[], float] = time.monotonic, netlink: bool = True,
                 destroy_events: bool = False) -> None:
        self.directory = state_dir / EGRESS_DIR
        self.endpoints, _invalid = parse_endpoints(list(ai_endpoints))
        self.interval = interval
        self.proc = proc
        self.hosts_file = hosts_file
        self.clock = clock
        self.hashes: HashCache = exe_hash_cache(state_dir)
        self.matcher: Matcher | None = None
        self.reader = TableReader(proc, netlink)
        # Sockets as they are destroyed (`take_destroyed`), for the daemon's thread: a
        # call the server closes first leaves no TIME_WAIT row here and can fall
        # between two polls. None: not asked for, or refused (`destroy_refused` why).
        self.destroy: DestroyEvents | None = None
        self.destroy_refused: str | None = None
        self.destroy_lost = 0
        if destroy_events:
            try:
                self.destroy = DestroyEvents()
            except OSError as exc:
                self.destroy_refused = f"{type(exc).__name__}: {exc.strerror or exc}"
        self.resolved_at = float("-inf")
        self.conns: dict[tuple[str, int], _Conn] = {}  # (ends, inode) seen in the last poll
        self.owners: dict[int, tuple[str, dict[str, Any]]] = {}  # pid -> (key, identity)
        self.persisted_at = float("-inf")
        self._journal_fd: int | None = None
        self._new_keys: set[str] = set()  # observations of connections not yet journaled
        self.pending_since: float | None = None  # clock() of the first unsealed observation
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.window = self._recover()

    # --- windows on disk ---------------------------------------------------------

    def _recover(self) -> Window:
        """Close a window a previous run left open; the number of the next one."""
        numbers = batch_numbers(self.directory)
        last = numbers[-1] if numbers else 0
        left = read_open(self.directory)
        if left is not None and left.number > last and (left.polls or left.observations):
            left.ended = left.ended or utc_now()
            _write_file(self.directory / batch_name(left.number), left.to_bytes(), replace=False)
            last = left.number
        elif left is not None:
            last = max(last, left.number - 1)
        last = max(last, self._sealed_floor())
        if batch_numbers(self.directory):
            self.pending_since = self.clock()
        window = self._new_window(last + 1)
        self._persist(window)
        return window

    def _sealed_floor(self) -> int:
        """The last batch number a sealed bundle holds (checkpoints): never reused."""
        floor = 0
        for name in ("checkpoints.json", "checkpoints.next.json"):
            try:
                values = json.loads((self.directory.parent / name).read_bytes())["values"]
                floor = max(floor, int(values.get("ai_egress") or 0))
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                continue
        return floor

    def _new_window(self, number: int) -> Window:
        return Window(number, utc_now(), interval_seconds=self.interval)

    def _persist(self, window: Window) -> None:
        _write_file(self.directory / OPEN_FILE, window.to_bytes(), replace=True)
        self.persisted_at = self.clock()
        if self._journal_fd is not None:  # open.json holds it all now
            os.ftruncate(self._journal_fd, 0)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self.directory / JOURNAL_FILE, 0)

    def _journal(self, keys: set[str]) -> None:
        """Make the observations of new connections durable: one line each appended to
        the journal and synced (the whole window is rewritten only every PERSIST_EVERY)."""
        if self._journal_fd is None:
            self._journal_fd = os.open(self.directory / JOURNAL_FILE, os.O_WRONLY | os.O_CREAT
                                       | os.O_APPEND | os.O_CLOEXEC, 0o600)
        window = self.window
        lines = b"".join(json.dumps(
            {"window": window.number, "key": key, "owner_denied": window.owner_denied,
             "read_errors": window.read_errors,
             "observation": asdict(window.observations[key])},
            separators=(",", ":"), sort_keys=True).encode() + b"\n" for key in sorted(keys))
        os.write(self._journal_fd, lines)
        os.fdatasync(self._journal_fd)

    def cut(self) -> int | None:
        """Close the open window as a batch (if it watched at all); its number."""
        window = self.window
        if not window.polls and not window.observations:
            return None
        window.ended = utc_now()
        # A batch of that number cannot exist (numbers start above every batch and the
        # sealed checkpoint); if one did, this window takes the next, never replaces it.
        while not _write_file(self.directory / batch_name(window.number), window.to_bytes(),
                              replace=False):
            window.number += 1
        self.window = self._new_window(window.number + 1)
        self.window.endpoints = window.endpoints
        self._persist(self.window)
        self.owners.clear()
        self.pending_since = None
        with contextlib.suppress(OSError):
            self.hashes.save(prune=False)
        return window.number

    # --- matching ------------------------------------------------------------------

    def resolve(self) -> None:
        """Resolve the endpoints now (else the first poll does), so destroy events
        are filtered in the kernel from the start."""
        self._refresh_matcher(self.clock())

    def _refresh_matcher(self, now: float) -> None:
        if self.matcher is not None and now - self.resolved_at < RESOLVE_EVERY:
            return
        try:
            with open(self.hosts_file, "rb") as stream:
                hosts = hosts_names(parse_hosts(lines(stream.read())))
        except OSError:
            hosts = {}
        self.matcher, _resolutions = build_matcher(self.endpoints, hosts, live=True)
        self.reader.compile(self.matcher)
        if self.destroy is not None:  # the kernel wakes us only for these addresses
            self.destroy.set_filter(destroy_filter(self.matcher))
        self.resolved_at = now
        self.window.endpoints = [{"entry": e.entry, "addresses": [str(n) for n in
                                                                  self.matcher.networks(e)]}
                                 for e in self.endpoints]

    # --- one poll ----------------------------------------------------------------------

    def poll(self) -> int:
        """Read the tables once; the number of connections seen for the first time."""
        now = self.clock()
        self._refresh_matcher(now)
        assert self.matcher is not None
        seen_at = utc_now()
        rows: list[tuple[Row, list[str], list[str]]] = []
        for table, family in TABLES:
            try:
                candidates = self.reader.read(family, table)
            except FileNotFoundError:
                continue  # no IPv6 on this host
            except OSError as exc:
                error = f"/proc/net/{table}: {type(exc).__name__}: {exc.strerror}"
                if error not in self.window.read_errors:
                    self.window.read_errors.append(error)
                continue
            for row in candidates:
                matched = self.matcher.match(row.remote_address, row.remote_port)
                if matched:
                    rows.append((row, [e.spec for e in matched], [e.entry for e in matched]))
        self.window.polls += 1
        self.window.source = self._source()
        fresh = self._observe(rows, seen_at)
        if self.window.observations and self.pending_since is None:
            self.pending_since = now
        self._save(now)
        return fresh

    def _source(self) -> str:
        source = self.reader.source if self.reader.fallback_reason is None \
            else f"{self.reader.source} (sock_diag: {self.reader.fallback_reason})"
        if self.destroy is not None:
            return f"{source} + destroy events"
        if self.destroy_refused is not None:
            return f"{source} (no destroy events: {self.destroy_refused})"
        return source

    def take_destroyed(self) -> int:
        """Record the AI-endpoint sockets destroyed since the last call (the kernel's
        events, queued); the number of connections not seen before. One seen open in
        the last poll, or whose TIME_WAIT row a later poll reads, is the same
        connection, counted once."""
        if self.destroy is None:
            return 0
        now = self.clock()
        self._refresh_matcher(now)  # first, so a changed filter applies from here on
        assert self.matcher is not None
        try:
            rows = self.destroy.read()
        except OSError as exc:  # the socket broke: poll only from now on, and say so
            self.destroy.close()
            self.destroy = None
            self.destroy_refused = f"{type(exc).__name__}: {exc.strerror or exc}"
            self.window.source = self._source()
            return 0
        if self.destroy.lost > self.destroy_lost:
            self.destroy_lost = self.destroy.lost
            error = "sock_diag destroy events: some were dropped (ENOBUFS)"
            if error not in self.window.read_errors:
                self.window.read_errors.append(error)
        matched = [(row, found) for row in rows
                   if (found := self.matcher.match(row.remote_address, row.remote_port))]
        if not matched:
            return 0
        seen_at = utc_now()
        by_ends = {ends: conn for (ends, _inode), conn in self.conns.items()}
        fresh = 0
        for row, found in matched:
            ends = _ends(row)
            conn = by_ends.get(ends)
            if conn is None:  # opened and destroyed between two polls
                specs = [e.spec for e in found]
                conn = by_ends[ends] = self.conns[(ends, 0)] = _Conn(
                    f"{specs[0]} -:{CLOSED}", self.window.number, specs[0],
                    [e.entry for e in found], None, CLOSED, row.uid)
                self._new_keys.add(conn.key)
                fresh += 1
            self._touch(conn, row, seen_at)
        if self.pending_since is None:
            self.pending_since = now
        self._save(now)
        return fresh

    @property
    def unsaved(self) -> bool:
        """New connections seen but not yet durable (the last write failed: it is tried
        again by the next poll or destroy event)."""
        return bool(self._new_keys)

    def _save(self, now: float) -> None:
        """The whole window when it is due, else the new connections' observations."""
        if now - self.persisted_at >= PERSIST_EVERY:
            self._persist(self.window)
        elif self._new_keys:
            self._journal(self._new_keys)
        self._new_keys.clear()

    def close(self) -> None:
        if self.destroy is not None:
            self.destroy.close()
            self.destroy = None
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    def _observe(self, rows: list[tuple[Row, list[str], list[str]]], seen_at: str) -> int:
        previous = self.conns
        by_ends = {ends: conn for (ends, _inode), conn in previous.items()}
        current: dict[tuple[str, int], _Conn] = {}
        new_rows: list[tuple[Row, list[str], list[str]]] = []
        for row, specs, entries in rows:
            ends = _ends(row)
            conn = previous.get((ends, row.inode))
            if conn is None and row.inode == 0:
                conn = by_ends.get(ends)  # the TIME_WAIT row of a connection seen open
            if conn is None:
                new_rows.append((row, specs, entries))
                continue
            current[(ends, row.inode)] = conn
            self._touch(conn, row, seen_at)
        owners = self._owners([row.inode for row, _s, _e in new_rows if row.inode])
        for row, specs, entries in new_rows:
            ends = _ends(row)
            owner, reason = owners[row.inode] if row.inode else (None, CLOSED)
            process_key_text = owner[0] if owner is not None else f"-:{reason}"
            conn = _Conn(f"{specs[0]} {process_key_text}", self.window.number,
                         specs[0], entries, None if owner is None else owner[1], reason,
                         row.uid if row.inode else None)
            if reason == DENIED:
                self.window.owner_denied += 1
            current[(ends, row.inode)] = conn
            self._new_keys.add(conn.key)
            self._touch(conn, row, seen_at)
        self.conns = current
        return len(new_rows)

    def _touch(self, conn: _Conn, row: Row, seen_at: str) -> None:
        observation = self.window.observations.get(conn.key)
        if observation is None:
            observation = self.window.observations[conn.key] = conn.observation(seen_at)
        observation.last_seen = seen_at
        if row.state not in observation.states:
            observation.states.append(row.state)
            observation.states.sort()
        remote = _remote(row)
        if remote not in observation.remotes and len(observation.remotes) < REMOTES_MAX:
            observation.remotes.append(remote)
            observation.remotes.sort()
        if conn.counted_in != self.window.number:  # each connection once per window
            conn.counted_in = self.window.number
            if conn.window == self.window.number:
                observation.count += 1
            else:
                observation.continued += 1

    def _owners(self, inodes: list[int]) -> dict[int, tuple[tuple[str, dict[str, Any]] | None,
                                                           str | None]]:
        """For each new inode: (process key and identity, None) or (None, reason)."""
        if not inodes:
            return {}
        found = socket_owners(inodes, likely=list(self.owners), proc=self.proc)
        result: dict[int, tuple[tuple[str, dict[str, Any]] | None, str | None]] = {}
        for inode in inodes:
            pid = found.pids.get(inode)
            if pid is None:
                result[inode] = (None, DENIED if found.denied else GONE)
                continue
            owner = self._identity(pid)
            result[inode] = (owner, None) if owner is not None else (None, GONE)
        return result

    def _identity(self, pid: int) -> tuple[str, dict[str, Any]] | None:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                key = process_key(pid, proc.create_time())
                cached = self.owners.get(pid)
                if cached is not None and cached[0] == key:
                    return cached
                identity = process_identity(proc, self.hashes)
                try:
                    argv = list(proc.cmdline())
                except (psutil.AccessDenied, psutil.ZombieProcess):
                    argv = []
        except (psutil.Error, OSError):
            return None
        identity["cmdline"] = [as_text(a) for a in scrub_argv(argv)[0]] if argv else None
        self.owners[pid] = (key, identity)
        return key, identity

