"""The `pkcs11:` signer backend: an Ed25519 key that never leaves a PKCS#11 token.

`open_signer` logs in to the token a `pkcs11:` URI names (signing.pkcs11_uri), finds
the private key and its public key object, and signs with CKM_EDDSA: the signature
bytes are the same Ed25519 signature a key file gives, so nothing in the bundle
format changes. `open_or_create_signer` also generates the key pair on the token when
no key of that label exists (never replacing one), non-extractable and sensitive.

python-pkcs11 is imported only here, only when a `pkcs11:` URI is used (the extra
`gamsa[pkcs11]`); signing/ imports and verifies without it. Every error names the
URI as written, which cannot hold a PIN (pin-value is refused).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from signing.errors import GamsaError, UsageError
from signing.keys import PublicKey
from signing.pkcs11_uri import Pkcs11Uri, parse_uri

# Ed25519 in CKA_EC_PARAMS: the DER OID 1.3.101.112, or the PrintableString
# "edwards25519" that PKCS#11 3.0 also allows.
_ED25519_OID_DER = bytes.fromhex("06032b6570")
_ED25519_NAME_DER = b"\x13\x0cedwards25519"
MAX_PIN_FILE_BYTES = 4096
_INSTALL_HINT = "install the PKCS#11 extra: pip install 'gamsa[pkcs11]'"
# Open sessions of this process by ((module, token label, serial), read-write).
_SESSIONS: dict[tuple[tuple[str, str, str], bool], Any] = {}


def _library() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise UsageError("the pkcs11: signer needs python-pkcs11, which is not installed",
                         hint=_INSTALL_HINT) from None
    return pkcs11


def _read_pin(uri: Pkcs11Uri) -> str:
    path = uri.pin_source
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"signer {uri}: PIN file {path} does not exist") from None
    except OSError as exc:
        raise GamsaError(f"signer {uri}: cannot open PIN file {path}: "
                         f"{exc.strerror or exc}") from None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        data = os.read(fd, MAX_PIN_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if mode & 0o077:
        raise UsageError(f"signer {uri}: PIN file {path} is accessible by group or others "
                         f"(mode {mode:04o})", hint=f"run: chmod 600 {path}")
    if len(data) > MAX_PIN_FILE_BYTES:
        raise UsageError(f"signer {uri}: PIN file {path} is too large to hold a PIN")
    try:
        pin = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise UsageError(f"signer {uri}: PIN file {path} is not UTF-8 text") from None
    if not pin:
        raise UsageError(f"signer {uri}: PIN file {path} is empty")
    return pin


def _raw_public(point: bytes, uri: Pkcs11Uri) -> bytes:
    """The 32 raw bytes of an Ed25519 CKA_EC_POINT (a DER OCTET STRING, or raw)."""
    if len(point) == 34 and point[:2] == b"\x04\x20":
        return point[2:]
    if len(point) == 32:
        return point
    raise UsageError(f"signer {uri}: the key's public point is not an Ed25519 key "
                     f"({len(point)} bytes)")


def _open_session(uri: Pkcs11Uri, pkcs11: Any, pin: str, rw: bool) -> Any:
    exc_mod = pkcs11.exceptions
    if not os.path.exists(uri.module_path):
        raise UsageError(f"signer {uri}: PKCS#11 module {uri.module_path} does not exist",
                         hint="install the token's library or fix module-path")
    try:
        lib = pkcs11.lib(uri.module_path)
    except exc_mod.PKCS11Error as exc:
        raise UsageError(f"signer {uri}: cannot load PKCS#11 module {uri.module_path}: "
                         f"{exc}") from None
    selector = {k: v for k, v in (("token_label", uri.token), ("token_serial",
                                  uri.serial.encode())) if v}
    try:
        token = lib.get_token(**selector)
    except exc_mod.NoSuchToken:
        raise UsageError(f"signer {uri}: no such token in {uri.module_path}",
                         hint="list the tokens with softhsm2-util --show-slots or your "
                              "HSM's own tool") from None
    except exc_mod.MultipleTokensReturned:
        raise UsageError(f"signer {uri}: more than one token matches",
                         hint="add serial= to the URI") from None
    place = (uri.module_path, uri.token, uri.serial)
    if (place, rw) in _SESSIONS:
        return _SESSIONS[(place, rw)]
    # Login is per process and token, not per session: a second session (the daemon
    # seals and ships many times; an org key beside it) opens without logging in again.
    logged_in = any(p == place for p, _ in _SESSIONS)
    try:
        try:
            session = token.open(rw=rw, user_pin=None if logged_in else pin)
        except exc_mod.UserAlreadyLoggedIn:
            session = token.open(rw=rw)
    except (exc_mod.PinIncorrect, exc_mod.PinInvalid, exc_mod.PinLenRange):
        raise UsageError(f"signer {uri}: the token refused the PIN in {uri.pin_source}",
                         hint="a wrong PIN; tokens lock after a few tries") from None
    except exc_mod.PinLocked:
        raise UsageError(f"signer {uri}: the token's user PIN is locked") from None
    except exc_mod.PKCS11Error as exc:
        raise GamsaError(f"signer {uri}: cannot open a session: {type(exc).__name__} "
                         f"{exc}".rstrip()) from None
    _SESSIONS[(place, rw)] = session
    return session


def _key_template(uri: Pkcs11Uri, pkcs11: Any, object_class: Any) -> dict[Any, Any]:
    attr = pkcs11.Attribute
    template: dict[Any, Any] = {attr.CLASS: object_class}
    if uri.object:
        template[attr.LABEL] = uri.object
    if uri.id:
        template[attr.ID] = uri.id
    return template


def _find(session: Any, uri: Pkcs11Uri, pkcs11: Any, object_class: Any, what: str) -> Any:
    found = list(session.get_objects(_key_template(uri, pkcs11, object_class)))
    if len(found) > 1:
        raise UsageError(f"signer {uri}: {len(found)} {what} objects match",
                         hint="add id= to the URI to pick one")
    return found[0] if found else None


@dataclass
class Pkcs11Signer:
    """A `Signer` whose Ed25519 private key stays on a PKCS#11 token."""

    uri: Pkcs11Uri
    session: Any = field(repr=False)
    private: Any = field(repr=False)
    public: PublicKey
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.key_id = self.public.key_id

    def sign(self, data: bytes) -> bytes:
        pkcs11 = _library()
        try:
            signature: bytes = self.private.sign(data, mechanism=pkcs11.Mechanism.EDDSA)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise GamsaError(f"signer {self.uri}: the token failed to sign: "
                             f"{type(exc).__name__} {exc}".rstrip()) from None
        return signature

    def public_key(self) -> PublicKey:
        return self.public


