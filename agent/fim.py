"""File integrity monitoring in `gamsa agent run`: watch `[collectors.files] paths`.

watchdog's handlers only queue host paths (`Pending`); the daemon's main thread,
its one sealer, takes a batch once the paths have been quiet for `debounce` (or
at the latest twice that after the first event, so a storm is sealed in bounded
steps, never dropped), describes them with the files collector's own code
(`collector.files.observe`) and seals a `file-change` bundle holding only what
differs from the last sealed baseline (`collector.files.changes`). The baseline is
the files collector's checkpoint, staged with the bundle and promoted with the
chain head, so a crash neither loses a change nor reports one twice; the start
sweep compares every path with it, so a change made while the agent was stopped
is sealed at start. A batch of more than CHILD_BATCH_PATHS paths, or a rescan, is
described and sealed the same way by the sweep child (agent/store_child.py `seal`),
so a storm's records never pin the long-lived daemon's memory.

Watched: for a pattern with a wildcard, the directory before the first wildcard,
recursively; for a literal path, its parent (and itself, recursively, when it is
a directory); for a directory that does not exist yet, its nearest existing
ancestor, re-planned after each batch, so a file created later under a glob is
seen. Only events that can change what is recorded are asked for (not opens or
reads: the agent's own hashing must not feed the queue).

Lost events: watchdog 7 tells no handler of an inotify queue overflow (it only
rebuilds its watches and logs a warning), so a logging handler on its logger turns
that warning into a rescan of every path and a `watch_overflow` record. A watch
refused at scheduling (ENOSPC: `max_user_watches`; EMFILE: `max_user_instances`)
moves that directory to polling after a rescan, with a `watch_limit` record.
Without inotify at all, everything is polled, with a warning.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import logging
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from collector import files
from collector.record import Record, text_or_b64
from signing.errors import GamsaError

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent
    from watchdog.observers.api import BaseObserver, ObservedWatch

    from agent.config import Config
    from agent.daemon import Daemon
    from agent.state import StateDir
    from collector.registry import Collector

POLL_SECONDS = 2  # a directory inotify could not watch is polled this often
RETRY_SECONDS = 5.0  # after a failed sealing, the batch waits this long
WATCHDOG_LOGGER = "watchdog.observers"


@dataclass
class Batch:
    """What the handlers queued since the last batch was taken."""

    paths: set[bytes] = field(default_factory=set)
    overflow: bool = False
    limits: dict[bytes, str] = field(default_factory=dict)  # directory -> why it is polled

    def __bool__(self) -> bool:
        return bool(self.paths or self.overflow or self.limits)


class Pending:
    """The queue between watchdog's threads and the sealer: paths are kept in a set,
    so a storm on one file costs one entry, and nothing is ever dropped."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._batch = Batch()
        self._first = 0.0  # monotonic time of the first event in the batch
        self._last = 0.0
        self._not_before = 0.0  # a batch put back after a failure waits

    def _touched(self) -> None:
        now = time.monotonic()
        if not self._batch:
            self._first = now
            self._last = now
            self._wake()  # the loop recomputes its sleep; later events need no wake
        self._last = now

    def add(self, path: bytes) -> None:
        with self._lock:
            self._touched()
            self._batch.paths.add(path)

    def add_overflow(self) -> None:
        with self._lock:
            self._touched()
            self._batch.overflow = True

    def add_limit(self, directory: bytes, reason: str) -> None:
        with self._lock:
            self._touched()
            self._batch.limits[directory] = reason

    def due_in(self, now: float, debounce: float) -> float | None:
        """Seconds until the batch is due (<= 0: now), None when nothing waits."""
        with self._lock:
            if not self._batch:
                return None
            due = min(self._last + debounce, self._first + 2 * debounce)
            return max(due, self._not_before) - now

    def take(self) -> Batch:
        with self._lock:
            batch, self._batch = self._batch, Batch()
            return batch

    def put_back(self, batch: Batch, delay: float) -> None:
        """A batch that could not be sealed waits `delay` and goes with the next one."""
        with self._lock:
            self._touched()
            self._batch.paths |= batch.paths
            self._batch.overflow |= batch.overflow
            self._batch.limits.update(batch.limits)
            self._not_before = time.monotonic() + delay


