"""The `pkcs11:` URI parser (RFC 7512 subset): what it accepts, and that it never echoes a PIN."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from signing.errors import UsageError
from signing.pkcs11_uri import parse_uri, redact
from signing.signer import check_signer_uri, load_signer

MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def test_parses_the_documented_example() -> None:
    uri = parse_uri("pkcs11:token=gamsa;object=agent-key;type=private"
                    f"?module-path={MODULE}&pin-source=file:/etc/gamsa/pin")
    assert (uri.token, uri.object, uri.id) == ("gamsa", "agent-key", b"")
    assert (uri.module_path, uri.pin_source) == (MODULE, "/etc/gamsa/pin")


def test_percent_encoding_and_id_bytes() -> None:
    uri = parse_uri("pkcs11:token=my%20token;id=%01%02%ff"
                    f"?module-path={MODULE}&pin-source=file:///etc/gamsa/pin")
    assert (uri.token, uri.id, uri.pin_source) == ("my token", b"\x01\x02\xff", "/etc/gamsa/pin")


@pytest.mark.parametrize(("uri", "says"), [
    ("pkcs11:object=k?module-path=/m.so&pin-source=/p", "no token named"),
    ("pkcs11:token=t?module-path=/m.so&pin-source=/p", "no key named"),
    ("pkcs11:token=t;object=k?pin-source=/p", "module-path must be an absolute path"),
    ("pkcs11:token=t;object=k?module-path=/m.so", "pin-source must name a PIN file"),
    ("pkcs11:token=t;object=k;type=public?module-path=/m.so&pin-source=/p", "cannot sign"),
    ("pkcs11:token=t;object=k;slot-id=3?module-path=/m.so&pin-source=/p",
     "unsupported path attribute 'slot-id'"),
    ("pkcs11:token=t;token=u;object=k?module-path=/m.so&pin-source=/p", "given twice"),
])
def test_bad_uris_are_usage_errors(uri: str, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        check_signer_uri(uri)
    assert says in caught.value.message


def test_a_pin_in_the_uri_is_refused_and_never_echoed() -> None:
    uri = "pkcs11:token=t;object=k?module-path=/m.so&pin-value=s3cret-1234"
    with pytest.raises(UsageError) as caught:
        load_signer(uri)
    assert "pin-value is not accepted" in caught.value.message
    assert "s3cret-1234" not in caught.value.diagnostics()
    assert redact(uri).endswith("pin-value=***")
    assert redact("pkcs11:token=t?PIN-Value=x&module-path=/m") == \
        "pkcs11:token=t?pin-value=***&module-path=/m"


def test_without_python_pkcs11_the_error_says_which_extra(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    pin.chmod(0o600)
    monkeypatch.setitem(sys.modules, "pkcs11", None)  # import pkcs11 -> ImportError
    with pytest.raises(UsageError) as caught:
        load_signer(f"pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:{pin}")
    assert "python-pkcs11" in caught.value.message
    assert "gamsa[pkcs11]" in caught.value.hint


def test_a_pin_file_others_can_read_is_refused(tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    pin.chmod(0o644)
    with pytest.raises(UsageError) as caught:
        load_signer(f"pkcs11:token=t;object=k?module-path=/m.so&pin-source=file:{pin}")
    assert "accessible by group or others" in caught.value.message
