"""Line parsers for the `logs` collector: syslog auth logs, nginx combined, JSON lines.

Each parser is a pure function: one decoded line (without its newline) and the
little a format needs to place a time (`LineContext`: the file's modification
time for syslog's missing year, the zone of timestamps that carry none) in; an
access dict out, or None when the line is well formed but not an access event
(a cron message in auth.log). A line that is not of the format raises `Malformed`
with a reason that never quotes the line.

Every access dict has exactly the keys of `ACCESS_FIELDS` (null where the format
does not say): the Korean access-record rules ask for account, time to the second,
source address or terminal, data subject and action of every access. Secrets are
scrubbed from every free-text value (`scrub_text`; a sudo command also through
`scrub_command_line`, which catches `mysql -pSECRET`), query strings are removed from
request paths, and a JSON line is never copied: only the fields mapped below
survive, and no float reaches a record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from collector.record import format_time
from collector.scrub import redaction, scrub_command_line, scrub_text

MAX_SAFE_INT = 2**53 - 1
MAX_TEXT = 1024  # characters kept of one free-text value (a command, a user agent)
RAW_MAX = 4096  # bytes kept of a line in `raw`
# Text is scrubbed in a window this much longer than what is kept, so a secret that
# straddles the cut is still whole when the patterns run.
SCRUB_WINDOW = 256
# Runs of token characters longer than this are redacted whole: in a log line such
# opaque strings (JWTs, base64 keys, session ids) are secrets more often than not,
# whatever name precedes them.
_LONG_RUN = re.compile(r"[A-Za-z0-9_.-]{65,}")

# Keys a parser fills, in record order; the collector adds where the line was read.
ACCESS_FIELDS = (
    "time", "account", "source", "source_port", "data_subject", "action",
    "target_account", "auth_method", "attempts", "command", "program", "pid",
    "method", "path", "status", "bytes", "user_agent", "request_id",
    "model", "model_version", "prompt_sha256", "response_sha256", "raw", "raw_truncated",
)


REDACTION_MARK = "[REDACTED:"


def raw_sha256(parsed: Mapping[str, Any], line: bytes) -> str | None:
    """The `raw_sha256` of an access record: SHA-256 of the line as read, or None
    when a secret was taken out of `raw`: the hash of such a line would let anyone
    holding the rest of it test guesses of the secret."""
    raw = parsed.get("raw")
    if isinstance(raw, str) and REDACTION_MARK in raw:
        return None
    return hashlib.sha256(line).hexdigest()


class Malformed(ValueError):
    """The line is not of the source's format; the message is the reason."""


@dataclass(frozen=True)
class LineContext:
    """What a parser needs besides the line: the file's mtime (aware) and the zone
    of zone-less timestamps (the host's /etc/localtime)."""

    mtime: dt.datetime
    tz: dt.tzinfo


def access(**values: Any) -> dict[str, Any]:
    """An access dict: every field of ACCESS_FIELDS, null unless given."""
    unknown = set(values) - set(ACCESS_FIELDS)
    if unknown:
        raise TypeError(f"not access fields: {sorted(unknown)}")
    result = {name: values.get(name) for name in ACCESS_FIELDS}
    result["raw_truncated"] = bool(values.get("raw_truncated"))
    return result


def _window(text: str, limit: int) -> str:
    """The part of `text` to scrub when `limit` characters of it are kept."""
    return _LONG_RUN.sub(redaction("long_token"), text[:limit + SCRUB_WINDOW])


