"""The `accounts` collector: local users, groups, sudo rights and SSH authorized keys.

Reads /etc/passwd, /etc/group, /etc/shadow, /etc/sudoers (following its include
directives) and /etc/sudoers.d, and each user's ~/.ssh/authorized_keys{,2}, all
under the context root. From shadow only the aging fields and two flags are kept:
never the password hash or any part of it, and a malformed shadow line is reported
by number only. Missing or unreadable sources become records; the run goes on.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from collector._linux import (
    MAX_SAFE_INT,
    key_text,
    lines,
    malformed_record,
    missing_record,
    parse_colon_file,
    parse_int,
    read_source,
    record_text,
    unreadable_record,
)
from collector.record import Record
from collector.registry import CollectContext, Collector, Field, RecordType

NAME = "accounts"

PASSWD = "/etc/passwd"  # noqa: S105 - a path, not a password
GROUP = "/etc/group"
SHADOW = "/etc/shadow"
SUDOERS = "/etc/sudoers"
SUDOERS_D = "/etc/sudoers.d"
AUTHORIZED_KEYS = ("authorized_keys", "authorized_keys2")

_NO_LOGIN_SHELLS = frozenset({"nologin", "false"})
# /etc/shadow fields 3-8: two dates counted in days since 1970-01-01, four durations
# in days. The dates are recorded as dates: a day count read as "days since the
# change" would be off by fifty years.
_SHADOW_FIELDS = ("last_change", "min_days", "max_days", "warn_days", "inactive_days",
                  "expires")
_SHADOW_DATES = frozenset({"last_change", "expires"})
_EPOCH_DAY = dt.date(1970, 1, 1)
_MAX_DAY = (dt.date.max - _EPOCH_DAY).days
_MAX_INCLUDE_DEPTH = 128  # as sudo


@dataclass
class _User:
    name: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str


@dataclass
class _Group:
    name: str
    gid: int
    members: list[str]


def _read(ctx: CollectContext, path: str, problems: list[Record],
          report_missing: bool = True) -> bytes | None:
    source = read_source(ctx, NAME, path, report_missing)
    if source.problem is not None:
        problems.append(source.problem)
    return source.raw


# --- passwd, group, shadow -------------------------------------------------------

def _read_passwd(ctx: CollectContext, problems: list[Record]) -> list[_User]:
    raw = _read(ctx, PASSWD, problems)
    users: list[_User] = []
    first_line: dict[str, int] = {}
    for entry in parse_colon_file(raw or b"", 7):
        try:
            if entry.reason is not None:
                raise ValueError(entry.reason)
            name, _pw, uid, gid, gecos, home, shell = entry.fields
            if not name:
                raise ValueError("user name is empty")
            if name in first_line:
                raise ValueError(f"duplicate user name (first at line {first_line[name]})")
            user = _User(name, parse_int(uid, "uid"), parse_int(gid, "gid"), gecos, home,
                         shell)
        except ValueError as exc:
            problems.append(malformed_record(NAME, PASSWD, entry.lineno, str(exc)))
            continue
        first_line[name] = entry.lineno
        users.append(user)
    return users


SYSTEM_UID_MAX = 999  # login.defs SYS_UID_MAX as most distributions ship it
NOBODY_UID = 65534


def local_account_names(ctx: CollectContext) -> tuple[frozenset[str], frozenset[str]]:
    """/etc/passwd names split: (system accounts: uid <= SYSTEM_UID_MAX or nobody, and
    root always; people: every other account). An unreadable passwd gives ({root}, {})."""
    users = _read_passwd(ctx, [])
    system = {u.name for u in users if u.uid <= SYSTEM_UID_MAX or u.uid == NOBODY_UID}
    system.add("root")
    return frozenset(system), frozenset(u.name for u in users if u.name not in system)


def _read_group(ctx: CollectContext, problems: list[Record]) -> list[_Group]:
    raw = _read(ctx, GROUP, problems)
    groups: list[_Group] = []
    first_line: dict[str, int] = {}
    for entry in parse_colon_file(raw or b"", 4):
        try:
            if entry.reason is not None:
                raise ValueError(entry.reason)
            name, _pw, gid, members = entry.fields
            if not name:
                raise ValueError("group name is empty")
            if name in first_line:
                raise ValueError(f"duplicate group name (first at line {first_line[name]})")
            group = _Group(name, parse_int(gid, "gid"),
                           sorted({m.strip() for m in members.split(",") if m.strip()}))
        except ValueError as exc:
            problems.append(malformed_record(NAME, GROUP, entry.lineno, str(exc)))
            continue
        first_line[name] = entry.lineno
        groups.append(group)
    return groups


def _read_shadow(ctx: CollectContext, problems: list[Record]) -> dict[str, dict[str, Any]]:
    """Aging per user name. Hashes are looked at for two flags, then dropped."""
    raw = _read(ctx, SHADOW, problems)
    aging: dict[str, dict[str, Any]] = {}
    for entry in parse_colon_file(raw or b"", 9):
        try:
            if entry.reason is not None:
                raise ValueError(entry.reason)
            name, secret, *numbers = entry.fields
            if not name:
                raise ValueError("user name is empty")
            if name in aging:
                raise ValueError("duplicate user name")
            values = _shadow_aging(numbers)
        except ValueError as exc:  # reasons name fields, never their content
            problems.append(malformed_record(NAME, SHADOW, entry.lineno, str(exc)))
            continue
        values["locked"] = secret.startswith(("!", "*"))
        values["no_password"] = secret == ""
        aging[name] = values
    return aging


def _shadow_aging(numbers: list[str]) -> dict[str, Any]:
    """Fields 3-8 of a shadow line as record values. A last change of 0 means the
    user must change the password at next login (shadow(5)); that day is not a date."""
    values: dict[str, Any] = {}
    for field, text in zip(_SHADOW_FIELDS, numbers, strict=False):
        if field not in _SHADOW_DATES:
            values[field] = parse_int(text, field, -MAX_SAFE_INT, MAX_SAFE_INT) if text else None
            continue
        day = parse_int(text, field, 0, _MAX_DAY) if text else None
        must_change = field == "last_change" and day == 0
        values[field] = None if day is None or must_change else (
            _EPOCH_DAY + dt.timedelta(days=day)).isoformat()
        if field == "last_change":
            values["must_change"] = must_change
    return values


# --- sudoers ---------------------------------------------------------------------

_DIRECTIVE = re.compile(r"[#@](include|includedir)\s+(.+)")
_ALIAS_KINDS = ("User_Alias", "Runas_Alias", "Host_Alias", "Cmnd_Alias", "Cmd_Alias")
_DEFAULTS = re.compile(r"Defaults([:@>!]\s*(\S+))?(\s|$)")


@dataclass
class _SudoLine:
    file: str
    line: int
    text: str
    rule_type: str  # rule | defaults | alias | include | unparsed
    principal: str | None
    included: bool


def _strip_comment(line: str) -> str:
    """`line` up to a `#` comment; `#` followed by a digit is a uid, not a comment."""
    in_quote = escaped = False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            in_quote = not in_quote
        elif char == "#" and not in_quote and not line[i + 1:i + 2].isdigit():
            return line[:i]
    return line


def _in_quote(text: str) -> bool:
    return len(re.findall(r'(?<!\\)"', text)) % 2 == 1


def _logical_lines(raw: bytes) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each logical line: comments stripped, lines
    ending in a backslash joined to the next (inside quotes without a space, as sudo)."""
    text = ""
    start = 0
    continuing = False
    for lineno, line in lines(raw):
        if not continuing:
            start = lineno
            if _DIRECTIVE.fullmatch(line.strip()):
                yield lineno, line.strip()
                continue
        piece = _strip_comment(line)
        continuing = piece.rstrip().endswith("\\")
        if continuing:
            piece = piece.rstrip()[:-1]
        if not text:
            text = piece.strip()
        elif _in_quote(text):
            text += piece.lstrip()
        else:
            text = f"{text.rstrip()} {piece.strip()}"
        if not continuing:
            if text.strip():
                yield start, text.strip()
            text = ""
    if text.strip():
        yield start, text.strip()


