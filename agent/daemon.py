"""`gamsa agent run`: the foreground daemon systemd supervises.

One main thread schedules and seals (a start sweep, then each collector on its own
interval plus jitter, a heartbeat bundle after `schedule.heartbeat` of silence); one
background thread ships, each time in a short-lived child (agent/store_child.py) so no
store client is ever resident here. Sweeps are sealed by such a child too, so their
records never raise this process's memory, and so are a storm of file changes and a
rescan (agent/fim.py `in_child`); a few file changes, heartbeats, AI egress and the
agent's own life are sealed here, at once. Both take the state lock only while they seal or
ship, so `gamsa collect` run meanwhile extends the same chain. Signal handlers only set
flags: the main loop acts on them between sealings, so SIGTERM never interrupts a
bundle; a stop ends a ship child that runs too long (shipping is crash-safe).
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime as dt
import fcntl
import json
import os
import platform
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from agent import __version__, egress, memory
from agent.config import Config, config_as_toml
from agent.daemon_status import DaemonStatus, StatusFile
from agent.egress import EgressThread
from agent.fim import FileWatch, seal_batch
from agent.lifelog import note_quietly
from agent.selfwatch import ClockWatch, ShipHealth, SpoolPressure
from agent.state import ChainHead, LockAbandoned, SpoolUsage, StateDir
from agent.store_child import ChildResult, Event, run_child, view_from_json
from collector.agent import NAME as AGENT
from collector.files import NAME as FILES
from collector.files import WATCH as FILES_WATCH
from collector.record import from_epoch, utc_now
from collector.registry import Collector
from signing.errors import RUNTIME, GamsaError

_random = random.SystemRandom()  # no seed shared by a fleet cloned from one image
JITTER = 0.10  # up to 10% of an interval added, so a fleet started together spreads out
SHIP_EVERY = 60.0  # seconds between shipping tries when nothing was sealed
SHIP_BACKOFF_FIRST = 5.0  # after a failed ship; doubles up to SHIP_BACKOFF_MAX
SHIP_BACKOFF_MAX = 300.0
LIFE_SEAL_SECONDS = 10.0  # a life event makes the agent collector due this soon
LOCK_TRIES = 10  # `gamsa status` peeks at daemon.lock for an instant: try a few times
# After SIGTERM (all must end within 10 s) shipping, in flight or the last try after the
# bundle in hand, ends by STOP_SHIP_BY (its child is ended: crash-safe); a sealing that
# waits for the lock our ship child holds ends that child at once. What is not shipped
# waits in the spool.
STOP_SHIP_BY = 6.0
# A sealing still waiting for the state lock this long after SIGTERM (another process,
# e.g. a `gamsa collect` shipping to a slow store, holds it) is abandoned: nothing of
# it was written.
STOP_SEAL_WAIT = 5.0
# A sealing that waited this long for the state lock our own ship child holds (a slow
# or hanging store) ends that child: sealing comes first, and shipping resumes after
# it where it stopped (each shipped bundle leaves the spool as it is confirmed).
PREEMPT_SHIP_AFTER = 5.0
# Sealed here: bundles that must be quick (a file change, heartbeat) or are small. A
# sweep of any other collector is sealed in a short-lived child, so the records of a
# full sweep never raise this process's resident memory for the rest of its life
# (docs/BENCHMARKS.md, "The idle daemon"); it costs an interpreter start per sweep.
# A file-change batch too large for that goes to the child too (agent/fim.py).
SEALED_IN_DAEMON = frozenset({egress.NAME, AGENT})
# After SIGTERM a sweep child still at work by then is ended and its bundle abandoned
# (the next start sweeps again); the last ship then has what is left of the 10 s.
STOP_SWEEP_BY = 4.0

IOPRIO_SET = {"x86_64": 251, "aarch64": 30}  # syscall numbers (ioprio_set(2))
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASS_IDLE = 3
IOPRIO_CLASS_SHIFT = 13


class Log:
    """One line per event on stderr: `gamsa: ...` text, or one JSON object per line."""

    def __init__(self, fmt: str = "text", stream: Any = None) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def __call__(self, level: str, event: str, message: str, **fields: Any) -> None:
        if self.fmt == "json":
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            line = json.dumps({"time": now, "level": level, "event": event,
                               "message": message, **fields}, sort_keys=True, default=str)
        else:
            line = f"gamsa: {message}"
        with self._lock:
            print(line, file=self.stream, flush=True)


def notify(message: str) -> None:
    """Send one sd_notify datagram to $NOTIFY_SOCKET (`@` = abstract); no-op without it."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            pass  # systemd gone or the socket not ours: nothing to tell, keep collecting


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC in seconds when the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def lower_priority(log: Log) -> None:
    """nice 10 and the idle I/O class; where not permitted, say so and go on."""
    try:
        os.nice(10)
    except OSError as exc:
        log("debug", "nice", f"nice not lowered: {exc.strerror}")
    number = IOPRIO_SET.get(platform.machine())
    if number is None or not sys.platform.startswith("linux"):
        log("debug", "ioprio", f"idle I/O class not set: no ioprio_set on {platform.machine()}")
        return
    libc = ctypes.CDLL(None, use_errno=True)
    value = IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT
    if libc.syscall(number, IOPRIO_WHO_PROCESS, 0, value) != 0:
        log("debug", "ioprio", f"idle I/O class not set: {os.strerror(ctypes.get_errno())}")


