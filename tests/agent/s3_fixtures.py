"""Test helpers for the s3:// store: moto's S3 server as a real subprocess, a
fault-injecting HTTP proxy, TLS certificates, and a gamsa environment pointed at S3.

Nothing here stubs boto3: gamsa talks HTTP to `moto_server` on loopback, through
the proxy when a test wants faults.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import itertools
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import GAMSA, GamsaEnv

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")
REGION = "us-east-1"
# Credentials for the default (no-auth) moto server; moto accepts any.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAGAMSATESTKEY0001",
                    "AWS_SECRET_ACCESS_KEY": "gamsa-test-secret"}
# Keep the host's AWS configuration, proxies and instance metadata out of the tests.
ISOLATED_AWS_ENV = {"AWS_CONFIG_FILE": "/nonexistent/aws-config",
                    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
                    "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": REGION,
                    "HTTP_PROXY": "", "HTTPS_PROXY": "", "http_proxy": "", "https_proxy": "",
                    "NO_PROXY": "*", "no_proxy": "*"}
# Fast retries for tests: many quick tries, no long sleeps.
FAST_RETRIES = {"GAMSA_STORE_MAX_ATTEMPTS": "3", "GAMSA_STORE_RETRY_MAX_SECONDS": "10",
                "GAMSA_STORE_RETRY_BASE_DELAY": "0.02", "GAMSA_STORE_RETRY_MAX_DELAY": "0.2"}

_bucket_numbers = itertools.count(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unique_bucket(stem: str = "gamsa") -> str:
    return f"{stem}-{os.getpid()}-{next(_bucket_numbers)}"


# --------------------------------------------------------------------------- moto


@dataclass
class MotoServer:
    """`moto_server` running as a subprocess on a loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    scheme: str
    log: Path
    ca_file: Path | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def client(self, **credentials: str) -> Any:
        """An in-test boto3 client for setting up and inspecting buckets."""
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config  # type: ignore[import-untyped]

        return boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION,
            aws_access_key_id=credentials.get("key", TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"]),
            aws_secret_access_key=credentials.get("secret",
                                                  TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]),
            verify=str(self.ca_file) if self.ca_file else True,
            config=Config(retries={"total_max_attempts": 1},
                          s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def post(self, path: str, data: bytes) -> bytes:
        """POST to moto's own API (e.g. /moto-api/reset-auth)."""
        request = urllib.request.Request(self.url + path, data=data, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        context = None
        if self.ca_file is not None:
            import ssl

            context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            body: bytes = response.read()
            return body

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_moto(workdir: Path, *, cert: Path | None = None, key: Path | None = None,
               ca_file: Path | None = None, env: dict[str, str] | None = None,
               iam_context: bool = False) -> MotoServer:
    """Start moto_server on a free port and wait until it answers. `iam_context`:
    evaluate IAM policy variables and `s3:prefix` (tests/agent/moto_iam_context.py)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / f"moto-{port}.log"
    server_cmd = ([sys.executable, str(Path(__file__).with_name("moto_iam_context.py"))]
                  if iam_context else [MOTO_SERVER])
    args = [*server_cmd, "-H", "127.0.0.1", "-p", str(port)]
    if cert is not None and key is not None:
        args += ["--ssl-cert", str(cert), "--ssl-key", str(key)]
    process_env = {**os.environ, **TEST_CREDENTIALS, **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                   env=process_env, cwd=workdir)
    server = MotoServer(process, port, "https" if cert else "http", log, ca_file)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"moto_server did not start on port {port}: {log.read_text()[-2000:]}")


def make_lock_bucket(client: Any, name: str | None = None) -> str:
    """A versioned bucket with Object Lock enabled (no default retention)."""
    bucket = name or unique_bucket()
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # PEM of the CA that signed the server certificate
    cert: Path
    key: Path
    other_ca: Path  # a CA that signed nothing here: a mismatching bundle


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def make_ca(common: str) -> tuple[Any, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(common)).issuer_name(name(common))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    ca_key, ca_cert = make_ca("gamsa test CA")
    _, other_cert = make_ca("gamsa unrelated CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                     directory / "other-ca.pem")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.other_ca.write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return files


# --------------------------------------------------------------------------- gamsa on S3


@dataclass
class S3GamsaEnv(GamsaEnv):
    """A gamsa environment whose store is a bucket on a moto server."""

    endpoint: str = ""
    bucket: str = ""
    prefix: str = "evidence"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def store_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def write_config(self, extra: str = "", collectors: str = '["host"]',
                     store_extra: str = "", read_timeout: int = 5) -> None:
        self.config.write_text(
            f'state_dir = "{self.state_dir}"\n'
            f'host_id = "test-host"\n'
            f"[store]\n"
            f'url = "{self.store_url}"\n'
            f'endpoint_url = "{self.endpoint}"\n'
            f'region = "{REGION}"\n'
            f'addressing_style = "path"\n'
            f'object_lock_mode = "COMPLIANCE"\n'
            f"retention_days = 3\n"
            f"connect_timeout = 2\n"
            f"read_timeout = {read_timeout}\n"
            + store_extra +
            f"[collectors]\n"
            f"enabled = {collectors}\n" + extra)

    def environment(self, crash_at: int | None = None,
                    extra_env: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GAMSA_", "AWS_"))}
        env.update({"GAMSA_CONFIG": str(self.config), **ISOLATED_AWS_ENV, **TEST_CREDENTIALS,
                    **FAST_RETRIES, **self.env, **(extra_env or {})})
        if crash_at is not None:
            env["GAMSA_TEST_CRASH_AT"] = str(crash_at)
        return env

    def run(self, *args: str, crash_at: int | None = None,
            extra_env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([GAMSA, *args], env=self.environment(crash_at, extra_env),
                              capture_output=True, text=True, timeout=timeout, check=False)

    def start(self, *args: str, extra_env: dict[str, str] | None = None,
              ) -> subprocess.Popen[str]:
        """Start `gamsa ARGS` without waiting (for kill tests)."""
        return subprocess.Popen([GAMSA, *args], env=self.environment(None, extra_env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def spool_names(self) -> list[str]:
        spool = self.state_dir / "spool"
        return sorted(p.name for p in spool.iterdir()) if spool.exists() else []


def s3_env(tmp_path: Path, endpoint: str, bucket: str, prefix: str = "evidence",
           store_extra: str = "", read_timeout: int = 5) -> S3GamsaEnv:
    env = S3GamsaEnv(tmp_path, tmp_path / "agent.toml", tmp_path / "state", tmp_path / "store",
                     endpoint=endpoint, bucket=bucket, prefix=prefix)
    env.write_config(store_extra=store_extra, read_timeout=read_timeout)
    return env


def tiny_collector() -> Any:
    """A collector of one small record: sealing many bundles stays fast."""
    from collector.record import Record
    from collector.registry import Collector, Field, RecordType

    return Collector(
        name="tick", version="1", description="one record per run (tests)",
        platforms=("linux", "darwin", "win32"),
        record_types={"tick": RecordType(doc="a tick", key="n",
                                         fields={"n": Field((int,), "a counter")})},
        collect=lambda _ctx: [Record("tick", "tick", "n", {"n": 1})])


def seal_many(env: GamsaEnv, count: int) -> None:
    """Seal `count` small bundles in this process: the code path of
    `gamsa collect --no-ship`, without its process start or collectors' cost."""
    from agent.config import load_config
    from agent.seal import seal_collection
    from agent.state import StateDir

    config = load_config(env.config, {})
    state = StateDir(config.state_dir)
    collectors = [tiny_collector()]
    with state.locked():
        for _ in range(count):
            seal_collection(config, "test-host", collectors, "schedule", state)


def object_versions(client: Any, bucket: str, prefix: str = "") -> dict[str, list[Any]]:
    """Every version of every key under `prefix` (all pages)."""
    found: dict[str, list[Any]] = {}
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for version in page.get("Versions", []):
            found.setdefault(version["Key"], []).append(version)
        for marker in page.get("DeleteMarkers", []):
            found.setdefault(marker["Key"], []).append({**marker, "DeleteMarker": True})
    return found


# --------------------------------------------------------------------------- fault proxy

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message>"
                 b"<RequestId>gamsa-fault-proxy</RequestId></Error>")


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy read."""

    method: str
    target: str
    headers: dict[str, str]


class FaultProxy:
    """A small threaded HTTP proxy that injects faults between gamsa and the server.

    Works as a reverse proxy (endpoint_url = proxy) and as a forward proxy
    (store.proxy = proxy; absolute-form request lines are rewritten). One request
    per connection: each request goes to the upstream on a new connection with
    `Connection: close`, so a fault can be chosen per request:

    - `reset`: the request is read, never forwarded, the connection reset (RST);
    - `reset_after`: the request is forwarded (the server applies it) and the
      connection reset instead of answering: the client cannot know it succeeded;
    - `stall`: the request is read and nothing answered for `stall_seconds`;
    - `slowdown`: answered `503 SlowDown` without forwarding.

    `refuse()` closes the listening socket (connections are refused, as when the
    server is down); `restore()` listens again on the same port.

    Every request it reads is logged in `requests` (method, target, headers with
    lower-case names), so a test counts what reached the server; headers named in
    `strip` (lower case) are not forwarded, as by a server that ignores them.
    """

    def __init__(self, upstream_port: int, *, reset: float = 0.0, reset_after: float = 0.0,
                 stall: float = 0.0, slowdown: float = 0.0, stall_seconds: float = 1.5,
                 seed: int = 4, strip: tuple[bytes, ...] = ()) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.rates = {"reset": reset, "reset_after": reset_after, "stall": stall,
                      "slowdown": slowdown}
        self.stall_seconds = stall_seconds
        self.counts: Counter[str] = Counter()
        self.requests: list[ProxiedRequest] = []
        self.strip = strip
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refusing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0
        self._listen()
        self._acceptor = threading.Thread(target=self._accept_loop, name="fault-proxy-accept",
                                          daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_rates(self, **rates: float) -> None:
        with self._lock:
            self.rates.update(rates)

    def refuse(self) -> None:
        self._refusing.set()

    def restore(self) -> None:
        self._refusing.clear()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(timeout=10)
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(timeout=10)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # internals ------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if self._refusing.is_set():
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                time.sleep(0.02)
                continue
            if self._listener is None:
                self._listen()
            assert self._listener is not None
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                continue
            client.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True,
                                      name="fault-proxy-conn")
            with self._lock:
                self._sockets.add(client)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _choose(self) -> str:
        with self._lock:
            roll = self._rng.random()
            for fault, rate in self.rates.items():
                if roll < rate:
                    self.counts[fault] += 1
                    return fault
                roll -= rate
            self.counts["pass"] += 1
            return "pass"

    @staticmethod
    def _read_head(sock: socket.socket) -> tuple[bytes, bytes] | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return head, rest

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder))
        sock.close()

    def _serve(self, client: socket.socket) -> None:
        try:
            self._serve_one(client)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(client)
            with contextlib.suppress(OSError):
                client.close()

    def _serve_one(self, client: socket.socket) -> None:
        read = self._read_head(client)
        if read is None:
            return
        head, body = read
        lines = head.split(b"\r\n")
        method, target, version = lines[0].split(b" ", 2)
        if target.startswith((b"http://", b"https://")):  # forward-proxy form
            target = b"/" + target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"/"
        headers = [line for line in lines[1:] if line]
        names = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip()
                 for line in headers}
        length = int(names.get(b"content-length", b"0"))
        with self._lock:
            self.requests.append(ProxiedRequest(method.decode(), target.decode(),
                                                {k.decode(): v.decode()
                                                 for k, v in names.items()}))
        fault = self._choose()
        if fault == "slowdown":
            client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                           b"Content-Length: " + str(len(SLOWDOWN_BODY)).encode()
                           + b"\r\nConnection: close\r\n\r\n" + SLOWDOWN_BODY)
            return
        if names.get(b"expect", b"").lower() == b"100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(body) < length:
            chunk = client.recv(min(1 << 20, length - len(body)))
            if not chunk:
                return
            body += chunk
        if fault == "reset":
            self._reset(client)
            return
        if fault == "stall":
            self._stop.wait(self.stall_seconds)
            return
        keep = [line for line in headers
                if line.split(b":", 1)[0].strip().lower()
                not in (b"connection", b"expect", b"proxy-connection", b"keep-alive",
                        *self.strip)]
        request = b"\r\n".join([b" ".join([method, target, version]), *keep,
                                b"Connection: close", b"", b""]) + body
        with socket.create_connection(self.upstream, timeout=30) as upstream:
            upstream.sendall(request)
            response = b""
            while True:
                chunk = upstream.recv(1 << 20)
                if not chunk:
                    break
                response += chunk
        if fault == "reset_after":
            self._reset(client)
            return
        status_head, _, response_body = response.partition(b"\r\n\r\n")
        kept = [line for line in status_head.split(b"\r\n")
                if not line.lower().startswith(b"connection:")]
        client.sendall(b"\r\n".join([*kept, b"Connection: close", b"", b""]) + response_body)
