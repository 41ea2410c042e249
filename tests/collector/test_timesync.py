"""The one clock-synchronization detector (`collector._timesync`), on fixture trees,
live, and its single answer in a whole collection."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from collector._timesync import detect
from collector.record import Record
from collector.registry import CollectContext, all_collectors, run_collector


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def value(root: Path, processes: frozenset[str] | None = None) -> dict[str, Any]:
    problems: list[Record] = []
    result = detect(CollectContext(root=root), "posture", processes, problems)
    assert problems == []
    return result


def test_chrony_with_includes(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "/etc/chrony/chrony.conf": "pool 2.debian.pool.ntp.org iburst\n"
                                   "# server commented.example\n"
                                   "confdir /etc/chrony/conf.d\n"
                                   "sourcedir /run/chrony-dhcp /etc/chrony/sources.d\n"
                                   "include /etc/chrony/extra/*.inc\n",
        "/etc/chrony/conf.d/bank.conf": "server ntp1.bank.example iburst\n",
        "/etc/chrony/conf.d/ignored.txt": "server not-read.example\n",
        "/etc/chrony/sources.d/lan.sources": "server 10.0.0.1\n",
        "/etc/chrony/extra/a.inc": "peer peer.example\n",
        # a leftover ntp.conf does not change which service is chosen
        "/etc/ntp.conf": "server ntpd.example\n",
    })
    assert value(root) == {
        "service": "chrony", "running": None,
        "configured": ["/etc/chrony/chrony.conf", "/etc/ntp.conf"],
        "servers": ["2.debian.pool.ntp.org", "ntp1.bank.example", "10.0.0.1", "peer.example"],
        "synchronized": None, "source": None,
        "detail": "status is read only on the live system",
    }


def test_ntpd_and_enabled_timesyncd(tmp_path: Path) -> None:
    root = write(tmp_path / "a", {"/etc/ntpsec/ntp.conf": "pool -4 0.pool.example\n"})
    assert value(root)["service"] == "ntpd"
    assert value(root)["servers"] == ["0.pool.example"]
    root = write(tmp_path / "b", {
        "/etc/systemd/system/sysinit.target.wants/systemd-timesyncd.service": "",
        "/etc/systemd/timesyncd.conf": "[Time]\n#NTP=\nNTP = a.example b.example\n",
    })
    got = value(root)
    assert (got["service"], got["servers"], got["synchronized"]) == (
        "systemd-timesyncd", ["a.example", "b.example"], None)


def test_timesyncd_conf_alone_is_not_a_service(tmp_path: Path) -> None:
    """Every systemd host ships timesyncd.conf; only enablement or the marker count."""
    root = write(tmp_path, {"/etc/systemd/timesyncd.conf": "[Time]\n"})
    got = value(root)
    assert got["service"] is None
    assert got["configured"] == ["/etc/systemd/timesyncd.conf"]


def test_running_daemon_wins_over_config(tmp_path: Path) -> None:
    root = write(tmp_path, {"/etc/chrony/chrony.conf": "server c.example\n",
                            "/etc/ntp.conf": "server n.example\n"})
    got = value(root, processes=frozenset({"bash", "ntpd"}))
    assert (got["service"], got["running"], got["servers"]) == ("ntpd", True, ["n.example"])
    got = value(root, processes=frozenset({"bash"}))
    assert (got["service"], got["running"]) == ("chrony", False)


def test_unreadable_config_is_recorded(tmp_path: Path) -> None:
    (tmp_path / "etc/chrony/chrony.conf").mkdir(parents=True)
    problems: list[Record] = []
    got = detect(CollectContext(root=tmp_path), "posture", None, problems)
    assert got["service"] == "chrony" and got["servers"] == []
    assert [(p.type, p.key) for p in problems] == [
        ("source_unreadable", "/etc/chrony/chrony.conf")]


def test_live_answer_has_a_source() -> None:
    got = detect(CollectContext(), "posture", frozenset(), [])
    if sys.platform.startswith("linux"):
        # adjtimex always answers on Linux: synchronized is never unknown live
        assert got["synchronized"] in (True, False)
        assert got["source"] in ("adjtimex", "chronyc", "/run/systemd/timesync/synchronized")


def test_one_answer_per_collection() -> None:
    """Only one record of a whole live collection says whether the clock is synced."""
    ctx = CollectContext()
    holders = []
    for collector in all_collectors().values():
        if collector.name in ("files", "logs", "processes", "packages"):
            continue  # large and unrelated; their declarations are checked below
        for record in run_collector(collector, ctx).records:
            if "time_sync" in (record.key, *record.data):
                holders.append((collector.name, record.type, record.key))
    assert holders == [("posture", "check", "time_sync")]
    for collector in all_collectors().values():
        for record_type in collector.record_types.values():
            assert "time_sync" not in record_type.fields, collector.name
