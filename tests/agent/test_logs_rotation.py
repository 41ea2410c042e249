"""Log offsets are sealed with the bundle: through the real `gamsa collect`, with
rotation by rename + create and by copytruncate, and with the process SIGKILLed at
every crash point, every appended line's access record is in the store exactly once.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest

from signing.bundle import iter_record_lines
from tests.conftest import GamsaEnv


class AuthLog:
    """An auth.log whose lines each carry a unique number (the sshd pid)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.touch()
        self.next = 1

    def append(self, count: int) -> None:
        with self.path.open("ab") as handle:
            for n in range(self.next, self.next + count):
                handle.write(f"Nov 25 06:{n // 60 % 60:02d}:{n % 60:02d} web-01 sshd[{n}]: "
                             f"Accepted publickey for u{n} from 10.0.0.1 port {n} ssh2\n"
                             .encode())
        self.next += count

    def sibling(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def shift(self) -> None:
        for index in range(9, 0, -1):
            if self.sibling(f".{index}").exists():
                self.sibling(f".{index}").rename(self.sibling(f".{index + 1}"))

    def rotate(self, style: str) -> None:
        self.shift()
        if style == "rename":
            self.path.rename(self.sibling(".1"))
            self.path.touch()
        else:
            shutil.copyfile(self.path, self.sibling(".1"))
            with self.path.open("r+b") as handle:
                handle.truncate(0)


def configure(env: GamsaEnv, log: AuthLog) -> None:
    env.write_config(collectors='["logs"]',
                     extra=f'[collectors.logs]\nsources = [{{ path = "{log.path}", '
                           f'format = "auth" }}]\n')


def sealed_line_numbers(env: GamsaEnv) -> Counter[int]:
    """How often each appended line's access record is in the store."""
    seen: Counter[int] = Counter()
    for path in sorted(env.store.rglob("*.records.jsonl.gz")):
        for line in iter_record_lines(path.read_bytes(), str(path)):
            record = json.loads(line)
            if record["collector"] == "logs" and record["type"] == "access":
                seen[record["data"]["pid"]] += 1
    return seen


def collect(env: GamsaEnv) -> None:
    result = env.run("collect")
    assert result.returncode == 0, result.stderr


def test_rotation_both_styles_sealed_exactly_once(gamsa_env: GamsaEnv) -> None:
    log = AuthLog(gamsa_env.root / "auth.log")
    configure(gamsa_env, log)
    for style in ("rename", "copytruncate", "rename", "copytruncate"):
        log.append(4)
        collect(gamsa_env)
        log.append(2)  # not yet collected when the file is rotated
        log.rotate(style)
        log.append(3)
        collect(gamsa_env)
    collect(gamsa_env)  # nothing new: nothing sealed twice
    assert sealed_line_numbers(gamsa_env) == Counter(range(1, log.next))
    verified = gamsa_env.run("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
def test_sigkill_at_every_step_still_exactly_once(gamsa_env: GamsaEnv) -> None:
    log = AuthLog(gamsa_env.root / "auth.log")
    configure(gamsa_env, log)
    log.append(2)
    collect(gamsa_env)
    crashed_steps = []
    for step in range(1, 60):
        log.append(2)
        crashed = gamsa_env.run("collect", crash_at=step)
        if crashed.returncode == 0:
            break
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        crashed_steps.append(step)
        log.append(1)
        log.rotate("rename" if step % 2 else "copytruncate")
        log.append(1)
        collect(gamsa_env)
        assert sealed_line_numbers(gamsa_env) == Counter(range(1, log.next)), step
    else:
        raise AssertionError("collect never ran to completion")
    assert len(crashed_steps) >= 8  # sealing, spooling and shipping steps all hit
    collect(gamsa_env)
    assert sealed_line_numbers(gamsa_env) == Counter(range(1, log.next))
