"""Secret scrubbing for captured text: command lines, file content, log lines.

Evidence must never carry a credential, and must not lose what is not one. Text
passes three kinds of rule, all here, applied the same way to every caller:

- token shapes (`PATTERNS`): secrets recognisable anywhere by their form alone
  (PEM private keys, URL passwords, AWS/GitHub/OpenAI/Google/Slack keys, JWTs,
  crypt hashes) and a few line forms (`.pgpass` lines, SNMP v3 users);
- names (`scrub_text`'s second pass): a value after a name that says secret, in
  `k=v`, `k: v`, `"k": "v"`, `k="v"` (XML), `<k>v</k>`, `<add key="k" value="v"/>`
  (`_replace_attribute_pairs`), `--k v`, `k v` at a line
  start (daemon configs: `bindpw`, `requirepass`, `rocommunity`), HTTP header
  directives (`proxy_set_header api-key V`) and YAML block scalars (`password: |`
  and the lines under it). The value is judged too
  (`_keep_value`): a name *ending* in a secret word (`db_password`, `bindpw`) keeps
  only booleans, placeholders, paths and a few enum words; a name that merely
  *contains* one (`password_min_length`, `PASS_MAX_DAYS`, `token_lifetime`) keeps
  numbers, durations, sizes, enums, paths and URLs, and loses only token-like values;
- command lines (`scrub_argv`): flag values (`--password V`, `--token=V`), glued
  `-pV` after a MySQL client, and per-tool secret flags (`sshpass -p V`).

A match becomes `[REDACTED:<kind>]`, keeping the text around it (the key name, the
URL host) so an auditor still sees that a secret was configured there. Files that
are secret by nature are never captured at all: `secret_file_rule`. Everything here
runs in time linear in the text (no regex can backtrack over a long run twice).
Each token rule runs only when one of its literals (`_NEEDLES`) is in the text, and
names are searched in lower-cased text: most lines cost a few substring tests.
The rules are documented in docs/COLLECTORS.md ("Secret scrubbing"); add one with a
seeded secret in the corpus (tests/assets/secrets-corpus) and a unit test.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SecretPattern:
    """One kind of secret: the regex, and which group is the secret (0 = all)."""

    kind: str
    regex: re.Pattern[str]
    group: int
    doc: str


def _p(kind: str, pattern: str, group: int, doc: str, flags: int = 0) -> SecretPattern:
    return SecretPattern(kind, re.compile(pattern, flags), group, doc)


_SCHEMES = r"(?:bearer|basic|digest|token|negotiate|ntlm|apikey|sso-key)"
# Words that follow `authorization:` as a setting, not a credential (mongod.conf).
_NOT_TOKENS = r"(?:enabled|disabled|true|false|yes|no|on|off|none|required|optional|deny|allow)"
PATTERNS: tuple[SecretPattern, ...] = (
    _p("private_key",
       r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY(?: BLOCK)?-----.*?"
       r"(?:-----END \1PRIVATE KEY(?: BLOCK)?-----|\Z)", 0,
       "PEM private key blocks (RSA, EC, OPENSSH, PKCS#8, encrypted, PGP), up to their "
       "END line", re.DOTALL),
    _p("url_password", r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:([^/\s@]+)@", 1,
       "the password in scheme://user:password@host URLs (database, proxy, index URLs)"),
    _p("authorization", r"(?i)\b(?:authorization|proxy-authorization)[\"']?"
       r"(?:\s*[:=]\s*[\"']?|\s+[\"']|\s+(?=" + _SCHEMES + r"\s))"
       r"(?:" + _SCHEMES + r"\s+)?(?!" + _NOT_TOKENS + r"[\s\"',;]|" + _NOT_TOKENS + r"$)"
       r"([^\s,;\"'$%{}]+)", 1,
       "HTTP Authorization header values (after `:`, `=` or a header directive)"),
    _p("bearer", r"(?i)\bbearer\s+([A-Za-z0-9._~+/=-]{8,})", 1, "bearer tokens anywhere"),
    _p("aws_access_key_id", r"\b((?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16})\b", 1,
       "AWS access key ids"),
    _p("github_token", r"\b(gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})\b", 1,
       "GitHub tokens"),
    _p("gitlab_token", r"\b(glpat-[A-Za-z0-9_-]{20,})\b", 1, "GitLab personal access tokens"),
    _p("npm_token", r"\b(npm_[A-Za-z0-9]{36})\b", 1, "npm access tokens"),
    _p("ai_api_key", r"\b(sk-(?:ant-|proj-|svcacct-)?[A-Za-z0-9_-]{20,})\b", 1,
       "OpenAI / Anthropic style API keys (sk-...)"),
    _p("stripe_key", r"\b((?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,})\b", 1,
       "Stripe secret and restricted keys"),
    _p("google_api_key", r"\b(AIza[0-9A-Za-z_-]{35})\b", 1, "Google API keys"),
    _p("slack_token", r"\b(xox[abposre]-[A-Za-z0-9-]{10,})\b", 1, "Slack tokens"),
    _p("vault_token", r"\b(hv[sbr]\.[A-Za-z0-9_-]{20,})", 1, "HashiCorp Vault tokens"),
    _p("jwt", r"\b(eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,})", 1,
       "JSON Web Tokens"),
    _p("password_hash",
       r"(?<![\w$])(\$(?:1|2[abxy]?|5|6|7|y|gy|apr1|argon2i|argon2d|argon2id|scrypt|pbkdf2"
       r"(?:-sha\d+)?)\$[A-Za-z0-9./+=$,-]{8,})", 1,
       "crypt(3) password hashes ($1$, $2y$, $5$, $6$, $y$, $apr1$, argon2): crackable "
       "offline"),
    _p("login_password", r"(?i)(?<![\w-])login=[^\s:=]+:(?!\[REDACTED:)([^\s\"']+)", 1,
       "the password of `login=user:password` (squid `cache_peer`)"),
    _p("netrc_password",
       r"(?im)^[ \t]*(?:default|machine[ \t]+\S+)\b[^\n]*?[ \t]password[ \t]+"
       r"(?!\[REDACTED:)(\S+)", 1,
       "the password of one-line `.netrc` / apt `auth.conf` entries (`machine H login U "
       "password P`)"),
    _p("mysql_password",
       r"(?<![\w.-])(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlcheck|mysqlshow|mysqlsh|mariadb"
       r"(?:-dump|-admin)?)\b[^\n]{0,512}?[ \t]-p(?!\[REDACTED:)([^\s\"';]+)", 1,
       "the glued password of `mysql ... -pPASSWORD` in text (unit files, scripts)"),
    _p("redis_acl_password", r"(?im)(?:^[ \t]*user[ \t]+\S+|\bacl[ \t]+setuser[ \t]+\S+)"
       r"(?:[ \t]+[^\s>]\S*)*[ \t]+>(\S+)", 1,
       "the first `>password` of a Redis ACL `user` line (`#<sha256>` hashes are kept)"),
    _p("pgpass_password",
       r"(?m)^[ \t]*[^\s:#][^\s:]*:(?:\d{1,5}|\*):[^\s:]+:[^\s:]+:(?!\[REDACTED:)(\S[^\n]*)", 1,
       "the password field of `.pgpass`-style `host:port:db:user:password` lines"),
    _p("snmp_auth",
       r"(?im)^[ \t]*createUser[ \t]+(?:-e[ \t]+\S+[ \t]+)?\S+[ \t]+(?:MD5|SHA\S*)[ \t]+"
       r"(\S+)", 1, "the authentication passphrase of an SNMPv3 `createUser` line"),
    _p("snmp_priv",
       r"(?im)^[ \t]*createUser[ \t]+(?:-e[ \t]+\S+[ \t]+)?\S+[ \t]+(?:MD5|SHA\S*)[ \t]+\S+"
       r"[ \t]+(?:DES|AES\S*)[ \t]+(\S+)", 1,
       "the privacy passphrase of an SNMPv3 `createUser` line"),
    _p("snmp_community",
       r"(?im)^[ \t]*(?:com2sec6?[ \t]+(?:-Cn[ \t]+\S+[ \t]+)?\S+[ \t]+\S+"
       r"|(?:trap2?sink|informsink)[ \t]+\S+)[ \t]+([^\s#]+)", 1,
       "SNMP communities in `com2sec NAME SOURCE COMMUNITY` and `trapsink HOST COMMUNITY` "
       "(`rocommunity`/`rwcommunity` are caught by name)"),
)

# Lower-case strings of which a match of each pattern must contain one: a cheap `in`
# test skips the regex on text that cannot match (most log lines, most config files).
_NEEDLES: dict[str, tuple[str, ...]] = {
    "private_key": ("private key",),
    "url_password": ("://",),
    "authorization": ("authorization",),
    "bearer": ("bearer",),
    "aws_access_key_id": ("akia", "asia", "agpa", "aida", "aroa", "anpa", "anva", "aipa"),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "gitlab_token": ("glpat-",),
    "npm_token": ("npm_",),
    "ai_api_key": ("sk-",),
    "google_api_key": ("aiza",),
    "stripe_key": ("sk_live_", "sk_test_", "rk_live_", "rk_test_"),
    "slack_token": ("xox",),
    "vault_token": ("hvs.", "hvb.", "hvr."),
    "jwt": ("eyj",),
    "password_hash": ("$",),
    "login_password": ("login=",),
    "netrc_password": ("password",),
    "mysql_password": ("mysql", "mariadb"),
    "redis_acl_password": (">",),
    "pgpass_password": (":",),
    "snmp_auth": ("createuser",),
    "snmp_priv": ("createuser",),
    "snmp_community": ("com2sec", "sink"),
}
_RULES = tuple((p, frozenset(_NEEDLES[p.kind])) for p in PATTERNS)
_ALL_NEEDLES = tuple(sorted({n for needles in _NEEDLES.values() for n in needles}))
# ASCII-only lower-casing keeps every index of the text (str.lower() may not: "İ").
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lower(text: str) -> str:
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


# --- names ----------------------------------------------------------------------------

# Words that, ending a name's last component, make the value after it a secret.
# Matched on the lowercased component as a suffix: `requirepass`, `bindpw`,
# `rocommunity`, `ldap_default_authtok`, `wpa_passphrase`.
_SECRET_SUFFIX = re.compile(
    r"(?:password|passwd|passphrase|pass|pwd|pw|secret|token|authtok|psk|community"
    r"|credentials?|cookie|signature|masterauth|(?:api|access|secret|private|priv|auth"
    r"|session|master|encryption|license|signing|hmac|preshared|shared|subscription|wep"
    r"|app|consumer|storage)key)$")
# `key` is a secret when a component before it says which (`api_key`, `x-api-key`,
# `aws_secret_access_key`, `wep_key0`), or alone as `auth` (docker, npm `_auth`).
_KEY_QUALIFIERS = frozenset({
    "api", "access", "secret", "private", "priv", "auth", "session", "master", "encryption",
    "enc", "license", "signing", "sign", "hmac", "preshared", "shared", "subscription", "wep",
    "app", "consumer", "account", "storage", "sas", "webhook", "client", "crypt", "jwt", "psk",
    "sso", "admin",
})
# Components that, anywhere in a name, mark it as about a secret without being one
# (`password_min_length`, `PASS_MAX_DAYS`, `token_lifetime`, `PasswordAuthentication`).
_SECRET_ROOT = re.compile(
    r"password|passwd|passphrase|secret|token|authtok|credential|community|^pass$|^pwd$"
    r"|^pw$|^psk$|^cookie$")
# Full names (normalized) that end in a secret word but are not one: sudoers tags,
# nginx upstream directives (any name ending in `bypass` is not one either).
_NOT_SECRET_NAMES = frozenset({
    "nopasswd", "proxy_pass", "fastcgi_pass", "uwsgi_pass", "scgi_pass", "grpc_pass",
    "memcached_pass", "compass",
})
# Commands named like a secret word: at a line start they are commands, not keys.
_COMMAND_NAMES = re.compile(r"passwd$")

# Values a secret name may carry that are not secrets.
_KEEP_ANY = re.compile(
    r"(?i)(?:yes|no|true|false|on|off|none|null|nil|enabled?|disabled?|\*+|[{\[|>]|[|>][-+]"
    r"|<[^<>]*>|\$\{[^}]*\}|\$\(?[A-Za-z_][A-Za-z0-9_]*\)?|%\([^)]*\)[sd]|%\{[^}]*\}"
    r"|\{\{[^}]*\}\}|\[REDACTED:[a-z_]+\]|!vault"
    r"|\[[a-z_]+=\w+"  # a PAM control `[success=1 default=ignore]`
    r"|(?:\$\{[^}]*\}|\$[A-Za-z_]\w*|~)/\S*|os\.environ/\w+|env:\w+|[a-z]+:/[^\s]*"
    r"|\$\(.*|`.*"  # a command substitution (`passwd=$(getent passwd "$user")`)
    r"|\d{1,5}/(?:tcp|udp|sctp|dccp)"  # /etc/services: `auth 113/tcp`
    r"|(?-i:(?:/[a-z0-9._-]+)+/?))")  # plain lower-case names (`/path/to/key`), not base64
_ENUM_WORDS = frozenset({
    # PAM control values and nsswitch sources (`password requisite ...`, `passwd: files`)
    "required", "requisite", "sufficient", "optional", "include", "substack",
    "files", "sss", "ldap", "compat", "systemd", "nis", "winbind", "db", "dns", "myhostname",
    "resolve", "mymachines", "cache",
    # hash and auth schemes (`pam_password md5`, `password_encryption scram-sha-256`)
    "md5", "sha", "sha1", "sha256", "sha512", "crypt", "exop", "clear", "clear_remove_old",
    "ad", "nds", "racf", "scram-sha-256", "plain", "bcrypt", "argon2", "argon2id", "pbkdf2",
    "yescrypt", "des", "aes", "bearer", "basic", "digest", "negotiate", "ntlm",
    # where a secret comes from, not the secret
    "prompt", "ask", "stdin", "env", "file", "keyring", "vault", "kms", "any", "auto",
    # EAP inner methods (`phase2="auth=MSCHAPV2"`, `phase2-auth=mschapv2`)
    "mschapv2", "mschap", "chap", "pap", "gtc", "peap", "ttls", "tls", "md5-challenge",
})
_PATH = re.compile(r"(?:/|~/|\.\.?/|file:|[A-Za-z]:\\)[^\s]*")
_PATH_PREFIXES = ("/etc/", "/var/", "/run/", "/opt/", "/usr/", "/home/", "/root/", "/srv/",
                  "/proc/", "/dev/", "/mnt/", "/data/", "/app/", "/secrets/",
                  "/vault/", "~/", "./", "../", "file:")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_NUMBER = re.compile(
    r"(?i)[+-]?\d{1,12}(?:\.\d+)?\s*(?:%|ms|us|s|secs?|seconds?|m|mins?|minutes?|h|hrs?"
    r"|hours?|d|days?|w|weeks?|mo|months?|y|years?|[kmgtp]i?b?|bytes?)?")
_ENUM = re.compile(r"[A-Za-z]+[0-9]*[A-Za-z]*(?:[-_.:|][A-Za-z0-9]+)*")


def name_components(name: str) -> list[str]:
    """`keyStorePassword` -> [key, store, password]; `-Dx.y_Z` -> [dx, y, z]."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name.lstrip("-"))
    return [part for part in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if part]


