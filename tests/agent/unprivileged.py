"""Running the real `gamsa` as an ordinary user, for tests of what a non-root agent meets.

The tests run as root here, and root reads and writes anywhere; so a test that needs
EACCES runs `gamsa` as the unprivileged `nobody` through `setpriv` (its uid and gid,
no supplementary groups, no capabilities), in a directory of its own outside
pytest's root-only tmp dir. Without root or setpriv the tests skip, saying why.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GAMSA, GamsaEnv

USER = "nobody"


def unprivileged_user() -> pwd.struct_passwd:
    """The user to run as, or a skip saying why there is none."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run gamsa as another user (setpriv)")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run gamsa as another user")
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pytest.skip(f"no {USER!r} user on this machine")


@dataclass
class UserEnv(GamsaEnv):
    """A gamsa environment whose `run_as_user` runs gamsa as `user`."""

    user: pwd.struct_passwd | None = None

    def run_as_user(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        assert self.user is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAMSA_")}
        env.update(GAMSA_CONFIG=str(self.config), HOME=str(self.root))
        argv = ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
                "--clear-groups", "--inh-caps=-all", GAMSA, *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)


@contextlib.contextmanager
def make_user_env() -> Iterator[UserEnv]:
    """A world the unprivileged user owns: its dir, config, state dir and store."""
    user = unprivileged_user()
    root = Path(tempfile.mkdtemp(prefix="gamsa-user-"))
    try:
        os.chmod(root, 0o755)
        os.chown(root, user.pw_uid, user.pw_gid)
        env = UserEnv(root, root / "agent.toml", root / "state", root / "store", user)
        env.write_config()
        os.chmod(env.config, 0o644)
        yield env
    finally:
        shutil.rmtree(root, ignore_errors=True)
