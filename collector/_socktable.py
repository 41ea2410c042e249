"""The kernel's TCP socket tables, read cheaply: sock_diag netlink, else /proc/net/tcp{,6}.

`diag_rows` asks the kernel over NETLINK_SOCK_DIAG (what `ss` uses) with a filter
program built from the AI endpoints, so only matching sockets are sent back: no
text is formatted or parsed for the thousands that do not match (a third of the
CPU of reading /proc on a host with 30,000 sockets, bench/bench_egress.py).
Where netlink is refused (a seccomp filter, no inet_diag module) the /proc tables
are read instead (`TableReader` decides once and says which).

/proc: each table is read with one large read and never split into lines in Python: a
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

import contextlib
import ctypes
import errno
import ipaddress
import os
import re
import socket
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from collector._endpoints import Endpoint, IPNetwork, Matcher

PROC = "/proc"
TABLES = (("tcp", 4), ("tcp6", 6))  # file under /proc/net, address family
READ_CHUNK = 1 << 22
STREAM_CHUNK = 1 << 16  # below glibc's mmap threshold: see `table_candidates`

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


def candidate_rows(data: bytes, family: int, pattern: re.Pattern[bytes],
                   end: int | None = None) -> Iterator[Row]:
    """The rows `pattern` (from `prefilter`) picks out of a table (up to `end`)."""
    for match in pattern.finditer(data, 0, len(data) if end is None else end):
        laddr, lport, remote, state, uid, inode = match.groups()
        raddr, _, rport = remote.partition(b":")
        yield _row(family, (laddr, lport, raddr, rport, state, uid, inode))


def table_candidates(path: str, family: int, pattern: re.Pattern[bytes],
                     chunk: int = STREAM_CHUNK) -> list[Row]:
    """The rows `pattern` picks out of the table at `path`, read in chunks of `chunk`
    bytes, each scanned up to its last complete row. Chunks stay below glibc's mmap
    threshold (agent/memory.py fixes it at 128 KiB in the daemon): one read of the
    whole table (1.5 MB with 10,000 sockets) was a fresh mapping, faulted in and
    unmapped, every poll, which doubled a poll's CPU (docs/BENCHMARKS.md)."""
    rows: list[Row] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        tail = b"\n"  # every row, the first included, starts with a newline
        while data := os.read(fd, chunk):
            data = tail + data
            end = data.rfind(b"\n")  # the row after it may be cut: the next chunk's
            rows.extend(candidate_rows(data, family, pattern, end))
            tail = data[end:]
    finally:
        os.close(fd)
    return rows


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


# --- sock_diag netlink (linux/inet_diag.h, linux/sock_diag.h) ----------------------

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST_DUMP = 0x301
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP, INET_DIAG_BC_D_COND = 1, 8
ALL_STATES = 0xFFFFFFFF
DIAG_TIMEOUT_SECONDS = 10.0
_NLMSG = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBxI48x")  # inet_diag_req_v2: family, protocol, ext, states, id
TCPDIAG_GETSOCK = 18
_REQ_COMPAT = struct.Struct("=B3x48xII")  # inet_diag_req: family (unused), id, states, dbs
_MSG = struct.Struct("=BBBBHH16s16sI8xIIIII")  # inet_diag_msg, ports big-endian below


def _hostcond(network: IPNetwork, port: int | None) -> bytes:
    """One `INET_DIAG_BC_D_COND`: the remote end in `network` (and on `port`).
    Its yes jumps over itself, its no over the JMP after it (see `diag_program`)."""
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    cond = struct.pack("=BBxxi", family, network.prefixlen, -1 if port is None else port) \
        + network.network_address.packed
    size = 4 + len(cond)
    return struct.pack("=BBH", INET_DIAG_BC_D_COND, size, size + 4) + cond


def diag_program(matcher: Matcher, family: int) -> bytes | None:
    """A filter program accepting sockets whose remote end matches an endpoint of
    `matcher` (IPv4 entries also match v4-mapped ends of IPv6 sockets); None when
    none can match in this family. `c1 OR rest` is `c1, JMP over rest, rest`, as
    `ss` compiles it: a true condition lands on the JMP (then the end: accept), a
    false one skips it; past the end by 4 is reject."""
    conds = [_hostcond(network, e.port) for e in matcher.endpoints
             for network in matcher.networks(e) if family == 6 or network.version == 4]
    if not conds:
        return None
    program = conds[-1]
    for cond in reversed(conds[:-1]):
        program = cond + struct.pack("=BBH", INET_DIAG_BC_JMP, 4, len(program) + 4) + program
    return program


def _diag_address(raw: bytes, family: int) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped or address)


