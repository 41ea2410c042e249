"""The `network` collector: interfaces, routes, sockets, DNS, hosts, proxies, AI egress.

Files (routes from /proc/net, resolv.conf, /etc/hosts, proxy settings in
environment, shell profile, apt and yum/dnf files) are read under the context root,
so a fixture tree stands in for a machine. What only a running system can tell
(interfaces, sockets and their processes, the agent's own environment, name
resolution) is read with psutil/socket only when the root is `/`.

AI egress: the `ai_endpoints` config entries (see `collector._endpoints`) are parsed,
host names resolved, and every live connection whose remote end matches an entry
becomes an `ai_egress` record naming the process, its executable and that
executable's SHA-256. Proxy values and command lines pass through secret scrubbing.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

from collector._endpoints import (
    AI_ENDPOINTS,
    INVALID_RECORD_TYPE,
    Endpoint,
    HostsLine,
    Matcher,
    Resolution,
    build_matcher,
    hosts_names,
    parse_endpoints,
    parse_hosts,
)
from collector._hashcache import HashCache
from collector._linux import (
    decode,
    key_text,
    lines,
    malformed_record,
    read_source,
    record_text,
    unreadable_record,
)
from collector._proc import exe_hash_cache, process_exe
from collector.host import interfaces
from collector.options import BOOL, DURATION, Option
from collector.record import Record
from collector.registry import (
    CollectContext,
    Collector,
    Field,
    RecordType,
    coverage_gap,
    unsupported,
)
from collector.scrub import scrub_argv, scrub_text

NAME = "network"

ROUTE = "/proc/net/route"
IPV6_ROUTE = "/proc/net/ipv6_route"
RESOLV_CONFS = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")
HOSTS = "/etc/hosts"
ENVIRONMENT = "/etc/environment"
PROFILE_D = "/etc/profile.d"
APT_CONF = "/etc/apt/apt.conf"
APT_CONF_D = "/etc/apt/apt.conf.d"
YUM_CONFS = ("/etc/yum.conf", "/etc/dnf/dnf.conf")
YUM_REPOS_D = "/etc/yum.repos.d"
PROCESS_ENV = "process environment"

PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "ftp_proxy", "all_proxy",
                             "socks_proxy", "no_proxy"})
_APT_PROXY_KEY = re.compile(r"(?i)acquire::[a-z0-9+-]+::proxy(?:-auto-detect)?(?:::.+)?")
_APT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# apt's Dir::Ignore-Files-Silently defaults: such files in apt.conf.d are not read.
_APT_IGNORED = re.compile(r"(~|\.disabled|\.bak|\.dpkg-[a-z]+|\.ucf-[a-z]+|\.save|\.orig"
                          r"|\.distUpgrade)$")
_YUM_PROXY_KEY = re.compile(r"proxy(?:_username|_password|_auth_method)?")

# route(8) flag letters, by bit (RTF_* of <linux/route.h> and <linux/ipv6_route.h>).
_ROUTE_FLAGS = ((0x0001, "U"), (0x0002, "G"), (0x0004, "H"), (0x0008, "R"), (0x0010, "D"),
                (0x0020, "M"), (0x0200, "!"), (0x40000, "A"), (0x01000000, "C"))


# --- small helpers -------------------------------------------------------------

def _read(ctx: CollectContext, path: str, problems: list[Record],
          report_missing: bool = True) -> bytes | None:
    source = read_source(ctx, NAME, path, report_missing)
    if source.problem is not None:
        problems.append(source.problem)
    return source.raw


def _list_dir(ctx: CollectContext, directory: str, problems: list[Record]) -> list[str]:
    """Absolute paths of the regular files in `directory` (none if it is absent)."""
    try:
        names = sorted(os.listdir(ctx.path(directory)))
    except FileNotFoundError:
        return []
    except OSError as exc:
        problems.append(unreadable_record(NAME, directory, exc))
        return []
    return [f"{directory}/{n}" for n in names if os.path.isfile(ctx.path(f"{directory}/{n}"))]


def _strip_comment(line: str, markers: str = "#") -> str:
    for marker in markers:
        line = line.split(marker, 1)[0]
    return line.strip()


def _endpoint_text(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _unique_keys(records: Iterable[Record]) -> list[Record]:
    """`records` sorted by key; a key seen again gets `#2`, `#3`, ... (kept, not dropped)."""
    seen: dict[str, int] = {}
    result = []
    for record in sorted(records, key=lambda r: r.key):
        count = seen.get(record.key, 0) + 1
        seen[record.key] = count
        if count > 1:
            record = Record(record.collector, record.type, f"{record.key}#{count}", record.data)
        result.append(record)
    return result


# --- routes ----------------------------------------------------------------------

def _flag_letters(flags: int) -> str:
    return "".join(letter for bit, letter in _ROUTE_FLAGS if flags & bit)


def _hex_ipv4(text: str) -> str:
    # The kernel prints the network-order word as a native integer.
    return socket.inet_ntoa(struct.pack("=I", int(text, 16)))


def _route_record(family: str, destination: str, gateway: str | None, interface: str,
                  metric: int, flags: int, source: str | None) -> Record:
    key = f"{family} {destination}"
    if source is not None:
        key += f" from {source}"
    if gateway is not None:
        key += f" via {gateway}"
    key += f" dev {key_text(interface)} metric {metric}"
    return Record(NAME, "route", key, {
        "family": family, "destination": destination, "source": source,
        "gateway": gateway, "interface": record_text(interface), "metric": metric,
        "flags": _flag_letters(flags), "flags_raw": flags,
    })


def _ipv4_routes(raw: bytes, problems: list[Record]) -> list[Record]:
    records = []
    for lineno, line in lines(raw):
        words = line.split()
        if lineno == 1 or not words:  # header
            continue
        try:
            if len(words) < 8:
                raise ValueError(f"expected at least 8 fields, found {len(words)}")
            network = ipaddress.IPv4Network(f"{_hex_ipv4(words[1])}/{_hex_ipv4(words[7])}")
            gateway = _hex_ipv4(words[2])
            flags, metric = int(words[3], 16), int(words[6])
        except (ValueError, struct.error) as exc:
            problems.append(malformed_record(NAME, ROUTE, lineno, _reason(exc)))
            continue
        records.append(_route_record("inet", str(network),
                                     None if gateway == "0.0.0.0" else gateway,  # noqa: S104
                                     words[0], metric, flags, None))
    return records


def _hex_ipv6(text: str) -> ipaddress.IPv6Address:
    if len(text) != 32:
        raise ValueError("address is not 32 hex digits")
    return ipaddress.IPv6Address(bytes.fromhex(text))


def _ipv6_routes(raw: bytes, problems: list[Record]) -> list[Record]:
    records = []
    for lineno, line in lines(raw):
        words = line.split()
        if not words:
            continue
        try:
            if len(words) != 10:
                raise ValueError(f"expected 10 fields, found {len(words)}")
            destination = ipaddress.IPv6Network((_hex_ipv6(words[0]), int(words[1], 16)))
            source = ipaddress.IPv6Network((_hex_ipv6(words[2]), int(words[3], 16)))
            gateway = _hex_ipv6(words[4])
            metric, flags = int(words[5], 16), int(words[8], 16)
        except ValueError as exc:
            problems.append(malformed_record(NAME, IPV6_ROUTE, lineno, _reason(exc)))
            continue
        records.append(_route_record(
            "inet6", str(destination), None if gateway.is_unspecified else str(gateway),
            words[9], metric, flags, None if source.prefixlen == 0 else str(source)))
    return records


def _reason(exc: Exception) -> str:
    """A parse error without the offending text (it may be anything)."""
    text = str(exc)
    if "does not appear to be" in text or "has host bits set" in text:
        return "not a valid address or network"
    if "invalid literal" in text or "non-hexadecimal" in text:
        return "a number field is not a number"
    return text


def _routes(ctx: CollectContext, problems: list[Record]) -> list[Record]:
    records: list[Record] = []
    raw = _read(ctx, ROUTE, problems)
    if raw is not None:
        records += _ipv4_routes(raw, problems)
    raw = _read(ctx, IPV6_ROUTE, problems)
    if raw is not None:
        records += _ipv6_routes(raw, problems)
    seen: set[str] = set()  # the same route in two tables prints twice
    unique = []
    for record in records:
        if record.key not in seen:
            seen.add(record.key)
            unique.append(record)
    return unique


# --- resolv.conf, hosts ----------------------------------------------------------

def _resolv_conf(ctx: CollectContext, path: str, problems: list[Record],
                 required: bool) -> Record | None:
    raw = _read(ctx, path, problems, report_missing=required)
    if raw is None:
        return None
    nameservers: list[Any] = []
    search: list[Any] = []
    domain: Any = None
    options: list[Any] = []
    for _lineno, line in lines(raw):
        words = _strip_comment(line, "#;").split()
        if len(words) < 2:
            continue
        keyword, args = words[0], words[1:]
        if keyword == "nameserver":
            nameservers.append(record_text(args[0]))
        elif keyword == "search":  # search and domain: the last one wins
            search, domain = [record_text(a) for a in args], None
        elif keyword == "domain":
            domain, search = record_text(args[0]), []
        elif keyword == "options":
            options += [record_text(a) for a in args]
    link = ctx.path(path)
    target = key_text(os.readlink(link)) if os.path.islink(link) else None
    return Record(NAME, "dns_resolver", path, {
        "path": path, "symlink_target": target, "nameservers": nameservers,
        "search": search, "domain": domain, "options": options,
    })


@dataclass
class _HostsEntry:
    address: str
    names: list[str]
    lines: list[int]


def _hosts(ctx: CollectContext, problems: list[Record]) -> tuple[list[HostsLine],
                                                                 list[_HostsEntry]]:
    """The parsed lines, and the entries merged by address (malformed lines reported)."""
    parsed = parse_hosts(lines(_read(ctx, HOSTS, problems) or b""))
    entries: dict[str, _HostsEntry] = {}
    for line in parsed:
        if line.address is None:
            problems.append(malformed_record(NAME, HOSTS, line.lineno, str(line.reason)))
            continue
        entry = entries.setdefault(line.address, _HostsEntry(line.address, [], []))
        entry.names += [n for n in line.names if n not in entry.names]
        entry.lines.append(line.lineno)
    return parsed, list(entries.values())


# --- proxy settings --------------------------------------------------------------

@dataclass
class _Proxy:
    source: str
    line: int | None
    section: str | None
    variable: str
    value: str


def _scrubbed_value(variable: str, value: str) -> str:
    """Scrub `value` in context, so `proxy_password=...` is caught by its name too."""
    assignment = f"{variable}={value}"
    scrubbed, _count = scrub_text(assignment)
    return scrubbed[len(variable) + 1:] if scrubbed.startswith(f"{variable}=") else scrubbed


def _shell_assignments(path: str, raw: bytes, problems: list[Record]) -> list[_Proxy]:
    """`NAME=value` words of shell-like lines (export lines, /etc/environment)."""
    found = []
    for lineno, line in lines(raw):
        if "=" not in line or line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError:
            problems.append(malformed_record(NAME, path, lineno, "unbalanced quotes"))
            continue
        for word in words:
            variable, equals, value = word.partition("=")
            if equals and variable.lower() in PROXY_VARIABLES:
                found.append(_Proxy(path, lineno, None, variable, value))
    return found


def _apt_tokens(raw: bytes) -> Iterator[tuple[int, str, bool]]:
    """(line, token, quoted) of an apt.conf file; comments (//, /* */, #) dropped."""
    text = decode(raw)
    pattern = re.compile(r'"([^"]*)"|(//[^\n]*|#[^\n]*|/\*.*?\*/)|([{};])|([^\s{};"]+)',
                         re.DOTALL)
    for match in pattern.finditer(text):
        if match.group(2) is not None:
            continue
        lineno = text.count("\n", 0, match.start()) + 1
        if match.group(1) is not None:
            yield lineno, match.group(1), True
        else:
            yield lineno, match.group(3) or match.group(4), False


def _apt_proxies(path: str, raw: bytes) -> list[_Proxy]:
    """Proxy options of an apt.conf file, in the scoped (`a::b "v";`) and the
    block (`a { b "v"; };`) forms."""
    found = []
    scope: list[str] = []
    pending: list[str] = []  # words since the last `;`, `{` or `}`
    for lineno, word, quoted in _apt_tokens(raw):
        if word == "{" and not quoted:
            scope.append("::".join(pending))
            pending = []
        elif word == "}" and not quoted:
            if scope:
                scope.pop()
            pending = []
        elif word == ";" and not quoted:
            pending = []
        elif quoted and len(pending) == 1:
            key = "::".join([*scope, pending[0]])
            if _APT_PROXY_KEY.fullmatch(key):
                found.append(_Proxy(path, lineno, None, key, word))
            pending.append(word)
        else:
            pending.append(word)
    return found


def _yum_proxies(path: str, raw: bytes) -> list[_Proxy]:
    found = []
    section: str | None = None
    for lineno, line in lines(raw):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
            continue
        key, equals, value = stripped.partition("=")
        if equals and not stripped.startswith(("#", ";")) \
                and _YUM_PROXY_KEY.fullmatch(key.strip().lower()):
            found.append(_Proxy(path, lineno, section, key.strip(), value.strip()))
    return found


def _apt_files(ctx: CollectContext, problems: list[Record]) -> list[str]:
    files = [APT_CONF] if os.path.isfile(ctx.path(APT_CONF)) else []
    return files + [p for p in _list_dir(ctx, APT_CONF_D, problems)
                    if _APT_NAME.fullmatch(os.path.basename(p))
                    and not _APT_IGNORED.search(os.path.basename(p))]


def _proxies(ctx: CollectContext, problems: list[Record]) -> list[_Proxy]:
    found: list[_Proxy] = []
    shell_files = [ENVIRONMENT] + [p for p in _list_dir(ctx, PROFILE_D, problems)
                                   if p.endswith(".sh")]
    for path in shell_files:
        raw = _read(ctx, path, problems, report_missing=False)
        if raw is not None:
            found += _shell_assignments(path, raw, problems)
    for path in _apt_files(ctx, problems):
        raw = _read(ctx, path, problems, report_missing=False)
        if raw is not None:
            found += _apt_proxies(path, raw)
    repos = [p for p in _list_dir(ctx, YUM_REPOS_D, problems) if p.endswith(".repo")]
    for path in (*YUM_CONFS, *repos):
        raw = _read(ctx, path, problems, report_missing=False)
        if raw is not None:
            found += _yum_proxies(path, raw)
    if ctx.is_live:
        found += [_Proxy(PROCESS_ENV, None, None, name, value)
                  for name, value in sorted(os.environ.items())
                  if name.lower() in PROXY_VARIABLES]
    return found


def _proxy_records(proxies: list[_Proxy]) -> list[Record]:
    """One record per (source, section, variable): the last assignment, as it applies."""
    last: dict[str, _Proxy] = {}
    for proxy in proxies:
        scope = f"[{proxy.section}]" if proxy.section is not None else ""
        last[f"{key_text(proxy.source)}:{scope}{key_text(proxy.variable)}"] = proxy
    return [Record(NAME, "proxy_setting", key, {
        "source": record_text(p.source), "line": p.line,
        "section": None if p.section is None else record_text(p.section),
        "variable": record_text(p.variable),
        "value": record_text(_scrubbed_value(p.variable, p.value)),
    }) for key, p in last.items()]


# --- AI endpoint resolution ------------------------------------------------------

def _resolution_records(endpoints: list[Endpoint], matcher: Matcher,
                        resolutions: dict[str, Resolution]) -> list[Record]:
    records = []
    for endpoint in endpoints:
        data: dict[str, Any] = {
            "entry": endpoint.entry, "kind": endpoint.kind,
            "name": endpoint.name if endpoint.kind == "host"
            else None if endpoint.name is None else f"*.{endpoint.name}",
            "network": None if endpoint.network is None else str(endpoint.network),
            "port": endpoint.port, "status": "literal", "resolved": None,
            "names": None, "addresses": None, "error": None,
        }
        if endpoint.kind == "host":
            assert endpoint.name is not None
            resolution = resolutions.get(endpoint.name)
            if resolution is not None:
                data.update(status=resolution.status, resolved=resolution.addresses,
                            error=resolution.error)
            else:
                data.update(status="not_live")
            data.update(addresses=matcher.addresses(endpoint))
        elif endpoint.kind == "wildcard":
            data.update(status="derived", names=matcher.covered_names(endpoint),
                        addresses=matcher.addresses(endpoint))
        records.append(Record(NAME, "ai_endpoint_resolution", endpoint.spec, data))
    return records


# --- live: interfaces, sockets, processes ----------------------------------------

def _interface_records() -> list[Record]:
    # The same facts as the host record's interfaces, one record per interface here.
    return [Record(NAME, "interface", key_text(iface["name"]),
                   {**iface, "name": record_text(iface["name"])}) for iface in interfaces()]


@dataclass
class _Process:
    name: Any = None
    user: Any = None
    exe: Any = None
    exe_sha256: str | None = None
    cmdline: list[Any] | None = None


def _attr(proc: Any, method: str) -> Any:
    try:
        return getattr(proc, method)()
    except (psutil.Error, OSError):
        return None


class _Processes:
    """Process facts by pid, looked up once; exe hashes cached by file identity."""

    def __init__(self, hashes: HashCache) -> None:
        self.cache: dict[int, _Process] = {}
        self.hashes = hashes

    def get(self, pid: int | None, with_exe: bool = False) -> _Process:
        if pid is None:
            return _Process()
        found = self.cache.get(pid)
        if found is None:
            found = self._look_up(pid)
            self.cache[pid] = found
        if with_exe and found.exe_sha256 is None and found.exe is not None:
            # The same hashing as the processes collector (the running file, by
            # /proc/<pid>/exe on Linux; null once deleted), so the two always agree.
            try:
                found.exe_sha256 = process_exe(psutil.Process(pid), self.hashes).sha256
            except (psutil.Error, OSError):
                found.exe_sha256 = None
        return found

    def _look_up(self, pid: int) -> _Process:
        try:
            proc = psutil.Process(pid)
        except (psutil.Error, OSError):
            return _Process()
        with proc.oneshot():
            name, user = _attr(proc, "name"), _attr(proc, "username")
            exe, cmdline = _attr(proc, "exe"), _attr(proc, "cmdline")
        return _Process(
            name=None if name is None else record_text(name),
            user=None if user is None else record_text(user),
            exe=exe or None,
            cmdline=None if cmdline is None else [record_text(a) for a in
                                                  scrub_argv(list(cmdline))[0]])


@dataclass
class _Conn:
    proto: str
    family: str
    status: str
    laddr: str
    lport: int
    raddr: str | None
    rport: int | None
    pid: int | None

    @property
    def key(self) -> str:
        local = _endpoint_text(self.laddr, self.lport)
        if self.raddr is None or self.rport is None:
            return f"{self.proto}:{local}"
        return f"{self.proto}:{local}-{_endpoint_text(self.raddr, self.rport)}"


def _connections() -> list[_Conn]:
    result = []
    for conn in psutil.net_connections(kind="inet"):
        if not conn.laddr:
            continue
        raddr = conn.raddr if conn.raddr else None
        result.append(_Conn(
            proto="tcp" if conn.type == socket.SOCK_STREAM else "udp",
            family="inet" if conn.family == socket.AF_INET else "inet6",
            status=str(conn.status), laddr=str(conn.laddr.ip), lport=int(conn.laddr.port),
            raddr=None if raddr is None else str(raddr.ip),
            rport=None if raddr is None else int(raddr.port), pid=conn.pid))
    return result


def _socket_records(conns: list[_Conn], processes: _Processes,
                    matcher: Matcher) -> list[Record]:
    listening, established, egress = [], [], []
    for conn in sorted(conns, key=lambda c: (c.key, c.pid or 0)):
        proc = processes.get(conn.pid)
        owner = {"pid": conn.pid, "process_name": proc.name, "user": proc.user}
        if conn.raddr is None or conn.rport is None:
            if conn.status == psutil.CONN_LISTEN or conn.proto == "udp":
                listening.append(Record(NAME, "listening_socket", conn.key, {
                    "proto": conn.proto, "family": conn.family, "address": conn.laddr,
                    "port": conn.lport, **owner}))
            continue
        ends = {"local_address": conn.laddr, "local_port": conn.lport,
                "remote_address": conn.raddr, "remote_port": conn.rport}
        if conn.proto == "tcp" and conn.status == psutil.CONN_ESTABLISHED:
            established.append(Record(NAME, "connection", conn.key, {
                "proto": conn.proto, "family": conn.family, **ends, **owner}))
        matched = matcher.match(conn.raddr, conn.rport)
        if matched:
            proc = processes.get(conn.pid, with_exe=True)
            egress.append(Record(NAME, "ai_egress", f"{conn.key}#{conn.pid or '-'}", {
                "proto": conn.proto, "family": conn.family, "status": conn.status, **ends,
                "pid": conn.pid, "process_name": proc.name, "user": proc.user,
                "exe": None if proc.exe is None else record_text(proc.exe),
                "exe_sha256": proc.exe_sha256, "cmdline": proc.cmdline,
                "matched": [e.entry for e in matched],
            }))
    return [*_unique_keys(listening), *_unique_keys(established), *_unique_keys(egress)]


def _not_read(source: str, exc: Exception) -> Record:
    """A live table that could not be read: denied is a gap, anything else unsupported."""
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (psutil.AccessDenied, PermissionError)):
        return coverage_gap(NAME, source, reason)
    return unsupported(NAME, source, reason)


