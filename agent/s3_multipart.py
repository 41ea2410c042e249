"""Multipart upload of one large object, create-only, read once while it is hashed.

Hand-made rather than boto3's transfer manager: s3transfer cannot send
`If-None-Match: *` on completion (it is not among its allowed upload arguments),
and gamsa must complete an upload only if the whole had the digest its signed
manifest names. Each part carries its own SHA-256 checksum, which the server checks.
"""

from __future__ import annotations

import base64
import hashlib
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, BinaryIO

import botocore.exceptions as bx  # type: ignore[import-untyped]

from agent.s3_client import Bucket
from agent.s3_errors import error_code, http_status, precondition_failed
from agent.store import DigestMismatchError

MIB = 1024 * 1024
MULTIPART_THRESHOLD = 64 * MIB
PART_SIZE = 16 * MIB
MIN_PART_SIZE = 5 * MIB  # S3's floor for every part but the last
PART_WORKERS = 8


def upload(bucket: Bucket, key: str, source: BinaryIO, size: int, sha256: str,
           params: dict[str, Any], origin: str, part_size: int) -> str | None:
    """Upload `source` in parts, each with its SHA-256; None if the key existed, else
    the composite checksum of the parts (base64), for the caller to confirm.

    `source` is read once, in order, one part at a time: each part is added to
    the SHA-256 of the whole and handed to a worker that hashes and uploads it,
    so reading, hashing and uploading overlap, with at most PART_WORKERS parts
    held in memory. The upload is completed only if the whole hashed to
    `sha256`; otherwise it is aborted (`DigestMismatchError`) and no object is
    created.
    """
    full = bucket.full(key)
    client = bucket.client
    if exists(bucket, full):
        return None  # the caller compares our hash of the stored bytes
    abort_stale_uploads(bucket, full)
    started = bucket.call(f"start upload of {key}", lambda: client.create_multipart_upload(
        Bucket=bucket.name, Key=full, ChecksumAlgorithm="SHA256", **params))
    upload_id: str = started["UploadId"]

    def send(number: int, body: bytes) -> tuple[dict[str, Any], bytes]:
        digest = hashlib.sha256(body).digest()
        checksum = base64.b64encode(digest).decode()
        response = bucket.call(f"upload part {number} of {key}",
                               lambda: client.upload_part(
                                   Bucket=bucket.name, Key=full, UploadId=upload_id,
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
                while body := source.read(part_size):
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
                client.complete_multipart_upload(
                    Bucket=bucket.name, Key=full, UploadId=upload_id, IfNoneMatch="*",
                    MultipartUpload={"Parts": parts})
            except bx.ClientError as exc:
                if precondition_failed(exc):
                    return False
                if error_code(exc) == "NoSuchUpload" and exists(bucket, full):
                    return False  # completed by a try whose answer was lost
                raise
            return True

        written = bucket.call(f"complete upload of {key}", complete)
    except BaseException:
        abort(bucket, full, upload_id)
        raise
    if not written:
        return None
    return base64.b64encode(
        hashlib.sha256(b"".join(digest for _, digest in results)).digest()).decode()


def exists(bucket: Bucket, full: str) -> bool:
    """Whether `full` exists, to skip re-uploading a large object. Without
    s3:ListBucket on the key, S3 answers 403 for a missing key: then we upload,
    and If-None-Match on completion still keeps the first object."""
    def attempt() -> bool:
        try:
            bucket.client.head_object(Bucket=bucket.name, Key=full)
        except bx.ClientError as exc:
            if http_status(exc) in (403, 404) or error_code(exc) in ("404", "NoSuchKey",
                                                                      "403"):
                return False
            raise
        return True

    return bucket.call(f"check {full}", attempt)


def abort_stale_uploads(bucket: Bucket, full: str) -> None:
    """Abort uploads of `full` left behind by a shipper that was killed mid-way.

    Keys are unique to one host's bundle and one shipper runs at a time (the
    state lock), so an upload of this very key still in progress is ours and
    dead. Best effort: without s3:ListBucketMultipartUploads nothing is listed,
    and the bucket's lifecycle rule (`store init`) removes such uploads later.
    """
    try:
        found = bucket.client.list_multipart_uploads(Bucket=bucket.name, Prefix=full)
    except (bx.BotoCoreError, bx.ClientError):
        return
    for upload in found.get("Uploads", []):
        if upload.get("Key") == full and upload.get("UploadId"):
            abort(bucket, full, upload["UploadId"])


def abort(bucket: Bucket, full: str, upload_id: str) -> None:
    try:
        bucket.client.abort_multipart_upload(Bucket=bucket.name, Key=full,
                                             UploadId=upload_id)
    except (bx.BotoCoreError, bx.ClientError):
        pass  # best effort; a lifecycle rule removes abandoned uploads
