"""The `host` collector against fixture trees (exact records) and this machine."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from collector.host import COLLECTOR
from collector.registry import CollectContext, run_collector
from tests.collector.test_contract import expected_status

BASIC = Path(__file__).resolve().parents[1] / "assets" / "rootfs" / "basic"
MACHINE_ID = "0123456789abcdef0123456789abcdef"  # tests/assets/rootfs/basic/etc/machine-id

Triple = tuple[str, str, dict[str, Any]]


def run(root: Path) -> list[Triple]:
    result = run_collector(COLLECTOR, CollectContext(root=root))
    assert result.status == expected_status(result.records), result.error
    return [(r.type, r.key, r.data) for r in result.records]


def host(hostname: str | None, machine_id_sha256: str | None, os: dict[str, Any],
         kernel: dict[str, Any]) -> dict[str, Any]:
    """A fixture-mode host record: every live-only field null."""
    return {"hostname": hostname, "machine_id_sha256": machine_id_sha256, "os": os,
            "kernel": kernel, "boot_time": None, "cpu_count": None,
            "memory_total_bytes": None, "interfaces": None}


NO_OS = {"system": None, "name": None, "version_id": None, "id": None, "pretty_name": None}
NO_KERNEL = {"release": None, "version": None}


def test_basic_fixture_exact() -> None:
    assert run(BASIC) == [
        ("host", "fixture-host", host(
            "fixture-host",
            hashlib.sha256(MACHINE_ID.encode()).hexdigest(),
            {"system": None, "name": "Debian GNU/Linux", "version_id": "12", "id": "debian",
             "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
            {"release": "6.1.0-18-amd64",
             "version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)"},
        )),
    ]


def test_machine_id_never_recorded_raw() -> None:
    assert MACHINE_ID not in json.dumps(run(BASIC))


def test_empty_root(tmp_path: Path) -> None:
    assert run(tmp_path) == [
        ("source_missing", "/etc/hostname", {"path": "/etc/hostname"}),
        ("source_missing", "/etc/machine-id", {"path": "/etc/machine-id"}),
        ("source_missing", "/etc/os-release", {"path": "/etc/os-release"}),
        ("host", "", host(None, None, NO_OS, NO_KERNEL)),
    ]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_fallbacks_and_unreadable(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "/etc/hostname": "\n  h1.example  \n",
        "/var/lib/dbus/machine-id": "abc\n",
        "/usr/lib/os-release": "NAME='Some OS'\nID=some\n# comment\nVERSION_ID=\"1\\\"2\"\n",
    })
    (root / "etc" / "machine-id").mkdir()  # exists but cannot be read as a file
    assert run(root) == [
        ("source_unreadable", "/etc/machine-id",
         {"path": "/etc/machine-id", "reason": "IsADirectoryError: Is a directory"}),
        ("host", "h1.example", host(
            "h1.example", hashlib.sha256(b"abc").hexdigest(),
            {**NO_OS, "name": "Some OS", "id": "some", "version_id": '1"2'},
            NO_KERNEL)),
    ]


def test_live_host() -> None:
    result = run_collector(COLLECTOR, CollectContext())
    assert result.status == expected_status(result.records), result.error
    assert not [r for r in result.records if r.type == "collector_error"]
    [record] = [r for r in result.records if r.type == "host"]
    data = record.data
    assert data["hostname"] and record.key == data["hostname"]
    assert data["kernel"]["release"] and data["kernel"]["version"]
    assert data["cpu_count"]["logical"] >= 1
    assert data["memory_total_bytes"] > 0
    assert data["boot_time"].endswith("Z")
    names = [i["name"] for i in data["interfaces"]]
    assert names == sorted(names) and "lo" in names
    lo = data["interfaces"][names.index("lo")]
    assert {"family": "inet", "address": "127.0.0.1", "netmask": "255.0.0.0"} in lo["addresses"]
    assert "time_sync" not in data  # one detector: the posture check time_sync
    if Path("/proc/stat").exists():  # the kernel's own boot time, read independently
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        booted = dt.datetime.strptime(data["boot_time"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert abs(booted.replace(tzinfo=dt.UTC).timestamp() - btime) <= 1
