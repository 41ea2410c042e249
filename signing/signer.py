"""Signers by URI: the one way callers obtain a key that signs (agent key, org key).

A signer URI names where the private key lives: `file:PATH` (or a plain path) is a
PKCS#8 PEM key file; `pkcs11:` is a key on a PKCS#11 token (RFC 7512 URI,
signing.pkcs11_uri); `awskms:` is the scheme meant to come next. Each scheme maps to
a module defining `open_signer(location: str) -> Signer` and
`open_or_create_signer(location: str) -> (Signer, created)`, imported only when that
scheme is used, so
optional dependencies (python-pkcs11, boto3) stay optional and callers never change
when a backend is added (securesystemslib's signer registry, in small).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from signing.errors import UsageError
from signing.keys import Signer
from signing.pkcs11_uri import parse_uri, redact

# scheme -> module defining `open_signer(location) -> Signer`.
SIGNER_MODULES = {"file": "signing.keys", "pkcs11": "signing.pkcs11"}
# A URI scheme (RFC 3986) of two characters or more, so "C:" or "./a:b" stay paths.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def split_signer_uri(uri: str) -> tuple[str, str]:
    """(scheme, location) of a signer URI; a plain path is the `file` scheme."""
    match = _SCHEME.match(uri)
    if match is None:
        return "file", uri
    scheme = match.group(1).lower()
    location = uri[match.end():]
    if scheme == "file":
        # file:///abs, file://localhost/abs and file:PATH all name a local path.
        if location.startswith("//"):
            host, _, path = location[2:].partition("/")
            if host not in ("", "localhost"):
                raise UsageError(f"signer {uri!r}: a file: URI cannot name host {host!r}")
            location = "/" + path
    return scheme, location


def _backend(uri: str) -> tuple[Any, str]:
    scheme, location = split_signer_uri(uri)
    module_name = SIGNER_MODULES.get(scheme)
    if module_name is None:
        raise UsageError(f"signer {redact(uri)!r}: unsupported scheme {scheme!r}",
                         hint=f"supported: {', '.join(sorted(SIGNER_MODULES))}; "
                              "or give a key file path")
    if not location:
        raise UsageError(f"signer {redact(uri)!r}: no key location after {scheme}:")
    return importlib.import_module(module_name), location


def load_signer(uri: str) -> Signer:
    """The signer a URI names; UsageError for an unknown scheme or a bad key."""
    module, location = _backend(uri)
    signer: Signer = module.open_signer(location)
    return signer


def load_or_create_signer(uri: str) -> tuple[Signer, bool]:
    """The signer a URI names, its key generated if absent (never replaced); (signer, created)."""
    module, location = _backend(uri)
    made: tuple[Signer, bool] = module.open_or_create_signer(location)
    return made


def check_signer_uri(uri: str) -> None:
    """Check a signer URI's syntax without opening the key (for config loading)."""
    _backend(uri)
    if split_signer_uri(uri)[0] == "pkcs11":
        parse_uri(uri)
