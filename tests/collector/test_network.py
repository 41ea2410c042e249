"""The `network` collector and AI-endpoint matching: fixture tree (exact records),
endpoint parsing, resolution timeouts, and live AI egress from a real child process."""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector._endpoints import Endpoint, parse_endpoint, parse_endpoints, resolve_names
from collector._hashcache import HashCache
from collector._proc import exe_hash
from collector.network import COLLECTOR
from collector.registry import CollectContext, run_collector
from tests.collector.test_contract import expected_status

ROOT = Path(__file__).resolve().parents[1] / "assets" / "rootfs" / "network"
Triple = tuple[str, str, dict[str, Any]]

ENDPOINTS = ["api.anthropic.com:443", "*.anthropic.com", "10.20.0.0/16", "[2001:db8::1]:443",
             "bad entry", "999.1.1.1", "API.Anthropic.com.:443"]
SECRETS = ("Pr0xyPassw0rd", "S3cretApt", "DnfPassw0rd!")


def run(ctx: CollectContext) -> list[Triple]:
    result = run_collector(COLLECTOR, ctx)
    assert result.status == expected_status(result.records), result.error
    return [(r.type, r.key, r.data) for r in result.records]


def malformed(file: str, line: int, reason: str) -> Triple:
    return ("malformed_line", f"{file}:{line}", {"file": file, "line": line, "reason": reason})


def route(key: str, family: str, destination: str, gateway: str | None, interface: str,
          metric: int, flags: str, raw: int, source: str | None = None) -> Triple:
    return ("route", key, {"family": family, "destination": destination, "source": source,
                           "gateway": gateway, "interface": interface, "metric": metric,
                           "flags": flags, "flags_raw": raw})


def proxy(source: str, variable: str, line: int, value: str,
          section: str | None = None) -> Triple:
    scope = f"[{section}]" if section else ""
    return ("proxy_setting", f"{source}:{scope}{variable}",
            {"source": source, "line": line, "section": section, "variable": variable,
             "value": value})


def resolution(key: str, entry: str, kind: str, *, name: str | None = None,
               network: str | None = None, port: int | None = None, status: str,
               names: list[str] | None = None, addresses: list[str] | None = None) -> Triple:
    return ("ai_endpoint_resolution", key, {
        "entry": entry, "kind": kind, "name": name, "network": network, "port": port,
        "status": status, "resolved": None, "names": names, "addresses": addresses,
        "error": None})