def _check_ed25519(key: Any, uri: Pkcs11Uri, pkcs11: Any) -> None:
    attr = pkcs11.Attribute
    if key[attr.KEY_TYPE] != pkcs11.KeyType.EC_EDWARDS:
        raise UsageError(f"signer {uri}: the key is not an Ed25519 key "
                         f"(key type {key[attr.KEY_TYPE].name})")
    params = bytes(key[attr.EC_PARAMS])
    if params not in (_ED25519_OID_DER, _ED25519_NAME_DER):
        raise UsageError(f"signer {uri}: the key is an Edwards key but not Ed25519 "
                         f"(EC_PARAMS {params.hex()})")


def _signer(session: Any, uri: Pkcs11Uri, pkcs11: Any, private: Any) -> Pkcs11Signer:
    public_obj = _find(session, uri, pkcs11, pkcs11.ObjectClass.PUBLIC_KEY, "public key")
    if public_obj is None:
        raise UsageError(f"signer {uri}: the token has the private key but no public key "
                         "object of the same label/id")
    _check_ed25519(private, uri, pkcs11)
    _check_ed25519(public_obj, uri, pkcs11)
    raw = _raw_public(bytes(public_obj[pkcs11.Attribute.EC_POINT]), uri)
    public = PublicKey.from_key(Ed25519PublicKey.from_public_bytes(raw))
    signer = Pkcs11Signer(uri, session, private, public)
    # One signature at open: a public object that is not the private key's half would
    # otherwise seal bundles that no verifier accepts.
    challenge = b"gamsa pkcs11 key check " + hashlib.sha256(raw).digest()
    if not public.verify(signer.sign(challenge), challenge):
        raise UsageError(f"signer {uri}: the token's public key object does not match its "
                         "private key (a signature did not verify)")
    return signer


def _open(location: str, create: bool) -> tuple[Pkcs11Signer, bool]:
    uri = parse_uri(f"pkcs11:{location}")
    pin = _read_pin(uri)
    pkcs11 = _library()
    session = _open_session(uri, pkcs11, pin, rw=create)
    private = _find(session, uri, pkcs11, pkcs11.ObjectClass.PRIVATE_KEY, "private key")
    if private is not None:
        return _signer(session, uri, pkcs11, private), False
    if not create:
        raise UsageError(f"signer {uri}: no private key with this label/id on the token",
                         hint="make it with gamsa keys init ([keys] agent) or "
                              "gamsa org init --key URI")
    if not uri.object:
        raise UsageError(f"signer {uri}: name the new key with object=LABEL")
    _generate(session, uri, pkcs11)
    private = _find(session, uri, pkcs11, pkcs11.ObjectClass.PRIVATE_KEY, "private key")
    if private is None:  # pragma: no cover - a token that loses what it just stored
        raise GamsaError(f"signer {uri}: the token did not keep the key it generated")
    return _signer(session, uri, pkcs11, private), True


def _generate(session: Any, uri: Pkcs11Uri, pkcs11: Any) -> None:
    attr = pkcs11.Attribute
    key_id = uri.id or hashlib.sha256(uri.object.encode()).digest()[:8]
    try:
        params = session.create_domain_parameters(
            pkcs11.KeyType.EC_EDWARDS, {attr.EC_PARAMS: _ED25519_OID_DER}, local=True)
        params.generate_keypair(
            store=True, label=uri.object, id=key_id,
            public_template={attr.TOKEN: True, attr.VERIFY: True},
            private_template={attr.TOKEN: True, attr.PRIVATE: True, attr.SIGN: True,
                              attr.SENSITIVE: True, attr.EXTRACTABLE: False})
    except pkcs11.exceptions.PKCS11Error as exc:
        raise UsageError(f"signer {uri}: the token cannot generate an Ed25519 key "
                         f"(CKM_EC_EDWARDS_KEY_PAIR_GEN): {type(exc).__name__} {exc}".rstrip(),
                         hint="gamsa signs with Ed25519 only; use a token that supports "
                              "CKK_EC_EDWARDS (SoftHSM2 2.6+)") from None


def open_signer(location: str) -> Pkcs11Signer:
    """The `pkcs11:` backend of `signing.signer.load_signer`: an existing token key."""
    return _open(location, create=False)[0]


def open_or_create_signer(location: str) -> tuple[Pkcs11Signer, bool]:
    """The token key `location` names, generated on the token if absent; (signer, created)."""
    return _open(location, create=True)