def diag_rows(family: int, program: bytes) -> list[Row]:
    """The TCP sockets of `family` (4 or 6; 0: both) that `program` accepts, from the
    kernel. Raises OSError when netlink or inet_diag is refused.

    Both families are asked in one request (TCPDIAG_GETSOCK, the older request `ss`
    also sends for both; the kernel dumps it as AF_UNSPEC): the kernel walks its
    TCP hash table once instead of once per family, which is nearly all of a poll's
    cost (docs/BENCHMARKS.md)."""
    attribute = struct.pack("=HH", 4 + len(program), INET_DIAG_REQ_BYTECODE) + program
    if family == 0:
        kind, body = TCPDIAG_GETSOCK, _REQ_COMPAT.pack(0, ALL_STATES, 0) + attribute
    else:
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        kind = SOCK_DIAG_BY_FAMILY
        body = _REQ.pack(af, socket.IPPROTO_TCP, 0, ALL_STATES) + attribute
    request = _NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST_DUMP, 1, 0) + body
    rows: list[Row] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(DIAG_TIMEOUT_SECONDS)
        sock.sendto(request, (0, 0))
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
                if kind == NLMSG_DONE:
                    return rows
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                    raise OSError(code, f"sock_diag: {os.strerror(code)}")
                rows.append(_diag_row(data, offset + _NLMSG.size))
                offset += (length + 3) & ~3
            if not data:
                raise OSError("sock_diag: the dump ended without NLMSG_DONE")


# sock_diag multicast groups (linux/sock_diag.h): the kernel sends one inet_diag_msg
# per TCP socket of that family as it is destroyed.
SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
DESTROY_GROUPS = {4: SKNLGRP_INET_TCP_DESTROY, 6: SKNLGRP_INET6_TCP_DESTROY}
DESTROY_RCVBUF = 1 << 20  # a burst of closes queues here until the watcher reads it


def _diag_row(data: bytes, offset: int) -> Row:
    """The Row of one inet_diag_msg at `offset` (after its netlink header)."""
    (family, state, _timer, _retrans, sport, dport, src, dst, _if, _expires, _rqueue,
     _wqueue, uid, inode) = _MSG.unpack_from(data, offset)
    return Row(4 if family == socket.AF_INET else 6, _diag_address(src, family),
               socket.ntohs(sport), _diag_address(dst, family), socket.ntohs(dport),
               STATES.get(state, f"0x{state:02X}"), uid, inode)


# --- a classic BPF filter on the destroy-event socket (linux/filter.h) ---------------
# The kernel runs it on each event before queueing it (netlink broadcast runs
# sk_filter), so the sockets other programs close never wake the watcher.

SO_ATTACH_FILTER = 26  # asm-generic/socket.h; socket module lacks these names
SO_DETACH_FILTER = 27
BPF_MAXINSNS = 4096
_BPF_LD_ABS = {4: 0x20, 2: 0x28, 1: 0x30}  # BPF_LD | BPF_{W,H,B} | BPF_ABS, by size
_BPF_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
_BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_RET_K = 0x06
_ACCEPT, _DROP = 0xFFFFFFFF, 0
_INSN = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
# Offsets in one event: the netlink header, then inet_diag_msg (family at 16, the
# remote port at 22, the remote address at 40). BPF loads read network byte order.
_OFF_TYPE, _OFF_FAMILY, _OFF_DPORT, _OFF_DST = 4, 16, 22, 40
_DIAG_TYPE_AS_LOADED = int.from_bytes(struct.pack("=H", SOCK_DIAG_BY_FAMILY), "big")

Test = tuple[int, int, int, int]  # offset, size, mask (0: none), value


def _address_tests(raw: bytes, prefix: int) -> list[Test]:
    """Tests that the remote address's first `prefix` bits are those of `raw`."""
    tests: list[Test] = []
    for word in range(0, len(raw), 4):
        bits = min(32, max(0, prefix - 8 * word))
        if bits:
            mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
            value = int.from_bytes(raw[word:word + 4], "big") & mask
            tests.append((_OFF_DST + word, 4, 0 if bits == 32 else mask, value))
    return tests


def _destroy_blocks(network: IPNetwork, port: int | None) -> list[list[Test]]:
    """Each a conjunction of tests; an event passing any one block may match."""
    on_port = [] if port is None else [(_OFF_DPORT, 2, 0, port)]
    raw, prefix = network.network_address.packed, network.prefixlen
    if network.version == 6:
        return [[(_OFF_FAMILY, 1, 0, socket.AF_INET6), *on_port,
                 *_address_tests(raw, prefix)]]
    return [[(_OFF_FAMILY, 1, 0, socket.AF_INET), *on_port, *_address_tests(raw, prefix)],
            [(_OFF_FAMILY, 1, 0, socket.AF_INET6), *on_port,  # an IPv6 socket, v4-mapped
             *_address_tests(_V4_MAPPED + raw, 96 + prefix)]]


