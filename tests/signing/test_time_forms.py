"""gamsa's time forms (signing/clock.py): the None-returning `parse_time` that bundle
times go through, and the raising `require_time` that enrollment, revocation,
rotation and the command line use; what each takes and what each refuses."""

from __future__ import annotations

import datetime as dt

import pytest

from signing.clock import parse_time, require_time
from signing.errors import FormatError

WRITTEN = "2026-11-25T06:00:00.123456Z"
AT_WRITTEN = dt.datetime(2026, 11, 25, 6, 0, 0, 123456, tzinfo=dt.UTC)


@pytest.mark.parametrize(("text", "expected"), [
    (WRITTEN, AT_WRITTEN),
    ("2026-11-25T06:00:00.5Z", dt.datetime(2026, 11, 25, 6, 0, 0, 500000, tzinfo=dt.UTC)),
    ("2024-02-29T23:59:59.000001Z", dt.datetime(2024, 2, 29, 23, 59, 59, 1, tzinfo=dt.UTC)),
])
def test_both_take_a_time_with_a_fraction(text: str, expected: dt.datetime) -> None:
    assert parse_time(text) == expected
    assert require_time(text, "t") == expected
    assert expected.tzinfo is not None and parse_time(text).utcoffset() == dt.timedelta(0)  # type: ignore[union-attr]


def test_only_require_time_takes_whole_seconds() -> None:
    assert parse_time("2026-01-31T00:00:00Z") is None  # bundle times always carry a fraction
    assert require_time("2026-01-31T00:00:00Z", "t") == dt.datetime(2026, 1, 31, tzinfo=dt.UTC)


# Not gamsa's form: parse_time says None, require_time names the field and the form.
NOT_THE_FORM = [
    "2026-11-25T06:00:00.123456+00:00",  # an offset, not Z
    "2026-11-25 06:00:00.123456Z",  # a space for T
    "2026-11-25T06:00:00.1234567Z",  # seven fraction digits
    "2026-11-25T06:00:00.Z",  # a point with no digits
    "2026-11-25T06:00:00.123456",  # no zone: a naive time
    "2026-1-25T06:00:00.123456Z",  # not zero-padded
    "20261125T060000.123456Z",  # the basic ISO form
    "2026-11-25",  # a date alone
    "yesterday",
    "",
    " 2026-11-25T06:00:00.123456Z",
    "2026-11-25T06:00:00.123456Z\n",
]


@pytest.mark.parametrize("text", NOT_THE_FORM)
def test_both_refuse_other_forms(text: str) -> None:
    assert parse_time(text) is None
    with pytest.raises(FormatError, match=r"^field x is not a UTC time like 2026-01-31T00:00:00Z$"):
        require_time(text, "field x")


@pytest.mark.parametrize("value", [None, 1764050400, 1.5, b"2026-11-25T06:00:00.123456Z",
                                   ["2026-11-25T06:00:00.123456Z"]])
def test_both_refuse_what_is_not_text(value: object) -> None:
    assert parse_time(value) is None
    with pytest.raises(FormatError, match="is not a UTC time"):
        require_time(value, "field x")


@pytest.mark.parametrize("text", [
    "2026-11-31T06:00:00.123456Z",  # no 31 November, in the written form
    "2026-13-01T06:00:00Z",  # no month 13
    "2026-11-25T24:00:00.5Z",  # no hour 24
    "2025-02-29T00:00:00.000000Z",  # not a leap year
    "2026-11-25T06:00:60.000000Z",  # no leap seconds
])
def test_the_form_with_no_such_moment(text: str) -> None:
    assert parse_time(text) is None
    with pytest.raises(FormatError, match=rf"^field x is not a valid date and time: '{text}'$"):
        require_time(text, "field x")
