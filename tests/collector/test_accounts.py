"""The `accounts` collector against fixture trees (exact records) and this machine."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from collector.accounts import COLLECTOR, fingerprint, parse_authorized_key
from collector.registry import CollectContext, run_collector
from tests.collector.test_contract import expected_status

BASIC = Path(__file__).resolve().parents[1] / "assets" / "rootfs" / "basic"

ALICE_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJM9tvfmYvI+8rd4uiIuIGqDGjdjFmwRwaHHwUj8+heF")
SHARED_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIL5SO0Bs//mgBOlWuXICqLjei/XuEx8VL5RXQG3ANrM9")
# As printed by `ssh-keygen -lf` when the fixture keys were generated.
ALICE_FP = "SHA256:PsUVZtMKca4lbXYkvureDzygUggWGo2C+4GK1eLfhis"
SHARED_FP = "SHA256:Q5nDmTjsrZdBVU/GS5SyabVIp/Ts6ZiQdgFPDGVaAME"

Triple = tuple[str, str, dict[str, Any]]


def run(root: Path) -> list[Triple]:
    result = run_collector(COLLECTOR, CollectContext(root=root))
    assert result.status == expected_status(result.records), result.error
    return [(r.type, r.key, r.data) for r in result.records]


def aging(last: str | None, min_: int | None, max_: int | None, warn: int | None,
          inactive: int | None = None, expires: str | None = None, *, locked: bool = False,
          no_password: bool = False, must_change: bool = False) -> dict[str, Any]:
    return {"last_change": last, "must_change": must_change, "min_days": min_,
            "max_days": max_, "warn_days": warn, "inactive_days": inactive,
            "expires": expires, "locked": locked, "no_password": no_password}


def user(uid: int, gid: int, gecos: str | dict[str, str], home: str, shell: str, *, login: bool,
         groups: list[str], sudo: bool, password_aging: dict[str, Any] | None,
         ) -> dict[str, Any]:
    return {"uid": uid, "gid": gid, "gecos": gecos, "home": home, "shell": shell,
            "login_allowed": login, "groups": groups, "sudo": sudo,
            "password_aging": password_aging}


def rule(file: str, line: int, text: str, rule_type: str, principal: str | None,
         included: bool = True) -> Triple:
    return ("sudoers_rule", f"{file}:{line}",
            {"file": file, "line": line, "text": text, "rule_type": rule_type,
             "principal": principal, "included": included})


def malformed(file: str, line: int, reason: str) -> Triple:
    return ("malformed_line", f"{file}:{line}", {"file": file, "line": line, "reason": reason})


# shadow counts days since 1970-01-01: day 19000 is 2022-01-08, 19500 is 2023-05-23,
# 19400 is 2023-02-12, 20000 is 2024-10-04 (checked by `date -d @$((N*86400))`).
AGING = {
    "root": aging("2022-01-08", 0, 99999, 7, locked=True),
    "daemon": aging("2022-01-08", 0, 99999, 7, locked=True),
    "alice": aging("2023-05-23", 1, 90, 14, 30, "2024-10-04"),
    "bob": aging("2023-02-12", 0, 99999, 7, locked=True),
    "svc": aging("2022-01-08", 0, 99999, 7, no_password=True),
}


def users(password_aging: Mapping[str, dict[str, Any] | None]) -> list[Triple]:
    return [
        ("user", "root", user(0, 0, "root", "/root", "/bin/bash", login=True, groups=[],
                              sudo=True, password_aging=password_aging["root"])),
        ("user", "daemon", user(1, 1, "daemon", "/usr/sbin", "/usr/sbin/nologin",
                                login=False, groups=[], sudo=False,
                                password_aging=password_aging["daemon"])),
        ("user", "alice", user(1000, 1000, "Alice Example,,,", "/home/alice", "/bin/bash",
                               login=True, groups=["adm"], sudo=True,
                               password_aging=password_aging["alice"])),
        ("user", "bob", user(1001, 1001, "", "/home/bob", "/bin/sh", login=True,
                             groups=["adm", "sudo"], sudo=True,
                             password_aging=password_aging["bob"])),
        # sudo through User_Alias OPERATORS, though its shell forbids login
        ("user", "svc", user(998, 998, "service account", "/var/lib/svc", "/bin/false",
                             login=False, groups=[], sudo=True,
                             password_aging=password_aging["svc"])),
    ]


GROUPS: list[Triple] = [
    ("group", "root", {"gid": 0, "members": []}),
    ("group", "daemon", {"gid": 1, "members": []}),
    ("group", "adm", {"gid": 4, "members": ["alice", "bob"]}),
    ("group", "sudo", {"gid": 27, "members": ["bob"]}),
    ("group", "alice", {"gid": 1000, "members": []}),
    ("group", "bob", {"gid": 1001, "members": []}),
    ("group", "svc", {"gid": 998, "members": []}),
]

SUDOERS: list[Triple] = [
    rule("/etc/sudoers", 4, "Defaults\tenv_reset", "defaults", None),
    rule("/etc/sudoers", 5, "Defaults:alice\t!lecture", "defaults", "alice"),
    # continued inside quotes: joined without a space, as sudo does
    rule("/etc/sudoers", 6,
         'Defaults\tsecure_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"',
         "defaults", None),
    rule("/etc/sudoers", 9, "User_Alias\tOPERATORS = svc", "alias", None),
    rule("/etc/sudoers", 12, "root\tALL=(ALL:ALL) ALL", "rule", "root"),
    rule("/etc/sudoers", 15, "%sudo\tALL=(ALL:ALL) ALL", "rule", "%sudo"),
    rule("/etc/sudoers", 17, "#include /etc/sudoers.local", "include", None),
    rule("/etc/sudoers", 18, "@includedir /etc/sudoers.d", "include", None),
    # foo.bak and x~ (which would give daemon sudo) are skipped, as sudo skips them
    rule("/etc/sudoers.d/10-admins", 2,
         "alice, OPERATORS ALL = (root) NOPASSWD: /usr/bin/systemctl restart nginx, "
         "/usr/bin/journalctl -u nginx", "rule", "alice, OPERATORS"),
]

KEYS: list[Triple] = [
    ("ssh_authorized_key", f"alice:{ALICE_FP}", {
        "user": "alice", "file": "/home/alice/.ssh/authorized_keys",
        "key_type": "ssh-ed25519", "fingerprint": ALICE_FP, "comment": "alice@laptop",
        "options": 'from="10.0.0.0/8",command="/usr/bin/rsync --server",no-pty'}),
    ("ssh_authorized_key", f"alice:{SHARED_FP}", {
        "user": "alice", "file": "/home/alice/.ssh/authorized_keys",
        "key_type": "ssh-ed25519", "fingerprint": SHARED_FP, "comment": None,
        "options": None}),
    ("ssh_authorized_key", f"bob:{SHARED_FP}", {
        "user": "bob", "file": "/home/bob/.ssh/authorized_keys2",
        "key_type": "ssh-ed25519", "fingerprint": SHARED_FP, "comment": "bob backup key",
        "options": None}),
]


def test_basic_fixture_exact() -> None:
    assert run(BASIC) == [
        malformed("/etc/passwd", 4, "uid is not a number"),
        malformed("/etc/passwd", 6, "expected 7 fields, found 3"),
        malformed("/etc/shadow", 5, "last_change is not a number"),
        ("source_missing", "/etc/sudoers.local", {"path": "/etc/sudoers.local"}),
        malformed("/home/alice/.ssh/authorized_keys", 5, "not a public key line"),
        *users(AGING),
        *GROUPS,
        *SUDOERS,
        *KEYS,
    ]


def test_no_password_hash_anywhere() -> None:
    hashes = []
    for line in (BASIC / "etc" / "shadow").read_text().splitlines():
        secret = line.split(":")[1].lstrip("!*")
        if secret:
            hashes.append(secret)
            hashes += [p for p in secret.split("$") if len(p) >= 8]  # salt, digest alone
    assert len(hashes) >= 3
    dumped = json.dumps(run(BASIC))
    for part in hashes:
        assert part not in dumped
    assert "FIXTURE-HASH" not in dumped and "gamsafixture" not in dumped


def test_fingerprints_computed_independently() -> None:
    for line, expected in ((ALICE_KEY, ALICE_FP), (SHARED_KEY, SHARED_FP)):
        blob = base64.b64decode(line.split()[1])
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        assert f"SHA256:{digest}" == expected == fingerprint(blob)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_fingerprints_match_ssh_keygen(tmp_path: Path) -> None:
    for line, expected in ((ALICE_KEY, ALICE_FP), (SHARED_KEY, SHARED_FP)):
        (tmp_path / "k.pub").write_text(line + " c\n")
        out = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], check=True,
                             capture_output=True, text=True, timeout=30).stdout
        assert out.split()[1] == expected


@pytest.mark.parametrize(("line", "options", "comment"), [
    (f"{ALICE_KEY}", None, None),
    (f"{ALICE_KEY}  two  words ", None, "two  words"),
    (f'no-pty,command="echo a b" {ALICE_KEY} c', 'no-pty,command="echo a b"', "c"),
    (f'environment="X=\\"q r\\"" {ALICE_KEY}', 'environment="X=\\"q r\\""', None),
])
def test_parse_authorized_key(line: str, options: str | None, comment: str | None) -> None:
    parsed = parse_authorized_key(line)
    assert parsed is not None
    assert (parsed[0], parsed[1], fingerprint(parsed[2]), parsed[3]) == \
        (options, "ssh-ed25519", ALICE_FP, comment)


@pytest.mark.parametrize("line", [
    "ssh-ed25519", "ssh-ed25519 !!!notbase64", "ssh-rsa " + ALICE_KEY.split()[1],
    "no-pty ssh-ed25519 AAAA", "",
])
def test_parse_authorized_key_rejects(line: str) -> None:
    assert parse_authorized_key(line) is None


def copy_basic(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(BASIC, root)
    return root


def test_shadow_unreadable_is_recorded(tmp_path: Path) -> None:
    # chmod 000 does not stop root; a directory in its place fails for everyone.
    root = copy_basic(tmp_path)
    (root / "etc" / "shadow").unlink()
    (root / "etc" / "shadow").mkdir()
    assert run(root) == [
        malformed("/etc/passwd", 4, "uid is not a number"),
        malformed("/etc/passwd", 6, "expected 7 fields, found 3"),
        ("source_unreadable", "/etc/shadow",
         {"path": "/etc/shadow", "reason": "IsADirectoryError: Is a directory"}),
        ("source_missing", "/etc/sudoers.local", {"path": "/etc/sudoers.local"}),
        malformed("/home/alice/.ssh/authorized_keys", 5, "not a public key line"),
        *users(dict.fromkeys(AGING)),
        *GROUPS,
        *SUDOERS,
        *KEYS,
    ]


def test_empty_root_reports_missing_sources(tmp_path: Path) -> None:
    assert run(tmp_path) == [
        ("source_missing", path, {"path": path})
        for path in ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/sudoers")
    ]


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


SUDO_USERS = {
    "/etc/passwd": "u1:x:1001:1001::/home/u1:/bin/sh\nu2:x:1002:50::/home/u2:/bin/sh\n"
                   "u3:x:1003:1003::/home/u3:/bin/sh\n",
    "/etc/group": "u1:x:1001:\nstaff:x:50:\nops:x:60:u3\n",
    "/etc/shadow": "",
}


def sudo_flags(root: Path) -> dict[str, bool]:
    return {key: data["sudo"] for kind, key, data in run(root) if kind == "user"}


@pytest.mark.parametrize(("sudoers", "expected"), [
    ("", (False, False, False)),
    ("ALL ALL=(ALL) ALL\n", (True, True, True)),
    ("ALL, !u2 ALL=(ALL) ALL\n", (True, False, True)),
    ("#1001 ALL=(ALL) ALL\n", (True, False, False)),  # a uid, not a comment
    ("%staff ALL=(ALL) ALL\n", (False, True, False)),  # primary group
    ("%#60 ALL=(ALL) ALL\n", (False, False, True)),  # supplementary, by gid
    ("User_Alias A = u1, B\nUser_Alias B = %ops\nA ALL = ALL\n", (True, False, True)),
    ("u1 ALL=(ALL) ALL # u2 ALL=(ALL) ALL\n", (True, False, False)),
    ("Defaults:u1 !lecture\nRunas_Alias R = u2\n", (False, False, False)),
    ("u1 ALL = /bin/a, \\\n  /bin/b\n", (True, False, False)),
])
def test_sudo_matching(tmp_path: Path, sudoers: str, expected: tuple[bool, ...]) -> None:
    root = write(tmp_path, {**SUDO_USERS, "/etc/sudoers": sudoers})
    assert tuple(sudo_flags(root).values()) == expected


def test_sudoers_includes_relative_and_unincluded_files(tmp_path: Path) -> None:
    root = write(tmp_path, {
        **SUDO_USERS,
        "/etc/sudoers": "@include sudoers.local\n",
        "/etc/sudoers.local": "u1 ALL=(ALL) ALL\n",
        # not reached by any include: recorded, but sudo ignores it
        "/etc/sudoers.d/50-u2": "u2 ALL=(ALL) ALL\n",
    })
    sudo_rules = [r for r in run(root) if r[0] == "sudoers_rule"]
    assert sudo_rules == [
        rule("/etc/sudoers", 1, "@include sudoers.local", "include", None),
        rule("/etc/sudoers.local", 1, "u1 ALL=(ALL) ALL", "rule", "u1"),
        rule("/etc/sudoers.d/50-u2", 1, "u2 ALL=(ALL) ALL", "rule", "u2", included=False),
    ]
    assert sudo_flags(root) == {"u1": True, "u2": False, "u3": False}


def test_sudoers_include_loop_terminates(tmp_path: Path) -> None:
    root = write(tmp_path, {**SUDO_USERS, "/etc/sudoers": "#include /etc/sudoers\n"})
    assert [r[1] for r in run(root) if r[0] == "sudoers_rule"] == ["/etc/sudoers:1"]


def test_non_utf8_and_odd_lines(tmp_path: Path) -> None:
    root = tmp_path
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(
        b"u1:x:1001:1001:Jos\xe9:/home/u1:/bin/sh\n\n"
        b"u1:x:1002:1002::/:/bin/sh\nbig:x:99999999999:1::/:/bin/sh\n:x:1:1::/:/bin/sh\n")
    (root / "etc" / "group").write_text("g:x:1:u1,,u1 ,\ng2:x:-1:\n")
    (root / "etc" / "shadow").write_text("u1:$1$s$h:1:2:3:4:5:6:7\nu9:h\n")
    (root / "etc" / "sudoers").write_text("garbage without equals\n")
    records = run(root)
    assert records == [
        malformed("/etc/passwd", 3, "duplicate user name (first at line 1)"),
        malformed("/etc/passwd", 4, "uid is out of range"),
        malformed("/etc/passwd", 5, "user name is empty"),
        malformed("/etc/group", 2, "gid is out of range"),
        malformed("/etc/shadow", 2, "expected 9 fields, found 2"),
        ("user", "u1", user(1001, 1001, {"b64": base64.b64encode(b"Jos\xe9").decode()},
                            "/home/u1", "/bin/sh", login=True, groups=["g"], sudo=False,
                            password_aging=aging("1970-01-02", 2, 3, 4, 5, "1970-01-07"))),
        ("group", "g", {"gid": 1, "members": ["u1"]}),
        rule("/etc/sudoers", 1, "garbage without equals", "unparsed", None),
    ]


def test_shadow_dates_are_dates_and_zero_forces_a_change(tmp_path: Path) -> None:
    """shadow(5) counts days since 1970-01-01; 0 as last change forces a change."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("a:x:1:1::/:/bin/sh\nb:x:2:2::/:/bin/sh\n"
                                             "c:x:3:3::/:/bin/sh\n")
    (tmp_path / "etc" / "shadow").write_text("a:*:0:0:90:7:::\nb:*:20424::::::\n"
                                             "c:*:99999999::::::\n")
    records = run(tmp_path)
    assert malformed("/etc/shadow", 3, "last_change is out of range") in records
    by_key = {key: data for kind, key, data in records if kind == "user"}
    assert by_key["a"]["password_aging"] == aging(None, 0, 90, 7, must_change=True,
                                                  locked=True)
    assert by_key["b"]["password_aging"]["last_change"] == "2025-12-02"  # date -d @(20424*86400)
    assert by_key["c"]["password_aging"] is None


def test_live_accounts() -> None:
    result = run_collector(COLLECTOR, CollectContext())
    assert result.status == expected_status(result.records), result.error
    assert not [r for r in result.records if r.type == "collector_error"]
    by_key = {(r.type, r.key): r.data for r in result.records}
    assert by_key[("user", "root")]["uid"] == 0