@dataclass(frozen=True)
class NameVerdict:
    """How a name's value is judged: `exact` (the name is a secret's), `about`
    (the name is about a secret: a policy or a reference), or neither."""

    exact: bool
    about: bool


_NEITHER = NameVerdict(False, False)


@functools.lru_cache(maxsize=4096)
def classify_name(name: str) -> NameVerdict:
    """Whether a key or flag name announces a secret value (see the module doc)."""
    parts = name_components(name)
    if not parts or "_".join(parts) in _NOT_SECRET_NAMES:
        return _NEITHER
    last = parts[-1].rstrip("0123456789") or parts[-1]
    if len(parts) > 1 and last == "key" and parts[-2] in _KEY_QUALIFIERS:
        return NameVerdict(True, True)
    if parts == ["auth"] or (_SECRET_SUFFIX.search(last) and not last.endswith("bypass")):
        return NameVerdict(True, True)
    if last == "key":  # `STRIPE_KEY`, `ssl_key`: a token-like value goes, a path stays
        return NameVerdict(False, True)
    for i, part in enumerate(parts):
        if _SECRET_ROOT.search(part) or (part == "key" and i and parts[i - 1] in _KEY_QUALIFIERS):
            return NameVerdict(False, True)
    return _NEITHER


def _keep_value(value: str, verdict: NameVerdict) -> bool:
    """True when `value` after a secret-ish name is not itself a secret."""
    if not value or _KEEP_ANY.fullmatch(value) or value.lower() in _ENUM_WORDS:
        return True
    if value.startswith(_PATH_PREFIXES) and _PATH.fullmatch(value):
        return True
    if verdict.exact:
        return False
    first = value.split(None, 1)[0]
    if first != value and first.startswith(_PATH_PREFIXES) and _PATH.fullmatch(first):
        return True  # a command line (`credential_process = /usr/bin/x --flag`)
    return bool(_NUMBER.fullmatch(value) or _URL.fullmatch(value) or _PATH.fullmatch(value)
                or (len(value) <= 32 and _ENUM.fullmatch(value)
                    and sum(c.isdigit() for c in value) <= 4))