PROXY = "http://proxy.corp.bank.example:3128"
EXPECTED: list[Triple] = [
    ("ai_endpoint_invalid", "ai_endpoints[4]",
     {"index": 4, "entry": "bad entry", "reason": "not a valid host name"}),
    ("ai_endpoint_invalid", "ai_endpoints[5]",
     {"index": 5, "entry": "999.1.1.1", "reason": "not a valid IP address or host name"}),
    malformed("/proc/net/route", 5, "a number field is not a number"),
    malformed("/proc/net/route", 6, "expected at least 8 fields, found 2"),
    malformed("/etc/hosts", 7, "address is not an IP address"),
    malformed("/etc/hosts", 8, "no host name"),
    malformed("/etc/profile.d/proxy.sh", 4, "unbalanced quotes"),
    route("inet 0.0.0.0/0 via 192.0.2.1 dev eth0 metric 100", "inet", "0.0.0.0/0",
          "192.0.2.1", "eth0", 100, "UG", 3),
    route("inet 192.0.2.0/24 dev eth0 metric 100", "inet", "192.0.2.0/24", None, "eth0", 100,
          "U", 1),
    route("inet 10.20.0.0/16 dev wg0 metric 0", "inet", "10.20.0.0/16", None, "wg0", 0, "U", 1),
    route("inet6 fd00::/64 dev eth0 metric 256", "inet6", "fd00::/64", None, "eth0", 256,
          "U", 1),
    route("inet6 ::/0 via fd00::1 dev eth0 metric 1024", "inet6", "::/0", "fd00::1", "eth0",
          1024, "UG", 3),
    route("inet6 2001:db8::/32 from fd00::/64 via fd00::1 dev eth0 metric 1024", "inet6",
          "2001:db8::/32", "fd00::1", "eth0", 1024, "UG", 3, source="fd00::/64"),
    # printed twice in the file (two tables): recorded once
    route("inet6 ::1/128 dev lo metric 0", "inet6", "::1/128", None, "lo", 0, "U", 0x80200001),
    ("dns_resolver", "/etc/resolv.conf", {
        "path": "/etc/resolv.conf",
        "symlink_target": "../run/systemd/resolve/stub-resolv.conf",
        "nameservers": ["127.0.0.53"], "search": ["corp.bank.example"], "domain": None,
        "options": ["edns0", "trust-ad"]}),
    ("dns_resolver", "/run/systemd/resolve/resolv.conf", {
        "path": "/run/systemd/resolve/resolv.conf", "symlink_target": None,
        "nameservers": ["10.0.0.53", "fd00::53"],
        "search": ["corp.bank.example", "branch.bank.example"], "domain": None,
        "options": ["timeout:2", "attempts:3", "rotate"]}),
    ("hosts_entry", "127.0.0.1", {"address": "127.0.0.1", "names": ["localhost"], "lines": [1]}),
    ("hosts_entry", "::1", {"address": "::1",
                            "names": ["localhost", "ip6-localhost", "ip6-loopback"],
                            "lines": [2]}),
    ("hosts_entry", "10.20.1.5", {"address": "10.20.1.5",
                                  "names": ["api.anthropic.com", "ai-gw.corp.bank.example"],
                                  "lines": [4, 6]}),
    ("hosts_entry", "10.20.1.6", {"address": "10.20.1.6", "names": ["console.anthropic.com"],
                                  "lines": [5]}),
    proxy("/etc/environment", "http_proxy", 2,
          "http://svc-proxy:[REDACTED:url_password]@proxy.corp.bank.example:3128"),
    proxy("/etc/environment", "https_proxy", 3, PROXY),
    proxy("/etc/environment", "no_proxy", 4, "localhost,127.0.0.1,.corp.bank.example"),
    proxy("/etc/profile.d/proxy.sh", "HTTPS_PROXY", 2, PROXY),
    proxy("/etc/profile.d/proxy.sh", "NO_PROXY", 2, ".corp.bank.example"),
    proxy("/etc/profile.d/proxy.sh", "HTTP_PROXY", 3, "$http_proxy"),
    # ignored.csh and 95proxy.bak are not read (not *.sh; apt skips *.bak)
    proxy("/etc/apt/apt.conf.d/95proxy", "Acquire::http::Proxy", 2,
          "http://apt:[REDACTED:url_password]@proxy.corp.bank.example:3128"),
    proxy("/etc/apt/apt.conf.d/95proxy", "Acquire::http::Proxy::deb.internal.example", 3,
          "DIRECT"),
    proxy("/etc/apt/apt.conf.d/95proxy", "Acquire::https::Proxy", 7, PROXY),
    proxy("/etc/dnf/dnf.conf", "proxy", 3, PROXY, "main"),
    proxy("/etc/dnf/dnf.conf", "proxy_username", 4, "svc-dnf", "main"),
    proxy("/etc/dnf/dnf.conf", "proxy_password", 5, "[REDACTED:named_secret]", "main"),
    proxy("/etc/yum.repos.d/internal.repo", "proxy", 4, "_none_", "internal"),
    # not live: no DNS, but /etc/hosts names still give addresses
    resolution("api.anthropic.com:443", "api.anthropic.com:443", "host",
               name="api.anthropic.com", port=443, status="not_live",
               addresses=["10.20.1.5"]),
    resolution("*.anthropic.com", "*.anthropic.com", "wildcard", name="*.anthropic.com",
               status="derived", names=["api.anthropic.com", "console.anthropic.com"],
               addresses=["10.20.1.5", "10.20.1.6"]),
    resolution("10.20.0.0/16", "10.20.0.0/16", "network", network="10.20.0.0/16",
               status="literal"),
    resolution("[2001:db8::1]:443", "[2001:db8::1]:443", "address", network="2001:db8::1/128",
               port=443, status="literal"),
    # "API.Anthropic.com.:443" is the first entry in normal form: recorded once
]


