"""The S3 client: a boto3 session and client for one `s3://BUCKET/PREFIX`, and the
one place store calls are tried (agent.retry) and their errors put into words.

Made through boto3 (`boto3.session.Session(profile_name=...).client("s3", ...)`),
its documented entry point: named profiles from the AWS config and credentials
files, the environment, SSO and instance roles, all by the standard chain.
Imported only for an `s3://` store (agent.store.STORE_MODULES), so `gamsa --help`
and file:// users never load boto3.

One try per boto3 call (botocore's retries are off) inside our own loop: tries
never multiply, and `store.max_attempts` / `store.retry_max_seconds` bound them.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import boto3.session  # type: ignore[import-untyped]
import botocore.exceptions as bx  # type: ignore[import-untyped]
from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]

from agent.retry import RetriesExhausted, RetryPolicy, call_with_retry
from agent.s3_errors import Where, one_line, retryable, store_error
from signing.errors import StoreError, UsageError

if TYPE_CHECKING:
    from agent.config import StoreConfig

T = TypeVar("T")

# Connections the client keeps: one per uploader of the shipper's window, plus
# the parts of one multipart upload.
POOL_CONNECTIONS = 16
# botocore sends `Expect: 100-continue` with every PUT body: one more round trip
# (headers, wait for "100 Continue", then the body) before the server can answer.
# That wait only pays off for a body large enough not to send in vain (a refused
# multipart part); below this size the header is dropped.
EXPECT_CONTINUE_MIN_BYTES = 1 * 1024 * 1024


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in "/" or "") of `s3://bucket/prefix`."""
    rest = url[len("s3://"):] if url.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"store.url {url!r}: must name a bucket",
                         hint="write s3://bucket/prefix")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise UsageError(f"store.url {url!r}: the prefix has an empty, . or .. segment")
    return bucket, (prefix + "/" if prefix else "")


def _drop_small_expect(request: Any, **_: Any) -> None:
    """botocore `before-send` hook: no `Expect: 100-continue` for small bodies.

    Must return None: a value returned from `before-send` is taken as the response.
    """
    headers = request.headers
    if "Expect" in headers:
        try:
            length = int(headers.get("Content-Length") or 0)
        except ValueError:
            return
        if length < EXPECT_CONTINUE_MIN_BYTES:
            del headers["Expect"]


def make_client(url: str, config: StoreConfig | None) -> Any:
    """A boto3 S3 client for the store at `url`, configured from `[store]`."""
    c = config
    proxies = {"http": c.proxy, "https": c.proxy} if c and c.proxy else None
    proxies_config = ({"proxy_ca_bundle": c.ca_bundle}
                      if c and c.proxy.startswith("https://") and c.ca_bundle else None)
    boto_config = BotoConfig(
        connect_timeout=c.connect_timeout if c else 10,
        read_timeout=c.read_timeout if c else 60,
        # One try per call: agent.retry is the only retry loop, so tries never multiply.
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=POOL_CONNECTIONS,
        proxies=proxies,
        proxies_config=proxies_config,
        s3={"addressing_style": c.addressing_style if c else "auto"},
        # We send our own ChecksumSHA256 and re-hash what we read; a server's
        # stored checksum is not proof, and validating it would fail on some servers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="gamsa",
    )
    try:
        session = boto3.session.Session(profile_name=(c.profile or None) if c else None,
                                        region_name=(c.region or None) if c else None)
        client = session.client("s3", endpoint_url=(c.endpoint_url or None) if c else None,
                                verify=(c.ca_bundle or True) if c else True,
                                config=boto_config)
    except bx.ProfileNotFound as exc:
        raise StoreError(f"store {url}: credentials profile "
                         f"{c.profile if c else ''!r} not found",
                         hint="check store.profile and the AWS config file "
                              "(~/.aws/config, or $AWS_CONFIG_FILE)") from exc
    except (bx.BotoCoreError, ValueError) as exc:
        raise StoreError(f"store {url}: cannot set up the S3 client: "
                         f"{one_line(str(exc))}") from exc
    client.meta.events.register("before-send.s3", _drop_small_expect)
    return client


class Bucket:
    """One `s3://BUCKET/PREFIX`: its client (made on first use), its keys, and
    `call`, which tries a request under the retry policy and names any failure."""

    def __init__(self, url: str, config: StoreConfig | None,
                 retry: RetryPolicy | None = None) -> None:
        self.url = url.rstrip("/")
        self.name, self.prefix = parse_s3_url(url)
        self.config = config
        configured = None if config is None else RetryPolicy(
            max_attempts=config.max_attempts, max_seconds=float(config.retry_max_seconds))
        self.retry = retry or RetryPolicy.from_env(default=configured)
        self.endpoint = (config.endpoint_url if config and config.endpoint_url
                         else f"AWS ({config.region})" if config and config.region else "AWS")
        self.where = Where(self.url, self.name, self.endpoint,
                           config.ca_bundle if config else "", config.proxy if config else "")
        self._client: Any = None
        self._lock = threading.Lock()

    def with_retry(self, retry: RetryPolicy) -> Bucket:
        """This bucket, its client shared once made, tried under another policy."""
        view = copy.copy(self)
        view.retry = retry
        return view

    @property
    def client(self) -> Any:
        """The boto3 client, made on first use: opening a store never touches the network
        or the credential chain, so sealing never waits on either."""
        with self._lock:
            if self._client is None:
                self._client = make_client(self.url, self.config)
            return self._client

    def full(self, key: str) -> str:
        """The object key in the bucket of a store key (relative to the prefix)."""
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise StoreError(f"refusing object key {key!r}: not a plain relative key")
        return self.prefix + key

    def call(self, action: str, fn: Callable[[], T]) -> T:
        """`fn()` under the retry policy; any failure as one `StoreError`."""
        try:
            return call_with_retry(fn, self.retry, retryable)
        except RetriesExhausted as exc:
            raise store_error(action, exc.last, self.where, exc.attempts) from exc.last
        except (bx.BotoCoreError, bx.ClientError) as exc:
            raise store_error(action, exc, self.where) from exc
