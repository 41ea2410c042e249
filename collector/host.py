"""The `host` collector: what machine this is (name, OS, kernel, hardware, network, clock).

Files are read under the context root, so a fixture tree stands in for a machine.
Values that only a running system can give (psutil: boot time, CPUs, memory,
interfaces; the kernel clock state) are read only when the root is `/` and are
null otherwise. No command is run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import platform
import socket
import sys
from collections.abc import Iterator
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

from collector._linux import (
    decode,
    key_text,
    lines,
    missing_record,
    parse_os_release,
    read_source,
    record_text,
)
from collector.record import Record, from_epoch
from collector.registry import CollectContext, Collector, Field, RecordType

NAME = "host"

_MACHINE_ID = ("/etc/machine-id", "/var/lib/dbus/machine-id")
_OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
_OS_RELEASE_KEYS = {"name": "NAME", "version_id": "VERSION_ID", "id": "ID",
                    "pretty_name": "PRETTY_NAME"}

TIMESYNCD_MARKER = "/run/systemd/timesync/synchronized"
_TIMESYNCD_ENABLED = "/etc/systemd/system/sysinit.target.wants/systemd-timesyncd.service"
_TIMESYNCD_CONF = "/etc/systemd/timesyncd.conf"
_CHRONY_CONFS = ("/etc/chrony/chrony.conf", "/etc/chrony.conf")
_NTPD_CONFS = ("/etc/ntpsec/ntp.conf", "/etc/ntp.conf")
# Daemon process name -> service, for live runs.
_TIME_DAEMONS = {"chronyd": "chrony", "ntpd": "ntpd", "systemd-timesyncd": "systemd-timesyncd"}
_TIME_ERROR = 5  # adjtimex(2) clock state when the kernel clock is unsynchronized


def _reads_linux_files(ctx: CollectContext) -> bool:
    """A fixture tree is a Linux layout; live, only Linux has these files."""
    return not ctx.is_live or sys.platform.startswith("linux")


def _exists(ctx: CollectContext, path: str) -> bool:
    """Present under the root. A symlink counts as itself (a systemd enablement link
    in a fixture tree points at the real host); False on any OSError."""
    return os.path.lexists(ctx.path(path))


def _read_first(ctx: CollectContext, paths: tuple[str, ...],
                problems: list[Record]) -> bytes | None:
    """The first of `paths` that can be read; one `source_missing` if none exists."""
    unreadable = False
    for path in paths:
        source = read_source(ctx, NAME, path, report_missing=False)
        if source.raw is not None:
            return source.raw
        if source.problem is not None:  # exists but unreadable: say so, try the next
            problems.append(source.problem)
            unreadable = True
    if not unreadable:
        problems.append(missing_record(NAME, paths[0]))
    return None


def _read_optional(ctx: CollectContext, path: str, problems: list[Record]) -> bytes | None:
    """A file that may legitimately be absent: no record when missing."""
    source = read_source(ctx, NAME, path, report_missing=False)
    if source.problem is not None:
        problems.append(source.problem)
    return source.raw


def _first_line(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    text = decode(raw).strip().splitlines()
    return text[0].strip() if text and text[0].strip() else None


def _hostname(ctx: CollectContext, problems: list[Record]) -> str | None:
    if ctx.is_live:
        return socket.gethostname()
    return _first_line(_read_first(ctx, ("/etc/hostname",), problems))


def machine_id_sha256(ctx: CollectContext, problems: list[Record]) -> str | None:
    """SHA-256 of the machine id (never the id itself); `agent.identity` uses this
    too, so the host record and the manifest's host always agree."""
    if not _reads_linux_files(ctx):
        return None
    raw = _read_first(ctx, _MACHINE_ID, problems)
    if raw is None or not raw.strip():
        return None
    return hashlib.sha256(raw.strip()).hexdigest()


def _os(ctx: CollectContext, problems: list[Record]) -> dict[str, Any]:
    result: dict[str, Any] = {"system": platform.system() if ctx.is_live else None}
    release: dict[str, str] = {}
    if _reads_linux_files(ctx):
        raw = _read_first(ctx, _OS_RELEASE, problems)
        release = parse_os_release(raw) if raw is not None else {}
    for field, var in _OS_RELEASE_KEYS.items():
        result[field] = record_text(release[var]) if var in release else None
    if ctx.is_live and sys.platform == "darwin" and not release:
        version = platform.mac_ver()[0] or None
        result.update(name="macOS", version_id=version, id="macos",
                      pretty_name=f"macOS {version}" if version else "macOS")
    elif ctx.is_live and sys.platform == "win32" and not release:
        result.update(name="Windows", version_id=platform.version(), id="windows",
                      pretty_name=f"Windows {platform.release()}")
    return result


