"""The `services` collector: systemd units, how they are enabled, and what runs.

Unit files are read from the systemd search path under the context root (the
first directory holding a name wins, as systemd loads it; lower copies are listed
as overridden), each with its SHA-256, its drop-ins and its enablement judged from
the links in /etc/systemd/system (and /run for runtime enablement). Symlinks are
resolved by hand inside the root, so a fixture tree (or a hostile link) can never
make the collector read outside it. On a live host booted with systemd, the
runtime state comes from `systemctl show`, in batches.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from collector._linux import decode, key_text, missing_record, os_reason
from collector._tools import (
    COMMAND_FAILED,
    COMMAND_FAILED_TYPE,
    command_failed_record,
    run_tool,
    which,
)
from collector.record import Record
from collector.registry import (
    SOURCE_UNREADABLE_TYPE,
    CollectContext,
    Collector,
    Field,
    RecordType,
    unsupported,
)
from collector.scrub import scrub_command_line

NAME = "services"

ETC_UNITS = "/etc/systemd/system"
RUN_UNITS = "/run/systemd/system"
# systemd's system unit search path, highest precedence first (generators and
# transient units are left out: they are not configuration on disk).
UNIT_DIRS = (ETC_UNITS, RUN_UNITS, "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")
UNIT_TYPES = frozenset({"service", "socket", "timer", "target", "path", "mount", "automount",
                        "swap", "slice", "scope", "device"})
LINK_DIR_SUFFIXES = (".wants", ".requires", ".upholds")
SYSTEMCTL_PROPERTIES = ("Id", "ActiveState", "SubState", "MainPID", "ExecStart",
                        "FragmentPath")
SYSTEMCTL_TIMEOUT_S = 30
SYSTEMCTL_BATCH = 200
MAX_SYMLINKS = 40  # as the kernel's limit on a path walk
_PARSE_CAP = 1 << 20  # [Install] is looked for in the first MiB of a unit file
_INSTALL_KEYS = frozenset({"WantedBy", "RequiredBy", "UpheldBy", "Alias"})


# --- paths inside the root -------------------------------------------------------

@dataclass
class Resolved:
    """Where a host path leads inside the root: the final path (no symlink left in
    it), or why it leads nowhere readable."""

    path: str | None
    problem: str | None = None


def resolve_in_root(ctx: CollectContext, host_path: str) -> Resolved:
    """Follow symlinks in `host_path` component by component, the way the host
    would, but within `ctx.root`: absolute targets restart at the root, and `..`
    above the root (in a fixture tree) is refused rather than followed."""
    done: list[str] = []
    pending = deque(host_path.split("/"))
    links = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                if ctx.is_live:
                    continue  # /.. is / on the host itself
                return Resolved(None, "symlink leads outside the root")
            done.pop()
            continue
        candidate = [*done, part]
        real = ctx.path("/" + "/".join(candidate))
        try:
            info = os.lstat(real)
        except FileNotFoundError:
            return Resolved(None, "FileNotFoundError: target does not exist"
                            if links else "FileNotFoundError: does not exist")
        except OSError as exc:
            return Resolved(None, os_reason(exc))
        if not stat.S_ISLNK(info.st_mode):
            done = candidate
            continue
        links += 1
        if links > MAX_SYMLINKS:
            return Resolved(None, f"symlink loop (over {MAX_SYMLINKS} links)")
        try:
            target = os.readlink(real)
        except OSError as exc:
            return Resolved(None, os_reason(exc))
        if target.startswith("/"):
            done = []
        pending.extendleft(reversed(target.split("/")))
    return Resolved("/" + "/".join(done))


@dataclass
class FileHash:
    """A regular file's SHA-256 and its first MiB (for parsing), or the problem."""

    sha256: str | None
    head: bytes = b""
    problem: str | None = None


