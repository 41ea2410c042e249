"""The `host` collector: what machine this is (name, OS, kernel, hardware, network).

Files are read under the context root, so a fixture tree stands in for a machine.
Values that only a running system can give (psutil: boot time, CPUs, memory,
interfaces) are read only when the root is `/` and are null otherwise. No command
is run. Clock synchronization is a posture check (`collector._timesync`), not here.
"""

from __future__ import annotations

import hashlib
import platform
import socket
import sys
from collections.abc import Iterator
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

from collector._linux import (
    decode,
    key_text,
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



def _reads_linux_files(ctx: CollectContext) -> bool:
    """A fixture tree is a Linux layout; live, only Linux has these files."""
    return not ctx.is_live or sys.platform.startswith("linux")


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
    version="2",
    description="What machine this is: name, machine-id hash, OS, kernel, CPUs, memory, "
                "network interfaces. Files are read under the root; psutil values only on "
                "the live system.",
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
            },
        ),
    },
    collect=collect,
)
