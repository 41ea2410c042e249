"""The `posture` collector: security controls a bank inspection asks about, one
record per check.

Checks: time synchronization, auditd and its rules, SELinux, AppArmor, disk
encryption (dm-crypt, crypttab), screen lock (where a desktop exists) and USB
storage blocking. Files are read under the context root; which daemons run comes
from psutil and only on the live system (null in a fixture tree); `chronyc` and
`auditctl` are asked only live, when installed. A check whose subsystem is absent
(no SELinux, no desktop) is an `unsupported` record, never silence. Off Linux only
time synchronization is checked (through psutil); the rest are `unsupported`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

from collector import _timesync as timesync
from collector._linux import (
    decode,
    key_text,
    lines,
    malformed_record,
    read_source,
    unreadable_record,
)
from collector._tools import run_tool, which
from collector.record import Record
from collector.registry import CollectContext, Collector, Field, RecordType, unsupported

NAME = "posture"

AUDIT_RULES = "/etc/audit/audit.rules"
AUDIT_RULES_D = "/etc/audit/rules.d"
SELINUX_FS = "/sys/fs/selinux"
SELINUX_CONFIG = "/etc/selinux/config"
APPARMOR_ENABLED = "/sys/module/apparmor/parameters/enabled"
APPARMOR_PROFILES = "/sys/kernel/security/apparmor/profiles"
SYS_BLOCK = "/sys/block"
CRYPTTAB = "/etc/crypttab"
SESSION_DIRS = ("/usr/share/xsessions", "/usr/share/wayland-sessions")
DESKTOP_PROCESSES = frozenset({"Xorg", "Xwayland", "gnome-shell", "plasmashell",
                               "kwin_x11", "kwin_wayland", "xfce4-session", "mate-session",
                               "cinnamon-session", "lxsession", "sway", "weston"})
DCONF_LOCAL = "/etc/dconf/db/local.d"
# kmod's search path, highest precedence first; a file name in a higher directory
# hides the same name in a lower one.
MODPROBE_DIRS = ("/etc/modprobe.d", "/run/modprobe.d", "/usr/local/lib/modprobe.d",
                 "/usr/lib/modprobe.d", "/lib/modprobe.d")
PROC_MODULES = "/proc/modules"
TOOL_TIMEOUT_S = 10
_FILE_CAP = 4 << 20  # no posture file is legitimately this large


@dataclass
class _Env:
    """What every check may use: the context, the problems found so far, and the
    names of running processes (live only, else None)."""

    ctx: CollectContext
    problems: list[Record] = field(default_factory=list)
    processes: frozenset[str] | None = None

    def read(self, path: str) -> bytes | None:
        """A file that may be absent (no record then); unreadable is recorded."""
        source = read_source(self.ctx, NAME, path, report_missing=False)
        if source.problem is not None:
            self.problems.append(source.problem)
        return None if source.raw is None else source.raw[:_FILE_CAP]

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.ctx.path(path))

    def listdir(self, directory: str, suffix: str = "") -> list[str]:
        """Host paths of the regular files in `directory` ending in `suffix`, sorted."""
        try:
            with os.scandir(self.ctx.path(directory)) as entries:
                names = sorted(e.name for e in entries
                               if e.name.endswith(suffix) and e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:  # exists but may not be listed: its files are unseen
            self.problems.append(unreadable_record(NAME, directory, exc))
            return []
        return [f"{directory}/{name}" for name in names]

    def running(self, names: tuple[str, ...] | frozenset[str]) -> bool | None:
        return None if self.processes is None else bool(self.processes & set(names))


def _check(name: str, value: dict[str, Any]) -> Record:
    return Record(NAME, "check", name, {"value": value})


def _process_names() -> frozenset[str]:
    names: set[str] = set()
    for proc in psutil.process_iter(["name"]):
        name = proc.info.get("name")
        if name:
            names.add(name)
    return frozenset(names)


def _tool(name: str, env: _Env) -> str | None:
    return which(name) if env.ctx.is_live else None


# --- time_sync -------------------------------------------------------------------

def _time_sync(env: _Env) -> Record:
    return _check("time_sync", timesync.detect(env.ctx, NAME, env.processes, env.problems))


# --- auditd ----------------------------------------------------------------------

def _count_rules(raw: bytes) -> int:
    """Audit rules proper: syscall (-a/-A) and watch (-w) lines; control lines such
    as -D, -b, -e, -f are not rules."""
    count = 0
    for _n, line in lines(raw):
        words = line.split()
        if words and words[0] in ("-a", "-A", "-w"):
            count += 1
    return count


def _auditctl_enabled(env: _Env) -> tuple[int | None, str | None]:
    if not env.ctx.is_live:
        return None, None
    auditctl = _tool("auditctl", env)
    if auditctl is None:
        return None, "auditctl is not installed"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return None, "auditctl -s needs root"
    run = run_tool([auditctl, "-s"], TOOL_TIMEOUT_S)
    if not run.ok:
        return None, f"auditctl -s: {run.failure()}"
    for _n, line in lines(run.stdout):
        words = line.split()
        if len(words) == 2 and words[0] == "enabled" and words[1].isdigit():
            return int(words[1]), None
    return None, "auditctl -s: no `enabled` line"


def _auditd(env: _Env) -> Record:
    files = [p for p in [AUDIT_RULES, *env.listdir(AUDIT_RULES_D, ".rules")]
             if env.exists(p)]
    digest = hashlib.sha256()
    rule_count = 0
    read: list[str] = []
    for path in sorted(files):
        raw = env.read(path)
        if raw is None:
            continue
        read.append(path)
        digest.update(raw)
        rule_count += _count_rules(raw)
    enabled, detail = _auditctl_enabled(env)
    return _check("auditd", {
        "running": env.running(("auditd",)),
        "files": read,
        "rule_count": rule_count,
        "rules_sha256": digest.hexdigest() if read else None,
        "enabled": enabled,
        "detail": detail,
    })


# --- SELinux, AppArmor -----------------------------------------------------------

def _key_values(raw: bytes | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for _n, line in lines(raw or b""):
        key, equals, value = line.strip().partition("=")
        if equals and not key.startswith("#"):
            values[key.strip()] = value.strip().strip("\"'")
    return values


def _selinux(env: _Env) -> Record:
    has_fs = os.path.isdir(env.ctx.path(SELINUX_FS))
    if not has_fs and not env.exists(SELINUX_CONFIG):
        return unsupported(NAME, "selinux", f"SELinux is not present (no {SELINUX_FS}, "
                                            f"no {SELINUX_CONFIG})")
    enforce = env.read(f"{SELINUX_FS}/enforce") if has_fs else None
    runtime: str | None = None
    if enforce is not None:
        runtime = {"1": "enforcing", "0": "permissive"}.get(decode(enforce).strip())
    elif env.ctx.is_live and not has_fs:
        runtime = "disabled"
    config = _key_values(env.read(SELINUX_CONFIG))
    return _check("selinux", {
        "mode": runtime,
        "config_mode": key_text(config["SELINUX"]) if "SELINUX" in config else None,
        "config_type": key_text(config["SELINUXTYPE"]) if "SELINUXTYPE" in config else None,
    })


def _apparmor(env: _Env) -> Record:
    if not env.exists(APPARMOR_ENABLED):
        return unsupported(NAME, "apparmor",
                           "AppArmor is not present (no /sys/module/apparmor)")
    enabled = env.read(APPARMOR_ENABLED)
    profiles: dict[str, int] | None = None
    raw = env.read(APPARMOR_PROFILES)  # root only: unreadable is recorded, counts null
    if raw is not None:
        profiles = {}
        for _n, line in lines(raw):
            name, _sp, mode = line.rstrip().rpartition(" ")
            if name and mode.startswith("(") and mode.endswith(")"):
                profiles[mode[1:-1]] = profiles.get(mode[1:-1], 0) + 1
    return _check("apparmor", {
        "enabled": None if enabled is None else decode(enabled).strip().upper() == "Y",
        "profiles": None if profiles is None else dict(sorted(profiles.items())),
    })


# --- disk encryption -------------------------------------------------------------

def _dm_crypt_mappings(env: _Env) -> list[dict[str, Any]]:
    mappings: list[dict[str, Any]] = []
    try:
        with os.scandir(env.ctx.path(SYS_BLOCK)) as entries:
            devices = sorted(e.name for e in entries if e.name.startswith("dm-"))
    except OSError:
        return []
    for device in devices:
        uuid = env.read(f"{SYS_BLOCK}/{device}/dm/uuid")
        if uuid is None or not decode(uuid).startswith("CRYPT-"):
            continue
        name = env.read(f"{SYS_BLOCK}/{device}/dm/name")
        kind = decode(uuid).strip().split("-")
        mappings.append({"device": key_text(device),
                         "name": None if name is None else key_text(decode(name).strip()),
                         "type": key_text(kind[1]) if len(kind) > 1 else None})
    return mappings


def _crypttab(env: _Env) -> list[dict[str, Any]]:
    """crypttab(5) lines: name, device, key file path (never its content), options."""
    entries: list[dict[str, Any]] = []
    for lineno, line in lines(env.read(CRYPTTAB) or b""):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) < 2:
            env.problems.append(malformed_record(NAME, CRYPTTAB, lineno,
                                                 "expected at least name and device"))
            continue
        key_file = words[2] if len(words) > 2 and words[2] not in ("none", "-") else None
        entries.append({"name": key_text(words[0]), "device": key_text(words[1]),
                        "key_file": None if key_file is None else key_text(key_file),
                        "options": [key_text(o) for o in words[3].split(",")]
                                   if len(words) > 3 else []})
    return entries


def _disk_encryption(env: _Env) -> Record:
    return _check("disk_encryption", {"mappings": _dm_crypt_mappings(env),
                                      "crypttab": _crypttab(env)})


# --- screen lock -----------------------------------------------------------------

def _dconf_value(text: str) -> bool | int | str:
    """A GVariant text value as data: booleans, (typed) integers, else the text."""
    words = text.split()
    if words in (["true"], ["false"]):
        return words[0] == "true"
    if len(words) == 2 and words[0] in ("uint32", "int32", "uint64", "int64"):
        words = words[1:]
    if len(words) == 1 and words[0].isdigit() and len(words[0]) < 16:
        return int(words[0])
    return key_text(text.strip().strip("'\""))


def _dconf_settings(env: _Env) -> tuple[dict[str, Any], list[str]]:
    """`/section/key` -> value over the local.d keyfiles (later files win)."""
    settings: dict[str, Any] = {}
    files = env.listdir(DCONF_LOCAL)
    for path in files:
        section = ""
        for _n, line in lines(env.read(path) or b""):
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip().strip("/")
            elif "=" in line and not line.startswith("#") and section:
                key, _eq, value = line.partition("=")
                settings[f"/{section}/{key.strip()}"] = _dconf_value(value)
    return settings, files


def _dconf_locks(env: _Env) -> list[str]:
    locked: set[str] = set()
    for path in env.listdir(f"{DCONF_LOCAL}/locks"):
        for _n, line in lines(env.read(path) or b""):
            if line.strip().startswith("/"):
                locked.add(key_text(line.strip()))
    return sorted(locked)


def _screen_lock(env: _Env) -> Record:
    sessions = [p for d in SESSION_DIRS for p in env.listdir(d, ".desktop")]
    desktop_processes = (None if env.processes is None
                         else sorted(env.processes & DESKTOP_PROCESSES))
    if not sessions and not desktop_processes:
        return unsupported(NAME, "screen_lock", "no desktop (no X or Wayland session "
                                                "files, no desktop process)")
    settings, files = _dconf_settings(env)

    def setting(key: str) -> Any:
        return settings.get(key)

    return _check("screen_lock", {
        "sessions": [key_text(s) for s in sessions],
        "desktop_processes": desktop_processes,
        "lock_enabled": setting("/org/gnome/desktop/screensaver/lock-enabled"),
        "lock_delay_seconds": setting("/org/gnome/desktop/screensaver/lock-delay"),
        "idle_delay_seconds": setting("/org/gnome/desktop/session/idle-delay"),
        "locked_keys": _dconf_locks(env),
        "files": files,
    })


# --- USB storage -----------------------------------------------------------------

def _modprobe_files(env: _Env) -> list[str]:
    """The *.conf files kmod reads, one per name (highest directory wins), by name."""
    chosen: dict[str, str] = {}
    seen_dirs: set[str] = set()
    for directory in MODPROBE_DIRS:
        real = os.path.realpath(env.ctx.path(directory))  # /lib is /usr/lib on Debian
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        for path in env.listdir(directory, ".conf"):
            chosen.setdefault(path.rsplit("/", 1)[1], path)
    return [chosen[name] for name in sorted(chosen)]


def _usb_rule(words: list[str]) -> tuple[str, bool] | None:
    """(kind, blocks) when a modprobe.d line is about the usb-storage module."""
    if len(words) < 2 or words[1].replace("-", "_") != "usb_storage":
        return None
    if words[0] == "blacklist":
        return "blacklist", True
    if words[0] == "install":
        command = words[2].rsplit("/", 1)[-1] if len(words) > 2 else ""
        return "install", command in ("true", "false")
    return None


def _usb_storage(env: _Env) -> Record:
    rules: list[dict[str, Any]] = []
    for path in _modprobe_files(env):
        for lineno, line in lines(env.read(path) or b""):
            words = line.split("#", 1)[0].split()
            rule = _usb_rule(words)
            if rule is not None:
                rules.append({"file": path, "line": lineno, "kind": rule[0],
                              "blocks": rule[1], "text": key_text(" ".join(words))})
    modules = env.read(PROC_MODULES)
    loaded = None if modules is None else any(
        line.split(" ", 1)[0] == "usb_storage" for _n, line in lines(modules))
    return _check("usb_storage", {
        "blocked": any(r["blocks"] for r in rules),
        "rules": rules,
        "loaded": loaded,
    })


# --- the collector ---------------------------------------------------------------

LINUX_CHECKS: dict[str, Callable[[_Env], Record]] = {
    "time_sync": _time_sync,
    "auditd": _auditd,
    "selinux": _selinux,
    "apparmor": _apparmor,
    "disk_encryption": _disk_encryption,
    "screen_lock": _screen_lock,
    "usb_storage": _usb_storage,
}


def collect(ctx: CollectContext) -> Iterator[Record]:
    env = _Env(ctx, processes=_process_names() if ctx.is_live else None)
    linux = not ctx.is_live or sys.platform.startswith("linux")
    results: list[Record] = []
    for name, check in LINUX_CHECKS.items():
        if linux or name == "time_sync":
            results.append(check(env))
        else:
            results.append(unsupported(NAME, name, f"a Linux check; this is {sys.platform}"))
    yield from env.problems
    yield from results


_LIVE = "null in a fixture tree (live only)"

COLLECTOR = Collector(
    name=NAME,
    version="2",
    description="Security posture, one record per check: time sync, auditd and its "
                "rules hash, SELinux, AppArmor, disk encryption (dm-crypt, crypttab), "
                "screen lock (where a desktop exists) and USB storage blocking. An "
                "absent subsystem is an `unsupported` record `posture:<check>`.",
    platforms=("linux", "darwin", "win32"),
    record_types={
        "check": RecordType(
            doc="One check's findings. `value` by check (running-process fields are "
                + _LIVE + "): "
                "**time_sync** " + timesync.DOC + "; "
                "**auditd** `{running, files: [/etc/audit/audit.rules, "
                "/etc/audit/rules.d/*.rules read, sorted], rule_count (-a/-A/-w lines), "
                "rules_sha256 (of the files' bytes concatenated in that order; null "
                "with none), enabled (`auditctl -s`, live as root, else null), "
                "detail}`; **selinux** `{mode: enforcing|permissive (/sys/fs/selinux/"
                "enforce) | disabled (live, no selinuxfs) | null, config_mode, "
                "config_type (SELINUX=, SELINUXTYPE= of /etc/selinux/config)}`; "
                "**apparmor** `{enabled, profiles: {mode: count} from "
                "/sys/kernel/security/apparmor/profiles, null when unreadable (root "
                "only)}`; **disk_encryption** `{mappings: [{device, name, type}] "
                "(dm devices whose uuid starts CRYPT-; type LUKS1, LUKS2, PLAIN, ...), "
                "crypttab: [{name, device, key_file (the path, never key material; "
                "null for none/-), options}]}`; **screen_lock** `{sessions (X and "
                "Wayland *.desktop session files), desktop_processes (running "
                "Xorg, gnome-shell, ...), lock_enabled, lock_delay_seconds, "
                "idle_delay_seconds (GNOME dconf defaults in /etc/dconf/db/local.d, "
                "later files win; null when unset), locked_keys (from locks/), "
                "files}`; **usb_storage** `{blocked (any rule blocks), rules: [{file, "
                "line, kind: install|blacklist, blocks (install to true/false, or "
                "blacklist), text}] from the modprobe.d directories, loaded "
                "(usb_storage in /proc/modules; null when unreadable)}`.",
            key="the check name: `time_sync`, `auditd`, `selinux`, `apparmor`, "
                "`disk_encryption`, `screen_lock`, `usb_storage`",
            fields={
                "value": Field((dict,), "the check's findings, shaped per check as "
                                        "described above"),
            },
        ),
    },
    collect=collect,
)
