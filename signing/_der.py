"""Just enough DER (X.690) to read and write RFC 3161 messages: no schema, no BER.

A reader of tag-length-value items and the few primitive types RFC 3161 and CMS
use (INTEGER, OBJECT IDENTIFIER, GeneralizedTime), and encoders for a request.
Anything outside strict DER (indefinite lengths, long-form tags, overlong
lengths) is refused with a `FormatError` naming what was being read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from signing.errors import FormatError

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
BOOLEAN = 0x01
OCTET_STRING = 0x04
NULL = 0x05
OID = 0x06
GENERALIZED_TIME = 0x18


@dataclass(frozen=True)
class Item:
    """One DER item: its identifier octet, its content, and its whole encoding."""

    tag: int
    content: bytes
    raw: bytes

    def children(self, what: str) -> list[Item]:
        """The items of a constructed item's content (SEQUENCE, SET, [n])."""
        if not self.tag & 0x20:
            raise FormatError(f"{what}: expected a constructed item, got tag {self.tag:#04x}")
        return read_all(self.content, what)

    def expect(self, tag: int, what: str) -> Item:
        if self.tag != tag:
            raise FormatError(f"{what}: expected tag {tag:#04x}, got {self.tag:#04x}")
        return self


def read_one(data: bytes, pos: int, what: str) -> tuple[Item, int]:
    """The item starting at `pos`, and the position after it."""
    if pos + 2 > len(data):
        raise FormatError(f"{what}: truncated DER")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise FormatError(f"{what}: long-form DER tags are not used here")
    first = data[pos + 1]
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise FormatError(f"{what}: not DER (indefinite or oversized length)")
        if start + count > len(data):
            raise FormatError(f"{what}: truncated DER length")
        length = int.from_bytes(data[start:start + count], "big")
        if length < 0x80 or data[start] == 0:
            raise FormatError(f"{what}: not DER (length not in its shortest form)")
        start += count
    end = start + length
    if end > len(data):
        raise FormatError(f"{what}: truncated DER ({length} bytes announced, "
                          f"{len(data) - start} present)")
    return Item(tag, data[start:end], data[pos:end]), end


def read_all(data: bytes, what: str) -> list[Item]:
    items: list[Item] = []
    pos = 0
    while pos < len(data):
        item, pos = read_one(data, pos, what)
        items.append(item)
    return items


def read_single(data: bytes, what: str) -> Item:
    """Exactly one item filling `data`."""
    item, end = read_one(data, 0, what)
    if end != len(data):
        raise FormatError(f"{what}: {len(data) - end} bytes after the DER item")
    return item


def integer(item: Item, what: str) -> int:
    item.expect(INTEGER, what)
    if not item.content:
        raise FormatError(f"{what}: empty INTEGER")
    return int.from_bytes(item.content, "big", signed=True)


def oid(item: Item, what: str) -> str:
    """An OBJECT IDENTIFIER in dotted form."""
    item.expect(OID, what)
    body = item.content
    if not body or body[-1] & 0x80:
        raise FormatError(f"{what}: malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def generalized_time(item: Item, what: str) -> dt.datetime:
    """`YYYYMMDDHHMMSS[.f...]Z` (RFC 3161 §2.4.2: UTC, `Z`, no trailing zeros)."""
    item.expect(GENERALIZED_TIME, what)
    text = item.content.decode("ascii", "replace")
    base, _, fraction = text.rstrip("Z").partition(".")
    if not text.endswith("Z") or len(base) != 14 or not base.isdigit() or (
            fraction and not fraction.isdigit()):
        raise FormatError(f"{what}: malformed GeneralizedTime {text!r}")
    try:
        when = dt.datetime.strptime(base, "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise FormatError(f"{what}: malformed GeneralizedTime {text!r}") from exc
    if fraction:
        when += dt.timedelta(microseconds=int((fraction + "000000")[:6]))
    return when


# -- encoders (a TimeStampReq is all gamsa writes)

def encode(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        body = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(body)]) + body
    return bytes([tag]) + length + content


def encode_integer(value: int) -> bytes:
    size = max(1, (value.bit_length() + 8) // 8)  # room for the sign bit
    return encode(INTEGER, value.to_bytes(size, "big", signed=True))


def encode_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for value in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        body.extend(reversed(chunk))
    return encode(OID, bytes(body))
