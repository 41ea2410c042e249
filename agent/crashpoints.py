"""Test-only crash injection: die by SIGKILL at the N-th state-writing step.

`GAMSA_TEST_CRASH_AT=N` makes the process kill itself, without any cleanup, when
it reaches the N-th call to `crashpoint()`. The crash-safety tests run
`gamsa collect` for every N and check that nothing is lost or forked. Unset, this
costs one dict lookup per step.
"""

from __future__ import annotations

import os
import signal

_ENV = "GAMSA_TEST_CRASH_AT"
_count = 0


def crashpoint(step: str) -> None:
    """Mark a step boundary; die here if this is the configured step number."""
    global _count
    target = os.environ.get(_ENV)
    if not target:
        return
    _count += 1
    if _count == int(target):
        os.write(2, f"crashpoint {_count}: {step}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
