"""Clock synchronization: the one detector of which time service runs and whether the
clock is synchronized (the posture check `time_sync` reports it; nothing else does,
so a bundle never holds two answers to this question).

Which service: live, the running daemon (chronyd, ntpd, systemd-timesyncd); else the
timesyncd "synchronized" marker; else the first service configured under the root
(chrony, then ntpd, then systemd-timesyncd when enabled: timesyncd.conf ships with
every systemd, so its presence alone says nothing). Whether synchronized: the
timesyncd marker (true), `chronyc -n tracking` live (its Leap status), else live on
Linux the kernel's own clock state from adjtimex(2) (what `timedatectl` shows).
Servers: `server`/`pool`/`peer` of chrony or ntpd (following chrony's include,
confdir and sourcedir), or timesyncd's `NTP=` and its drop-ins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass
from typing import Any

from collector._linux import key_text, lines, read_source
from collector._tools import run_tool, which
from collector.record import Record
from collector.registry import CollectContext

TIMESYNCD_MARKER = "/run/systemd/timesync/synchronized"
TIMESYNCD_ENABLED = "/etc/systemd/system/sysinit.target.wants/systemd-timesyncd.service"
TIMESYNCD_CONF = "/etc/systemd/timesyncd.conf"


@dataclass(frozen=True)
class TimeService:
    """A time daemon: its config files (first found is read) and process names."""

    configs: tuple[str, ...]
    processes: tuple[str, ...]


# In the order a configured (not running) service is chosen.
SERVICES: dict[str, TimeService] = {
    "chrony": TimeService(("/etc/chrony/chrony.conf", "/etc/chrony.conf"), ("chronyd",)),
    "ntpd": TimeService(("/etc/ntpsec/ntp.conf", "/etc/ntp.conf",
                         "/etc/openntpd/ntpd.conf"), ("ntpd",)),
    "systemd-timesyncd": TimeService((TIMESYNCD_CONF,), ("systemd-timesyncd",)),
}
_OTHER_OS_PROCESSES = {"darwin": ("timed",)}
_TIME_ERROR = 5  # adjtimex(2) clock state when the kernel clock is unsynchronized
_TOOL_TIMEOUT_S = 10
_MAX_INCLUDE_DEPTH = 8


@dataclass
class _Reader:
    """Files under the root; what exists but cannot be read becomes a problem record."""

    ctx: CollectContext
    collector: str
    problems: list[Record]

    def exists(self, path: str) -> bool:
        # A symlink counts as itself: a systemd enablement link in a fixture tree
        # points at the real host.
        return os.path.lexists(self.ctx.path(path))

    def words(self, path: str) -> list[list[str]]:
        source = read_source(self.ctx, self.collector, path, report_missing=False)
        if source.problem is not None:
            self.problems.append(source.problem)
        return [line.split("#")[0].split() for _n, line in lines(source.raw or b"")]

    def glob(self, pattern: str) -> list[str]:
        """Host paths of the files matching `pattern` (wildcards in the last part)."""
        directory, _, name = pattern.rstrip("/").rpartition("/")
        try:
            found = sorted(p.name for p in self.ctx.path(directory or "/").glob(name)
                           if p.is_file())
        except OSError:
            return []
        return [f"{directory}/{n}" for n in found]


def _ntp_servers(reader: _Reader, path: str, depth: int = 0) -> list[str]:
    servers: list[str] = []
    for words in reader.words(path):
        if len(words) < 2:
            continue
        directive, args = words[0].lower(), words[1:]
        if directive in ("server", "pool", "peer"):
            servers += [a for a in args if not a.startswith("-")][:1]  # ntpd: server -4 x
        elif depth < _MAX_INCLUDE_DEPTH and directive == "include":
            for included in reader.glob(args[0]):
                servers += _ntp_servers(reader, included, depth + 1)
        elif depth < _MAX_INCLUDE_DEPTH and directive in ("confdir", "sourcedir"):
            suffix = "*.conf" if directive == "confdir" else "*.sources"
            for directory in args:
                for included in reader.glob(f"{directory.rstrip('/')}/{suffix}"):
                    servers += _ntp_servers(reader, included, depth + 1)
    return servers


def _timesyncd_servers(reader: _Reader) -> list[str]:
    """`NTP=` of timesyncd.conf and its drop-ins (a later assignment replaces)."""
    servers: list[str] = []
    for path in (TIMESYNCD_CONF, *reader.glob(TIMESYNCD_CONF + ".d/*.conf")):
        for words in reader.words(path):
            text = " ".join(words)
            key, equals, value = text.partition("=")
            if equals and key.strip() == "NTP":
                servers = value.split()
    return servers


def kernel_clock_synchronized() -> bool | None:
    """The kernel's view, read with adjtimex(2) modes=0; None off Linux or on error."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = ctypes.create_string_buffer(512)  # > sizeof(struct timex); modes = 0: read
        state = int(libc.adjtimex(timex))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def _chronyc_tracking() -> tuple[bool | None, str]:
    chronyc = which("chronyc")
    if chronyc is None:
        return None, "chronyc is not installed"
    run = run_tool([chronyc, "-n", "tracking"], _TOOL_TIMEOUT_S)
    if not run.ok:
        return None, f"chronyc tracking: {run.failure()}"
    for _n, line in lines(run.stdout):
        key, colon, value = line.partition(":")
        if colon and key.strip() == "Leap status":
            status = value.strip()
            synced = {"Normal": True, "Not synchronised": False}.get(status)
            return synced, f"chronyc tracking: Leap status {status}"
    return None, "chronyc tracking: no Leap status line"