# A name that may announce a secret: found by its root in the lower-cased text (a
# case-insensitive regex is many times slower), anchored at a word start so a long
# run is scanned once. Names may carry dots and dashes (spring.datasource.password,
# x-api-key, --db-password).
_CANDIDATE = re.compile(
    r"(?<![a-z0-9_.\-])[a-z0-9_.\-]*?"
    r"(?:pass|pwd|pw|secret|tok|key|psk|communit|credential|cookie|auth|signature)"
    r"[a-z0-9_.\-]*")
# What may follow a name: its closing quote, then `=`, `:`, `=>`, `>` (XML element)
# or blanks (only at a line start, after a flag, or in a header directive).
_SEPARATOR = re.compile(r"([\"']?)([ \t]*(?:=>|:=|[=:>])[ \t]*|[ \t]+)")
_QUOTED = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"?|'[^'\n]*'?")
_INLINE_VALUE = re.compile(r"[^\s\"',;&<>]+")
_WORD_VALUE = re.compile(r"[^\s\"'<>]+")
# At a line start a value runs to the end of the line, except before a ` # comment`
# and `; next=` style continuations (connection strings).
_LINE_VALUE = re.compile(r"(?:[^\n;,&# \t]|[ \t]+(?!#)|#|[;,&](?![ \t]*[\w.\-]+[ \t]*=))*")
_LINE_PREFIX = re.compile(r"[ \t]*(?:(?:export|set|declare|-)[ \t]+)?[\"']?")
# Config directives whose arguments are `NAME VALUE` pairs: headers and env settings.
_DIRECTIVE = re.compile(
    r"(?i)[ \t]*(?:proxy_set_header|add_header|more_set_headers|more_set_input_headers"
    r"|grpc_set_header|fastcgi_param|uwsgi_param|scgi_param|env|setenv|passenv"
    r"|requestheader|header|http-request|http-response|http-check|request_header_add"
    r"|reqadd|rspadd|set-header|add-header|stats|user)\b")