def scrubbed(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut to `limit` characters, secrets replaced."""
    return scrub_text(_window(text, limit))[0][:limit]


def cap_raw(clean: str, cut: bool) -> tuple[str, bool]:
    """Scrubbed line text cut to RAW_MAX UTF-8 bytes, and whether anything was cut
    (`cut`: the text was already shortened)."""
    encoded = clean.encode("utf-8")
    if len(encoded) <= RAW_MAX:
        return clean, cut
    return encoded[:RAW_MAX].decode("utf-8", "ignore"), True


def scrub_raw(line: str) -> tuple[str, bool]:
    """The `raw` of a record: the line scrubbed, at most RAW_MAX bytes."""
    return cap_raw(scrubbed(line, RAW_MAX), len(line) > RAW_MAX)


def scrub_command(command: str, limit: int = MAX_TEXT) -> str:
    """A command line as sudo logs it (argv joined by spaces), secrets removed:
    per argument (`--password X`, `-pX`), then across arguments (`Authorization:
    Bearer X` spans three); cut to `limit` characters."""
    return scrub_command_line(_window(command, limit))[0][:limit]


def _small_int(text: str | None) -> int | None:
    if text is None or not text.isdigit() or len(text) > 15:
        return None
    value = int(text)
    return value if value <= MAX_SAFE_INT else None


_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    start=1)}


# --- auth (syslog) ------------------------------------------------------------

_SYSLOG_CLASSIC = re.compile(
    r"(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d) "
    r"(?P<rest>.*)")
_SYSLOG_RFC3339 = re.compile(
    r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d)) (?P<rest>.*)")
_SYSLOG_REST = re.compile(
    r"(?P<host>\S+) (?P<prog>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?: ?(?P<msg>.*)")

_PAM_SESSION = re.compile(
    r"pam_unix\((?P<service>[^:()]+):session\): session (?P<what>opened|closed) for user "
    r"(?P<user>[^\s(]+)(?:\(uid=\d+\))?(?: by (?P<by>[^\s(]*)(?:\(uid=\d+\))?)?\s*$")
# Sessions of these PAM services are machine work, not access (one per cron job).
_NOT_ACCESS_SERVICES = frozenset({"cron", "CRON", "crond", "systemd-user"})

_SSH_ACCEPTED = re.compile(
    r"Accepted (?P<method>\S+) for (?P<user>.*?) from (?P<addr>\S+) port (?P<port>\d+)\b")
_SSH_FAILED = re.compile(
    r"Failed (?P<method>\S+) for (?P<invalid>invalid user )?(?P<user>.*?) "
    r"from (?P<addr>\S+) port (?P<port>\d+)\b")
_SSH_INVALID = re.compile(
    r"Invalid user (?P<user>.*?) from (?P<addr>\S+)(?: port (?P<port>\d+))?\b")
_SSH_DISCONNECTED = re.compile(
    r"Disconnected from user (?P<user>\S+) (?P<addr>\S+)(?: port (?P<port>\d+))?")

_SU_TO = re.compile(r"(?P<failed>FAILED SU )?\(to (?P<target>[^)]*)\) (?P<user>\S+) on "
                    r"(?P<tty>\S+)")
_SU_SHADOW = re.compile(r"(?P<result>Successful|FAILED) su for (?P<target>\S+) by "
                        r"(?P<user>\S+)")
_SU_SHADOW_TTY = re.compile(r"(?P<sign>[+-]) (?P<tty>\S+) (?P<user>[^\s:]+):(?P<target>\S+)$")

_SUDO = re.compile(r"\s*(?P<user>\S+) : (?P<rest>.*)")
_SUDO_ATTEMPTS = re.compile(r"(?P<n>\d+) incorrect password attempts?")
_SSH_PROGRAMS = frozenset({"sshd", "sshd-session", "sshd-auth"})
# The programs whose journal entries are auth evidence (SYSLOG_IDENTIFIER or _COMM):
# what auth.log holds of sshd, sudo and su, plus console logins' PAM sessions.
AUTH_PROGRAMS = tuple(sorted(_SSH_PROGRAMS | {"sudo", "su", "login"}))


def _syslog_time(match: re.Match[str], ctx: LineContext) -> str:
    """A classic `Nov 25 06:00:01` stamp in the host zone; the year is the file's
    mtime year, or the one before for a month later than the mtime's (a December
    line in a file last written in January)."""
    month = _MONTHS.get(match["mon"])
    if month is None:
        raise Malformed("not a syslog line")
    local_mtime = ctx.mtime.astimezone(ctx.tz)
    year = local_mtime.year - (1 if month > local_mtime.month else 0)
    try:
        moment = dt.datetime(year, month, int(match["day"]), int(match["h"]),
                             int(match["m"]), int(match["s"]), tzinfo=ctx.tz)
    except ValueError:
        raise Malformed("bad syslog timestamp") from None
    return format_time(moment)


def parse_auth(line: str, ctx: LineContext) -> dict[str, Any] | None:
    """An auth.log / secure line: sshd logins, sudo, su, PAM sessions."""
    classic = _SYSLOG_CLASSIC.fullmatch(line)
    if classic is not None:
        time = _syslog_time(classic, ctx)
        rest = classic["rest"]
    else:
        rfc = _SYSLOG_RFC3339.fullmatch(line)
        if rfc is None:
            raise Malformed("not a syslog line")
        try:
            time = format_time(dt.datetime.fromisoformat(rfc["ts"]))
        except ValueError:
            raise Malformed("bad syslog timestamp") from None
        rest = rfc["rest"]
    parts = _SYSLOG_REST.fullmatch(rest)
    if parts is None:  # a syslog line without a program tag: not an access event
        return None
    program, message = parts["prog"], parts["msg"]
    event = _auth_event(program, message)
    if event is None:
        return None
    tail = event.pop("_tail", None)
    if tail is None:
        raw, truncated = scrub_raw(line)
    else:  # sudo: its settings and command scrubbed one by one
        rest, clean_rest, cut = tail
        head = line[:len(line) - len(rest)]
        raw, truncated = cap_raw(scrubbed(head, RAW_MAX) + clean_rest,
                                 cut or len(head) > RAW_MAX)
    return access(time=time, program=program, pid=_small_int(parts["pid"]), raw=raw,
                  raw_truncated=truncated, **event)


def _auth_event(program: str, message: str) -> dict[str, Any] | None:
    pam = _PAM_SESSION.match(message)
    if pam is not None:
        if pam["service"] in _NOT_ACCESS_SERVICES:
            return None
        action = "session_open" if pam["what"] == "opened" else "session_close"
        by = pam["by"] or None
        if by is not None and by != pam["user"]:  # sudo/su: `by` is who acted
            return {"action": action, "account": by, "target_account": pam["user"]}
        return {"action": action, "account": pam["user"]}
    if program in _SSH_PROGRAMS:
        return _ssh_event(message)
    if program == "sudo":
        return _sudo_event(message)
    if program == "su":
        return _su_event(message)
    return None


def _ssh_event(message: str) -> dict[str, Any] | None:
    for regex, action in ((_SSH_ACCEPTED, "ssh_login"), (_SSH_FAILED, "ssh_login_failed"),
                          (_SSH_INVALID, "ssh_invalid_user"),
                          (_SSH_DISCONNECTED, "ssh_disconnect")):
        match = regex.match(message)
        if match is None:
            continue
        groups = match.groupdict()
        event: dict[str, Any] = {"action": action, "account": groups["user"],
                                 "source": groups["addr"],
                                 "source_port": _small_int(groups["port"]),
                                 "auth_method": groups.get("method")}
        return event
    return None


def _sudo_event(message: str) -> dict[str, Any] | None:
    """`user : [reason ; ]TTY=.. ; PWD=.. ; USER=.. ; COMMAND=..`. The `_tail` is the
    text after `user : ` and its scrubbed form: values are scrubbed one by one, as
    a whole line would have `PWD=/home/x` taken for a password."""
    match = _SUDO.fullmatch(message)
    if match is None:
        return None
    rest = match["rest"]
    at = 0 if rest.startswith("COMMAND=") else rest.find(" ; COMMAND=") + 3
    if at == 2:  # no COMMAND: not a command record (sudo's own warnings)
        return None
    settings: dict[str, str] = {}
    reasons: list[str] = []
    clean = []
    length = 0
    for item in rest[:at].removesuffix(" ; ").split(" ; ") if at else []:
        key, equals, value = item.partition("=")
        if equals and key.isupper():
            settings[key] = value
            piece = f"{key}={scrubbed(value, RAW_MAX)} ; "
        else:
            reasons.append(item.strip())
            piece = f"{scrubbed(item, RAW_MAX)} ; "
        if length <= RAW_MAX:  # past it the raw text is cut anyway
            clean.append(piece)
            length += len(piece)
    raw_command = rest[at + len("COMMAND="):]
    command = scrub_command(raw_command, RAW_MAX)
    clean_rest = "".join(clean) + "COMMAND=" + command
    cut = length > RAW_MAX or len(raw_command) > RAW_MAX
    action, attempts = "sudo", None
    if reasons:
        failed = _SUDO_ATTEMPTS.fullmatch(reasons[0])
        if failed is not None:
            action, attempts = "sudo_failed", _small_int(failed["n"])
        else:
            action = "sudo_denied"
    return {"action": action, "account": match["user"], "source": settings.get("TTY"),
            "target_account": settings.get("USER"), "attempts": attempts,
            "command": command[:MAX_TEXT], "_tail": (rest, clean_rest, cut)}


def _su_event(message: str) -> dict[str, Any] | None:
    to = _SU_TO.match(message)
    if to is not None:
        return {"action": "su_failed" if to["failed"] else "su", "account": to["user"],
                "target_account": to["target"], "source": to["tty"]}
    shadow = _SU_SHADOW.match(message)
    if shadow is not None:
        return {"action": "su" if shadow["result"] == "Successful" else "su_failed",
                "account": shadow["user"], "target_account": shadow["target"]}
    signed = _SU_SHADOW_TTY.match(message)
    if signed is not None:
        return {"action": "su" if signed["sign"] == "+" else "su_failed",
                "account": signed["user"], "target_account": signed["target"],
                "source": signed["tty"]}
    return None


# --- nginx combined -----------------------------------------------------------

_Q = r'"(?P<{}>(?:[^"\\]|\\.)*)"'
_NGINX = re.compile(
    r"(?P<addr>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] " + _Q.format("request")
    + r" (?P<status>\d{3}) (?P<bytes>\d+|-) " + _Q.format("referer") + " "
    + _Q.format("agent") + r"(?P<extra>.*)")
_NGINX_TIME = re.compile(r"(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) "
                         r"([+-])(\d{2})(\d{2})")
_REQUEST = re.compile(r"(?P<method>[A-Z][A-Z0-9_-]{0,31}) (?P<target>\S+)(?: HTTP/[0-9.]+)?")
_QUERY = re.compile(r"\?[^\s\"]*")
_EXTRA = re.compile(r'(?:^|\s)(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>"(?:[^"\\]|\\.)*"|[^\s"]*)')
_GATEWAY_EXTRAS = {"model": "model", "model_version": "model_version",
                   "subject": "data_subject", "data_subject": "data_subject",
                   "prompt_sha256": "prompt_sha256", "response_sha256": "response_sha256",
                   "request_id": "request_id"}
_SHA256 = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")


def _nginx_time(text: str) -> str:
    match = _NGINX_TIME.fullmatch(text)
    month = _MONTHS.get(match[2]) if match is not None else None
    if match is None or month is None:
        raise Malformed("bad nginx time")
    offset = dt.timedelta(hours=int(match[8]), minutes=int(match[9]))
    try:
        zone = dt.timezone(offset if match[7] == "+" else -offset)
        moment = dt.datetime(int(match[3]), month, int(match[1]), int(match[4]),
                             int(match[5]), int(match[6]), tzinfo=zone)
    except ValueError:
        raise Malformed("bad nginx time") from None
    return format_time(moment)


def _dash(text: str) -> str | None:
    return None if text in ("-", "") else text


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def sha256_hex(value: Any) -> str | None:
    """A SHA-256 hex digest (optionally `sha256:`-prefixed) in lower case, else None:
    a field named like a hash must not smuggle anything else into a record."""
    if not isinstance(value, str):
        return None
    match = _SHA256.fullmatch(value.strip())
    return match[1].lower() if match is not None else None


def _request_path(target: str) -> str:
    """The path of a request target: query string dropped (it can carry tokens)."""
    return scrubbed(target.split("?", 1)[0])


def parse_nginx(line: str, ctx: LineContext, ai_gateway: bool = False) -> dict[str, Any]:
    """An nginx `combined` line; with `ai_gateway`, key=value extras after it."""
    match = _NGINX.fullmatch(line)
    if match is None:
        raise Malformed("not an nginx combined line")
    request = _REQUEST.fullmatch(match["request"])
    extras: dict[str, Any] = {}
    if ai_gateway:
        for found in _EXTRA.finditer(match["extra"]):
            name = _GATEWAY_EXTRAS.get(found["key"])
            value = _dash(_unquote(found["value"]))
            if name is not None and value is not None:
                extras[name] = value
        for name in ("prompt_sha256", "response_sha256"):
            extras[name] = sha256_hex(extras.get(name))
        for name in ("model", "model_version", "data_subject", "request_id"):
            if extras.get(name) is not None:
                extras[name] = scrubbed(extras[name])
    agent = _dash(match["agent"])
    # raw: query strings of the request and the referer redacted, then secrets.
    raw, truncated = scrub_raw("".join((
        line[:match.start("request")],
        _QUERY.sub("?" + redaction("query"), match["request"]),
        line[match.end("request"):match.start("referer")],
        _QUERY.sub("?" + redaction("query"), match["referer"]),
        line[match.end("referer"):])))
    return access(
        time=_nginx_time(match["time"]), account=_dash(match["user"]),
        source=match["addr"], action="http_request",
        method=request["method"] if request else None,
        path=_request_path(request["target"]) if request else None,
        status=int(match["status"]), bytes=_small_int(match["bytes"]),
        user_agent=scrubbed(agent) if agent is not None else None,
        raw=raw, raw_truncated=truncated, **extras)


# --- JSON lines ---------------------------------------------------------------

def _first(obj: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = obj.get(name)
        if value is not None and value != "":
            return value
    return None


def json_text(value: Any) -> str | None:
    """A scalar JSON value as text (floats as their integer when whole); objects and
    lists give None: they are never copied (they may hold a prompt)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return scrubbed(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def json_int(value: Any) -> int | None:
    """A non-negative integer from an int, a finite float (truncated) or digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = int(value) if math.isfinite(value) else None
    elif isinstance(value, str):
        value = _small_int(value.strip())
    if isinstance(value, int) and 0 <= value <= MAX_SAFE_INT:
        return value
    return None


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# An epoch number this large is not seconds (year > 5000): milli-, micro-, nanoseconds.
_EPOCH_UNITS = ((10**17, 10**9), (10**14, 10**6), (10**11, 10**3))


def _epoch_time(value: int | float) -> str:
    per_second = next((unit for threshold, unit in _EPOCH_UNITS if value >= threshold), 1)
    if isinstance(value, int):  # exact: no float rounding of a millisecond count
        micros = value * 10**6 // per_second
    else:
        micros = round(value * 10**6 / per_second)
    return format_time(_EPOCH + dt.timedelta(microseconds=micros))


def json_time(value: Any, tz: dt.tzinfo) -> str | None:
    """Epoch seconds (or ms/µs/ns by magnitude; int, float or digits) or an RFC 3339
    string as a record time; a string without an offset is in `tz`. None if neither."""
    if isinstance(value, str) and re.fullmatch(r"\d{9,19}(?:\.\d+)?", value.strip()):
        value = float(value) if "." in value else int(value)
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value) or value < 0:
                return None
            return _epoch_time(value)
        if isinstance(value, str):
            moment = dt.datetime.fromisoformat(value.strip())
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=tz)
            return format_time(moment)
    except (ValueError, OverflowError):
        return None
    return None


_JSON_FIELDS: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    "account": (("user", "account", "user_id"), json_text),
    "source": (("client_ip", "src", "remote_addr"), json_text),
    "data_subject": (("subject", "data_subject"), json_text),
    "model": (("model",), json_text),
    "model_version": (("model_version",), json_text),
    "status": (("status", "status_code"), json_int),
    "bytes": (("bytes", "response_bytes"), json_int),
    "prompt_sha256": (("prompt_sha256", "prompt_hash"), sha256_hex),
    "response_sha256": (("response_sha256", "response_hash"), sha256_hex),
    "method": (("method",), json_text),
    "user_agent": (("user_agent",), json_text),
    "request_id": (("request_id",), json_text),
}
_JSON_TIME = ("ts", "time", "timestamp", "@timestamp")
_JSON_ACTION = ("action", "event")


def parse_json_line(line: str, ctx: LineContext) -> dict[str, Any] | None:
    """One JSON object per line (an AI gateway's log): mapped fields only."""
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # ValueError covers JSONDecodeError
        raise Malformed("not a JSON object") from None
    if not isinstance(obj, dict):
        raise Malformed("not a JSON object")
    values = {name: convert(_first(obj, names))
              for name, (names, convert) in _JSON_FIELDS.items()}
    path = _first(obj, ("path",))
    action = json_text(_first(obj, _JSON_ACTION))
    return access(time=json_time(_first(obj, _JSON_TIME), ctx.tz),
                  action=action or "http_request",
                  path=_request_path(path) if isinstance(path, str) else None,
                  **values)


Parser = Callable[[str, LineContext], dict[str, Any] | None]

# The `format` of a configured source. `journald` entries are read by journalctl
# and parsed as auth lines (collector/_journald.py): one parser for both.
LOG_FORMATS = ("auth", "nginx-combined", "journald", "json-lines")


def parser_for(fmt: str, kind: str) -> Parser | None:
    """The parser of a configured source, None for an unknown format."""
    if fmt in ("auth", "journald"):
        return parse_auth
    if fmt == "nginx-combined":
        gateway = kind == "ai_gateway"
        return lambda line, ctx: parse_nginx(line, ctx, ai_gateway=gateway)
    if fmt == "json-lines":
        return parse_json_line
    return None
