"""Witnessed time: RFC 3161 timestamp responses over a manifest's bytes.

A timestamp authority (TSA) signs "this digest existed at genTime". gamsa asks
for one over SHA-256 of a manifest object's exact bytes (the digest the next
bundle's `chain.prev` names) and stores the TSA's whole response as its own
create-only object beside the manifest, `<stem>.manifest.tsr`: a token cannot sit
inside the manifest it is over, and the DSSE envelope's bytes are fixed
(docs/FORMAT.md §11). `openssl ts -verify -in X.manifest.tsr -data
X.manifest.dsse.json -CAfile tsa-chain.pem` checks one by hand.

cryptography has no RFC 3161 or CMS verifier, so the few structures are read
here with a minimal DER reader (signing/_der.py); signatures and certificates
are checked with cryptography. The auditor names the TSA's certificate chain;
nothing in the token is trusted for being there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from signing import _der as der
from signing.clock import CLOCK_TOLERANCE_SECONDS, parse_time
from signing.errors import FormatError, GamsaError, SignatureError, UsageError

SHA256 = "2.16.840.1.101.3.4.2.1"
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    SHA256: hashes.SHA256,
    "2.16.840.1.101.3.4.2.2": hashes.SHA384,
    "2.16.840.1.101.3.4.2.3": hashes.SHA512,
}
# Signature algorithms a SignerInfo may name, per key type (the hash is its digestAlgorithm).
_RSA_SIGNATURES = {"1.2.840.113549.1.1.1", "1.2.840.113549.1.1.11", "1.2.840.113549.1.1.12",
                   "1.2.840.113549.1.1.13"}
_EC_SIGNATURES = {"1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4"}
_SIGNED_DATA = "1.2.840.113549.1.7.2"
_TST_INFO = "1.2.840.113549.1.9.16.1.4"
_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_MAX_CHAIN = 8
MAX_RESPONSE_BYTES = 1024 * 1024  # a response with its chain is a few KiB
# What reading a malformed token can raise besides our own errors: a field missing
# (IndexError) or of the wrong kind, or a certificate cryptography cannot read or
# warns about (made errors while a token is read: a verifier's output stays findings).
_MALFORMED = (IndexError, ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion,
              x509.DuplicateExtension, Warning)


def timestamp_request(digest: bytes, nonce: int) -> bytes:
    """A DER TimeStampReq: version 1, SHA-256 imprint, `nonce`, certReq TRUE."""
    algorithm = der.encode(der.SEQUENCE, der.encode_oid(SHA256) + der.encode(der.NULL, b""))
    imprint = der.encode(der.SEQUENCE, algorithm + der.encode(der.OCTET_STRING, digest))
    return der.encode(der.SEQUENCE, der.encode_integer(1) + imprint
                      + der.encode_integer(nonce) + der.encode(der.BOOLEAN, b"\xff"))


@dataclass(frozen=True)
class Token:
    """The parts of a TimeStampToken a verifier reads."""

    gen_time: dt.datetime
    policy: str
    serial: int
    imprint_algorithm: str
    imprint: bytes
    nonce: int | None
    tst_info: bytes  # the signed TSTInfo DER
    certificates: list[x509.Certificate]
    signer_issuer: bytes | None  # raw DER Name of IssuerAndSerialNumber
    signer_serial: int | None
    signer_key_id: bytes | None  # SubjectKeyIdentifier form of the signer id
    digest_algorithm: str
    signed_attrs: bytes  # raw, tagged [0] as in the token
    signature_algorithm: str
    signature: bytes


def _algorithm(item: der.Item, what: str) -> str:
    return der.oid(item.expect(der.SEQUENCE, what).children(what)[0], what)


def parse_response(data: bytes) -> Token:
    """The token of a TimeStampResp whose status is granted; FormatError otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # cryptography warns of some malformed certificates
            return _parse_response(data)
    except _MALFORMED as exc:  # a field missing or of a wrong kind
        if isinstance(exc, GamsaError):
            raise
        raise FormatError(f"TimeStampResp: malformed ({type(exc).__name__}: {exc})") from exc


def _parse_response(data: bytes) -> Token:
    parts = der.read_single(data, "TimeStampResp").expect(der.SEQUENCE, "TimeStampResp") \
        .children("TimeStampResp")
    if not parts:
        raise FormatError("TimeStampResp: empty")
    status_info = parts[0].expect(der.SEQUENCE, "PKIStatusInfo").children("PKIStatusInfo")
    status = der.integer(status_info[0], "PKIStatusInfo.status")
    if status not in (0, 1):  # granted, grantedWithMods
        text = ""
        if len(status_info) > 1 and status_info[1].tag == der.SEQUENCE:
            text = "; ".join(s.content.decode("utf-8", "replace")
                             for s in status_info[1].children("statusString"))
        raise FormatError(f"the TSA refused the request: status {status}"
                          + (f" ({text})" if text else ""))
    if len(parts) < 2:
        raise FormatError("TimeStampResp: status granted but no token")
    return parse_token(parts[1].raw)