def _unquote(word: str) -> str:
    word = word.strip()
    if len(word) >= 2 and word[0] == word[-1] == '"':
        word = word[1:-1]
    return re.sub(r"\\(.)", r"\1", word)


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in re.split(r"(?<!\\),", text) if item.strip()]


def _classify(text: str) -> tuple[str, str | None]:
    """(rule_type, principal) of a logical sudoers line."""
    defaults = _DEFAULTS.match(text)
    if defaults is not None:
        bound_to_users = text[len("Defaults"):len("Defaults") + 1] == ":"
        return "defaults", defaults.group(2) if bound_to_users else None
    first_word = text.split(None, 1)[0]
    if first_word in _ALIAS_KINDS:
        return "alias", None
    before, equals, _after = text.partition("=")
    if not equals:
        return "unparsed", None
    words = re.sub(r"\s*(?<!\\),\s*", ",", before.strip()).split()
    return "rule", ", ".join(_split_list(words[0])) if words else None


def _resolve(current_file: str, target: str) -> str:
    target = _unquote(target)
    if target.startswith("/"):
        return os.path.normpath(target)
    return os.path.normpath(f"{os.path.dirname(current_file)}/{target}")


class _SudoersReader:
    """Walks /etc/sudoers and what it includes, as sudo does, then the rest of
    /etc/sudoers.d (those rules are recorded with `included: false`)."""

    def __init__(self, ctx: CollectContext, problems: list[Record]) -> None:
        self.ctx = ctx
        self.problems = problems
        self.lines: list[_SudoLine] = []
        self.seen: set[str] = set()

    def read(self) -> list[_SudoLine]:
        self._file(SUDOERS, included=True, depth=0)
        for path in self._directory(SUDOERS_D, report_missing=False):
            if path not in self.seen:
                self._file(path, included=False, depth=0)
        return self.lines

    def _directory(self, directory: str, report_missing: bool = True) -> list[str]:
        """Files sudo reads from an includedir: no `.` in the name, no trailing `~`."""
        try:
            names = sorted(os.listdir(self.ctx.path(directory)))
        except FileNotFoundError:
            if report_missing:
                self.problems.append(missing_record(NAME, directory))
            return []
        except OSError as exc:
            self.problems.append(unreadable_record(NAME, directory, exc))
            return []
        return [f"{directory.rstrip('/')}/{name}" for name in names
                if "." not in name and not name.endswith("~")
                and os.path.isfile(self.ctx.path(f"{directory}/{name}"))]

    def _file(self, path: str, included: bool, depth: int) -> None:
        if path in self.seen or depth > _MAX_INCLUDE_DEPTH:
            return
        self.seen.add(path)
        raw = _read(self.ctx, path, self.problems)
        if raw is None:
            return
        for lineno, text in _logical_lines(raw):
            directive = _DIRECTIVE.fullmatch(text)
            if directive is not None:
                self.lines.append(_SudoLine(path, lineno, text, "include", None, included))
                target = _resolve(path, directive.group(2))
                if directive.group(1) == "include":
                    self._file(target, included, depth + 1)
                else:
                    for child in self._directory(target):
                        self._file(child, included, depth + 1)
                continue
            rule_type, principal = _classify(text)
            self.lines.append(_SudoLine(path, lineno, text, rule_type, principal, included))


