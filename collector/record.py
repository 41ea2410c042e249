"""The `Record`: one observation, as sealed into a bundle (see docs/FORMAT.md)."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

RECORD_VERSION = 1


def utc_now() -> str:
    """The current time as RFC 3339 UTC with microseconds, as records carry it."""
    return format_time(dt.datetime.now(dt.UTC))


def format_time(moment: dt.datetime) -> str:
    """`2026-11-25T06:00:00.123456Z` for an aware datetime."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_epoch(seconds: float) -> str:
    """A POSIX timestamp (psutil, stat) as a record time string."""
    return format_time(dt.datetime.fromtimestamp(seconds, dt.UTC))


def text_or_b64(raw: bytes) -> str | dict[str, str]:
    """UTF-8 text as a string; anything else as `{"b64": ...}` so nothing is lost."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(raw).decode("ascii")}


@dataclass(frozen=True, slots=True)
class Record:
    """One observation. `key` identifies the thing within (collector, type)."""

    collector: str
    type: str
    key: str
    data: dict[str, Any]
    observed_at: str = field(default_factory=utc_now)

    def to_json(self, host: str) -> dict[str, Any]:
        """The record as the JSON object that is canonicalized and sealed."""
        return {
            "v": RECORD_VERSION,
            "collector": self.collector,
            "type": self.type,
            "key": self.key,
            "host": host,
            "observed_at": self.observed_at,
            "data": self.data,
        }
