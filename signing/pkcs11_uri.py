"""RFC 7512 `pkcs11:` URIs: the part of the syntax gamsa's token signer uses.

Parsing is pure (no PKCS#11 library is loaded), so a config naming a token key is
checked when it is read, on a host without python-pkcs11 too.

    pkcs11:token=gamsa;object=agent-key;type=private
        ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/gamsa/pin

Path attributes: `token` (label), `serial`, `object` (label), `id` (bytes,
percent-encoded), `type` (`private`, or absent). Query attributes: `module-path`
(required: the PKCS#11 library to load), `pin-source` (required: `file:PATH` or an
absolute path to a file holding the user PIN). `pin-value` is refused: a PIN written
into a URI ends up in shell history, configs and log lines. Any other attribute is
refused rather than ignored, so a key is never chosen by fewer attributes than the
operator wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from signing.errors import UsageError

SCHEME = "pkcs11"
_PATH_ATTRIBUTES = ("token", "serial", "object", "id", "type")
_QUERY_ATTRIBUTES = ("module-path", "pin-source")


@dataclass(frozen=True)
class Pkcs11Uri:
    """What a `pkcs11:` URI names: a token, a key on it, the module and the PIN file."""

    token: str
    serial: str
    object: str
    id: bytes
    module_path: str
    pin_source: str  # a path to the PIN file (the `file:` prefix removed)
    text: str  # the URI as written, for messages (it can hold no PIN: pin-value is refused)

    def __str__(self) -> str:
        return self.text


def redact(uri: str) -> str:
    """`uri` with any `pin-value` query attribute's value hidden, for messages."""
    head, sep, query = uri.partition("?")
    if not sep:
        return uri
    parts = [("pin-value=***" if p.split("=", 1)[0].strip().lower() == "pin-value" else p)
             for p in query.split("&")]
    return head + "?" + "&".join(parts)


def _text(raw: bytes, name: str, shown: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"signer {shown!r}: attribute {name} is not UTF-8") from None


def _attributes(part: str, sep: str, known: tuple[str, ...], where: str,
                shown: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for item in part.split(sep):
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        if name == "pin-value":
            raise UsageError(f"signer {shown!r}: pin-value is not accepted",
                             hint="put the PIN in a file readable only by gamsa and name "
                                  "it with pin-source=file:/PATH")
        if not eq:
            raise UsageError(f"signer {shown!r}: {where} attribute {name!r} has no value")
        if name not in known:
            raise UsageError(f"signer {shown!r}: unsupported {where} attribute {name!r}",
                             hint=f"supported: {', '.join(known)}")
        if name in found:
            raise UsageError(f"signer {shown!r}: attribute {name} is given twice")
        found[name] = unquote_to_bytes(value)
    return found


def parse_uri(uri: str) -> Pkcs11Uri:
    """Parse a `pkcs11:` URI (RFC 7512); UsageError naming the URI (never a PIN)."""
    shown = redact(uri)
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme.lower() != SCHEME:
        raise UsageError(f"signer {shown!r} is not a pkcs11: URI")
    path, _, query = rest.partition("?")
    attrs = _attributes(path, ";", _PATH_ATTRIBUTES, "path", shown)
    attrs.update(_attributes(query, "&", _QUERY_ATTRIBUTES, "query", shown))
    kind = _text(attrs.get("type", b"private"), "type", shown)
    if kind != "private":
        raise UsageError(f"signer {shown!r}: type={kind} cannot sign",
                         hint="name the private key: type=private (or leave type out)")
    token = _text(attrs.get("token", b""), "token", shown)
    serial = _text(attrs.get("serial", b""), "serial", shown)
    if not token and not serial:
        raise UsageError(f"signer {shown!r}: no token named", hint="add token=LABEL")
    label = _text(attrs.get("object", b""), "object", shown)
    key_id = attrs.get("id", b"")
    if not label and not key_id:
        raise UsageError(f"signer {shown!r}: no key named", hint="add object=LABEL")
    module = _text(attrs.get("module-path", b""), "module-path", shown)
    if not module.startswith("/"):
        raise UsageError(f"signer {shown!r}: module-path must be an absolute path",
                         hint="add ?module-path=/usr/lib/softhsm/libsofthsm2.so (your "
                              "token's PKCS#11 library)")
    pin = _text(attrs.get("pin-source", b""), "pin-source", shown)
    if pin.startswith("file:"):
        pin = pin[len("file:"):]
        if pin.startswith("//"):  # file:///abs
            pin = pin[2:]
    if not pin.startswith("/"):
        raise UsageError(f"signer {shown!r}: pin-source must name a PIN file by absolute "
                         "path", hint="add &pin-source=file:/etc/gamsa/pin")
    return Pkcs11Uri(token=token, serial=serial, object=label, id=key_id,
                     module_path=module, pin_source=pin, text=shown)