# --- which directories to watch ------------------------------------------------------

def _is_magic(component: bytes) -> bool:
    return any(c in b"*?[" for c in component)


def watch_roots(patterns: list[str]) -> dict[bytes, bool]:
    """Directory -> recursive, covering every path the patterns can match now or
    when it is created."""
    roots: dict[bytes, bool] = {}

    def want(directory: bytes, recursive: bool) -> None:
        while directory != b"/" and not os.path.isdir(directory):  # not there yet
            directory, recursive = posixpath.dirname(directory), False
        roots[directory] = roots.get(directory, False) or recursive

    for pattern in patterns:
        raw = os.fsencode(pattern)
        if not raw.startswith(b"/") or b"\0" in raw:
            continue  # the files collector records it as `no_match`
        components = [c for c in posixpath.normpath(raw).split(b"/") if c]
        static: list[bytes] = []
        for component in components:
            if _is_magic(component):
                break
            static.append(component)
        path = b"/" + b"/".join(static)
        if len(static) < len(components):
            want(path, True)
            continue
        want(posixpath.dirname(path) or b"/", False)
        if os.path.isdir(path) and not os.path.islink(path):
            want(path, True)
    return roots


def _identity(directory: bytes) -> tuple[int, int] | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def inotify_watched() -> set[tuple[int, int]] | None:
    """(device, inode) of every inotify watch this process holds, from
    /proc/self/fdinfo; None where that cannot be read."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    watched: set[tuple[int, int]] = set()
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{name}", encoding="ascii") as info:
                lines = info.read().splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.startswith("inotify wd:"):
                continue
            fields = dict(p.split(":", 1) for p in line.split()[1:] if ":" in p)
            sdev = int(fields["sdev"], 16)  # the kernel's dev_t: major << 20 | minor
            watched.add((os.makedev(sdev >> 20, sdev & 0xFFFFF), int(fields["ino"], 16)))
    return watched


def unwatched_below(root: bytes, watched: set[tuple[int, int]]) -> int:
    """Directories at or below `root` (symlinks not followed, as watchdog does) that
    hold no inotify watch: watchdog skips a subdirectory it cannot watch silently."""
    missing = 0
    for top, dirnames, _ in os.walk(root):
        paths = [top] if top == root else []
        for directory in paths + [os.path.join(top, d) for d in dirnames]:
            try:
                st = os.lstat(directory)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) not in watched:
                missing += _readable(directory)  # else no watch is allowed: not a limit
    return missing


def _readable(directory: bytes) -> bool:
    """inotify_add_watch needs read permission (watchdog ignores EACCES silently);
    opened with this process's effective ids and capabilities, as a watch is."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


# --- watchdog's side: handlers only queue -------------------------------------------

def _event_types() -> list[type[FileSystemEvent]]:
    """Events that can change a `file` record; not opens, reads or a directory's
    own "modified" (every change in it would rescan all of it)."""
    from watchdog import events as e

    return [e.FileCreatedEvent, e.FileDeletedEvent, e.FileModifiedEvent, e.FileMovedEvent,
            e.FileClosedEvent, e.FileAttribEvent, e.DirCreatedEvent, e.DirDeletedEvent,
            e.DirMovedEvent, e.DirAttribEvent]


def _handler(pending: Pending, ignored: list[bytes]) -> Any:
    """Queues the paths of each event, except under `ignored` (the agent's own state
    dir and store: sealing writes there, and watching that would never stop)."""
    from watchdog.events import FileSystemEventHandler

    own = files.Scope(ignored)

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            for path in (event.src_path, getattr(event, "dest_path", "")):
                if path:
                    raw = os.fsencode(path)
                    if raw not in own:
                        pending.add(raw)

    return Handler()


def own_directories(config: Config) -> list[bytes]:
    """Where the agent itself writes: never a reason for a file-change bundle."""
    own = [os.fsencode(os.path.abspath(config.state_dir))]
    if config.store.url.startswith("file://"):
        own.append(os.fsencode(os.path.abspath(config.store.url.removeprefix("file://"))))
    return own


