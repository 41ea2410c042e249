"""With every personal field pseudonymized, no seeded name or address survives anywhere.

Known people are seeded where a bank host keeps them: /etc/passwd and group (GECOS
with a full name and a phone), sudoers, home directories with authorized_keys whose
comments name the user, a real auth.log (sshd logins from known addresses, sudo with
`PWD=/home/<user>`, su), wtmp, btmp and utmp, a running process and a listening
socket of one user, and a proxy URL with a user name in the agent's environment.
The real `gamsa collect` runs every collector in a private mount namespace where
those files lie over the system's (overlay mounts; nothing outside the namespace
changes). Then every sealed byte (spool, records decompressed, manifests, the
store after shipping) is searched for each seeded name and address.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector import _utmp
from collector.registry import all_collectors
from tests.conftest import GAMSA, GamsaEnv

LAUNCHER = Path(__file__).with_name("mountns_exec.py")
JIWOO_UID, MINSU_UID, SEOYEON_UID = 2001, 2002, 2003
# Every seeded name and address, searched case-insensitively in every sealed byte.
SEEDED = ["jiwoo", "minsu", "seoyeon", "555-0142", "10.77.1.23", "2001:db8:77::23",
          "192.0.2.45", "198.51.100.7"]
PERSONAL = ["account", "address", "comment", "data_subject", "gecos", "home", "host",
            "members", "owner", "source", "target_account", "user"]
NOW = int(time.time())


def _can_overlay() -> str | None:
    """Why this test cannot run here, or None."""
    if sys.platform != "linux":
        return "Linux mount namespaces only"
    if os.geteuid() != 0:
        return "needs root: overlay mounts in a private mount namespace and a process " \
               "running as a seeded user"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare(1) is not installed"
    probe = subprocess.run([unshare, "--mount", "--propagation", "private", "true"],
                           capture_output=True, check=False)
    return None if probe.returncode == 0 else "cannot create a mount namespace here"


SKIP = _can_overlay()


def ssh_key(comment: str, options: str = "") -> str:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{options + ' ' if options else ''}{public} {comment}\n"


def utmp(*entries: bytes) -> bytes:
    return b"".join(entries)


def login(user: str, line: str, host: str, address: bytes, offset: int, pid: int) -> bytes:
    return _utmp.pack(_utmp.USER_PROCESS, pid=pid, line=line.encode(), ut_id=line[-2:].encode(),
                      user=user.encode(), host=host.encode(), sec=NOW - offset, addr=address)


def seed(upper: Path) -> None:
    """The fixture files, as they lie over / (upper layers of the overlays)."""
    etc, home, log, run = (upper / d for d in ("etc", "home", "var/log", "run"))
    for d in (etc / "sudoers.d", log):
        d.mkdir(parents=True)
    passwd = Path("/etc/passwd").read_text()
    passwd += (f"jiwoo:x:{JIWOO_UID}:{JIWOO_UID}:Kim Jiwoo,Room 7,+82-2-555-0142:"
               f"/home/jiwoo:/bin/bash\n"
               f"minsu.park:x:{MINSU_UID}:{MINSU_UID}:Park Minsu:/home/minsu.park:/bin/bash\n"
               f"seoyeon:x:{SEOYEON_UID}:{SEOYEON_UID}::/home/seoyeon:/bin/sh\n")
    (etc / "passwd").write_text(passwd)
    group = Path("/etc/group").read_text()
    group += (f"jiwoo:x:{JIWOO_UID}:\nminsu.park:x:{MINSU_UID}:\nseoyeon:x:{SEOYEON_UID}:\n"
              "finance:x:3000:jiwoo,minsu.park\n")
    (etc / "group").write_text(group)
    (etc / "shadow").write_text("root:*:20000:0:99999:7:::\n"
                                "jiwoo:!:20400:1:90:7:30::\nminsu.park:!:20401:1:90:7:30::\n")
    (etc / "shadow").chmod(0o640)
    (etc / "sudoers").write_text("Defaults env_reset\nroot ALL=(ALL:ALL) ALL\n"
                                 "jiwoo ALL=(ALL) /usr/bin/systemctl\n"
                                 "%finance ALL=(root) NOPASSWD: /usr/bin/ls\n"
                                 "@includedir /etc/sudoers.d\n")
    (etc / "sudoers.d" / "ops").write_text("minsu.park ALL=(root) /usr/bin/journalctl\n")
    for name, uid, keys in (
            ("jiwoo", JIWOO_UID, ssh_key("jiwoo@jiwoo-laptop", 'from="10.77.1.23"')
             + ssh_key("Kim Jiwoo")),
            ("minsu.park", MINSU_UID, ssh_key("minsu.park@bank.example")),
            ("seoyeon", SEOYEON_UID, "")):
        ssh = home / name / ".ssh"
        ssh.mkdir(parents=True)
        (ssh / "authorized_keys").write_text(keys)
        (home / name / "notes.txt").write_text(f"owner {name}, desk phone +82-2-555-0142\n")
        for path in (home / name, ssh, ssh / "authorized_keys", home / name / "notes.txt"):
            os.chown(path, uid, uid)
    (log / "auth.log").write_text(
        "Dec  2 09:58:01 web-01 sshd[812]: Failed password for jiwoo from 10.77.1.23 "
        "port 52311 ssh2\n"
        "Dec  2 09:58:05 web-01 sshd[812]: Accepted password for jiwoo from 10.77.1.23 "
        "port 52311 ssh2\n"
        "Dec  2 09:58:05 web-01 sshd[812]: pam_unix(sshd:session): session opened for user "
        "jiwoo(uid=2001) by (uid=0)\n"
        "Dec  2 09:59:00 web-01 sudo:    jiwoo : TTY=pts/0 ; PWD=/home/jiwoo ; USER=root ; "
        "COMMAND=/usr/bin/systemctl restart nginx\n"
        "Dec  2 10:00:00 web-01 sshd[900]: Accepted publickey for minsu.park from "
        "2001:db8:77::23 port 40022 ssh2: ED25519 SHA256:Zm9vYmFyYmF6cXV4\n"
        "Dec  2 10:00:30 web-01 sudo: minsu.park : TTY=pts/1 ; PWD=/home/minsu.park ; "
        "USER=root ; COMMAND=/usr/bin/cat /home/jiwoo/notes.txt\n"
        "Dec  2 10:01:00 web-01 sshd[901]: Invalid user seoyeon from 192.0.2.45 port 50000\n"
        "Dec  2 10:01:02 web-01 sshd[901]: Failed password for invalid user seoyeon from "
        "192.0.2.45 port 50000 ssh2\n"
        "Dec  2 10:02:00 web-01 su[950]: Successful su for root by minsu.park\n"
        "Dec  2 10:02:00 web-01 su[950]: + pts/1 minsu.park:root\n"
        "Dec  2 10:03:00 web-01 sshd[960]: Accepted password for root from ::ffff:198.51.100.7 "
        "port 41000 ssh2\n")
    v4 = bytes(int(p) for p in "10.77.1.23".split("."))
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8:77::23")
    (log / "wtmp").write_bytes(utmp(
        login("jiwoo", "pts/0", "jiwoo-pc.corp.example", v4, 3600, 812),
        _utmp.pack(_utmp.DEAD_PROCESS, pid=812, line=b"pts/0", sec=NOW - 1800),
        login("minsu.park", "pts/1", "2001:db8:77::23", v6, 600, 900)))
    (log / "btmp").write_bytes(utmp(
        login("seoyeon", "ssh:notty", "192.0.2.45", bytes([192, 0, 2, 45]), 500, 901)))
    run.mkdir()
    (run / "utmp").write_bytes(utmp(
        login("minsu.park", "pts/1", "2001:db8:77::23", v6, 600, os.getpid())))


@pytest.fixture
def jiwoo_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process of jiwoo's with her home in its command line, listening on loopback."""
    code = ("import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
            "s.listen(); print(s.getsockname()[1], flush=True); time.sleep(600)")
    process = subprocess.Popen(["/usr/bin/python3", "-c", code, "/home/jiwoo/report.csv"],
                               user=JIWOO_UID, group=JIWOO_UID, cwd="/", env={},
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    process.stdout.readline()  # listening now
    yield process
    process.kill()
    process.wait()
    process.stdout.close()


def sealed_bytes(paths: Iterator[Path]) -> dict[str, bytes]:
    out = {}
    for path in paths:
        if path.is_file():
            data = path.read_bytes()
            out[str(path)] = gzip.decompress(data) if path.name.endswith(".gz") else data
    return out


def manifest_payloads(blobs: dict[str, bytes]) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(base64.b64decode(json.loads(data)["payload"]))
            for name, data in blobs.items() if name.endswith("manifest.dsse.json")]


