"""Ed25519 keys: each agent's signing key on disk, and the public keys verifiers trust.

A private key is an unencrypted PKCS#8 PEM file, mode 0600 from the moment it
exists, never overwritten, and refused on load when group or others can read or
write it. A key is named by its key id, the hex SHA-256 of the raw 32-byte public
key (the DSSE `keyid`). Public keys travel as SubjectPublicKeyInfo PEM, alone or
inside a key document (`v1/keys/<key_id>.json` in the store).

`Signer` is the seam for keys that never leave a token or a KMS: callers sign
through it, and `FileSigner` is the only implementation today.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.dsa import DSAPrivateKey, DSAPublicKey
from cryptography.hazmat.primitives.asymmetric.ec import (
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey, Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from signing.errors import GamsaError, KeyFileError, SignatureError, os_error

ALGORITHM = "ed25519"
# A PEM Ed25519 key is about 120 bytes; anything far larger is not one of ours.
MAX_KEY_FILE_BYTES = 64 * 1024
KEY_FILE_HINT = "expected an unencrypted PKCS#8 PEM Ed25519 private key"

_KEY_ID = re.compile(r"[0-9a-f]{64}")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _kind(key: object) -> str:
    """A short name for a key's algorithm, for error messages."""
    for types, name in (((RSAPrivateKey, RSAPublicKey), "RSA"),
                        ((EllipticCurvePrivateKey, EllipticCurvePublicKey), "EC"),
                        ((DSAPrivateKey, DSAPublicKey), "DSA"),
                        ((Ed448PrivateKey, Ed448PublicKey), "Ed448")):
        if isinstance(key, types):
            return name
    return type(key).__name__


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key and its key id."""

    key: Ed25519PublicKey
    key_id: str

    def __post_init__(self) -> None:
        if self.key_id != key_id_of(self.key):
            raise ValueError(f"key_id {self.key_id} is not the id of this public key")

    @classmethod
    def from_key(cls, key: Ed25519PublicKey) -> PublicKey:
        return cls(key, key_id_of(key))

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # The key object of `cryptography` does not pickle; its raw 32 bytes do (for
        # the verifier's worker processes and Dask workers).
        return (_public_key_from_raw, (self.key.public_bytes_raw(),))

    def pem(self) -> str:
        """SubjectPublicKeyInfo PEM."""
        return self.key.public_bytes(serialization.Encoding.PEM,
                                     serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when `signature` is this key's Ed25519 signature over `data`."""
        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


def _public_key_from_raw(raw: bytes) -> PublicKey:
    return PublicKey.from_key(Ed25519PublicKey.from_public_bytes(raw))


class Signer(Protocol):
    """Something that signs with an Ed25519 key: a key file today, a token or KMS later."""

    # A read-only property so that frozen implementations (FileSigner) satisfy it.
    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> PublicKey: ...


@dataclass(frozen=True)
class FileSigner:
    """A `Signer` holding its Ed25519 private key in memory (loaded from a key file)."""

    private_key: Ed25519PrivateKey = field(repr=False)
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", key_id_of(self.private_key.public_key()))

    @classmethod
    def from_key(cls, private_key: Ed25519PrivateKey) -> FileSigner:
        return cls(private_key)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def public_key(self) -> PublicKey:
        return PublicKey(self.private_key.public_key(), self.key_id)


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_parent(parent: Path) -> None:
    if parent.is_dir():
        return
    parent.parent.mkdir(parents=True, exist_ok=True)
    try:
        parent.mkdir(mode=0o700)
    except FileExistsError:
        return  # created meanwhile by someone else: theirs, leave its mode alone
    os.chmod(parent, 0o700)  # mkdir's mode is masked by the umask