def hash_in_root(ctx: CollectContext, resolved: str) -> FileHash:
    """Hash a path `resolve_in_root` returned: regular files only (never a FIFO or
    device), opened without following a symlink swapped in since."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(ctx.path(resolved), flags)
    except OSError as exc:
        return FileHash(None, problem=os_reason(exc))
    with os.fdopen(fd, "rb") as stream:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return FileHash(None, problem="not a regular file")
            digest = hashlib.sha256()
            head = bytearray()
            while chunk := stream.read(1 << 16):
                digest.update(chunk)
                if len(head) < _PARSE_CAP:
                    head += chunk[:_PARSE_CAP - len(head)]
        except OSError as exc:
            return FileHash(None, problem=os_reason(exc))
    return FileHash(digest.hexdigest(), bytes(head))


def _unreadable(path: str, reason: str) -> Record:
    path = key_text(path)
    return Record(NAME, SOURCE_UNREADABLE_TYPE, path, {"path": path, "reason": reason})


# --- the unit files on disk ------------------------------------------------------

@dataclass
class _UnitFile:
    """One directory entry named like a unit, as found in one search directory."""

    path: str  # host path of the entry
    target: str | None = None  # where a symlink entry leads (host path)
    masked: bool = False
    sha256: str | None = None
    head: bytes = b""
    problem: str | None = None


@dataclass
class _Unit:
    name: str
    files: list[_UnitFile] = field(default_factory=list)  # precedence order
    dropins: dict[str, _UnitFile] = field(default_factory=dict)  # by file name
    linked_from: list[str] = field(default_factory=list)
    runtime_links: list[str] = field(default_factory=list)


def _is_unit_name(name: str) -> bool:
    stem, dot, suffix = name.rpartition(".")
    return bool(dot and stem and suffix in UNIT_TYPES)


def _scan(ctx: CollectContext, directory: str,
          problems: list[Record]) -> list[os.DirEntry[str]]:
    """The entries of `directory`; one that exists but may not be listed is recorded
    (its units are unseen)."""
    try:
        with os.scandir(ctx.path(directory)) as entries:
            return sorted(entries, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        problems.append(_unreadable(directory, os_reason(exc)))
        return []


def _read_entry(ctx: CollectContext, shown: str, real: str) -> _UnitFile:
    """A unit file or drop-in entry: masked, or resolved in the root and hashed.
    `shown` is its path as listed, `real` the same with its directory resolved."""
    entry = _UnitFile(shown)
    try:
        if os.path.islink(ctx.path(real)):
            link = os.readlink(ctx.path(real))
            if link == "/dev/null":
                entry.masked, entry.target = True, link
                return entry
            resolved = resolve_in_root(ctx, real)
            if resolved.path is None:
                entry.problem = resolved.problem
                return entry
            entry.target = resolved.path
    except OSError as exc:
        entry.problem = os_reason(exc)
        return entry
    hashed = hash_in_root(ctx, entry.target or real)
    entry.sha256, entry.head, entry.problem = hashed.sha256, hashed.head, hashed.problem
    if hashed.sha256 is not None and hashed.head == b"":
        entry.masked = True  # an empty unit file masks too, as systemd treats it
    return entry


def _search_dirs(ctx: CollectContext, problems: list[Record]) -> list[str]:
    """The unit directories present, each once (on Debian /lib is /usr/lib)."""
    found: list[str] = []
    seen: set[str] = set()
    for directory in UNIT_DIRS:
        resolved = resolve_in_root(ctx, directory)
        if resolved.path is None:
            if resolved.problem and not resolved.problem.startswith("FileNotFoundError"):
                problems.append(_unreadable(directory, resolved.problem))
            continue
        if resolved.path in seen:
            continue
        if not os.path.isdir(ctx.path(resolved.path)):
            continue
        seen.add(resolved.path)
        found.append(directory)
    return found


def _units_on_disk(ctx: CollectContext, directories: list[str],
                   problems: list[Record]) -> dict[str, _Unit]:
    units: dict[str, _Unit] = {}
    for directory in directories:
        real_dir = resolve_in_root(ctx, directory).path
        if real_dir is None:
            continue  # _search_dirs resolved it a moment ago
        for entry in _scan(ctx, real_dir, problems):
            shown, real = f"{directory}/{entry.name}", f"{real_dir}/{entry.name}"
            if _is_unit_name(entry.name) and not entry.is_dir(follow_symlinks=False):
                unit = units.setdefault(entry.name, _Unit(entry.name))
                unit.files.append(_read_entry(ctx, shown, real))
            elif entry.name.endswith(".d") and _is_unit_name(entry.name[:-2]):
                unit = units.setdefault(entry.name[:-2], _Unit(entry.name[:-2]))
                _add_dropins(ctx, unit, shown, real, problems)
    return units


def _add_dropins(ctx: CollectContext, unit: _Unit, shown: str, real: str,
                 problems: list[Record]) -> None:
    resolved = resolve_in_root(ctx, real)
    if resolved.path is None:
        problems.append(_unreadable(shown, resolved.problem or "unresolvable"))
        return
    for dropin in _scan(ctx, resolved.path, problems):
        if dropin.name.endswith(".conf") and dropin.name not in unit.dropins:
            unit.dropins[dropin.name] = _read_entry(ctx, f"{shown}/{dropin.name}",
                                                    f"{resolved.path}/{dropin.name}")


def _template_of(name: str) -> str | None:
    """`getty@tty1.service` -> `getty@.service`."""
    prefix, at, rest = name.partition("@")
    if not at or rest.startswith("."):
        return None
    return f"{prefix}@.{rest.rpartition('.')[2]}"


def _add_links(ctx: CollectContext, units: dict[str, _Unit], directory: str,
               runtime: bool, problems: list[Record]) -> None:
    """Note each `<x>.wants/<unit>` (and .requires, .upholds) link on its unit."""
    real_dir = resolve_in_root(ctx, directory).path
    if real_dir is None:
        return
    for sub in _scan(ctx, real_dir, problems):
        if not sub.name.endswith(LINK_DIR_SUFFIXES) or not sub.is_dir(follow_symlinks=False):
            continue
        for link in _scan(ctx, f"{real_dir}/{sub.name}", problems):
            name = link.name
            if name not in units:
                name = _template_of(name) or name
            unit = units.get(name)
            if unit is None:
                continue  # a link to a unit with no file in the search path
            where = f"{directory}/{sub.name}/{link.name}"
            (unit.runtime_links if runtime else unit.linked_from).append(where)


# --- judging a unit --------------------------------------------------------------

def _install_keys(head: bytes) -> set[str]:
    """Keys set in the unit file's [Install] section."""
    keys: set[str] = set()
    section = ""
    for raw in head.split(b"\n"):
        line = decode(raw).strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == "Install" and "=" in line:
            key, _, value = line.partition("=")
            if value.strip():
                keys.add(key.strip())
    return keys


