"""The daemon's heavy work in a short-lived child process: ship, look before sealing,
or seal a scheduled sweep.

`gamsa agent run` lives for years, so it never imports a store client: boto3 and
botocore (about 30 MB resident, docs/BENCHMARKS.md) would stay for its life. Nor does
it hold a sweep of every collector: CPython keeps most of the memory such a sweep
used (its allocator's arenas stay pinned by a few survivors) for the process's life.
Each ship, each pre-seal look at a network store, and each scheduled sweep runs

    python -m agent.store_child ship|look|seal PARENT_PID

with a JSON request on stdin: the daemon's effective config (as TOML, so a config
file edited since, or refused by a reload, plays no part), the resolved host id, and
for `look` the chain head, for `seal` the collectors and the trigger (and for a
file-change storm or rescan, the batch of changed paths: agent/fim.py). The child
writes one JSON object per line on stdout: the events the daemon logs in its own
format (`level`, `event`, `message` and fields), and for `look` a last `view` object,
for `seal` a last `sealed` object. Its exit code is 0, or the exit code of the
`GamsaError` it met (its diagnostics in an `error` event before it).

A SIGTERM or SIGINT ends the child at once (unwinding, so no temp file stays) and it
dies with the daemon
(PR_SET_PDEATHSIG): shipping is crash-safe by design (agent/ship.py: a crash repeats at
most a put of identical bytes), a look only reads, and a sealing cut short leaves only
its temp dir, which the next one removes (agent/state.py `recover`). So a ship stuck on a store that
never answers cannot hold the state lock beyond the daemon's stop, or its life.

This module is both ends of that protocol; the parent end imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from signing.errors import RUNTIME, GamsaError

PR_SET_PDEATHSIG = 1  # prctl(2)
KILL_GRACE_SECONDS = 1.0  # after SIGTERM at its deadline, SIGKILL if still alive
POLL_SECONDS = 0.2  # how often a running child's deadline is looked at

Event = dict[str, Any]


# --------------------------------------------------------------------------- parent end


@dataclass
class ChildResult:
    """How one child run ended."""

    returncode: int  # negative: ended by that signal
    results: list[Event] = field(default_factory=list)  # `view` and `error` objects
    killed: bool = False  # ended by us at its deadline

    @property
    def error(self) -> str | None:
        """Why it did not succeed, as one line; None when it did."""
        if self.returncode == 0:
            return None
        said = [e["message"] for e in self.results if e.get("event") == "error"]
        if said:
            return str(said[-1])
        if self.killed:
            return "stopped at its deadline (the daemon is stopping or the store hangs)"
        if self.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT):
            return f"ended by signal {signal.Signals(self.returncode - 128).name}"
        if self.returncode < 0:
            return f"ended by signal {signal.Signals(-self.returncode).name}"
        return f"exit code {self.returncode}"


def run_child(action: str, request: dict[str, Any], relay: Callable[[Event], None],
              deadline: Callable[[], float | None]) -> ChildResult:
    """Run `action` in a child, relaying its events as they come.

    `deadline()` (monotonic seconds, None: none) is asked while the child runs, so a
    stop decided meanwhile still ends it: SIGTERM at the deadline, SIGKILL a second
    later. Lines the child writes to stderr (a crash) are relayed as `error` events.
    """
    command = [sys.executable, "-m", "agent.store_child", action, str(os.getpid())]
    try:
        # A sweep runs collectors, whose tools may hang past their timeout: in its own
        # process group, so what it leaves running is ended with it (below), not
        # piled up one per sweep.
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, close_fds=True,
                                start_new_session=action == "seal")
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            # The agent's user may not execute its own interpreter (a venv linked into a
            # directory it cannot search): do the work here rather than never ship. It
            # cannot be ended at a deadline and leaves the client resident; said once.
            global _warned_in_process
            if not _warned_in_process:
                _warned_in_process = True
                relay({"level": "warning", "event": "store_child",
                       "message": f"cannot start the store child {sys.executable}: "
                                  f"{exc.strerror}; store work runs in the daemon itself "
                                  f"(let the agent's user execute its interpreter)"})
            return run_in_process(action, request, relay)
        # EAGAIN at the unit's TasksMax, ENOMEM: try again later
        return ChildResult(RUNTIME, [{"event": "error", "message": f"cannot start the store "
                                      f"child {sys.executable}: {exc.strerror or exc}"}])
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    result = ChildResult(returncode=0)
    try:
        proc.stdin.write(json.dumps(request).encode())
    except BrokenPipeError:
        pass  # it died at once; its stderr and exit code say why
    finally:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    killed_at: float | None = None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
        selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
        partial = {"stdout": b"", "stderr": b""}
        while selector.get_map():
            for key, _ in selector.select(POLL_SECONDS):
                stream: IO[bytes] = key.fileobj  # type: ignore[assignment]
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    selector.unregister(stream)
                    lines = [partial[key.data]] if partial[key.data] else []
                else:
                    *lines, partial[key.data] = (partial[key.data] + chunk).split(b"\n")
                for line in lines:
                    _take_line(key.data, line, relay, result)
            # `now` after `deadline()`: a deadline of "now" (a preempted ship) is then
            # always reached; read before, it was a few microseconds ahead every time.
            limit = deadline()
            now = time.monotonic()
            if killed_at is None and limit is not None and now >= limit:
                result.killed, killed_at = True, now
                _signal(proc, signal.SIGTERM)
            elif killed_at is not None and now >= killed_at + KILL_GRACE_SECONDS:
                _signal(proc, signal.SIGKILL)
    proc.stdout.close()
    proc.stderr.close()
    result.returncode = proc.wait()
    if action == "seal":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # a timed-out collector's tool, if any
    result.killed = result.killed and result.returncode != 0
    return result


_warned_in_process = False


def run_in_process(action: str, request: dict[str, Any],
                   relay: Callable[[Event], None]) -> ChildResult:
    """`action` in this process, its events relayed as a child's would be."""
    result = ChildResult(returncode=0)
    _local.sink = lambda event: _take_event(event, relay, result)
    try:
        result.returncode = _run(action, request)
    finally:
        del _local.sink
    return result


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.poll() is None:
        proc.send_signal(signum)


