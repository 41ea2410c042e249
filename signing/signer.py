"""Signers by URI: the one way callers obtain a key that signs (agent key, org key).

A signer URI names where the private key lives: `file:PATH` (or a plain path) is a
PKCS#8 PEM key file today; `pkcs11:` (a token, RFC 7512 URI) and `awskms:` are the
schemes meant to come next. Each scheme maps to a module defining
`open_signer(location: str) -> Signer`, imported only when that scheme is used, so
optional dependencies (python-pkcs11, boto3) stay optional and callers never change
when a backend is added (securesystemslib's signer registry, in small).
"""

from __future__ import annotations

import importlib
import re

from signing.errors import UsageError
from signing.keys import Signer

# scheme -> module defining `open_signer(location) -> Signer`.
SIGNER_MODULES = {"file": "signing.keys"}
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


def load_signer(uri: str) -> Signer:
    """The signer a URI names; UsageError for an unknown scheme or a bad key."""
    scheme, location = split_signer_uri(uri)
    module_name = SIGNER_MODULES.get(scheme)
    if module_name is None:
        raise UsageError(f"signer {uri!r}: unsupported scheme {scheme!r}",
                         hint=f"supported: {', '.join(sorted(SIGNER_MODULES))}; "
                              "or give a key file path")
    if not location:
        raise UsageError(f"signer {uri!r}: no key location after {scheme}:")
    module = importlib.import_module(module_name)
    signer: Signer = module.open_signer(location)
    return signer