class _SudoMatcher:
    """Does a user appear in any active rule's user list (directly, via %group,
    #uid, %#gid, ALL or a User_Alias)? Host and command parts are not evaluated."""

    def __init__(self, sudo_lines: list[_SudoLine], groups: list[_Group]) -> None:
        self.groups = groups
        self.aliases: dict[str, list[str]] = {}
        self.user_lists: list[list[str]] = []
        for entry in sudo_lines:
            if not entry.included:
                continue
            if entry.rule_type == "alias" and entry.text.startswith("User_Alias"):
                for definition in entry.text[len("User_Alias"):].split(":"):
                    alias, _eq, members = definition.partition("=")
                    self.aliases[alias.strip()] = _split_list(members)
            elif entry.rule_type == "rule" and entry.principal is not None:
                self.user_lists.append(_split_list(entry.principal))

    def has_sudo(self, user: _User) -> bool:
        return any(self._list_matches(items, user, 0) for items in self.user_lists)

    def _list_matches(self, items: list[str], user: _User, depth: int) -> bool:
        result = False  # the last matching item decides, as in sudo
        for item in items:
            negated = False
            while item.startswith("!"):
                negated, item = not negated, item[1:].lstrip()
            if self._item_matches(item, user, depth):
                result = not negated
        return result

    def _in_group(self, user: _User, group: _Group) -> bool:
        return user.gid == group.gid or user.name in group.members

    def _item_matches(self, item: str, user: _User, depth: int) -> bool:
        if item == "ALL":
            return True
        if item in self.aliases:
            return depth < 32 and self._list_matches(self.aliases[item], user, depth + 1)
        if item.startswith("%#"):
            return any(self._in_group(user, g) for g in self.groups
                       if str(g.gid) == item[2:])
        if item.startswith("%:") or item.startswith("+"):
            return False  # non-Unix groups and netgroups: not resolvable from files
        if item.startswith("%"):
            name = _unquote(item[1:])
            return any(self._in_group(user, g) for g in self.groups if g.name == name)
        if item.startswith("#"):
            return item[1:] == str(user.uid)
        return _unquote(item) == user.name


