"""Secret scrubbing for captured text: command lines, file content, log lines.

Evidence must never carry a credential. Each pattern below names a kind of secret;
a match is replaced by `[REDACTED:<kind>]`, keeping the surrounding text (the key
name, the URL host) so an auditor still sees that a secret was configured there.
The list is documented in docs/COLLECTORS.md ("Secret scrubbing"); add a pattern
with a test that seeds a real-looking secret and asserts it never reaches a
sealed byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Names that mark the value after them as a secret (key=value, key: value, "key": "value",
# --key value, --key=value). Matched case-insensitively as part of a longer name too
# (DB_PASSWORD, x-api-key, aws_secret_access_key).
SECRET_NAMES = (
    r"pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key"  # noqa: S105
    r"|private[_-]?key|client[_-]?secret|credentials?|auth[_-]?key|session[_-]?key"
    r"|signature|cookie"
)


@dataclass(frozen=True)
class SecretPattern:
    """One kind of secret: the regex, and which group is the secret (0 = all)."""

    kind: str
    regex: re.Pattern[str]
    group: int
    doc: str


def _p(kind: str, pattern: str, group: int, doc: str, flags: int = 0) -> SecretPattern:
    return SecretPattern(kind, re.compile(pattern, flags), group, doc)


PATTERNS: tuple[SecretPattern, ...] = (
    _p("private_key",
       r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", 0,
       "PEM private key blocks (RSA, EC, OPENSSH, PKCS#8, encrypted), up to their END line",
       re.DOTALL),
    _p("url_password", r"\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^/\s@]+)@", 1,
       "the password in scheme://user:password@host URLs (database and proxy URLs)"),
    _p("authorization", r"(?i)\b(?:authorization|proxy-authorization)\s*[:=]\s*"
       r"(?:(?:bearer|basic|digest|token|negotiate)\s+)?([^\s,;\"']+)", 1,
       "HTTP Authorization header values"),
    _p("bearer", r"(?i)\bbearer\s+([A-Za-z0-9._~+/=-]{8,})", 1, "bearer tokens anywhere"),
    _p("named_secret",
       # The lookbehind anchors the name at a word start: without it the regex retries
       # from every character of a long word, quadratic on long tokens.
       r"(?i)(?<![A-Za-z0-9_.-])(?:[A-Za-z0-9_.-]*(?:" + SECRET_NAMES + r")[A-Za-z0-9_.-]*)"
       r"[\"']?(?:\s*[:=]\s*|\s+(?=[\"']))[\"']?([^\s\"',;&]+)", 1,
       "the value after a name containing password, passwd, pwd, secret, token, api_key, "
       "access_key, private_key, client_secret, credential, auth_key, session_key, "
       "signature or cookie (key=value, key: value, \"key\": \"value\")"),
    _p("aws_access_key_id", r"\b((?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16})\b", 1,
       "AWS access key ids"),
    _p("github_token", r"\b(gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})\b", 1,
       "GitHub tokens"),
    _p("ai_api_key", r"\b(sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,})\b", 1,
       "OpenAI / Anthropic style API keys (sk-...)"),
    _p("google_api_key", r"\b(AIza[0-9A-Za-z_-]{35})\b", 1, "Google API keys"),
    _p("slack_token", r"\b(xox[abposr]-[A-Za-z0-9-]{10,})\b", 1, "Slack tokens"),
    _p("jwt", r"\b(eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,})", 1,
       "JSON Web Tokens"),
)

# Command-line flags whose next argument is a secret (`--password SECRET`), and the
# short forms that glue the secret on (`mysql -pSECRET`).
SECRET_FLAG = re.compile(r"(?i)^--?[A-Za-z0-9_.-]*(?:" + SECRET_NAMES + r")[A-Za-z0-9_.-]*$")
# `-password X` (single dash, a secret name right after it) still takes the next argument.
SECRET_FLAG_SINGLE = re.compile(r"(?i)^-(?:" + SECRET_NAMES + r")$")
GLUED_SHORT_FLAGS = ("-p",)  # mysql, mysqldump, mariadb: -pPASSWORD


def redaction(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def scrub_text(text: str) -> tuple[str, int]:
    """`text` with every secret replaced, and how many were replaced."""
    total = 0
    for pattern in PATTERNS:
        def replace(match: re.Match[str], p: SecretPattern = pattern) -> str:
            if p.group == 0:
                return redaction(p.kind)
            start, end = match.span(p.group)
            base = match.start()
            whole = match.group(0)
            return whole[:start - base] + redaction(p.kind) + whole[end - base:]

        text, count = pattern.regex.subn(replace, text)
        total += count
    return text, total


def scrub_argv(argv: list[str]) -> tuple[list[str], int]:
    """A command line with secrets removed: flag values, glued -pSECRET, and text."""
    result: list[str] = []
    total = 0
    secret_next = False
    for arg in argv:
        if secret_next:
            result.append(redaction("argument"))
            total += 1
            secret_next = False
            continue
        # A glued short flag first: `-pMyPassw0rd` would otherwise look like a secret-named
        # flag and leak, with the *next* argument redacted instead.
        glued = next((f for f in GLUED_SHORT_FLAGS if arg.startswith(f) and len(arg) > len(f)),
                     None)
        if glued is not None and not arg.startswith("--") and not SECRET_FLAG_SINGLE.match(arg):
            result.append(glued + redaction("argument"))
            total += 1
            continue
        if SECRET_FLAG.match(arg):
            result.append(arg)
            secret_next = True
            continue
        scrubbed, count = scrub_text(arg)
        result.append(scrubbed)
        total += count
    return result, total