def _take_line(stream: str, line: bytes, relay: Callable[[Event], None],
               result: ChildResult) -> None:
    text = line.decode(errors="replace").strip()
    if not text:
        return
    if stream == "stderr":
        relay({"level": "error", "event": "store_child",
               "message": f"store child said: {text}"})
        return
    try:
        event = json.loads(text)
    except ValueError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        relay({"level": "error", "event": "store_child",
               "message": f"store child wrote an unexpected line: {text[:200]}"})
    else:
        _take_event(event, relay, result)


def _take_event(event: Event, relay: Callable[[Event], None], result: ChildResult) -> None:
    if "message" in event and event["event"] != "error":
        relay(event)
    else:
        result.results.append(event)


# --------------------------------------------------------------------------- child end


def _to_stdout(line: Event) -> None:
    sys.stdout.write(json.dumps(line, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


_local = threading.local()  # `.sink`: run_in_process's, per thread (ship and look at once)


def _emit(event: str, level: str = "info", message: str | None = None,
          **fields: Any) -> None:
    line: Event = {"event": event, **fields}
    if message is not None:
        line.update(level=level, message=message)
    sink: Callable[[Event], None] = getattr(_local, "sink", _to_stdout)
    sink(json.loads(json.dumps(line, sort_keys=True, default=str)))


def _exit_now(signum: int, _frame: object) -> None:
    """SIGTERM/SIGINT: unwind at once (SystemExit), so a temp file being written is
    removed and the lock released on the way out; the daemon kills a second later."""
    raise SystemExit(128 + signum)


def _die_with(parent: int) -> None:
    """Die when the daemon does (it may be killed -9 while we hold the state lock)."""
    signal.signal(signal.SIGTERM, _exit_now)
    signal.signal(signal.SIGINT, _exit_now)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # EPERM under a filter: fine
    if os.getppid() != parent:  # it died before the prctl took effect
        os._exit(RUNTIME)


def _config(request: dict[str, Any]) -> Any:
    from agent.config import parse_config

    return parse_config(request["config"].encode(), f"the daemon's config ({request['source']})")


def ship(request: dict[str, Any]) -> None:
    """Ship the spool under the state lock (what `gamsa ship` does)."""
    from agent.ship import ship_spool
    from agent.state import StateDir
    from agent.store import open_store

    config = _config(request)
    store = open_store(config.store.url, config.store)
    state = StateDir(config.state_dir, config.keys.agent)
    with state.locked():
        if not state.entries():
            return
        signer, _ = state.signer(request["host_id"])
        state.recover()
        report = ship_spool(state, store, signer.key_id, config.timestamp)
    if report.shipped:
        _emit("shipped", "info", f"shipped {len(report.shipped)} bundle(s) to {store.url}",
              count=len(report.shipped), store=store.url)
    for name in report.quarantined:
        _emit("quarantined", "error", f"quarantined {name}", bundle=name)
    if report.status_problem:
        _emit("ship_status", "warning", report.status_problem)


def look(request: dict[str, Any]) -> None:
    """The pre-seal look at the store (agent/chainguard.py), as a `view` object."""
    from agent.chainguard import look_before_sealing
    from agent.state import ChainHead, StateDir
    from agent.store import open_store

    config = _config(request)
    store = open_store(config.store.url, config.store)
    state = StateDir(config.state_dir, config.keys.agent)
    head = ChainHead(**request["head"]) if request["head"] is not None else None
    view = look_before_sealing(store, state, request["host_id"], head)
    _emit("view", **view_to_json(view))


def seal(request: dict[str, Any]) -> None:
    """A sweep of `names` sealed under the state lock, as the daemon would seal it;
    `lock_wait`/`lock_taken` tell the daemon when it waits for the lock (its own ship
    child may hold it), and a last `sealed` object is the bundle's `Sealed.summary`.
    With a `batch` (agent/fim.py `batch_to_json`): the file changes of a storm or a
    rescan, as the daemon seals a small batch; `unchanged` when nothing differs, and
    `life_noted` when a life event was noted for the daemon's agent collector."""
    from agent.chainguard import LOOK_SECONDS, look_within
    from agent.seal import seal_collection
    from agent.state import StateDir
    from agent.store import open_store
    from collector.registry import all_collectors

    # The manifest names the daemon's config file by its hash, not this TOML copy's.
    config = dataclasses.replace(_config(request), sha256=request["config_sha256"])
    host_id = request["host_id"]
    state = StateDir(config.state_dir, config.keys.agent)
    waiting: list[bool] = []

    def give_up() -> bool:
        if not waiting:
            waiting.append(True)
            _emit("lock_wait", "info", "waiting for the state lock")
        return False

    @contextlib.contextmanager
    def locked() -> Any:
        waiting.clear()
        with state.locked(give_up=give_up):
            if waiting:
                _emit("lock_taken", "info", "state lock taken")
            yield

    if request.get("batch") is not None:
        collector = _batch_collector(config, state, request["batch"], locked)
        if collector is None:
            _emit("unchanged")
            return
        collectors = [collector]
    else:
        available = all_collectors()
        collectors = [available[name] for name in request["names"]]
    look = None
    try:  # an unreachable store must not stop evidence from being sealed and spooled
        store = open_store(config.store.url, config.store)
        look = lambda head: look_within(LOOK_SECONDS, store, state, host_id, head)  # noqa: E731
    except GamsaError as exc:
        _emit("store_unchecked", "warning",
              f"store not checked before sealing: {exc.diagnostics()}")
    with locked():
        sealed = seal_collection(config, host_id, collectors, request["trigger"], state,
                                 look=look)
    _emit("sealed", **sealed.summary())


def _batch_collector(config: Any, state: Any, batch: dict[str, Any],
                     locked: Callable[[], Any]) -> Any:
    """The daemon's file-change collector for `batch` (agent/fim.py), its log lines
    and life events told as the daemon would."""
    from agent import fim
    from agent.lifelog import note_quietly

    def baseline() -> Any:
        with locked():
            return fim.sealed_checkpoint(state)

    def log(level: str, event: str, message: str, **fields: Any) -> None:
        _emit(event, level, message, **fields)

    def life(event: str, **fields: Any) -> None:
        problem = note_quietly(config.state_dir, event, **fields)
        if problem is not None:
            _emit("lifelog", "warning", f"agent event {event} not noted: {problem}")
        else:
            _emit("life_noted")

    return fim.batch_collector(config, state, fim.batch_from_json(batch),
                               baseline, log, life)


def view_to_json(view: Any) -> dict[str, Any]:
    divergence = view.divergence
    return {"divergence": None if divergence is None else {"reason": divergence.reason,
                                                           "follows": divergence.follows.to_json()},
            "store_time": None if view.store_time is None else view.store_time.isoformat(),
            "local_time": None if view.local_time is None else view.local_time.isoformat(),
            "problem": view.problem}


def view_from_json(data: dict[str, Any]) -> Any:
    """The StoreView a `look` child found (imports only agent.chainguard)."""
    import datetime as dt

    from agent.chainguard import Divergence, StoreView
    from signing.predicate import ChainFollows

    divergence = data.get("divergence")
    return StoreView(
        divergence=None if divergence is None else Divergence(
            divergence["reason"], ChainFollows.read(divergence["follows"], "follows")),
        store_time=(None if data.get("store_time") is None
                    else dt.datetime.fromisoformat(data["store_time"])),
        local_time=(None if data.get("local_time") is None
                    else dt.datetime.fromisoformat(data["local_time"])),
        problem=data.get("problem"))


ACTIONS: dict[str, Callable[[dict[str, Any]], None]] = {"ship": ship, "look": look,
                                                         "seal": seal}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ACTIONS or not argv[1].isdigit():
        print(f"usage: python -m agent.store_child {'|'.join(ACTIONS)} PARENT_PID",
              file=sys.stderr)
        return 2
    _die_with(int(argv[1]))
    return _run(argv[0], json.loads(sys.stdin.buffer.read()))


def _run(action: str, request: dict[str, Any]) -> int:
    """One action; its failure as an `error` event and the exit code."""
    try:
        ACTIONS[action](request)
    except GamsaError as exc:
        _emit("error", "error", exc.diagnostics(), exit_code=exc.exit_code)
        return exc.exit_code
    except OSError as exc:  # a write site that does not map its own errors
        from signing.errors import os_error

        _emit("error", "error", os_error(exc).diagnostics(), exit_code=RUNTIME)
        return RUNTIME
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