def records(blobs: dict[str, bytes]) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for name, data in blobs.items()
            if name.endswith("records.jsonl.gz") for line in data.splitlines()]


def assert_nothing_seeded(blobs: dict[str, bytes]) -> None:
    assert blobs
    for name, data in blobs.items():
        text = data.decode("utf-8", "replace").casefold()
        for clear in SEEDED:
            assert clear.casefold() not in text, f"{clear!r} in {name}"
        if name.endswith("manifest.dsse.json"):  # the statement is base64 inside
            payload = base64.b64decode(json.loads(data)["payload"]).decode().casefold()
            for clear in SEEDED:
                assert clear.casefold() not in payload, f"{clear!r} in {name} payload"


@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_no_seeded_name_or_address_in_any_sealed_byte(
        gamsa_env: GamsaEnv, tmp_path: Path, jiwoo_process: subprocess.Popen[bytes]) -> None:
    layers = tmp_path / "layers"
    seed(layers)
    spec = []
    for directory in ("/etc", "/home", "/var/log", "/run"):
        upper = layers / directory.lstrip("/")
        work = tmp_path / "work" / directory.lstrip("/")
        work.mkdir(parents=True)
        spec.append([directory, str(upper), str(work)])
    # /home holds the seeded homes only: the files collector reads all of it, and a
    # developer's own home (a gamsa checkout or venv, whose docs name these people)
    # would otherwise be sealed too.
    empty = tmp_path / "empty-home"
    empty.mkdir()
    spec[1].append(str(empty))
    (tmp_path / "mounts.json").write_text(json.dumps(spec))
    key = tmp_path / "pseudonym.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    gamsa_env.write_config(
        collectors=json.dumps(list(all_collectors())),
        extra=f'[collectors.files]\npaths = ["/etc/passwd", "/etc/group", "/etc/sudoers", '
              f'"/etc/sudoers.d/*", "/home/**"]\n'
              f'[collectors.logs]\nsources = [{{ path = "/var/log/auth.log", '
              f'format = "auth" }}]\n'
              f'[privacy]\npseudonymize = {json.dumps(PERSONAL)}\nkey_file = "{key}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMSA_")}
    env.update(GAMSA_CONFIG=str(gamsa_env.config),
               https_proxy="http://jiwoo@proxy.bank.example:3128")
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, str(LAUNCHER),
         str(tmp_path / "mounts.json"), "--", GAMSA, "collect", "--no-ship", "--json"],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    for clear in SEEDED:  # what the agent prints is no place for them either
        assert clear not in (result.stdout + result.stderr).casefold(), clear
    spool = sealed_bytes(gamsa_env.state_dir.joinpath("spool").rglob("*"))
    seen = records(spool)

    # The seeded evidence was collected, in pseudonyms: the test tests something.
    by_type: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for record in seen:
        by_type.setdefault(f"{record['collector']}.{record['type']}", []).append(record)
    psn = "psn:"
    users = {r["key"] for r in by_type["accounts.user"]}
    assert "root" in users and sum(u.startswith(psn) for u in users) >= 3
    assert len(by_type["accounts.ssh_authorized_key"]) == 3
    assert all(r["data"]["file"].startswith(psn) for r in by_type["accounts.ssh_authorized_key"])
    access = by_type["logs.access"]
    assert len(access) == 11
    assert {r["data"]["target_account"] for r in access} >= {"root"}
    sudo = [r for r in access if r["data"]["action"] == "sudo"]
    assert len(sudo) == 2 and all("PWD=psn:" in r["data"]["raw"] for r in sudo)
    assert all(r["data"]["raw_sha256"] is None and len(r["data"]["raw_hmac"]) == 64
               for r in access)
    root_login = [r for r in access if r["data"]["account"] == "root"]
    assert len(root_login) == 1 and root_login[0]["data"]["source"].startswith(psn)
    logins = by_type["sessions.login"]
    assert {r["data"]["user"][:4] for r in logins} == {psn}
    assert by_type["sessions.failed_login"][0]["data"]["address"].startswith(psn)
    assert by_type["sessions.session"][0]["data"]["host"].startswith(psn)
    mine = [r for r in by_type["processes.process"] if r["data"]["pid"] == jiwoo_process.pid]
    assert len(mine) == 1 and mine[0]["data"]["user"].startswith(psn)
    assert mine[0]["data"]["cmdline"][-1].startswith(psn)
    sockets = [r for r in by_type["network.listening_socket"]
               if r["data"]["pid"] == jiwoo_process.pid]
    assert len(sockets) == 1 and sockets[0]["data"]["user"].startswith(psn)
    owned = [r for r in by_type["files.file"] if r["data"]["owner"] is not None
             and r["data"]["owner"].startswith(psn)]
    assert len(owned) >= 9
    (payload,) = manifest_payloads(spool)
    assert payload["predicate"]["privacy"]["pseudonymized"] == sorted(PERSONAL)

    assert_nothing_seeded(spool)
    shipped = gamsa_env.run("ship")
    assert shipped.returncode == 0, shipped.stderr
    assert_nothing_seeded(sealed_bytes(gamsa_env.store.rglob("*")))
    verified = gamsa_env.run("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
