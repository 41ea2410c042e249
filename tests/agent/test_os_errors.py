"""OS errors on the state dir and the store: one line naming the path and the cause,
exit 3, nothing half-written, and the next run works once the cause is gone.

Real conditions only: a user without the permission (`nobody` via setpriv), a full
tmpfs (ENOSPC), the file size limit (EFBIG through RLIMIT_FSIZE), a read-only
mount (EROFS), a file where a directory should be (ENOTDIR).
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.unprivileged import UserEnv
from tests.conftest import GAMSA, GamsaEnv

RUNTIME = 3


def one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 3 and exactly one stderr line, a `gamsa: error:` naming every needle."""
    assert result.returncode == RUNTIME, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "this is a bug" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gamsa: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every entry under `directory` (files with their bytes), but the lock and cache."""
    found: dict[str, bytes | None] = {}
    for path in sorted(directory.rglob("*")):
        relative = str(path.relative_to(directory))
        if relative == "lock" or relative.startswith("cache"):
            continue
        found[relative] = path.read_bytes() if path.is_file() else None
    return found


@contextlib.contextmanager
def tmpfs(at: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `at` (skip when this machine does not allow mounting)."""
    at.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(at)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` to the last byte; the filler's path."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in (b"\0" * 4096, b"\0"):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)
    return filler


def test_state_dir_not_writable(user_env: UserEnv) -> None:
    user_env.state_dir.mkdir(mode=0o755)  # root's: nobody may not create spool/ in it
    line = one_error_line(user_env.run_as_user("collect", "--no-ship"),
                          str(user_env.state_dir / "spool"), "Permission denied",
                          "check the owner and mode")
    print(line)


def test_state_lock_not_writable(user_env: UserEnv) -> None:
    assert user_env.run_as_user("collect", "--no-ship").returncode == 0
    lock = user_env.state_dir / "lock"
    os.chown(lock, 0, 0)  # root's 0600 lock: nobody may not open it
    one_error_line(user_env.run_as_user("collect", "--no-ship"), str(lock),
                   "Permission denied")


def test_store_not_writable(user_env: UserEnv) -> None:
    user_env.store.mkdir(mode=0o755)  # root's: nobody may not write objects into it
    collected = user_env.run_as_user("collect")
    assert collected.returncode == 0, collected.stderr  # sealed and spooled all the same
    assert "shipping failed" in collected.stderr
    one_error_line(user_env.run_as_user("ship"), str(user_env.store), "Permission denied")


def test_a_store_folder_the_verifier_cannot_list_is_an_error_not_a_skip(
        user_env: UserEnv) -> None:
    """An auditor without access to one host's folder must not get a clean verify of
    the others: the folder is named, exit 3 (os.walk used to skip it silently)."""
    assert user_env.run_as_user("collect").returncode == 0
    assert user_env.run_as_user("verify").returncode == 0
    hidden = user_env.store / "v1" / "host=other-host"
    hidden.mkdir(mode=0o700)  # root's: nobody may not list it
    (hidden / "date=2026-11-25").mkdir()
    result = user_env.run_as_user("verify")
    assert result.returncode == RUNTIME and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gamsa: error:")]
    assert len(errors) == 1 and str(hidden) in errors[0] and "cannot list" in errors[0], errors


AUTH_LINE = ("Nov 25 06:00:00 web-01 sshd[1]: Accepted publickey for deploy from "
             "10.0.0.9 port 50000 ssh2\n")


def with_log(env: GamsaEnv) -> Path:
    """Config: the host and logs collectors, a real auth log (so checkpoints move)."""
    log = env.root / "auth.log"
    log.write_text(AUTH_LINE)
    env.write_config(extra=f'[collectors.logs]\nsources = [{{ path = "{log}", '
                           f'format = "auth" }}]\n', collectors='["host", "logs"]')
    return log


def test_full_state_dir_leaves_everything_as_before(gamsa_env: GamsaEnv) -> None:
    log = with_log(gamsa_env)
    with tmpfs(gamsa_env.state_dir, "size=256k,mode=0700"):
        first = gamsa_env.run("collect", "--no-ship")
        assert first.returncode == 0, first.stderr
        before = snapshot(gamsa_env.state_dir)
        assert "checkpoints.json" in before
        with log.open("a") as out:
            out.write(AUTH_LINE)  # a new line: this run stages a checkpoint to move
        filler = fill(gamsa_env.state_dir)
        before["filler"] = filler.read_bytes()

        print(one_error_line(gamsa_env.run("collect", "--no-ship"), str(gamsa_env.state_dir),
                             "No space left on device", "free space"))
        assert snapshot(gamsa_env.state_dir) == before  # spool, chain head, checkpoints

        filler.unlink()  # the cause is fixed: the next run seals and ships both bundles
        again = gamsa_env.run("collect")
        assert again.returncode == 0, again.stderr
        assert "seq 2" in again.stdout and "shipped 2 bundle(s)" in again.stdout
        verified = gamsa_env.run("verify")  # the key lives on the tmpfs
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "OK: 2 bundle(s)" in verified.stdout


def _file_size_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_file_size_limit_leaves_everything_as_before(gamsa_env: GamsaEnv) -> None:
    log = with_log(gamsa_env)
    first = gamsa_env.run("collect", "--no-ship")
    assert first.returncode == 0, first.stderr
    before = snapshot(gamsa_env.state_dir)
    with log.open("a") as out:
        out.write(AUTH_LINE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMSA_")}
    env["GAMSA_CONFIG"] = str(gamsa_env.config)
    # a manifest is a few KiB: the spool write hits the limit (EFBIG)
    limited = subprocess.run([GAMSA, "collect", "--no-ship"], env=env, capture_output=True,
                             text=True, timeout=120, check=False,
                             preexec_fn=lambda: _file_size_limit(1024))
    print(one_error_line(limited, str(gamsa_env.state_dir / "spool"), "File too large",
                         "ulimit -f"))
    assert snapshot(gamsa_env.state_dir) == before
    again = gamsa_env.run("collect")
    assert again.returncode == 0 and "shipped 2 bundle(s)" in again.stdout, again.stderr
    assert "logs ok" in again.stdout


def test_read_only_store(gamsa_env: GamsaEnv) -> None:
    with tmpfs(gamsa_env.store, "size=1m,ro"):
        collected = gamsa_env.run("collect")
        assert collected.returncode == 0, collected.stderr
        assert "shipping failed" in collected.stderr
        print(one_error_line(gamsa_env.run("ship"), str(gamsa_env.store),
                             "Read-only file system", "mounted read-only"))
        assert len(list((gamsa_env.state_dir / "spool").iterdir())) == 1  # kept to ship


def test_read_only_state_dir(gamsa_env: GamsaEnv) -> None:
    with tmpfs(gamsa_env.state_dir, "size=1m,ro"):
        print(one_error_line(gamsa_env.run("collect", "--no-ship"), str(gamsa_env.state_dir),
                             "Read-only file system"))


def test_file_where_the_state_dir_should_be(gamsa_env: GamsaEnv) -> None:
    gamsa_env.state_dir.write_text("not a directory")
    one_error_line(gamsa_env.run("collect"), str(gamsa_env.state_dir),
                   "is not a directory", "move it away")


def test_file_where_the_spool_should_be(gamsa_env: GamsaEnv) -> None:
    gamsa_env.state_dir.mkdir()
    (gamsa_env.state_dir / "spool").write_text("not a directory")
    one_error_line(gamsa_env.run("collect"), str(gamsa_env.state_dir / "spool"),
                   "is not a directory")


def test_file_where_a_store_directory_should_be(gamsa_env: GamsaEnv) -> None:
    gamsa_env.store.mkdir()
    (gamsa_env.store / "v1").write_text("in the way")
    collected = gamsa_env.run("collect")
    assert collected.returncode == 0 and "shipping failed" in collected.stderr
    one_error_line(gamsa_env.run("ship"), gamsa_env.store_url, "a file is in the way")
    assert len(list((gamsa_env.state_dir / "spool").iterdir())) == 1


def test_private_key_not_readable(user_env: UserEnv) -> None:
    assert user_env.run_as_user("collect", "--no-ship").returncode == 0
    key = user_env.state_dir / "keys" / "agent.key"
    os.chown(key, 0, 0)  # root's 0600 key: the agent's user may not read it
    before = snapshot(user_env.state_dir)
    one_error_line(user_env.run_as_user("collect", "--no-ship"), str(key), "Permission denied")
    assert snapshot(user_env.state_dir) == before


def test_unwritable_ship_status_is_a_warning_not_silence(gamsa_env: GamsaEnv) -> None:
    assert gamsa_env.run("collect", "--no-ship").returncode == 0
    (gamsa_env.state_dir / "status.json").mkdir()  # a directory where the file goes
    shipped = gamsa_env.run("ship")
    assert shipped.returncode == 0, shipped.stderr  # the bundle is stored all the same
    assert "shipped 1 bundle(s)" in shipped.stdout
    lines = [line for line in shipped.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in shipped.stderr, shipped.stderr
    assert lines[0].startswith("gamsa: cannot write the ship status "
                               f"{gamsa_env.state_dir / 'status.json'}: Is a directory")
    assert "`gamsa status` shows an older outcome" in lines[0]