def parse_token(data: bytes) -> Token:
    """A TimeStampToken (CMS ContentInfo of SignedData over a TSTInfo)."""
    info = der.read_single(data, "ContentInfo").children("ContentInfo")
    if len(info) != 2 or der.oid(info[0], "ContentInfo.contentType") != _SIGNED_DATA:
        raise FormatError("TimeStampToken: not a CMS SignedData")
    signed = info[1].expect(0xA0, "ContentInfo.content").children("ContentInfo.content")
    parts = signed[0].expect(der.SEQUENCE, "SignedData").children("SignedData")
    if len(parts) < 4:
        raise FormatError("SignedData: too few fields")
    encap = parts[2].expect(der.SEQUENCE, "encapContentInfo").children("encapContentInfo")
    if der.oid(encap[0], "eContentType") != _TST_INFO or len(encap) != 2:
        raise FormatError("SignedData: the content is not a TSTInfo")
    tst_info = encap[1].expect(0xA0, "eContent").children("eContent")[0] \
        .expect(der.OCTET_STRING, "eContent").content
    certificates: list[x509.Certificate] = []
    signer_infos: list[der.Item] = []
    for item in parts[3:]:
        if item.tag == 0xA0:
            for cert in item.children("certificates"):
                if cert.tag == der.SEQUENCE:  # other certificate formats are ignored
                    try:
                        certificates.append(x509.load_der_x509_certificate(cert.raw))
                    except (ValueError, x509.InvalidVersion) as exc:
                        raise FormatError(f"SignedData: a certificate does not parse "
                                          f"({exc})") from exc
        elif item.tag == der.SET:
            signer_infos = item.children("signerInfos")
    if len(signer_infos) != 1:
        raise FormatError(f"SignedData: {len(signer_infos)} signers, expected exactly 1")
    return _with_signer(_tst_fields(tst_info), tst_info, certificates, signer_infos[0])


@dataclass(frozen=True)
class _Tst:
    policy: str
    imprint_algorithm: str
    imprint: bytes
    serial: int
    gen_time: dt.datetime
    nonce: int | None


def _tst_fields(tst_info: bytes) -> _Tst:
    fields = der.read_single(tst_info, "TSTInfo").expect(der.SEQUENCE, "TSTInfo") \
        .children("TSTInfo")
    if len(fields) < 5:
        raise FormatError("TSTInfo: too few fields")
    imprint = fields[2].expect(der.SEQUENCE, "messageImprint").children("messageImprint")
    nonce = None
    for item in fields[5:]:
        if item.tag == der.INTEGER:  # after the optional accuracy and ordering
            nonce = der.integer(item, "TSTInfo.nonce")
            break
    return _Tst(policy=der.oid(fields[1], "TSTInfo.policy"),
                imprint_algorithm=_algorithm(imprint[0], "messageImprint.hashAlgorithm"),
                imprint=imprint[1].expect(der.OCTET_STRING, "messageImprint").content,
                serial=der.integer(fields[3], "TSTInfo.serialNumber"),
                gen_time=der.generalized_time(fields[4], "TSTInfo.genTime"),
                nonce=nonce)


def _with_signer(tst: _Tst, tst_info: bytes,
                 certificates: list[x509.Certificate], signer: der.Item) -> Token:
    parts = signer.expect(der.SEQUENCE, "SignerInfo").children("SignerInfo")
    if len(parts) < 5:
        raise FormatError("SignerInfo: too few fields")
    sid = parts[1]
    issuer = serial = key_id = None
    if sid.tag == der.SEQUENCE:
        issuer_item, serial_item = sid.children("SignerIdentifier")[:2]
        issuer, serial = issuer_item.raw, der.integer(serial_item, "SignerInfo.serial")
    elif sid.tag == 0x80:
        key_id = sid.content
    else:
        raise FormatError(f"SignerInfo: unknown signer identifier tag {sid.tag:#04x}")
    if parts[3].tag != 0xA0:
        raise FormatError("SignerInfo: no signed attributes (RFC 3161 requires them)")
    signature = parts[5] if len(parts) > 5 else None
    if signature is None:
        raise FormatError("SignerInfo: no signature")
    return Token(
        gen_time=tst.gen_time, policy=tst.policy, serial=tst.serial,
        imprint_algorithm=tst.imprint_algorithm, imprint=tst.imprint, nonce=tst.nonce,
        tst_info=tst_info, certificates=certificates, signer_issuer=issuer,
        signer_serial=serial, signer_key_id=key_id,
        digest_algorithm=_algorithm(parts[2], "SignerInfo.digestAlgorithm"),
        signed_attrs=parts[3].raw,
        signature_algorithm=_algorithm(parts[4], "SignerInfo.signatureAlgorithm"),
        signature=signature.expect(der.OCTET_STRING, "SignerInfo.signature").content)


