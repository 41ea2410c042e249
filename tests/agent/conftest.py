"""Fixtures for the s3:// tests: one moto S3 server per session, a bucket per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent.s3_fixtures import (
    ISOLATED_AWS_ENV,
    TEST_CREDENTIALS,
    FaultProxy,
    MotoServer,
    S3GamsaEnv,
    make_lock_bucket,
    s3_env,
    start_moto,
)
from tests.agent.unprivileged import UserEnv, make_user_env


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's S3 server as a real subprocess on a free loopback port."""
    server = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_client(moto_server: MotoServer) -> Any:
    return moto_server.client()


@pytest.fixture
def lock_bucket(s3_client: Any) -> str:
    """A fresh versioned bucket with Object Lock enabled."""
    return make_lock_bucket(s3_client)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials and an isolated AWS config for in-process stores."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**ISOLATED_AWS_ENV, **TEST_CREDENTIALS}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3_gamsa(tmp_path: Path, moto_server: MotoServer, lock_bucket: str) -> S3GamsaEnv:
    """A gamsa environment shipping straight to the moto server."""
    return s3_env(tmp_path, moto_server.url, lock_bucket)


@pytest.fixture
def fault_proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the moto server (passes everything until told)."""
    with FaultProxy(moto_server.port) as proxy:
        yield proxy


@pytest.fixture
def user_env() -> Iterator[UserEnv]:
    """A gamsa world owned by an unprivileged user (skips when that is not possible)."""
    with make_user_env() as env:
        yield env
