"""The agent's configuration: a TOML file read into frozen, typed dataclasses.

Where it comes from (docs/DESIGN.md, "Config"): `--config FILE`, else
`$GAMSA_CONFIG`, else `/etc/gamsa/agent.toml` when it exists, else built-in
defaults. The TOML names are a user contract; `packaging/agent.toml` lists every
key with its default.

Every mistake is a `UsageError` (exit code 2) with one line that names the file
and the dotted key, e.g.

    /etc/gamsa/agent.toml: unknown key "store.endpoint_urll" (did you mean "store.endpoint_url"?)
    /etc/gamsa/agent.toml: "store.retention_days" must be an integer, got string

Unknown keys and wrong types are errors, never ignored: a typo in an audit agent's
config must not silently fall back to a default. TOML booleans are not integers
here, although Python's `bool` is a subclass of `int`.

`Config.sha256` is the hex SHA-256 of the file's raw bytes (of b"" for built-in
defaults); every manifest records it as `predicate.agent.config_sha256`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlparse

from collector.options import (
    Option,
    absolute_path,
    check_keys,
    choice_of,
    option_value,
    parse_options,
    positive_duration,
    positive_int,
    positive_size,
    string_list_of,
    toml_value,
    typed,
)
from collector.options import dotted as _join
from collector.options import parse_duration as parse_duration  # re-exported
from collector.options import parse_size as parse_size  # re-exported
from collector.options import show as _show
from collector.options import type_name as _type_name
from collector.registry import Collector, all_collectors, collector_names, load_collector
from signing.errors import UsageError

T = TypeVar("T")

CONFIG_ENV = "GAMSA_CONFIG"
DEFAULT_CONFIG_PATH = Path("/etc/gamsa/agent.toml")
ROOT_STATE_DIR = Path("/var/lib/gamsa")
DEFAULT_KEY_FILE = Path("/etc/gamsa/pseudonym.key")
DEFAULTS_SOURCE = "built-in defaults"

OBJECT_LOCK_MODES = ("COMPLIANCE", "GOVERNANCE", "")
SSE_MODES = ("", "AES256", "aws:kms")
ADDRESSING_STYLES = ("auto", "path", "virtual")
HOST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
COLLECTOR_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")

GIB = 1024**3


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class StoreConfig:
    """`[store]`: where sealed bundles go and how to reach it."""

    url: str  # "file:///abs/path" or "s3://bucket/prefix"; never "" once loaded
    endpoint_url: str = ""  # S3-compatible endpoint (on-prem); "" = AWS
    region: str = ""
    profile: str = ""
    ca_bundle: str = ""  # PEM bundle path; "" = system trust store
    proxy: str = ""  # "http(s)://host:port"; "" = none (or the environment's)
    object_lock_mode: str = "COMPLIANCE"  # one of OBJECT_LOCK_MODES
    retention_days: int = 1825
    sse: str = ""  # one of SSE_MODES
    kms_key_id: str = ""
    connect_timeout: int = 10  # seconds
    read_timeout: int = 60  # seconds
    addressing_style: str = "auto"  # one of ADDRESSING_STYLES
    max_attempts: int = 6  # tries of one store call (throttling, 5xx, timeouts, resets)
    retry_max_seconds: int = 60  # time one store call may take, backoff included
    confirm_every: int = 100  # the shipper HEADs a run's first manifest and 1 in this many

    @property
    def scheme(self) -> str:
        """"file" or "s3"."""
        return self.url.split("://", 1)[0]


@dataclass(frozen=True)
class CollectorsConfig:
    """`[collectors]`: which collectors run, and their options.

    `options`: by collector name, the options (`Collector.options`) the config sets
    to something else than their declared default, parsed. Read one with
    `value(OPTION)`, e.g. `config.collectors.value(collector.files.PATHS)` (typed by
    the declaration; the default when not set). Holding only what differs keeps
    loading a config from importing every collector (only those whose table the
    file has), and a file that spells out the defaults equal to no file.
    """

    enabled: list[str] = field(default_factory=list)  # [] = all available here
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def value(self, option: Option[T]) -> T:
        """The configured value of a declared option (its default when not set)."""
        return option_value(self.options, option)


@dataclass(frozen=True)
class ScheduleConfig:
    """`[schedule]`: intervals in seconds; any other key is a collector name
    (`per_collector`, the user's keys)."""

    default: int = 900
    heartbeat: int = 300
    per_collector: dict[str, int] = field(default_factory=dict)
    timeout: int = 600  # a collector run longer than this is abandoned
    timeouts: dict[str, int] = field(default_factory=dict)  # `[schedule.timeouts]`

    def interval(self, collector: str) -> int:
        """Seconds between runs of `collector`: its `[schedule]` key, else the interval
        its declaration gives (`Collector.schedule`), else `default`."""
        if collector in self.per_collector:
            return self.per_collector[collector]
        declared = load_collector(collector)
        seconds = declared.schedule_seconds if declared is not None else None
        return self.default if seconds is None else seconds

    def timeout_for(self, collector: str) -> int:
        """Seconds one run of `collector` may take before it is abandoned."""
        return self.timeouts.get(collector, self.timeout)


@dataclass(frozen=True)
class PrivacyConfig:
    """`[privacy]`: record fields pseudonymized before sealing, and the HMAC key."""

    pseudonymize: list[str] = field(default_factory=list)
    key_file: Path = DEFAULT_KEY_FILE


@dataclass(frozen=True)
class SpoolConfig:
    """`[spool]`: the byte cap of sealed bundles waiting to ship."""

    max_bytes: int = GIB


# A host is silent after this many heartbeat intervals without a bundle (verify).
SILENCE_HEARTBEATS = 4


@dataclass(frozen=True)
class VerifyConfig:
    """`[verify]`: organisation root public keys `gamsa verify` trusts (--trust-org),
    and how long an expected host may go without a bundle (--max-silence; default
    SILENCE_HEARTBEATS x schedule.heartbeat)."""

    trust_org: list[Path] = field(default_factory=list)
    max_silence: int = SILENCE_HEARTBEATS * ScheduleConfig.heartbeat


@dataclass(frozen=True)
class KeysConfig:
    """`[keys]`: where the agent's signing key lives."""

    agent: str = ""  # a signer URI (file:PATH, pkcs11:...); "" = <state_dir>/keys/agent.key


@dataclass(frozen=True)
class TimestampConfig:
    """`[timestamp]`: the RFC 3161 TSA that witnesses each shipped manifest
    (agent/timestamp.py); url "" = off."""

    url: str = ""  # http:// or https:// URL of the TSA
    ca_bundle: str = ""  # PEM bundle for an https TSA; "" = system trust store
    timeout: int = 10  # seconds per request


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration, resolved (no "" placeholders left). Keyword-only."""

    host_id: str = "auto"
    state_dir: Path
    store: StoreConfig
    collectors: CollectorsConfig = field(default_factory=CollectorsConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    timestamp: TimestampConfig = field(default_factory=TimestampConfig)
    source: Path | None = None  # the file loaded; None for built-in defaults
    sha256: str = hashlib.sha256(b"").hexdigest()  # of the file's raw bytes


# --------------------------------------------------------------------------- public helpers


def default_state_dir(euid: int | None = None, env: Mapping[str, str] | None = None) -> Path:
    """/var/lib/gamsa as root, else $XDG_STATE_HOME/gamsa, else ~/.local/state/gamsa."""
    if euid is None:
        euid = -1 if sys.platform == "win32" else os.geteuid()
    if euid == 0:
        return ROOT_STATE_DIR
    env = os.environ if env is None else env
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "gamsa"
    home = env.get("HOME", "")
    if not (home and Path(home).is_absolute()):
        try:
            home = str(Path.home())
        except RuntimeError:
            raise UsageError("cannot find a home directory for the default state_dir",
                             hint="set state_dir in the config file") from None
    return Path(home) / ".local" / "state" / "gamsa"


def resolve_config_path(cli_path: Path | None, env: Mapping[str, str]) -> Path | None:
    """--config, else $GAMSA_CONFIG, else /etc/gamsa/agent.toml if it exists, else None."""
    if cli_path is not None:
        return cli_path
    from_env = env.get(CONFIG_ENV, "")
    if from_env:
        return Path(from_env)
    try:
        present = DEFAULT_CONFIG_PATH.exists()
    except OSError:  # e.g. /etc/gamsa not searchable: let load_config say so, not skip it
        present = True
    return DEFAULT_CONFIG_PATH if present else None


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate `path`; None gives the built-in defaults."""
    if path is None:
        return parse_config(b"", DEFAULTS_SOURCE, env)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"config file {path}: not found",
                         hint=f"check --config and ${CONFIG_ENV}") from None
    except IsADirectoryError:
        raise UsageError(f"config file {path}: is a directory, not a file") from None
    except PermissionError:
        raise UsageError(f"config file {path}: permission denied") from None
    except OSError as exc:
        raise UsageError(f"config file {path}: cannot read: {exc.strerror or exc}") from None
    config = parse_config(data, str(path), env)
    return dataclasses.replace(config, source=path.absolute())