def destroy_filter(matcher: Matcher) -> bytes | None:
    """A classic BPF program (an array of `struct sock_filter`) passing the destroy
    events whose remote end may match an endpoint of `matcher` (a superset: the
    matcher decides) and every message that is not an event; None when it would
    exceed the kernel's limit (then every event is read)."""
    blocks = [block for e in matcher.endpoints for network in matcher.networks(e)
              for block in _destroy_blocks(network, e.port)]
    insns: list[tuple[int, int, int, int]] = [
        (_BPF_LD_ABS[2], 0, 0, _OFF_TYPE),
        (_BPF_JEQ_K, 1, 0, _DIAG_TYPE_AS_LOADED),  # an event: go on; else pass it
        (_BPF_RET_K, 0, 0, _ACCEPT)]
    for block in blocks:
        # each test: load, (mask), compare; a failed compare jumps past the block's RET
        size = sum(3 if mask else 2 for _o, _s, mask, _v in block) + 1
        done = 0
        for offset, width, mask, value in block:
            insns.append((_BPF_LD_ABS[width], 0, 0, offset))
            if mask:
                insns.append((_BPF_AND_K, 0, 0, mask))
            done += 3 if mask else 2
            insns.append((_BPF_JEQ_K, 0, size - done, value))
        insns.append((_BPF_RET_K, 0, 0, _ACCEPT))
    insns.append((_BPF_RET_K, 0, 0, _DROP))
    if len(insns) > BPF_MAXINSNS:
        return None
    return b"".join(_INSN.pack(*insn) for insn in insns)


class DestroyEvents:
    """TCP sockets as the kernel destroys them (sock_diag multicast), so a connection
    opened and closed between two polls, which leaves no TIME_WAIT row on this side
    when the server closes first, is still seen; without its process (a destroyed
    socket has no inode left). Joining the groups may need CAP_NET_ADMIN (a kernel
    or a seccomp filter may refuse it): `open` raises OSError and the watcher polls
    only, saying so. `lost` counts the times the kernel dropped events (ENOBUFS:
    the buffer filled faster than it was read)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  NETLINK_SOCK_DIAG)
        self.lost = 0
        self.events = 0  # destroyed sockets read (those the filter let through)
        self.reads = 0  # calls of `read` that found something queued
        self.program: bytes | None = None  # the filter attached, None: every event
        self.filter_refused: str | None = None
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, DESTROY_RCVBUF)
            # bind's group mask (bit n-1 for group n), not NETLINK_ADD_MEMBERSHIP: an
            # unbound socket would join and never be sent anything
            self.sock.bind((0, sum(1 << (g - 1) for g in DESTROY_GROUPS.values())))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_filter(self, program: bytes | None) -> None:
        """Attach `program` (from `destroy_filter`; None: pass every event) in place of
        the one attached. A refused filter leaves every event passing, never none."""
        if program == self.program:
            return
        try:
            if program is None:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            else:
                code = ctypes.create_string_buffer(program, len(program))
                fprog = struct.pack("@HP", len(program) // _INSN.size, ctypes.addressof(code))
                self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            self.program, self.filter_refused = program, None
        except OSError as exc:
            self.filter_refused = f"{type(exc).__name__}: {exc.strerror or exc}"
            if self.program is not None:
                with contextlib.suppress(OSError):
                    self.sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
                self.program = None

    def read(self) -> list[Row]:
        """Every destroyed socket queued now (never blocks)."""
        rows: list[Row] = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                self.events += len(rows)
                self.reads += bool(rows)
                return rows
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # events were dropped; the socket goes on
                    self.lost += 1
                    continue
                raise
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    break
                if kind == SOCK_DIAG_BY_FAMILY and length >= _NLMSG.size + _MSG.size:
                    rows.append(_diag_row(data, offset + _NLMSG.size))
                offset += (length + 3) & ~3

    def close(self) -> None:
        self.sock.close()


class TableReader:
    """The rows that may match `matcher`, from sock_diag, else from /proc.

    `source` says which is used; `fallback_reason` why netlink is not. The choice
    is made at the first read and kept.
    """

    def __init__(self, proc: str = PROC, use_netlink: bool = True) -> None:
        self.proc = proc
        self.source = "sock_diag" if use_netlink else "proc"
        self.fallback_reason: str | None = None if use_netlink else "off"
        self.programs: dict[int, bytes | None] = {}
        self.patterns: dict[int, re.Pattern[bytes] | None] = {}

    def compile(self, matcher: Matcher) -> None:
        """Build the filters for a (re-resolved) matcher."""
        self.programs = {family: diag_program(matcher, family) for _, family in TABLES}
        self.patterns = {family: prefilter(matcher, family) for _, family in TABLES}

    def read(self, family: int, table: str) -> list[Row]:
        """Candidate rows of one family; OSError when its source cannot be read
        (FileNotFoundError: a host without IPv6)."""
        if self.source == "sock_diag":
            if family == 6:
                return []  # the IPv4 read asked for both families
            # IPv6's program holds every endpoint (IPv4 ones also match v4-mapped ends)
            program = self.programs.get(6)
            if program is None:
                return []
            try:
                return diag_rows(0, program)
            except OSError as exc:
                self.source = "proc"
                self.fallback_reason = f"{type(exc).__name__}: {exc.strerror or exc}"
        pattern = self.patterns.get(family)
        if pattern is None:
            return []
        return table_candidates(f"{self.proc}/net/{table}", family, pattern)