def save_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write `key` to `path` as unencrypted PKCS#8 PEM, mode 0600; never overwrite.

    The key is written and fsync'd under a temporary name in the same directory and
    then hard-linked to `path`, which fails if `path` exists: a crash leaves either
    no key or a complete one, and an existing key is never replaced.
    """
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    parent = path.parent
    temp = parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        _make_parent(parent)
        fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # creation mode is masked by the umask; make it exact
            view = memoryview(pem)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
        except FileExistsError:
            raise KeyFileError(f"key file exists: {path}",
                               hint="refusing to overwrite a key; move it away first") from None
        _fsync_dir(parent)
    except OSError as exc:  # the machine's fault (no space, no permission): exit 3
        raise os_error(exc, path, "write the private key") from exc
    finally:
        # A leftover temp file would be harmless: the key itself is in place or not.
        with contextlib.suppress(OSError):
            os.unlink(temp)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key, refusing one that group or others can access."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"private key {path} does not exist") from None
    except OSError as exc:  # EACCES, EMFILE: the machine's state, not the input (exit 3)
        raise os_error(exc, path, "open the private key") from exc
    try:
        # fstat on the open descriptor: the mode checked is that of the bytes read.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"private key {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
        if mode & 0o077:
            if data.lstrip().startswith(b"-----BEGIN PUBLIC KEY-----"):
                # Hinting "chmod 600" at a public key given for a private one misleads.
                raise KeyFileError(f"private key {path} is a public key", hint=KEY_FILE_HINT)
            what = "readable" if mode & 0o044 else "writable"
            raise KeyFileError(f"private key {path} is {what} by group or others (mode {mode:04o})",
                               hint=f"run: chmod 600 {path}")
    except OSError as exc:
        raise os_error(exc, path, "read the private key") from exc
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"private key {path} is too large to be a key file",
                           hint=KEY_FILE_HINT)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"private key {path} is encrypted", hint=KEY_FILE_HINT) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"private key {path} is not a PEM private key",
                           hint=KEY_FILE_HINT) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"private key {path} is not an Ed25519 key (found {_kind(key)})",
                           hint=KEY_FILE_HINT)
    return key


def load_or_create_signer(path: Path) -> tuple[FileSigner, bool]:
    """The signer for the key at `path`, creating the key if there is none.

    Returns the signer and whether the key was created by this call.
    """
    if not os.path.lexists(path):
        key = generate_private_key()
        try:
            save_private_key(path, key)
        except GamsaError:
            if not os.path.lexists(path):
                raise
            # Another process created the key between our check and our link: use theirs.
        else:
            return FileSigner.from_key(key), True
    return FileSigner.from_key(load_private_key(path)), False


def open_signer(location: str) -> FileSigner:
    """The `file:` backend of `signing.signer.load_signer`: a key file at `location`."""
    return FileSigner.from_key(load_private_key(Path(location)))


def public_key_from_pem(pem: bytes | str) -> PublicKey:
    """Parse a SubjectPublicKeyInfo PEM Ed25519 public key."""
    data = pem.encode("utf-8") if isinstance(pem, str) else pem
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError("this is a private key, not a public key",
                           hint="a trusted key file holds the public key only")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"public key is not Ed25519 (found {_kind(key)})")
    return PublicKey.from_key(key)


def load_public_key_pem(path: Path) -> PublicKey:
    """Load a trusted public key: a PEM public key file or a key document (JSON)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"trusted key {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read trusted key {path}: {exc.strerror or exc}") from exc
    try:
        if data.lstrip().startswith(b"{"):
            return parse_key_document(data)
        return public_key_from_pem(data)
    except (KeyFileError, SignatureError) as exc:
        raise type(exc)(f"trusted key {path}: {exc.message}", hint=exc.hint) from None


def key_document(public: PublicKey, host: str, created_at: str,
                 enrollment: dict[str, Any] | None = None) -> dict[str, Any]:
    """The key document published at `key_object_name(public.key_id)`."""
    return {
        "key_id": public.key_id,
        "algorithm": ALGORITHM,
        "public_key_pem": public.pem(),
        "host": host,
        "created_at": created_at,
        "enrollment": enrollment,
    }


def parse_key_document(data: bytes) -> PublicKey:
    """The public key of a key document, checked against the document's key_id.

    A malformed document raises KeyFileError; a key_id that is not the id of the
    document's own public key raises SignatureError.
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise KeyFileError(f"key document is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise KeyFileError("key document is not a JSON object")
    for name in ("key_id", "algorithm", "public_key_pem"):
        if not isinstance(doc.get(name), str):
            raise KeyFileError(f"key document field {name} is missing or not a string")
    if doc["algorithm"] != ALGORITHM:
        raise KeyFileError(f"key document field algorithm is {doc['algorithm']!r}, "
                           f"expected {ALGORITHM!r}")
    try:
        public = public_key_from_pem(doc["public_key_pem"])
    except KeyFileError as exc:
        raise KeyFileError(f"key document field public_key_pem: {exc.message}") from None
    if public.key_id != doc["key_id"]:
        raise SignatureError(f"key document key_id {doc['key_id']!r} does not match its "
                             f"public_key_pem (key id {public.key_id})")
    return public


def key_object_name(key_id: str) -> str:
    """The store key of a key document: `v1/keys/<key_id>.json`."""
    # Key ids reach here from envelopes, which anyone can write: never let one
    # become a path outside v1/keys/.
    if not _KEY_ID.fullmatch(key_id):
        raise SignatureError(f"not a key id (64 lower-case hex digits): {key_id[:80]!r}")
    return f"v1/keys/{key_id}.json"


def open_or_create_signer(location: str) -> tuple[FileSigner, bool]:
    """The `file:` backend of `signing.signer.load_or_create_signer`."""
    return load_or_create_signer(Path(location))
