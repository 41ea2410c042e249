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

import gc
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Union

from signing.errors import CanonicalError

MAX_SAFE_INT = 2**53 - 1

_ASTRAL_LEAD = re.compile(rb"[\xf0-\xf4]")
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0000000000")
_SIXTEEN_ZEROS = b"0" * 16


def _has_long_digit_run(data: bytes) -> bool:
    """True when `data` holds 16 digits in a row (a possibly unsafe integer). Digits
    become "0" and a plain substring search finds the run, all in C: 1 µs for a
    manifest where the regex `[0-9]{16}` took 13 µs."""
    return _SIXTEEN_ZEROS in data.translate(_DIGITS_TO_ZERO)


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


def _domain_struct(depth: int) -> Any:
    """Our value domain as a msgspec Struct holding a batch, nested `depth` levels.

    Deeper values fail validation and take the exact path. Wrapping the type in a
    Struct matters: msgspec looks a plain typing object up by hashing it, and this
    nested Union costs far more to hash than to validate a batch against.
    """
    safe_int = Annotated[int, msgspec.Meta(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT)]
    nested: Any = Union[None, bool, safe_int, str]  # noqa: UP007 - a runtime type object
    for _ in range(depth):
        nested = Union[None, bool, safe_int, str, list[nested], dict[str, nested]]  # noqa: UP007
    return msgspec.defstruct("CanonicalBatch", [("items", list[nested])])


_BATCH_TYPE = _domain_struct(8) if msgspec is not None else None
_ENCODER = msgspec.json.Encoder(order="sorted") if msgspec is not None else None
_DECODER = msgspec.json.Decoder(float_hook=_reject_float) if msgspec is not None else None


def _make_fast() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]] | None:
    if msgspec is None or _ENCODER is None or _DECODER is None:
        return None
    encoder = _ENCODER
    decoder = _DECODER

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
        if _has_long_digit_run(data):
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


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC around bulk work on JSON values (which have no cycles).

    A batch of thousands of decoded containers stays alive until it is compared; the
    GC would rescan them again and again. Wrap a whole loop over batches, not one
    batch: re-enabling after each batch triggers a collection over the live batch.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def canonical_lines(values: Sequence[Any]) -> list[bytes]:
    """`[canonical_bytes(v) for v in values]`, with the domain checks done per batch."""
    if _FAST is None or msgspec is None:
        return [canonical_bytes_exact(v) for v in values]
    encode = _ENCODER.encode
    try:
        lines = [encode(v) for v in values]
    except (TypeError, UnicodeEncodeError, OverflowError):
        return [canonical_bytes(v) for v in values]
    # msgspec.convert against a type that admits only our domain (no floats, no bytes,
    # safe integers, string keys) checks every value in C; the comparison then catches
    # what convert coerces silently (a set or tuple becomes a list).
    try:
        same = msgspec.convert({"items": values}, _BATCH_TYPE, strict=True).items == values
    except msgspec.ValidationError:
        same = False
    if not same or (not b"".join(lines).isascii()
                    and any(_ASTRAL_LEAD.search(line) for line in lines)):
        return [canonical_bytes(v) for v in values]  # the exact per-value path decides
    return lines


def parse_canonical_lines(lines: Sequence[bytes]) -> tuple[list[Any], dict[int, str]]:
    """Parse many lines, proving each canonical: (values, {index: error message}).

    A value is None where its line failed. Equivalent to `parse_canonical` per line,
    but one decode for the batch; any doubt sends the batch to the per-line path.
    """
    if _FAST is not None and msgspec is not None and lines:
        blob = b"[" + b",".join(lines) + b"]"
        try:
            values = _DECODER.decode(blob)
        except (msgspec.DecodeError, CanonicalError):
            values = None
        # One encode of the whole list checks every line: with as many values as lines
        # (no line empty or holding two values), element boundaries are the line
        # boundaries, so equal bytes mean each line is its value's canonical form.
        if (values is not None and len(values) == len(lines)
                and not _has_long_digit_run(blob)
                and (blob.isascii() or not _ASTRAL_LEAD.search(blob))
                and _ENCODER.encode(values) == blob):
            return values, {}
    parsed: list[Any] = []
    errors: dict[int, str] = {}
    for index, line in enumerate(lines):
        try:
            parsed.append(parse_canonical(line))
        except CanonicalError as exc:
            parsed.append(None)
            errors[index] = exc.message
    return parsed, errors


def _record_struct() -> Any:
    """A record (docs/FORMAT.md §2) as a msgspec Struct, fields in canonical order.

    Decoding a batch into these allocates one object per record instead of a dict
    and its seven keys, and encoding it back needs no key sort; `data` is typed as
    our domain (safe integers checked in C, so no digit-run scan, which a batch of
    file hashes would trip and send to the per-line path). Anything else (an extra
    or missing field, a wrong type, data nested deeper than 8) fails to decode or to
    re-encode to the same bytes, and goes to the general path.
    """
    safe_int = Annotated[int, msgspec.Meta(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT)]
    nested: Any = Union[None, bool, safe_int, str]  # noqa: UP007 - a runtime type object
    for _ in range(7):
        nested = Union[None, bool, safe_int, str, list[nested], dict[str, nested]]  # noqa: UP007
    fields = [("collector", str), ("data", dict[str, nested]), ("host", str), ("key", str),
              ("observed_at", str), ("type", str), ("v", safe_int)]
    assert [f for f, _ in fields] == sorted(f for f, _ in fields)
    return msgspec.defstruct("Record", fields, gc=False)


_RECORDS_DECODER = (msgspec.json.Decoder(list.__class_getitem__(_record_struct()),
                                         float_hook=_reject_float)
                    if msgspec is not None else None)


def canonical_record_hosts(lines: Sequence[bytes]) -> set[str] | None:
    """The distinct `host` values of `lines` when every line is the canonical JSON of a
    record of exactly the seven record fields (docs/FORMAT.md §2); else None (some
    line is not, or is of another shape: use `parse_canonical_lines`).

    The same proof as `parse_canonical_lines`' batch path: one decode, one encode of
    the whole batch, equal bytes.
    """
    if _RECORDS_DECODER is None or _ENCODER is None or not lines:
        return None
    blob = b"[" + b",".join(lines) + b"]"
    try:
        records = _RECORDS_DECODER.decode(blob)  # ValidationError is a DecodeError
    except (msgspec.DecodeError, CanonicalError):
        return None
    if (len(records) != len(lines) or (not blob.isascii() and _ASTRAL_LEAD.search(blob))
            or _ENCODER.encode(records) != blob):
        return None
    return {record.host for record in records}


def using_fast_encoder() -> bool:
    """True when msgspec is present and the fast path is in use."""
    return _FAST is not None
