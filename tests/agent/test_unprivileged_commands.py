"""The auditor's and the agent's commands run as an ordinary user (`nobody` via
setpriv) on stores and mirrors it may only partly read: what it cannot read is one
line naming it, exit 3, never a shorter listing reported as OK; what it cannot write
is one line naming it, exit 3; and what it writes is not world-readable.

The store and mirror here are made by root (the tests run as root) and then opened
to the user, as a bank's evidence share is: world-readable but for what is not.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.mirror_fixtures import agent_key, pull, seal, ticks_collector
from tests.agent.test_os_errors import one_error_line
from tests.agent.unprivileged import UserEnv
from tests.conftest import GAMSA

HOST = "test-host"


def open_to_all(path: Path) -> None:
    """chmod -R a+rX: what an evidence share readable by the audit team looks like."""
    for where in [path, *path.rglob("*")]:
        mode = where.stat().st_mode
        os.chmod(where, mode | 0o444 | (0o111 if stat.S_ISDIR(mode) else 0))


@pytest.fixture
def shared(user_env: UserEnv) -> UserEnv:
    """user_env with 2 bundles in its store (made by root), the store readable by all,
    and the agent's public key where the user can read it (root / key.json)."""
    seal(user_env, 2, host=HOST, collector=ticks_collector(3))
    open_to_all(user_env.store)
    shutil.copy(agent_key(user_env), user_env.root / "key.json")
    os.chmod(user_env.root / "key.json", 0o644)
    return user_env


def key(env: UserEnv) -> str:
    return str(env.root / "key.json")


def date_dir(env: UserEnv) -> Path:
    [found] = (env.store / "v1" / f"host={HOST}").iterdir()
    return found


def test_a_store_directory_the_user_cannot_list_is_named_never_skipped(shared: UserEnv) -> None:
    for hidden in (date_dir(shared), shared.store):  # a day's folder; the store's root
        os.chmod(hidden, 0o700)  # root's: nobody may not list it
        verify = shared.run_as_user("verify", "--store", shared.store_url,
                                    "--trust", key(shared))
        line = one_error_line(verify, f"{hidden}: cannot list", "Permission denied")
        assert "OK" not in line

        mirror = shared.root / f"mirror-{hidden.name}"
        pulled = shared.run_as_user("pull", "--store", shared.store_url, "--to", str(mirror),
                                    "--trust", key(shared))
        # not "OK: 0 bundle(s) pulled", as when the root was 0700
        one_error_line(pulled, f"{hidden}: cannot list")
        assert not list(mirror.rglob("*.manifest.dsse.json"))
        os.chmod(hidden, 0o755)


def test_a_keys_folder_the_user_cannot_list_is_named_not_taken_as_empty(
        shared: UserEnv) -> None:
    # v1/keys/ holds rotations, enrollments and revocations: read as empty, a revoked
    # key would pass. Even with --trust and --host the listing must be whole.
    os.chmod(shared.store / "v1" / "keys", 0o700)
    verify = shared.run_as_user("verify", "--store", shared.store_url, "--trust", key(shared),
                                "--host", HOST)
    one_error_line(verify, f"{shared.store / 'v1' / 'keys'}: cannot list", "Permission denied")


def test_an_unreadable_folder_outside_the_layout_is_not_the_stores(shared: UserEnv) -> None:
    # A store on its own filesystem has root's lost+found (0700) at the top.
    (shared.store / "lost+found").mkdir(mode=0o700)
    verify = shared.run_as_user("verify", "--store", shared.store_url, "--trust", key(shared))
    assert verify.returncode == 0, verify.stderr
    assert "OK: 2 bundle(s)" in verify.stdout


