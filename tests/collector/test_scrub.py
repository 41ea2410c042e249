"""Secret scrubbing: seeded real-looking secrets never survive."""

from __future__ import annotations

import re
import time

import pytest

from collector.scrub import scrub_argv, scrub_command_line, scrub_text, secret_file_rule

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


# --- one test per form: the secret goes, the line around it stays -----------------

FORMS = [
    # (line, secret, the line after scrubbing with the secret replaced by [R])
    ("bindpw Zq8mK2pL9x", "Zq8mK2pL9x", "bindpw [R]"),  # k v (nslcd, nss_ldap)
    ("requirepass Zq8mK2pL9x", "Zq8mK2pL9x", "requirepass [R]"),  # redis
    ("masterauth 'Zq8 mK2'", "Zq8 mK2", "masterauth '[R]'"),
    ("rocommunity Zq8mK2pL9x 10.0.0.0/8", "Zq8mK2pL9x", "rocommunity [R] 10.0.0.0/8"),
    ("ldap_default_authtok = Zq8mK2pL9x", "Zq8mK2pL9x", "ldap_default_authtok = [R]"),
    ("  auth_pass 1234", "1234", "  auth_pass [R]"),  # keepalived: digits are a secret too
    ("DB_PASSWORD: 'Zq8mK2pL9x'", "Zq8mK2pL9x", "DB_PASSWORD: '[R]'"),  # YAML
    ("password = Zq8 mK2pL9x", "mK2pL9x", "password = [R]"),  # INI: to the end of the line
    ("password: Zq8mK2pL9x  # rotated 2026-11", "Zq8mK2pL9x",
     "password: [R]  # rotated 2026-11"),  # a trailing comment stays
    ('{"api_key": "Zq8mK2pL9x", "timeout": 30}', "Zq8mK2pL9x",
     '{"api_key": "[R]", "timeout": 30}'),  # JSON
    ('<server id="x" password="Zq8mK2pL9x"/>', "Zq8mK2pL9x",
     '<server id="x" password="[R]"/>'),  # XML attribute
    ("<passphrase>Zq8mK2pL9x</passphrase>", "Zq8mK2pL9x",
     "<passphrase>[R]</passphrase>"),  # XML element
    ('proxy_set_header api-key "Zq8mK2pL9x";', "Zq8mK2pL9x",
     'proxy_set_header api-key "[R]";'),  # nginx header
    ('RequestHeader set X-API-Key "Zq8mK2pL9x"', "Zq8mK2pL9x",
     'RequestHeader set X-API-Key "[R]"'),  # Apache
    ("http-request set-header X-Auth-Token Zq8mK2pL9x", "Zq8mK2pL9x",
     "http-request set-header X-Auth-Token [R]"),  # HAProxy
    ("curl -H 'api-key: Zq8mK2pL9x' https://gw", "Zq8mK2pL9x",
     "curl -H 'api-key: [R]' https://gw"),  # a header on a command line
    ("ExecStart=/opt/app --api-key Zq8mK2pL9x --port 8443", "Zq8mK2pL9x",
     "ExecStart=/opt/app --api-key [R] --port 8443"),  # --flag VALUE in text
    ('Environment="DB_PASSWORD=Zq8mK2pL9x" "LEVEL=info"', "Zq8mK2pL9x",
     'Environment="DB_PASSWORD=[R]" "LEVEL=info"'),  # systemd
    ("psk=\"Zq8 mK2pL9x\"", "Zq8 mK2pL9x", 'psk="[R]"'),  # wpa_supplicant
    ("wep_key0=0123456789", "0123456789", "wep_key0=[R]"),
    ("VENDOR_KEY=Zq8mK2pL9xW4Rt7Y", "Zq8mK2pL9xW4Rt7Y", "VENDOR_KEY=[R]"),  # any *_KEY, token-like
    ("password = /K7MDENG/bPxRfiCYEXAMPLEKEY", "/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "password = [R]"),  # base64 may start with `/`: only plain paths are kept
    ("//nexus/npm/:_authToken=NpmToken.1f2e", "NpmToken.1f2e", "//nexus/npm/:_authToken=[R]"),
    ("spring.datasource.password=Zq8mK2pL9x", "Zq8mK2pL9x", "spring.datasource.password=[R]"),
    ("-Djavax.net.ssl.keyStorePassword=Zq8mK2pL9x", "Zq8mK2pL9x",
     "-Djavax.net.ssl.keyStorePassword=[R]"),
    ("Server=db;User Id=sa;Password=Zq8mK2pL9x;", "Zq8mK2pL9x",
     "Server=db;User Id=sa;Password=[R];"),
]


@pytest.mark.parametrize(("line", "secret", "expected"), FORMS)
def test_name_forms(line: str, secret: str, expected: str) -> None:
    scrubbed, count = scrub_text(line)
    assert secret not in scrubbed and count >= 1
    assert re.sub(r"\[REDACTED:[a-z_]+\]", "[R]", scrubbed) == expected


@pytest.mark.parametrize(("line", "expected"), [
    ("localhost:5432:core:app:Zq8mK2pL9x", "localhost:5432:core:app:[R]"),  # .pgpass
    ("machine nexus login ci password Zq8mK2pL9x", "machine nexus login ci password [R]"),
    ("cache_peer p parent 8080 0 login=u:Zq8mK2pL9x", "cache_peer p parent 8080 0 login=u:[R]"),
    ("user app on >Zq8mK2pL9x ~app:* +@read", "user app on >[R] ~app:* +@read"),  # redis ACL
    ("createUser mon SHA-256 Zq8mK2pL9x AES Pv7nL3kQ1z",
     "createUser mon SHA-256 [R] AES [R]"),  # SNMPv3
    ("com2sec ro default Zq8mK2pL9x", "com2sec ro default [R]"),
    ("ExecStartPre=/usr/bin/mysqladmin -uroot -pZq8mK2pL9x ping",
     "ExecStartPre=/usr/bin/mysqladmin -uroot -p[R] ping"),
    ("root:$6$rounds=5000$Zq8mK2pL9x$abcdefghijkl:19700::::::", "root:[R]:19700::::::"),
    ("VAULT_ADDR=https://v VAULT=hvs.CAESIZq8mK2pL9xZq8mK2pL9x", "VAULT_ADDR=https://v VAULT=[R]"),
    ("STRIPE=sk_live_4eC39HqLyjWDarjtT1zdp7dc", "STRIPE=[R]"),
])
def test_shape_forms(line: str, expected: str) -> None:
    scrubbed, _count = scrub_text(line)
    assert re.sub(r"\[REDACTED:[a-z_]+\]", "[R]", scrubbed) == expected


# Policy lines an inspector asks for: never changed.
POLICY = [
    "password_min_length = 12",
    "token_lifetime=3600",
    "PASS_MAX_DAYS\t90",
    "PASS_MIN_LEN 12",
    "minlen = 14",
    "dcredit = -1",
    "PasswordAuthentication no",
    "PermitEmptyPasswords no",
    "HostKey /etc/ssh/ssh_host_ed25519_key",
    "password_file=/etc/app/db.pass",
    "password_encryption = scram-sha-256",
    "pam_password md5",
    "ldap_default_authtok_type = password",
    "cache_credentials = True",
    "offline_credentials_expiration = 2",
    "password-flags=0",
    "app.jwt.refresh-token-validity=7d",
    "max_tokens: 4096",
    "validate_password.policy = STRONG",
    "Defaults\tpasswd_tries=3",
    "alice ALL=(ALL) NOPASSWD: /usr/bin/systemctl restart nginx",
    "bob ALL=(root) PASSWD: /usr/bin/less /var/log/syslog",
    "backup ALL=(postgres) NOPASSWD:SETENV: /usr/bin/pg_dump",
    "password\trequisite\tpam_pwquality.so retry=3",
    "password\t[success=1 default=ignore]\tpam_unix.so obscure use_authtok try_first_pass yescrypt",
    "passwd:         files systemd sss",
    "proxy_pass http://backend;",
    "ProxyPass /ai/ https://gw:8443/openai/",
    "proxy_set_header Authorization \"\";",
    "proxy_set_header X-Request-Id $request_id;",
    "security:\n  authorization: enabled",
    "credential_process = /usr/local/bin/aws-vault export --format=json audit",
    "api_key: os.environ/ANTHROPIC_API_KEY",
    "DB_PASSWORD=${DB_PASSWORD}",
    "password: \"{{ vault_db_password }}\"",
    "SSLPassPhraseDialog exec:/usr/share/apache2/ask-for-passphrase",
    "phase2=\"auth=MSCHAPV2\"",
    "Failed password for invalid user admin from 203.0.113.7 port 40112 ssh2",
    "pam_unix(passwd:chauthtok): password changed for bob",
    "--no-password --password-stdin",
    # from a stock Debian /etc: the scrubber runs over all of it, 11 sample secrets changed
    "auth\t\t113/tcp\t\tauthentication tap ident",  # /etc/services
    "PREVENT_NO_AUTH superuser",  # login.defs
    "auth\trequired\tpam_faillock.so preauth silent deny=5 unlock_time=900",
    "-auth\toptional\tpam_gnome_keyring.so",
    "passwd=$(getent passwd \"$user\")",
    "#jdk.http.ntlm.transparentAuth=allHosts",
    "<privateKey>/path/to/private/key</privateKey>",
    "<Key>Return:\t\tPopdownFileDialog(okay)",  # X11 translations: not an XML element
    "key = /etc/openvpn/client.key",
    "KEY_SIZE=2048",
]


@pytest.mark.parametrize("line", POLICY)
def test_policy_lines_are_kept(line: str) -> None:
    assert scrub_text(line) == (line, 0)


@pytest.mark.parametrize(("argv", "expected"), [
    (["sshpass", "-p", "Zq8", "ssh", "h"], ["sshpass", "-p", "[R]", "ssh", "h"]),
    (["redis-cli", "-h", "r1", "-a", "Zq8", "ping"],
     ["redis-cli", "-h", "r1", "-a", "[R]", "ping"]),
    (["snmpwalk", "-v3", "-l", "authPriv", "-A", "Zq8", "-X", "Pv7", "h"],
     ["snmpwalk", "-v3", "-l", "authPriv", "-A", "[R]", "-X", "[R]", "h"]),
    (["curl", "-u", "alice:Zq8", "https://x"], ["curl", "-u", "alice:[R]", "https://x"]),
    (["sudo", "-u", "db", "mysql", "-pZq8", "core"],
     ["sudo", "-u", "db", "mysql", "-p[R]", "core"]),
    (["ssh", "-p2222", "host"], ["ssh", "-p2222", "host"]),  # -p is a password for mysql only
    (["docker", "login", "-u", "ci", "-p", "Zq8", "r"], ["docker", "login", "-u", "ci", "-p", "[R]",
                                                        "r"]),
    (["app", "--no-password", "--verbose"], ["app", "--no-password", "--verbose"]),
    (["app", "--password-file", "/etc/x"], ["app", "--password-file", "/etc/x"]),
])
def test_argv_forms(argv: list[str], expected: list[str]) -> None:
    scrubbed, _count = scrub_argv(argv)
    assert [re.sub(r"\[REDACTED:[a-z_]+\]", "[R]", a) for a in scrubbed] == expected


@pytest.mark.parametrize("text", [
    "a." * 50_000, "a-" * 50_000, "key-" * 25_000, "sk-" * 33_000, "eyJa." * 20_000,
    "mysql " * 16_000, "password " * 11_000, "password=" * 11_000, 'password="' * 10_000,
    "http://a:" * 11_000, "Authorization: " * 6_000, "h:1:d:u:" * 12_000,
    "proxy_set_header " + "api-key " * 12_000, "user a " + "b " * 50_000,
    "password=x\n" * 9_000, "$6$" * 33_000,
])
def test_adversarial_lines_scrub_in_linear_time(text: str) -> None:
    import time

    start = time.perf_counter()
    scrub_text(text)
    # ~100 kB each: linear rules take well under 0.5 s here; a quadratic one took seconds
    # to minutes (url_password over "a.a.a...", the mysql rule over "mysql mysql ...").
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize(("path", "rule"), [
    ("/etc/shadow", "shadow"), ("/etc/gshadow-", "gshadow-"),
    ("/etc/ssh/ssh_host_rsa_key", "ssh_host_*_key"), ("/etc/ssh/ssh_host_rsa_key.pub", None),
    ("/home/a/.ssh/id_ed25519", "id_ed25519"), ("/home/a/.ssh/id_ed25519.pub", None),
    ("/etc/krb5.keytab", "*.keytab"), ("/etc/ssl/private/web.pem", "/etc/ssl/private/*"),
    ("/home/a/.aws/credentials", "*/.aws/credentials"), ("/home/a/.aws/config", None),
    ("/opt/app/tls/app.p12", "*.p12"), ("/root/.pgpass", ".pgpass"), ("/root/.netrc", ".netrc"),
    ("/etc/apt/auth.conf.d/nexus.conf", "*/apt/auth.conf.d/*"), ("/etc/sudoers", None),
])
def test_secret_file_rules(path: str, rule: str | None) -> None:
    assert secret_file_rule(path) == rule


def test_command_line_as_text_is_scrubbed_per_argument_and_across() -> None:
    """sudo's COMMAND= and systemd's argv[]= are text: `-H Authorization: Bearer X`
    spans three words, `mysql -pX` is one; both go, the rest of the command stays."""
    text, count = scrub_command_line(
        "/usr/bin/curl -H Authorization: Bearer Zq8mK2pL9xW4 https://gw/v1 "
        "&& /usr/bin/mysql -uroot -pPv7nL3kQ1z core")
    assert "Zq8mK2pL9xW4" not in text and "Pv7nL3kQ1z" not in text and count == 2
    assert text.startswith("/usr/bin/curl -H Authorization: Bearer [REDACTED:")
    assert text.endswith(" https://gw/v1 && /usr/bin/mysql -uroot -p[REDACTED:argument] core")


def test_yaml_block_scalar_under_a_secret_name() -> None:
    text = ("db:\n  password: |\n    Zq8mK2pL9x\n    Pv7nL3kQ1z\n  user: app\n"
            "list:\n  - token: >-\n      Wx4Rt7Y\n  - name: x\n  policy: |\n    keep me\n")
    scrubbed, count = scrub_text(text)
    assert scrubbed == ("db:\n  password: |\n    [REDACTED:named_secret]\n  user: app\n"
                        "list:\n  - token: >-\n      [REDACTED:named_secret]\n  - name: x\n"
                        "  policy: |\n    keep me\n")
    assert count == 2


@pytest.mark.parametrize(("line", "kept"), [
    ('<add key="ApiKey" value="ab12cd34ef56gh78ij90"/>', False),
    ('<property name="password" value="Hib3rnatePw"/>', False),
    ('<property name="hibernate.connection.password">dbPw9988</property>', False),
    ('<entry key="db.password">s3cr3tValue</entry>', False),
    ('<add key="PasswordMinLength" value="12"/>', True),
    ('<add key="LogLevel" value="debug"/>', True),
    ('<property name="username" value="app"/>', True),
    ('<param name="keystorePass" value="${KS_PASS}"/>', True),
])
def test_name_and_value_in_separate_attributes(line: str, kept: bool) -> None:
    """.NET appSettings, Spring/Hibernate properties: the name is one attribute (or the
    element's key), the value another attribute or the element's text."""
    scrubbed, count = scrub_text(line)
    assert (scrubbed == line) is kept, scrubbed
    assert count == (0 if kept else 1)
    if not kept:
        assert "[REDACTED:named_secret]" in scrubbed


def test_attribute_pairs_stay_linear() -> None:
    for line in ('key="a" ' * 12_000, 'name="password" ' * 10_000,
                 '<e key="password">' + "a" * 100_000):
        started = time.perf_counter()
        scrub_text(line)
        assert time.perf_counter() - started < 2
