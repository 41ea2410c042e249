"""botocore errors in gamsa's terms: which are worth another try, and what each means.

Throttling, 5xx, timeouts and dropped connections are retried (agent.retry);
everything else becomes one line naming the bucket, the endpoint, the cause and
what to do, as a `StoreError` (exit 3), or an `AccessDeniedError` when the store
refused for lack of a permission.
"""

from __future__ import annotations

from dataclasses import dataclass

import botocore.exceptions as bx  # type: ignore[import-untyped]

from agent.store import AccessDeniedError
from signing.errors import StoreError

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


@dataclass(frozen=True)
class Where:
    """What an error line names: the store, its bucket and endpoint, and the
    settings a hint may point at."""

    url: str
    bucket: str
    endpoint: str
    ca_bundle: str = ""
    proxy: str = ""


def error_code(exc: bx.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def http_status(exc: bx.ClientError) -> int:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return int(status or 0)


def precondition_failed(exc: BaseException) -> bool:
    """A `412` to `If-None-Match: *`: the key exists."""
    return isinstance(exc, bx.ClientError) and (
        error_code(exc) == "PreconditionFailed" or http_status(exc) == 412)


def not_found(exc: bx.ClientError) -> bool:
    """A 404 of a key (HEAD answers with a bare status, GET with NoSuchKey)."""
    return http_status(exc) == 404 or error_code(exc) in ("404", "NoSuchKey", "NotFound")


def tls_verification_failed(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, bx.SSLError) and (
        "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text
        or "hostname mismatch" in text or "doesn't match" in text)


def retryable(exc: BaseException) -> bool:
    """True for errors worth another try: throttling, 5xx, timeouts, dropped connections."""
    if isinstance(exc, bx.ClientError):
        return error_code(exc) in RETRYABLE_CODES or http_status(exc) in RETRYABLE_STATUS
    if tls_verification_failed(exc):
        return False  # a wrong CA bundle does not fix itself
    return isinstance(exc, bx.ConnectionError | bx.HTTPClientError | bx.IncompleteReadError
                      | ConnectionError | TimeoutError)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def cause(exc: BaseException, where: Where) -> tuple[str, str]:
    """(cause, hint) in words, for one boto error."""
    endpoint = where.endpoint
    if isinstance(exc, bx.ClientError):
        code, status = error_code(exc), http_status(exc)
        message = one_line(exc.response.get("Error", {}).get("Message", "")) or str(status)
        if code == "NoSuchBucket" or (code in ("404", "NotFound") and status == 404):
            return (f"bucket {where.bucket!r} does not exist at {endpoint} ({code})",
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
            return (f"{endpoint} refused Object Lock on bucket {where.bucket!r}: "
                    f"{message} ({code})",
                    "enable Object Lock on the bucket (`gamsa store init`) or set "
                    'store.object_lock_mode = ""')
        return f"{endpoint} answered {status} {code}: {message}", ""
    if tls_verification_failed(exc):
        return (f"TLS certificate of {endpoint} does not verify"
                + (f" against store.ca_bundle {where.ca_bundle}" if where.ca_bundle
                   else " against the system CAs"),
                "set store.ca_bundle to the PEM of the CA that signed the endpoint")
    if isinstance(exc, bx.ProxyConnectionError):
        return f"cannot reach {endpoint} through proxy {where.proxy}", "check store.proxy"
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
        return (f"no usable credentials: {one_line(str(exc))}",
                "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, store.profile, or an "
                "instance role")
    return f"{type(exc).__name__}: {one_line(str(exc))}", ""


def store_error(action: str, exc: BaseException, where: Where,
                attempts: int = 1) -> StoreError:
    """One line for a store call that failed: what it tried, after how many tries, why."""
    reason, hint = cause(exc, where)
    tries = f" after {attempts} tries" if attempts > 1 else ""
    denied = isinstance(exc, bx.ClientError) and (error_code(exc) == "AccessDenied"
                                                  or http_status(exc) == 403)
    kind = AccessDeniedError if denied else StoreError
    return kind(f"store {where.url}: cannot {action}{tries}: {reason}", hint=hint)