def _fd_denied_processes() -> int:
    """Processes whose open files (Linux /proc/<pid>/fd) the agent may not list: the
    sockets they hold cannot be tied to them (psutil gives no pid)."""
    if not sys.platform.startswith("linux"):
        return 0
    denied = 0
    for pid in (name for name in os.listdir("/proc") if name.isdigit()):
        try:
            os.listdir(f"/proc/{pid}/fd")
        except PermissionError:
            denied += 1
        except OSError:
            continue  # gone meanwhile
    return denied


def _unowned_sockets(conns: list[_Conn]) -> list[Record]:
    """A gap for sockets with no owner while some processes' files were denied.
    (A TIME_WAIT socket has no owner anyway; it is not counted.)"""
    unowned = sum(1 for c in conns if c.pid is None and c.status != psutil.CONN_TIME_WAIT)
    denied = _fd_denied_processes() if unowned else 0
    if not denied:
        return []
    return [coverage_gap(NAME, "socket owner",
                         f"unknown: the open files of {denied} process(es) are denied "
                         f"(not root)", unowned)]


def _live_records(matcher: Matcher, problems: list[Record],
                  hashes: HashCache) -> list[Record]:
    records: list[Record] = []
    try:
        records += _interface_records()
    except (psutil.Error, OSError) as exc:
        problems.append(_not_read("interfaces", exc))
    try:
        conns = _connections()
    except (psutil.Error, OSError) as exc:  # macOS without root: AccessDenied
        problems.append(_not_read("connections", exc))
        conns = []
    problems += _unowned_sockets(conns)
    return records + _socket_records(conns, _Processes(hashes), matcher)


