"""`gamsa store init` on S3: create a bucket fit for evidence, or inspect one.

A new bucket gets versioning, Object Lock with the configured default retention,
and a lifecycle rule that aborts abandoned multipart uploads. An existing bucket
is only inspected; its versioning and Object Lock are changed only with `--force`,
and its lifecycle never (a put replaces every rule the bank has there).
"""

from __future__ import annotations

from typing import Any

import botocore.exceptions as bx  # type: ignore[import-untyped]

from agent.s3_client import Bucket
from agent.s3_errors import error_code, http_status
from signing.errors import UsageError

ABORT_UPLOADS_RULE = "gamsa-abort-incomplete-multipart-uploads"
ABORT_INCOMPLETE_UPLOADS_DAYS = 7


def init_bucket(bucket: Bucket, force: bool = False) -> dict[str, Any]:
    """Create the bucket with versioning and Object Lock default retention.

    An existing bucket is only inspected; its settings are changed only with
    `force`. Returns what was found and done.
    """
    c = bucket.config
    mode = c.object_lock_mode if c else ""
    days = c.retention_days if c else 0
    region = c.region if c else ""
    client = bucket.client
    exists = _bucket_exists(bucket)
    done: list[str] = []
    if not exists:
        create: dict[str, Any] = {"Bucket": bucket.name, "ObjectLockEnabledForBucket": True}
        if region and region != "us-east-1":
            create["CreateBucketConfiguration"] = {"LocationConstraint": region}
        bucket.call(f"create bucket {bucket.name}", lambda: client.create_bucket(**create))
        done.append("created bucket with Object Lock enabled")
        done.append(_set_abort_uploads_rule(bucket))
    wanted = {"versioning": "Enabled", "object_lock": "Enabled",
              "default_retention": f"{mode} {days} days" if mode else None}
    found = bucket_settings(bucket) if exists else {}
    differences = [f"{name}: is {found.get(name)}, wanted {value}"
                   for name, value in wanted.items()
                   if exists and found.get(name) != value and value is not None]
    if exists and differences and not force:
        raise UsageError(f"store {bucket.url}: bucket {bucket.name!r} exists with other "
                         f"settings ({'; '.join(differences)})",
                         hint="re-run with --force to change them")
    if not exists or differences:
        bucket.call(f"enable versioning on {bucket.name}",
                    lambda: client.put_bucket_versioning(
                        Bucket=bucket.name, VersioningConfiguration={"Status": "Enabled"}))
        done.append("versioning enabled")
        lock: dict[str, Any] = {"ObjectLockEnabled": "Enabled"}
        if mode:
            lock["Rule"] = {"DefaultRetention": {"Mode": mode, "Days": days}}
        bucket.call(f"set Object Lock on {bucket.name}",
                    lambda: client.put_object_lock_configuration(
                        Bucket=bucket.name, ObjectLockConfiguration=lock))
        done.append(f"Object Lock default retention {wanted['default_retention']}"
                    if mode else "Object Lock enabled, no default retention")
    return {"store": bucket.url, "bucket": bucket.name, "endpoint": bucket.endpoint,
            "existed": exists, "found": found, "done": done,
            "settings": bucket_settings(bucket)}


def _set_abort_uploads_rule(bucket: Bucket) -> str:
    """On a bucket `store init` created: a lifecycle rule that aborts multipart
    uploads left incomplete (a shipper killed mid-upload on a host without
    s3:ListBucketMultipartUploads). Not set on an existing bucket: a put
    replaces the whole lifecycle configuration, which may hold the bank's rules."""
    rule = {"ID": ABORT_UPLOADS_RULE, "Status": "Enabled", "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {
                "DaysAfterInitiation": ABORT_INCOMPLETE_UPLOADS_DAYS}}

    def attempt() -> bool:
        try:
            bucket.client.put_bucket_lifecycle_configuration(
                Bucket=bucket.name, LifecycleConfiguration={"Rules": [rule]})
        except bx.ClientError as exc:
            if error_code(exc) in ("NotImplemented", "NotSupported", "MalformedXML"):
                return False
            raise
        return True

    if bucket.call(f"set lifecycle rule on {bucket.name}", attempt):
        return (f"lifecycle rule: incomplete multipart uploads aborted after "
                f"{ABORT_INCOMPLETE_UPLOADS_DAYS} days")
    return "lifecycle rule not set: the server does not support it"


def _abort_uploads_days(bucket: Bucket) -> int | None:
    """Days after which a lifecycle rule aborts incomplete uploads, if one does."""
    def attempt() -> list[dict[str, Any]]:
        try:
            response = bucket.client.get_bucket_lifecycle_configuration(Bucket=bucket.name)
        except bx.ClientError as exc:
            if error_code(exc) in ("NoSuchLifecycleConfiguration", "NotImplemented"):
                return []
            raise
        return list(response.get("Rules", []))

    days = [rule["AbortIncompleteMultipartUpload"].get("DaysAfterInitiation")
            for rule in bucket.call(f"read lifecycle of {bucket.name}", attempt)
            if rule.get("Status") == "Enabled" and rule.get("AbortIncompleteMultipartUpload")]
    known = [d for d in days if isinstance(d, int)]
    return min(known) if known else None


def _bucket_exists(bucket: Bucket) -> bool:
    def attempt() -> bool:
        try:
            bucket.client.head_bucket(Bucket=bucket.name)
        except bx.ClientError as exc:
            if http_status(exc) == 404 or error_code(exc) in ("404", "NoSuchBucket",
                                                               "NotFound"):
                return False
            raise
        return True

    return bucket.call(f"check bucket {bucket.name}", attempt)


def bucket_settings(bucket: Bucket) -> dict[str, Any]:
    """Versioning, Object Lock default retention and the abort-uploads lifecycle rule."""
    client = bucket.client
    versioning = bucket.call(f"read versioning of {bucket.name}",
                             lambda: client.get_bucket_versioning(Bucket=bucket.name))

    def lock() -> dict[str, Any]:
        try:
            response: dict[str, Any] = client.get_object_lock_configuration(Bucket=bucket.name)
        except bx.ClientError as exc:
            if "ObjectLockConfigurationNotFound" in error_code(exc):
                return {}
            raise
        return dict(response.get("ObjectLockConfiguration", {}))

    config = bucket.call(f"read Object Lock of {bucket.name}", lock)
    retention = config.get("Rule", {}).get("DefaultRetention", {})
    default = None
    if retention:
        amount = (f"{retention['Days']} days" if retention.get("Days")
                  else f"{retention.get('Years')} years")
        default = f"{retention.get('Mode')} {amount}"
    return {"versioning": versioning.get("Status"),
            "object_lock": config.get("ObjectLockEnabled"),
            "default_retention": default,
            "abort_incomplete_uploads_days": _abort_uploads_days(bucket)}