def _alias_of(unit: _Unit, chosen: _UnitFile) -> str | None:
    """The unit name a symlink entry points to, when that is another unit."""
    if chosen.target is None or chosen.masked:
        return None
    target_name = chosen.target.rsplit("/", 1)[-1]
    if target_name == unit.name or not _is_unit_name(target_name):
        return None
    return target_name


def _enabled_state(unit: _Unit, chosen: _UnitFile | None) -> str | None:
    if chosen is None:
        return None
    if chosen.masked:
        return "masked"
    if chosen.sha256 is None:
        return "bad"
    if _alias_of(unit, chosen) is not None:
        return "alias"
    if unit.linked_from:
        return "enabled"
    if unit.runtime_links:
        return "enabled-runtime"
    keys = _install_keys(chosen.head)
    if keys & _INSTALL_KEYS:
        return "disabled"
    if "Also" in keys:
        return "indirect"
    return "static"


def _file_entry(entry: _UnitFile) -> dict[str, Any]:
    return {"path": key_text(entry.path), "sha256": entry.sha256}


def _unit_data(unit: _Unit) -> dict[str, Any]:
    chosen = unit.files[0] if unit.files else None
    return {
        "type": unit.name.rpartition(".")[2],
        "path": None if chosen is None else key_text(chosen.path),
        "target": None if chosen is None or chosen.target is None
                  else key_text(chosen.target),
        "sha256": None if chosen is None else chosen.sha256,
        "enabled": _enabled_state(unit, chosen),
        "alias_of": None if chosen is None else _alias_of(unit, chosen),
        "linked_from": sorted(key_text(p) for p in unit.linked_from + unit.runtime_links),
        "overrides": [_file_entry(f) for f in unit.files[1:]],
        "dropins": [_file_entry(unit.dropins[n]) for n in sorted(unit.dropins)],
        "active_state": None,
        "sub_state": None,
        "main_pid": None,
        "exec_start": None,
        "fragment_path": None,
    }


