"""The `posture` collector against fixture trees (exact records) and this machine."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

from collector.posture import COLLECTOR, LINUX_CHECKS
from collector.registry import CollectContext, run_collector
from tests.collector.test_contract import expected_status

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "rootfs"
FIXTURE = ASSETS / "posture"
BASIC = ASSETS / "basic"

Triple = tuple[str, str, dict[str, Any]]


def run(root: Path) -> list[Triple]:
    result = run_collector(COLLECTOR, CollectContext(root=root))
    assert result.status == expected_status(result.records), result.error
    return [(r.type, r.key, r.data) for r in result.records]


def check(name: str, **value: Any) -> Triple:
    return ("check", name, {"value": value})


def absent(name: str, reason: str) -> Triple:
    return ("unsupported", f"posture:{name}",
            {"platform": sys.platform, "source": name, "reason": reason})


AUDIT_FILES = ["/etc/audit/audit.rules", "/etc/audit/rules.d/10-base.rules",
               "/etc/audit/rules.d/50-ai-gateway.rules"]  # README.txt is not *.rules
NO_SELINUX = absent("selinux", "SELinux is not present (no /sys/fs/selinux, "
                               "no /etc/selinux/config)")
NO_APPARMOR = absent("apparmor", "AppArmor is not present (no /sys/module/apparmor)")
NO_DESKTOP = absent("screen_lock", "no desktop (no X or Wayland session files, no desktop "
                                   "process)")


def rules_sha256(root: Path, files: list[str]) -> str:
    return hashlib.sha256(b"".join((root / f.lstrip("/")).read_bytes()
                                   for f in files)).hexdigest()


def test_fixture_exact() -> None:
    assert run(FIXTURE) == [
        ("malformed_line", "/etc/crypttab:5",
         {"file": "/etc/crypttab", "line": 5, "reason": "expected at least name and device"}),
        check("time_sync", service="chrony", running=None,
              configured=["/etc/chrony/chrony.conf"], servers=["time1.bank.example"],
              synchronized=None, source=None,
              detail="status is read only on the live system"),
        # 3 rules in audit.rules + 4 in 50-ai-gateway.rules; -D, -b, -f, -e are control
        check("auditd", running=None, files=AUDIT_FILES, rule_count=7,
              rules_sha256=rules_sha256(FIXTURE, AUDIT_FILES), enabled=None, detail=None),
        # runtime permissive although the config says enforcing: both recorded
        check("selinux", mode="permissive", config_mode="enforcing", config_type="targeted"),
        check("apparmor", enabled=True,
              profiles={"complain": 2, "enforce": 3, "unconfined": 1}),
        check("disk_encryption",
              mappings=[{"device": "dm-0", "name": "cryptroot", "type": "LUKS2"}],  # dm-1: LVM
              crypttab=[
                  {"name": "cryptroot", "device": "UUID=7d2b1c4e-0000-4000-8000-000000000001",
                   "key_file": None, "options": ["luks", "discard"]},
                  {"name": "cryptdata", "device": "/dev/vdb2",
                   "key_file": "/etc/keys/data.key", "options": ["luks", "keyscript=/bin/cat"]},
                  {"name": "swap", "device": "/dev/vdb3", "key_file": "/dev/urandom",
                   "options": ["swap", "cipher=aes-xts-plain64", "size=256"]},
              ]),
        check("screen_lock",
              sessions=["/usr/share/xsessions/gnome-xorg.desktop",
                        "/usr/share/xsessions/gnome.desktop",
                        "/usr/share/wayland-sessions/gnome.desktop"],
              desktop_processes=None, lock_enabled=True, lock_delay_seconds=0,
              idle_delay_seconds=600,  # 10-bank overrides 00-screensaver's 300
              locked_keys=["/org/gnome/desktop/screensaver/lock-delay",
                           "/org/gnome/desktop/screensaver/lock-enabled",
                           "/org/gnome/desktop/session/idle-delay"],
              files=["/etc/dconf/db/local.d/00-screensaver", "/etc/dconf/db/local.d/10-bank"]),
        # /etc/modprobe.d/usb-storage.conf hides /usr/lib/modprobe.d/usb-storage.conf;
        # /lib is /usr/lib, read once
        check("usb_storage", blocked=True, loaded=False, rules=[
            {"file": "/usr/lib/modprobe.d/fallback.conf", "line": 1, "kind": "install",
             "blocks": False,
             "text": "install usb-storage /sbin/modprobe --ignore-install usb-storage "
                     "$CMDLINE_OPTS"},
            {"file": "/etc/modprobe.d/usb-storage.conf", "line": 2, "kind": "install",
             "blocks": True, "text": "install usb-storage /bin/true"},
            {"file": "/etc/modprobe.d/usb-storage.conf", "line": 3, "kind": "blacklist",
             "blocks": True, "text": "blacklist usb_storage"},
        ]),
    ]


def test_key_file_content_never_read(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root, symlinks=True)
    (root / "etc/keys").mkdir()
    (root / "etc/keys/data.key").write_text("KEY-MATERIAL-d41d8cd98f00b204\n")
    assert "KEY-MATERIAL" not in repr(run(root))


def test_basic_fixture() -> None:
    assert run(BASIC) == [
        # the drop-in's NTP= replaces the main file's
        check("time_sync", service="systemd-timesyncd", running=None,
              configured=["/etc/systemd/timesyncd.conf"],
              servers=["time1.bank.example", "time2.bank.example"], synchronized=True,
              source="/run/systemd/timesync/synchronized",
              detail="/run/systemd/timesync/synchronized exists"),
        check("auditd", running=None, files=[], rule_count=0, rules_sha256=None, enabled=None,
              detail=None),
        NO_SELINUX,
        NO_APPARMOR,
        check("disk_encryption", mappings=[], crypttab=[]),
        NO_DESKTOP,
        check("usb_storage", blocked=False, rules=[], loaded=None),
    ]


def test_empty_root(tmp_path: Path) -> None:
    assert run(tmp_path) == [
        check("time_sync", service=None, running=None, configured=[], servers=[],
              synchronized=None, source=None, detail=None),
        check("auditd", running=None, files=[], rule_count=0, rules_sha256=None, enabled=None,
              detail=None),
        NO_SELINUX,
        NO_APPARMOR,
        check("disk_encryption", mappings=[], crypttab=[]),
        NO_DESKTOP,
        check("usb_storage", blocked=False, rules=[], loaded=None),
    ]


def test_unreadable_sources_are_recorded(tmp_path: Path) -> None:
    # chmod 000 does not stop root; a directory in a file's place fails for everyone
    root = tmp_path / "root"
    for directory in ("sys/module/apparmor/parameters",
                      "sys/kernel/security/apparmor/profiles", "etc/audit/audit.rules"):
        (root / directory).mkdir(parents=True)
    (root / "sys/module/apparmor/parameters/enabled").write_text("Y\n")
    records = run(root)
    reason = "IsADirectoryError: Is a directory"
    assert records[:2] == [
        ("source_unreadable", "/etc/audit/audit.rules",
         {"path": "/etc/audit/audit.rules", "reason": reason}),
        ("source_unreadable", "/sys/kernel/security/apparmor/profiles",
         {"path": "/sys/kernel/security/apparmor/profiles", "reason": reason}),
    ]
    by_key = {key: data for _t, key, data in records}
    assert by_key["apparmor"] == {"value": {"enabled": True, "profiles": None}}
    assert by_key["auditd"]["value"]["files"] == []


def test_live_posture() -> None:
    result = run_collector(COLLECTOR, CollectContext())
    assert result.status == expected_status(result.records), result.error
    assert not [r for r in result.records if r.type == "collector_error"]
    by_key = {r.key: r for r in result.records}
    for name in LINUX_CHECKS:  # each check answered: findings or unsupported
        assert (name in by_key) != (f"posture:{name}" in by_key), name
    time_sync = by_key["time_sync"].data["value"]
    assert isinstance(time_sync["running"], bool) or time_sync["service"] is None
    if sys.platform.startswith("linux"):
        assert isinstance(by_key["auditd"].data["value"]["running"], bool)