# --- the collector ---------------------------------------------------------------

def collect(ctx: CollectContext) -> Iterator[Record]:
    endpoints, invalid = parse_endpoints(ctx.value(AI_ENDPOINTS))
    problems: list[Record] = [entry.record(NAME) for entry in invalid]
    records: list[Record] = []
    reads_files = not ctx.is_live or not sys.platform.startswith("win")
    hosts: list[HostsLine] = []
    if not ctx.is_live or sys.platform.startswith("linux"):
        records += _routes(ctx, problems)
    else:
        problems.append(unsupported(NAME, "routes", f"no {ROUTE} on this platform"))
    if reads_files:
        for index, path in enumerate(RESOLV_CONFS):
            resolver = _resolv_conf(ctx, path, problems, required=index == 0)
            records += [resolver] if resolver is not None else []
        hosts, entries = _hosts(ctx, problems)
        records += [Record(NAME, "hosts_entry", e.address,
                           {"address": e.address, "names": [record_text(n) for n in e.names],
                            "lines": e.lines}) for e in entries]
        records += _proxy_records(_proxies(ctx, problems))
    else:
        problems.append(unsupported(NAME, "files", "resolv.conf, hosts and proxy files "
                                                   "are read on Linux and macOS only"))

    matcher, resolutions = build_matcher(endpoints, hosts_names(hosts), ctx.is_live)
    records += _resolution_records(endpoints, matcher, resolutions)
    if ctx.is_live:
        hashes = exe_hash_cache(ctx.state_dir)
        records += _live_records(matcher, problems, hashes)
        try:
            hashes.save(prune=False)  # processes prunes; here only a few exes were seen
        except OSError:
            pass  # a cache only: the next run hashes again
    yield from problems
    yield from records