class _OverflowLog(logging.Handler):
    """watchdog's log lines: an overflow becomes a rescan; the rest our log lines."""

    def __init__(self, pending: Pending, log: Callable[..., None]) -> None:
        super().__init__(logging.DEBUG)
        self.pending = pending
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "overflow" in message.lower():
            if record.name.endswith("inotify_c"):  # once per overflow, not per watch
                self.pending.add_overflow()
            return
        if record.levelno >= logging.WARNING:
            self.log("warning", "watch", f"file watching: {message}")


# --- the watcher ------------------------------------------------------------------------

class FileWatch:
    """The observers, the directories they watch, and the pending queue."""

    def __init__(self, config: Config, log: Callable[..., None],
                 wake: Callable[[], None]) -> None:
        self.config = config
        self.log = log
        self.pending = Pending(wake)
        self.handler = _handler(self.pending, own_directories(config))
        self.scheduled: dict[bytes, tuple[ObservedWatch, BaseObserver, tuple[int, int] | None]] = {}
        self.main: BaseObserver | None = None
        self.inotify = False  # main is an inotify observer (else everything is polled)
        self.poller: BaseObserver | None = None
        self.log_handler = _OverflowLog(self.pending, log)

    @property
    def debounce(self) -> float:
        return self.config.collectors.value(files.DEBOUNCE)

    def start(self) -> None:
        from watchdog.observers.polling import PollingObserver

        logger = logging.getLogger(WATCHDOG_LOGGER)
        logger.addHandler(self.log_handler)
        logger.setLevel(logging.WARNING)
        try:
            from watchdog.observers.inotify import InotifyObserver

            self.main = InotifyObserver()
            self.inotify = True
        except (ImportError, OSError) as exc:  # not Linux, or no inotify instance left
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            self.log("warning", "watch_polling",
                     f"inotify unavailable ({reason}): polling the watched files every "
                     f"{POLL_SECONDS} s instead")
            self.main = PollingObserver(timeout=POLL_SECONDS)
        self.main.start()
        self.replan()
        kinds = "inotify" if self.inotify else "polling"
        if self.inotify and self.poller is not None:
            kinds += ", some polled"
        self.log("info", "watching", f"watching {len(self.scheduled)} director"
                 f"{'y' if len(self.scheduled) == 1 else 'ies'} ({kinds}) for "
                 f"{len(self.config.collectors.value(files.PATHS))} pattern(s)",
                 directories=len(self.scheduled))

    def stop(self) -> None:
        logging.getLogger(WATCHDOG_LOGGER).removeHandler(self.log_handler)
        for observer in (self.main, self.poller):
            if observer is not None:
                observer.stop()
        for observer in (self.main, self.poller):
            if observer is not None:
                observer.join(timeout=5)
        self.main = self.poller = None
        self.scheduled.clear()

    def _poller(self) -> BaseObserver:
        if self.poller is None:
            from watchdog.observers.polling import PollingObserver

            self.poller = PollingObserver(timeout=POLL_SECONDS)
            self.poller.start()
        return self.poller

    def replan(self) -> None:
        """Watch what the patterns need now: new directories, and directories that
        were removed and made again (their old watch died with them)."""
        assert self.main is not None
        wanted = watch_roots(self.config.collectors.value(files.PATHS))
        for directory in list(self.scheduled):
            watch, observer, identity = self.scheduled[directory]
            if directory not in wanted or _identity(directory) != identity:
                try:
                    observer.unschedule(watch)
                except (KeyError, OSError):
                    pass  # its emitter stopped with the directory
                del self.scheduled[directory]
        for directory, recursive in sorted(wanted.items()):
            if directory in self.scheduled:
                continue
            identity = _identity(directory)
            path = os.fsdecode(directory)
            kinds = _event_types()
            try:
                watch = self.main.schedule(self.handler, path, recursive=recursive,
                                           event_filter=kinds)
                self.scheduled[directory] = (watch, self.main, identity)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EMFILE, errno.ENOMEM):
                    self.log("warning", "watch_failed",
                             f"cannot watch {path}: {exc.strerror}; its changes are sealed "
                             f"by the scheduled files sweep")
                    continue
                reason = (f"{exc.strerror} ({errno.errorcode.get(exc.errno or 0, '?')})")
                self._poll(directory, recursive, reason, identity)
        self._check_recursive(wanted)

    def _poll(self, directory: bytes, recursive: bool, reason: str,
              identity: tuple[int, int] | None) -> None:
        path = os.fsdecode(directory)
        self.log("warning", "watch_limit",
                 f"cannot watch {path} with inotify: {reason}; polling it every "
                 f"{POLL_SECONDS} s (raise fs.inotify.max_user_watches)", path=path)
        watch = self._poller().schedule(self.handler, path, recursive=recursive,
                                        event_filter=_event_types())
        self.scheduled[directory] = (watch, self._poller(), identity)
        self.pending.add_limit(directory, reason)

    def _check_recursive(self, wanted: dict[bytes, bool]) -> None:
        """A recursive inotify watch whose subdirectories could not all be watched
        (watchdog says nothing) is polled instead."""
        if not self.inotify:
            return
        for attempt in range(2):
            watched = inotify_watched()
            if watched is None:
                return
            short = {d: unwatched_below(d, watched) for d, recursive in wanted.items()
                     if recursive and self.scheduled.get(d, (None, None, None))[1] is self.main}
            short = {d: n for d, n in short.items() if n}
            if not short:
                return
            if attempt == 0:
                time.sleep(0.5)  # a directory made just now: its watch may be on its way
        for directory, missing in short.items():
            watch, observer, identity = self.scheduled.pop(directory)
            with contextlib.suppress(KeyError, OSError):
                observer.unschedule(watch)
            self._poll(directory, True, f"inotify watch limit reached (ENOSPC): {missing} "
                       f"director{'y' if missing == 1 else 'ies'} below it not watched",
                       identity)


