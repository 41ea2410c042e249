"""The `s3://BUCKET/PREFIX` store: any S3-compatible endpoint, create-only.

Imported by `agent.store.open_store` only when a store URL says `s3://`, so
`gamsa --help` and file:// users never load boto3. Its parts: the client and the
retry loop (agent/s3_client.py), error wording (agent/s3_errors.py), large
objects (agent/s3_multipart.py), `gamsa store init` (agent/s3_admin.py).

Create-only on a versioned, Object-Locked bucket:

- every put sends `ChecksumSHA256` (base64 of our SHA-256; the server rejects a
  body that does not match it) and `If-None-Match: *`, and its answer is checked:
  a checksum it reports must be ours, and with `object_lock_mode` set it must
  name a version (Object Lock exists only on a versioned bucket). S3 refuses lock
  headers on a bucket without Object Lock, so a put that succeeds with them was
  locked; `confirm` (a HEAD, which the shipper samples) checks the retention
  itself, for S3-compatible servers that ignore the headers;
- a `412 Precondition Failed` means the key exists: we read the stored bytes and
  hash them ourselves (a server's stored checksum is not proof; moto, for one,
  keeps whatever it is sent). Same digest: success. Different: `ConflictError`
  naming the key and both digests. Nothing is ever overwritten;
- with `object_lock_mode` set, every put asks for that mode and a retain-until
  date of now + `retention_days`;
- objects over `multipart_threshold` (64 MiB) go multipart, each part with its
  own SHA-256 checksum, completed with `If-None-Match: *`, then confirmed by a HEAD;
- `put_file` stores a file whose bytes must hash to a given digest (the shipper
  passes the one its signed manifest names): small files are hashed before the
  PUT; large ones are read once, part by part, hashing while the parts upload,
  and the upload is completed only if the whole file had that digest, so bytes
  that differ from the manifest never become an object;
- `head` asks for the object's checksum (`x-amz-checksum-mode: ENABLED`) and
  reports it as `sha256` for single-part objects, so a caller can confirm the
  server holds the checksum it was sent.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import botocore.exceptions as bx  # type: ignore[import-untyped]

from agent import s3_multipart
from agent.retry import RetryPolicy
from agent.s3_client import Bucket, parse_s3_url
from agent.s3_errors import not_found, precondition_failed, store_error
from agent.store import DigestMismatchError, NotConfirmedError, ObjectInfo, check_stored
from signing.completeness import ObjectVersion
from signing.errors import ConflictError, StoreError

if TYPE_CHECKING:
    from agent.config import StoreConfig

__all__ = ["S3ObjectInfo", "S3Store", "open_store", "parse_s3_url"]

MIB = 1024 * 1024
# Uploads the shipper may run at once (records ahead of the manifests it commits in order).
CONCURRENCY = 8
ENV_MULTIPART_THRESHOLD = "GAMSA_STORE_MULTIPART_THRESHOLD"
ENV_PART_SIZE = "GAMSA_STORE_PART_SIZE"
# How many recently written keys remember the retention they asked for (for `confirm`).
REMEMBER_WRITES = 1024
RETENTION_HINT = ("the server did not apply the Object Lock the put asked for (a server "
                  "that ignores lock headers, or a bucket without Object Lock): enable "
                  "Object Lock on the bucket (`gamsa store init`), or set "
                  'store.object_lock_mode = "" to ship without it knowingly; '
                  "until then the bundles stay in the spool")


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
    """The retention a put asked for, to check against a later HEAD."""

    mode: str
    retain_until: dt.datetime


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


class _Body(io.RawIOBase):
    """A GetObject body as a file, read errors turned into one `StoreError`."""

    def __init__(self, body: Any, action: str, where: Any) -> None:
        self._body = body
        self._action = action
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data: bytes = self._body.read(len(buffer))
        except (bx.BotoCoreError, bx.ClientError, OSError) as exc:
            raise store_error(self._action, exc, self._where) from exc
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


class S3Store:
    """A bucket (and key prefix) on an S3-compatible endpoint."""

    def __init__(self, url: str, config: StoreConfig | None = None, *,
                 retry: RetryPolicy | None = None,
                 multipart_threshold: int | None = None,
                 part_size: int | None = None,
                 list_page_size: int = 1000) -> None:
        self._bucket = Bucket(url, config, retry)
        self.url = self._bucket.url
        self.bucket, self.prefix = self._bucket.name, self._bucket.prefix
        self.config = config
        self.endpoint = self._bucket.endpoint
        self.multipart_threshold = multipart_threshold or _env_size(
            ENV_MULTIPART_THRESHOLD, s3_multipart.MULTIPART_THRESHOLD)
        self.part_size = max(s3_multipart.MIN_PART_SIZE,
                             part_size or _env_size(ENV_PART_SIZE, s3_multipart.PART_SIZE))
        self.list_page_size = list_page_size
        self.concurrency = CONCURRENCY
        # Manifests per HEAD the shipper makes (agent/ship.py); without a config, all.
        self.confirm_every = config.confirm_every if config else 1
        self._lock = threading.Lock()
        self._asked: collections.OrderedDict[str, _Asked] = collections.OrderedDict()

    @property
    def retry(self) -> RetryPolicy:
        """How hard each call is tried (agent.retry)."""
        return self._bucket.retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        # A copy of this store with another policy (agent.chainguard's one-try look)
        # must not change the original's: each gets its own view of the bucket.
        self._bucket = self._bucket.with_retry(policy)

    # writing ----------------------------------------------------------------------

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
        full = self._bucket.full(key)
        params = self._put_params()
        client = self._bucket.client

        def attempt() -> dict[str, Any] | None:
            try:
                response: dict[str, Any] = client.put_object(
                    Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*",
                    ChecksumAlgorithm="SHA256", ChecksumSHA256=_b64(sha256),
                    ContentLength=len(data), **params)
            except bx.ClientError as exc:
                if precondition_failed(exc):
                    return None
                raise
            return response

        response = self._bucket.call(f"put {key}", attempt)
        if response is None:
            self._check_existing(key, full, sha256)
            return False
        self._check_put_answer(key, response, sha256, params)
        return True

    def _check_put_answer(self, key: str, response: dict[str, Any], sha256: str,
                          params: dict[str, Any]) -> None:
        """The PUT's own answer: the checksum it reports is ours; with Object Lock
        asked, it names a version (no versioning, no lock)."""
        reported = response.get("ChecksumSHA256")
        if isinstance(reported, str) and reported and reported != _b64(sha256):
            raise NotConfirmedError(f"store {self.url}: {key} not confirmed by its put: the "
                                    f"store answered checksum {reported}, not the "
                                    f"{_b64(sha256)} sent")
        if "ObjectLockMode" in params:
            if not response.get("VersionId"):
                raise NotConfirmedError(
                    f"store {self.url}: {key} was stored without a version id although "
                    f"the put asked for Object Lock {params['ObjectLockMode']}: the "
                    f"bucket is not versioned, so nothing of it is locked",
                    hint=RETENTION_HINT)
            self._remember(key, _Asked(params["ObjectLockMode"],
                                       params["ObjectLockRetainUntilDate"]))

    def _put_stream(self, key: str, source: BinaryIO, size: int, sha256: str,
                    path: str | None = None) -> bool:
        """A large object, multipart; False if it already holds the same bytes.
        After completion a HEAD confirms the size, the composite checksum of our
        parts (where the server reports it) and the retention."""
        params = self._put_params()
        composite = s3_multipart.upload(self._bucket, key, source, size, sha256, params,
                                        path or key, self.part_size)
        if composite is None:
            self._check_existing(key, self._bucket.full(key), sha256)
            return False
        info = self._head(key)
        if info is None or info.size != size:
            raise NotConfirmedError(
                f"store {self.url}: {key} not confirmed after multipart upload "
                f"({'missing' if info is None else f'{info.size} bytes'}, expected {size})")
        if info.checksum_sha256 is not None and info.checksum_sha256 != composite:
            raise NotConfirmedError(f"store {self.url}: {key} reports checksum "
                                    f"{info.checksum_sha256} after multipart upload, not "
                                    f"the {composite} of the parts sent")
        if "ObjectLockMode" in params:
            asked = _Asked(params["ObjectLockMode"], params["ObjectLockRetainUntilDate"])
            if info.lock_mode is None:
                # Some servers do not apply retention given at CreateMultipartUpload.
                retention = {"Mode": asked.mode, "RetainUntilDate": asked.retain_until}
                self._bucket.call(f"set retention of {key}",
                                  lambda: self._bucket.client.put_object_retention(
                                      Bucket=self.bucket, Key=self._bucket.full(key),
                                      Retention=retention))
                self._remember(key, asked)
            else:
                self._check_retention(key, info, asked)
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
                response = self._bucket.client.get_object(Bucket=self.bucket, Key=full)
            except bx.ClientError as exc:
                if not_found(exc):
                    return None
                raise
            digest = hashlib.sha256()
            for chunk in response["Body"].iter_chunks(MIB):
                digest.update(chunk)
            return digest.hexdigest()

        return self._bucket.call(f"read back {key}", attempt)

    def _check_existing(self, key: str, full: str, sha256: str) -> None:
        existing = self._stored_sha256(key, full)
        if existing is None:
            raise StoreError(f"store {self.url}: {key} was reported to exist but cannot be "
                             f"read back")
        if existing != sha256:
            raise ConflictError(f"store {self.url}: {key} exists with sha256 {existing}, "
                                f"refusing to replace it with {sha256}")

    # reading ----------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        full = self._bucket.full(key)

        def attempt() -> bytes:
            response = self._bucket.client.get_object(Bucket=self.bucket, Key=full)
            data: bytes = response["Body"].read()
            return data

        return self._bucket.call(f"read {key}", attempt)

    def open(self, key: str) -> BinaryIO:
        """`key` as a stream (the verifier reads records objects this way: memory
        bounded by the chunk it asks for, not by the object). The request is retried;
        a failure mid-stream is a `StoreError` naming the key."""
        full = self._bucket.full(key)

        def attempt() -> Any:
            return self._bucket.client.get_object(Bucket=self.bucket, Key=full)["Body"]

        body = self._bucket.call(f"read {key}", attempt)
        return io.BufferedReader(_Body(body, f"read {key}", self._bucket.where))

    def _head(self, key: str) -> S3ObjectInfo | None:
        full = self._bucket.full(key)

        def attempt() -> dict[str, Any] | None:
            try:
                response: dict[str, Any] = self._bucket.client.head_object(
                    Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
            except bx.ClientError as exc:
                if not_found(exc):
                    return None
                raise
            return response

        response = self._bucket.call(f"check {key}", attempt)
        if response is None:
            return None
        until = response.get("ObjectLockRetainUntilDate")
        checksum, single_part = _reported_sha256(response)
        return S3ObjectInfo(key, int(response.get("ContentLength", -1)),
                            _hex(checksum) if checksum and single_part else None,
                            response.get("VersionId"), response.get("ObjectLockMode"),
                            until if isinstance(until, dt.datetime) else None,
                            response.get("ServerSideEncryption"), checksum)

    def _take_asked(self, key: str) -> _Asked | None:
        with self._lock:
            return self._asked.pop(key, None)

    def head(self, key: str) -> S3ObjectInfo | None:
        """The object's size, checksum and retention; for an object this store just
        wrote, also a check that the server applied no weaker retention than the
        put asked for (where it reports one)."""
        info = self._head(key)
        asked = self._take_asked(key)
        if info is not None and asked is not None:
            self._check_retention(key, info, asked)
        return info

    def confirm(self, key: str, size: int, sha256: str) -> S3ObjectInfo:
        """HEAD an object just put: there, with `size` bytes and (where reported) our
        checksum, and, with `object_lock_mode` set, retained in that mode at least
        as long as the put asked (for an object an earlier run stored, into the
        future). Raises `NotConfirmedError` otherwise, with a lock missing altogether
        named as such: the sign of a server that ignores lock headers."""
        info = self._head(key)
        asked = self._take_asked(key)
        check_stored(self.url, key, info, size, sha256)
        assert info is not None  # check_stored refuses a missing object
        mode = self.config.object_lock_mode if self.config else ""
        if not mode:
            return info
        if info.lock_mode is None or info.retain_until is None:
            wanted = (f"{asked.mode} until {asked.retain_until.isoformat()}" if asked
                      else mode)
            raise NotConfirmedError(
                f"store {self.url}: {key} is stored without Object Lock retention "
                f"(mode {info.lock_mode or 'none'}, retain-until "
                f"{info.retain_until.isoformat() if info.retain_until else 'none'}), "
                f"though its put asked for {wanted}", hint=RETENTION_HINT)
        self._check_retention(key, info, asked or _Asked(mode, dt.datetime.now(dt.UTC)))
        return info

    def _check_retention(self, key: str, info: S3ObjectInfo, asked: _Asked) -> None:
        """Fail when the server reports a weaker lock than the put asked for."""
        if info.lock_mode is not None and info.lock_mode != asked.mode:
            raise NotConfirmedError(f"store {self.url}: {key} was stored with Object Lock "
                                    f"mode {info.lock_mode}, not the {asked.mode} the put "
                                    f"asked for", hint=RETENTION_HINT)
        if info.retain_until is not None and (
                info.retain_until < asked.retain_until - dt.timedelta(seconds=1)):
            raise NotConfirmedError(f"store {self.url}: {key} is retained until "
                                    f"{info.retain_until.isoformat()}, not until "
                                    f"{asked.retain_until.isoformat()} as the put asked",
                                    hint=RETENTION_HINT)

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

    def _list_page(self, prefix: str, args: dict[str, Any]) -> dict[str, Any]:
        page: dict[str, Any] = self._bucket.call(
            f"list {prefix or '/'}", lambda: self._bucket.client.list_objects_v2(**args))
        return page

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
        page: dict[str, Any] = self._bucket.call(
            f"list object versions under {prefix or '/'}",
            lambda: self._bucket.client.list_object_versions(**args))
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

    # store init ---------------------------------------------------------------------

    def init_bucket(self, force: bool = False) -> dict[str, Any]:
        """`gamsa store init` (agent/s3_admin.py)."""
        from agent.s3_admin import init_bucket

        return init_bucket(self._bucket, force)


def open_store(url: str, config: StoreConfig | None = None) -> S3Store:
    return S3Store(url, config)