def parse_config(data: bytes, source: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate TOML bytes; `source` names them in errors. `Config.source` is left None."""
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM some editors add; not part of TOML
        text_bytes = data[3:]
    else:
        text_bytes = data
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(source, f"not valid TOML: not UTF-8 (byte offset {exc.start})")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        _fail(source, f"not valid TOML: {' '.join(str(exc).split())}")
    return _Parser(source, env).config(doc, hashlib.sha256(data).hexdigest())


def config_as_dict(cfg: Config) -> dict[str, Any]:
    """JSON-serializable view (for `gamsa config check --json`); paths as strings.
    Collector options appear as in TOML: `collectors.<name>.<option>`."""
    data = {key: _jsonable(value) for key, value in dataclasses.asdict(cfg).items()}
    data["collectors"] = {"enabled": data["collectors"]["enabled"]}
    for name, collector in all_collectors().items():
        if collector.options:
            data["collectors"][name] = {option.name: _jsonable(cfg.collectors.value(option))
                                        for option in collector.options}
    return data


def config_as_toml(cfg: Config) -> str:
    """The effective settings as a config file (every key, defaults filled in), for
    `gamsa config check`. Loading it again gives the same settings."""
    data = config_as_dict(cfg)
    del data["source"], data["sha256"]
    schedule = data["schedule"]
    schedule.update(schedule.pop("per_collector"))
    lines: list[str] = []
    declared = [f"# {name} = {c.schedule_seconds}  (declared by the collector)"
                for name, c in all_collectors().items()
                if c.schedule is not None and name not in schedule]

    def table(name: str, values: dict[str, Any]) -> None:
        if name:
            lines.extend(["", f"[{name}]"])
        for key, value in values.items():
            if isinstance(value, dict):
                continue
            text = toml_value(value)
            if isinstance(value, list) and len(text) > 88:  # one item a line
                text = "[\n" + "".join(f"  {toml_value(v)},\n" for v in value) + "]"
            lines.append(f"{key} = {text}")
        if name == "schedule":
            lines.extend(declared)
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{name}.{key}" if name else key, value)

    table("", data)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- internals


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _fail(source: str, message: str, hint: str = "") -> NoReturn:
    raise UsageError(f"{source}: {message}", hint=hint)


class _Parser:
    """Walks the parsed TOML document; every error names `source` and the dotted key."""

    def __init__(self, source: str, env: Mapping[str, str] | None) -> None:
        self.source = source
        self.env = os.environ if env is None else env

    def fail(self, message: str, hint: str = "") -> NoReturn:
        _fail(self.source, message, hint)

    # -- generic readers

    def table(self, parent: Mapping[str, Any], prefix: str, name: str,
              known: Iterable[str] | None) -> dict[str, Any]:
        """The sub-table `name` of `parent` ({} when absent); unknown keys are errors."""
        key = _join(prefix, name)
        value = parent.get(name, {})
        if not isinstance(value, dict):
            self.fail(f'"{key}" must be a table, got {_type_name(value)}')
        if known is not None:
            self.check_keys(value, key, known)
        return value

    def checked(self, parse: Callable[[Any, str], T], value: Any, key: str) -> T:
        """`parse(value, key)` (collector/options.py), its error put after the file name."""
        try:
            return parse(value, key)
        except UsageError as exc:
            self.fail(exc.message, exc.hint)

    def check_keys(self, table: Mapping[str, Any], prefix: str, known: Iterable[str]) -> None:
        self.checked(lambda t, p: check_keys(t, p, list(known)), table, prefix)

    def typed(self, value: Any, key: str, kind: type, type_name: str) -> Any:
        return self.checked(lambda v, k: typed(v, k, kind, type_name), value, key)

    def string(self, table: Mapping[str, Any], prefix: str, name: str, default: str) -> str:
        value: str = self.typed(table.get(name, default), _join(prefix, name), str, "string")
        return value

    def boolean(self, table: Mapping[str, Any], prefix: str, name: str, default: bool) -> bool:
        value: bool = self.typed(table.get(name, default), _join(prefix, name), bool, "boolean")
        return value

    def positive_int(self, table: Mapping[str, Any], prefix: str, name: str,
                     default: int) -> int:
        return self.checked(positive_int, table.get(name, default), _join(prefix, name))

    def choice(self, table: Mapping[str, Any], prefix: str, name: str, default: str,
               allowed: tuple[str, ...]) -> str:
        return self.checked(choice_of(allowed), table.get(name, default), _join(prefix, name))

    def string_list(self, table: Mapping[str, Any], prefix: str, name: str,
                    default: Iterable[str]) -> list[str]:
        value = table.get(name)
        if value is None:
            return list(default)
        return self.checked(string_list_of, value, _join(prefix, name))

    def duration(self, value: Any, key: str) -> int:
        return self.checked(positive_duration, value, key)

    def size(self, value: Any, key: str) -> int:
        return self.checked(positive_size, value, key)

    def absolute_path(self, value: str, key: str) -> Path:
        return Path(self.checked(absolute_path, value, key))

    # -- sections

    def config(self, doc: Mapping[str, Any], sha256: str) -> Config:
        self.check_keys(doc, "", ("host_id", "state_dir", "store", "collectors", "schedule",
                                  "privacy", "spool", "verify", "keys", "timestamp"))
        host_id = self.string(doc, "", "host_id", "auto")
        if host_id != "auto" and not HOST_ID_RE.fullmatch(host_id):
            self.fail(f'"host_id" must be "auto" or 1-64 characters of A-Z a-z 0-9 . _ - '
                      f"starting with a letter or digit, got {_show(host_id)}",
                      "it is part of every object key")
        state_raw = self.string(doc, "", "state_dir", "")
        state_dir = (self.absolute_path(state_raw, "state_dir") if state_raw
                     else default_state_dir(env=self.env))
        return Config(
            host_id=host_id,
            state_dir=state_dir,
            store=self.store(doc, state_dir),
            collectors=self.collectors(doc),
            schedule=(schedule := self.schedule(doc)),
            privacy=self.privacy(doc),
            spool=self.spool(doc),
            verify=self.verify(doc, schedule.heartbeat),
            keys=self.keys(doc),
            timestamp=self.timestamp(doc),
            source=None,
            sha256=sha256,
        )

    def store(self, doc: Mapping[str, Any], state_dir: Path) -> StoreConfig:
        p = "store"
        t = self.table(doc, "", p, [f.name for f in dataclasses.fields(StoreConfig)])
        d = StoreConfig(url="")
        url = self.string(t, p, "url", "") or "file://" + quote((state_dir / "store").as_posix())
        self.check_store_url(url)
        endpoint_url = self.string(t, p, "endpoint_url", d.endpoint_url)
        if endpoint_url and not endpoint_url.startswith(("http://", "https://")):
            self.fail(f'"store.endpoint_url" must start with http:// or https://, '
                      f"got {_show(endpoint_url)}", 'use "" for AWS')
        proxy = self.string(t, p, "proxy", d.proxy)
        if proxy and not proxy.startswith(("http://", "https://")):
            self.fail(f'"store.proxy" must start with http:// or https://, got {_show(proxy)}')
        ca_bundle = self.string(t, p, "ca_bundle", d.ca_bundle)
        if ca_bundle:
            ca_bundle = str(self.absolute_path(ca_bundle, "store.ca_bundle"))
        sse = self.choice(t, p, "sse", d.sse, SSE_MODES)
        kms_key_id = self.string(t, p, "kms_key_id", d.kms_key_id)
        if kms_key_id and sse != "aws:kms":
            self.fail('"store.kms_key_id" is set but "store.sse" is not "aws:kms"',
                      'set sse = "aws:kms" or remove kms_key_id')
        return StoreConfig(
            url=url,
            endpoint_url=endpoint_url,
            region=self.string(t, p, "region", d.region),
            profile=self.string(t, p, "profile", d.profile),
            ca_bundle=ca_bundle,
            proxy=proxy,
            object_lock_mode=self.choice(t, p, "object_lock_mode", d.object_lock_mode,
                                         OBJECT_LOCK_MODES),
            retention_days=self.positive_int(t, p, "retention_days", d.retention_days),
            sse=sse,
            kms_key_id=kms_key_id,
            connect_timeout=self.duration(t.get("connect_timeout", d.connect_timeout),
                                          "store.connect_timeout"),
            read_timeout=self.duration(t.get("read_timeout", d.read_timeout),
                                       "store.read_timeout"),
            addressing_style=self.choice(t, p, "addressing_style", d.addressing_style,
                                         ADDRESSING_STYLES),
            max_attempts=self.positive_int(t, p, "max_attempts", d.max_attempts),
            retry_max_seconds=self.duration(t.get("retry_max_seconds", d.retry_max_seconds),
                                            "store.retry_max_seconds"),
            confirm_every=self.positive_int(t, p, "confirm_every", d.confirm_every),
        )

    def check_store_url(self, url: str) -> None:
        if url.startswith("file://"):
            parsed = urlparse(url)
            if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
                self.fail(f'"store.url" must name an absolute path, got {_show(url)}',
                          "write file:///absolute/path, with three slashes")
        elif url.startswith("s3://"):
            bucket = url[len("s3://"):].split("/", 1)[0]
            if not re.fullmatch(r"[A-Za-z0-9._-]+", bucket):
                self.fail(f'"store.url" must name a bucket, got {_show(url)}',
                          "write s3://bucket/prefix")
        else:
            self.fail(f'"store.url" must start with file:// or s3://, got {_show(url)}',
                      "write file:///absolute/path or s3://bucket/prefix")

    def collectors(self, doc: Mapping[str, Any]) -> CollectorsConfig:
        p = "collectors"
        t = self.table(doc, "", p, ("enabled", *collector_names()))
        enabled = self.string_list(t, p, "enabled", [])
        for index, name in enumerate(enabled):
            self.collector_name(name, f"collectors.enabled[{index}]")
        options = {}
        for name in t:
            collector = load_collector(name) if name != "enabled" else None
            if collector is not None:
                changed = self.options(t, collector)
                if changed:
                    options[name] = changed
        return CollectorsConfig(enabled=enabled, options=options)

    def options(self, collectors: Mapping[str, Any], collector: Collector) -> dict[str, Any]:
        """`[collectors.<name>]` parsed by the collector's declared options: those
        set to something else than their default."""
        table = self.table(collectors, "collectors", collector.name, None)
        try:
            values = parse_options(collector.name, collector.option_map, table)
        except UsageError as exc:
            self.fail(exc.message, exc.hint)
        return {name: value for name, value in values.items()
                if name in table and value != collector.option_map[name].default_value}

    def collector_name(self, name: str, key: str) -> None:
        if not COLLECTOR_NAME_RE.fullmatch(name):
            self.fail(f'"{key}" must be a collector name (lower-case letters, digits, _ and -), '
                      f"got {_show(name)}")

    def schedule(self, doc: Mapping[str, Any]) -> ScheduleConfig:
        p = "schedule"
        t = self.table(doc, "", p, None)  # any key but the reserved is a collector name
        d = ScheduleConfig()
        reserved = ("default", "heartbeat", "timeout", "timeouts")
        per_collector = self.per_collector(t, p, reserved)
        timeouts = self.per_collector(self.table(t, p, "timeouts", None), f"{p}.timeouts", ())
        return ScheduleConfig(
            default=self.duration(t.get("default", d.default), "schedule.default"),
            heartbeat=self.duration(t.get("heartbeat", d.heartbeat), "schedule.heartbeat"),
            per_collector=per_collector,
            timeout=self.duration(t.get("timeout", d.timeout), "schedule.timeout"),
            timeouts=timeouts,
        )

    def per_collector(self, table: Mapping[str, Any], prefix: str,
                      reserved: tuple[str, ...]) -> dict[str, int]:
        """Durations by collector name (every key not `reserved`)."""
        found = {}
        collectors = collector_names()
        for name, value in table.items():
            if name in reserved:
                continue
            key = _join(prefix, name)
            if name not in collectors:  # a typo (`pakages`) would silently never apply
                close = difflib.get_close_matches(name, (*reserved, *collectors), n=1,
                                                  cutoff=0.6)
                self.fail(f'unknown key "{key}"',
                          f'did you mean "{_join(prefix, close[0])}"?' if close else
                          (f"keys: {', '.join(reserved)}, or " if reserved else "keys: ")
                          + f"a collector name: {', '.join(collectors)}")
            found[name] = self.duration(value, key)
        return found

    def privacy(self, doc: Mapping[str, Any]) -> PrivacyConfig:
        p = "privacy"
        t = self.table(doc, "", p, ("pseudonymize", "key_file"))
        d = PrivacyConfig()
        key_file = self.string(t, p, "key_file", str(d.key_file))
        if not key_file:
            self.fail('"privacy.key_file" must not be empty')
        names = self.string_list(t, p, "pseudonymize", [])
        if names:  # only then: the check imports every collector's declarations
            from collector.privacy import field_name_problem
            from collector.registry import all_collectors

            collectors = all_collectors()
            for index, name in enumerate(names):
                problem = field_name_problem(name, collectors)
                if problem is not None:
                    self.fail(f'"privacy.pseudonymize[{index}]": {problem[0]}', problem[1])
        return PrivacyConfig(
            pseudonymize=names,
            key_file=self.absolute_path(key_file, "privacy.key_file"),
        )

    def spool(self, doc: Mapping[str, Any]) -> SpoolConfig:
        t = self.table(doc, "", "spool", ("max_bytes",))
        return SpoolConfig(max_bytes=self.size(t.get("max_bytes", SpoolConfig.max_bytes),
                                               "spool.max_bytes"))

    def keys(self, doc: Mapping[str, Any]) -> KeysConfig:
        from signing.signer import check_signer_uri

        agent = self.string(self.table(doc, "", "keys", ("agent",)), "keys", "agent", "")
        if agent:
            try:
                check_signer_uri(agent)
            except UsageError as exc:
                self.fail(f'"keys.agent": {exc.message}', exc.hint)
        return KeysConfig(agent=agent)

    def timestamp(self, doc: Mapping[str, Any]) -> TimestampConfig:
        p, d = "timestamp", TimestampConfig()
        t = self.table(doc, "", p, ("url", "ca_bundle", "timeout"))
        url = self.string(t, p, "url", d.url)
        if url and not url.startswith(("http://", "https://")):
            self.fail(f'"timestamp.url" must start with http:// or https://, got {_show(url)}',
                      'use "" for no TSA')
        ca_bundle = self.string(t, p, "ca_bundle", d.ca_bundle)
        if ca_bundle:
            self.absolute_path(ca_bundle, "timestamp.ca_bundle")
        return TimestampConfig(url=url, ca_bundle=ca_bundle,
                               timeout=self.positive_int(t, p, "timeout", d.timeout))

    def verify(self, doc: Mapping[str, Any], heartbeat: int) -> VerifyConfig:
        t = self.table(doc, "", "verify", ("trust_org", "max_silence"))
        paths = self.string_list(t, "verify", "trust_org", [])
        silence = t.get("max_silence", SILENCE_HEARTBEATS * heartbeat)
        return VerifyConfig(trust_org=[self.absolute_path(p, "verify.trust_org")
                                       for p in paths],
                            max_silence=self.duration(silence, "verify.max_silence"))
