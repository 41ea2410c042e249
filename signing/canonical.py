"""RFC 8785 (JCS) canonical JSON for gamsa records.

Our value domain is smaller than JSON's: no floats (JCS number rules are a trap),
integers within +/-(2**53 - 1) so every JCS implementation agrees on them, strings
that are valid Unicode, objects with string keys. Within that domain JCS is plain
JSON with no whitespace, keys sorted by their UTF-16 code units, and the minimal
string escapes.

Two encoders produce the same bytes: an exact pure-Python one (the reference; what
a regulator runs with nothing but the stdlib) and a fast one on msgspec, used when
msgspec is installed. msgspec sorts keys by code point, which equals UTF-16 order
unless a key holds a character outside the BMP; such values go to the exact
encoder. A hypothesis test proves both equal to the `rfc8785` package.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from signing.errors import CanonicalError

MAX_SAFE_INT = 2**53 - 1

_LONG_DIGITS = re.compile(rb"[0-9]{16}")
_ASTRAL_LEAD = re.compile(rb"[\xf0-\xf4]")


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _encode_exact(value: Any, out: list[str], path: str) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif type(value) is int:
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise CanonicalError(f"integer out of the safe range at {path}: {value}",
                                 hint="store large numbers as strings")
        out.append(str(value))
    elif type(value) is str:
        out.append(json.dumps(value, ensure_ascii=False))
    elif type(value) is list or type(value) is tuple:
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode_exact(item, out, f"{path}[{i}]")
        out.append("]")
    elif type(value) is dict:
        for key in value:
            if type(key) is not str:
                raise CanonicalError(f"object key is not a string at {path}: {key!r}")
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_key)):
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _encode_exact(value[key], out, f"{path}.{key}")
        out.append("}")
    elif isinstance(value, float):
        raise CanonicalError(f"float at {path}: {value!r}",
                             hint="records carry integers or strings, never floats")
    else:
        raise CanonicalError(f"unsupported type {type(value).__name__} at {path}")


def canonical_bytes_exact(value: Any) -> bytes:
    """Encode `value` by RFC 8785 in pure Python (the reference encoder)."""
    out: list[str] = []
    _encode_exact(value, out, "$")
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError("string is not valid Unicode (lone surrogate)") from exc


def _reject_float(literal: str) -> Any:
    raise CanonicalError(f"float literal {literal!r}",
                         hint="records carry integers or strings, never floats")


def _check_ints(value: Any, path: str = "$") -> None:
    if type(value) is int:
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise CanonicalError(f"integer out of the safe range at {path}: {value}",
                                 hint="store large numbers as strings")
    elif type(value) is list:
        for i, item in enumerate(value):
            _check_ints(item, f"{path}[{i}]")
    elif type(value) is dict:
        for key, item in value.items():
            _check_ints(item, f"{path}.{key}")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise CanonicalError("duplicate object key")
    return result


def _parse_stdlib(line: bytes) -> Any:
    try:
        return json.loads(line, parse_float=_reject_float, parse_constant=_reject_float,
                          object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, CanonicalError):
            raise
        raise CanonicalError(f"not JSON: {exc}") from exc


try:
    import msgspec
except ImportError:  # pragma: no cover - exercised by the stdlib-only test
    msgspec = None  # type: ignore[assignment]


def _make_fast() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]] | None:
    if msgspec is None:
        return None
    encoder = msgspec.json.Encoder(order="sorted")
    decoder = msgspec.json.Decoder(float_hook=_reject_float)

    def encode(value: Any) -> bytes:
        try:
            data = encoder.encode(value)
        except (TypeError, UnicodeEncodeError, OverflowError):
            return canonical_bytes_exact(value)  # raises the precise CanonicalError
        if not data.isascii() and _ASTRAL_LEAD.search(data):
            return canonical_bytes_exact(value)
        # msgspec also encodes floats, bytes, sets, datetimes...; decoding the output
        # (floats refused by the hook) and comparing with the input is the cheapest
        # exact proof that the value was inside our domain. A mismatch (bytes, NaN,
        # a set) goes to the exact encoder, which names the offending value.
        decoded = decoder.decode(data)
        if decoded != value:
            return canonical_bytes_exact(value)
        if _LONG_DIGITS.search(data):
            _check_ints(decoded)
        return data

    def parse(line: bytes) -> Any:
        try:
            return decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise CanonicalError(f"not JSON: {exc}") from exc

    return encode, parse


_FAST = _make_fast()


def canonical_bytes(value: Any) -> bytes:
    """Encode `value` by RFC 8785; raise `CanonicalError` outside our value domain."""
    if _FAST is not None:
        return _FAST[0](value)
    return canonical_bytes_exact(value)


def parse_canonical(line: bytes) -> Any:
    """Parse one JSON text and prove it is the canonical encoding of its value.

    Raises `CanonicalError` naming what is wrong: not JSON, a float, an unsafe
    integer, a duplicate key, or bytes that differ from the canonical form.
    """
    if _FAST is not None:
        value = _FAST[1](line)
        if canonical_bytes(value) != line:
            raise CanonicalError("not canonical JSON (RFC 8785)")
        # Duplicate keys collapse silently in msgspec; the re-encode above catches
        # them because the canonical form of the collapsed object is shorter.
        return value
    value = _parse_stdlib(line)
    if canonical_bytes_exact(value) != line:
        raise CanonicalError("not canonical JSON (RFC 8785)")
    return value


def using_fast_encoder() -> bool:
    """True when msgspec is present and the fast path is in use."""
    return _FAST is not None