# --- authorized_keys -------------------------------------------------------------

def _key_blob(key_type: str, encoded: str) -> bytes | None:
    """The decoded key blob if `encoded` is base64 of a key of `key_type`."""
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if blob[4:4 + length] != key_type.encode("ascii", "replace"):
        return None
    return blob


def _split_options(line: str) -> tuple[str, str]:
    """(options, rest): options end at the first whitespace outside double quotes."""
    in_quote = escaped = False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            in_quote = not in_quote
        elif char.isspace() and not in_quote:
            return line[:i], line[i:].strip()
    return line, ""


def parse_authorized_key(line: str) -> tuple[str | None, str, bytes, str | None] | None:
    """(options, key type, key blob, comment) of an authorized_keys line, else None."""
    options: str | None = None
    words = line.split(None, 2)
    blob = _key_blob(words[0], words[1]) if len(words) >= 2 else None
    if blob is None:
        options, rest = _split_options(line)
        words = rest.split(None, 2)
        blob = _key_blob(words[0], words[1]) if len(words) >= 2 else None
        if blob is None:
            return None
    comment = words[2].strip() if len(words) == 3 and words[2].strip() else None
    return options, words[0], blob, comment


def fingerprint(blob: bytes) -> str:
    """`SHA256:<base64, no padding>`, as `ssh-keygen -lf` prints it."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii")
    return "SHA256:" + digest.rstrip("=")


_ParsedKeys = list[tuple[str | None, str, bytes, str | None]]


def _read_keys_file(ctx: CollectContext, path: str, problems: list[Record]) -> _ParsedKeys:
    """The keys of one file in order; problems (unreadable, bad lines) recorded."""
    source = read_source(ctx, NAME, path, report_missing=False)
    if source.problem is not None:
        problems.append(source.problem)
    keys: _ParsedKeys = []
    for lineno, line in lines(source.raw or b""):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parsed = parse_authorized_key(stripped)
        if parsed is None:
            problems.append(malformed_record(NAME, path, lineno, "not a public key line"))
        else:
            keys.append(parsed)
    return keys


def _authorized_keys(ctx: CollectContext, users: list[_User],
                     problems: list[Record]) -> list[Record]:
    records: list[Record] = []
    files: dict[str, _ParsedKeys] = {}  # a home shared by several users is read once
    for user in users:
        if not user.home.startswith("/"):
            continue
        seen: set[str] = set()
        for name in AUTHORIZED_KEYS:
            path = f"{user.home.rstrip('/')}/.ssh/{name}"
            if path not in files:
                files[path] = _read_keys_file(ctx, path, problems)
            for options, key_type, blob, comment in files[path]:
                print_ = fingerprint(blob)
                if print_ in seen:
                    continue  # same key listed twice for this user: first one kept
                seen.add(print_)
                records.append(Record(NAME, "ssh_authorized_key",
                                      f"{key_text(user.name)}:{print_}", {
                    "user": record_text(user.name),
                    "file": record_text(path),
                    "key_type": key_text(key_type),
                    "fingerprint": print_,
                    "comment": None if comment is None else record_text(comment),
                    "options": None if options is None else record_text(options),
                }))
    return records


# --- the collector ---------------------------------------------------------------

def collect(ctx: CollectContext) -> Iterator[Record]:
    problems: list[Record] = []
    users = _read_passwd(ctx, problems)
    groups = _read_group(ctx, problems)
    shadow = _read_shadow(ctx, problems)
    sudo_lines = _SudoersReader(ctx, problems).read()
    matcher = _SudoMatcher(sudo_lines, groups)
    keys = _authorized_keys(ctx, users, problems)

    yield from problems
    for user in users:
        shell_name = user.shell.rstrip("/").rsplit("/", 1)[-1]
        yield Record(NAME, "user", key_text(user.name), {
            "uid": user.uid,
            "gid": user.gid,
            "gecos": record_text(user.gecos),
            "home": record_text(user.home),
            "shell": record_text(user.shell),
            "login_allowed": shell_name not in _NO_LOGIN_SHELLS,
            "groups": [record_text(g.name) for g in sorted(groups, key=lambda g: g.name)
                       if user.name in g.members],
            "sudo": matcher.has_sudo(user),
            "password_aging": shadow.get(user.name),
        })
    for group in groups:
        yield Record(NAME, "group", key_text(group.name), {
            "gid": group.gid,
            "members": [record_text(m) for m in group.members],
        })
    for entry in sudo_lines:
        yield Record(NAME, "sudoers_rule", f"{key_text(entry.file)}:{entry.line}", {
            "file": record_text(entry.file),
            "line": entry.line,
            "text": record_text(entry.text),
            "rule_type": entry.rule_type,
            "principal": None if entry.principal is None else record_text(entry.principal),
            "included": entry.included,
        })
    yield from keys


_NONE = type(None)
_TEXT = (str, dict)  # dict: {"b64": ...} for bytes that are not UTF-8

COLLECTOR = Collector(
    name=NAME,
    version="2",
    description="Local accounts: users (with password aging from /etc/shadow, never a "
                "hash), groups, sudoers rules (following includes) and SSH authorized "
                "keys, read under the root.",
    platforms=("linux", "darwin"),
    record_types={
        "user": RecordType(
            doc="One line of /etc/passwd.",
            key="the user name",
            key_field="user",
            fields={
                "uid": Field((int,), "numeric user id"),
                "gid": Field((int,), "numeric primary group id"),
                "gecos": Field(_TEXT, "GECOS (full name, contact) field", personal=True),
                "home": Field(_TEXT, "home directory", personal=True),
                "shell": Field(_TEXT, "login shell as written (empty means /bin/sh)"),
                "login_allowed": Field((bool,),
                                       "false when the shell is `nologin` or `false` "
                                       "(judged by the shell only; see password_aging "
                                       "and ssh_authorized_key)"),
                "groups": Field((list,),
                                "supplementary groups: names of /etc/group entries "
                                "listing the user, sorted"),
                "sudo": Field((bool,),
                              "the user is in the user list of a sudoers rule sudo "
                              "reads: by name, #uid, %group / %#gid (primary or "
                              "supplementary), User_Alias or ALL; host and command "
                              "parts are not evaluated"),
                "password_aging": Field((dict, _NONE),
                                        "from /etc/shadow: `{last_change, must_change, "
                                        "min_days, max_days, warn_days, inactive_days, "
                                        "expires}`: `last_change` the date of the last "
                                        "password change and `expires` the date the "
                                        "account expires (`YYYY-MM-DD`, UTC; shadow counts "
                                        "days since 1970-01-01), null when empty; "
                                        "`must_change` true when the last change field is "
                                        "0 (change forced at next login; `last_change` is "
                                        "then null); the `_days` fields are durations in "
                                        "days, integers or null when empty (99999 is "
                                        "shadow's \"no maximum\"), `locked` (hash "
                                        "field starts with `!` or `*`), `no_password` "
                                        "(hash field empty). Never the hash. Null when "
                                        "shadow is missing or unreadable or has no line "
                                        "for the user"),
            },
        ),
        "group": RecordType(
            doc="One line of /etc/group.",
            key="the group name",
            fields={
                "gid": Field((int,), "numeric group id"),
                "members": Field((list,), "member user names, sorted", personal=True),
            },
        ),
        "sudoers_rule": RecordType(
            doc="One logical line of /etc/sudoers, a file it includes (#include, "
                "#includedir, @include, @includedir; relative paths from the including "
                "file's directory) or /etc/sudoers.d. Files whose name contains `.` or "
                "ends in `~` are skipped in directories, as sudo does.",
            key="`<file>:<line>` (the line where the logical line starts)",
            fields={
                "file": Field(_TEXT, "the file's absolute path"),
                "line": Field((int,), "1-based line number where it starts"),
                "text": Field(_TEXT, "the line, comments stripped, continuation lines "
                                     "(trailing `\\`) joined"),
                "rule_type": Field((str,),
                                   "rule | defaults | alias (a `*_Alias` definition) | "
                                   "include (a directive) | unparsed (no `=`)"),
                "principal": Field((str, dict, _NONE),
                                   "rule: its user list as written (e.g. `%sudo`, "
                                   "`alice, OPERATORS`); defaults: the users of a "
                                   "`Defaults:users` line; otherwise null"),
                "included": Field((bool,),
                                  "false for a /etc/sudoers.d file that no include "
                                  "directive reaches (sudo ignores it; it does not count "
                                  "for `user.sudo`)"),
            },
        ),
        "ssh_authorized_key": RecordType(
            doc="A key in a user's ~/.ssh/authorized_keys or authorized_keys2 (under the "
                "root). A key listed twice for one user is recorded once, at its first "
                "place. sshd's AuthorizedKeysFile setting is not consulted.",
            key="`<user>:<fingerprint>`",
            fields={
                "user": Field(_TEXT, "the user whose home holds the file", personal=True),
                "file": Field(_TEXT, "the file's absolute path"),
                "key_type": Field((str,), "e.g. `ssh-ed25519`, `ssh-rsa`"),
                "fingerprint": Field((str,),
                                     "`SHA256:` + unpadded base64 of the SHA-256 of the key "
                                     "blob, as `ssh-keygen -lf` prints"),
                "comment": Field((str, dict, _NONE), "the comment after the key, or null",
                                 personal=True),
                "options": Field((str, dict, _NONE),
                                 "the options before the key as written (e.g. "
                                 "`from=\"10.0.0.0/8\",no-pty`), or null"),
            },
        ),
    },
    collect=collect,
)
