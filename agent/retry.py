"""Retries with exponential backoff and full jitter, bounded in attempts and time.

The one retry loop of the shipper. Store clients are configured to make a single
attempt per call (botocore's own retries are off), so attempts never multiply:
`RetryPolicy.max_attempts` is the total number of tries of one call, and
`max_seconds` bounds the time spent on it, sleeps included.

Delay before try n+1 (n = 1, 2, ...) is uniform in [0, min(max_delay, base_delay * 2**(n-1))]
("full jitter"): many agents that lost their store at the same instant do not
come back in lockstep.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# Environment overrides (tests, and operators tuning an agent without a config change).
ENV_MAX_ATTEMPTS = "GAMSA_STORE_MAX_ATTEMPTS"
ENV_MAX_SECONDS = "GAMSA_STORE_RETRY_MAX_SECONDS"
ENV_BASE_DELAY = "GAMSA_STORE_RETRY_BASE_DELAY"
ENV_MAX_DELAY = "GAMSA_STORE_RETRY_MAX_DELAY"


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one store call before giving up on this run."""

    max_attempts: int = 6
    max_seconds: float = 60.0
    base_delay: float = 0.5
    max_delay: float = 15.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 30))
        return ceiling * rng()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 default: RetryPolicy | None = None) -> RetryPolicy:
        """`default` (the config's policy, else the built-in one), with any
        `GAMSA_STORE_*` override applied."""
        env = os.environ if env is None else env
        default = default or cls()

        def number(name: str, fallback: float, minimum: float) -> float:
            raw = env.get(name, "")
            if not raw:
                return fallback
            try:
                value = float(raw)
            except ValueError:
                return fallback
            return max(value, minimum)

        return cls(max_attempts=int(number(ENV_MAX_ATTEMPTS, default.max_attempts, 1)),
                   max_seconds=number(ENV_MAX_SECONDS, default.max_seconds, 0),
                   base_delay=number(ENV_BASE_DELAY, default.base_delay, 0),
                   max_delay=number(ENV_MAX_DELAY, default.max_delay, 0))


class RetriesExhausted(Exception):
    """Every try failed: `last` is the final error, `attempts` how many were made."""

    def __init__(self, last: BaseException, attempts: int, elapsed: float) -> None:
        super().__init__(str(last))
        self.last = last
        self.attempts = attempts
        self.elapsed = elapsed


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy,
                    retryable: Callable[[BaseException], bool], *,
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic,
                    rng: Callable[[], float] = random.random) -> T:
    """`fn()`, retried on errors `retryable` accepts; raises `RetriesExhausted` at the bound.

    An error that is not retryable propagates at once, unchanged.
    """
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not retryable(exc):
                raise
            elapsed = clock() - start
            if attempt >= policy.max_attempts:
                raise RetriesExhausted(exc, attempt, elapsed) from exc
            pause = policy.delay(attempt, rng)
            if elapsed + pause > policy.max_seconds:
                raise RetriesExhausted(exc, attempt, elapsed) from exc
            sleep(pause)