_NONE = type(None)
_TEXT = (str, dict)  # dict: {"b64": ...} for bytes that are not UTF-8
_LIVE = " Live only (root `/`)."
_OWNER = {
    "pid": Field((int, _NONE), "owning process id; null when the OS does not tell (another "
                               "user's socket without privilege, TIME_WAIT)"),
    "process_name": Field((str, dict, _NONE), "the owning process's name, or null"),
    "user": Field((str, dict, _NONE), "the owning process's user name, or null",
                  personal=True),
}
_ENDS = {
    "local_address": Field((str,), "local IP address"),
    "local_port": Field((int,), "local port"),
    "remote_address": Field((str,), "remote IP address"),
    "remote_port": Field((int,), "remote port"),
}
_PROTO = {
    "proto": Field((str,), "tcp | udp"),
    "family": Field((str,), "inet (IPv4) | inet6 (IPv6)"),
}
# The daemon's egress watcher (agent/egress.py) reads these; the `ai_egress`
# collector seals what it saw, this one what is open at collection time.
WATCH = Option(NAME, "watch", BOOL, True,
               "gamsa agent run polls the socket tables for connections to ai_endpoints")
WATCH_INTERVAL = Option(NAME, "watch_interval", DURATION, "2s",
                        "seconds between polls (spaced out further to stay under 0.5% of "
                        "a core)")
