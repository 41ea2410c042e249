"""The `packages` collector against a fixture tree (exact records) and this machine,
and the bounded command runner it shares with other collectors."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from collector._tools import run_tool
from collector.packages import COLLECTOR
from collector.record import from_epoch
from collector.registry import CollectContext, run_collector
from tests.collector.test_contract import expected_status

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "rootfs" / "packages"
LIST_MTIME = 1_700_000_000  # set on the copied .list files (git keeps no mtimes)

Triple = tuple[str, str, dict[str, Any]]


def run(root: Path) -> list[Triple]:
    result = run_collector(COLLECTOR, CollectContext(root=root))
    assert result.status == expected_status(result.records), result.error
    return [(r.type, r.key, r.data) for r in result.records]


def copy_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root, symlinks=True)
    for index, name in enumerate(sorted(os.listdir(root / "var/lib/dpkg/info"))):
        os.utime(root / "var/lib/dpkg/info" / name, (LIST_MTIME, LIST_MTIME + index))
    return root


def package(manager: str, name: str, version: str | None, arch: str | None,
            source: str | None, status: str | None, size: int | None,
            install_time: str | None, *, want: str | None = None,
            source_version: str | None = None) -> Triple:
    key = f"{manager}:{name}:{arch or ''}"
    if manager == "rpm" and name in ("kernel-core", "gpg-pubkey"):
        key += f":{version}"
    return ("package", key, {
        "manager": manager, "name": name, "version": version, "arch": arch,
        "source": source, "source_version": source_version, "status": status,
        "want": want, "installed_size_kib": size, "install_time": install_time})


def malformed(file: str, line: int, reason: str) -> Triple:
    return ("malformed_line", f"{file}:{line}", {"file": file, "line": line, "reason": reason})


STATUS = "/var/lib/dpkg/status"
# .list files in sorted order: adduser, libc6:amd64, python3 -> mtime + 0, 1, 2
DPKG: list[Triple] = [
    package("dpkg", "adduser", "3.134", "all", "adduser", "installed", 686,
            from_epoch(LIST_MTIME), want="install"),
    package("dpkg", "libc6", "2.36-9+deb12u14", "amd64", "glibc", "installed", 13001,
            from_epoch(LIST_MTIME + 1), want="install"),
    # Multi-Arch: allowed -> python3.list; held; source with its own version
    package("dpkg", "python3", "3.11.2-1+b1", "amd64", "python3-defaults", "installed", 81,
            from_epoch(LIST_MTIME + 2), want="hold", source_version="3.11.2-1"),
    # removed, config files left: no file list, so no install time
    package("dpkg", "telnet", "0.17+2.4-2", "amd64", "netkit-telnet", "config-files", 157,
            None, want="deinstall"),
    package("dpkg", "ai-gateway-agent", "1.2.0", "amd64", "ai-gateway-agent",
            "half-installed", None, None, want="install"),
    package("dpkg", "broken-status", "0.1", "all", "broken-status", None, None, None),
    malformed(STATUS, 52, "Installed-Size is not a number"),
    malformed(STATUS, 55, "not a `Field: value` line"),
    malformed(STATUS, 59, "stanza without a Package field"),
    malformed(STATUS, 64, "Status is not `<want> <flag> <state>`"),
]

RPM_FILE = "/cmd/rpm-qa.txt"
RPM: list[Triple] = [
    package("rpm", "bash", "5.1.8-6.el9_1", "x86_64", "bash", "installed", 7557,
            from_epoch(1700000000), source_version="5.1.8-6.el9_1"),
    # install-only: two versions at once, keyed apart
    package("rpm", "kernel-core", "5.14.0-362.8.1.el9_3", "x86_64", "kernel", "installed",
            65430, from_epoch(1700000100), source_version="5.14.0-362.8.1.el9_3"),
    package("rpm", "kernel-core", "5.14.0-427.13.1.el9_4", "x86_64", "kernel", "installed",
            66407, from_epoch(1710000000), source_version="5.14.0-427.13.1.el9_4"),
    package("rpm", "openssl", "1:3.0.7-24.el9", "x86_64", "openssl", "installed", 1807,
            from_epoch(1700000200), source_version="3.0.7-24.el9"),
    package("rpm", "gpg-pubkey", "fd431d51-4ae0493b", "(none)", None, "installed", 0,
            from_epoch(1700000300)),
    package("rpm", "gpg-pubkey", "5a6340b3-6229229e", "(none)", None, "installed", 0,
            from_epoch(1700000301)),
    # the six-field format (no SIZE, no SOURCERPM)
    package("rpm", "legacy-six-fields", "1.0-1", "noarch", None, "installed", None,
            from_epoch(1690000000)),
    malformed(RPM_FILE, 8, "expected 6 or 8 tab-separated fields, found 1"),
]


def test_fixture_exact(tmp_path: Path) -> None:
    assert run(copy_fixture(tmp_path)) == DPKG + RPM


def test_rpm_only(tmp_path: Path) -> None:
    (tmp_path / "cmd").mkdir()
    shutil.copy(FIXTURE / "cmd" / "rpm-qa.txt", tmp_path / "cmd")
    assert run(tmp_path) == RPM


def test_dpkg_only_without_info_dir(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_bytes(
        b"Package: caf\xe9\nStatus: install ok installed\nArchitecture: all\n"
        b"Version: 1\nInstalled-Size: 3\n")
    assert run(tmp_path) == [
        ("package", "dpkg:caf\\xe9:all", {
            "manager": "dpkg", "name": {"b64": "Y2Fm6Q=="}, "version": "1", "arch": "all",
            "source": {"b64": "Y2Fm6Q=="}, "source_version": None, "status": "installed",
            "want": "install", "installed_size_kib": 3, "install_time": None}),
    ]


def test_no_package_manager_is_unsupported(tmp_path: Path) -> None:
    assert run(tmp_path) == [
        ("unsupported", "packages:package_manager",
         {"platform": sys.platform, "source": "package_manager",
          "reason": "no dpkg status file (/var/lib/dpkg/status) and no rpm"}),
    ]


def test_unreadable_status_is_recorded(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg/status").mkdir(parents=True)
    assert run(tmp_path) == [
        ("source_unreadable", STATUS,
         {"path": STATUS, "reason": "IsADirectoryError: Is a directory"}),
    ]


def test_live_packages() -> None:
    if not os.path.exists("/var/lib/dpkg/status"):
        pytest.skip("no dpkg status file on this machine")
    started = time.monotonic()
    result = run_collector(COLLECTOR, CollectContext())
    elapsed = time.monotonic() - started
    assert result.status == expected_status(result.records), result.error
    assert not [r for r in result.records if r.type in ("collector_error", "command_failed")]
    packages = {r.key: r.data for r in result.records if r.type == "package"}
    assert len(packages) > 50
    found = [d for k, d in packages.items()
             if k.startswith(("dpkg:python3:", "dpkg:dpkg:"))]
    assert found and all(d["status"] == "installed" and d["version"] for d in found)
    assert all(d["install_time"] for d in found)
    assert elapsed < 5, f"{len(packages)} packages took {elapsed:.1f} s"


@pytest.mark.skipif(shutil.which("rpm") is None, reason="rpm not installed")
def test_live_rpm_runs() -> None:
    result = run_collector(COLLECTOR, CollectContext())
    assert not [r for r in result.records if r.type == "command_failed"]


# --- run_tool: real processes ----------------------------------------------------

SH = shutil.which("sh")
needs_sh = pytest.mark.skipif(SH is None or sys.platform == "win32", reason="needs POSIX sh")


@needs_sh
def test_run_tool_output_and_exit_status() -> None:
    run = run_tool([str(SH), "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (run.returncode, run.stdout, run.stderr, run.error) == (3, b"out\n", b"err\n", None)
    assert not run.ok and run.failure() == "exit status 3: err"


@needs_sh
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_run_tool_timeout_kills_the_tool_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    run = run_tool([str(SH), "-c", f"sleep 30 & echo $! > {pid_file}; wait"], timeout=0.5)
    assert run.error == "timed out after 0.5 s" and run.returncode is None
    assert time.monotonic() - started < 10
    child = int(pid_file.read_text())
    for _ in range(100):  # killed with its group; gone once reaped by init
        if not Path(f"/proc/{child}").exists() or "Z" in _proc_state(child):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"child {child} of the timed-out tool still runs")


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@needs_sh
def test_run_tool_timeout_when_output_closed_but_process_lives() -> None:
    run = run_tool([str(SH), "-c", "exec >/dev/null 2>&1; sleep 30"], timeout=0.5)
    assert run.error == "timed out after 0.5 s"


@needs_sh
def test_run_tool_output_cap() -> None:
    run = run_tool([str(SH), "-c", "while :; do echo yyyyyyyyyyyyyyyy; done"], timeout=30,
                   max_bytes=100_000)
    assert run.error == "output over 100000 bytes"
    assert 100_000 < len(run.stdout) <= 100_000 + 65536


def test_run_tool_missing_binary(tmp_path: Path) -> None:
    run = run_tool([str(tmp_path / "no-such-tool")], timeout=5)
    assert run.returncode is None and run.error is not None
    assert run.error.startswith("FileNotFoundError")