def test_fixture_exact() -> None:
    ctx = CollectContext(root=ROOT, options={"network": {"ai_endpoints": ENDPOINTS}})
    assert run(ctx) == EXPECTED


def test_fixture_has_no_live_records_and_no_secret() -> None:
    ctx = CollectContext(root=ROOT, options={"network": {"ai_endpoints": ENDPOINTS}})
    records = run(ctx)
    live_types = {"interface", "listening_socket", "connection", "ai_egress"}
    assert not [r for r in records if r[0] in live_types]
    dumped = json.dumps(records)
    for secret in SECRETS:
        assert secret not in dumped


def test_missing_sources_are_recorded() -> None:
    records = run(CollectContext(root=ROOT / "etc" / "apt"))  # a tree with none of them
    assert [r for r in records if r[0] == "source_missing"] == [
        ("source_missing", p, {"path": p})
        for p in ("/proc/net/route", "/proc/net/ipv6_route", "/etc/resolv.conf", "/etc/hosts")]


@pytest.mark.parametrize(("entry", "kind", "spec", "port"), [
    ("api.openai.com", "host", "api.openai.com", None),
    ("API.OpenAI.com.:443", "host", "api.openai.com:443", 443),
    ("*.anthropic.com", "wildcard", "*.anthropic.com", None),
    ("*.anthropic.com:8443", "wildcard", "*.anthropic.com:8443", 8443),
    ("10.20.0.0/16", "network", "10.20.0.0/16", None),
    ("10.20.3.4/16", "network", "10.20.0.0/16", None),  # host bits ignored, as config check
    ("10.20.0.0/16:443", "network", "10.20.0.0/16:443", 443),
    ("127.0.0.1:8443", "address", "127.0.0.1:8443", 8443),
    ("2001:db8::1", "address", "2001:db8::1", None),
    ("[2001:DB8::1]:443", "address", "[2001:db8::1]:443", 443),
    ("2001:db8::/32", "network", "2001:db8::/32", None),
    ("[2001:db8::/32]:443", "network", "[2001:db8::/32]:443", 443),
    ("[::1]", "address", "::1", None),
    ("실례.테스트", "host", "xn--9n2bp8q.xn--9t4b11yi5a", None),  # IANA IDN test names
])
def test_parse_endpoint(entry: str, kind: str, spec: str, port: int | None) -> None:
    endpoint = parse_endpoint(entry)
    assert (endpoint.kind, endpoint.spec, endpoint.port, endpoint.entry) == \
        (kind, spec, port, entry)


