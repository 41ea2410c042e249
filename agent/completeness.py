"""What `gamsa verify` hands to signing.completeness: the time of the audit, the
longest silence allowed, and the store's object versions (read here, with the
store's own client, and passed on as plain data), plus the fleet summary lines.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from agent.config import Config, parse_duration
from agent.store import AccessDeniedError, Store
from signing.clock import require_time
from signing.completeness import Completeness, FleetSummary, ObjectVersion, duration_text
from signing.errors import FormatError, UsageError
from signing.verify import WARNING, Finding

VERSIONS_UNREADABLE = "versions_unreadable"


def parse_as_of(value: str | None) -> dt.datetime:
    """`--as-of TIME` (UTC, `2026-12-01T00:00:00Z`, optional fraction), else now: the
    report always says which time it judged by."""
    if value is None:
        return dt.datetime.now(dt.UTC)
    try:
        return require_time(value, f"--as-of {value!r}")
    except FormatError as exc:
        raise UsageError(exc.message, hint="give a UTC time like 2026-12-01T06:00:00Z") from None


def silence_allowed(config: Config, value: str | None) -> dt.timedelta:
    """`--max-silence DURATION`, else `[verify] max_silence` (4 heartbeats by default)."""
    if value is None:
        return dt.timedelta(seconds=config.verify.max_silence)
    seconds = parse_duration(value.strip(), "--max-silence")
    if seconds < 1:
        raise UsageError(f"--max-silence must be at least 1 second, got {value!r}")
    return dt.timedelta(seconds=seconds)


def read_versions(store: Store, host: str | None,
                  ) -> tuple[list[ObjectVersion] | None, str, list[Finding]]:
    """Every version and delete marker under the evidence keys, or None and why not.

    A store without versions (file://) says so; credentials without
    s3:ListBucketVersions give a warning finding, not a failed audit run, since the
    rest of the verification stands. Any other store error propagates (exit 3).
    """
    lister: Any = getattr(store, "object_versions", None)
    if lister is None:
        scheme = store.url.split("://", 1)[0]
        return None, (f"a {scheme}:// store keeps no object versions: deleted or overwritten "
                      f"objects cannot be seen there"), []
    prefixes = [f"v1/host={host}/", "v1/keys/"] if host else ["v1/"]
    try:
        versions = [v for prefix in prefixes for v in lister(prefix)]
    except AccessDeniedError as exc:
        note = f"object versions not read: {exc.message}"
        return None, note, [Finding("v1/", VERSIONS_UNREADABLE,
                                    f"{note} (the auditor needs s3:ListBucketVersions: "
                                    f"packaging/iam-policy-auditor.json)", WARNING)]
    return versions, "", []


def expectations(store: Store, host: str | None, as_of: dt.datetime | None,
                 silence: dt.timedelta | None) -> tuple[Completeness, list[Finding]]:
    """The `Completeness` a verification runs with (the store's versions read now),
    and findings from reading it."""
    versions, note, findings = read_versions(store, host)
    return Completeness(as_of, silence, versions, note), findings


def fleet_lines(fleet: FleetSummary) -> list[str]:
    """The fleet in a few lines, for `gamsa verify` without --json."""
    silence = fleet.max_silence_seconds
    lines = [f"fleet: {len(fleet.hosts)} host(s) expected, {fleet.bundles} bundle(s); "
             f"{len(fleet.silent)} silent"
             + (f" ({', '.join(fleet.silent)})" if fleet.silent else "")
             + f", {len(fleet.without_bundles)} without bundles"
             + (f" ({', '.join(fleet.without_bundles)})" if fleet.without_bundles else "")
             + f"; as of {fleet.as_of or 'now'}"
             + (f", max silence {duration_text(silence)}" if silence is not None else
                ", silence not judged (this host's own key; --max-silence to judge it)")]
    if fleet.versions_checked:
        lines.append(f"object versions: {fleet.versions_read} read; "
                     f"{len(fleet.deleted)} deleted, {len(fleet.overwritten)} overwritten")
    else:
        lines.append(f"object versions: not checked ({fleet.versions_note})")
    return lines
