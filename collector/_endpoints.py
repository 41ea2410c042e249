"""AI endpoints (`[collectors.network] ai_endpoints`): parsing, name resolution, matching.

An entry is one string:

- a host name, `api.openai.com`: matches the addresses it resolves to at collection
  time (`socket.getaddrinfo`, so /etc/hosts and DNS as the host itself resolves);
- a wildcard, `*.anthropic.com`: any name under the domain, not the domain itself.
  DNS cannot list the names under a domain, so a wildcard matches the addresses of
  the names this run knows that fall under it: the configured host names (as
  resolved) and the names in /etc/hosts (with the addresses written there);
- an address, `127.0.0.1`, `2001:db8::1`, or a network, `10.20.0.0/16`,
  `2001:db8::/32` (host bits are ignored, as the config check ignores them);
- each optionally followed by `:port`; an IPv6 address or network with a port is
  written in brackets, `[2001:db8::1]:443`, `[2001:db8::/32]:443`.

An entry that cannot be parsed becomes an `ai_endpoint_invalid` record naming it;
the other entries still apply.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from collector.options import Option, checked_string_list
from collector.record import Record
from collector.registry import Field, RecordType

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# getaddrinfo has no timeout of its own; all names are resolved in parallel and
# whatever has not answered by then is recorded as a timeout.
RESOLVE_TIMEOUT_SECONDS = 3

_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_BRACKETED = re.compile(r"\[([^\]]*)\](?::(.*))?")

INVALID_TYPE = "ai_endpoint_invalid"
INVALID_RECORD_TYPE = RecordType(
    doc="An `ai_endpoints` config entry that could not be parsed; it is ignored, the "
        "other entries apply.",
    key="`ai_endpoints[<index>]` (0-based position in the list)",
    fields={
        "index": Field((int,), "0-based position in `ai_endpoints`"),
        "entry": Field((str,), "the entry as configured"),
        "reason": Field((str,), "what is wrong, e.g. `port is out of range`"),
    },
)


@dataclass(frozen=True)
class Endpoint:
    """One parsed entry. `name` is the host name, or a wildcard's domain without `*.`."""

    entry: str
    kind: str  # host | wildcard | address | network
    name: str | None
    network: IPNetwork | None
    port: int | None

    @property
    def spec(self) -> str:
        """The entry in normal form (lower case, network address): a stable key."""
        if self.kind == "host":
            base = str(self.name)
        elif self.kind == "wildcard":
            base = f"*.{self.name}"
        else:
            assert self.network is not None
            full = self.network.prefixlen == self.network.max_prefixlen
            base = str(self.network.network_address) if full else str(self.network)
            if self.network.version == 6 and self.port is not None:
                base = f"[{base}]"
        return base if self.port is None else f"{base}:{self.port}"

    def covers_name(self, name: str) -> bool:
        """A host entry covers its own name; a wildcard any name strictly under it."""
        if self.kind == "host":
            return name == self.name
        if self.kind == "wildcard":
            return name.endswith(f".{self.name}")
        return False

    def port_matches(self, port: int | None) -> bool:
        return self.port is None or port == self.port


@dataclass(frozen=True)
class InvalidEntry:
    index: int
    entry: str
    reason: str

    def record(self, collector: str) -> Record:
        return Record(collector, INVALID_TYPE, f"ai_endpoints[{self.index}]",
                      {"index": self.index, "entry": self.entry, "reason": self.reason})


