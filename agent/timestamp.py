"""Asking a timestamp authority (RFC 3161) to witness each shipped manifest.

Sealing never waits for a TSA. When a manifest is committed to the store, the
shipper notes it in the state dir (`timestamps/<manifest sha256>.json`); at the end
of every ship run each noted manifest gets a token (HTTP POST of a DER
TimeStampReq, `application/timestamp-query`, with a nonce and certReq), the
reply is checked (status granted, imprint = the manifest's SHA-256, our nonce, a
certificate present), kept beside the note, and put create-only at
`<stem>.manifest.tsr`; only then is the note removed. A TSA that is down or
answers wrongly stops the requests of that run (so a down TSA costs one timeout,
not one per bundle); the notes wait, `gamsa status` says how many and why, and
the next ship retries. The verifier then reports the late ones as `timestamp_late`
(docs/FORMAT.md §11).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import TimestampConfig
from agent.fsutil import failing, replace_atomic
from agent.store import Store
from collector.record import utc_now
from signing.bundle import MANIFEST_SUFFIX, TIMESTAMP_SUFFIX
from signing.errors import ConflictError, GamsaError
from signing.timestamp import MAX_RESPONSE_BYTES, check_reply, parse_response, timestamp_request

DIRECTORY = "timestamps"
STATUS_FILE = "status.json"


class TsaError(GamsaError):
    """The TSA could not be reached or answered something unusable."""


@dataclass
class TimestampReport:
    """What one pass over the noted manifests did."""

    added: list[str] = field(default_factory=list)  # token object keys stored
    pending: int = 0
    error: str | None = None


def _directory(state_root: Path) -> Path:
    return state_root / DIRECTORY


def note_shipped(state_root: Path, manifest_key: str, manifest_sha256: str) -> None:
    """Remember a committed manifest until its token is in the store."""
    directory = _directory(state_root)
    with failing("note a manifest to timestamp", directory):
        directory.mkdir(mode=0o700, exist_ok=True)
        replace_atomic(directory / f"{manifest_sha256}.json",
                       json.dumps({"manifest_key": manifest_key,
                                   "manifest_sha256": manifest_sha256}).encode(), 0o600)


def _pending(state_root: Path) -> list[tuple[Path, str, str]]:
    """(note path, manifest key, sha256) of each manifest still without a stored token."""
    directory = _directory(state_root)
    found = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        if path.name == STATUS_FILE:
            continue
        try:
            note = json.loads(path.read_bytes())
            key, digest = note["manifest_key"], note["manifest_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a torn note of a crash: its manifest is stored, only the token lost
        if isinstance(key, str) and key.endswith(MANIFEST_SUFFIX) and isinstance(digest, str):
            found.append((path, key, digest))
    return found


def request_token(config: TimestampConfig, digest: bytes) -> bytes:
    """The TSA's DER TimeStampResp over `digest`, checked; TsaError otherwise."""
    nonce = secrets.randbits(63)
    request = urllib.request.Request(  # noqa: S310 (config allows http(s) only)
        config.url, data=timestamp_request(digest, nonce), method="POST",
        headers={"Content-Type": "application/timestamp-query",
                 "Accept": "application/timestamp-reply"})
    context = None
    if config.url.startswith("https://"):
        context = ssl.create_default_context(cafile=config.ca_bundle or None)
    try:
        with urllib.request.urlopen(request, timeout=config.timeout,  # noqa: S310
                                    context=context) as response:
            body: bytes = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise TsaError(f"TSA {config.url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TsaError(f"TSA {config.url}: not reachable ({reason})") from exc
    if len(body) > MAX_RESPONSE_BYTES:
        raise TsaError(f"TSA {config.url}: reply larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        check_reply(parse_response(body), digest, nonce)
    except GamsaError as exc:
        raise TsaError(f"TSA {config.url}: unusable reply: {exc.message}") from exc
    return body


def add_timestamps(state_root: Path, store: Store, config: TimestampConfig) -> TimestampReport:
    """Get and store a token for each noted manifest; stop asking at the first TSA
    failure. A store error propagates (the ship run reports it)."""
    report = TimestampReport()
    pending = _pending(state_root)
    for index, (note, manifest_key, digest) in enumerate(pending):
        kept = note.with_suffix(".tsr")
        if kept.exists():
            reply = kept.read_bytes()
        else:
            try:
                reply = request_token(config, bytes.fromhex(digest))
            except (TsaError, ValueError) as exc:
                report.error = exc.message if isinstance(exc, GamsaError) else str(exc)
                report.pending = len(pending) - index
                break
            with failing("keep a timestamp token", kept):
                replace_atomic(kept, reply, 0o600)
        key = manifest_key.removesuffix(MANIFEST_SUFFIX) + TIMESTAMP_SUFFIX
        try:
            store.put(key, reply, hashlib.sha256(reply).hexdigest())
            report.added.append(key)
        except ConflictError:
            # Another token is already there (write-once): it stands, and is verified
            # like any other; ours is not kept.
            report.error = f"{key} already holds another token; left as it is"
        with failing("drop a timestamp note", note):
            note.unlink()
            kept.unlink(missing_ok=True)
    _record(state_root, report, config.url)
    return report


def _record(state_root: Path, report: TimestampReport, url: str) -> None:
    """Note the outcome for `gamsa status` (best effort: a report, never a failure)."""
    path = _directory(state_root) / STATUS_FILE
    status: dict[str, Any] = {"tsa": url, "at": utc_now(), "added": len(report.added),
                              "pending": report.pending, "error": report.error}
    try:
        if path.parent.is_dir():
            replace_atomic(path, json.dumps(status, sort_keys=True).encode(), 0o644)
    except OSError:
        pass


def timestamp_status(state_root: Path, config: TimestampConfig) -> dict[str, Any] | None:
    """What `gamsa status` shows of witnessed time (None: no TSA configured)."""
    if not config.url:
        return None
    try:
        last = json.loads((_directory(state_root) / STATUS_FILE).read_bytes())
    except (OSError, ValueError):
        last = None
    return {"tsa": config.url, "pending": len(_pending(state_root)),
            "last": last if isinstance(last, dict) else None}


def timestamp_problem(info: dict[str, Any] | None) -> str | None:
    """A status problem line when shipped manifests still wait for their token."""
    if info is None or not info["pending"]:
        return None
    last = info["last"] or {}
    why = f": {last['error']}" if last.get("error") else ""
    return (f"{info['pending']} shipped manifest(s) have no timestamp token yet "
            f"(TSA {info['tsa']}{why}); the next ship retries")
