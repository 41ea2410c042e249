"""The `s3://BUCKET/PREFIX` store: any S3-compatible endpoint, create-only, via botocore.

The only module of gamsa that imports boto3's botocore; `agent.store.open_store`
imports it when a store URL says `s3://`, so `gamsa --help` and file:// users
never pay for it. It uses botocore's session and client directly: boto3 adds
nothing this store uses (its transfer manager, resources) but start-up time.

Create-only on a versioned, Object-Locked bucket:

- every put sends `ChecksumSHA256` (base64 of our SHA-256; the server rejects a
  body that does not match it) and `If-None-Match: *`;
- a `412 Precondition Failed` means the key exists: we read the stored bytes and
  hash them ourselves (a server's stored checksum is not proof; moto, for one,
  keeps whatever it is sent). Same digest: success. Different: `ConflictError`
  naming the key and both digests. Nothing is ever overwritten;
- with `object_lock_mode` set, every put asks for that mode and a retain-until
  date of now + `retention_days`; `head` of an object this store just wrote
  checks that the server applied at least that (where the server reports it);
- objects over `multipart_threshold` (64 MiB) go multipart, each part with its
  own SHA-256 checksum, completed with `If-None-Match: *`;
- `put_file` stores a file whose bytes must hash to a given digest (the shipper
  passes the one its signed manifest names): small files are hashed before the
  PUT; large ones are read once, part by part, hashing while the parts upload,
  and the upload is completed only if the whole file had that digest, so bytes
  that differ from the manifest never become an object;
- `head` asks for the object's checksum (`x-amz-checksum-mode: ENABLED`) and
  reports it as `sha256` for single-part objects, so a caller can confirm the
  server holds the checksum it was sent.

One try per boto3 call (botocore's retries are off) inside our own loop
(`agent.retry`): backoff with full jitter on throttling (SlowDown, 503), 5xx,
timeouts and dropped connections, bounded in attempts and seconds per call.
Everything else becomes a one-line `StoreError` (exit 3) naming the bucket, the
endpoint and the cause.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import email.utils
import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import botocore.exceptions as bx  # type: ignore[import-untyped]
import botocore.session  # type: ignore[import-untyped]
from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]

from agent.retry import RetriesExhausted, RetryPolicy, call_with_retry
from agent.store import AccessDeniedError, DigestMismatchError, ObjectInfo
from signing.completeness import ObjectVersion
from signing.errors import ConflictError, StoreError, UsageError

if TYPE_CHECKING:
    from agent.config import StoreConfig

T = TypeVar("T")

MIB = 1024 * 1024
MULTIPART_THRESHOLD = 64 * MIB
PART_SIZE = 16 * MIB
MIN_PART_SIZE = 5 * MIB  # S3's floor for every part but the last
PART_WORKERS = 8
# botocore sends `Expect: 100-continue` with every PUT body: one more round trip
# (headers, wait for "100 Continue", then the body) before the server can answer.
# That wait only pays off for a body large enough not to send in vain (a refused
# multipart part); below this size the header is dropped.
EXPECT_CONTINUE_MIN_BYTES = 1 * 1024 * 1024
# `store init` on a bucket it creates: a lifecycle rule aborting abandoned uploads.
ABORT_UPLOADS_RULE = "gamsa-abort-incomplete-multipart-uploads"
ABORT_INCOMPLETE_UPLOADS_DAYS = 7
# Uploads the shipper may run at once (records ahead of the manifests it commits in order).
CONCURRENCY = 8
ENV_MULTIPART_THRESHOLD = "GAMSA_STORE_MULTIPART_THRESHOLD"
ENV_PART_SIZE = "GAMSA_STORE_PART_SIZE"

# Throttling and transient server-side codes (botocore's standard-mode lists, plus
# S3's 409 for two conditional writes racing on one key).
RETRYABLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "PriorRequestNotComplete", "InternalError",
    "ServiceUnavailable", "ConditionalRequestConflict", "OperationAborted",
})
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
BAD_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch",
                             "InvalidToken", "ExpiredToken", "TokenRefreshRequired",
                             "InvalidSecurity"})
# How many recently written keys remember the retention they asked for (for `head`).
REMEMBER_WRITES = 1024


@dataclass(frozen=True)
class S3ObjectInfo(ObjectInfo):
    """What HEAD tells of an S3 object, retention and checksum included when the
    server reports them. `sha256` (hex) is the server's SHA-256 checksum of a
    single-part object; `checksum_sha256` is the checksum as reported (base64, for
    a multipart object the checksum of its parts' checksums, any "-N" removed)."""

    version_id: str | None = None
    lock_mode: str | None = None
    retain_until: dt.datetime | None = None
    sse: str | None = None
    checksum_sha256: str | None = None


@dataclass(frozen=True)
class _Asked:
    """The retention a put asked for, to check against the next HEAD."""

    size: int
    mode: str
    retain_until: dt.datetime


def _code(exc: bx.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: bx.ClientError) -> int:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return int(status or 0)


def _precondition_failed(exc: BaseException) -> bool:
    return isinstance(exc, bx.ClientError) and (
        _code(exc) == "PreconditionFailed" or _status(exc) == 412)


def _tls_verification_failed(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, bx.SSLError) and (
        "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text
        or "hostname mismatch" in text or "doesn't match" in text)


def retryable(exc: BaseException) -> bool:
    """True for errors worth another try: throttling, 5xx, timeouts, dropped connections."""
    if isinstance(exc, bx.ClientError):
        return _code(exc) in RETRYABLE_CODES or _status(exc) in RETRYABLE_STATUS
    if _tls_verification_failed(exc):
        return False  # a wrong CA bundle does not fix itself
    return isinstance(exc, bx.ConnectionError | bx.HTTPClientError | bx.IncompleteReadError
                      | ConnectionError | TimeoutError)


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _hex(b64_digest: str) -> str | None:
    try:
        raw = base64.b64decode(b64_digest, validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 32 else None


def _reported_sha256(response: dict[str, Any]) -> tuple[str | None, bool]:
    """(the SHA-256 checksum a HEAD reported, base64 without any "-N"; whether it is a
    single-part object's, i.e. the SHA-256 of its bytes)."""
    value = response.get("ChecksumSHA256")
    if not isinstance(value, str) or not value:
        return None, False
    checksum, dash, _ = value.partition("-")
    etag = str(response.get("ETag", "")).strip('"')
    single = (not dash and "-" not in etag
              and response.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT")
    return checksum, single


def _env_size(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


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


class S3Store:
    """A bucket (and key prefix) on an S3-compatible endpoint."""

    def __init__(self, url: str, config: StoreConfig | None = None, *,
                 retry: RetryPolicy | None = None,
                 multipart_threshold: int | None = None,
                 part_size: int | None = None,
                 list_page_size: int = 1000) -> None:
        self.url = url.rstrip("/")
        self.bucket, self.prefix = parse_s3_url(url)
        self.config = config
        configured = None if config is None else RetryPolicy(
            max_attempts=config.max_attempts, max_seconds=float(config.retry_max_seconds))
        self.retry = retry or RetryPolicy.from_env(default=configured)
        self.multipart_threshold = multipart_threshold or _env_size(
            ENV_MULTIPART_THRESHOLD, MULTIPART_THRESHOLD)
        self.part_size = max(MIN_PART_SIZE, part_size or _env_size(ENV_PART_SIZE, PART_SIZE))
        self.list_page_size = list_page_size
        self.endpoint = (config.endpoint_url if config and config.endpoint_url
                         else f"AWS ({config.region})" if config and config.region else "AWS")
        self.concurrency = CONCURRENCY
        self._client_obj: Any = None
        self._lock = threading.Lock()
        self._asked: collections.OrderedDict[str, _Asked] = collections.OrderedDict()

    # client ---------------------------------------------------------------------

    @property
    def _client(self) -> Any:
        """The boto3 client, made on first use: opening a store never touches the network
        or the credential chain, so sealing never waits on either."""
        with self._lock:
            if self._client_obj is None:
                self._client_obj = self._make_client()
            return self._client_obj

    def _make_client(self) -> Any:
        c = self.config
        proxies = {"http": c.proxy, "https": c.proxy} if c and c.proxy else None
        proxies_config = ({"proxy_ca_bundle": c.ca_bundle}
                          if c and c.proxy.startswith("https://") and c.ca_bundle else None)
        boto_config = BotoConfig(
            connect_timeout=c.connect_timeout if c else 10,
            read_timeout=c.read_timeout if c else 60,
            # One try per call: agent.retry is the only retry loop, so tries never multiply.
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=CONCURRENCY + PART_WORKERS,
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
            # What boto3.Session(profile_name=..., region_name=...).client("s3") does.
            session = botocore.session.get_session()
            if c and c.profile:
                session.set_config_variable("profile", c.profile)
            if c and c.region:
                session.set_config_variable("region", c.region)
            client = session.create_client(
                "s3", endpoint_url=(c.endpoint_url or None) if c else None,
                verify=(c.ca_bundle or True) if c else True, config=boto_config)
            client.meta.events.register("before-send.s3", _drop_small_expect)
            return client
        except bx.ProfileNotFound as exc:
            raise StoreError(f"store {self.url}: credentials profile "
                             f"{c.profile if c else ''!r} not found",
                             hint="check store.profile and ~/.aws/config") from exc
        except (bx.BotoCoreError, ValueError) as exc:
            raise StoreError(f"store {self.url}: cannot set up the S3 client: "
                             f"{_one_line(str(exc))}") from exc

    def _full(self, key: str) -> str:
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise StoreError(f"refusing object key {key!r}: not a plain relative key")
        return self.prefix + key

    # errors ---------------------------------------------------------------------

    def _cause(self, exc: BaseException) -> tuple[str, str]:
        """(cause, hint) in words, for one boto error."""
        endpoint = self.endpoint
        if isinstance(exc, bx.ClientError):
            code, status = _code(exc), _status(exc)
            message = _one_line(exc.response.get("Error", {}).get("Message", "")) or str(status)
            if code == "NoSuchBucket" or (code in ("404", "NotFound") and status == 404):
                return (f"bucket {self.bucket!r} does not exist at {endpoint} ({code})",
                        "check store.url and store.endpoint_url, or run `gamsa store init`")
            if code in BAD_CREDENTIALS:
                return (f"{endpoint} rejected the credentials: {message} ({code})",
                        "check the access key and secret (environment, ~/.aws or "
                        "store.profile)")
            if code == "AccessDenied" or status == 403:
                return (f"access denied by {endpoint} ({code or status}): {message}",
                        "the credentials need the rights in packaging/iam-policy.json, "
                        "and an agent's gamsa-host tag must equal its host_id: it may "
                        "reach only its own host= prefix")
            if code in ("InvalidRequest", "InvalidArgument") and "lock" in message.lower():
                return (f"{endpoint} refused Object Lock on bucket {self.bucket!r}: "
                        f"{message} ({code})",
                        "enable Object Lock on the bucket (`gamsa store init`) or set "
                        'store.object_lock_mode = ""')
            return f"{endpoint} answered {status} {code}: {message}", ""
        if _tls_verification_failed(exc):
            ca = self.config.ca_bundle if self.config and self.config.ca_bundle else ""
            return (f"TLS certificate of {endpoint} does not verify"
                    + (f" against store.ca_bundle {ca}" if ca else " against the system CAs"),
                    "set store.ca_bundle to the PEM of the CA that signed the endpoint")
        if isinstance(exc, bx.ProxyConnectionError):
            proxy = self.config.proxy if self.config else ""
            return f"cannot reach {endpoint} through proxy {proxy}", "check store.proxy"
        if isinstance(exc, bx.ConnectTimeoutError):
            return (f"connecting to {endpoint} timed out", "check store.endpoint_url, the "
                    "network path and store.connect_timeout")
        if isinstance(exc, bx.EndpointConnectionError):
            return (f"cannot connect to {endpoint}", "check store.endpoint_url and that the "
                    "store is up; spooled bundles ship when it is back")
        if isinstance(exc, bx.ReadTimeoutError):
            return (f"{endpoint} did not answer within store.read_timeout", "")
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError
                      | bx.CredentialRetrievalError):
            return (f"no usable credentials: {_one_line(str(exc))}",
                    "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, store.profile, or an "
                    "instance role")
        return f"{type(exc).__name__}: {_one_line(str(exc))}", ""

    def _error(self, action: str, exc: BaseException, attempts: int = 1) -> StoreError:
        cause, hint = self._cause(exc)
        tries = f" after {attempts} tries" if attempts > 1 else ""
        denied = isinstance(exc, bx.ClientError) and (_code(exc) == "AccessDenied"
                                                      or _status(exc) == 403)
        kind = AccessDeniedError if denied else StoreError
        return kind(f"store {self.url}: cannot {action}{tries}: {cause}", hint=hint)

    def _call(self, action: str, fn: Callable[[], T]) -> T:
        """`fn()` under the retry policy; any failure as one `StoreError`."""
        try:
            return call_with_retry(fn, self.retry, retryable)
        except RetriesExhausted as exc:
            raise self._error(action, exc.last, exc.attempts) from exc.last
        except (bx.BotoCoreError, bx.ClientError) as exc:
            raise self._error(action, exc) from exc

    # the Store interface ----------------------------------------------------------

    def _put_params(self) -> dict[str, Any]:
        """Object Lock and SSE parameters for a new object."""
        params: dict[str, Any] = {}
        c = self.config
        if c is None:
            return params
        if c.object_lock_mode:
            until = dt.datetime.now(dt.UTC) + dt.timedelta(days=c.retention_days)
            params["ObjectLockMode"] = c.object_lock_mode
            params["ObjectLockRetainUntilDate"] = until.replace(microsecond=0)
        if c.sse:
            params["ServerSideEncryption"] = c.sse
            if c.sse == "aws:kms" and c.kms_key_id:
                params["SSEKMSKeyId"] = c.kms_key_id
        return params

    def put(self, key: str, data: bytes, sha256: str) -> bool:
        """Create `key` with `data`; False if it already holds the same bytes."""
        if len(data) > self.multipart_threshold:
            return self._put_stream(key, io.BytesIO(data), len(data), sha256)
        return self._put_single(key, data, sha256)

    def put_file(self, key: str, path: Path, sha256: str) -> bool:
        """Create `key` from the file at `path`, whose bytes must hash to `sha256`.

        Raises `DigestMismatchError` if they do not; nothing is stored then. A
        large file is read once: the parts upload while it is read and hashed.
        """
        with path.open("rb") as source:
            size = os.fstat(source.fileno()).st_size
            if size > self.multipart_threshold:
                return self._put_stream(key, source, size, sha256, path=str(path))
            data = source.read()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise DigestMismatchError(str(path), actual, sha256)
        return self._put_single(key, data, sha256)

    def _put_single(self, key: str, data: bytes, sha256: str) -> bool:
        """One create-only PUT of `data`, whose SHA-256 the caller has checked."""
        full = self._full(key)
        params = self._put_params()

        def attempt() -> bool:
            try:
                self._client.put_object(
                    Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*",
                    ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(sha256),
                    ContentLength=len(data), **params)
            except bx.ClientError as exc:
                if _precondition_failed(exc):
                    return False
                raise
            return True

        if not self._call(f"put {key}", attempt):
            self._check_existing(key, full, sha256)
            return False
        if "ObjectLockMode" in params:
            self._remember(key, _Asked(len(data), params["ObjectLockMode"],
                                       params["ObjectLockRetainUntilDate"]))
        return True

    def _put_stream(self, key: str, source: BinaryIO, size: int, sha256: str,
                    path: str | None = None) -> bool:
        """A large object, multipart; False if it already holds the same bytes."""
        full = self._full(key)
        params = self._put_params()
        if not self._put_multipart(key, full, source, size, sha256, params, path or key):
            self._check_existing(key, full, sha256)
            return False
        return True

    def _remember(self, key: str, asked: _Asked) -> None:
        with self._lock:
            self._asked[key] = asked
            while len(self._asked) > REMEMBER_WRITES:
                self._asked.popitem(last=False)

    def _stored_sha256(self, key: str, full: str) -> str | None:
        """Our own SHA-256 of the stored bytes (streamed), None if there is no object."""
        def attempt() -> str | None:
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=full)
            except bx.ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404") or _status(exc) == 404:
                    return None
                raise
            digest = hashlib.sha256()
            for chunk in response["Body"].iter_chunks(MIB):
                digest.update(chunk)
            return digest.hexdigest()

        return self._call(f"read back {key}", attempt)

    def _check_existing(self, key: str, full: str, sha256: str) -> None:
        existing = self._stored_sha256(key, full)
        if existing is None:
            raise StoreError(f"store {self.url}: {key} was reported to exist but cannot be "
                             f"read back")
        if existing != sha256:
            raise ConflictError(f"store {self.url}: {key} exists with sha256 {existing}, "
                                f"refusing to replace it with {sha256}")

    def get(self, key: str) -> bytes:
        full = self._full(key)

        def attempt() -> bytes:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            data: bytes = response["Body"].read()
            return data

        return self._call(f"read {key}", attempt)

    def head(self, key: str) -> S3ObjectInfo | None:
        """The object's size, checksum and retention; for an object this store just
        wrote, also a check that the server applied the retention the put asked for."""
        full = self._full(key)

        def attempt() -> dict[str, Any] | None:
            try:
                response: dict[str, Any] = self._client.head_object(
                    Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
            except bx.ClientError as exc:
                if _status(exc) == 404 or _code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return response

        response = self._call(f"check {key}", attempt)
        if response is None:
            return None
        until = response.get("ObjectLockRetainUntilDate")
        checksum, single_part = _reported_sha256(response)
        info = S3ObjectInfo(key, int(response.get("ContentLength", -1)),
                            _hex(checksum) if checksum and single_part else None,
                            response.get("VersionId"), response.get("ObjectLockMode"),
                            until if isinstance(until, dt.datetime) else None,
                            response.get("ServerSideEncryption"), checksum)
        with self._lock:
            asked = self._asked.pop(key, None)
        if asked is not None:
            self._check_retention(key, info, asked)
        return info

    def _check_retention(self, key: str, info: S3ObjectInfo, asked: _Asked) -> None:
        """Fail when the server reports a weaker lock than the put asked for."""
        if info.lock_mode is not None and info.lock_mode != asked.mode:
            raise StoreError(f"store {self.url}: {key} was stored with Object Lock mode "
                             f"{info.lock_mode}, not the {asked.mode} the put asked for")
        if info.retain_until is not None and (
                info.retain_until < asked.retain_until - dt.timedelta(seconds=1)):
            raise StoreError(f"store {self.url}: {key} is retained until "
                             f"{info.retain_until.isoformat()}, not until "
                             f"{asked.retain_until.isoformat()} as the put asked")

    def list(self, prefix: str) -> Iterator[str]:
        """Keys (relative to the store prefix) under `prefix`, page by page, sorted by S3."""
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix,
                                    "MaxKeys": self.list_page_size}
            if token:
                args["ContinuationToken"] = token
            page = self._list_page(prefix, args)
            for item in page.get("Contents", ()):
                yield item["Key"][len(self.prefix):]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def object_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        """Every version and delete marker under `prefix` (ListObjectVersions, all
        pages), keys relative to the store prefix: what `gamsa verify` checks for
        deleted and overwritten evidence (signing.completeness)."""
        markers: dict[str, str] = {}
        while True:
            args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix,
                                    "MaxKeys": self.list_page_size, **markers}
            page = self._versions_page(prefix, args)
            entries = [(v, False) for v in page.get("Versions", ())]
            entries += [(m, True) for m in page.get("DeleteMarkers", ())]
            for item, is_marker in entries:
                modified = item.get("LastModified")
                yield ObjectVersion(
                    item["Key"][len(self.prefix):], str(item.get("VersionId") or "null"),
                    is_marker, bool(item.get("IsLatest")),
                    modified.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    if isinstance(modified, dt.datetime) else None)
            if not page.get("IsTruncated"):
                return
            markers = {"KeyMarker": page.get("NextKeyMarker", "")}
            if page.get("NextVersionIdMarker"):
                markers["VersionIdMarker"] = page["NextVersionIdMarker"]
            if not markers["KeyMarker"]:
                raise StoreError(f"store {self.url}: listing object versions under "
                                 f"{prefix or '/'}: a truncated page without a next marker")

    def _versions_page(self, prefix: str, args: dict[str, Any]) -> dict[str, Any]:
        page: dict[str, Any] = self._call(f"list object versions under {prefix or '/'}",
                                          lambda: self._client.list_object_versions(**args))
        return page

    def server_time(self, under: str = "v1/") -> dt.datetime | None:
        """The store's own clock: the `Date` header of a one-key LIST under `under`
        (None if absent). An agent asks under its own host prefix, the only one its
        credentials may list (packaging/iam-policy.json)."""
        args = {"Bucket": self.bucket, "Prefix": self.prefix + under, "MaxKeys": 1}
        page = self._list_page(under, args)
        date = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            return email.utils.parsedate_to_datetime(date).astimezone(dt.UTC) if date else None
        except (TypeError, ValueError):
            return None

    def _list_page(self, prefix: str, args: dict[str, Any]) -> dict[str, Any]:
        page: dict[str, Any] = self._call(f"list {prefix or '/'}",
                                          lambda: self._client.list_objects_v2(**args))
        return page

    # multipart --------------------------------------------------------------------

    def _put_multipart(self, key: str, full: str, source: BinaryIO, size: int, sha256: str,
                       params: dict[str, Any], origin: str) -> bool:
        """Upload `source` in parts, each with its SHA-256; False if the key existed.

        `source` is read once, in order, one part at a time: each part is added to
        the SHA-256 of the whole and handed to a worker that hashes and uploads it,
        so reading, hashing and uploading overlap, with at most PART_WORKERS parts
        held in memory. The upload is completed only if the whole hashed to
        `sha256`; otherwise it is aborted (`DigestMismatchError`) and no object is
        created. After completion a HEAD confirms the size, the composite checksum
        of our parts (where the server reports it) and the retention.
        """
        if self._exists(full):
            return False  # the caller compares our hash of the stored bytes
        self._abort_stale_uploads(full)
        upload = self._call(f"start upload of {key}", lambda: self._client.create_multipart_upload(
            Bucket=self.bucket, Key=full, ChecksumAlgorithm="SHA256", **params))
        upload_id: str = upload["UploadId"]

        def send(number: int, body: bytes) -> tuple[dict[str, Any], bytes]:
            digest = hashlib.sha256(body).digest()
            checksum = base64.b64encode(digest).decode()
            response = self._call(f"upload part {number} of {key}",
                                  lambda: self._client.upload_part(
                                      Bucket=self.bucket, Key=full, UploadId=upload_id,
                                      PartNumber=number, Body=body, ChecksumSHA256=checksum,
                                      ChecksumAlgorithm="SHA256", ContentLength=len(body)))
            return ({"PartNumber": number, "ETag": response["ETag"],
                     "ChecksumSHA256": checksum}, digest)

        try:
            whole = hashlib.sha256()
            read = 0
            sent: list[Future[tuple[dict[str, Any], bytes]]] = []
            with ThreadPoolExecutor(max_workers=PART_WORKERS,
                                    thread_name_prefix="gamsa-part") as pool:
                try:
                    while body := source.read(self.part_size):
                        whole.update(body)  # hashlib drops the GIL: parts upload meanwhile
                        read += len(body)
                        sent.append(pool.submit(send, len(sent) + 1, body))
                        del body  # only the workers hold parts in memory
                        running = [f for f in sent if not f.done()]
                        while len(running) >= PART_WORKERS:  # wait for a free worker
                            wait(running, return_when=FIRST_COMPLETED)
                            running = [f for f in running if not f.done()]
                        for future in sent:  # fail fast on a part that gave up
                            if future.done() and future.exception() is not None:
                                future.result()
                    results = [future.result() for future in sent]
                except BaseException:
                    for future in sent:
                        future.cancel()
                    raise
            actual = whole.hexdigest()
            if actual != sha256 or read != size:
                raise DigestMismatchError(origin, actual, sha256)
            parts = [part for part, _ in results]

            def complete() -> bool:
                try:
                    self._client.complete_multipart_upload(
                        Bucket=self.bucket, Key=full, UploadId=upload_id, IfNoneMatch="*",
                        MultipartUpload={"Parts": parts})
                except bx.ClientError as exc:
                    if _precondition_failed(exc):
                        return False
                    if _code(exc) == "NoSuchUpload" and self._exists(full):
                        return False  # completed by a try whose answer was lost
                    raise
                return True

            written = self._call(f"complete upload of {key}", complete)
        except BaseException:
            self._abort(full, upload_id)
            raise
        if not written:
            return False
        info = self.head(key)
        if info is None or info.size != size:
            raise StoreError(f"store {self.url}: {key} not confirmed after multipart upload "
                             f"({'missing' if info is None else f'{info.size} bytes'}, "
                             f"expected {size})")
        composite = base64.b64encode(
            hashlib.sha256(b"".join(digest for _, digest in results)).digest()).decode()
        if info.checksum_sha256 is not None and info.checksum_sha256 != composite:
            raise StoreError(f"store {self.url}: {key} reports checksum "
                             f"{info.checksum_sha256} after multipart upload, not the "
                             f"{composite} of the parts sent")
        if "ObjectLockMode" in params:
            asked = _Asked(size, params["ObjectLockMode"], params["ObjectLockRetainUntilDate"])
            if info.lock_mode is None:
                # Some servers do not apply retention given at CreateMultipartUpload.
                retention = {"Mode": asked.mode, "RetainUntilDate": asked.retain_until}
                self._call(f"set retention of {key}",
                           lambda: self._client.put_object_retention(
                               Bucket=self.bucket, Key=full, Retention=retention))
            else:
                self._check_retention(key, info, asked)
        return True

    def _exists(self, full: str) -> bool:
        """Whether `full` exists, to skip re-uploading a large object. Without
        s3:ListBucket on the key, S3 answers 403 for a missing key: then we upload,
        and If-None-Match on completion still keeps the first object."""
        def attempt() -> bool:
            try:
                self._client.head_object(Bucket=self.bucket, Key=full)
            except bx.ClientError as exc:
                if _status(exc) in (403, 404) or _code(exc) in ("404", "NoSuchKey", "403"):
                    return False
                raise
            return True

        return self._call(f"check {full}", attempt)

    def _abort_stale_uploads(self, full: str) -> None:
        """Abort uploads of `full` left behind by a shipper that was killed mid-way.

        Keys are unique to one host's bundle and one shipper runs at a time (the
        state lock), so an upload of this very key still in progress is ours and
        dead. Best effort: without s3:ListBucketMultipartUploads nothing is listed,
        and the bucket's lifecycle rule (`store init`) removes such uploads later.
        """
        try:
            found = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=full)
        except (bx.BotoCoreError, bx.ClientError):
            return
        for upload in found.get("Uploads", []):
            if upload.get("Key") == full and upload.get("UploadId"):
                self._abort(full, upload["UploadId"])

    def _abort(self, full: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full,
                                                UploadId=upload_id)
        except (bx.BotoCoreError, bx.ClientError):
            pass  # best effort; a lifecycle rule removes abandoned uploads

    # store init ---------------------------------------------------------------------

    def init_bucket(self, force: bool = False) -> dict[str, Any]:
        """Create the bucket with versioning and Object Lock default retention.

        An existing bucket is only inspected; its settings are changed only with
        `force`. Returns what was found and done.
        """
        c = self.config
        mode = c.object_lock_mode if c else ""
        days = c.retention_days if c else 0
        region = c.region if c else ""
        exists = self._bucket_exists()
        done: list[str] = []
        if not exists:
            create: dict[str, Any] = {"Bucket": self.bucket, "ObjectLockEnabledForBucket": True}
            if region and region != "us-east-1":
                create["CreateBucketConfiguration"] = {"LocationConstraint": region}
            self._call(f"create bucket {self.bucket}",
                       lambda: self._client.create_bucket(**create))
            done.append("created bucket with Object Lock enabled")
            done.append(self._set_abort_uploads_rule())
        wanted = {"versioning": "Enabled", "object_lock": "Enabled",
                  "default_retention": f"{mode} {days} days" if mode else None}
        found = self._bucket_settings() if exists else {}
        differences = [f"{name}: is {found.get(name)}, wanted {value}"
                       for name, value in wanted.items()
                       if exists and found.get(name) != value and value is not None]
        if exists and differences and not force:
            raise UsageError(f"store {self.url}: bucket {self.bucket!r} exists with other "
                             f"settings ({'; '.join(differences)})",
                             hint="re-run with --force to change them")
        if not exists or differences:
            self._call(f"enable versioning on {self.bucket}",
                       lambda: self._client.put_bucket_versioning(
                           Bucket=self.bucket,
                           VersioningConfiguration={"Status": "Enabled"}))
            done.append("versioning enabled")
            lock: dict[str, Any] = {"ObjectLockEnabled": "Enabled"}
            if mode:
                lock["Rule"] = {"DefaultRetention": {"Mode": mode, "Days": days}}
            self._call(f"set Object Lock on {self.bucket}",
                       lambda: self._client.put_object_lock_configuration(
                           Bucket=self.bucket, ObjectLockConfiguration=lock))
            done.append(f"Object Lock default retention {wanted['default_retention']}"
                        if mode else "Object Lock enabled, no default retention")
        return {"store": self.url, "bucket": self.bucket, "endpoint": self.endpoint,
                "existed": exists, "found": found, "done": done,
                "settings": self._bucket_settings()}

    def _set_abort_uploads_rule(self) -> str:
        """On a bucket `store init` created: a lifecycle rule that aborts multipart
        uploads left incomplete (a shipper killed mid-upload on a host without
        s3:ListBucketMultipartUploads). Not set on an existing bucket: a put
        replaces the whole lifecycle configuration, which may hold the bank's rules."""
        rule = {"ID": ABORT_UPLOADS_RULE, "Status": "Enabled", "Filter": {"Prefix": ""},
                "AbortIncompleteMultipartUpload": {
                    "DaysAfterInitiation": ABORT_INCOMPLETE_UPLOADS_DAYS}}

        def attempt() -> bool:
            try:
                self._client.put_bucket_lifecycle_configuration(
                    Bucket=self.bucket, LifecycleConfiguration={"Rules": [rule]})
            except bx.ClientError as exc:
                if _code(exc) in ("NotImplemented", "NotSupported", "MalformedXML"):
                    return False
                raise
            return True

        if self._call(f"set lifecycle rule on {self.bucket}", attempt):
            return (f"lifecycle rule: incomplete multipart uploads aborted after "
                    f"{ABORT_INCOMPLETE_UPLOADS_DAYS} days")
        return "lifecycle rule not set: the server does not support it"

    def _abort_uploads_days(self) -> int | None:
        """Days after which a lifecycle rule aborts incomplete uploads, if one does."""
        def attempt() -> list[dict[str, Any]]:
            try:
                response = self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
            except bx.ClientError as exc:
                if _code(exc) in ("NoSuchLifecycleConfiguration", "NotImplemented"):
                    return []
                raise
            return list(response.get("Rules", []))

        days = [rule["AbortIncompleteMultipartUpload"].get("DaysAfterInitiation")
                for rule in self._call(f"read lifecycle of {self.bucket}", attempt)
                if rule.get("Status") == "Enabled" and rule.get("AbortIncompleteMultipartUpload")]
        known = [d for d in days if isinstance(d, int)]
        return min(known) if known else None

    def _bucket_exists(self) -> bool:
        def attempt() -> bool:
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except bx.ClientError as exc:
                if _status(exc) == 404 or _code(exc) in ("404", "NoSuchBucket", "NotFound"):
                    return False
                raise
            return True

        return self._call(f"check bucket {self.bucket}", attempt)

    def _bucket_settings(self) -> dict[str, Any]:
        versioning = self._call(f"read versioning of {self.bucket}",
                                lambda: self._client.get_bucket_versioning(Bucket=self.bucket))

        def lock() -> dict[str, Any]:
            try:
                response: dict[str, Any] = self._client.get_object_lock_configuration(
                    Bucket=self.bucket)
            except bx.ClientError as exc:
                if "ObjectLockConfigurationNotFound" in _code(exc):
                    return {}
                raise
            return dict(response.get("ObjectLockConfiguration", {}))

        config = self._call(f"read Object Lock of {self.bucket}", lock)
        retention = config.get("Rule", {}).get("DefaultRetention", {})
        default = None
        if retention:
            amount = (f"{retention['Days']} days" if retention.get("Days")
                      else f"{retention.get('Years')} years")
            default = f"{retention.get('Mode')} {amount}"
        return {"versioning": versioning.get("Status"),
                "object_lock": config.get("ObjectLockEnabled"),
                "default_retention": default,
                "abort_incomplete_uploads_days": self._abort_uploads_days()}


def open_store(url: str, config: StoreConfig | None = None) -> S3Store:
    return S3Store(url, config)