def _port(text: str) -> int:
    if not text:
        raise ValueError("port is empty")
    if not text.isascii() or not text.isdigit():
        raise ValueError("port is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError("port is out of range (1-65535)")
    return port


def host_name(text: str) -> str:
    """`text` as a lower-case ASCII host name (IDNA for non-ASCII); ValueError if not one."""
    name = text.rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("not a valid host name") from None
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError("not a valid host name")
    if labels[-1].isdigit():  # getaddrinfo would read "10.20.0" as an address
        raise ValueError("not a valid IP address or host name")
    return name


def _address_part(text: str, ipv6_only: bool) -> tuple[str, str | None, IPNetwork | None]:
    """(kind, name, network) of the part before the port."""
    if not text:
        raise ValueError("host is empty")
    if "/" in text:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError("not a valid network (CIDR)") from None
        if ipv6_only and network.version != 6:
            raise ValueError("brackets are for IPv6 only")
        return "network", None, network
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        if ipv6_only:
            raise ValueError("not a valid IPv6 address") from None
    else:
        if ipv6_only and address.version != 6:
            raise ValueError("brackets are for IPv6 only")
        return "address", None, ipaddress.ip_network(address)
    if text.startswith("*."):
        return "wildcard", host_name(text[2:]), None
    if "*" in text:
        raise ValueError("`*` is allowed only as the first label, e.g. `*.example.com`")
    return "host", host_name(text), None


def parse_endpoint(entry: str) -> Endpoint:
    """One config entry; ValueError with a short reason when it is not valid."""
    text = entry.strip()
    if not text:
        raise ValueError("entry is empty")
    if "://" in text:
        raise ValueError("a URL: give the host name (and `:port`) only")
    port_text: str | None = None
    bracketed = _BRACKETED.fullmatch(text)
    if bracketed is not None:
        text, port_text = bracketed.group(1), bracketed.group(2)
    elif text.startswith("["):
        raise ValueError("unbalanced `[`")
    elif text.count(":") == 1:
        text, _, port_text = text.partition(":")
    kind, name, network = _address_part(text, ipv6_only=bracketed is not None)
    port = None if port_text is None else _port(port_text)
    return Endpoint(entry, kind, name, network, port)


def endpoint_problem(entry: str) -> str | None:
    """Why a config entry is not a valid AI endpoint, or None (the config check and
    the collectors use the one parser, so the two always agree)."""
    if any(c.isspace() for c in entry):
        return "must not contain spaces"
    try:
        parse_endpoint(entry)
    except ValueError as exc:
        return f"is not a valid AI endpoint ({exc})"
    return None


# Declared by the `network` collector, read by `network` and `firewall`.
AI_ENDPOINTS = Option(
    "network", "ai_endpoints",
    checked_string_list(endpoint_problem,
                        'write e.g. "api.openai.com", "*.anthropic.com", "10.20.0.0/16", '
                        '"127.0.0.1:8443" or "[2001:db8::1]:443"'),
    [], 'AI endpoints: names, "*.domain" wildcards, addresses or networks, each with an '
        'optional ":port"; e.g. ["api.openai.com", "*.anthropic.com", "10.20.0.0/16", '
        '"127.0.0.1:8443"]')


def parse_endpoints(value: object) -> tuple[list[Endpoint], list[InvalidEntry]]:
    """Valid entries (first of equal specs kept) and the invalid ones, by position."""
    if value is None:
        return [], []
    if not isinstance(value, list | tuple):
        return [], [InvalidEntry(0, repr(value)[:200], "ai_endpoints is not a list")]
    endpoints: dict[str, Endpoint] = {}
    invalid: list[InvalidEntry] = []
    for index, entry in enumerate(value):
        if not isinstance(entry, str):
            invalid.append(InvalidEntry(index, repr(entry)[:200], "not a string"))
            continue
        try:
            endpoint = parse_endpoint(entry)
        except ValueError as exc:
            invalid.append(InvalidEntry(index, entry, str(exc)))
            continue
        endpoints.setdefault(endpoint.spec, endpoint)
    return list(endpoints.values()), invalid


# --- addresses -------------------------------------------------------------------

def normal_address(text: str) -> IPAddress | None:
    """An address as matched: scope (`%eth0`) dropped, IPv4-mapped IPv6 as IPv4."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _address_order(address: IPAddress) -> tuple[int, int]:
    return address.version, int(address)


def sorted_addresses(texts: Iterable[str]) -> list[str]:
    """Distinct normal addresses, IPv4 first, in numeric order."""
    found = {a for a in (normal_address(t) for t in texts) if a is not None}
    return [str(a) for a in sorted(found, key=_address_order)]


# --- resolution ------------------------------------------------------------------

@dataclass(frozen=True)
class Resolution:
    name: str
    status: str  # resolved | failed | timeout
    addresses: list[str]
    error: str | None


def getaddrinfo_addresses(name: str) -> list[str]:
    """Every address `name` resolves to for TCP, as the host's resolver answers."""
    infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return sorted_addresses(str(info[4][0]) for info in infos)


def resolve_names(names: Iterable[str], timeout: float = RESOLVE_TIMEOUT_SECONDS,
                  resolve: Callable[[str], list[str]] = getaddrinfo_addresses,
                  ) -> dict[str, Resolution]:
    """Resolve `names` in parallel daemon threads, waiting at most `timeout` in all.

    A name still resolving at the deadline is a `timeout`; its thread is left to
    finish on its own (getaddrinfo cannot be interrupted) and its answer ignored.
    """
    results: dict[str, Resolution] = {}
    lock = threading.Lock()

    def work(name: str) -> None:
        try:
            found = Resolution(name, "resolved", resolve(name), None)
        except Exception as exc:  # noqa: BLE001 - any failure is recorded, never raised
            found = Resolution(name, "failed", [], f"{type(exc).__name__}: {exc}")
        with lock:
            results[name] = found

    threads = []
    for name in dict.fromkeys(names):
        thread = threading.Thread(target=work, args=(name,), daemon=True,
                                  name=f"gamsa-resolve:{name}")
        thread.start()
        threads.append((name, thread))
    deadline = time.monotonic() + timeout
    for _name, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with lock:
        answered = dict(results)
    return {name: answered.get(name) or Resolution(
                name, "timeout", [], f"no answer within {timeout:g} s")
            for name, _thread in threads}


# --- matching --------------------------------------------------------------------

class Matcher:
    """Which endpoints an address (and port) or a network belongs to.

    `known` maps a host name to its addresses: the configured names as resolved
    and the /etc/hosts names. Host entries use their own name's addresses,
    wildcards those of every known name under them.
    """

    def __init__(self, endpoints: Sequence[Endpoint], known: Mapping[str, Sequence[str]]) -> None:
        self.endpoints = list(endpoints)
        self.known = {name: list(addresses) for name, addresses in known.items()}
        self._networks = {e.spec: self._compute_networks(e) for e in self.endpoints}

    def covered_names(self, endpoint: Endpoint) -> list[str]:
        return sorted(n for n in self.known if endpoint.covers_name(n))

    def addresses(self, endpoint: Endpoint) -> list[str]:
        """The addresses a host or wildcard entry stands for in this run."""
        return sorted_addresses(a for n in self.covered_names(endpoint) for a in self.known[n])

    def networks(self, endpoint: Endpoint) -> list[IPNetwork]:
        return self._networks[endpoint.spec]

    def _compute_networks(self, endpoint: Endpoint) -> list[IPNetwork]:
        if endpoint.network is not None:
            return [endpoint.network]
        return [ipaddress.ip_network(a) for a in self.addresses(endpoint)]

    def match(self, address: str, port: int | None) -> list[Endpoint]:
        """The endpoints whose addresses include `address` and whose port fits `port`."""
        normal = normal_address(address)
        if normal is None:
            return []
        return [e for e in self.endpoints if e.port_matches(port)
                and any(normal in network for network in self.networks(e))]


# --- /etc/hosts and the matcher of one run ----------------------------------------

@dataclass(frozen=True)
class HostsLine:
    """One non-blank /etc/hosts line: the address in normal form and its names, or
    the reason it is malformed (never its content)."""

    lineno: int
    address: str | None
    names: list[str]
    reason: str | None = None


def parse_hosts(text_lines: Iterable[tuple[int, str]]) -> list[HostsLine]:
    result = []
    for lineno, line in text_lines:
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            address = str(ipaddress.ip_address(words[0].split("%", 1)[0]))
        except ValueError:
            result.append(HostsLine(lineno, None, [], "address is not an IP address"))
            continue
        if len(words) < 2:
            result.append(HostsLine(lineno, None, [], "no host name"))
            continue
        result.append(HostsLine(lineno, address, words[1:]))
    return result


def hosts_names(hosts: Iterable[HostsLine]) -> dict[str, list[str]]:
    """Host name (normal form) -> the addresses /etc/hosts gives it."""
    known: dict[str, list[str]] = {}
    for line in hosts:
        if line.address is None:
            continue
        for name in line.names:
            try:
                normal = host_name(name)
            except ValueError:
                continue
            known.setdefault(normal, []).append(line.address)
    return known


def build_matcher(endpoints: Sequence[Endpoint], hosts: Mapping[str, Sequence[str]],
                  live: bool) -> tuple[Matcher, dict[str, Resolution]]:
    """The matcher of one run: configured host names resolved (live only) and merged
    with the /etc/hosts names; and the resolutions, by name."""
    names = [e.name for e in endpoints if e.kind == "host" and e.name is not None]
    resolutions = resolve_names(names) if live and names else {}
    known = {name: list(addresses) for name, addresses in hosts.items()}
    for name, resolution in resolutions.items():
        known[name] = [*known.get(name, []), *resolution.addresses]
    return Matcher(endpoints, known), resolutions


# --- reading files -----------------------------------------------------------------
