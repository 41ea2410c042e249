"""agent.config: locating, parsing and validating agent.toml, with real files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent import config as config_mod
from agent.config import (
    config_as_dict,
    default_state_dir,
    load_config,
    parse_duration,
    parse_size,
    resolve_config_path,
)
from collector import files, logs
from collector._endpoints import AI_ENDPOINTS
from collector.files import HASH_RATE
from signing.errors import USAGE, UsageError

PACKAGED = Path(__file__).resolve().parents[2] / "packaging" / "agent.toml"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with a private HOME, so defaults never depend on the machine."""
    return {"HOME": str(tmp_path / "home")}


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, env: dict[str, str]) -> UsageError:
    with pytest.raises(UsageError) as info:
        load_config(path, env)
    return info.value


def assert_one_line(err: UsageError, *parts: str) -> None:
    assert err.exit_code == USAGE == 2
    text = str(err)
    assert "\n" not in text and "\n" not in err.diagnostics()
    for part in parts:
        assert part in text, (part, text)


# --------------------------------------------------------------------------- defaults


def test_defaults_without_a_file(env: dict[str, str]) -> None:
    cfg = load_config(None, env)
    assert cfg.source is None
    assert cfg.sha256 == hashlib.sha256(b"").hexdigest()
    assert cfg.host_id == "auto"
    assert cfg.state_dir == default_state_dir(env=env)
    assert cfg.store.url == "file://" + str(cfg.state_dir / "store")
    assert cfg.store.object_lock_mode == "COMPLIANCE"
    assert cfg.store.retention_days == 1825
    assert (cfg.store.connect_timeout, cfg.store.read_timeout) == (10, 60)
    assert cfg.store.addressing_style == "auto"
    assert cfg.collectors.enabled == []
    assert "/etc/ssh/sshd_config" in cfg.collectors.value(files.PATHS)
    assert "/etc/sudoers.d/*" in cfg.collectors.value(files.PATHS)
    assert cfg.collectors.value(files.CONTENT_MAX_BYTES) == 65536
    assert cfg.collectors.value(files.WATCH) is True
    assert cfg.collectors.value(AI_ENDPOINTS) == []
    assert cfg.collectors.value(logs.SOURCES) == [
        {"path": "/var/log/auth.log", "format": "auth", "kind": ""},
        {"journal": "system", "format": "journald", "kind": "",
         "skip_if_exists": "/var/log/auth.log"}]
    assert (cfg.schedule.default, cfg.schedule.heartbeat) == (900, 300)
    assert cfg.schedule.per_collector == {}
    assert cfg.privacy.pseudonymize == []
    assert cfg.privacy.key_file == Path("/etc/gamsa/pseudonym.key")
    assert cfg.spool.max_bytes == 1024**3


def test_empty_file_equals_defaults(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, "")
    cfg = load_config(path, env)
    assert cfg.source == path
    assert dataclasses.replace(cfg, source=None) == load_config(None, env)


def test_default_state_dir_root_xdg_home(tmp_path: Path) -> None:
    assert default_state_dir(0, {"XDG_STATE_HOME": "/x"}) == Path("/var/lib/gamsa")
    assert default_state_dir(1000, {"XDG_STATE_HOME": "/x/state", "HOME": "/h"}) == Path(
        "/x/state/gamsa")
    assert default_state_dir(1000, {"HOME": "/h"}) == Path("/h/.local/state/gamsa")
    # A relative XDG_STATE_HOME is ignored, as the XDG spec says.
    assert default_state_dir(1000, {"XDG_STATE_HOME": "rel", "HOME": "/h"}) == Path(
        "/h/.local/state/gamsa")


def test_state_dir_drives_default_store_url(tmp_path: Path, env: dict[str, str]) -> None:
    state = tmp_path / "state"
    cfg = load_config(write(tmp_path, f'state_dir = "{state}"\n[store]\nurl = ""\n'), env)
    assert cfg.state_dir == state
    assert cfg.store.url == f"file://{state}/store"


