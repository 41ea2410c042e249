"""Shared fixtures: a private gamsa environment (config, state dir, store) per test,
and a runner for the real `gamsa` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

GAMSA = str(Path(sys.executable).parent / "gamsa")


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """`result` of a `gamsa` run that must have succeeded, cleanly."""
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


@dataclass
class GamsaEnv:
    """One agent's world: its config file, state dir and file:// store."""

    root: Path
    config: Path
    state_dir: Path
    store: Path

    @property
    def store_url(self) -> str:
        return f"file://{self.store}"

    def write_config(self, extra: str = "", collectors: str = '["host"]') -> None:
        self.config.write_text(
            f'state_dir = "{self.state_dir}"\n'
            f'host_id = "test-host"\n'
            f"[store]\n"
            f'url = "{self.store_url}"\n'
            f"[collectors]\n"
            f"enabled = {collectors}\n" + extra)

    def run(self, *args: str, crash_at: int | None = None, extra_env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GAMSA_")}
        env["GAMSA_CONFIG"] = str(self.config)
        if crash_at is not None:
            env["GAMSA_TEST_CRASH_AT"] = str(crash_at)
        env.update(extra_env or {})
        return subprocess.run([GAMSA, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)


@pytest.fixture
def gamsa_env(tmp_path: Path) -> GamsaEnv:
    env = GamsaEnv(tmp_path, tmp_path / "agent.toml", tmp_path / "state", tmp_path / "store")
    env.write_config()
    return env


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (watchdog's conftest habit)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for thread in leaked:
        thread.join(timeout=2)
    leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"test leaked threads: {leaked}"