@contextmanager
def daemon_lock(state_dir: Path) -> Iterator[None]:
    """Held for the daemon's life: a second `agent run` on this state dir refuses."""
    path = state_dir / "daemon.lock"
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise GamsaError(f"cannot open the daemon lock {path}: {exc.strerror}",
                         exit_code=RUNTIME) from exc
    try:
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 < LOCK_TRIES:
                    time.sleep(0.1)
                    continue
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise GamsaError(f"another `gamsa agent run` (pid {holder}) holds {path}",
                                 hint="one daemon per state dir; stop it first",
                                 exit_code=RUNTIME) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def gap_text(gaps: list[dict[str, Any]]) -> str:
    return "; ".join(f"{gap['reason']} x{gap['count']}" for gap in gaps)


@dataclass
class Plan:
    """When each collector is next due (monotonic seconds).

    Jitter is drawn once per distinct interval, not per collector, so collectors on
    the same interval stay due at the same moment and share one bundle.
    """

    due: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def next_times(config: Config, names: list[str], now: float) -> dict[str, float]:
        intervals = {config.schedule.interval(n) for n in names}
        at = {i: now + i + _random.uniform(0, JITTER * i) for i in intervals}
        return {n: at[config.schedule.interval(n)] for n in names}

    def reset(self, config: Config, names: list[str], now: float) -> None:
        self.due = self.next_times(config, names, now)

    def take_due(self, config: Config, now: float) -> list[str]:
        """The collectors due now (sealed together), rescheduled from now."""
        due = sorted(n for n, at in self.due.items() if at <= now)
        self.due.update(self.next_times(config, due, now))
        return due