def test_an_auditor_on_the_agents_host_verifies_its_store_without_its_state(
        shared: UserEnv) -> None:
    # The config names the agent's store and state dir (root's, 0700): the store is
    # verified; the one check that needs the state (truncation) is said not made.
    verify = shared.run_as_user("verify", "--trust", key(shared))
    assert verify.returncode == 0, verify.stderr
    assert "Traceback" not in verify.stderr
    [warning] = [line for line in verify.stdout.splitlines() if "chain_head_unread" in line]
    assert warning.startswith("WARNING"), warning
    assert str(shared.state_dir) in warning and "Permission denied" in warning
    assert "truncation of its newest bundles in the store is not checked" in warning
    assert "OK: 2 bundle(s)" in verify.stdout


def test_an_object_the_user_cannot_read_is_said_and_the_rest_is_pulled(
        shared: UserEnv) -> None:
    [records] = sorted(date_dir(shared).glob("0000000001-*.records.jsonl.gz"))
    os.chmod(records, 0o600)
    mirror = shared.root / "mirror"
    args = ("pull", "--store", shared.store_url, "--to", str(mirror), "--trust", key(shared))
    pulled = shared.run_as_user(*args)
    # exit 3: nothing is wrong with the evidence, this user may not read all of it
    assert pulled.returncode == 3, pulled.stderr
    assert "Traceback" not in pulled.stderr
    [finding] = [line for line in pulled.stdout.splitlines() if line.startswith("ERROR")]
    assert "object_unreadable" in finding and "Permission denied" in finding
    assert f"cannot read {records.relative_to(shared.store).as_posix()}" in finding
    assert pulled.stdout.splitlines()[-1].startswith(
        "INCOMPLETE: 1 bundle(s) pulled, 0 already mirrored, 0 quarantined, 1 not read")
    # the bundle after it is mirrored; it is neither mirrored nor quarantined
    assert [p.name[:10] for p in mirror.rglob("*.manifest.dsse.json")] == ["0000000002"]

    os.chmod(records, 0o644)  # once it may be read, the next pull completes the mirror
    again = shared.run_as_user(*args, "--json")
    assert again.returncode == 0, again.stderr
    assert '"unread": 0' in again.stdout and '"pulled": 1' in again.stdout


@pytest.fixture
def mirror(shared: UserEnv) -> Path:
    """A mirror pulled by root, readable by nobody but root (0700, root's)."""
    made = shared.root / "mirror"
    code, report, _ = pull(shared, made)
    assert code == 0, report
    os.chmod(made, 0o700)
    return made


def test_a_mirror_the_user_cannot_read_is_an_os_error_naming_it(shared: UserEnv,
                                                                 mirror: Path) -> None:
    out = shared.root / "out"
    for args in (["query", "--mirror", str(mirror), "--named", "privileged-accounts"],
                 ["diff", "--mirror", str(mirror), "--host", HOST, "--from", "2000-01-01",
                  "--to", "2100-01-01"],
                 ["export", "--mirror", str(mirror), "--out", f"{out}.zip",
                  "--trust", key(shared)],
                 ["report", "--mirror", str(mirror), "--html", f"{out}.html"]):
        result = shared.run_as_user(*args)
        # exit 3 (permission), not click's exit 2 (usage): the path is right, the user is not
        one_error_line(result, str(mirror), "Permission denied")


def test_export_names_its_out_path_and_is_not_world_readable(shared: UserEnv,
                                                             mirror: Path) -> None:
    open_to_all(mirror)
    locked = shared.root / "locked"
    locked.mkdir(mode=0o755)  # root's: nobody may not write in it
    refused = shared.run_as_user("export", "--mirror", str(mirror), "--out",
                                 str(locked / "inspection.zip"), "--trust", key(shared))
    one_error_line(refused, f"cannot write {locked / 'inspection.zip'}", "Permission denied")
    assert list(locked.iterdir()) == []

    out = shared.root / "inspection.zip"
    made = shared.run("export", "--mirror", str(mirror), "--out", str(out),
                      "--trust", key(shared))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # evidence: owner and group only