def test_config_as_dict_is_json(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, '[schedule]\npackages = "6h"\n')
    data = config_as_dict(load_config(path, env))
    assert json.loads(json.dumps(data)) == data
    assert data["source"] == str(path)
    assert data["state_dir"] == str(default_state_dir(env=env))
    assert data["privacy"]["key_file"] == "/etc/gamsa/pseudonym.key"
    assert data["schedule"] == {"default": 900, "heartbeat": 300,
                                "per_collector": {"packages": 21600},
                                "timeout": 600, "timeouts": {}}
    assert data["collectors"]["logs"]["sources"][0] == {
        "path": "/var/log/auth.log", "format": "auth", "kind": ""}


# --------------------------------------------------------------------------- locating


def test_resolve_prefers_cli_then_env(tmp_path: Path) -> None:
    cli, from_env = tmp_path / "cli.toml", tmp_path / "env.toml"
    assert resolve_config_path(cli, {"GAMSA_CONFIG": str(from_env)}) == cli
    assert resolve_config_path(None, {"GAMSA_CONFIG": str(from_env)}) == from_env


def test_resolve_default_path_only_when_present(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc-agent.toml"
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", etc)
    assert resolve_config_path(None, {}) is None
    assert resolve_config_path(None, {"GAMSA_CONFIG": ""}) is None
    etc.write_text("")
    assert resolve_config_path(None, {}) == etc


def test_resolve_unsearchable_default_is_not_skipped(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A default file we cannot even stat is an error to report, not a reason for defaults."""
    etc = tmp_path / "etc-agent.toml"
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", etc)

    def deny(self: Path, **kwargs: Any) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", deny)
    assert resolve_config_path(None, {}) == etc


def test_env_var_file_is_loaded(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'host_id = "from-env"\n')
    env["GAMSA_CONFIG"] = str(path)
    cfg = load_config(resolve_config_path(None, env), env)
    assert cfg.host_id == "from-env"
    assert cfg.source == path


def test_explicit_path_beats_env(tmp_path: Path, env: dict[str, str]) -> None:
    env["GAMSA_CONFIG"] = str(write(tmp_path, 'host_id = "from-env"\n', "env.toml"))
    cli = write(tmp_path, 'host_id = "from-cli"\n', "cli.toml")
    assert load_config(resolve_config_path(cli, env), env).host_id == "from-cli"


def test_sha256_is_of_the_raw_bytes(tmp_path: Path, env: dict[str, str]) -> None:
    raw = b'# comment\nhost_id = "h1"   \r\n\n[spool]\nmax_bytes = "2GiB"\n'
    path = tmp_path / "agent.toml"
    path.write_bytes(raw)
    cfg = load_config(path, env)
    assert cfg.sha256 == hashlib.sha256(raw).hexdigest()
    assert cfg.spool.max_bytes == 2 * 1024**3


# --------------------------------------------------------------------------- the packaged file


def test_packaged_file_is_the_defaults_as_root(monkeypatch: pytest.MonkeyPatch,
                                               env: dict[str, str]) -> None:
    """As root (the packaged daemon), loading packaging/agent.toml changes nothing."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    packaged = load_config(PACKAGED, env)
    assert packaged.sha256 == hashlib.sha256(PACKAGED.read_bytes()).hexdigest()
    assert dataclasses.replace(packaged, source=None, sha256="") == dataclasses.replace(
        load_config(None, env), sha256="")


def test_packaged_file_differs_from_user_defaults_only_in_root_paths(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Not as root, the defaults put state_dir (and so store.url) under $HOME instead."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    packaged = load_config(PACKAGED, env)
    user = load_config(None, env)
    assert user.state_dir == Path(env["HOME"]) / ".local" / "state" / "gamsa"
    assert user.store.url == f"file://{user.state_dir}/store"
    assert packaged.state_dir == Path("/var/lib/gamsa")
    assert packaged.store.url == "file:///var/lib/gamsa/store"
    rooted = dataclasses.replace(
        user, state_dir=packaged.state_dir,
        store=dataclasses.replace(user.store, url=packaged.store.url))
    assert dataclasses.replace(packaged, source=None, sha256="") == dataclasses.replace(
        rooted, sha256="")


def _toml_keys(table: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict) and key not in ("schedule.per_collector",):
            keys |= _toml_keys(value, key)
        else:
            keys.add(key)
    return keys


def test_packaged_file_lists_every_key(env: dict[str, str]) -> None:
    in_file = _toml_keys(tomllib.loads(PACKAGED.read_text(encoding="utf-8")))
    in_config = _toml_keys(config_as_dict(load_config(None, env)))
    in_config -= {"source", "sha256", "schedule.per_collector"}  # not TOML keys
    assert in_file == in_config


# --------------------------------------------------------------------------- values


def test_full_config_values(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, """
host_id = "web-01.prod_a"
state_dir = "/srv/gamsa"

[store]
url = "s3://evidence-bucket/bank/prod"
endpoint_url = "https://rgw.bank.internal:8443"
region = "ap-northeast-2"
profile = "gamsa"
ca_bundle = "/etc/pki/bank-ca.pem"
proxy = "http://proxy.bank.internal:3128"
object_lock_mode = "GOVERNANCE"
retention_days = 3650
sse = "aws:kms"
kms_key_id = "arn:aws:kms:ap-northeast-2:111122223333:key/abc"
connect_timeout = "5s"
read_timeout = 120
addressing_style = "path"

[collectors]
enabled = ["accounts", "files"]

[collectors.files]
paths = ["/etc/**"]
content_max_bytes = "1MiB"
watch = false

[collectors.network]
ai_endpoints = ["api.openai.com", "*.anthropic.com", "10.20.0.0/16", "127.0.0.1:8443"]

[collectors.logs]
sources = [
  { path = "/var/log/auth.log", format = "auth" },
  { path = "/var/log/nginx/ai-gateway.log", format = "nginx-combined", kind = "ai_gateway" },
]

[schedule]
default = 600
heartbeat = "1m"
packages = "6h"
accounts = "1d"

[privacy]
pseudonymize = ["user", "source"]
key_file = "/etc/gamsa/other.key"

[spool]
max_bytes = 123456
""")
    cfg = load_config(path, env)
    assert cfg.host_id == "web-01.prod_a"
    assert cfg.state_dir == Path("/srv/gamsa")
    assert cfg.store.url == "s3://evidence-bucket/bank/prod"
    assert cfg.store.scheme == "s3"
    assert cfg.store.endpoint_url == "https://rgw.bank.internal:8443"
    assert cfg.store.ca_bundle == "/etc/pki/bank-ca.pem"
    assert cfg.store.object_lock_mode == "GOVERNANCE"
    assert cfg.store.retention_days == 3650
    assert (cfg.store.sse, cfg.store.kms_key_id.endswith("key/abc")) == ("aws:kms", True)
    assert (cfg.store.connect_timeout, cfg.store.read_timeout) == (5, 120)
    assert cfg.store.addressing_style == "path"
    assert cfg.collectors.enabled == ["accounts", "files"]
    assert cfg.collectors.value(files.PATHS) == ["/etc/**"]
    assert cfg.collectors.value(files.CONTENT_MAX_BYTES) == 1024**2
    assert cfg.collectors.value(files.WATCH) is False
    assert cfg.collectors.value(AI_ENDPOINTS)[2] == "10.20.0.0/16"
    assert cfg.collectors.value(logs.SOURCES) == [
        {"path": "/var/log/auth.log", "format": "auth", "kind": ""},
        {"path": "/var/log/nginx/ai-gateway.log", "format": "nginx-combined",
         "kind": "ai_gateway"},
    ]
    assert cfg.schedule.default == 600 and cfg.schedule.heartbeat == 60
    assert cfg.schedule.per_collector == {"packages": 6 * 3600, "accounts": 86400}
    assert cfg.schedule.interval("packages") == 6 * 3600
    assert cfg.schedule.interval("files") == 600
    assert cfg.privacy.pseudonymize == ["user", "source"]
    assert cfg.privacy.key_file == Path("/etc/gamsa/other.key")
    assert cfg.spool.max_bytes == 123456


def test_config_is_frozen(env: dict[str, str]) -> None:
    cfg = load_config(None, env)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.host_id = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(("value", "seconds"), [
    (0, 0), (1, 1), (900, 900), ("90", 90), ("90s", 90), ("15m", 900), ("6h", 21600),
    ("1d", 86400), (" 5m ", 300), ("2 h", 7200),
])
def test_parse_duration(value: str | int, seconds: int) -> None:
    assert parse_duration(value, "schedule.default") == seconds


@pytest.mark.parametrize("value", [
    "", "m", "15 min", "1.5h", "-5", -5, "15M", "1w", "1h30m", "ten", True, 1.5, [1],
])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(value, "schedule.packages")
    assert_one_line(info.value, '"schedule.packages"')


@pytest.mark.parametrize(("value", "nbytes"), [
    (0, 0), (123, 123), ("123", 123), ("123B", 123), ("10KiB", 10240),
    ("512MiB", 512 * 1024**2), ("1GiB", 1024**3), ("2TiB", 2 * 1024**4), ("1KB", 1000),
    ("100MB", 100_000_000), ("1GB", 10**9), ("1TB", 10**12), ("1 GiB", 1024**3),
])
def test_parse_size(value: str | int, nbytes: int) -> None:
    assert parse_size(value, "spool.max_bytes") == nbytes


@pytest.mark.parametrize("value", [
    "", "GiB", "1.5GiB", "-1", -1, "1gib", "1G", "1 gigabyte", "1Gb", False, 2.0, None,
])
def test_parse_size_rejects(value: Any) -> None:
    with pytest.raises(UsageError) as info:
        parse_size(value, "spool.max_bytes")
    assert_one_line(info.value, '"spool.max_bytes"')


# --------------------------------------------------------------------------- errors


def test_missing_explicit_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "nope.toml"
    err = load_error(path, env)
    assert_one_line(err, f"config file {path}: not found")


def test_missing_file_named_by_env(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "gone.toml"
    env["GAMSA_CONFIG"] = str(path)
    err = load_error(resolve_config_path(None, env) or Path("unused"), env)
    assert_one_line(err, str(path), "not found")


def test_directory_is_not_a_config(tmp_path: Path, env: dict[str, str]) -> None:
    assert_one_line(load_error(tmp_path, env), str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, "")
    path.chmod(0)
    assert_one_line(load_error(path, env), str(path), "permission denied")


def test_permission_denied(tmp_path: Path, env: dict[str, str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The same failure, simulated, so the test also runs as root."""
    path = write(tmp_path, "")

    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)
    assert_one_line(load_error(path, env), f"config file {path}: permission denied")


def test_malformed_toml(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, '[store]\nurl = "s3://b/p"\nretention_days = = 3\n')
    err = load_error(path, env)
    assert_one_line(err, str(path), "not valid TOML", "line 3")


def test_not_utf8(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(b'host_id = "\xff"\n')
    assert_one_line(load_error(path, env), str(path), "not valid TOML")


def test_duplicate_key_is_malformed(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, 'host_id = "a"\nhost_id = "b"\n')
    assert_one_line(load_error(path, env), str(path), "not valid TOML")


def test_unknown_key_with_suggestion(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, '[store]\nendpoint_urll = "https://x"\n')
    err = load_error(path, env)
    assert_one_line(err, f'{path}: unknown key "store.endpoint_urll"')
    assert err.hint == 'did you mean "store.endpoint_url"?'


def test_unknown_top_level_table(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, "[stroe]\n"), env)
    assert_one_line(err, str(tmp_path), 'unknown key "stroe"')
    assert err.hint == 'did you mean "store"?'


def test_unknown_nested_key(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, '[collectors.files]\npathz = ["/etc/hosts"]\n'), env)
    assert_one_line(err, str(tmp_path), 'unknown key "collectors.files.pathz"')
    assert err.hint == 'did you mean "collectors.files.paths"?'


def test_unknown_key_without_suggestion_lists_known(tmp_path: Path,
                                                    env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, "[spool]\nzzz = 1\n"), env)
    assert_one_line(err, 'unknown key "spool.zzz"')
    assert "max_bytes" in err.hint


def test_unknown_key_in_log_source(tmp_path: Path, env: dict[str, str]) -> None:
    text = '[collectors.logs]\nsources = [{ path = "/var/log/a", fromat = "auth" }]\n'
    err = load_error(write(tmp_path, text), env)
    assert_one_line(err, 'unknown key "collectors.logs.sources[0].fromat"')


@pytest.mark.parametrize(("text", "key", "message"), [
    ('[store]\nretention_days = "1825"\n', "store.retention_days",
     '"store.retention_days" must be an integer, got string'),
    ("[store]\nretention_days = true\n", "store.retention_days", "got boolean"),
    ("[store]\nretention_days = 1825.0\n", "store.retention_days", "got float"),
    ("[store]\nretention_days = 0\n", "store.retention_days", "greater than 0"),
    ("[store]\nretention_days = -1\n", "store.retention_days", "greater than 0"),
    ("[store]\nconnect_timeout = true\n", "store.connect_timeout", "got boolean"),
    ('[store]\nread_timeout = "0s"\n', "store.read_timeout", "at least 1 second"),
    ("host_id = 7\n", "host_id", "must be a string, got integer"),
    ("state_dir = false\n", "state_dir", "must be a string, got boolean"),
    ('store = "s3://b"\n', "store", "must be a table, got string"),
    ('[collectors.files]\nwatch = "yes"\n', "collectors.files.watch",
     "must be a boolean, got string"),
    ("[collectors.files]\nwatch = 1\n", "collectors.files.watch", "got integer"),
    ("[collectors.files]\ncontent_max_bytes = true\n", "collectors.files.content_max_bytes",
     "got boolean"),
    ('[collectors.files]\npaths = "/etc/hosts"\n', "collectors.files.paths",
     "must be an array, got string"),
    ('[collectors.files]\npaths = ["/etc/hosts", 3]\n', "collectors.files.paths[1]",
     "must be a string, got integer"),
    ('[collectors]\nenabled = "accounts"\n', "collectors.enabled", "got string"),
    ("[collectors]\nenabled = [true]\n", "collectors.enabled[0]", "got boolean"),
    ("[schedule]\ndefault = true\n", "schedule.default", "got boolean"),
    ("[schedule]\nheartbeat = 1.5\n", "schedule.heartbeat", "got float"),
    ("[schedule]\npackages = true\n", "schedule.packages", "got boolean"),
    ("[spool]\nmax_bytes = true\n", "spool.max_bytes", "got boolean"),
    ("[privacy]\npseudonymize = [1]\n", "privacy.pseudonymize[0]", "got integer"),
    ("[privacy]\nkey_file = 1\n", "privacy.key_file", "got integer"),
    ("[collectors.logs]\nsources = { path = '/x', format = 'auth' }\n",
     "collectors.logs.sources", "must be an array, got table"),
    ('[collectors.logs]\nsources = ["/var/log/auth.log"]\n', "collectors.logs.sources[0]",
     "must be a table, got string"),
    ("[collectors.logs]\nsources = [{ path = 1, format = 'auth' }]\n",
     "collectors.logs.sources[0].path", "got integer"),
    ("host_id = 2024-01-01\n", "host_id", "got date"),
])
def test_wrong_types(tmp_path: Path, env: dict[str, str], text: str, key: str,
                     message: str) -> None:
    path = write(tmp_path, text)
    err = load_error(path, env)
    assert_one_line(err, f"{path}: ", f'"{key}"', message)


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ('[store]\nobject_lock_mode = "FOO"\n', "store.object_lock_mode",
     'must be one of "COMPLIANCE", "GOVERNANCE", "", got "FOO"'),
    ('[store]\nsse = "aes256"\n', "store.sse", 'got "aes256"'),
    ('[store]\naddressing_style = "dns"\n', "store.addressing_style", '"virtual"'),
    ("[collectors.logs]\nsources = [{ path = '/x', format = 'syslog' }]\n",
     "collectors.logs.sources[0].format", '"json-lines", got "syslog"'),
])
def test_bad_choices(tmp_path: Path, env: dict[str, str], text: str, key: str,
                     fragment: str) -> None:
    path = write(tmp_path, text)
    err = load_error(path, env)
    assert_one_line(err, str(path), f'"{key}"', fragment)


def test_choice_case_hint(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, '[store]\nobject_lock_mode = "compliance"\n'), env)
    assert err.hint == 'did you mean "COMPLIANCE"?'


@pytest.mark.parametrize(("text", "key"), [
    ('[store]\nurl = "https://bucket/prefix"\n', "store.url"),
    ('[store]\nurl = "/var/lib/gamsa/store"\n', "store.url"),
    ('[store]\nurl = "file://var/lib/gamsa"\n', "store.url"),
    ('[store]\nurl = "file://relative"\n', "store.url"),
    ('[store]\nurl = "s3://"\n', "store.url"),
    ('[store]\nurl = "s3:///prefix"\n', "store.url"),
    ('[store]\nendpoint_url = "rgw.bank.internal"\n', "store.endpoint_url"),
    ('[store]\nproxy = "proxy:3128"\n', "store.proxy"),
    ('[store]\nca_bundle = "ca.pem"\n', "store.ca_bundle"),
    ('[store]\nkms_key_id = "abc"\n', "store.kms_key_id"),
    ('host_id = "web/01"\n', "host_id"),
    ('host_id = ""\n', "host_id"),
    ('host_id = "../../etc"\n', "host_id"),
    (f'host_id = "{"a" * 65}"\n', "host_id"),
    ('host_id = "web 01"\n', "host_id"),
    ('state_dir = "relative/state"\n', "state_dir"),
    ('[collectors.files]\npaths = ["etc/hosts"]\n', "collectors.files.paths[0]"),
    ('[collectors.files]\npaths = [""]\n', "collectors.files.paths[0]"),
    ('[collectors.files]\ncontent_max_bytes = 0\n', "collectors.files.content_max_bytes"),
    ('[collectors.files]\ncontent_max_bytes = "lots"\n', "collectors.files.content_max_bytes"),
    ('[collectors.network]\nai_endpoints = ["10.20.0.0/33"]\n',
     "collectors.network.ai_endpoints[0]"),
    ('[collectors.network]\nai_endpoints = ["api openai com"]\n',
     "collectors.network.ai_endpoints[0]"),
    ('[collectors]\nenabled = ["Accounts!"]\n', "collectors.enabled[0]"),
    ("[collectors.logs]\nsources = [{ format = 'auth' }]\n", "collectors.logs.sources[0].path"),
    ("[collectors.logs]\nsources = [{ path = '/x' }]\n", "collectors.logs.sources[0].format"),
    ("[collectors.logs]\nsources = [{ path = 'x.log', format = 'auth' }]\n",
     "collectors.logs.sources[0].path"),
    ('[schedule]\ndefault = "15 minutes"\n', "schedule.default"),
    ("[schedule]\ndefault = 0\n", "schedule.default"),
    ('[schedule]\nheartbeat = "-5m"\n', "schedule.heartbeat"),
    ('[schedule]\npackages = "often"\n', "schedule.packages"),
    ('[schedule]\ndefualt = "15m"\n', "schedule.defualt"),
    ('[schedule]\n"my collector" = "15m"\n', "schedule.my collector"),
    ('[privacy]\nkey_file = ""\n', "privacy.key_file"),
    ('[privacy]\nkey_file = "pseudonym.key"\n', "privacy.key_file"),
    ('[spool]\nmax_bytes = "1G"\n', "spool.max_bytes"),
    ("[spool]\nmax_bytes = 0\n", "spool.max_bytes"),
])
def test_bad_values_name_file_and_key(tmp_path: Path, env: dict[str, str], text: str,
                                      key: str) -> None:
    path = write(tmp_path, text)
    assert_one_line(load_error(path, env), f"{path}: ", f'"{key}"')


def test_multiline_value_is_shown_on_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, '[store]\nsse = """AES\n256"""\n')
    assert_one_line(load_error(path, env), str(path), '"store.sse"')


def test_misspelled_schedule_key_gets_suggestion(tmp_path: Path, env: dict[str, str]) -> None:
    err = load_error(write(tmp_path, '[schedule]\nheartbaet = "5m"\n'), env)
    assert_one_line(err, 'unknown key "schedule.heartbaet"')
    assert err.hint == 'did you mean "schedule.heartbeat"?'


def test_schedule_key_that_names_no_collector_is_an_error(tmp_path: Path,
                                                           env: dict[str, str]) -> None:
    """A typo such as `pakages` would otherwise be a schedule that never applies."""
    err = load_error(write(tmp_path, '[schedule]\npakages = "6h"\n'), env)
    assert_one_line(err, str(tmp_path), 'unknown key "schedule.pakages"')
    assert err.hint == 'did you mean "schedule.packages"?'
    err = load_error(write(tmp_path, '[schedule]\nzzz = "6h"\n'), env)
    assert_one_line(err, 'unknown key "schedule.zzz"')
    assert ("default, heartbeat, timeout, timeouts, or a collector name: accounts, agent, "
            "ai_egress, files") in err.hint


# --------------------------------------------------------------------------- accepted edge cases


def test_schedule_per_collector_entries(tmp_path: Path, env: dict[str, str]) -> None:
    text = '[schedule]\ndefault = "30m"\npackages = "6h"\nfiles = 60\nlogs = "90s"\n'
    cfg = load_config(write(tmp_path, text), env)
    assert cfg.schedule.default == 1800
    assert cfg.schedule.heartbeat == 300
    assert cfg.schedule.per_collector == {"packages": 21600, "files": 60, "logs": 90}
    assert cfg.schedule.interval("accounts") == 1800


@pytest.mark.parametrize("url", [
    "file:///srv/evidence", "file://localhost/srv/evidence", "s3://bucket",
    "s3://bucket/", "s3://my.bucket-01/a/b/c",
])
def test_good_store_urls(tmp_path: Path, env: dict[str, str], url: str) -> None:
    cfg = load_config(write(tmp_path, f'[store]\nurl = "{url}"\n'), env)
    assert cfg.store.url == url


def test_empty_choices_and_kms_without_key(tmp_path: Path, env: dict[str, str]) -> None:
    text = '[store]\nobject_lock_mode = ""\nsse = "aws:kms"\n'
    cfg = load_config(write(tmp_path, text), env)
    assert (cfg.store.object_lock_mode, cfg.store.sse, cfg.store.kms_key_id) == (
        "", "aws:kms", "")


def test_utf8_bom_is_accepted(tmp_path: Path, env: dict[str, str]) -> None:
    path = tmp_path / "agent.toml"
    raw = b'\xef\xbb\xbfhost_id = "h1"\n'
    path.write_bytes(raw)
    cfg = load_config(path, env)
    assert cfg.host_id == "h1"
    assert cfg.sha256 == hashlib.sha256(raw).hexdigest()


def test_explicit_empty_lists(tmp_path: Path, env: dict[str, str]) -> None:
    text = "[collectors.files]\npaths = []\n[collectors.logs]\nsources = []\n"
    cfg = load_config(write(tmp_path, text), env)
    assert cfg.collectors.value(files.PATHS) == []
    assert cfg.collectors.value(logs.SOURCES) == []



def test_ai_endpoints_with_ports_on_networks_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[collectors.network]\nai_endpoints = ["10.20.0.0/16:443", '
                    '"[2001:db8::1]:443", "*.anthropic.com", "127.0.0.1:8443"]\n')
    assert len(load_config(path, {}).collectors.value(AI_ENDPOINTS)) == 4
    path.write_text('[collectors.network]\nai_endpoints = ["10.20.0.0/99"]\n')
    with pytest.raises(UsageError, match="ai_endpoints"):
        load_config(path, {})


def test_timeouts_and_hash_rate(tmp_path: Path, env: dict[str, str]) -> None:
    cfg = load_config(write(tmp_path, '[schedule]\ntimeout = "2m"\n[schedule.timeouts]\n'
                                      'packages = "30m"\n[collectors.files]\n'
                                      'hash_rate = "256MiB"\n'), env)
    assert (cfg.schedule.timeout_for("packages"), cfg.schedule.timeout_for("host")) == (
        1800, 120)
    assert cfg.collectors.value(HASH_RATE) == 256 << 20
    assert load_config(write(tmp_path, "[collectors.files]\nhash_rate = 0\n"),
                       env).collectors.value(HASH_RATE) == 0
    assert load_config(None, env).collectors.value(HASH_RATE) == 1 << 30
    err = load_error(write(tmp_path, '[schedule.timeouts]\npakages = "1m"\n'), env)
    assert_one_line(err, 'unknown key "schedule.timeouts.pakages"')
    assert err.hint == 'did you mean "schedule.timeouts.packages"?'
    err = load_error(write(tmp_path, '[schedule]\ntimeout = "0"\n'), env)
    assert_one_line(err, '"schedule.timeout" must be at least 1 second')
    err = load_error(write(tmp_path, '[collectors.files]\nhash_rate = "fast"\n'), env)
    assert_one_line(err, '"collectors.files.hash_rate" must be a size')
