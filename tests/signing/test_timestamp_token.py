"""RFC 3161 tokens from a real `openssl ts` TSA, read and checked by signing.timestamp
(and cross-checked with `openssl ts -verify`, what a third party would run)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from signing import _der as der
from signing.errors import FormatError, GamsaError, SignatureError
from signing.timestamp import (
    Stamped,
    check_reply,
    check_timestamps,
    load_tsa_chain,
    parse_response,
    timestamp_request,
    verify_token,
)
from tests.tsa import OPENSSL, LocalTsa, needs_openssl

MANIFEST = b'{"payload":"...","payloadType":"application/vnd.in-toto+json"}'
DIGEST = hashlib.sha256(MANIFEST).digest()


@pytest.fixture
def tsa(tmp_path: Path) -> LocalTsa:
    t = LocalTsa(tmp_path / "tsa")
    t.make_pki()
    return t


def reply(tsa: LocalTsa, digest: bytes = DIGEST, nonce: int = 4242) -> bytes:
    return tsa.reply(timestamp_request(digest, nonce))


@needs_openssl
def test_a_token_from_openssl_ts_verifies_here_and_with_openssl(tsa: LocalTsa,
                                                                tmp_path: Path) -> None:
    data = reply(tsa)
    token = parse_response(data)
    check_reply(token, DIGEST, 4242)
    verify_token(token, DIGEST, load_tsa_chain(tsa.chain))
    assert token.nonce == 4242 and token.policy == "1.2.3.4.1"
    (tmp_path / "m.tsr").write_bytes(data)
    (tmp_path / "m.json").write_bytes(MANIFEST)
    assert OPENSSL is not None
    check = subprocess.run([OPENSSL, "ts", "-verify", "-in", str(tmp_path / "m.tsr"),
                            "-data", str(tmp_path / "m.json"), "-CAfile", str(tsa.chain)],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0 and "Verification: OK" in check.stdout, check.stderr


@needs_openssl
def test_the_agent_refuses_a_reply_to_another_request(tsa: LocalTsa) -> None:
    token = parse_response(reply(tsa, nonce=1))
    with pytest.raises(FormatError, match="nonce 1, the request sent 2"):
        check_reply(token, DIGEST, 2)
    with pytest.raises(SignatureError, match="the manifest hashes to"):
        check_reply(token, hashlib.sha256(b"other").digest(), 1)


@needs_openssl
@pytest.mark.parametrize("where", ["gen_time", "signature", "imprint"])
def test_a_tampered_token_does_not_verify(tsa: LocalTsa, where: str) -> None:
    data = bytearray(reply(tsa))
    token = parse_response(bytes(data))
    if where == "gen_time":  # a later time, re-encoded at the same length
        stamp = token.gen_time.strftime("%Y%m%d%H%M%S").encode()
        at = data.find(stamp)
        data[at:at + 4] = b"2099"
    elif where == "signature":
        at = data.find(token.signature)
        data[at + 10] ^= 0x01
    else:
        at = data.find(token.imprint)
        data[at] ^= 0x01
    with pytest.raises(SignatureError):
        verify_token(parse_response(bytes(data)), DIGEST if where != "imprint" else
                     bytes([DIGEST[0] ^ 0x01]) + DIGEST[1:], load_tsa_chain(tsa.chain))


@needs_openssl
def test_a_tsa_not_in_the_given_chain_is_refused(
        tsa: LocalTsa, tmp_path: Path) -> None:
    other = LocalTsa(tmp_path / "other")
    other.make_pki()
    token = parse_response(reply(tsa))
    with pytest.raises(SignatureError, match="does not chain to --tsa-cert"):
        verify_token(token, DIGEST, load_tsa_chain(other.chain))


def test_a_refusal_or_garbage_is_a_one_line_format_error() -> None:
    status = der.encode(der.SEQUENCE, der.encode_integer(2) + der.encode(
        der.SEQUENCE, der.encode(0x0C, b"bad digest")))
    with pytest.raises(FormatError, match=r"refused the request: status 2 \(bad digest\)"):
        parse_response(der.encode(der.SEQUENCE, status))
    for junk in (b"", b"\x30\x80\x00\x00", b"<html>503</html>", b"\x30\x05\x02\x01"):
        with pytest.raises(FormatError):
            parse_response(junk)


def test_a_request_is_der_with_sha256_nonce_and_cert_req() -> None:
    request = der.read_single(timestamp_request(DIGEST, 99), "req").children("req")
    assert der.integer(request[0], "v") == 1
    imprint = request[1].children("imprint")
    assert der.oid(imprint[0].children("alg")[0], "alg") == "2.16.840.1.101.3.4.2.1"
    assert imprint[1].content == DIGEST
    assert der.integer(request[2], "nonce") == 99
    assert request[3].raw == b"\x01\x01\xff"


@needs_openssl
def test_claimed_time_against_the_token(tsa: LocalTsa) -> None:
    data = reply(tsa)
    gen = parse_response(data).gen_time
    digest = DIGEST.hex()

    def at(seconds: int) -> str:
        import datetime as dt
        return (gen + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    bundles = [Stamped("ok", "ok.tsr", digest, at(-5)),
               Stamped("ahead", "ahead.tsr", digest, at(3600)),
               Stamped("late", "late.tsr", digest, at(-86400)),
               Stamped("none", None, digest, at(0)),
               Stamped("bad", "bad.tsr", hashlib.sha256(b"x").hexdigest(), at(0))]
    summary = check_timestamps(lambda key: data, bundles, load_tsa_chain(tsa.chain))
    found = {(key, code, severity) for key, code, _, severity in summary.findings}
    assert found == {("ahead", "timestamp_mismatch", "error"),
                     ("late", "timestamp_late", "warning"),
                     ("none", "timestamp_missing", "warning"),
                     ("bad.tsr", "timestamp_invalid", "error")}
    assert summary.as_dict() == {"checked": 5, "verified": 1, "missing": 1, "invalid": 1,
                                 "mismatched": 1, "late": 1}


def test_a_tsa_chain_that_is_not_pem_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "x.pem").write_text("not a certificate")
    for path in (tmp_path / "x.pem", tmp_path / "missing.pem"):
        with pytest.raises(GamsaError) as caught:
            load_tsa_chain(path)
        assert caught.value.exit_code == 2 and str(path) in caught.value.message


@needs_openssl
def test_any_corrupted_byte_is_a_gamsa_error_never_a_crash(tsa: LocalTsa) -> None:
    data = reply(tsa)
    anchors = load_tsa_chain(tsa.chain)
    outcomes = set()
    for at in range(0, len(data), 3):
        for bad in (data[:at], data[:at] + bytes([data[at] ^ 0x41]) + data[at + 1:]):
            try:
                verify_token(parse_response(bad), DIGEST, anchors)
                outcomes.add("ok")
            except GamsaError as exc:
                assert "\n" not in exc.message
                outcomes.add(type(exc).__name__)
    assert "FormatError" in outcomes and "SignatureError" in outcomes