def _choose_service(reader: _Reader, running: list[str]) -> str | None:
    if running:
        return running[0]
    if reader.exists(TIMESYNCD_MARKER):
        return "systemd-timesyncd"
    for name in ("chrony", "ntpd"):
        if any(reader.exists(p) for p in SERVICES[name].configs):
            return name
    return "systemd-timesyncd" if reader.exists(TIMESYNCD_ENABLED) else None


def _synchronized(reader: _Reader, service: str | None,
                  is_running: bool) -> tuple[bool | None, str | None, str | None]:
    """(synchronized, source, detail): the value, what it was read from, and why."""
    if service == "systemd-timesyncd" and reader.exists(TIMESYNCD_MARKER):
        return True, TIMESYNCD_MARKER, f"{TIMESYNCD_MARKER} exists"
    detail = None
    if service == "chrony" and reader.ctx.is_live:
        synced, detail = _chronyc_tracking()
        if synced is not None:
            return synced, "chronyc", detail
    if reader.ctx.is_live:
        kernel = kernel_clock_synchronized()
        if kernel is not None:
            return kernel, "adjtimex", detail or ("kernel clock synchronized" if kernel else
                                                   "kernel clock unsynchronized")
    if detail is None and service is not None:
        detail = ("status is read only on the live system" if not reader.ctx.is_live else
                  "running, but no status source" if is_running else
                  "no synchronization status source")
    return None, None, detail


def detect(ctx: CollectContext, collector: str, processes: frozenset[str] | None,
           problems: list[Record]) -> dict[str, Any]:
    """`{service, running, configured, servers, synchronized, source, detail}`.

    `processes` are the running process names (live only, else None)."""
    if ctx.is_live and not sys.platform.startswith("linux"):
        return _other_os(processes)
    reader = _Reader(ctx, collector, problems)
    running = ([] if processes is None else
               [s for s, service in SERVICES.items() if processes & set(service.processes)])
    service = _choose_service(reader, running)
    servers: list[str] = []
    if service == "systemd-timesyncd":
        servers = _timesyncd_servers(reader)
    elif service is not None:
        config = next((p for p in SERVICES[service].configs if reader.exists(p)), None)
        servers = [] if config is None else _ntp_servers(reader, config)
    synchronized, source, detail = _synchronized(reader, service, service in running)
    return {
        "service": service,
        "running": None if processes is None or service is None else service in running,
        "configured": [p for s in SERVICES.values() for p in s.configs if reader.exists(p)],
        "servers": [key_text(s) for s in dict.fromkeys(servers)],
        "synchronized": synchronized,
        "source": source,
        "detail": detail,
    }


def _other_os(processes: frozenset[str] | None) -> dict[str, Any]:
    """macOS (timed) and Windows (the W32Time service), through psutil."""
    import psutil  # type: ignore[import-untyped]  # no stubs installed

    service: str | None = None
    running: bool | None = None
    if sys.platform == "darwin":
        service = "timed"
        running = None if processes is None else bool(
            processes & set(_OTHER_OS_PROCESSES["darwin"]))
    elif sys.platform == "win32":
        service = "W32Time"
        try:
            running = psutil.win_service_get("W32Time").status() == "running"
        except Exception:  # noqa: BLE001 - psutil raises several kinds; unknown then
            running = None
    return {"service": service, "running": running, "configured": [], "servers": [],
            "synchronized": None, "source": None, "detail": None}


DOC = ("`{service: chrony|ntpd|systemd-timesyncd|null (the running daemon, live; else "
       "the timesyncd marker /run/systemd/timesync/synchronized; else the first "
       "configured of chrony, ntpd, then timesyncd if enabled; macOS `timed`, Windows "
       "`W32Time`), running (null in a fixture tree), configured: [config files present], "
       "servers: [the NTP servers/pools configured for that service: chrony/ntpd "
       "server|pool|peer with includes, timesyncd NTP=], synchronized: true|false|null, "
       "source: what `synchronized` was read from (`/run/systemd/timesync/synchronized`, "
       "`chronyc` (`chronyc -n tracking` Leap status, live), `adjtimex` (the kernel "
       "clock state, live Linux) or null), detail: in words}`")
