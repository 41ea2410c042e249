"""RFC 8785 canonical JSON: both encoders equal the `rfc8785` package on our domain."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from signing import canonical
from signing.canonical import (
    MAX_SAFE_INT,
    canonical_bytes,
    canonical_bytes_exact,
    parse_canonical,
)
from signing.errors import CanonicalError

# Our value domain: no floats, safe integers, any valid Unicode (astral included).
text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
scalars = st.none() | st.booleans() | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT) | text
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=1500, deadline=None)
@given(values)
def test_fast_and_exact_equal_rfc8785(value: Any) -> None:
    expected = rfc8785.dumps(value)
    assert canonical_bytes_exact(value) == expected
    assert canonical_bytes(value) == expected
    assert parse_canonical(expected) == value


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(text, scalars, min_size=2, max_size=6))
def test_reordered_or_spaced_objects_are_rejected(value: dict[str, Any]) -> None:
    canonical_form = canonical_bytes(value)
    reversed_form = json.dumps(dict(reversed(list(value.items()))), ensure_ascii=False,
                               separators=(",", ":")).encode()
    spaced = json.dumps(value, ensure_ascii=False, sort_keys=True).encode()
    for other in (reversed_form, spaced):
        if other != canonical_form:
            with pytest.raises(CanonicalError):
                parse_canonical(other)


def test_utf16_key_order_differs_from_code_point_order() -> None:
    # U+E000 sorts after U+1F600 in UTF-16 (surrogates D83D...) but before it by code point.
    value = {"\ue000": 1, "\U0001f600": 2}
    assert canonical_bytes(value) == rfc8785.dumps(value)
    assert canonical_bytes(value).index("\U0001f600".encode()) < canonical_bytes(value).index(
        "\ue000".encode())


@pytest.mark.parametrize("bad", [1.5, 0.0, float("inf"), {"a": [1, 2.5]}, 2**53, -(2**53),
                                 {1: "x"}, "\ud800", b"bytes", {"a": {1, 2}}])
@pytest.mark.parametrize("encoder", [canonical_bytes, canonical_bytes_exact])
def test_values_outside_the_domain_are_rejected(encoder: Any, bad: Any) -> None:
    with pytest.raises(CanonicalError):
        encoder(bad)


@pytest.mark.parametrize("line", [
    b'{"a":1,"a":1}',  # duplicate key
    b'{"b":1,"a":2}',  # key order
    b'{"a": 1}',  # whitespace
    b'{"a":1.0}',  # float
    b'{"a":1e3}',
    b"[9007199254740993]",  # unsafe integer
    b'"\\u00e9"',  # needless escape
    b'"\\/"',
    b'"\\u001F"',  # upper-case hex
    b"[1,]",
    b"",
    b"\xff",
    b"01",
])
def test_non_canonical_lines_are_rejected(line: bytes) -> None:
    with pytest.raises(CanonicalError):
        parse_canonical(line)


def test_stdlib_only_path_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """A regulator without msgspec gets the same bytes and the same checks."""
    monkeypatch.setattr(canonical, "_FAST", None)
    value = {"b": [1, None, True, "é\n"], "a": {"\U0001f600": 1, "\ue000": 2}}
    assert canonical.canonical_bytes(value) == rfc8785.dumps(value)
    assert canonical.parse_canonical(rfc8785.dumps(value)) == value
    for line in (b'{"a":1,"a":1}', b'{"a":1.5}', b'{"b":1,"a":2}'):
        with pytest.raises(CanonicalError):
            canonical.parse_canonical(line)


@settings(max_examples=300, deadline=None)
@given(st.lists(values, max_size=20))
def test_batch_apis_equal_rfc8785(batch: list[Any]) -> None:
    expected = [rfc8785.dumps(v) for v in batch]
    assert canonical.canonical_lines(batch) == expected
    parsed, errors = canonical.parse_canonical_lines(expected)
    assert errors == {} and parsed == batch


def test_batch_rejects_what_single_rejects() -> None:
    with pytest.raises(CanonicalError):
        canonical.canonical_lines([{"a": 1}, {"b": 1.5}])
    with pytest.raises(CanonicalError):
        canonical.canonical_lines([{"a": 1}, {"b": 2**60}])
    lines = [b'{"a":1}', b'{"b":1,"a":2}', b"1,2", b'{"a":1.0}', b"[9007199254740993]", b'"x"']
    parsed, errors = canonical.parse_canonical_lines(lines)
    assert sorted(errors) == [1, 2, 3, 4]
    assert parsed[0] == {"a": 1} and parsed[5] == "x" and parsed[1] is None


@pytest.mark.parametrize("lines, bad", [
    ([b"[1", b"2]"], [0, 1]),  # two lines that only form a value together
    ([b'"a', b'b"'], [0, 1]),
    ([b" 1", b"2"], [0]),
    ([b"1", b""], [1]),
    ([b"1,2", b"3"], [0]),
])
def test_batch_line_boundaries_are_line_boundaries(lines: list[bytes], bad: list[int]) -> None:
    _, errors = canonical.parse_canonical_lines(lines)
    assert sorted(errors) == bad


records = st.fixed_dictionaries({
    "v": st.integers(-MAX_SAFE_INT, MAX_SAFE_INT), "collector": text, "type": text,
    "key": text, "host": text, "observed_at": text,
    "data": st.dictionaries(text, values, max_size=5)})


@settings(max_examples=150, deadline=None)
@given(st.lists(records, min_size=1, max_size=10))
def test_record_fast_path_accepts_exactly_what_the_general_path_does(
        batch: list[dict[str, Any]]) -> None:
    lines = [rfc8785.dumps(r) for r in batch]
    hosts = canonical.canonical_record_hosts(lines)
    if any(b"\xf0" <= bytes([c]) <= b"\xf4" for line in lines for c in line):
        assert hosts in (None, {r["host"] for r in batch})  # astral: may defer to exact
    else:
        assert hosts == {r["host"] for r in batch}
    # Any line the general path refuses makes the record path give up (None).
    spaced = [*lines[:-1], lines[-1].replace(b'"v":', b'"v": ')]
    assert canonical.parse_canonical_lines(spaced)[1] != {}
    assert canonical.canonical_record_hosts(spaced) is None


@pytest.mark.parametrize("line", [
    b'{"collector":"c","data":{"f":1.5},"host":"h","key":"k","observed_at":"t","type":"t","v":1}',
    b'{"collector":"c","data":{"f":9007199254740993},"host":"h","key":"k","observed_at":"t",'
    b'"type":"t","v":1}',
    b'{"collector":"c","data":{},"extra":1,"host":"h","key":"k","observed_at":"t","type":"t",'
    b'"v":1}',  # canonical, but not the record shape: the general path decides
    b'{"collector":"c","data":{},"host":"h","key":"k","observed_at":"t","type":"t","v":1,'
    b'"v":2}',
    b'{"collector":"c","data":{},"host":"h","key":"k","observed_at":"t","type":"t","v":true}',
    b'{"collector":"c","data":{"s":"\\u0041"},"host":"h","key":"k","observed_at":"t",'
    b'"type":"t","v":1}',
    b'{"collector":"c","data":{},"host":"h","key":"k","observed_at":"t","type":"t"}',
])
def test_record_fast_path_gives_up_on_anything_unusual(line: bytes) -> None:
    good = (b'{"collector":"c","data":{},"host":"h","key":"k","observed_at":"t",'
            b'"type":"t","v":1}')
    assert canonical.canonical_record_hosts([good]) == {"h"}
    assert canonical.canonical_record_hosts([good, line]) is None


def test_record_fast_path_keeps_long_digit_strings() -> None:
    # File hashes hold runs of 16+ digits; only integers must be bounded.
    line = (b'{"collector":"files","data":{"sha256":"12345678901234567890abc"},"host":"h",'
            b'"key":"k","observed_at":"t","type":"t","v":1}')
    assert canonical.canonical_record_hosts([line]) == {"h"}
