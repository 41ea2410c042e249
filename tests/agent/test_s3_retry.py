"""The retry policy: full jitter, bounds in attempts and time, one loop only."""

from __future__ import annotations

from typing import Any

import pytest

from agent.retry import RetriesExhausted, RetryPolicy, call_with_retry
from tests.agent.s3_fixtures import (
    ISOLATED_AWS_ENV,
    TEST_CREDENTIALS,
    FaultProxy,
    MotoServer,
)


class Flaky:
    def __init__(self, failures: int, error: type[Exception] = ConnectionResetError) -> None:
        self.failures = failures
        self.calls = 0
        self.error = error

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error("boom")
        return "done"


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4)
    assert [policy.delay(n, rng=lambda: 1.0) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]
    assert policy.delay(3, rng=lambda: 0.0) == 0
    assert policy.delay(3, rng=lambda: 0.25) == 0.5


def test_retries_until_success_sleeping_between_tries() -> None:
    sleeps: list[float] = []
    fn = Flaky(3)
    result = call_with_retry(fn, RetryPolicy(max_attempts=5, base_delay=1, max_delay=10),
                             lambda e: isinstance(e, ConnectionError), sleep=sleeps.append,
                             rng=lambda: 1.0)
    assert result == "done" and fn.calls == 4 and sleeps == [1, 2, 4]


def test_gives_up_after_max_attempts() -> None:
    fn = Flaky(10)
    with pytest.raises(RetriesExhausted) as caught:
        call_with_retry(fn, RetryPolicy(max_attempts=3), lambda e: True, sleep=lambda s: None)
    assert fn.calls == 3 and caught.value.attempts == 3
    assert isinstance(caught.value.last, ConnectionResetError)


def test_gives_up_when_the_next_sleep_would_pass_the_time_budget() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    fn = Flaky(100)
    with pytest.raises(RetriesExhausted):
        call_with_retry(fn, RetryPolicy(max_attempts=100, max_seconds=10, base_delay=1,
                                        max_delay=4), lambda e: True, sleep=sleep,
                        clock=lambda: now[0], rng=lambda: 1.0)
    assert now[0] == 7 and fn.calls == 4  # slept 1 + 2 + 4; another 4 would pass 10


def test_an_error_that_is_not_retryable_propagates_at_once() -> None:
    fn = Flaky(1, ValueError)
    with pytest.raises(ValueError):
        call_with_retry(fn, RetryPolicy(), lambda e: isinstance(e, ConnectionError))
    assert fn.calls == 1


def test_policy_from_environment() -> None:
    policy = RetryPolicy.from_env({"GAMSA_STORE_MAX_ATTEMPTS": "9",
                                   "GAMSA_STORE_RETRY_MAX_SECONDS": "2.5",
                                   "GAMSA_STORE_RETRY_BASE_DELAY": "nonsense"})
    assert policy == RetryPolicy(max_attempts=9, max_seconds=2.5)


def test_botocore_makes_one_try_per_call_so_tries_never_multiply(
        monkeypatch: pytest.MonkeyPatch, moto_server: MotoServer, lock_bucket: str,
        fault_proxy: FaultProxy) -> None:
    """Every request answered 503 SlowDown: exactly max_attempts requests reach the wire."""
    from agent.config import StoreConfig
    from agent.s3_store import S3Store
    from signing.errors import StoreError

    for name, value in {**ISOLATED_AWS_ENV, **TEST_CREDENTIALS}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    config = StoreConfig(url=f"s3://{lock_bucket}/p", endpoint_url=fault_proxy.url,
                         region="us-east-1", addressing_style="path", connect_timeout=2,
                         read_timeout=5)
    store: Any = S3Store(config.url, config,
                         retry=RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.01))
    fault_proxy.set_rates(slowdown=1.0)
    with pytest.raises(StoreError) as caught:
        store.put("k", b"x", "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881")
    assert fault_proxy.counts["slowdown"] == 4
    assert "after 4 tries" in caught.value.message and "SlowDown" in caught.value.message


def test_config_sets_the_retry_policy_and_environment_overrides_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import StoreConfig
    from agent.s3_store import S3Store

    for name in ("GAMSA_STORE_MAX_ATTEMPTS", "GAMSA_STORE_RETRY_MAX_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    config = StoreConfig(url="s3://b/p", max_attempts=2, retry_max_seconds=7)
    store = S3Store("s3://b/p", config)
    assert (store.retry.max_attempts, store.retry.max_seconds) == (2, 7.0)
    monkeypatch.setenv("GAMSA_STORE_MAX_ATTEMPTS", "9")
    store = S3Store("s3://b/p", config)
    assert (store.retry.max_attempts, store.retry.max_seconds) == (9, 7.0)
