"""Clock sanity without a witness: a bundle whose claimed time is far ahead.

Without an RFC 3161 timestamp the only outside times a verifier has are the ones
the chain itself holds: the next bundle's start, and the store's own `Date`
header that the agent recorded as `collection.clock_check` (docs/FORMAT.md §3).
A clock that jumped forward (a run in 2099) is reported on the bundle that
claimed the future time (`clock_ahead`), not on the later bundle that went back
to the real clock: the agent never pins later bundles to a future time.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from signing.errors import FormatError
from signing.predicate import ClockCheck, ClockSteppedBack, Collection

# How far a clock may read ahead of the next bundle or of the store before it is a
# finding; the agent uses the same number to decide when not to hold a bundle's
# start at the previous bundle's end. One fact, one place.
CLOCK_TOLERANCE_SECONDS = 600

# gamsa's time forms, one model: UTC, `Z`, to the second with an optional fraction of
# one to six digits. The agent writes six digits (collector/record.py); enrollments and
# operators give whole seconds. \d as before: fromisoformat refuses other digits.
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_EXAMPLE = "2026-01-31T00:00:00Z"


def parse_time(text: object) -> dt.datetime | None:
    """A gamsa time with a fraction (`2026-11-25T06:00:00.123456Z`, as a bundle's
    times are written), or None if it is not one."""
    read = _read(text)
    return read[1] if read is not None and read[0] else None


def require_time(value: object, what: str) -> dt.datetime:
    """A gamsa time, the fraction optional (`2026-01-31T00:00:00Z`); FormatError naming
    `what` if it is not one."""
    read = _read(value)
    if read is None:
        raise FormatError(f"{what} is not a UTC time like {_EXAMPLE}")
    if read[1] is None:
        raise FormatError(f"{what} is not a valid date and time: {value!r}")
    return read[1]


def _read(value: object) -> tuple[bool, dt.datetime | None] | None:
    """(whether it has a fraction, the moment or None for no such day) when `value`
    has gamsa's time form; None when it has not. The form gamsa writes is told by its
    separators first: a verify of 100,000 bundles reads 200,000 of them."""
    if not isinstance(value, str):
        return None
    if len(value) == 27 and _is_written_form(value):
        return True, _moment(value)
    match = _TIME.fullmatch(value)
    if match is None:
        return None
    return match.group(1) is not None, _moment(value)


def _moment(text: str) -> dt.datetime | None:
    """`text`, already of gamsa's form, as an aware UTC datetime (None: no such day or
    hour, such as a 31 November)."""
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def _is_written_form(text: str) -> bool:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ` by its separators, ten times faster than the
    regular expression; fromisoformat alone takes other separators and offsets."""
    return (text[4] == text[7] == "-" and text[10] == "T" and text[13] == text[16] == ":"
            and text[19] == "." and text[26] == "Z" and text[20:26].isdigit())


def _not_after(first: str, second: str) -> bool:
    """True when both are gamsa's written form and `first` is not after `second`:
    fixed-width UTC fields, largest first, so string order is time order."""
    return (len(first) == len(second) == 27 and first <= second
            and _is_written_form(first) and _is_written_form(second))


def seconds_between(later: str, earlier: str) -> int | None:
    """Whole seconds from `earlier` to `later` (negative if it is not later)."""
    a, b = parse_time(later), parse_time(earlier)
    if a is None or b is None:
        return None
    return int((a - b).total_seconds())


@dataclass(frozen=True)
class ClockFacts:
    """What a manifest says about its clock (all optional, informational fields)."""

    stepped_back: ClockSteppedBack | None = None  # collection.clock_stepped_back
    check: ClockCheck | None = None  # collection.clock_check


def clock_facts(collection: Collection) -> ClockFacts:
    """The clock fields of a manifest's `predicate.collection`."""
    return ClockFacts(collection.clock_stepped_back, collection.clock_check)


def store_check_ahead(check: ClockCheck | None) -> int | None:
    """Seconds the agent's clock read ahead of the store's `Date` (None: not checked,
    or times that are not gamsa's format)."""
    if check is None:
        return None
    return seconds_between(check.local_time, check.store_date)


@dataclass(slots=True)  # not frozen: one per bundle, and a frozen init costs 5x
class TimedBundle:
    """The few fields of a verified bundle the clock check reads."""

    key: str
    host: str
    chain_id: str
    seq: int
    started_at: str
    finished_at: str
    clock: ClockFacts


def clock_findings(bundles: Iterable[TimedBundle]) -> list[tuple[str, str, str]]:
    """(object key, code, message) for each bundle whose claimed time is far ahead:
    of the store's `Date` it recorded, or of the next bundle of its chain."""
    found: list[tuple[str, str, str]] = []
    by_chain: dict[tuple[str, str], dict[int, list[TimedBundle]]] = {}
    for b in bundles:
        by_chain.setdefault((b.host, b.chain_id), {}).setdefault(b.seq, []).append(b)
        ahead = store_check_ahead(b.clock.check)
        if ahead is not None and ahead > CLOCK_TOLERANCE_SECONDS and b.clock.check:
            check = b.clock.check
            found.append((b.key, "clock_ahead",
                          f"the agent's clock read {check.local_time} when the store's "
                          f"Date said {check.store_date}: {ahead} s ahead (tolerance "
                          f"{CLOCK_TOLERANCE_SECONDS} s); its claimed time is not to be trusted"))
    for seqs in by_chain.values():
        for seq, same in seqs.items():
            following = seqs.get(seq + 1, [])
            if len(same) != 1 or len(following) != 1:
                continue  # a fork or a gap: reported by the chain check
            before, after = same[0], following[0]
            if _not_after(before.finished_at, after.started_at):
                continue  # the common case, decided without parsing either time
            lead = seconds_between(before.finished_at, after.started_at)
            if lead is not None and lead > CLOCK_TOLERANCE_SECONDS:
                found.append((before.key, "clock_ahead",
                              f"claims to have finished at {before.finished_at}, {lead} s "
                              f"after the next bundle (seq {seq + 1}) started at "
                              f"{after.started_at}: its clock read ahead (tolerance "
                              f"{CLOCK_TOLERANCE_SECONDS} s)"))
    return found


def explained_step_back(before_finished: str, after_started: str,
                        after: ClockFacts) -> bool:
    """True when `after` starts before `before` finished because the agent saw the
    previous bundle's time far ahead of its clock and said so (`clock_stepped_back`):
    the earlier bundle is then reported `clock_ahead`, not this one `time_backwards`."""
    stepped = after.stepped_back
    if stepped is None or stepped.previous_finished_at != before_finished:
        return False
    lead = seconds_between(before_finished, after_started)
    return lead is not None and lead > CLOCK_TOLERANCE_SECONDS
