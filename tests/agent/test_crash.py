"""Crash safety: `gamsa collect` SIGKILLed at every state-writing step loses nothing.

`GAMSA_TEST_CRASH_AT=N` makes the real subprocess kill itself at its N-th step
(agent/crashpoints.py). For every N until a run completes, the next plain
`gamsa collect` must succeed and the store must verify with one chain, no gap,
no fork, and an empty spool.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.conftest import GamsaEnv


def crash_then_recover(env: GamsaEnv, step: int) -> bool:
    """Crash at `step`; True if the process did crash there (False: ran to the end)."""
    crashed = env.run("collect", crash_at=step)
    if crashed.returncode == 0:
        return False
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert f"crashpoint {step}:" in crashed.stderr
    after = env.run("collect")
    assert after.returncode == 0, (step, after.stderr)
    return True


def assert_one_clean_chain(env: GamsaEnv, step: int, min_bundles: int) -> None:
    result = env.run("verify", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, (step, report["findings"])
    assert len(report["chains"]) == 1, (step, report["chains"])
    chain = report["chains"][0]
    assert chain["first_seq"] == 1 and chain["last_seq"] == chain["bundles"], (step, chain)
    assert chain["bundles"] >= min_bundles
    assert not [f for f in report["findings"] if f["code"] == "chain_genesis"][1:]
    assert not [p for p in (env.state_dir / "spool").iterdir()], step


@pytest.mark.slow
@pytest.mark.parametrize("established", [False, True], ids=["first-run", "existing-chain"])
def test_sigkill_at_every_step_loses_nothing(tmp_path_factory: pytest.TempPathFactory,
                                             established: bool) -> None:
    steps_crashed = 0
    for step in range(1, 60):
        base = tmp_path_factory.mktemp(f"crash{step}")
        env = GamsaEnv(base, base / "agent.toml", base / "state", base / "store")
        env.write_config()
        if established:
            assert env.run("collect").returncode == 0
        if not crash_then_recover(env, step):
            break
        steps_crashed += 1
        assert_one_clean_chain(env, step, 2 if established else 1)
    else:
        pytest.fail("collect never ran to completion")
    # Sealing and shipping have more than a dozen steps; all of them were exercised.
    assert steps_crashed >= 10


def test_crash_between_spool_and_head_does_not_fork(gamsa_env: GamsaEnv) -> None:
    """The head lags the spool after this crash; recovery must advance, not re-seal seq."""
    assert gamsa_env.run("collect").returncode == 0
    for step in range(1, 60):
        result = gamsa_env.run("collect", "--no-ship", crash_at=step)
        if result.returncode == 0:
            break
        if "spool entry renamed" in result.stderr:
            break
    assert gamsa_env.run("collect").returncode == 0
    assert gamsa_env.run("collect").returncode == 0
    result = gamsa_env.run("verify", "--json")
    assert result.returncode == 0, result.stdout
    assert len(json.loads(result.stdout)["chains"]) == 1
