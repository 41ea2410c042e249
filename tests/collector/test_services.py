"""The `services` collector against a systemd fixture tree (exact records) and this
machine; symlinks must never lead the collector out of its root."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from collector.registry import CollectContext, run_collector
from collector.services import (
    COLLECTOR,
    RUN_UNITS,
    _runtime_fields,
    _show_blocks,
    resolve_in_root,
)
from tests.collector.test_contract import expected_status

FIXTURE = Path(__file__).resolve().parents[1] / "assets" / "rootfs" / "services"
ETC = "/etc/systemd/system"
USR = "/usr/lib/systemd/system"

Triple = tuple[str, str, dict[str, Any]]


def run(root: Path) -> list[Triple]:
    result = run_collector(COLLECTOR, CollectContext(root=root))
    assert result.status == expected_status(result.records), result.error
    return [(r.type, r.key, r.data) for r in result.records]


def sha(path: str, root: Path = FIXTURE) -> str:
    return hashlib.sha256((root / path.lstrip("/")).read_bytes()).hexdigest()


def unit(name: str, path: str | None, enabled: str | None, *, sha256: str | None = None,
         target: str | None = None, alias_of: str | None = None,
         linked_from: list[str] | None = None, overrides: list[str] | None = None,
         dropins: list[str] | None = None, root: Path = FIXTURE) -> Triple:
    if sha256 is None and path is not None and enabled not in ("masked", "bad"):
        sha256 = sha(target or path, root)
    return ("unit", name, {
        "type": name.rpartition(".")[2], "path": path, "target": target, "sha256": sha256,
        "enabled": enabled, "alias_of": alias_of, "linked_from": linked_from or [],
        "overrides": [{"path": p, "sha256": sha(p, root)} for p in overrides or []],
        "dropins": [{"path": p, "sha256": sha(p, root)} for p in dropins or []],
        "active_state": None, "sub_state": None, "main_pid": None, "exec_start": None,
        "fragment_path": None})


def no_systemctl(reason: str = "not the live system (fixture root)") -> Triple:
    return ("unsupported", "services:systemctl",
            {"platform": sys.platform, "source": "systemctl", "reason": reason})


def unreadable(path: str, reason: str) -> Triple:
    return ("source_unreadable", path, {"path": path, "reason": reason})


def test_fixture_exact() -> None:
    assert run(FIXTURE) == [
        # ../../../../basic/etc/hostname: leaves the root, so never read
        unreadable(f"{ETC}/escape.service", "symlink leads outside the root"),
        unit("backup.timer", f"{USR}/backup.timer", "disabled"),
        # the /etc copy wins over the vendor file
        unit("cron.service", f"{ETC}/cron.service", "enabled",
             linked_from=[f"{ETC}/multi-user.target.wants/cron.service"],
             overrides=[f"{USR}/cron.service"]),
        unit("debug-shell.service", f"{ETC}/debug-shell.service", "masked",
             target="/dev/null", overrides=[f"{USR}/debug-shell.service"]),
        unit("empty.service", f"{USR}/empty.service", "masked",
             sha256=hashlib.sha256(b"").hexdigest()),
        unit("escape.service", f"{ETC}/escape.service", "bad"),
        # enabled through its instance getty@tty1.service
        unit("getty@.service", f"{USR}/getty@.service", "enabled",
             linked_from=[f"{ETC}/getty.target.wants/getty@tty1.service"]),
        unit("helper.socket", f"{USR}/helper.socket", "indirect"),
        unit("metrics.service", f"{USR}/metrics.service", "enabled-runtime",
             linked_from=[f"{RUN_UNITS}/multi-user.target.wants/metrics.service"]),
        unit("ssh.service", f"{USR}/ssh.service", "alias", target=f"{USR}/sshd.service",
             alias_of="sshd.service"),
        # drop-ins by name; /etc's 50-limits.conf hides the vendor one
        unit("sshd.service", f"{USR}/sshd.service", "enabled",
             linked_from=[f"{ETC}/multi-user.target.wants/sshd.service"],
             dropins=[f"{USR}/sshd.service.d/10-vendor.conf",
                      f"{ETC}/sshd.service.d/50-limits.conf"]),
        unit("systemd-journald.service", f"{USR}/systemd-journald.service", "static"),
        no_systemctl(),
    ]


def test_outside_target_never_hashed() -> None:
    outside = hashlib.sha256((FIXTURE.parent / "basic/etc/hostname").read_bytes()).hexdigest()
    assert outside not in repr(run(FIXTURE))


def test_no_unit_directories(tmp_path: Path) -> None:
    assert run(tmp_path) == [
        ("unsupported", "services:systemd",
         {"platform": sys.platform, "source": "systemd",
          "reason": "no systemd unit directory (/etc/systemd/system, /run/systemd/system, "
                    "/usr/local/lib/systemd/system, /usr/lib/systemd/system, "
                    "/lib/systemd/system)"}),
    ]


def test_unit_directory_leading_outside_is_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.service").write_text("[Service]\nExecStart=/bin/true\n")
    root = tmp_path / "root"
    (root / "etc/systemd").mkdir(parents=True)
    (root / "etc/systemd/system").symlink_to("../../../outside")
    records = run(root)
    assert records[0] == unreadable(ETC, "symlink leads outside the root")
    assert records[1][:2] == ("unsupported", "services:systemd")
    assert len(records) == 2


def test_loops_dangling_fifos_and_directories(tmp_path: Path) -> None:
    etc = tmp_path / ETC.lstrip("/")
    etc.mkdir(parents=True)
    (etc / "loop.service").symlink_to("loop.service")
    (etc / "a.service").symlink_to("b.service")
    (etc / "b.service").symlink_to("/etc/systemd/system/a.service")
    (etc / "dangling.service").symlink_to("/usr/lib/systemd/system/gone.service")
    os.mkfifo(etc / "fifo.service")  # must not hang
    (etc / "dir.service").mkdir()  # not a unit file: ignored
    records = run(tmp_path)
    loop = "symlink loop (over 40 links)"
    assert records == [
        unreadable(f"{ETC}/a.service", loop),
        unreadable(f"{ETC}/b.service", loop),
        unreadable(f"{ETC}/dangling.service", "FileNotFoundError: target does not exist"),
        unreadable(f"{ETC}/fifo.service", "not a regular file"),
        unreadable(f"{ETC}/loop.service", loop),
        unit("a.service", f"{ETC}/a.service", "bad"),
        unit("b.service", f"{ETC}/b.service", "bad"),
        unit("dangling.service", f"{ETC}/dangling.service", "bad"),
        unit("fifo.service", f"{ETC}/fifo.service", "bad"),
        unit("loop.service", f"{ETC}/loop.service", "bad"),
        no_systemctl(),
    ]


def test_resolve_in_root(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/x").write_text("x")
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "abs").symlink_to("/lib/x")  # absolute: starts again at the root
    # `..` after a symlink is taken from where the link led (/usr/lib), as the kernel does
    (tmp_path / "usr/rel").symlink_to("../lib/../lib/x")
    (tmp_path / "up").symlink_to("../../x")
    ctx = CollectContext(root=tmp_path)
    assert resolve_in_root(ctx, "/abs").path == "/usr/lib/x"
    assert resolve_in_root(ctx, "/usr/rel").path == "/usr/lib/x"
    assert resolve_in_root(ctx, "/lib/x").path == "/usr/lib/x"
    assert resolve_in_root(ctx, "/up").problem == "symlink leads outside the root"
    assert resolve_in_root(ctx, "/nope").problem == "FileNotFoundError: does not exist"


SHOW_OUTPUT = b"""\
Id=ssh.service
ActiveState=active
SubState=running
MainPID=812
ExecStart={ path=/usr/sbin/sshd ; argv[]=/usr/sbin/sshd -D ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }
FragmentPath=/lib/systemd/system/ssh.service