def _kernel(ctx: CollectContext, problems: list[Record]) -> dict[str, Any]:
    if ctx.is_live:
        uname = platform.uname()
        return {"release": uname.release, "version": uname.version}
    release = _first_line(_read_optional(ctx, "/proc/sys/kernel/osrelease", problems))
    version = _first_line(_read_optional(ctx, "/proc/sys/kernel/version", problems))
    return {"release": None if release is None else record_text(release),
            "version": None if version is None else record_text(version)}


def interfaces() -> list[dict[str, Any]]:
    """Live network interfaces sorted by name: name, mac, addresses, is_up, mtu."""
    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    result = []
    for name in sorted(set(addrs) | set(stats)):
        mac = None
        addresses = []
        for addr in addrs.get(name, []):
            if addr.family == psutil.AF_LINK:
                mac = addr.address
            elif addr.family in (socket.AF_INET, socket.AF_INET6):
                family = "inet" if addr.family == socket.AF_INET else "inet6"
                addresses.append({"family": family, "address": addr.address,
                                  "netmask": addr.netmask})
        addresses.sort(key=lambda a: (a["family"], a["address"]))
        stat = stats.get(name)
        result.append({"name": name, "mac": mac, "addresses": addresses,
                       "is_up": None if stat is None else stat.isup,
                       "mtu": None if stat is None else stat.mtu})
    return result


def _kernel_clock_synchronized() -> bool | None:
    """The kernel's own view (what `timedatectl` shows), read with adjtimex(2) modes=0."""
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


def _running_time_daemon() -> str | None:
    for proc in psutil.process_iter(["name"]):
        service = _TIME_DAEMONS.get(proc.info.get("name") or "")
        if service is not None:
            return service
    return None


def _conf_lines(ctx: CollectContext, path: str, problems: list[Record]) -> list[list[str]]:
    raw = _read_optional(ctx, path, problems)
    if raw is None:
        return []
    return [line.split("#")[0].split() for _n, line in lines(raw)]


def _glob(ctx: CollectContext, pattern: str) -> list[str]:
    """Absolute paths (as on the host) matching `pattern`, wildcards in the last part."""
    directory, _, name = pattern.rstrip("/").rpartition("/")
    try:
        found = sorted(p.name for p in ctx.path(directory or "/").glob(name) if p.is_file())
    except OSError:
        return []
    return [f"{directory}/{n}" for n in found]


def _ntp_servers(ctx: CollectContext, path: str, problems: list[Record],
                 depth: int = 0) -> list[str]:
    """`server`/`pool`/`peer` hosts of a chrony or ntpd config, following chrony's
    `include`, `confdir` (*.conf) and `sourcedir` (*.sources)."""
    servers: list[str] = []
    for words in _conf_lines(ctx, path, problems):
        if len(words) < 2:
            continue
        directive, args = words[0].lower(), words[1:]
        if directive in ("server", "pool", "peer"):
            servers += [a for a in args if not a.startswith("-")][:1]  # ntpd: server -4 x
        elif depth < 8 and directive == "include":
            for included in _glob(ctx, args[0]):
                servers += _ntp_servers(ctx, included, problems, depth + 1)
        elif depth < 8 and directive in ("confdir", "sourcedir"):
            suffix = "*.conf" if directive == "confdir" else "*.sources"
            for directory in args:
                for included in _glob(ctx, f"{directory.rstrip('/')}/{suffix}"):
                    servers += _ntp_servers(ctx, included, problems, depth + 1)
    return servers


def _timesyncd_servers(ctx: CollectContext, problems: list[Record]) -> list[str]:
    """`NTP=` of timesyncd.conf and its drop-ins (a later assignment replaces)."""
    servers: list[str] = []
    for path in (_TIMESYNCD_CONF, *_glob(ctx, _TIMESYNCD_CONF + ".d/*.conf")):
        raw = _read_optional(ctx, path, problems)
        for _n, line in lines(raw or b""):
            key, equals, value = line.partition("=")
            if equals and key.strip() == "NTP":
                servers = value.split()
    return servers