class Shipper(threading.Thread):
    """Ships the spool after each sealing (`kick`) and on a timer, backing off on failure.

    Each ship runs in a short-lived child (agent/store_child.py), so no store client
    stays resident; a stop ends the child at its deadline (shipping is crash-safe) and
    then makes one last try, bounded too: what it cannot ship waits in the spool.
    """

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(name="gamsa-shipper", daemon=True)
        self.owner = daemon
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.preempted = threading.Event()  # a sealing waits for the lock our child holds

    def kick(self) -> None:
        self.wake.set()

    def preempt(self) -> None:
        self.preempted.set()

    def deadline(self) -> float | None:
        """A ship in the loop ends now when preempted, else at the stop's grace."""
        return time.monotonic() if self.preempted.is_set() else self.owner.ship_deadline()

    def run(self) -> None:
        backoff = 0.0
        cut_short = False  # the last ship was ended at the stop's deadline
        while not self.stop.is_set():
            if backoff:  # sealings during a backoff wait for it; a stop cuts it short
                self.stop.wait(backoff)
            else:
                self.wake.wait(SHIP_EVERY)
            self.wake.clear()
            if self.stop.is_set():
                break
            self.preempted.clear()
            result = self.ship(self.deadline)
            if result is None or result.error is None:
                backoff = 0.0
                if result is not None:
                    self.owner.shipped_ok()
                continue
            preempted = self.preempted.is_set()
            if preempted and self.owner.stop_asked_at is None:
                self.owner.log("info", "ship_preempted", "shipping paused for a sealing; "
                               "it resumes after it")
                backoff = 0.0  # the sealing kicks it again
                continue
            cut_short = result.killed and not preempted
            backoff = min(SHIP_BACKOFF_MAX, backoff * 2 or SHIP_BACKOFF_FIRST)
            self.owner.log("warning", "ship_failed",
                           f"shipping failed, retry in {backoff:.0f} s: {result.error}",
                           retry_seconds=backoff)
            self.owner.ship_failed(result.error)
        # The last try, for what was sealed at the stop too, unless a ship just ran out
        # of the stop's time (a store that hangs would only use up the rest) or none is
        # left (a sweep child used it): a child started only to be ended is no try.
        limit = self.owner.ship_deadline()
        if limit is not None and time.monotonic() >= limit and self.owner.has_spooled():
            cut_short = True
        result = None if cut_short else self.ship(self.owner.ship_deadline)
        if cut_short or (result is not None and result.error is not None):
            why = "no time left" if result is None else result.error
            self.owner.log("warning", "ship_failed", f"shipping failed at stop: {why}; "
                           f"the spooled bundles wait for the next start")

    def ship(self, deadline: Callable[[], float | None]) -> ChildResult | None:
        """One ship in a child, ended at `deadline()`; None: nothing was spooled."""
        owner = self.owner
        if not owner.has_spooled():
            return None
        try:
            return run_child("ship", owner.child_request(), owner.relay, deadline)
        except GamsaError as exc:  # e.g. the host id cannot be resolved
            message = exc.diagnostics()
        except Exception as exc:  # noqa: BLE001 - a dead shipper thread would ship no more
            message = (f"internal error (this is a bug, please report it): "
                       f"{type(exc).__name__}: {exc}")
        return ChildResult(RUNTIME, [{"event": "error", "message": message}])


