"""Times an auditor types on the command line (`--since`, `--until`, `--from`, `--to`):
a UTC date (`2026-11-01`) or a UTC time (`2026-11-01T06:00:00Z`, optional fraction)."""

from __future__ import annotations

import datetime as dt

from signing.clock import require_time
from signing.errors import FormatError, UsageError


def parse_when(value: str, option: str, *, end_of_day: bool = False) -> dt.datetime:
    """`value` as an aware UTC datetime. A bare date is its first instant, or with
    `end_of_day` its last (`--until 2026-11-30` includes that whole day)."""
    text = value.strip()
    if len(text) == 10:
        try:
            day = dt.date.fromisoformat(text)
        except ValueError:
            raise UsageError(f"{option} {value!r}: not a date like 2026-11-30") from None
        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        return start + dt.timedelta(days=1, microseconds=-1) if end_of_day else start
    try:
        return require_time(text, f"{option} {value!r}")
    except FormatError as exc:
        raise UsageError(exc.message,
                         hint="give a UTC date or time: 2026-11-30 or 2026-11-30T06:00:00Z"
                         ) from None


def naive_utc(moment: dt.datetime) -> dt.datetime:
    """The UTC wall time without a zone (DuckDB TIMESTAMP columns hold UTC this way)."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None)