def _problems(units: dict[str, _Unit]) -> Iterator[Record]:
    for unit in units.values():
        for entry in [*unit.files, *unit.dropins.values()]:
            if entry.problem is not None:
                yield _unreadable(entry.path, entry.problem)


# --- systemctl (live) ------------------------------------------------------------

def _systemctl_unavailable(ctx: CollectContext) -> str | None:
    """Why `systemctl show` cannot give the runtime state here, or None."""
    if not ctx.is_live:
        return "not the live system (fixture root)"
    if not os.path.isdir(RUN_UNITS):
        return f"systemd is not the running init system (no {RUN_UNITS})"
    if which("systemctl") is None:
        return "systemctl is not installed"
    return None


def _exec_start(values: list[str]) -> list[str]:
    """The command lines of `ExecStart={ path=... ; argv[]=... ; ... }` values,
    secrets scrubbed."""
    commands: list[str] = []
    for value in values:
        for part in value.split(" ; "):
            part = part.strip().lstrip("{").strip()
            if part.startswith("argv[]="):
                commands.append(key_text(scrub_command_line(part[len("argv[]="):])[0]))
    return commands


def _show_blocks(output: bytes) -> list[dict[str, list[str]]]:
    blocks: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] = {}
    for raw in output.split(b"\n"):
        line = decode(raw)
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, equals, value = line.partition("=")
        if equals:
            current.setdefault(key, []).append(value)
    if current:
        blocks.append(current)
    return blocks


def _runtime_fields(block: dict[str, list[str]]) -> dict[str, Any]:
    def first(key: str) -> str | None:
        values = block.get(key)
        return values[0] if values and values[0] else None

    pid = first("MainPID")
    return {
        "active_state": first("ActiveState"),
        "sub_state": first("SubState"),
        "main_pid": int(pid) if pid is not None and pid.isdigit() and int(pid) > 0 else None,
        "exec_start": _exec_start(block.get("ExecStart", [])),
        "fragment_path": None if first("FragmentPath") is None
                         else key_text(str(first("FragmentPath"))),
    }


def _systemctl_show(names: list[str], data: dict[str, dict[str, Any]]) -> Record | None:
    """Fill the runtime fields of `data` (by unit name); a failure record, if any."""
    systemctl = which("systemctl") or "systemctl"
    # A template (`getty@.service`) has no runtime state of its own.
    loaded = [n for n in names if "@." not in n]
    for start in range(0, len(loaded), SYSTEMCTL_BATCH):
        batch = loaded[start:start + SYSTEMCTL_BATCH]
        run = run_tool([systemctl, "show", "--no-pager",
                        "--property=" + ",".join(SYSTEMCTL_PROPERTIES), "--", *batch],
                       SYSTEMCTL_TIMEOUT_S)
        if not run.ok:
            return command_failed_record(NAME, "systemctl", run)
        blocks = _show_blocks(run.stdout)
        if len(blocks) == len(batch):  # one block per unit, in argument order
            pairs = list(zip(batch, blocks, strict=True))
        else:
            pairs = [(b["Id"][0], b) for b in blocks if b.get("Id")]
        for name, block in pairs:
            if name in data:
                data[name].update(_runtime_fields(block))
    return None


# --- the collector ---------------------------------------------------------------

def collect(ctx: CollectContext) -> Iterator[Record]:
    problems: list[Record] = []
    directories = _search_dirs(ctx, problems)
    if not directories:
        yield from problems
        yield unsupported(NAME, "systemd", "no systemd unit directory ("
                          + ", ".join(UNIT_DIRS) + ")")
        return
    if ETC_UNITS not in directories and not os.path.lexists(ctx.path(ETC_UNITS)):
        yield missing_record(NAME, ETC_UNITS)
    units = _units_on_disk(ctx, directories, problems)
    _add_links(ctx, units, ETC_UNITS, runtime=False, problems=problems)
    _add_links(ctx, units, RUN_UNITS, runtime=True, problems=problems)
    # a directory both searched for units and for links is recorded once
    yield from {(r.type, r.key): r for r in problems}.values()
    yield from _problems(units)
    data = {name: _unit_data(units[name]) for name in sorted(units)}
    why_not = _systemctl_unavailable(ctx)
    failure = None if why_not is not None else _systemctl_show(list(data), data)
    for name, values in data.items():
        yield Record(NAME, "unit", key_text(name), values)
    if why_not is not None:
        yield unsupported(NAME, "systemctl", why_not)
    if failure is not None:
        yield failure