@pytest.mark.parametrize(("entry", "reason"), [
    ("", "entry is empty"),
    ("https://api.openai.com/v1", "a URL: give the host name (and `:port`) only"),
    ("api.openai.com:", "port is empty"),
    ("api.openai.com:https", "port is not a number"),
    ("api.openai.com:70000", "port is out of range (1-65535)"),
    ("10.20.0.0/33", "not a valid network (CIDR)"),
    ("[10.0.0.1]:443", "brackets are for IPv6 only"),
    ("[2001:db8::1", "unbalanced `[`"),
    ("[nothost]:443", "not a valid IPv6 address"),
    ("api.*.com", "`*` is allowed only as the first label, e.g. `*.example.com`"),
    ("*", "`*` is allowed only as the first label, e.g. `*.example.com`"),
    ("bad_-.example..com", "not a valid host name"),
    ("10.20.0", "not a valid IP address or host name"),
    ("-lead.example", "not a valid host name"),
])
def test_parse_endpoint_rejects(entry: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_endpoint(entry)
    assert str(caught.value) == reason


def test_parse_endpoints_bad_config_shapes() -> None:
    assert parse_endpoints(None) == ([], [])
    endpoints, invalid = parse_endpoints("api.openai.com")
    assert endpoints == [] and [i.reason for i in invalid] == ["ai_endpoints is not a list"]
    endpoints, invalid = parse_endpoints(["a.example", 7, "a.example", "A.example"])
    assert [e.spec for e in endpoints] == ["a.example"]
    assert [(i.index, i.entry, i.reason) for i in invalid] == [(1, "7", "not a string")]


def test_wildcard_matches_subdomains_not_apex() -> None:
    wildcard: Endpoint = parse_endpoint("*.anthropic.com")
    assert wildcard.covers_name("api.anthropic.com")
    assert wildcard.covers_name("a.b.anthropic.com")
    assert not wildcard.covers_name("anthropic.com")
    assert not wildcard.covers_name("evilanthropic.com")


def test_resolution_timeout_and_failure_are_recorded() -> None:
    release = threading.Event()

    def resolve(name: str) -> list[str]:
        if name == "slow.example":
            release.wait(10)
            return ["192.0.2.1"]
        if name == "broken.example":
            raise socket.gaierror(-2, "Name or service not known")
        return ["192.0.2.7", "2001:db8::7"]

    try:
        found = resolve_names(["ok.example", "slow.example", "broken.example", "ok.example"],
                              timeout=0.3, resolve=resolve)
    finally:
        release.set()
        for thread in threading.enumerate():
            if thread.name.startswith("gamsa-resolve:"):
                thread.join(5)
    assert {n: (r.status, r.addresses, r.error) for n, r in found.items()} == {
        "ok.example": ("resolved", ["192.0.2.7", "2001:db8::7"], None),
        "slow.example": ("timeout", [], "no answer within 0.3 s"),
        "broken.example": ("failed", [], "gaierror: [Errno -2] Name or service not known"),
    }


def test_exe_hash_shared_with_processes(tmp_path: Path) -> None:
    """network hashes executables with the processes collector's function."""
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks and a tail
    path = tmp_path / "blob"
    path.write_bytes(data)
    cache = HashCache()
    assert exe_hash(str(path), cache) == hashlib.sha256(data).hexdigest()
    assert exe_hash(str(tmp_path / "absent"), cache) is None
    assert exe_hash(str(tmp_path), cache) is None  # a directory
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        assert exe_hash(str(fifo), cache) is None  # never waited on


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_directory_sources_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "etc" / "profile.d").mkdir(parents=True)
    os.mkfifo(tmp_path / "etc" / "hosts")  # reading it would block for ever
    os.mkfifo(tmp_path / "etc" / "environment")
    (tmp_path / "etc" / "resolv.conf").mkdir()
    records = run(CollectContext(root=tmp_path))
    assert [r for r in records if r[0] == "source_unreadable"] == [
        ("source_unreadable", "/etc/resolv.conf",
         {"path": "/etc/resolv.conf", "reason": "IsADirectoryError: Is a directory"}),
        ("source_unreadable", "/etc/hosts",
         {"path": "/etc/hosts", "reason": "OSError: not a regular file"}),
        ("source_unreadable", "/etc/environment",
         {"path": "/etc/environment", "reason": "OSError: not a regular file"}),
    ]


# --- live -----------------------------------------------------------------------

CHILD = """
import socket, sys, time
port, other = int(sys.argv[1]), int(sys.argv[2])
ai = socket.create_connection(("127.0.0.1", port))
not_ai = socket.create_connection(("127.0.0.1", other))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect(("127.0.0.1", port))
print("ok", ai.getsockname()[1], not_ai.getsockname()[1], udp.getsockname()[1], flush=True)
time.sleep(30)
"""
FAKE_KEY = "sk-proj-Zyxwvutsrqponmlkjihgfedcba9876"


@pytest.fixture
def listeners() -> Iterator[tuple[socket.socket, socket.socket]]:
    sockets = []
    try:
        for _ in range(2):
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(server)
            server.bind(("127.0.0.1", 0))
            server.listen(8)  # the kernel completes handshakes; no accept needed
        yield sockets[0], sockets[1]
    finally:
        for server in sockets:
            server.close()