Id=backup.service
ActiveState=inactive
SubState=dead
MainPID=0
ExecStart={ path=/usr/bin/backup ; argv[]=/usr/bin/backup --password hunter2secret --fast ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }
ExecStart={ path=/usr/bin/true ; argv[]=/usr/bin/true ; ignore_errors=yes ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }
FragmentPath=
"""  # noqa: E501 - as systemctl prints it


def test_systemctl_show_parsing() -> None:
    blocks = _show_blocks(SHOW_OUTPUT)
    assert [_runtime_fields(b) for b in blocks] == [
        {"active_state": "active", "sub_state": "running", "main_pid": 812,
         "exec_start": ["/usr/sbin/sshd -D"],
         "fragment_path": "/lib/systemd/system/ssh.service"},
        {"active_state": "inactive", "sub_state": "dead", "main_pid": None,
         "exec_start": ["/usr/bin/backup --password [REDACTED:argument] --fast",
                        "/usr/bin/true"],
         "fragment_path": None},
    ]
    assert "hunter2secret" not in repr([_runtime_fields(b) for b in blocks])


def test_live_services() -> None:
    result = run_collector(COLLECTOR, CollectContext())
    assert result.status == expected_status(result.records), result.error
    assert not [r for r in result.records if r.type == "collector_error"]
    units = {r.key: r.data for r in result.records if r.type == "unit"}
    unsupported = {r.key: r.data for r in result.records if r.type == "unsupported"}
    if "services:systemd" in unsupported:
        assert not units
        pytest.skip("no systemd unit directories on this machine")
    assert units
    plain = [(name, d) for name, d in units.items()
             if d["path"] and d["target"] is None and d["sha256"]]
    assert plain
    for _name, data in plain[:20]:  # hashes match the files on disk
        assert data["sha256"] == hashlib.sha256(Path(data["path"]).read_bytes()).hexdigest()
    systemd_running = os.path.isdir(RUN_UNITS) and shutil.which("systemctl") is not None
    if systemd_running:
        assert "services:systemctl" not in unsupported
        assert any(d["active_state"] for d in units.values())
    else:
        assert "services:systemctl" in unsupported
        assert all(d["active_state"] is None for d in units.values())
