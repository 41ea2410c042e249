"""The `packages` collector: installed software packages (dpkg and rpm).

dpkg's status database (/var/lib/dpkg/status) is parsed directly, one stanza at a
time, so thousands of packages cost milliseconds and no `dpkg-query` is needed;
the install time is the mtime of the package's file list in /var/lib/dpkg/info.
rpm's database is a binary format (Berkeley DB, NDB or SQLite by distribution), so
live it is read with `rpm -qa --queryformat`; in a fixture tree a captured output
of that command stands in (`/cmd/rpm-qa.txt`, see RPM_QUERYFORMAT).

This module also holds `run_tool`, the bounded subprocess runner the `services` and
`posture` collectors use too.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from collector._linux import (
    decode,
    key_text,
    malformed_record,
    record_text,
    unreadable_record,
)
from collector._tools import (
    COMMAND_FAILED,
    COMMAND_FAILED_TYPE,
    command_failed_record,
    run_tool,
    which,
)
from collector.record import Record, from_epoch
from collector.registry import CollectContext, Collector, Field, RecordType, unsupported

NAME = "packages"

DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_INFO = "/var/lib/dpkg/info"
RPM_CAPTURE = "/cmd/rpm-qa.txt"  # a fixture tree's captured `rpm -qa` output
RPM_QUERYFORMAT = ("%{NAME}\\t%{EPOCH}\\t%{VERSION}\\t%{RELEASE}\\t%{ARCH}\\t%{INSTALLTIME}"
                   "\\t%{SIZE}\\t%{SOURCERPM}\\n")
RPM_TIMEOUT_S = 60
RPM_DATABASES = ("/var/lib/rpm", "/usr/lib/sysimage/rpm")

_DPKG_FIELDS = frozenset({"Package", "Status", "Version", "Architecture", "Source",
                          "Installed-Size"})
_RPM_NONE = "(none)"


# --- dpkg ------------------------------------------------------------------------

@dataclass
class _Stanza:
    lineno: int
    fields: dict[str, str] = field(default_factory=dict)
    field_lines: dict[str, int] = field(default_factory=dict)


def _stanzas(stream: IO[bytes], problems: list[Record]) -> Iterator[_Stanza]:
    """The stanzas of a deb822 file as they are read; only the fields we use are
    kept, continuation lines (a leading space or tab) are skipped."""
    stanza: _Stanza | None = None
    for lineno, raw in enumerate(stream, start=1):
        line = decode(raw.rstrip(b"\r\n"))
        if not line.strip():
            if stanza is not None:
                yield stanza
                stanza = None
            continue
        if stanza is None:
            stanza = _Stanza(lineno)
        if line[0] in " \t":
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name:
            problems.append(malformed_record(NAME, DPKG_STATUS, lineno,
                                             "not a `Field: value` line"))
        elif name in _DPKG_FIELDS:
            stanza.fields[name] = value.strip()
            stanza.field_lines[name] = lineno
    if stanza is not None:
        yield stanza


def _install_time(ctx: CollectContext, name: str, arch: str | None) -> str | None:
    """mtime of the package's file list: when dpkg last unpacked it. Multi-Arch:
    same packages name it `<name>:<arch>.list`, the others `<name>.list`."""
    if "/" in name or (arch is not None and "/" in arch):
        return None
    candidates = ([f"{name}:{arch}.list"] if arch else []) + [f"{name}.list"]
    for candidate in candidates:
        try:
            return from_epoch(os.stat(ctx.path(f"{DPKG_INFO}/{candidate}")).st_mtime)
        except (OSError, ValueError):
            continue
    return None


def _size_kib(text: str | None) -> int | None:
    if text is None or not text.isdigit() or len(text) > 15:
        return None
    return int(text)


def _dpkg_record(ctx: CollectContext, stanza: _Stanza,
                 problems: list[Record]) -> Record | None:
    values = stanza.fields
    name = values.get("Package")
    if not name:
        problems.append(malformed_record(NAME, DPKG_STATUS, stanza.lineno,
                                         "stanza without a Package field"))
        return None
    status_words = values.get("Status", "").split()
    arch = values.get("Architecture")
    source, _, source_version = values.get("Source", name).partition(" ")
    size = values.get("Installed-Size")
    if size is not None and _size_kib(size) is None:
        problems.append(malformed_record(NAME, DPKG_STATUS,
                                         stanza.field_lines["Installed-Size"],
                                         "Installed-Size is not a number"))
    if len(status_words) != 3:
        problems.append(malformed_record(NAME, DPKG_STATUS,
                                         stanza.field_lines.get("Status", stanza.lineno),
                                         "Status is not `<want> <flag> <state>`"))
    return Record(NAME, "package", f"dpkg:{key_text(name)}:{key_text(arch or '')}", {
        "manager": "dpkg",
        "name": record_text(name),
        "version": None if values.get("Version") is None else record_text(values["Version"]),
        "arch": None if arch is None else record_text(arch),
        "source": record_text(source),
        "source_version": record_text(source_version.strip("() ")) if source_version
                          else None,
        "status": record_text(status_words[2]) if len(status_words) == 3 else None,
        "want": record_text(status_words[0]) if len(status_words) == 3 else None,
        "installed_size_kib": _size_kib(size),
        "install_time": _install_time(ctx, name, arch),
    })


def _dpkg(ctx: CollectContext) -> Iterator[Record]:
    """Each dpkg package as its stanza is read; problems after the packages."""
    problems: list[Record] = []
    try:
        with open(ctx.path(DPKG_STATUS), "rb") as stream:
            for stanza in _stanzas(stream, problems):
                record = _dpkg_record(ctx, stanza, problems)
                if record is not None:
                    yield record
    except OSError as exc:
        problems.append(unreadable_record(NAME, DPKG_STATUS, exc))
    yield from sorted(problems, key=lambda r: int(r.data.get("line", 0)))


# --- rpm -------------------------------------------------------------------------

@dataclass
class _RpmPackage:
    name: str
    arch: str
    data: dict[str, Any]


def _split_source_rpm(text: str) -> tuple[str | None, str | None]:
    """`bash-5.1.8-6.el9.src.rpm` -> (`bash`, `5.1.8-6.el9`)."""
    if text in ("", _RPM_NONE) or not text.endswith(".rpm"):
        return None, None
    stem = text.removesuffix(".rpm").rsplit(".", 1)[0]  # drop `.src` / `.nosrc`
    parts = stem.rsplit("-", 2)
    if len(parts) != 3:
        return stem, None
    return parts[0], f"{parts[1]}-{parts[2]}"


def _rpm_line(line: str, lineno: int, origin: str,
              problems: list[Record]) -> _RpmPackage | None:
    fields = line.split("\t")
    if len(fields) not in (6, 8):
        problems.append(malformed_record(NAME, origin, lineno,
                                         f"expected 6 or 8 tab-separated fields, found "
                                         f"{len(fields)}"))
        return None
    name, epoch, version, release, arch, installed = fields[:6]
    size, source_rpm = fields[6:] if len(fields) == 8 else ("", "")
    if not name or not installed.isdigit() or (epoch != _RPM_NONE and not epoch.isdigit()):
        problems.append(malformed_record(NAME, origin, lineno,
                                         "name, epoch or install time is not valid"))
        return None
    full_version = f"{version}-{release}" if release != _RPM_NONE else version
    if epoch != _RPM_NONE:
        full_version = f"{epoch}:{full_version}"
    source, source_version = _split_source_rpm(source_rpm)
    installed_time = int(installed)
    return _RpmPackage(name, arch, {
        "manager": "rpm",
        "name": record_text(name),
        "version": record_text(full_version),
        "arch": record_text(arch),
        "source": None if source is None else record_text(source),
        "source_version": None if source_version is None else record_text(source_version),
        "status": "installed",
        "want": None,
        "installed_size_kib": (int(size) + 1023) // 1024 if size.isdigit() else None,
        "install_time": from_epoch(installed_time) if 0 < installed_time < 2**40 else None,
    })


def _rpm_records(raw: bytes, origin: str) -> Iterator[Record]:
    """Records of `rpm -qa` output. Install-only packages (kernels, gpg-pubkey) can be
    installed in several versions at once: those keys get `:<version>` appended."""
    problems: list[Record] = []
    packages: list[_RpmPackage] = []
    for lineno, line in enumerate(decode(raw).split("\n"), start=1):
        if line.strip():
            package = _rpm_line(line.rstrip("\r"), lineno, origin, problems)
            if package is not None:
                packages.append(package)
    counts = Counter((p.name, p.arch) for p in packages)
    seen: set[str] = set()
    for package in packages:
        key = f"rpm:{key_text(package.name)}:{key_text(package.arch)}"
        if counts[(package.name, package.arch)] > 1:
            key += ":" + key_text(str(package.data["version"]))
        if key in seen:
            continue  # the same package listed twice: one record
        seen.add(key)
        yield Record(NAME, "package", key, package.data)
    yield from problems


def _rpm(ctx: CollectContext) -> tuple[bool, Iterator[Record]]:
    """(rpm present, its records). Live: run rpm; a fixture: its captured output."""
    if not ctx.is_live:
        try:
            raw = ctx.path(RPM_CAPTURE).read_bytes()
        except FileNotFoundError:
            return False, iter(())
        except OSError as exc:
            return True, iter([unreadable_record(NAME, RPM_CAPTURE, exc)])
        return True, _rpm_records(raw, RPM_CAPTURE)
    rpm = which("rpm")
    if rpm is None or not any(os.path.isdir(d) for d in RPM_DATABASES):
        return False, iter(())  # rpm on a dpkg system (alien) has no database to list
    run = run_tool([rpm, "-qa", "--queryformat", RPM_QUERYFORMAT], RPM_TIMEOUT_S)
    if not run.ok:
        return True, iter([command_failed_record(NAME, "rpm", run)])
    return True, _rpm_records(run.stdout, "rpm -qa")


def collect(ctx: CollectContext) -> Iterator[Record]:
    has_dpkg = os.path.lexists(ctx.path(DPKG_STATUS))
    if has_dpkg:
        yield from _dpkg(ctx)
    has_rpm, rpm_records = _rpm(ctx)
    yield from rpm_records
    if not has_dpkg and not has_rpm:
        yield unsupported(NAME, "package_manager",
                          f"no dpkg status file ({DPKG_STATUS}) and no rpm")


_NONE = type(None)
_TEXT = (str, dict)  # dict: {"b64": ...} for bytes that are not UTF-8
_OPT_TEXT = (str, dict, _NONE)

COLLECTOR = Collector(
    name=NAME,
    version="1",
    description="Installed packages: the dpkg status database parsed directly, and rpm "
                "through `rpm -qa --queryformat` (live; a fixture tree's captured output "
                "at /cmd/rpm-qa.txt otherwise). An `unsupported` record when neither "
                "exists.",
    platforms=("linux",),
    schedule="6h",  # the package set changes with maintenance, not by the minute
    record_types={
        "package": RecordType(
            doc="One package known to dpkg (every stanza of the status file, whatever "
                "its state: removed packages whose config files remain are listed too, "
                "with their status) or installed according to rpm.",
            key="`<manager>:<name>:<arch>` (e.g. `dpkg:libc6:amd64`); an rpm name and "
                "arch installed in several versions at once (kernels, gpg-pubkey) gets "
                "`:<version>` appended",
            fields={
                "manager": Field((str,), "`dpkg` or `rpm`"),
                "name": Field(_TEXT, "package name"),
                "version": Field(_OPT_TEXT,
                                 "version as the manager writes it (rpm: "
                                 "`[epoch:]version-release`); null when absent"),
                "arch": Field(_OPT_TEXT, "architecture (`amd64`, `all`, "
                                                "`x86_64`, `noarch`)"),
                "source": Field(_OPT_TEXT,
                                "source package name (dpkg: `Source:` or the package "
                                "name itself; rpm: from SOURCERPM, null when none)"),
                "source_version": Field(_OPT_TEXT,
                                        "source version when it differs from `version` "
                                        "(dpkg `Source: name (version)`), rpm: from "
                                        "SOURCERPM; else null"),
                "status": Field(_OPT_TEXT,
                                "dpkg state: `installed`, `config-files`, "
                                "`half-installed`, `unpacked`, `half-configured`, "
                                "`triggers-awaited`, `triggers-pending`, `not-installed`; "
                                "rpm: `installed`. Null when the Status line is malformed"),
                "want": Field(_OPT_TEXT,
                              "dpkg selection: `install`, `hold` (pinned against "
                              "upgrades), `deinstall`, `purge`, `unknown`; null for rpm"),
                "installed_size_kib": Field((int, _NONE),
                                            "installed size in KiB (dpkg Installed-Size; "
                                            "rpm SIZE rounded up); null when unknown"),
                "install_time": Field((str, _NONE),
                                      "when the package was last installed or upgraded "
                                      "(RFC 3339): rpm INSTALLTIME; dpkg the mtime of "
                                      "/var/lib/dpkg/info/<name>[:<arch>].list; null "
                                      "when unknown (e.g. config-files only)"),
            },
        ),
        COMMAND_FAILED_TYPE: COMMAND_FAILED,
    },
    collect=collect,
)