# --- the sealer's side -------------------------------------------------------------------

# A batch of more paths than this (a storm, a tree rewritten) or a rescan is described
# and sealed by the sweep child (agent/store_child.py `seal`), like a sweep: the records
# of thousands of changes would leave CPython's arenas pinned in the daemon for good
# (~18 MB after 10,000, docs/BENCHMARKS.md). Smaller batches are sealed here, without
# the interpreter start (~0.4 s) a child costs, so a change is sealed within a second.
CHILD_BATCH_PATHS = 200


def batch_to_json(batch: Batch) -> dict[str, Any]:
    """A batch for the child's request: the paths as one base64 string of NUL-joined
    host paths (a list of 10,000 strings would itself fragment the daemon's memory)."""
    return {"paths": base64.b64encode(b"\0".join(sorted(batch.paths))).decode("ascii"),
            "overflow": batch.overflow,
            "limits": base64.b64encode(b"\0".join(
                d + b"\0" + r.encode() for d, r in sorted(batch.limits.items()))
            ).decode("ascii")}


def batch_from_json(data: dict[str, Any]) -> Batch:
    """The inverse of `batch_to_json`."""
    raw = base64.b64decode(data["paths"])
    limits = base64.b64decode(data["limits"]).split(b"\0") if data["limits"] else []
    return Batch(set(raw.split(b"\0")) if raw else set(), bool(data["overflow"]),
                 {limits[i]: limits[i + 1].decode() for i in range(0, len(limits), 2)})


def in_child(batch: Batch) -> bool:
    """Whether the batch is sealed by the sweep child (CHILD_BATCH_PATHS)."""
    return batch.overflow or bool(batch.limits) or len(batch.paths) > CHILD_BATCH_PATHS


def sealed_checkpoint(state: StateDir) -> Any:
    """The files checkpoint of the sealed chain head; the caller holds the state lock.
    Read anew each time: parsing it costs ~6 ms with 10,000 files, keeping it ~2 MB
    resident for the daemon's life (docs/BENCHMARKS.md, "The idle daemon")."""
    if state.next_checkpoints_path.exists():  # a sealing cut short: recover decides
        return state.load_checkpoints(state.recover()).get(files.NAME)
    return state.load_checkpoints(None).get(files.NAME)


