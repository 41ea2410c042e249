"""/proc/net/tcp{,6} parsing, the endpoint prefilter, and socket owners by inode."""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import _socktable
from collector._endpoints import build_matcher, parse_endpoints
from collector._socktable import (
    Row,
    TableReader,
    address_from_hex,
    candidate_rows,
    destroy_filter,
    diag_program,
    diag_rows,
    parse_rows,
    prefilter,
    read_table,
    socket_owners,
    table_candidates,
)

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
          "timeout inode\n")
HEADER6 = ("  sl  local_address                         remote_address                        "
           "st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
LITTLE = sys.byteorder == "little"
pytestmark = pytest.mark.skipif(not LITTLE, reason="fixtures are in little-endian words")

TCP = (HEADER
       + "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0"
         "        0 517 1 0000000000000000 100 0 0 10 0\n"
       + "   1: 0100007F:A2C4 0200007F:20FB 01 00000000:00000000 00:00000000 00000000  1000"
         "        0 12345 1 0000000000000000 20 4 30 10 -1\n"
       + "   2: 0100007F:A2C6 0200007F:20FB 06 00000000:00000000 03:00001716 00000000     0"
         "        0 0 3 0000000000000000\n"
       + "10000: 0201140A:D431 0301140A:01BB 02 00000001:00000000 01:00000064 00000002  1001"
         "        0 99 2 0000000000000000 100 0 0 10 -1\n")
TCP6 = (HEADER6
        + "   0: 00000000000000000000000001000000:0016 B80D0120000000000000000001000000:01BB 01 "
          "00000000:00000000 00:00000000 00000000   108        0 4242 1 0000000000000000 20 4 "
          "0 10 -1\n"
        + "   1: 0000000000000000FFFF00000100007F:B0B0 0000000000000000FFFF00000201140A:01BB 08 "
          "00000000:00000000 00:00000000 00000000     7        0 4343 1 0000000000000000 20 4 "
          "0 10 -1\n")


def test_ipv4_rows_with_ports_states_uid_and_inode() -> None:
    assert parse_rows(("\n" + TCP).encode(), 4) == [
        Row(4, "0.0.0.0", 8080, "0.0.0.0", 0, "LISTEN", 0, 517),
        Row(4, "127.0.0.1", 41668, "127.0.0.2", 8443, "ESTABLISHED", 1000, 12345),
        Row(4, "127.0.0.1", 41670, "127.0.0.2", 8443, "TIME_WAIT", 0, 0),
        Row(4, "10.20.1.2", 54321, "10.20.1.3", 443, "SYN_SENT", 1001, 99),
    ]


def test_ipv6_and_v4_mapped_rows() -> None:
    assert parse_rows(("\n" + TCP6).encode(), 6) == [
        Row(6, "::1", 22, "2001:db8::1", 443, "ESTABLISHED", 108, 4242),
        Row(6, "127.0.0.1", 45232, "10.20.1.2", 443, "CLOSE_WAIT", 7, 4343),
    ]


def test_address_from_hex_rejects_other_lengths() -> None:
    assert address_from_hex("0100007F") == "127.0.0.1"
    with pytest.raises(ValueError):
        address_from_hex("0100")


def matcher_of(*entries: str):  # type: ignore[no-untyped-def]
    endpoints, invalid = parse_endpoints(list(entries))
    assert not invalid
    return build_matcher(endpoints, {}, live=False)[0]


def picked(entries: tuple[str, ...], table: str, family: int) -> list[tuple[str, int]]:
    pattern = prefilter(matcher_of(*entries), family)
    if pattern is None:
        return []
    return [(r.remote_address, r.remote_port)
            for r in candidate_rows(("\n" + table).encode(), family, pattern)]


def test_prefilter_picks_rows_by_address_network_and_port() -> None:
    assert picked(("127.0.0.2:8443",), TCP, 4) == [("127.0.0.2", 8443), ("127.0.0.2", 8443)]
    assert picked(("127.0.0.2:8444",), TCP, 4) == []
    assert picked(("10.20.0.0/16",), TCP, 4) == [("10.20.1.3", 443)]
    assert picked(("10.16.0.0/12",), TCP, 4) == [("10.20.1.3", 443)]  # not on a byte edge
    assert picked(("10.32.0.0/12",), TCP, 4) == []
    # an IPv4 entry matches the v4-mapped rows of tcp6; an IPv6 one only tcp6
    assert picked(("10.20.1.2:443",), TCP6, 6) == [("10.20.1.2", 443)]
    assert picked(("[2001:db8::/32]:443",), TCP6, 6) == [("2001:db8::1", 443)]
    assert picked(("[2001:db8::/32]:443",), TCP, 4) == []


def _hex(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    raw = address.packed
    return "".join(raw[w:w + 4][::-1].hex().upper() for w in range(0, len(raw), 4))


def _random_table(rng: random.Random, family: int, count: int) -> str:
    lines = [HEADER]
    bits = 32 if family == 4 else 128
    for index in range(count):
        if family == 6 and rng.random() < 0.3:  # v4-mapped
            remote: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(
                (0xFFFF << 32) | rng.getrandbits(32))
        elif rng.random() < 0.5:  # near the endpoint networks below
            base = 0x0A140000 if family == 4 else 0x20010DB8 << 96
            remote = ipaddress.ip_address(base | rng.getrandbits(20 if family == 4 else 40))
        else:
            remote = ipaddress.ip_address(rng.getrandbits(bits)) if family == 6 \
                else ipaddress.IPv4Address(rng.getrandbits(32))
        local = ipaddress.ip_address(1 if family == 4 else 1 << 64) if family == 6 \
            else ipaddress.IPv4Address(0x7F000001)
        port = rng.choice([443, 8443, rng.randrange(1, 65536)])
        lines.append(f"{index:4d}: {_hex(local)}:0050 {_hex(remote)}:{port:04X} 01 "
                     f"00000000:00000000 00:00000000 00000000     0        0 {index + 1} 1 "
                     f"0000000000000000 20 4 0 10 -1\n")
    return "".join(lines)


@pytest.mark.parametrize("family", [4, 6])
def test_prefilter_never_misses_a_row_the_matcher_matches(family: int) -> None:
    rng = random.Random(family)
    entries = ("10.20.0.0/14", "10.20.3.0/25:443", "10.21.7.9", "[2001:db8::/36]:8443",
               "[2001:db8:0:1::/63]", "192.0.2.77:443")
    matcher = matcher_of(*entries)
    pattern = prefilter(matcher, family)
    assert pattern is not None
    for _round in range(5):
        data = ("\n" + _random_table(rng, family, 400)).encode()
        every = parse_rows(data, family)
        assert len(every) == 400
        expected = [r for r in every if matcher.match(r.remote_address, r.remote_port)]
        candidates = list(candidate_rows(data, family, pattern))
        assert expected, "the random table should hold matching rows"
        assert [r for r in candidates if matcher.match(r.remote_address, r.remote_port)] \
            == expected
        assert len(candidates) < len(every)  # it does filter


@pytest.fixture
def server() -> Iterator[socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener


@pytest.mark.parametrize("chunk", [7, 150, 1 << 16])
def test_a_table_read_in_chunks_gives_the_rows_of_one_read(tmp_path: Path, chunk: int) -> None:
    for family, table in ((4, TCP), (6, TCP6)):
        pattern = prefilter(matcher_of("127.0.0.2:8443", "10.20.0.0/16", "::/0"), family)
        assert pattern is not None
        path = tmp_path / f"tcp{family}"
        path.write_text(table)
        whole = list(candidate_rows(read_table(str(path)), family, pattern))
        assert whole  # the fixture has rows to find
        assert table_candidates(str(path), family, pattern, chunk) == whole


def test_a_real_connection_is_found_in_the_kernel_table_with_its_inode_and_owner(
        server: socket.socket) -> None:
    port = server.getsockname()[1]
    with socket.create_connection(("127.0.0.1", port)) as client:
        accepted, _ = server.accept()
        with accepted:
            pattern = prefilter(matcher_of(f"127.0.0.1:{port}"), 4)
            assert pattern is not None
            rows = list(candidate_rows(read_table("/proc/net/tcp"), 4, pattern))
            inode = os.fstat(client.fileno()).st_ino
            mine = [r for r in rows if r.local_port == client.getsockname()[1]]
            assert [(r.state, r.inode, r.uid) for r in mine] == [
                ("ESTABLISHED", inode, os.geteuid())]
            owners = socket_owners([inode, 999_999_999], likely=[os.getpid()])
            assert owners.pids == {inode: os.getpid()}


def test_diag_program_is_an_or_chain_of_remote_conditions() -> None:
    program = diag_program(matcher_of("127.0.0.1:8443", "10.20.0.0/16"), 4)
    assert program is not None
    assert program.hex() == (
        "08101400" "02200000" "fb200000" "7f000001"  # D_COND 127.0.0.1/32 port 8443
        "01041400"                                    # JMP over the rest: true -> accept
        "08101400" "02100000" "ffffffff" "0a140000")  # D_COND 10.20.0.0/16 any port
    assert diag_program(matcher_of("[2001:db8::1]:443"), 4) is None


def test_sock_diag_and_proc_give_the_same_rows_for_real_connections(
        server: socket.socket) -> None:
    port = server.getsockname()[1]
    matcher = matcher_of(f"127.0.0.1:{port}", "192.0.2.0/24")
    open_pair = (socket.create_connection(("127.0.0.1", port)), server.accept()[0])
    closed = socket.create_connection(("127.0.0.1", port))
    far_end = server.accept()[0]
    closed.close()  # the client first: its end stays in TIME_WAIT
    far_end.close()
    try:
        reader = TableReader(use_netlink=False)
        reader.compile(matcher)
        program = diag_program(matcher, 4)
        assert program is not None

        def mine(rows: list[Row]) -> set[Row]:
            return {r for r in rows if r.remote_port == port
                    and matcher.match(r.remote_address, r.remote_port)}

        from_diag = mine(diag_rows(4, program))
        assert from_diag == mine(reader.read(4, "tcp"))
        inode = os.fstat(open_pair[0].fileno()).st_ino
        assert {r.inode for r in from_diag if r.state == "ESTABLISHED"} == {inode}
        assert any(r.inode == 0 for r in from_diag)  # the closed one, no owner
    finally:
        for sock in open_pair:
            sock.close()


def test_one_sock_diag_read_gives_both_families_as_the_two_proc_tables_do(
        server: socket.socket) -> None:
    port = server.getsockname()[1]
    entries = [f"127.0.0.1:{port}"]
    clients = [socket.create_connection(("127.0.0.1", port)),
               socket.create_connection(("::ffff:127.0.0.1", port))]  # IPv6, v4-mapped
    server6 = socket.socket(socket.AF_INET6)
    clients.append(server6)  # held open, so its connection stays established
    try:
        server6.bind(("::1", 0))
        server6.listen(1)
        entries.append(f"[::1]:{server6.getsockname()[1]}")
        clients.append(socket.create_connection(server6.getsockname()[:2]))
    except OSError:
        pass  # no IPv6 loopback here: the v4-mapped client is still IPv6
    try:
        matcher = matcher_of(*entries)
        rows = {}
        for use_netlink in (True, False):
            reader = TableReader(use_netlink=use_netlink)
            reader.compile(matcher)
            rows[use_netlink] = {r for family, table in ((4, "tcp"), (6, "tcp6"))
                                 for r in reader.read(family, table)
                                 if matcher.match(r.remote_address, r.remote_port)}
            assert reader.source == ("sock_diag" if use_netlink else "proc")
        mine = {os.fstat(c.fileno()).st_ino for c in clients if c is not server6}
        assert {r.inode for r in rows[True]} >= mine
        assert {r.family for r in rows[True] if r.inode in mine} == {4, 6}
        assert rows[True] == rows[False]
    finally:
        for client in clients:
            client.close()


def test_a_destroy_filter_beyond_the_kernels_limit_is_not_built() -> None:
    assert destroy_filter(matcher_of("127.0.0.1:443", "[2001:db8::/32]:443")) is not None
    many = [f"10.{i // 250}.{i % 250}.1:443" for i in range(400)]
    assert destroy_filter(matcher_of(*many)) is None  # then every event is read


def test_a_refused_netlink_falls_back_to_proc_and_says_why(
        server: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(_family: int, _program: bytes) -> list[Row]:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(_socktable, "diag_rows", refused)
    port = server.getsockname()[1]
    reader = TableReader()
    reader.compile(matcher_of(f"127.0.0.1:{port}"))
    with socket.create_connection(("127.0.0.1", port)):
        rows = reader.read(4, "tcp")
    assert reader.source == "proc"
    assert reader.fallback_reason == "PermissionError: Operation not permitted"
    assert [r.remote_port for r in rows] == [port]