def check_reply(token: Token, digest: bytes, nonce: int) -> None:
    """What the agent checks of a fresh reply: it is over this digest, answers this
    request (nonce), and carries the TSA's certificate (certReq was TRUE)."""
    _check_imprint(token, digest)
    if token.nonce != nonce:
        raise FormatError(f"the TSA answered nonce {token.nonce}, the request sent {nonce}")
    if not token.certificates:
        raise FormatError("the TSA sent no certificate although the request asked for it")


def _check_imprint(token: Token, digest: bytes) -> None:
    if token.imprint_algorithm != SHA256:
        raise FormatError(f"the token's imprint uses algorithm {token.imprint_algorithm}, "
                          f"not SHA-256")
    if token.imprint != digest:
        raise SignatureError(f"the token is over {token.imprint.hex()}, the manifest hashes "
                             f"to {digest.hex()}")


def load_tsa_chain(path: Path) -> list[x509.Certificate]:
    """The TSA certificate chain an auditor trusts (PEM), or a UsageError naming it."""
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"--tsa-cert {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UsageError(f"--tsa-cert {path}: not PEM certificates ({exc})",
                         hint="give the TSA's certificate chain, PEM") from exc
    return certs


def verify_token(token: Token, digest: bytes, anchors: Sequence[x509.Certificate]) -> None:
    """Raise unless the token is over `digest`, signed by a time-stamping certificate
    that chains (valid at genTime) to one of `anchors`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _verify_token(token, digest, anchors)
    except _MALFORMED as exc:
        if isinstance(exc, GamsaError):
            raise
        raise FormatError(f"TimeStampToken: malformed ({type(exc).__name__}: {exc})") from exc


def _verify_token(token: Token, digest: bytes, anchors: Sequence[x509.Certificate]) -> None:
    _check_imprint(token, digest)
    hash_factory = _HASHES.get(token.digest_algorithm)
    if hash_factory is None:
        raise FormatError(f"the token's digest algorithm {token.digest_algorithm} "
                          f"is not supported")
    content_type = message_digest = None
    for attribute in der.read_single(token.signed_attrs, "signedAttrs").children("signedAttrs"):
        parts = attribute.children("Attribute")
        kind, values = der.oid(parts[0], "Attribute.type"), parts[1].children("Attribute")
        if kind == _CONTENT_TYPE:
            content_type = der.oid(values[0], "contentType")
        elif kind == _MESSAGE_DIGEST:
            message_digest = values[0].expect(der.OCTET_STRING, "messageDigest").content
    if content_type != _TST_INFO:
        raise SignatureError("the token's signed content type is not TSTInfo")
    h = hashes.Hash(hash_factory())
    h.update(token.tst_info)
    if message_digest != h.finalize():
        raise SignatureError("the token's TSTInfo does not match the digest its "
                             "signature covers")
    signer = _signer_certificate(token, anchors)
    # The signature is over the DER of the attributes as a SET (RFC 5652 §5.4).
    _verify_signature(signer, token.signature_algorithm, token.signature,
                      b"\x31" + token.signed_attrs[1:], hash_factory())
    try:
        usage = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or ExtendedKeyUsageOID.TIME_STAMPING not in usage:
        raise SignatureError(f"certificate {signer.subject.rfc4514_string()} is not for "
                             f"time stamping (extended key usage)")
    _check_chain(signer, token.certificates, anchors, token.gen_time)


def _signer_certificate(token: Token, anchors: Sequence[x509.Certificate]) -> x509.Certificate:
    for cert in [*token.certificates, *anchors]:
        if token.signer_issuer is not None:
            if (cert.serial_number == token.signer_serial
                    and cert.issuer.public_bytes() == token.signer_issuer):
                return cert
        else:
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                continue
            if ski.value.digest == token.signer_key_id:
                return cert
    raise SignatureError("the token's signing certificate is neither in the token nor "
                         "in --tsa-cert")


def _verify_signature(cert: x509.Certificate, named: str, signature: bytes, data: bytes,
                      algorithm: hashes.HashAlgorithm) -> None:
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and named in _RSA_SIGNATURES:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and named in _EC_SIGNATURES:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey) and named == "1.3.101.112":
            key.verify(signature, data)
        else:
            raise FormatError(f"signature algorithm {named} with a "
                              f"{type(key).__name__.lstrip('_')} is not supported")
    except InvalidSignature as exc:
        raise SignatureError(f"the token's signature does not verify under "
                             f"{cert.subject.rfc4514_string()}") from exc


def _check_chain(signer: x509.Certificate, pool: Sequence[x509.Certificate],
                 anchors: Sequence[x509.Certificate], at: dt.datetime) -> None:
    trusted = {a.public_bytes(Encoding.DER) for a in anchors}
    cert = signer
    for _ in range(_MAX_CHAIN):
        name = cert.subject.rfc4514_string()
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise SignatureError(f"certificate {name} was not valid at the token's time "
                                 f"{at.isoformat()}")
        if cert.public_bytes(Encoding.DER) in trusted:
            return
        issuer = next((c for c in [*anchors, *pool] if _issued(cert, c)), None)
        if issuer is None:
            raise SignatureError(f"certificate {name} does not chain to --tsa-cert")
        cert = issuer
    raise SignatureError(f"the TSA certificate chain is longer than {_MAX_CHAIN}")


def _issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if issuer.subject != cert.issuer or issuer == cert:
        return False
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.verify_directly_issued_by(issuer)
    except (x509.ExtensionNotFound, InvalidSignature, ValueError, TypeError,
            UnsupportedAlgorithm):
        return False
    return constraints.ca


@dataclass(frozen=True)
class Stamped:
    """What the timestamp check needs of one verified bundle."""

    manifest_key: str
    timestamp_key: str | None  # None: no token object in the store
    manifest_sha256: str
    finished_at: str


@dataclass
class TimestampSummary:
    """Counts for the verifier's report."""

    checked: int = 0
    verified: int = 0
    missing: int = 0
    invalid: int = 0
    mismatched: int = 0
    late: int = 0
    findings: list[tuple[str, str, str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"checked": self.checked, "verified": self.verified, "missing": self.missing,
                "invalid": self.invalid, "mismatched": self.mismatched, "late": self.late}


def check_timestamps(read: Callable[[str], bytes], bundles: Iterable[Stamped],
                     anchors: Sequence[x509.Certificate]) -> TimestampSummary:
    """Each bundle's token against its manifest digest and claimed time.

    Findings are (object key, code, message, severity): `timestamp_missing`
    (warning: the auditor asked for witnessed time and this bundle has none),
    `timestamp_invalid` (error), `timestamp_mismatch` (error: the bundle claims to
    have finished more than the tolerance after the TSA saw its manifest, which is
    impossible for an honest clock), `timestamp_late` (warning: the TSA saw it more
    than the tolerance after its claimed finish: a token fetched after a TSA outage,
    or a backdated bundle; its time is witnessed only as "no later than genTime").
    """
    summary = TimestampSummary()
    for b in bundles:
        summary.checked += 1
        if b.timestamp_key is None:
            summary.missing += 1
            summary.findings.append((b.manifest_key, "timestamp_missing",
                                     "no RFC 3161 token beside this manifest: its time "
                                     "is the agent's alone", "warning"))
            continue
        try:
            token = parse_response(read(b.timestamp_key))
            verify_token(token, bytes.fromhex(b.manifest_sha256), anchors)
        except GamsaError as exc:
            summary.invalid += 1
            summary.findings.append((b.timestamp_key, "timestamp_invalid", exc.message,
                                     "error"))
            continue
        finished = parse_time(b.finished_at)
        gen = token.gen_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        ahead = None if finished is None else int((finished - token.gen_time).total_seconds())
        if ahead is not None and ahead > CLOCK_TOLERANCE_SECONDS:
            summary.mismatched += 1
            summary.findings.append((b.manifest_key, "timestamp_mismatch",
                                     f"claims to have finished at {b.finished_at}, {ahead} s "
                                     f"after the TSA saw its manifest ({gen}; tolerance "
                                     f"{CLOCK_TOLERANCE_SECONDS} s)", "error"))
        elif ahead is not None and -ahead > CLOCK_TOLERANCE_SECONDS:
            summary.late += 1
            summary.findings.append((b.manifest_key, "timestamp_late",
                                     f"the TSA saw its manifest at {gen}, {-ahead} s after "
                                     f"its claimed finish {b.finished_at} (tolerance "
                                     f"{CLOCK_TOLERANCE_SECONDS} s): a token fetched late, "
                                     f"or a backdated bundle", "warning"))
        else:
            summary.verified += 1
    return summary


def manifest_digest(manifest: bytes) -> bytes:
    """The digest a token is over: SHA-256 of the manifest object's exact bytes."""
    return hashlib.sha256(manifest).digest()