def _time_sync(ctx: CollectContext, problems: list[Record]) -> dict[str, Any]:
    chrony = next((p for p in _CHRONY_CONFS if _exists(ctx, p)), None)
    ntpd = next((p for p in _NTPD_CONFS if _exists(ctx, p)), None)
    service: str | None = _running_time_daemon() if ctx.is_live else None
    if service is None:
        if _exists(ctx, TIMESYNCD_MARKER):
            service = "systemd-timesyncd"
        elif chrony is not None:
            service = "chrony"
        elif ntpd is not None:
            service = "ntpd"
        elif _exists(ctx, _TIMESYNCD_ENABLED):
            service = "systemd-timesyncd"
    servers: list[str] = []
    if service == "chrony" and chrony is not None:
        servers = _ntp_servers(ctx, chrony, problems)
    elif service == "ntpd" and ntpd is not None:
        servers = _ntp_servers(ctx, ntpd, problems)
    elif service == "systemd-timesyncd":
        servers = _timesyncd_servers(ctx, problems)

    synchronized: bool | None = None
    source: str | None = None
    if service == "systemd-timesyncd" and _exists(ctx, TIMESYNCD_MARKER):
        synchronized, source = True, TIMESYNCD_MARKER
    elif ctx.is_live:
        synchronized = _kernel_clock_synchronized()
        source = None if synchronized is None else "adjtimex"
    return {"service": service, "synchronized": synchronized, "source": source,
            "servers": [key_text(s) for s in dict.fromkeys(servers)]}


def collect(ctx: CollectContext) -> Iterator[Record]:
    problems: list[Record] = []
    hostname = _hostname(ctx, problems)
    data: dict[str, Any] = {
        "hostname": None if hostname is None else record_text(hostname),
        "machine_id_sha256": machine_id_sha256(ctx, problems),
        "os": _os(ctx, problems),
        "kernel": _kernel(ctx, problems),
        "boot_time": None,
        "cpu_count": None,
        "memory_total_bytes": None,
        "interfaces": None,
        "time_sync": _time_sync(ctx, problems),
    }
    if ctx.is_live:
        data.update(
            boot_time=from_epoch(psutil.boot_time()),
            cpu_count={"logical": psutil.cpu_count(logical=True),
                       "physical": psutil.cpu_count(logical=False)},
            memory_total_bytes=psutil.virtual_memory().total,
            interfaces=interfaces(),
        )
    yield from problems
    yield Record(NAME, "host", "" if hostname is None else key_text(hostname), data)


_LIVE = " Live only: null when the root is not `/`."
_NONE = type(None)

COLLECTOR = Collector(
    name=NAME,
    version="1",
    description="What machine this is: name, machine-id hash, OS, kernel, CPUs, memory, "
                "network interfaces and clock synchronization. Files are read under the "
                "root; psutil and kernel-clock values only on the live system.",
    platforms=("linux", "darwin", "win32"),
    record_types={
        "host": RecordType(
            doc="One record describing the host.",
            key="the hostname (empty when unknown)",
            fields={
                "hostname": Field((str, dict, _NONE),
                                  "`socket.gethostname()` live, else `/etc/hostname` under "
                                  "the root"),
                "machine_id_sha256": Field((str, _NONE),
                                           "hex SHA-256 of /etc/machine-id (or "
                                           "/var/lib/dbus/machine-id), stripped; never the "
                                           "id itself; null where absent"),
                "os": Field((dict,),
                            "`{system, name, version_id, id, pretty_name}`: `system` is "
                            "`platform.system()` (live only), the rest from os-release "
                            "NAME, VERSION_ID, ID, PRETTY_NAME (macOS, Windows: from "
                            "`platform`)"),
                "kernel": Field((dict,),
                                "`{release, version}`: `platform.uname()` live, else "
                                "/proc/sys/kernel/osrelease and version under the root "
                                "if present (null otherwise)"),
                "boot_time": Field((str, _NONE),
                                   "boot time (RFC 3339 UTC) from `psutil.boot_time()`."
                                   + _LIVE),
                "cpu_count": Field((dict, _NONE),
                                   "`{logical, physical}` CPU counts from psutil (each may "
                                   "be null if psutil cannot tell)." + _LIVE),
                "memory_total_bytes": Field((int, _NONE),
                                            "total physical memory in bytes." + _LIVE),
                "interfaces": Field((list, _NONE),
                                    "network interfaces sorted by name: `{name, mac, "
                                    "addresses: [{family: inet|inet6, address, netmask}], "
                                    "is_up, mtu}` from psutil." + _LIVE),
                "time_sync": Field((dict,),
                                   "`{service, synchronized, source, servers}`: `service` "
                                   "chrony | systemd-timesyncd | ntpd | null (live: the "
                                   "running daemon; else by config files under the "
                                   "root); `synchronized` true/false/null; `source` the "
                                   "evidence for it: "
                                   "`/run/systemd/timesync/synchronized` (timesyncd "
                                   "synced), `adjtimex` (the kernel clock state, live "
                                   "Linux only) or null; `servers` the NTP servers/pools "
                                   "configured for that service"),
            },
        ),
    },
    collect=collect,
)