EGRESS_SEAL_EVERY = Option(NAME, "egress_seal_every", DURATION, "5m",
                           "longest an egress observation waits before it is sealed")

COLLECTOR = Collector(
    name=NAME,
    version="2",
    description="Network configuration and activity: interfaces, routes, listening sockets "
                "and established connections with their processes, DNS resolvers, "
                "/etc/hosts, proxy settings, and AI egress: connections to the configured "
                "`ai_endpoints` with process, executable hash and user. Files are read "
                "under the root; interfaces, sockets, the agent's environment and name "
                "resolution only on the live system.",
    platforms=("linux", "darwin", "win32"),
    options=(AI_ENDPOINTS, WATCH, WATCH_INTERVAL, EGRESS_SEAL_EVERY),
    record_types={
        "interface": RecordType(
            doc="A network interface, from psutil." + _LIVE,
            key="the interface name",
            fields={
                "name": Field(_TEXT, "interface name"),
                "mac": Field((str, _NONE), "link-layer address, or null"),
                "addresses": Field((list,), "`[{family: inet|inet6, address, netmask}]`, "
                                            "sorted"),
                "is_up": Field((bool, _NONE), "the interface is up"),
                "mtu": Field((int, _NONE), "MTU in bytes"),
            },
        ),
        "route": RecordType(
            doc="A kernel route from /proc/net/route (main table, IPv4) or "
                "/proc/net/ipv6_route (all tables, IPv6) under the root. Linux only: live "
                "on another OS an `unsupported` record (source `routes`) stands instead. "
                "IPv4 words are read in the host's byte order, as the kernel writes them.",
            key="`<family> <destination>[ from <source>][ via <gateway>] dev <interface> "
                "metric <metric>` (as `ip route` words it)",
            fields={
                "family": Field((str,), "inet | inet6"),
                "destination": Field((str,), "destination network (CIDR); `0.0.0.0/0`, "
                                             "`::/0` is the default route"),
                "source": Field((str, _NONE), "IPv6 source prefix when not `::/0`, else null"),
                "gateway": Field((str, _NONE), "next hop, null for a directly connected route"),
                "interface": Field(_TEXT, "output interface"),
                "metric": Field((int,), "route metric"),
                "flags": Field((str,), "route(8) letters: U up, G gateway, H host, "
                                       "R reinstate, D dynamic, M modified, ! reject, "
                                       "A addrconf, C cache"),
                "flags_raw": Field((int,), "the RTF_* flag word as the kernel gives it"),
            },
        ),
        "listening_socket": RecordType(
            doc="A TCP socket in LISTEN state or a bound UDP socket without a remote end "
                "(psutil.net_connections)." + _LIVE,
            key="`<proto>:<address>:<port>` (IPv6 in brackets); `#2`, `#3` appended when "
                "several sockets share it (SO_REUSEPORT)",
            fields={**_PROTO,
                    "address": Field((str,), "local address (`0.0.0.0`/`::`: all)"),
                    "port": Field((int,), "local port"),
                    **_OWNER},
        ),
        "connection": RecordType(
            doc="An established TCP connection (psutil.net_connections)." + _LIVE,
            key="`tcp:<local address>:<port>-<remote address>:<port>` (IPv6 in brackets)",
            fields={"proto": Field((str,), "always `tcp`"), "family": _PROTO["family"],
                    **_ENDS, **_OWNER},
        ),
        "dns_resolver": RecordType(
            doc="A resolver configuration: /etc/resolv.conf (`source_missing` when absent) "
                "and systemd-resolved's /run/systemd/resolve/resolv.conf when present.",
            key="the file's path",
            fields={
                "path": Field((str,), "the file's absolute path"),
                "symlink_target": Field((str, _NONE),
                                        "where the file links to as written (e.g. "
                                        "`../run/systemd/resolve/stub-resolv.conf`), or null"),
                "nameservers": Field((list,), "`nameserver` addresses in order"),
                "search": Field((list,), "`search` domains (the last `search` or `domain` "
                                         "line wins, as in resolv.conf(5))"),
                "domain": Field((str, dict, _NONE), "`domain` when it is the last of the two"),
                "options": Field((list,), "`options` words, e.g. `ndots:2`, `timeout:1`"),
            },
        ),
        "hosts_entry": RecordType(
            doc="The names /etc/hosts gives one address (lines with the same address "
                "merged). A bad address or a line without a name is a `malformed_line`.",
            key="the address in normal form",
            fields={
                "address": Field((str,), "IP address in normal form"),
                "names": Field((list,), "host names and aliases, in order, each once"),
                "lines": Field((list,), "1-based line numbers where the address appears"),
            },
        ),
        "proxy_setting": RecordType(
            doc="A proxy setting: `http_proxy`, `https_proxy`, `ftp_proxy`, `all_proxy`, "
                "`socks_proxy`, `no_proxy` (any case) assigned in /etc/environment or "
                "/etc/profile.d/*.sh; `Acquire::<scheme>::Proxy[::host]` and "
                "`Proxy-Auto-Detect` in /etc/apt/apt.conf and apt.conf.d (scoped and block "
                "forms); `proxy`, `proxy_username`, `proxy_password`, `proxy_auth_method` "
                "in /etc/yum.conf, /etc/dnf/dnf.conf and /etc/yum.repos.d/*.repo; and, "
                "live, the agent process's own environment. Shell expressions are not "
                "evaluated (`$http_proxy` stays as written).",
            key="`<source>:[<section>]<variable>` (no `[...]` outside INI files); the last "
                "assignment in a file, as it applies",
            fields={
                "source": Field(_TEXT, "the file's absolute path, or `process environment`"),
                "line": Field((int, _NONE), "1-based line number, null for the environment"),
                "section": Field((str, dict, _NONE), "INI section (yum/dnf), else null"),
                "variable": Field(_TEXT, "the variable or option name as written"),
                "value": Field(_TEXT, "the value, secrets scrubbed (a proxy URL's password "
                                      "becomes `[REDACTED:url_password]`)"),
            },
        ),
        "ai_endpoint_resolution": RecordType(
            doc="One valid `ai_endpoints` entry and the addresses it matches in this run. "
                "Host names are resolved with getaddrinfo (live only, all in parallel, "
                "3 s at most) and also take the addresses /etc/hosts gives them. "
                "Wildcards cannot be resolved (DNS cannot list the names under a domain): "
                "`*.example.com` matches the addresses of the names this run knows under "
                "example.com (not example.com itself): configured host names as resolved "
                "and /etc/hosts names. No reverse lookup is done. Addresses and networks "
                "match themselves. Entries equal in normal form are recorded once (the "
                "first).",
            key="the entry in normal form, e.g. `api.openai.com:443`, `10.20.0.0/16`, "
                "`[2001:db8::1]:443`",
            fields={
                "entry": Field((str,), "the entry as configured"),
                "kind": Field((str,), "host | wildcard | address | network"),
                "name": Field((str, _NONE), "host name, or the wildcard (`*.example.com`), "
                                            "lower case; null for addresses and networks"),
                "network": Field((str, _NONE), "address or network as CIDR, else null"),
                "port": Field((int, _NONE), "the entry's port, null: any port"),
                "status": Field((str,), "host: resolved | failed | timeout | not_live "
                                        "(fixture run: no resolution); wildcard: derived; "
                                        "address/network: literal"),
                "resolved": Field((list, _NONE), "host: what getaddrinfo returned (empty on "
                                                 "failure); null otherwise"),
                "names": Field((list, _NONE), "wildcard: the known names under it; "
                                              "null otherwise"),
                "addresses": Field((list, _NONE), "host and wildcard: every address the "
                                                  "entry matches in this run; null for "
                                                  "addresses and networks"),
                "error": Field((str, _NONE), "why resolution failed, or null"),
            },
        ),
        "ai_egress": RecordType(
            doc="A live TCP or UDP socket whose remote address (and port, if the entry "
                "names one) matches an `ai_endpoints` entry, in any state with a remote "
                "end (ESTABLISHED, SYN_SENT, CLOSE_WAIT, TIME_WAIT, connected UDP), at the "
                "instant of collection. Connections made between collections: the "
                "`ai_egress` collector (`ai_egress_observed`)." + _LIVE,
            key="the connection key (`<proto>:<local>:<port>-<remote>:<port>`) and "
                "`#<pid>` (`#-` when the pid is unknown)",
            fields={
                **_PROTO,
                "status": Field((str,), "psutil status, e.g. ESTABLISHED, SYN_SENT; NONE "
                                        "for UDP"),
                **_ENDS,
                **_OWNER,
                "exe": Field((str, dict, _NONE), "the process's executable path, or null"),
                "exe_sha256": Field((str, _NONE),
                                    "hex SHA-256 of the executable (on Linux read through "
                                    "/proc/<pid>/exe: the file actually running), or null"),
                "cmdline": Field((list, _NONE), "command line, secrets scrubbed, or null"),
                "matched": Field((list,), "the configured entries (as written) that match"),
            },
        ),
        "ai_endpoint_invalid": INVALID_RECORD_TYPE,
    },
    collect=collect,
)
