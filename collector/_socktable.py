"""The kernel's TCP socket tables (`/proc/net/tcp`, `/proc/net/tcp6`), read cheaply.

Each table is read with one large read and never split into lines in Python: a
regular expression built from the AI endpoints (`prefilter`) picks, in C, only
the rows whose remote address (and port) could match one; `collector._endpoints`
`Matcher` then decides each of those few rows, so matching has one definition.
`parse_rows` parses every row (tests, and the check that the prefilter misses none).

Row format (net/ipv4/tcp_ipv4.c, net/ipv6/tcp_ipv6.c): addresses are the raw
`in_addr`/`in6_addr` bytes printed as 32-bit words in the host's byte order
(`%08X`), ports in natural order (`%04X`), then the state (`%02X`), queues,
timers, the socket's uid, and its inode (0 once closed: TIME_WAIT rows belong to
no process).

Owners: a socket's process is found by its inode among `/proc/<pid>/fd` links
(`socket:[<inode>]`); `socket_owners` looks only for the inodes asked, trying
likely pids first, and counts the processes whose fds it may not list.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from collector._endpoints import Endpoint, IPNetwork, Matcher

PROC = "/proc"
TABLES = (("tcp", 4), ("tcp6", 6))  # file under /proc/net, address family
READ_CHUNK = 1 << 22

STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
          6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
          11: "CLOSING", 12: "NEW_SYN_RECV"}

_HEX = "[0-9A-F]"
# After the remote end: state, tx:rx queues, timer:when, retransmits, uid, timeout, inode.
_TAIL = rf" ({_HEX}{{2}}) {_HEX}+:{_HEX}+ {_HEX}+:{_HEX}+ {_HEX}+ +(\d+) +\d+ (\d+)"
_ALL_ROWS = re.compile(rf"\n *\d+: ({_HEX}+):({_HEX}{{4}}) ({_HEX}+):({_HEX}{{4}}){_TAIL}"
                       .encode())
_V4_MAPPED = bytes(10) + b"\xff\xff"


@dataclass(frozen=True)
class Row:
    """One socket of a table: ends (v4-mapped shown as IPv4), state, the socket's uid and
    inode (0: closed)."""

    family: int  # 4 | 6
    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    state: str
    uid: int
    inode: int


# --- addresses as the kernel prints them ----------------------------------------

def _word_order(size: int) -> list[int]:
    """Byte indexes of an address in the order /proc prints them (32-bit words)."""
    if sys.byteorder == "big":
        return list(range(size))
    return [word + i for word in range(0, size, 4) for i in (3, 2, 1, 0)]


def address_from_hex(text: str) -> str:
    """`0100007F` -> `127.0.0.1`; a 32-digit tcp6 address -> its IPv6 text, or the
    IPv4 text of a v4-mapped one (`::ffff:10.20.1.2` -> `10.20.1.2`), as matched."""
    raw = bytes.fromhex(text)
    if len(raw) not in (4, 16):
        raise ValueError(f"address of {len(raw)} bytes")
    order = _word_order(len(raw))
    plain = bytes(raw[order.index(i)] for i in range(len(raw)))
    address = ipaddress.ip_address(plain)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _row(family: int, fields: tuple[bytes, ...]) -> Row:
    laddr, lport, raddr, rport, state, uid, inode = (f.decode() for f in fields)
    code = int(state, 16)
    return Row(family, address_from_hex(laddr), int(lport, 16), address_from_hex(raddr),
               int(rport, 16), STATES.get(code, f"0x{code:02X}"), int(uid), int(inode))


def parse_rows(data: bytes, family: int) -> list[Row]:
    """Every row of a /proc/net/tcp{,6} table (`data` as read, header included)."""
    return [_row(family, m.groups()) for m in _ALL_ROWS.finditer(data)]


# --- the prefilter ----------------------------------------------------------------

def _byte_patterns(network: IPNetwork, size: int) -> list[str]:
    """Per byte of an address of `size` bytes: the hex digits a member may show there."""
    raw = network.network_address.packed
    if network.version == 4 and size == 16:
        raw = _V4_MAPPED + raw
        prefix = 96 + network.prefixlen
    else:
        prefix = network.prefixlen
    patterns = []
    for index, byte in enumerate(raw):
        fixed_bits = min(8, max(0, prefix - 8 * index))
        if fixed_bits == 8:
            patterns.append(f"{byte:02X}")
        elif fixed_bits == 0:
            patterns.append(f"{_HEX}{{2}}")
        else:
            free = 8 - fixed_bits
            base = byte >> free << free
            patterns.append("(?:" + "|".join(f"{v:02X}" for v in range(base, base + (1 << free)))
                            + ")")
    return patterns


def _remote_patterns(endpoint: Endpoint, networks: Iterable[IPNetwork], size: int) -> list[str]:
    port = f"{_HEX}{{4}}" if endpoint.port is None else f"{endpoint.port:04X}"
    found = []
    for network in networks:
        if size == 4 and network.version == 6:
            continue
        per_byte = _byte_patterns(network, size)
        found.append("".join(per_byte[i] for i in _word_order(size)) + ":" + port)
    return found


def prefilter(matcher: Matcher, family: int) -> re.Pattern[bytes] | None:
    """A pattern whose matches are the rows of one table that may match an endpoint
    (a superset: the matcher decides); None when no endpoint can match there."""
    size = 4 if family == 4 else 16
    remotes = sorted({p for e in matcher.endpoints
                      for p in _remote_patterns(e, matcher.networks(e), size)})
    if not remotes:
        return None
    alternatives = "|".join(remotes)
    return re.compile(rf"\n *\d+: ({_HEX}+):({_HEX}{{4}}) ((?:{alternatives})){_TAIL}".encode())


def candidate_rows(data: bytes, family: int, pattern: re.Pattern[bytes]) -> Iterator[Row]:
    """The rows `pattern` (from `prefilter`) picks out of a table."""
    for match in pattern.finditer(data):
        laddr, lport, remote, state, uid, inode = match.groups()
        raddr, _, rport = remote.partition(b":")
        yield _row(family, (laddr, lport, raddr, rport, state, uid, inode))


def read_table(path: str) -> bytes:
    """A /proc table in as few reads as the kernel allows (one, for most tables).
    A leading newline lets every row, the first included, start with one."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [b"\n"]
        while chunk := os.read(fd, READ_CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


# --- owners -------------------------------------------------------------------------

@dataclass
class Owners:
    """What `socket_owners` found: pid by inode, and how many processes' fds were denied."""

    pids: dict[int, int]
    denied: int


def _scan(pid: int, wanted: set[int], found: dict[int, int], proc: str) -> bool:
    """Look for `wanted` inodes among one process's fds; False if they may not be listed."""
    directory = f"{proc}/{pid}/fd"
    try:
        entries = os.scandir(directory)
    except PermissionError:
        return False
    except OSError:
        return True  # gone meanwhile
    with entries:
        for entry in entries:
            try:
                target = os.readlink(entry.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in wanted:
                    found[inode] = pid
                    wanted.discard(inode)
                    if not wanted:
                        break
    return True


def socket_owners(inodes: Iterable[int], likely: Iterable[int] = (),
                  proc: str = PROC) -> Owners:
    """The pid holding each socket inode; `likely` pids are searched first (a process
    that called an endpoint before tends to call it again), then every process."""
    wanted = {i for i in inodes if i}
    found: dict[int, int] = {}
    denied = 0
    tried: set[int] = set()
    for pid in likely:
        if not wanted:
            break
        tried.add(pid)
        _scan(pid, wanted, found, proc)
    if wanted:
        for name in os.listdir(proc):
            if not wanted:
                break
            if not name.isdigit() or int(name) in tried:
                continue
            if not _scan(int(name), wanted, found, proc):
                denied += 1
    return Owners(found, denied)