_SCHEME = re.compile(r"(?i)(?:bearer|basic|digest|token|negotiate|ntlm|apikey|sso-key)[ \t]+")


def redaction(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def _replace_tokens(text: str) -> tuple[str, int]:
    total = 0
    lower = _lower(text)
    present = {needle for needle in _ALL_NEEDLES if needle in lower}
    for pattern, needles in _RULES:
        if present.isdisjoint(needles):
            continue
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


def _value_span(text: str, at: int, line_start: bool, directive: bool,
                blank_sep: bool) -> tuple[int, int]:
    """Where the value starting at `at` ends (its quotes excluded)."""
    if at < len(text) and text[at] in "\"'":
        quoted = _QUOTED.match(text, at)
        assert quoted is not None
        end = quoted.end()
        inner_end = end - 1 if end - at > 1 and text[end - 1] == text[at] else end
        return at + 1, inner_end
    if directive:
        scheme = _SCHEME.match(text, at)
        if scheme is not None:
            at = scheme.end()
        word = _WORD_VALUE.match(text, at)
        end = word.end() if word else at
        return at, end - 1 if end > at and text[end - 1] == ";" else end
    if line_start and blank_sep:
        word = _WORD_VALUE.match(text, at)
        end = word.end() if word else at
        return at, end - 1 if end > at and text[end - 1] == ";" else end
    if line_start:
        value = _LINE_VALUE.match(text, at)
        end = value.end() if value else at
        while end > at and text[end - 1] in " \t;,":
            end -= 1
        return at, end
    value = _INLINE_VALUE.match(text, at)
    return at, value.end() if value else at


_BLOCK_SCALAR = re.compile(r"[|>][-+]?[1-9]?")


def _block_scalar(text: str, line_start: int, value_end: int) -> tuple[int, int] | None:
    """The span of a YAML block scalar's content: the lines after the key's line that
    are blank or indented deeper than it (from the first content character)."""
    indent = len(text[line_start:value_end]) - len(text[line_start:value_end].lstrip(" \t"))
    pos = text.find("\n", value_end) + 1
    first = end = -1
    while 0 < pos < len(text):
        eol = text.find("\n", pos)
        eol = len(text) if eol < 0 else eol
        line = text[pos:eol]
        body = line.lstrip(" \t")
        if body:
            if len(line) - len(body) <= indent:
                break
            if first < 0:
                first = pos + len(line) - len(body)
            end = eol
        pos = eol + 1
    return None if first < 0 else (first, end)


def _replace_named(text: str) -> tuple[str, int]:
    """Values after secret names, judged by `_keep_value`."""
    pieces: list[str] = []
    done = 0  # text[:done] is in pieces
    line_start = 0
    line_known = 0  # newlines before this are accounted for in line_start
    directive_line = -1  # line_start of a line known to be a directive, or -1
    checked_directive = -1
    total = 0
    for match in _CANDIDATE.finditer(_lower(text)):
        start, name_end = match.span()
        if start < done:
            continue
        name = text[start:name_end]
        verdict = classify_name(name)
        if not verdict.about:
            continue
        newline = text.rfind("\n", line_known, start)
        if newline >= 0:
            line_start = newline + 1
        line_known = start
        sep = _SEPARATOR.match(text, name_end)
        if sep is None:
            continue
        separator = sep.group(2)
        blank = separator.strip() == ""
        prefix = _LINE_PREFIX.match(text, line_start)
        at_line_start = prefix is not None and prefix.end() == start
        flag = name.startswith("-")
        lower = name.lower()
        if separator.strip() == ">" and not (start > 0 and text[start - 1] == "<"):
            continue
        if separator.strip() == ":" and lower in {"passwd", "nopasswd"}:
            continue  # sudoers `PASSWD:` tag, nsswitch `passwd:` database
        if blank:
            if checked_directive != line_start:
                checked_directive = line_start
                directive_line = line_start if _DIRECTIVE.match(text, line_start) else -1
            directive = directive_line == line_start and not at_line_start
            if flag:
                if lower.startswith(("--no-", "-no-")):
                    continue
            elif directive:
                pass
            elif not at_line_start or _COMMAND_NAMES.search(lower):
                continue
        else:
            directive = False
        if sep.group(2).strip() == ":" and text.startswith("//", sep.end()):
            continue  # `scheme://`: a URL, not a key
        value_start, value_end = _value_span(text, sep.end(), at_line_start and not flag,
                                             directive, blank)
        if separator.strip() == ">" and not text.startswith("</", value_end):
            continue  # `<Key>Return:` (X11 translations), not `<key>V</key>`
        value = text[value_start:value_end]
        if verdict.exact and at_line_start and _BLOCK_SCALAR.fullmatch(value.strip()):
            block = _block_scalar(text, line_start, value_end)
            if block is None:
                continue
            value_start, value_end = block  # `password: |` and the lines indented under it
        elif _keep_value(value.strip(), verdict):
            continue
        pieces.append(text[done:value_start])
        pieces.append(redaction("named_secret"))
        done = value_end
        total += 1
    if not total:
        return text, 0
    pieces.append(text[done:])
    return "".join(pieces), total


# A name given in an attribute and its value in another attribute or the element's
# text: .NET appSettings `<add key="ApiKey" value="..."/>`, Spring and Hibernate
# `<property name="password" value="..."/>`, `<entry key="db.password">...</entry>`.
_ATTRIBUTE_PAIR = re.compile(
    r"(?i)\b(?:key|name)[ \t]*=[ \t]*([\"'])([^\"'<>\n]{1,128})\1"
    r"(?:[ \t]+(?:[\w:.-]{1,64}[ \t]*=[ \t]*(?:\"[^\"\n]{0,512}\"|'[^'\n]{0,512}')[ \t]+)"
    r"{0,8}?value[ \t]*=[ \t]*([\"'])([^\"'\n]{0,1024})\3"
    r"|[^<>\n]{0,512}>([^<\n]{1,1024})<)")
# Bounded runs: a long line of `key="x"` without a `>` costs each start a bounded scan.


def _replace_attribute_pairs(text: str) -> tuple[str, int]:
    lower = _lower(text)
    if "key" not in lower and "name" not in lower:
        return text, 0
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        group = 4 if match.group(4) is not None else 5
        value = match.group(group)
        verdict = classify_name(match.group(2))
        if not (verdict.exact or verdict.about) or value is None or \
                _keep_value(value.strip(), verdict) or value.startswith("[REDACTED:"):
            return match.group(0)
        count += 1
        start, end = match.span(group)
        whole, base = match.group(0), match.start()
        return whole[:start - base] + redaction("named_secret") + whole[end - base:]

    return _ATTRIBUTE_PAIR.sub(replace, text), count


def scrub_text(text: str) -> tuple[str, int]:
    """`text` with every secret replaced, and how many were replaced."""
    text, tokens = _replace_tokens(text)
    text, named = _replace_named(text)
    text, pairs = _replace_attribute_pairs(text)
    return text, tokens + named + pairs


# --- command lines --------------------------------------------------------------------

_MYSQL_TOOLS = frozenset({
    "mysql", "mysqldump", "mysqladmin", "mysqlimport", "mysqlcheck", "mysqlshow", "mysqlsh",
    "mysqlbinlog", "mysqlpump", "mariadb", "mariadb-dump", "mariadb-admin", "mariadb-import",
    "mariadb-check",
})
# Short flags whose next argument is a secret, per tool (basename; `snmp*` = any
# net-snmp tool).
_TOOL_SECRET_FLAGS: dict[str, frozenset[str]] = {
    "sshpass": frozenset({"-p"}),
    "docker": frozenset({"-p"}),
    "podman": frozenset({"-p"}),
    "redis-cli": frozenset({"-a"}),
    "snmp*": frozenset({"-A", "-X", "-c"}),
    "smbclient": frozenset({"-U", "--user"}),
    "curl": frozenset({"-u", "--user", "-U", "--proxy-user"}),
    "wget": frozenset({"--password", "--http-password", "--proxy-password"}),
}
# `-password X` after mysql: both readings (`-p assword`, `--password X`) are redacted.
_SECRET_WORD_FLAG = re.compile(r"(?i)-(?:password|passwd|pass|pwd|pw)")
# Flags that take a `user:password` (curl) or `user%password` (smbclient) argument.
_USER_PASS_FLAGS = frozenset({"-u", "--user", "-U", "--proxy-user"})


def _tool_flags(tool: str) -> frozenset[str]:
    for pattern, flags in _TOOL_SECRET_FLAGS.items():
        if fnmatch.fnmatchcase(tool, pattern):
            return flags
    return frozenset()


def _user_pass(arg: str) -> tuple[str, int]:
    for sep in (":", "%"):
        user, found, secret = arg.partition(sep)
        if found and secret:
            return user + sep + redaction("argument"), 1
    return arg, 0


def scrub_argv(argv: list[str]) -> tuple[list[str], int]:
    """A command line with secrets removed: flag values, glued -pSECRET, and text."""
    result: list[str] = []
    total = 0
    secret_next: str | None = None  # the flag whose value comes next
    tool = ""  # the command whose flags these are: argv[0], or a known tool after it
    for arg in argv:
        if secret_next is not None:
            if secret_next in _USER_PASS_FLAGS:
                scrubbed, count = _user_pass(arg)
            else:
                scrubbed, count = redaction("argument"), 1
            result.append(scrubbed)
            total += count
            secret_next = None
            continue
        if not arg.startswith("-"):
            base = arg.rsplit("/", 1)[-1]
            if not tool or base in _MYSQL_TOOLS or _tool_flags(base):
                tool = base  # `sudo mysql`, `python3 /usr/local/bin/sshpass`
        elif tool in _MYSQL_TOOLS and arg.startswith("-p") \
                and not arg.startswith("--") and len(arg) > 2:
            # mysql -pSECRET: the password glued on (and `-password X` takes both).
            result.append("-p" + redaction("argument"))
            total += 1
            if _SECRET_WORD_FLAG.fullmatch(arg):
                secret_next = arg
            continue
        elif arg in _tool_flags(tool):
            result.append(arg)
            secret_next = arg
            continue
        elif "=" not in arg:
            verdict = classify_name(arg)
            if verdict.exact and not arg.lower().startswith(("--no-", "-no-")):
                result.append(arg)
                secret_next = arg
                continue
        scrubbed, count = scrub_text(arg)
        result.append(scrubbed)
        total += count
    return result, total


def scrub_command_line(command: str) -> tuple[str, int]:
    """A command line known only as text (sudo's COMMAND=, systemd's argv[]=), words
    split on spaces: scrubbed per argument (`--password X`, `mysql -pX`), then across
    arguments (`-H Authorization: Bearer X` spans three)."""
    args, count = scrub_argv(command.split(" "))
    text, more = scrub_text(" ".join(args))
    return text, count + more


# --- files secret by nature -----------------------------------------------------------

@dataclass(frozen=True)
class SecretFile:
    """A path glob (matched on the whole path, or the name when it has no `/`)
    whose files are captured as hashes and metadata only."""

    glob: str
    doc: str


SECRET_FILES: tuple[SecretFile, ...] = (
    SecretFile("shadow", "password hashes (/etc/shadow)"),
    SecretFile("shadow-", "its backup"),
    SecretFile("gshadow", "group password hashes"),
    SecretFile("gshadow-", "its backup"),
    SecretFile("/etc/security/opasswd", "old password hashes (pam_pwhistory)"),
    SecretFile("*.keytab", "Kerberos keytabs (/etc/krb5.keytab)"),
    SecretFile("ssh_host_*_key", "SSH host private keys"),
    SecretFile("id_rsa", "SSH user private keys"),
    SecretFile("id_dsa", "SSH user private keys"),
    SecretFile("id_ecdsa", "SSH user private keys"),
    SecretFile("id_ecdsa_sk", "SSH user private keys"),
    SecretFile("id_ed25519", "SSH user private keys"),
    SecretFile("id_ed25519_sk", "SSH user private keys"),
    SecretFile("*.key", "TLS and other private keys by name"),
    SecretFile("*.p12", "PKCS#12 key stores"),
    SecretFile("*.pfx", "PKCS#12 key stores"),
    SecretFile("*.jks", "Java key stores"),
    SecretFile("*.keystore", "Java key stores"),
    SecretFile("*.bcfks", "Bouncy Castle FIPS key stores"),
    SecretFile("*.p8", "PKCS#8 private keys"),
    SecretFile("*.ppk", "PuTTY private keys"),
    SecretFile("*.kdbx", "KeePass databases"),
    SecretFile("/etc/ssl/private/*", "the TLS private key directory (Debian)"),
    SecretFile("/etc/pki/tls/private/*", "the TLS private key directory (RHEL)"),
    SecretFile(".pgpass", "PostgreSQL password file"),
    SecretFile(".netrc", "FTP/curl credentials"),
    SecretFile("_netrc", "FTP/curl credentials"),
    SecretFile(".git-credentials", "git credential store"),
    SecretFile("*/.aws/credentials", "AWS CLI credentials"),
    SecretFile("*/.docker/config.json", "Docker registry credentials"),
    SecretFile("*/.config/gcloud/*credentials*", "Google Cloud credentials"),
    SecretFile("*/.azure/*token*", "Azure CLI token caches"),
    SecretFile("*/.terraform.d/credentials.tfrc.json", "Terraform Cloud tokens"),
    SecretFile(".vault-token", "HashiCorp Vault token"),
    SecretFile("*/apt/auth.conf", "apt repository credentials (netrc format)"),
    SecretFile("*/apt/auth.conf.d/*", "apt repository credentials (netrc format)"),
    SecretFile("*/ppp/*-secrets", "PPP CHAP/PAP secrets"),
    SecretFile("*.secrets", "rsync and similar secrets files"),
    SecretFile("*/davfs2/secrets", "WebDAV credentials"),
    SecretFile("*htpasswd", "HTTP basic-auth password hashes"),
    SecretFile("/etc/gamsa/pseudonym.key", "gamsa's own pseudonym key"),
)
PRIVATE_KEY_CONTENT = "content: a PEM private key"


def secret_file_rule(path: str) -> str | None:
    """The `SECRET_FILES` glob that `path` (a host path) matches, or None."""
    name = path.rsplit("/", 1)[-1]
    for rule in SECRET_FILES:
        target = path if "/" in rule.glob else name
        if fnmatch.fnmatchcase(target, rule.glob):
            return rule.glob
    return None


def is_private_key_content(raw: bytes) -> bool:
    """Whether file bytes hold a PEM (or PuTTY) private key: never captured."""
    return (b"-----BEGIN " in raw and b"PRIVATE KEY" in raw) \
        or raw.startswith(b"PuTTY-User-Key-File")
