"""The `processes` collector on this machine's real process table, and the exe hash
cache it shares with `network`: real child processes, real sockets, real files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from collector._hashcache import HashCache
from collector._proc import exe_hash, exe_hash_cache
from collector.processes import COLLECTOR, collect_processes
from collector.registry import CollectContext, run_collector

SECRET = "Hunter2Secret"  # seeded to prove it never reaches a record
CHILD = ("import socket,time\n"
         "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
         "u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1',0))\n"
         "print(s.getsockname()[1], u.getsockname()[1], flush=True)\n"
         "time.sleep(30)\n")
LINUX = sys.platform.startswith("linux")


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def records_of(ctx: CollectContext) -> list[tuple[str, str, dict[str, Any]]]:
    result = run_collector(COLLECTOR, ctx)
    # Partial only for what the agent is denied (another user's or a sandbox's process:
    # pid 1 of some CI sandboxes denies even root); that is checked below.
    assert result.status in ("ok", "partial"), result.error
    assert all("access denied" in gap.reason for gap in result.gaps), result.gaps
    return [(r.type, r.key, r.data) for r in result.records if r.type != "coverage_gap"]


@pytest.fixture
def listener() -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, "--password", SECRET],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        tcp, udp = (int(p) for p in child.stdout.readline().split())
        yield child, tcp, udp
    finally:
        child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


def test_fixture_mode_is_unsupported(tmp_path: Path) -> None:
    assert records_of(CollectContext(root=tmp_path)) == [
        ("unsupported", "processes:process table",
         {"platform": sys.platform, "source": "process table",
          "reason": "fixture mode: processes are read on the live system only"}),
    ]


def test_live_child_process(tmp_path: Path,
                            listener: tuple[subprocess.Popen[str], int, int]) -> None:
    child, tcp, udp = listener
    records = records_of(CollectContext(state_dir=tmp_path))
    assert not [r for r in records if r[0] == "collector_error"]
    assert SECRET not in json.dumps(records)

    created = psutil.Process(child.pid).create_time()
    mine = [(key, data) for kind, key, data in records
            if kind == "process" and data["pid"] == child.pid]
    assert len(mine) == 1
    key, data = mine[0]
    exe = os.path.realpath(sys.executable)
    assert key == f"{child.pid}:{round(created * 1_000_000)}"
    assert data["ppid"] == os.getpid()
    assert data["exe"] == exe and data["exe_deleted"] is False
    assert data["exe_sha256"] == sha256_file(exe)
    assert data["user"] == psutil.Process().username()
    assert data["cmdline"][:2] == [sys.executable, "-c"]
    assert data["cmdline"][-2:] == ["--password", "[REDACTED:argument]"]
    assert data["cmdline_redactions"] == 1
    assert data["status"] in ("sleeping", "running")
    assert data["listening"] == [
        {"proto": "tcp", "family": "inet", "address": "127.0.0.1", "port": tcp},
        {"proto": "udp", "family": "inet", "address": "127.0.0.1", "port": udp},
    ]
    assert data["access_denied"] == []

    # the cache was written (atomically: no temp file left) and holds the child's hash
    cache_dir = tmp_path / "cache"
    assert [p.name for p in cache_dir.iterdir()] == ["exe_hashes.json"]
    stored = json.loads((cache_dir / "exe_hashes.json").read_text())
    assert sha256_file(exe) in stored["entries"].values()

    # keys are unique, every process record is sane
    keys = [(kind, key) for kind, key, _ in records]
    assert len(keys) == len(set(keys))
    for kind, _key, data in records:
        if kind == "process":
            assert data["exe_sha256"] is None or len(data["exe_sha256"]) == 64
            assert data["exe_sha256"] is None or data["exe"] is not None


def test_rerun_reuses_the_cache(tmp_path: Path,
                                listener: tuple[subprocess.Popen[str], int, int]) -> None:
    first = exe_hash_cache(tmp_path)
    list(collect_processes(first))
    assert first.computed >= 1  # at least the child's interpreter
    saved = set(json.loads((tmp_path / "cache" / "exe_hashes.json").read_text())["entries"])

    second = exe_hash_cache(tmp_path)
    assert len(second) == len(saved)
    records = list(collect_processes(second))
    now = set(json.loads((tmp_path / "cache" / "exe_hashes.json").read_text())["entries"])
    # only executables first seen now (a process started meanwhile) were read again
    assert second.computed == len(now - saved)
    assert second.hits >= 1
    child = next(r for r in records if r.data.get("pid") == listener[0].pid)
    assert child.data["exe_sha256"] == sha256_file(os.path.realpath(sys.executable))


def test_exe_hash_cache_invalidation(tmp_path: Path) -> None:
    target = tmp_path / "tool"
    target.write_bytes(b"#!/bin/sh\necho one\n")
    state = tmp_path / "state"
    cache = exe_hash_cache(state)
    assert exe_hash(str(target), cache) == sha256_file(target)
    assert exe_hash(str(target), cache) == sha256_file(target)
    assert (cache.computed, cache.hits) == (1, 1)
    cache.save()

    cache = exe_hash_cache(state)
    assert exe_hash(str(target), cache) == sha256_file(target)
    assert (cache.computed, cache.hits) == (0, 1)

    # same size, new content, old mtime put back: ctime still tells
    info = target.stat()
    target.write_bytes(b"#!/bin/sh\necho two\n")
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert exe_hash(str(target), cache) == sha256_file(target)
    assert cache.computed == 1

    with target.open("ab") as out:  # size changes
        out.write(b"echo three\n")
    assert exe_hash(str(target), cache) == sha256_file(target)
    assert cache.computed == 2

    os.utime(target, ns=(1, 1))  # mtime alone changes
    assert exe_hash(str(target), cache) == sha256_file(target)
    assert cache.computed == 3

    # save prunes: a run that saw only the current file keeps only its entry
    cache.save()
    cache = exe_hash_cache(state)
    assert len(cache) == 4
    assert exe_hash(str(target), cache) == sha256_file(target)
    cache.save()
    entries = json.loads((state / "cache" / "exe_hashes.json").read_text())["entries"]
    assert list(entries.values()) == [sha256_file(target)]


def test_exe_hash_cache_tolerates_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "exe_hashes.json"
    path.parent.mkdir()
    for junk in (b"{not json", b"[]", b'{"version": 1, "entries": {"k": 5}}',
                 b'{"version": 99, "entries": {}}'):
        path.write_bytes(junk)
        assert len(exe_hash_cache(tmp_path)) == 0
    memory_only = exe_hash_cache(None)
    target = tmp_path / "f"
    target.write_bytes(b"x" * (3 << 20))  # several 1 MiB chunks
    assert exe_hash(str(target), memory_only) == sha256_file(target)
    memory_only.save()  # nowhere to save: a no-op


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_exe_hash_refuses_non_files(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cache = HashCache()
    results: list[str | None] = []
    worker = threading.Thread(target=lambda: results.append(exe_hash(str(fifo), cache)))
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "hashing a FIFO hung"
    assert results == [None]
    assert exe_hash(str(tmp_path), cache) is None
    assert exe_hash(str(tmp_path / "missing"), cache) is None
    assert cache.computed == 0


def wait_for_exe(pid: int, expected: str) -> None:
    deadline = time.monotonic() + 10
    while psutil.Process(pid).exe() != expected:
        assert time.monotonic() < deadline, "child did not exec"
        time.sleep(0.02)


@pytest.mark.skipif(not LINUX, reason="link-count check of /proc/<pid>/exe is Linux only")
@pytest.mark.skipif(shutil.which("sleep") is None, reason="no sleep binary")
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_deleted_or_replaced_executable(tmp_path: Path, how: str) -> None:
    binary = tmp_path / "sleeper"
    shutil.copy2(str(shutil.which("sleep")), binary)
    child = subprocess.Popen([str(binary), "30"])
    try:
        wait_for_exe(child.pid, str(binary))
        if how == "deleted":
            binary.unlink()
        else:  # an upgrade: a new file renamed over the running one
            other = tmp_path / "new"
            other.write_bytes(b"#!/bin/sh\n")
            os.replace(other, binary)
        records = records_of(CollectContext())
    finally:
        child.kill()
        child.wait(timeout=10)
    data = next(d for kind, _k, d in records if kind == "process" and d["pid"] == child.pid)
    assert data["exe"] == str(binary)
    assert data["exe_deleted"] is True
    assert data["exe_sha256"] is None


@pytest.mark.skipif(not LINUX, reason="kernel threads are a Linux notion")
def test_kernel_threads_have_no_exe() -> None:
    kthreadd = [d for kind, _k, d in records_of(CollectContext())
                if kind == "process" and d["pid"] == 2 and d["name"] == "kthreadd"]
    if not kthreadd:
        pytest.skip("no kthreadd visible (a pid namespace)")
    assert kthreadd[0]["exe"] is None and kthreadd[0]["exe_sha256"] is None
    assert kthreadd[0]["cmdline"] == []


def test_ipv6_listener_is_listed() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with server:
        server.listen()
        port = server.getsockname()[1]
        records = records_of(CollectContext())
    me = next(d for kind, _k, d in records if kind == "process" and d["pid"] == os.getpid())
    assert {"proto": "tcp", "family": "inet6", "address": "::1", "port": port} \
        in me["listening"]