class Daemon:
    """The scheduler, sealer and signal handling of `gamsa agent run`."""

    def __init__(self, load: Callable[[], Config],
                 select: Callable[[Config], list[Collector]], log: Log) -> None:
        self.load = load
        self.select = select
        self.log = log
        self.config = load()
        self.collectors = {c.name: c for c in select(self.config)}
        self.stopping = False
        self.stop_asked_at: float | None = None  # monotonic, at the first SIGTERM/SIGINT
        self.reload_asked = False
        self.wake = threading.Event()
        self.plan = Plan()
        self.last_sealed = time.monotonic()
        self.stop_signal = "error"  # until a signal says otherwise
        self.started = time.monotonic()
        self.clock = ClockWatch()
        self.ship_health = ShipHealth()
        self.spool_pressure = SpoolPressure()
        self.status = StatusFile(self.config.state_dir, DaemonStatus(
            os.getpid(), utc_now(), self.config.sha256,
            None if self.config.source is None else str(self.config.source)))
        self.watch: FileWatch | None = None  # agent/fim.py
        self.egress: EgressThread | None = None  # the AI-egress watcher (agent/egress.py)
        self.shipper: Shipper | None = None
        self.ping_every = watchdog_interval()
        self.next_ping = time.monotonic()

    # the agent's own life (collector/agent.py) and daemon.json --------------------

    def life(self, event: str, prompt: bool = True, **fields: Any) -> None:
        """Note a life event; `prompt`: have the agent collector seal it soon."""
        problem = note_quietly(self.config.state_dir, event, **fields)
        if problem is not None:
            self.log("warning", "lifelog", f"agent event {event} not noted: {problem}")
        if prompt:
            self.life_noted()

    def life_noted(self) -> None:
        """A life event was noted (here or by a child): the agent collector seals it soon."""
        if AGENT in self.plan.due:
            soon = time.monotonic() + LIFE_SEAL_SECONDS
            self.plan.due[AGENT] = min(self.plan.due[AGENT], soon)
            self.wake.set()

    def report(self, **changes: Any) -> None:
        """Update daemon.json (a warning line when it cannot be written)."""
        if "next_due" not in changes:
            now_wall, now = time.time(), time.monotonic()
            changes["next_due"] = {n: from_epoch(now_wall + at - now)
                                   for n, at in sorted(self.plan.due.items())}
        problem = self.status.update(**changes)
        if problem is not None:
            self.log("warning", "daemon_status", problem)

    def set_watcher(self, name: str, state: str) -> None:
        """For the watchers: their state in daemon.json (`watching`, `rescanning`...)."""
        self.report(watchers={**self.status.status.watchers, name: state})

    def shipped_ok(self) -> None:
        self.report(last_ship={"at": utc_now(), "result": "ok"})
        recovered = self.ship_health.succeeded()
        if recovered is not None:
            self.life("ship_recovered", **recovered)

    def ship_failed(self, error: str) -> None:
        self.report(last_ship={"at": utc_now(), "result": "error", "error": error})
        failing = self.ship_health.failed(error)
        if failing is not None:
            self.life("ship_failing", **failing)

    # state and store, from the current config --------------------------------

    def state(self) -> StateDir:
        return StateDir(self.config.state_dir, self.config.keys.agent)

    def head_or_none(self) -> ChainHead | None:
        """The chain head as chain.json says now (replaced atomically: no lock needed)."""
        try:
            return self.state().read_head()
        except GamsaError:
            return None

    def host_id(self) -> str:
        from agent.identity import resolve_host_id

        return resolve_host_id(self.config.host_id)

    # the store, through short-lived children (agent/store_child.py) -----------

    def child_request(self, head: ChainHead | None = None) -> dict[str, Any]:
        config = self.config
        return {"config": config_as_toml(config), "source": str(config.source or "defaults"),
                "host_id": self.host_id(),
                "head": None if head is None else dataclasses.asdict(head)}

    def relay(self, event: Event) -> None:
        """Log a child's event line in the daemon's own format."""
        fields = {k: v for k, v in event.items() if k not in ("level", "event", "message")}
        self.log(str(event.get("level", "info")), str(event["event"]), str(event["message"]),
                 **fields)

    def has_spooled(self) -> bool:
        """True when the spool may hold a bundle (no child is started for nothing)."""
        try:
            return any(not p.name.startswith(".") for p in self.state().spool.iterdir())
        except FileNotFoundError:
            return False
        except OSError:
            return True  # let the child meet the error and report it

    def ship_deadline(self) -> float | None:
        return None if self.stop_asked_at is None else self.stop_asked_at + STOP_SHIP_BY

    def look_in_child(self, state: StateDir, head: ChainHead | None) -> Any:
        """The pre-seal look (agent/chainguard.py) at a network store, in a child,
        bounded by LOOK_SECONDS and by a stop: past either, the bundle is sealed
        unchecked (the shipper checks again before it puts anything)."""
        from agent.chainguard import LOOK_SECONDS, unchecked_view

        started = time.monotonic()

        def deadline() -> float:
            limit = started + LOOK_SECONDS
            return limit if self.stop_asked_at is None else min(limit, self.stop_asked_at)

        result = run_child("look", self.child_request(head), self.relay, deadline)
        views = [e for e in result.results if e.get("event") == "view"]
        if result.returncode == 0 and views:
            return view_from_json(views[-1])
        return unchecked_view(state, head, f"the store look {result.error or 'gave no answer'}")

    # sealing --------------------------------------------------------------------

    def seal(self, names: list[str], trigger: str,
             collectors: list[Collector] | None = None) -> bool:
        """Seal one bundle of `names` (none: a heartbeat), run as `collectors` when
        given (file watching seals the files of a change); False when it failed."""
        try:
            return self._seal(names, trigger, collectors)
        finally:  # what the sealing freed goes back to the kernel (agent/memory.py)
            memory.release()

    def _seal(self, names: list[str], trigger: str,
              collectors: list[Collector] | None) -> bool:
        from agent.chainguard import look_before_sealing
        from agent.seal import seal_collection
        from agent.store import open_store

        config = self.config
        if collectors is None:
            if self.egress is not None and names:  # egress waiting goes with the next bundle
                if egress.NAME not in names and self.egress.due_in() is not None:
                    names = sorted([*names, egress.NAME])
                if egress.NAME in names:
                    self.egress.cut()
            if not set(names) <= SEALED_IN_DAEMON:
                return bool(self.seal_in_child(names, trigger))
            collectors = [self.collectors[n] for n in names]
        state = self.state()
        host_id = self.host_id()
        look: Callable[[ChainHead | None], Any] | None = None
        if not config.store.url.startswith("file:"):  # a store client only in a child
            look = lambda head: self.look_in_child(state, head)  # noqa: E731
        else:
            try:  # an unreachable store must not stop evidence from being sealed and spooled
                store = open_store(config.store.url, config.store)
                look = lambda head: look_before_sealing(store, state, host_id, head)  # noqa: E731
            except GamsaError as exc:
                self.log("warning", "store_unchecked",
                         f"store not checked before sealing: {exc.diagnostics()}")
        try:
            waiting_since = time.monotonic()
            with state.locked(give_up=lambda: self.waiting_for_lock(waiting_since)):
                sealed = seal_collection(config, host_id, collectors, trigger, state,
                                         look=look)
        except LockAbandoned as exc:
            self.seal_not_done(trigger, names, exc.diagnostics(), abandoned=True)
            return False
        except GamsaError as exc:
            self.seal_not_done(trigger, names, exc.diagnostics())
            return False
        self.sealed(sealed.summary(), trigger)
        return True

    def sealed(self, summary: dict[str, Any], trigger: str) -> None:
        """Log and report a bundle sealed here or in a sweep child (`Sealed.summary`)."""
        self.last_sealed = time.monotonic()
        seq, chain_id, results = summary["seq"], summary["chain_id"], summary["results"]
        statuses = ", ".join(f"{name} {status}" + (f" ({gap_text(gaps)})" if gaps else "")
                             for name, status, gaps in results) or "no collectors"
        collectors = {name: status for name, status, _ in results}
        self.log("info", "sealed", f"sealed seq {seq} ({trigger}: {statuses}; "
                 f"{summary['records']} records)", seq=seq, chain_id=chain_id,
                 trigger=trigger, records=summary["records"], collectors=collectors,
                 gaps={name: gaps for name, _, gaps in results if gaps},
                 manifest_key=summary["manifest_key"])
        if summary["store_problem"] is not None:
            self.log("warning", "store_unchecked", f"store not checked before sealing "
                     f"({summary['store_problem']}); sealed anyway, shipping checks again")
        if summary["genesis_reason"]:
            self.log("warning", "new_chain", f"new chain {chain_id}: "
                     f"{summary['genesis_reason']}", chain_id=chain_id)
        if summary["clock_warning"]:
            self.log("warning", "clock", f"clock: {summary['clock_warning']}")
        notify(f"STATUS=sealed seq {seq} ({trigger})")
        self.report(last_sealed={"seq": seq, "at": summary["finished_at"],
                                 "trigger": trigger, "collectors": collectors})
        pressure = self.spool_pressure.check(SpoolUsage(**summary["spool"]))
        if pressure is not None:
            self.life("spool_pressure", **pressure)

    def seal_not_done(self, trigger: str, names: list[str], why: str,
                      abandoned: bool = False) -> None:
        """A sealing here or in a child that kept nothing: said once, and what waits
        to be sealed again (egress's closed window) is tried again."""
        if abandoned:
            self.log("warning", "seal_abandoned", f"sealing abandoned ({trigger}): {why}",
                     trigger=trigger, collectors=names)
        else:
            self.log("error", "seal_failed", f"sealing failed ({trigger}): {why}",
                     trigger=trigger, collectors=names)
            # one line: a newline in the text (a file name) would be read by systemd as
            # another assignment (WATCHDOG=trigger, STOPPING=1...)
            notify("STATUS=" + " ".join(f"sealing failed ({trigger}): {why}".split()))
        if self.egress is not None and egress.NAME in names:
            self.egress.retry_later()  # its closed window waits on disk: try again

    def seal_batch_in_child(self, batch: dict[str, Any]) -> bool | None:
        """A file-change batch (agent/fim.py `batch_to_json`) too large to seal here,
        sealed by the sweep child; None: nothing in it differs from the baseline."""
        try:
            return self.seal_in_child([FILES], "file-change", batch)
        finally:
            memory.release()

    def seal_in_child(self, names: list[str], trigger: str,
                      batch: dict[str, Any] | None = None) -> bool | None:
        """A sweep sealed by a short-lived child (agent/store_child.py `seal`): its
        records, the high-water mark of a sweep of every collector, never live here;
        with `batch`, the file changes of a storm or a rescan (None: nothing differed).
        The child takes the state lock itself; while it waits for it, our own ship
        child is ended after PREEMPT_SHIP_AFTER (at once when stopping). A stop ends
        the child by STOP_SWEEP_BY: the bundle in hand is abandoned, nothing of it kept."""
        waiting: list[float] = []  # since when the child waits for the state lock

        def relay(event: Event) -> None:
            if event.get("event") == "lock_wait":
                waiting.append(time.monotonic())
            elif event.get("event") == "lock_taken":
                waiting.clear()
            else:
                self.relay(event)

        def deadline() -> float | None:
            now = time.monotonic()
            self.feed_watchdog(now)
            stopping = self.stop_asked_at is not None
            if waiting and self.shipper is not None and (
                    stopping or now - waiting[0] >= PREEMPT_SHIP_AFTER):
                self.shipper.preempt()
            return None if self.stop_asked_at is None else self.stop_asked_at + STOP_SWEEP_BY

        request = {**self.child_request(), "names": names, "trigger": trigger,
                   "config_sha256": self.config.sha256,  # the file's, in the manifest
                   "batch": batch}
        before = self.head_or_none()
        result = run_child("seal", request, relay, deadline)
        if any(e.get("event") == "life_noted" for e in result.results):
            self.life_noted()
        done = [e for e in result.results if e.get("event") == "sealed"]
        if result.returncode == 0 and done:
            self.sealed(done[-1], trigger)
            return True
        if result.returncode == 0 and any(e.get("event") == "unchanged"
                                           for e in result.results):
            return None
        after = self.head_or_none()
        if after is not None and after != before:  # ended between sealing and telling
            self.last_sealed = time.monotonic()
            self.log("info", "sealed", f"sealed seq {after.seq} ({trigger}: the sweep child "
                     f"was ended before it told the details; the bundle is whole)",
                     seq=after.seq, chain_id=after.chain_id, trigger=trigger,
                     collectors={name: "unknown" for name in names})
            return True
        if result.killed and waiting:
            self.seal_not_done(trigger, names, "gave up waiting for the state lock at the "
                               "stop: another gamsa process holds it; nothing of it was "
                               "kept", abandoned=True)
        elif result.killed:
            self.seal_not_done(trigger, names, "the agent is stopping; nothing of it was "
                               "kept", abandoned=True)
        else:
            self.seal_not_done(trigger, names, str(result.error))
        return False

    def waiting_for_lock(self, since: float) -> bool:
        """Called while a sealing waits for the state lock: keeps the watchdog fed, ends
        our own ship child after PREEMPT_SHIP_AFTER (at once when stopping); True (give
        up) once a stop has waited STOP_SEAL_WAIT."""
        now = time.monotonic()
        self.feed_watchdog(now)
        stopping = self.stop_asked_at is not None  # the bundle in hand goes first
        if (stopping or now - since >= PREEMPT_SHIP_AFTER) and self.shipper is not None:
            self.shipper.preempt()
        return self.stop_asked_at is not None and now >= self.stop_asked_at + STOP_SEAL_WAIT

    def sweep_strays(self) -> None:
        """At start: the temp files a kill left between link and rename (state.py)."""
        state = self.state()
        try:  # never wait for it: another gamsa at work now leaves them to the next start
            with state.locked(give_up=lambda: True):
                removed = state.sweep_stray_temp_files()
        except LockAbandoned:
            return
        except GamsaError as exc:
            self.log("warning", "sweep", f"stray temp files not removed: {exc.diagnostics()}")
            return
        if removed:
            self.log("info", "sweep", f"removed {removed} temp file(s) a kill left in "
                     f"{self.config.state_dir}", removed=removed)

    def feed_watchdog(self, now: float) -> None:
        if self.ping_every is not None and now >= self.next_ping:
            notify("WATCHDOG=1")
            self.next_ping = now + self.ping_every

    def silent_for(self) -> float:
        """Seconds since the last bundle this host sealed (ours or a `gamsa collect`)."""
        try:
            since_head = time.time() - self.state().chain_path.stat().st_mtime
        except OSError:
            since_head = float("inf")
        return min(time.monotonic() - self.last_sealed, since_head)

    # file watching (agent/fim.py) ---------------------------------------------------

    def start_watch(self) -> None:
        """Watch `[collectors.files] paths` when the files collector runs and `watch`
        is on; a reload re-plans from scratch (the start sweep or the next files
        sweep covers what changed meanwhile)."""
        leftover = self.watch.pending.take() if self.watch is not None else None
        self.stop_watch()
        if "files" in self.collectors and self.config.collectors.value(FILES_WATCH):
            self.watch = FileWatch(self.config, self.log, self.wake.set)
            if leftover:  # queued before the reload: sealed with the next batch
                self.watch.pending.put_back(leftover, 0.0)
            self.watch.start()

    def stop_watch(self) -> None:
        if self.watch is not None:
            self.watch.stop()
            self.watch = None

    # signals and reload ------------------------------------------------------------

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_asked = True
        else:
            self.stopping = True
            self.stop_signal = signal.Signals(signum).name
            if self.stop_asked_at is None:
                self.stop_asked_at = time.monotonic()
        self.wake.set()

    def reload(self) -> None:
        self.reload_asked = False
        notify("RELOADING=1")
        try:
            config = self.load()
            collectors = {c.name: c for c in self.select(config)}
            if config.state_dir != self.config.state_dir:
                raise GamsaError(f"state_dir changed ({self.config.state_dir} -> "
                                 f"{config.state_dir}); restart the daemon to move it")
        except GamsaError as exc:
            self.log("error", "reload_refused",
                     f"config reload refused, keeping the old config: {exc.diagnostics()}")
            self.life("config_refused", reason=exc.diagnostics())
            notify("READY=1")
            return
        self.config, self.collectors = config, collectors
        self.plan.reset(config, list(collectors), time.monotonic())
        self.life("config_loaded", reason="reload", config_sha256=config.sha256,
                  source=None if config.source is None else str(config.source))
        self.report(config_sha256=config.sha256,
                    config_source=None if config.source is None else str(config.source))
        self.start_watch()
        self.restart_egress()
        self.log("info", "reloaded", f"config reloaded ({config.source or 'built-in defaults'}, "
                 f"sha256 {config.sha256[:16]}…)", config_sha256=config.sha256)
        notify("READY=1")

    # the loop -------------------------------------------------------------------------

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.on_signal)
        lower_priority(self.log)
        memory.tune()  # before any thread: agent/memory.py
        # What sealing imports, imported before the first sweep: modules loaded in its
        # midst would pin the arenas its records leave free (agent/memory.py).
        import agent.chainguard
        import agent.seal
        import agent.store  # noqa: F401
        with daemon_lock(self.config.state_dir):
            self.sweep_strays()
            self.log("info", "start", f"agent started (pid {os.getpid()}, collectors: "
                     f"{', '.join(self.collectors)}; config sha256 {self.config.sha256[:16]}…)",
                     pid=os.getpid(), config_sha256=self.config.sha256)
            source = self.config.source
            self.life("agent_start", prompt=False, version=__version__,
                      config_sha256=self.config.sha256)
            self.life("config_loaded", prompt=False, reason="start",
                      config_sha256=self.config.sha256,
                      source=None if source is None else str(source))
            self.report()
            shipper = self.shipper = Shipper(self)
            shipper.start()
            try:
                self.start_watch()  # before the start sweep: no change falls between
                self.restart_egress()
                self.loop(shipper)
            finally:
                notify("STOPPING=1")
                # before the last ship: sealed by the next start's sweep
                self.life("agent_stop", prompt=False, signal=self.stop_signal,
                          uptime_seconds=int(time.monotonic() - self.started))
                self.stop_watch()
                if self.egress is not None:  # its open window waits, closed, for the next bundle
                    self.egress.stop()
                if self.stop_asked_at is None:  # an error, not a signal: the same bounds
                    self.stop_asked_at = time.monotonic()
                shipper.stop.set()
                shipper.kick()
                shipper.join()  # its child ends by STOP_SHIP_BY (+1 s to be killed)
                self.report(stopped=utc_now(), next_due={})
                self.log("info", "stop", "agent stopped")

    def restart_egress(self) -> None:
        """(Re)start the AI-egress watcher with the current config."""
        if self.egress is not None:
            self.egress.stop()
        self.egress = egress.start(self.config, list(self.collectors), self.log, self.wake)

    def loop(self, shipper: Shipper) -> None:
        names = list(self.collectors)
        # READY after the start sweep was tried, sealed or not: the daemon is up and
        # keeps trying on schedule; a failed sweep is told in STATUS and the log.
        if self.seal(names, "schedule"):
            shipper.kick()
            notify("READY=1")
        else:
            notify("READY=1\nSTATUS=running, but the start sweep failed to seal; "
                   "retrying on schedule (see the log)")
        self.plan.reset(self.config, names, time.monotonic())
        self.report()
        self.next_ping = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            self.feed_watchdog(now)
            jump = self.clock.check()
            if jump is not None:
                self.log("warning", "clock_jump", f"the wall clock stepped "
                         f"{jump['step_seconds']} s", **jump)
                self.life("clock_jump", **jump)
            if self.reload_asked:
                self.reload()
                continue
            watch_due = self.watch.pending.due_in(now, self.watch.debounce) \
                if self.watch is not None else None
            if self.watch is not None and watch_due is not None and watch_due <= 0:
                if seal_batch(self, self.watch):
                    shipper.kick()
                continue
            due = self.plan.take_due(self.config, now)
            if due:
                if self.seal(due, "schedule"):
                    shipper.kick()
                continue
            egress_due = self.egress.due_in() if self.egress is not None else None
            if egress_due == 0.0:
                if self.seal([egress.NAME], "schedule"):
                    shipper.kick()
                continue
            silent = self.silent_for()
            heartbeat = self.config.schedule.heartbeat
            if silent >= heartbeat:
                if self.seal([], "heartbeat"):
                    shipper.kick()
                else:  # a failed heartbeat must not spin: try again a heartbeat later
                    self.last_sealed = time.monotonic()
                continue
            until = [heartbeat - silent, *(at - now for at in self.plan.due.values())]
            if self.ping_every is not None:
                until.append(self.next_ping - now)
            if watch_due is not None:
                until.append(watch_due)
            if egress_due is not None:
                until.append(egress_due)
            self.wake.wait(max(0.05, min(until)))
            self.wake.clear()
