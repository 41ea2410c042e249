"""The `processes` collector: every running process, what it runs and what it serves.

Live only (psutil; Linux, macOS, Windows): per process its parent, user, executable
with SHA-256 (see `collector._proc` for the cache and why Linux hashes
`/proc/<pid>/exe`), command line with secrets scrubbed, start time, status and the
TCP/UDP ports it listens on. Under a fixture root there is no process table to
read: one `unsupported` record says so.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

import psutil  # type: ignore[import-untyped]

from collector._hashcache import HashCache
from collector._linux import os_reason
from collector._proc import (
    FieldReader,
    as_text,
    exe_hash_cache,
    process_identity,
    process_key,
)
from collector.record import Record
from collector.registry import (
    CollectContext,
    Collector,
    Field,
    RecordType,
    coverage_gap,
    unsupported,
)
from collector.scrub import scrub_argv

NAME = "processes"

_FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
Listening = dict[int, list[dict[str, Any]]]


def _listening_entry(conn: Any) -> dict[str, Any] | None:
    """`{proto, family, address, port}` of a listening TCP or unbound-peer UDP socket."""
    family = _FAMILIES.get(conn.family)
    if family is None or not conn.laddr:
        return None
    if conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN:
        proto = "tcp"
    elif conn.type == socket.SOCK_DGRAM and not conn.raddr:
        proto = "udp"
    else:
        return None
    return {"proto": proto, "family": family, "address": conn.laddr.ip,
            "port": conn.laddr.port}


def _sorted_unique(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    unique = {(e["proto"], e["family"], e["address"], e["port"]): e for e in entries}
    return [unique[k] for k in sorted(unique)]


def _all_listening() -> Listening | None:
    """Listening sockets by owning pid; None when the system-wide table is denied
    (macOS without root)."""
    try:
        connections = psutil.net_connections(kind="inet")
    except psutil.AccessDenied:
        return None
    by_pid: Listening = {}
    for conn in connections:
        entry = _listening_entry(conn)
        if entry is not None and conn.pid is not None:
            by_pid.setdefault(conn.pid, []).append(entry)
    return {pid: _sorted_unique(entries) for pid, entries in by_pid.items()}


def _own_netns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None


def _linux_sockets_known(pid: int, own_netns: str | None) -> bool | None:
    """Can the system-wide table tell this process's sockets? False: another network
    namespace (a container: its sockets are not in our /proc/net); None: denied (its
    fd links cannot be read, even root may be refused by an LSM or a sandbox)."""
    try:
        if own_netns is not None and os.readlink(f"/proc/{pid}/ns/net") != own_netns:
            return False
        fds = os.listdir(f"/proc/{pid}/fd")
        if fds:  # access is decided per process: one link readable means all are
            os.readlink(f"/proc/{pid}/fd/{fds[0]}")
    except PermissionError:
        return None
    except OSError:
        pass  # the process or the fd is gone: the table's answer stands
    return True


def _listening(proc: psutil.Process, table: Listening | None, own_netns: str | None,
               reader: FieldReader) -> list[dict[str, Any]] | None:
    if table is None:  # system-wide table denied: ask per process (its own sockets)
        connections = reader.get("listening", "net_connections")
        if connections is None:
            return None
        return _sorted_unique([e for c in connections
                               if (e := _listening_entry(c)) is not None])
    if sys.platform.startswith("linux"):
        known = _linux_sockets_known(proc.pid, own_netns)
        if known is None:
            reader.denied.append("listening")
        if not known:
            return None
    return table.get(proc.pid, [])


def _process_record(proc: psutil.Process, cache: HashCache, table: Listening | None,
                    own_netns: str | None) -> Record:
    """Raises psutil.NoSuchProcess when the process has gone meanwhile."""
    reader = FieldReader(proc)
    with proc.oneshot():
        data = process_identity(proc, cache, reader)
        data["ppid"] = reader.get("ppid")
        argv = reader.get("cmdline")
        cmdline, redactions = scrub_argv(argv) if argv is not None else (None, 0)
        data["cmdline"] = None if cmdline is None else [as_text(a) for a in cmdline]
        data["cmdline_redactions"] = redactions
        data["status"] = reader.get("status")
        data["listening"] = _listening(proc, table, own_netns, reader)
        created = None if data["started"] is None else proc.create_time()
    data["access_denied"] = sorted(set(reader.denied))
    return Record(NAME, "process", process_key(proc.pid, created), data)


def _denied_gaps(records: list[Record]) -> Iterator[Record]:
    """One `coverage_gap` per field denied to the agent, counting the processes."""
    counts: dict[str, int] = {}
    for record in records:
        for name in record.data["access_denied"]:
            counts[name] = counts.get(name, 0) + 1
    for name, count in sorted(counts.items()):
        yield coverage_gap(NAME, name, "access denied (not root, or a sandbox)", count)


def collect(ctx: CollectContext) -> Iterator[Record]:
    if not ctx.is_live:
        yield unsupported(NAME, "process table",
                          "fixture mode: processes are read on the live system only")
        return
    yield from collect_processes(exe_hash_cache(ctx.state_dir))


def collect_processes(cache: HashCache) -> Iterator[Record]:
    """The live records, hashing through `cache` (saved, pruned to what ran, at the end)."""
    table = _all_listening()
    if table is None:
        yield coverage_gap(NAME, "net_connections",
                           "psutil.net_connections: AccessDenied (needs root here); "
                           "listening ports only of processes the agent may inspect")
    own_netns = _own_netns() if sys.platform.startswith("linux") else None
    records = []
    for proc in sorted(psutil.process_iter(), key=lambda p: p.pid):
        try:
            records.append(_process_record(proc, cache, table, own_netns))
        except psutil.NoSuchProcess:
            continue  # exited meanwhile: it no longer exists, nothing is lost
    yield from _denied_gaps(records)
    try:
        cache.save()
    except OSError as exc:
        yield unsupported(NAME, "exe hash cache",
                          f"not saved, the next run hashes again: {os_reason(exc)}")
    yield from records


_NONE = type(None)
_TEXT = (str, dict)  # dict: {"b64": ...} for bytes that are not UTF-8
_DENIED = " Null when access is denied (then listed in `access_denied`)."

COLLECTOR = Collector(
    name=NAME,
    version="2",
    description="Running processes (psutil, live only): parent, user, executable and "
                "its SHA-256 (cached by file identity under the state dir), command line "
                "with secrets scrubbed, start time, status and listening ports.",
    platforms=("linux", "darwin", "win32"),
    record_types={
        "process": RecordType(
            doc="One running process, sorted by pid. Processes that exit during the "
                "collection are left out (they no longer exist). Absent in fixture mode "
                "(one `unsupported` record instead).",
            key="`<pid>:<create time in epoch microseconds>` (pids are reused)",
            fields={
                "pid": Field((int,), "process id"),
                "ppid": Field((int, _NONE), "parent process id." + _DENIED),
                "name": Field((*_TEXT, _NONE), "process name." + _DENIED),
                "user": Field((*_TEXT, _NONE), "owning user name (the uid as text when it "
                                               "has no name)." + _DENIED,
                              personal=True),
                "exe": Field((*_TEXT, _NONE), "absolute path of the executable; null for "
                                              "kernel threads and zombies." + _DENIED),
                "exe_sha256": Field((str, _NONE),
                                    "hex SHA-256 of the executable (on Linux of "
                                    "`/proc/<pid>/exe`, the file actually running); null "
                                    "when there is none, it is deleted, or it cannot be "
                                    "read (then `exe_sha256` or `exe` is listed in "
                                    "`access_denied`)"),
                "exe_deleted": Field((bool, _NONE),
                                     "the running executable was deleted or replaced "
                                     "since start (Linux: link count 0; elsewhere: no "
                                     "file at the path); null when `exe` is unknown"),
                "cmdline": Field((list, _NONE),
                                 "arguments, secrets replaced by `[REDACTED:<kind>]` "
                                 "(collector.scrub.scrub_argv); empty for kernel "
                                 "threads." + _DENIED),
                "cmdline_redactions": Field((int,), "how many secrets were redacted"),
                "started": Field((str, _NONE), "start time (RFC 3339 UTC)." + _DENIED),
                "status": Field((str, _NONE), "psutil status: running, sleeping, zombie, "
                                              "..." + _DENIED),
                "listening": Field((list, _NONE),
                                   "sockets it listens on, sorted: `{proto: tcp|udp, "
                                   "family: inet|inet6, address, port}` (TCP in LISTEN; "
                                   "UDP without a peer). Null when its sockets cannot be "
                                   "told: denied (another user's process when not root, "
                                   "or a sandbox; listed in `access_denied`), another "
                                   "network namespace (Linux containers), or macOS "
                                   "without root (see the `coverage_gap` record)"),
                "access_denied": Field((list,), "names of the fields denied to the agent, "
                                                "sorted (`exe_sha256`: the executable's "
                                                "path is known but it may not be read); "
                                                "each is counted in a `coverage_gap` "
                                                "record, which makes the run `partial`"),
            },
        ),
    },
    collect=collect,
)