_NONE = type(None)
_LIVE = (" Live only (`systemctl show`, when systemd is the running init): null "
         "otherwise, and one `unsupported` record `services:systemctl` says why.")

COLLECTOR = Collector(
    name=NAME,
    version="1",
    description="systemd units: unit files on the search path (/etc, /run, "
                "/usr/local/lib, /usr/lib, /lib) with SHA-256, drop-ins, overridden "
                "copies and enablement from the .wants/.requires links; live, the "
                "runtime state from `systemctl show`. Symlinks are resolved inside the "
                "root and never followed out of it.",
    platforms=("linux",),
    record_types={
        "unit": RecordType(
            doc="One unit name found in a unit directory (or with drop-ins only). The "
                "first directory in precedence order (/etc/systemd/system, "
                "/run/systemd/system, /usr/local/lib/systemd/system, "
                "/usr/lib/systemd/system, /lib/systemd/system) holding the name is the "
                "file systemd loads.",
            key="the unit name (`ssh.service`)",
            fields={
                "type": Field((str,), "the unit type: the name's suffix (`service`, "
                                      "`timer`, `socket`, `target`, `mount`, ...)"),
                "path": Field((str, _NONE), "the loaded entry's path (null when the "
                                            "unit has drop-ins only)"),
                "target": Field((str, _NONE),
                                "where `path` leads when it is a symlink (`/dev/null` "
                                "when masked), resolved inside the root; else null"),
                "sha256": Field((str, _NONE),
                                "hex SHA-256 of the unit file's content (through its "
                                "symlink); null when masked, unreadable, or its symlink "
                                "leads outside the root, dangles or loops (a "
                                "`source_unreadable` record then says which)"),
                "enabled": Field((str, _NONE),
                                 "`masked` (symlink to /dev/null, or empty), `bad` "
                                 "(unreadable), `alias` (a symlink to another unit's "
                                 "file), `enabled` (linked from a .wants/.requires/"
                                 ".upholds directory of /etc/systemd/system; a "
                                 "template when any instance is), `enabled-runtime` "
                                 "(same, under /run), `disabled` ([Install] has "
                                 "WantedBy, RequiredBy, UpheldBy or Alias), `indirect` "
                                 "([Install] has only Also=), `static` (nothing to "
                                 "install); null with no unit file"),
                "alias_of": Field((str, _NONE), "the unit an `alias` points to"),
                "linked_from": Field((list,),
                                     "the enablement links naming this unit (paths, "
                                     "sorted), e.g. /etc/systemd/system/"
                                     "multi-user.target.wants/ssh.service"),
                "overrides": Field((list,),
                                   "lower-precedence files of the same name that `path` "
                                   "overrides (e.g. the vendor file under /usr/lib an "
                                   "/etc copy replaces): `[{path, sha256}]`"),
                "dropins": Field((list,),
                                 "`<unit>.d/*.conf` drop-ins, in the order systemd "
                                 "applies them (by file name; a name in a higher "
                                 "directory hides the same name in a lower one): "
                                 "`[{path, sha256}]`"),
                "active_state": Field((str, _NONE), "ActiveState (`active`, `inactive`, "
                                                    "`failed`, ...)." + _LIVE),
                "sub_state": Field((str, _NONE), "SubState (`running`, `dead`, "
                                                 "`exited`, ...)." + _LIVE),
                "main_pid": Field((int, _NONE), "MainPID; null when none." + _LIVE),
                "exec_start": Field((list, _NONE),
                                    "ExecStart command lines, secrets scrubbed." + _LIVE),
                "fragment_path": Field((str, _NONE),
                                       "FragmentPath: the file systemd actually loaded "
                                       "(compare with `path`)." + _LIVE),
            },
        ),
        COMMAND_FAILED_TYPE: COMMAND_FAILED,
    },
    collect=collect,
)
