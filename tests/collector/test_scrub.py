"""Secret scrubbing: seeded real-looking secrets never survive."""

from __future__ import annotations

import pytest

from collector.scrub import scrub_argv, scrub_text

SECRETS = {
    "password=Hunter2Secret!": "Hunter2Secret!",
    "DB_PASSWORD: 's3cr3t-pa55'": "s3cr3t-pa55",
    '{"client_secret": "abcDEF123456ghiJKL"}': "abcDEF123456ghiJKL",
    "postgres://app:Sup3rS3cret@db.internal:5432/core": "Sup3rS3cret",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlMTIz":
        "eyJhbGciOiJIUzI1NiJ9",
    "export OPENAI_API_KEY=sk-proj-AbCdEfGhIjKlMnOpQrStUvWx12345": "sk-proj-AbCdEfGhIjKlMnOp",
    "key sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789": "sk-ant-api03-AbCdEfGh",
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE": "AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY":
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "token ghp_abcdefghijklmnopqrstuvwxyz0123456789": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "Server=db;User Id=sa;Password=P@ssw0rd;": "P@ssw0rd",
    "proxy=http://user:pr0xyPass@proxy.bank.local:3128": "pr0xyPass",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\nQUJD\n"
    "-----END OPENSSH PRIVATE KEY-----": "b3BlbnNzaC1rZXktdjEAAAAA",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\n(truncated": "MIIEowIBAAKCAQEA7",
}


@pytest.mark.parametrize("text, secret", list(SECRETS.items()))
def test_secret_is_removed(text: str, secret: str) -> None:
    scrubbed, count = scrub_text(text)
    assert secret not in scrubbed
    assert count >= 1
    assert "[REDACTED:" in scrubbed


def test_context_is_kept() -> None:
    scrubbed, _ = scrub_text("postgres://app:Sup3rS3cret@db.internal:5432/core")
    assert scrubbed == "postgres://app:[REDACTED:url_password]@db.internal:5432/core"
    scrubbed, _ = scrub_text("password = hunter22")
    assert scrubbed == "password = [REDACTED:named_secret]"


@pytest.mark.parametrize("text", [
    "PasswordAuthentication no",  # sshd_config: a setting name, not a secret value
    "PermitRootLogin prohibit-password",
    "auth required pam_unix.so",
    "nameserver 10.0.0.2",
    "GET /v1/models HTTP/1.1",
])
def test_ordinary_config_is_untouched(text: str) -> None:
    assert scrub_text(text) == (text, 0)


def test_argv() -> None:
    argv = ["mysql", "-uroot", "-pS3cretPw", "--password", "An0ther", "--token=xyz123abc",
            "--host", "db", "postgres://u:pw12345@h/db"]
    scrubbed, count = scrub_argv(argv)
    joined = " ".join(scrubbed)
    for secret in ("S3cretPw", "An0ther", "xyz123abc", "pw12345"):
        assert secret not in joined
    assert scrubbed[:2] == ["mysql", "-uroot"] and scrubbed[6:8] == ["--host", "db"]
    assert count == 4


def test_glued_password_with_a_secret_name_does_not_leak() -> None:
    scrubbed, count = scrub_argv(["mysql", "-pMyPassw0rd", "-h", "db", "-password", "X1y2z3"])
    assert "MyPassw0rd" not in " ".join(scrubbed) and "X1y2z3" not in " ".join(scrubbed)
    assert scrubbed[2:4] == ["-h", "db"] and count == 3  # -p[R] of -password, and X1y2z3


def test_long_tokens_are_scrubbed_in_linear_time() -> None:
    import time

    line = "GET /x?" + "a" * 200_000 + " token=abcdef123456"
    start = time.perf_counter()
    scrubbed, _ = scrub_text(line)
    assert time.perf_counter() - start < 5  # quadratic backtracking took minutes
    assert "abcdef123456" not in scrubbed
