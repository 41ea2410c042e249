"""A local RFC 3161 timestamp authority for tests: `openssl ts -reply` behind a tiny
HTTP server on 127.0.0.1, with a CA and a TSA certificate made into tmp_path.

`mode` switches it at run time: "up" (answer), "down" (HTTP 503) ; `faketime`
shifts the TSA's clock (libfaketime on the openssl process only).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OPENSSL = shutil.which("openssl")
FAKETIME_LIBS = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl (ts) not installed")

_CONFIG = """\
[ tsa ]
default_tsa = tsa_config1
[ tsa_config1 ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.crt
certs = $dir/ca.crt
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class LocalTsa:
    """The CA, the TSA and its URL; `chain` is the PEM file an auditor passes."""

    root: Path
    url: str = ""
    mode: str = "up"
    faketime: str | None = None  # e.g. "-1d": the TSA's clock is that far off
    requests: int = 0
    ca_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(
        ec.SECP256R1()))

    @property
    def chain(self) -> Path:
        return self.root / "ca.crt"

    def make_pki(self) -> None:
        now = dt.datetime.now(dt.UTC)
        ca_cert = (x509.CertificateBuilder().subject_name(_name("test TSA root"))
                   .issuer_name(_name("test TSA root")).public_key(self.ca_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=30))
                   .not_valid_after(now + dt.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .sign(self.ca_key, hashes.SHA256()))
        tsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        builder = (x509.CertificateBuilder().subject_name(_name("test TSA"))
                   .issuer_name(ca_cert.subject).public_key(tsa_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=20))
                   .not_valid_after(now + dt.timedelta(days=20))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                                  critical=True))
        tsa_cert = builder.sign(self.ca_key, hashes.SHA256())
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "ca.crt").write_bytes(_pem(ca_cert))
        (self.root / "tsa.crt").write_bytes(_pem(tsa_cert))
        (self.root / "tsa.key").write_bytes(tsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (self.root / "serial").write_text("01\n")
        (self.root / "tsa.cnf").write_text(_CONFIG.format(dir=self.root))

    def reply(self, query: bytes) -> bytes:
        """`openssl ts -reply` to one DER TimeStampReq."""
        assert OPENSSL is not None
        with tempfile.TemporaryDirectory(dir=self.root) as work:
            request, response = Path(work) / "q.tsq", Path(work) / "r.tsr"
            request.write_bytes(query)
            env = None
            if self.faketime is not None:
                env = {"LD_PRELOAD": FAKETIME_LIBS[0], "FAKETIME": self.faketime,
                       "FAKETIME_DONT_FAKE_MONOTONIC": "1", "PATH": "/usr/bin:/bin"}
            subprocess.run([OPENSSL, "ts", "-reply", "-config", str(self.root / "tsa.cnf"),
                            "-queryfile", str(request), "-out", str(response)],
                           check=True, capture_output=True, env=env, timeout=30)
            return response.read_bytes()


def _handler(tsa: LocalTsa) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            tsa.requests += 1
            query = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if tsa.mode == "down" or self.headers.get("Content-Type") != \
                    "application/timestamp-query":
                self.send_error(503 if tsa.mode == "down" else 415)
                return
            body = tsa.reply(query)
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextlib.contextmanager
def running_tsa(root: Path) -> Iterator[LocalTsa]:
    """A LocalTsa in `root`, served until the block ends (skips without openssl)."""
    if OPENSSL is None:
        pytest.skip("openssl (ts) not installed")
    tsa = LocalTsa(root)
    tsa.make_pki()
    server = HTTPServer(("127.0.0.1", 0), _handler(tsa))
    tsa.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, name="test-tsa", daemon=True)
    thread.start()
    try:
        yield tsa
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