def run_with_system_config(env: UserEnv, system_config: Path,
                           *args: str) -> subprocess.CompletedProcess[str]:
    """`gamsa ARGS` as the user, with `system_config` standing for /etc/gamsa/agent.toml
    (the machine's own is not touched) and no --config or $GAMSA_CONFIG."""
    assert env.user is not None
    code = ("import sys; from pathlib import Path; import agent.config as c; "
            f"c.DEFAULT_CONFIG_PATH = Path({str(system_config)!r}); "
            "from agent.cli import main; main(sys.argv[1:])")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GAMSA_")}
    environ["HOME"] = str(env.root)
    argv = ["setpriv", f"--reuid={env.user.pw_uid}", f"--regid={env.user.pw_gid}",
            "--clear-groups", "--inh-caps=-all", sys.executable, "-c", code, *args]
    return subprocess.run(argv, env=environ, cwd=env.root, capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_agents_config_the_auditor_may_not_read_does_not_block_an_audit(
        shared: UserEnv) -> None:
    etc = shared.root / "etc-gamsa"
    etc.mkdir(mode=0o750)  # as installed: root:gamsa 0750, agent.toml 0640
    (etc / "agent.toml").write_text(f'state_dir = "{shared.state_dir}"\n')
    os.chmod(etc / "agent.toml", 0o640)

    verify = run_with_system_config(shared, etc / "agent.toml", "verify", "--store",
                                    shared.store_url, "--trust", key(shared))
    assert verify.returncode == 0, verify.stderr
    assert "OK: 2 bundle(s)" in verify.stdout
    assert (f"gamsa: {etc / 'agent.toml'}: permission denied (the agent's config, for its "
            "user): using the built-in defaults") in verify.stderr

    # the agent's own commands still need their config: no quiet switch to another
    collect = run_with_system_config(shared, etc / "agent.toml", "collect", "--no-ship")
    assert collect.returncode == 2, collect.stderr
    assert f"config file {etc / 'agent.toml'}: permission denied" in collect.stderr


def test_a_request_or_enrollment_the_user_cannot_write_is_an_os_error(
        user_env: UserEnv) -> None:
    assert user_env.run_as_user("keys", "init").returncode == 0
    locked = user_env.root / "locked"
    locked.mkdir(mode=0o755)  # root's
    target = locked / "request.json"
    result = user_env.run_as_user("keys", "enroll", "--no-submit", "--out", str(target))
    # exit 3 with the permission hint (was exit 2, a usage error, with no hint)
    one_error_line(result, f"cannot write {target}", "Permission denied",
                   "check the owner and mode")
    assert not target.exists()


def test_the_default_state_dir_and_its_new_parents_are_private(user_env: UserEnv) -> None:
    # The README's first command as a user with a permissive umask: no config, so the
    # state dir is ~/.local/state/gamsa, and mkdir -p would make ~/.local 0777.
    home = user_env.root / "home"
    home.mkdir()
    assert user_env.user is not None
    os.chown(home, user_env.user.pw_uid, user_env.user.pw_gid)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GAMSA_", "XDG_"))}
    environ["HOME"] = str(home)
    argv = ["setpriv", f"--reuid={user_env.user.pw_uid}", f"--regid={user_env.user.pw_gid}",
            "--clear-groups", "--inh-caps=-all", GAMSA, "keys", "init"]
    old = os.umask(0)
    try:
        made = subprocess.run(argv, env=environ, cwd=home, capture_output=True, text=True,
                              timeout=60, check=False)
    finally:
        os.umask(old)
    assert made.returncode == 0, made.stderr
    modes = {str(p.relative_to(home)): stat.S_IMODE(p.stat().st_mode)
             for p in [home / ".local", home / ".local/state", home / ".local/state/gamsa",
                       home / ".local/state/gamsa/keys/agent.key"]}
    assert modes == {".local": 0o700, ".local/state": 0o700, ".local/state/gamsa": 0o700,
                     ".local/state/gamsa/keys/agent.key": 0o600}