def _wait_line(child: subprocess.Popen[str], timeout: float = 15) -> str:
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    assert ready, "child did not connect in time"
    return child.stdout.readline()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="select on a pipe; Linux CI")
def test_live_ai_egress_from_child_process(
        listeners: tuple[socket.socket, socket.socket]) -> None:
    ai_port = listeners[0].getsockname()[1]
    other_port = listeners[1].getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ai_port), str(other_port), "--api-key", FAKE_KEY],
        stdout=subprocess.PIPE, text=True)
    try:
        words = _wait_line(child).split()
        assert words[0] == "ok"
        ai_local, other_local, udp_local = (int(w) for w in words[1:])
        endpoints = [f"127.0.0.1:{ai_port}", f"localhost:{ai_port}"]
        result = run_collector(COLLECTOR, CollectContext(
            options={"network": {"ai_endpoints": endpoints}}))
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert result.status == expected_status(result.records), result.error
    assert not [r for r in result.records if r.type == "collector_error"]
    by_type: dict[str, list[Any]] = {}
    for record in result.records:
        by_type.setdefault(record.type, []).append(record)

    exe = os.path.realpath(sys.executable)
    with open(exe, "rb") as handle:
        exe_sha256 = hashlib.sha256(handle.read()).hexdigest()
    mine = [r for r in by_type.get("ai_egress", []) if r.data["pid"] == child.pid]
    tcp_key = f"tcp:127.0.0.1:{ai_local}-127.0.0.1:{ai_port}#{child.pid}"
    udp_key = f"udp:127.0.0.1:{udp_local}-127.0.0.1:{ai_port}#{child.pid}"
    assert sorted(r.key for r in mine) == sorted([tcp_key, udp_key])
    tcp = next(r for r in mine if r.key == tcp_key)
    assert tcp.data["exe"] == exe
    assert tcp.data["exe_sha256"] == exe_sha256
    assert tcp.data["status"] == "ESTABLISHED"
    assert (tcp.data["remote_address"], tcp.data["remote_port"]) == ("127.0.0.1", ai_port)
    assert tcp.data["local_port"] == ai_local
    assert tcp.data["matched"] == endpoints  # by address, and by the name's resolution
    assert tcp.data["process_name"] and tcp.data["user"]
    assert tcp.data["cmdline"][-2:] == ["--api-key", "[REDACTED:argument]"]
    assert FAKE_KEY not in json.dumps([r.data for r in result.records])

    # the connection to the port that is not configured is a connection, not AI egress
    assert not [r for r in by_type["ai_egress"] if r.data["remote_port"] == other_port]
    connections = {r.key: r.data for r in by_type["connection"]}
    other = connections[f"tcp:127.0.0.1:{other_local}-127.0.0.1:{other_port}"]
    assert other["pid"] == child.pid
    # the listeners are this process's
    listening = {r.key: r.data for r in by_type["listening_socket"]}
    assert listening[f"tcp:127.0.0.1:{ai_port}"]["pid"] == os.getpid()

    resolutions = {r.key: r.data for r in by_type["ai_endpoint_resolution"]}
    assert resolutions[f"localhost:{ai_port}"]["status"] == "resolved"
    assert "127.0.0.1" in resolutions[f"localhost:{ai_port}"]["resolved"]
    assert "lo" in {r.key for r in by_type["interface"]}


def test_live_shape_without_endpoints() -> None:
    result = run_collector(COLLECTOR, CollectContext())
    assert result.status == expected_status(result.records), result.error
    types = {r.type for r in result.records}
    assert "collector_error" not in types
    assert "interface" in types
    assert "ai_egress" not in types and "ai_endpoint_resolution" not in types
    if sys.platform.startswith("linux") and Path("/proc/net/route").exists():
        assert "route" in types
    if Path("/etc/resolv.conf").exists():
        assert "dns_resolver" in types