def rescan_records(batch: Batch, observation: files.Observation,
           diff: files.Changes) -> list[Record]:
    """The `watch_overflow` / `watch_limit` records of a rescan."""
    changed_keys = [r.key for r in diff.records if r.type == files.CHANGE_TYPE]
    notes: list[Record] = []
    if batch.overflow:
        notes.append(Record(files.NAME, "watch_overflow", "inotify", {
            "reason": "the inotify event queue overflowed (fs.inotify.max_queued_events): "
                      "events were lost, every configured path was rescanned",
            "rescanned": len(observation.files), "changed": len(changed_keys)}))
    for directory, reason in sorted(batch.limits.items()):
        under = files.Scope([directory])
        notes.append(Record(files.NAME, "watch_limit", files.path_key(directory), {
            "path": text_or_b64(directory), "reason": reason, "poll_seconds": POLL_SECONDS,
            "rescanned": sum(files.key_path(k) in under for k in observation.files),
            "changed": sum(files.key_path(k) in under for k in changed_keys)}))
    return notes


def batch_collector(config: Config, state: StateDir, batch: Batch,
                    sealed_checkpoint: Callable[[], Any], log: Callable[..., None],
                    life: Callable[..., None]) -> Collector | None:
    """Describe the batch's paths and compare them with the sealed baseline
    (`sealed_checkpoint()` reads it under the state lock): the files collector that
    seals what differs as a `file-change` bundle, None when nothing does (and it is
    no rescan). The same in the daemon and in the sweep child. Raises GamsaError."""
    from agent.seal import collect_context

    rescan = batch.overflow or bool(batch.limits)
    under = None if batch.overflow else sorted(batch.paths | set(batch.limits))
    detected_by = "rescan" if rescan else "watch"
    ctx = collect_context(config, state)
    observation = files.observe(ctx, under)
    checkpoint = sealed_checkpoint()  # the baseline as sealed, to seal nothing unchanged
    precheck = files.changes(observation, checkpoint, detected_by)
    if not rescan and precheck.changed == 0:
        return None

    def collect(sealing: Any) -> list[Record]:  # under the state lock, in the sealing
        sealed = sealing.checkpoint(files.NAME)
        # The baseline is one string: comparing it costs far less than a second diff of
        # 10,000 lines, which is most of a change's sealing after the debounce.
        diff = precheck if sealed == checkpoint else \
            files.changes(observation, sealed, detected_by)
        if diff.checkpoint is not None:
            sealing.set_checkpoint(files.NAME, diff.checkpoint)
        return rescan_records(batch, observation, diff) + diff.records

    if batch.overflow:
        log("warning", "watch_overflow", "file watching lost events (inotify queue "
            "overflow): every watched path rescanned (raise "
            "fs.inotify.max_queued_events if this repeats)")
    if rescan:  # the agent's own life records it too (collector/agent.py)
        life("watch_overflow", watcher="files",
             reason="inotify queue overflow" if batch.overflow else "watch limit",
             paths=len(observation.files))
    return dataclasses.replace(files.COLLECTOR, collect=collect)


def seal_batch(daemon: Daemon, watch: FileWatch) -> bool:
    """Take the due batch, describe its paths and seal what differs from the last
    sealed baseline as a `file-change` bundle; True when one was sealed. A large
    batch or a rescan is sealed by the sweep child (`in_child`). A batch that fails,
    or whose child is ended, goes back to the queue (nothing is dropped)."""
    batch = watch.pending.take()
    if not batch:
        return False
    try:
        watch.replan()  # before describing: a new directory is watched, then read
    except OSError as exc:
        watch.log("warning", "watch_failed", f"re-planning watches: {exc.strerror}")
    if in_child(batch):
        sealed = daemon.seal_batch_in_child(batch_to_json(batch))
        if sealed is False:
            watch.pending.put_back(batch, RETRY_SECONDS)
        return bool(sealed)
    state = daemon.state()

    def baseline() -> Any:
        with state.locked():
            return sealed_checkpoint(state)

    try:
        collector = batch_collector(daemon.config, state, batch, baseline,
                                    daemon.log, daemon.life)
    except GamsaError as exc:
        daemon.log("error", "watch_failed", f"file change not sealed yet, retry in "
                   f"{RETRY_SECONDS:.0f} s: {exc.diagnostics()}")
        watch.pending.put_back(batch, RETRY_SECONDS)
        return False
    if collector is None:
        return False
    if daemon.seal([files.NAME], "file-change", [collector]):
        return True
    watch.pending.put_back(batch, RETRY_SECONDS)
    return False
