"""Pseudonymization of people's names and addresses, before anything is sealed.

`[privacy] pseudonymize` names record fields. Only fields a collector declares
`personal` (collector/registry.py `Field.personal`: user names, login addresses,
home directories, GECOS, key comments) may be named; the vocabulary comes from the
declarations, never from a list kept here. With a non-empty list, each bundle is
rewritten once, just before sealing, in two passes over its records (`gather` each,
`prepare`, `pseudonymize` each; agent/records.py streams them):

1. Gather: the value of every named field of every record (and the `key` of a record
   type whose `RecordType.key_field` is named) is a person value, except values that
   are not people: system accounts (uid <= 999 and nobody in the host's /etc/passwd,
   and root), terminal names (`pts/0`, `tty1`, `:0`), loopback and unspecified
   addresses, and values already pseudonymized. When `user` is named, the host's
   other /etc/passwd names are person values of every bundle, whatever ran in it.
2. Replace: a named field's value becomes `"psn:" + hex(HMAC-SHA256(key, value))[:32]`
   (an IP address by its normal form, so `::ffff:10.0.0.5` and `10.0.0.5` agree).
3. Rewrite: every other string of every record of the bundle (its `key`, all of
   `data`, object keys too) has each person value gathered anywhere in the bundle
   replaced where it stands as a whole token (see `_Matcher`), so `/home/jiwoo`,
   `jiwoo@laptop`, `PWD=/home/jiwoo` and `USER=jiwoo` lose the name wherever they are.
4. Raw log lines: `raw_sha256` (a plain digest would let anyone confirm a guessed
   line) becomes `raw_hmac`, keyed; a `raw` line that was cut, or that still holds a
   person value of its record after the rewrite, is withheld (null).

The same value and key give the same pseudonym on every host, so auditors can still
correlate; only the firm, holding the key, can test a guess. The key file must be
0600 (or stricter).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.registry import COMMON_RECORD_TYPES, Collector, RecordType
from signing.errors import KeyFileError

PREFIX = "psn:"
MIN_KEY_BYTES = 16
# Person values longer than this are replaced in their own field but not searched for
# elsewhere (a raw line still holding one is withheld).
MAX_TOKEN_CHARS = 256
RAW, RAW_SHA256, RAW_HMAC, RAW_TRUNCATED = "raw", "raw_sha256", "raw_hmac", "raw_truncated"

_TERMINAL_RE = re.compile(
    r"(?:/dev/)?(?:pts/\d+|tty(?:[A-Za-z]{0,4}\d+)?|console|ssh:[a-z]+|:\d+(?:\.\d+)?)")
_DIGITS_RE = re.compile(r"\d+")
_ADDRESS_CHARS_RE = re.compile(r"\[?[0-9A-Fa-f:.]+\]?")


# --------------------------------------------------------------------------- the key


def load_pseudonym_key(path: Path) -> bytes:
    """The firm's HMAC key; refuse a missing, short or group/other-accessible file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KeyFileError(f"privacy.key_file {path}: not found",
                           hint="create it with: head -c 32 /dev/urandom > FILE; "
                                "chmod 600 FILE (the same file on every host)") from None
    except OSError as exc:
        raise KeyFileError(f"privacy.key_file {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"privacy.key_file {path}: not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(
                f"privacy.key_file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o})", hint=f"run: chmod 600 {path}")
        key = os.read(fd, 4096)
    finally:
        os.close(fd)
    key = key.strip()
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(f"privacy.key_file {path}: key shorter than {MIN_KEY_BYTES} bytes")
    return key


def pseudonym(key: bytes, value: str | bytes) -> str:
    """`psn:` + the first 32 hex digits of HMAC-SHA256(key, value's UTF-8 bytes)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return PREFIX + hmac.new(key, data, hashlib.sha256).hexdigest()[:32]


def key_id(key: bytes) -> str:
    """Names the key in the manifest without revealing it (16 hex of an HMAC)."""
    return hmac.new(key, b"gamsa pseudonym key id", hashlib.sha256).hexdigest()[:16]


def raw_hmac(key: bytes, raw_sha256_hex: str) -> str:
    """The keyed digest standing for a raw line's SHA-256: HMAC-SHA256(key, digest bytes)."""
    return hmac.new(key, bytes.fromhex(raw_sha256_hex), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class TypeScope:
    """What of one record type is pseudonymized: named personal fields, and its key."""

    fields: frozenset[str] = frozenset()
    key: bool = False


def _record_types(collectors: Mapping[str, Collector]
                  ) -> Iterable[tuple[str, str, RecordType]]:
    for collector in collectors.values():
        for type_name, record_type in collector.record_types.items():
            yield collector.name, type_name, record_type
    for type_name, record_type in COMMON_RECORD_TYPES.items():
        yield "*", type_name, record_type


def personal_fields(collectors: Mapping[str, Collector]) -> dict[str, list[str]]:
    """Each personal field name and the `collector.type` places that declare it."""
    found: dict[str, list[str]] = {}
    for collector, type_name, record_type in _record_types(collectors):
        for name, declared in record_type.fields.items():
            if declared.personal:
                found.setdefault(name, []).append(f"{collector}.{type_name}")
        if record_type.key_field is not None:
            found.setdefault(record_type.key_field, []).append(
                f"{collector}.{type_name} (key)")
    return dict(sorted(found.items()))


def field_name_problem(name: str, collectors: Mapping[str, Collector]) -> tuple[str, str] | None:
    """Why `name` cannot be pseudonymized (message, hint), or None when it can."""
    personal = personal_fields(collectors)
    if name in personal:
        return None
    hint = "personal fields: " + ", ".join(personal)
    declared = any(name in rt.fields for _, _, rt in _record_types(collectors))
    if declared:
        return f"{name!r} is not a personal field (it holds no person's name or address)", hint
    return f"{name!r} is a field no collector emits", hint


def scopes(names: Iterable[str], collectors: Mapping[str, Collector]
           ) -> dict[tuple[str, str], TypeScope]:
    """Per (collector, type): the named fields declared personal there, and the key."""
    wanted = frozenset(names)
    out: dict[tuple[str, str], TypeScope] = {}
    for collector, type_name, rt in _record_types(collectors):
        fields = frozenset(n for n, f in rt.fields.items() if f.personal and n in wanted)
        key = rt.key_field is not None and rt.key_field in wanted
        if fields or key:
            out[(collector, type_name)] = TypeScope(fields, key)
    return out


# --------------------------------------------------------------------------- values


@functools.lru_cache(maxsize=1 << 16)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not _ADDRESS_CHARS_RE.fullmatch(text):  # most values: no parsing at all
        return None
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=1 << 16)
def canonical(text: str) -> str:
    """The form a value is pseudonymized by: an IP address in its normal form, else as is."""
    address = _address(text)
    return text if address is None else address.compressed


def is_person(text: str, keep_clear: frozenset[str]) -> bool:
    """False for what names no person: "", system accounts, terminals, loopback."""
    if not text or text.startswith(PREFIX) or text in keep_clear:
        return False
    if _TERMINAL_RE.fullmatch(text):
        return False
    address = _address(text)
    return address is None or not (address.is_loopback or address.is_unspecified)


@functools.lru_cache(maxsize=1 << 16)
def _forms(text: str) -> Mapping[str, str]:
    """Spellings of a person value to search for, each with the value it stands for."""
    value = canonical(text)
    forms = {text: value, value: value}
    address = _address(text)
    if isinstance(address, ipaddress.IPv4Address):
        forms[f"::ffff:{value}"] = value
    elif address is not None:
        for spelling in (address.exploded, value):
            forms[spelling] = forms[spelling.upper()] = value
    if "," in text:  # GECOS: full name, room, phones, other, each on its own
        for part in (p.strip() for p in text.split(",")):
            if part:
                forms[part] = part
    return forms


def _b64_bytes(value: Mapping[str, Any]) -> bytes | None:
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        return None
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        return None


# --------------------------------------------------------------------------- matching


def _trie_regex(words: Iterable[str]) -> str:
    """One regex alternation for many literals, as a trie: linear in the text scanned."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}
    return _node_regex(root)


def _node_regex(node: dict[str, Any]) -> str:
    branches = []
    for char in sorted(k for k in node if k):
        child, literal = node[char], char
        while len(child) == 1 and "" not in child:  # a chain: one literal, no group
            ((nxt, child),) = child.items()
            literal += nxt
        branches.append(re.escape(literal) + _node_regex(child))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if "" in node else body


class _Matcher:
    """Replaces person values standing as whole tokens, in one pass per string.

    A token may not touch a letter, digit or `_` on either side: `jiwoo` is found in
    `/home/jiwoo`, `jiwoo@pc`, `USER=jiwoo`, `(jiwoo)`, `jiwoo-pc` and `jiwoo.corp`,
    not in `jiwoos` or `jiwoo_1`; `10.0.0.5` not in `10.0.0.50`. Where values overlap
    the longest wins (`jiwoo.kim` before `jiwoo`). Case matters (user names are
    case-sensitive), except in the spellings of IPv6 addresses.
    """

    def __init__(self, forms: Mapping[str, str], replace: Mapping[str, str]) -> None:
        self.forms = forms  # spelling -> the value it stands for
        self.replace = replace  # value -> its pseudonym
        self.regex = (re.compile(r"(?<!\w)(?:" + _trie_regex(forms) + r")(?!\w)")
                      if forms else None)

    def sub(self, text: str) -> str:
        if self.regex is None:
            return text
        return self.regex.sub(lambda m: self.replace[self.forms[m.group(0)]], text)

    def found_in(self, text: str) -> bool:
        return self.regex is not None and self.regex.search(text) is not None


# --------------------------------------------------------------------------- the bundle


class BundlePseudonymizer:
    """Rewrites one bundle's records (and manifest strings) as the module doc says."""

    def __init__(self, key: bytes, type_scopes: Mapping[tuple[str, str], TypeScope],
                 keep_clear: frozenset[str] = frozenset({"root"}),
                 known_people: frozenset[str] = frozenset()) -> None:
        """`keep_clear`: names of no person (system accounts); `known_people`: values
        searched for in every bundle even when no record of it holds them (the host's
        own user names)."""
        self.key = key
        self.scopes = type_scopes
        self.keep_clear = keep_clear
        self.known_people = known_people
        self.matcher = _Matcher({}, {})
        self._pseudonyms: dict[str | bytes, str] = {}
        self._gathered: set[str] = set()

    def _pseudonym(self, value: str | bytes) -> str:
        found = self._pseudonyms.get(value)
        if found is None:
            found = self._pseudonyms[value] = pseudonym(self.key, value)
        return found

    def _scope(self, record: Mapping[str, Any]) -> TypeScope:
        scope = (self.scopes.get((record["collector"], record["type"]))
                 or self.scopes.get(("*", record["type"])) or TypeScope())
        if scope.key and not (isinstance(record["key"], str)
                              and is_person(record["key"], self.keep_clear)):
            # A record about a system account (accounts `user` "bin", home "/bin")
            # describes no person: none of its values is one.
            return TypeScope()
        return scope

    def _people(self, record: Mapping[str, Any], scope: TypeScope) -> list[str | bytes]:
        values: list[str | bytes] = []
        if scope.key:
            values.append(record["key"])
        data = record["data"]
        for name in scope.fields:
            value = data.get(name)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    values.append(item)
                elif isinstance(item, int) and not isinstance(item, bool):
                    values.append(str(item))
                elif isinstance(item, dict) and (raw := _b64_bytes(item)) is not None:
                    values.append(raw)
        return [v for v in values if isinstance(v, bytes) or is_person(v, self.keep_clear)]

    def apply(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records rewritten; after this, `rewrite()` treats manifest values alike."""
        for record in records:
            self.gather(record)
        self.prepare()
        return [self.pseudonymize(record) for record in records]

    def gather(self, record: Mapping[str, Any]) -> None:
        """Step 1 for one record: note its person values (keeps only the values).

        A bundle's records stream through `gather` first, then `prepare`, then each
        again through `pseudonymize` (agent/records.py holds them in between)."""
        for value in self._people(record, self._scope(record)):
            if isinstance(value, str):
                self._gathered.add(value)

    def prepare(self) -> None:
        """After every record was gathered: build the matcher for steps 2 and 3."""
        forms: dict[str, str] = {}
        for value in sorted(self._gathered | self.known_people):
            forms.update(_forms(value))
        forms = {f: v for f, v in forms.items()
                 if len(f) <= MAX_TOKEN_CHARS and not _DIGITS_RE.fullmatch(f)
                 and is_person(f, self.keep_clear)}
        self.matcher = _Matcher(forms, {v: self._pseudonym(v) for v in forms.values()})

    def pseudonymize(self, record: dict[str, Any]) -> dict[str, Any]:
        """Steps 2-4 for one record (after `prepare`): the record rewritten."""
        scope = self._scope(record)
        return self._record(record, scope, self._people(record, scope))

    def rewrite(self, value: Any) -> Any:
        """A value outside the records (a manifest's collector error) rewritten alike."""
        return self._rewrite(value)

    def _record(self, record: dict[str, Any], scope: TypeScope,
                people: list[str | bytes]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, value in record["data"].items():
            if name in scope.fields:  # declared field names are kept: they are the schema
                data[name] = self._value(value)
            elif name != RAW:
                data[name] = self._rewrite(value)
        if RAW_SHA256 in data:
            digest = data[RAW_SHA256]
            data[RAW_HMAC] = raw_hmac(self.key, digest) if isinstance(digest, str) else None
            data[RAW_SHA256] = None
        if RAW in record["data"]:
            data[RAW] = self._raw(record["data"], people)
        key = record["key"]
        key = self._value(key) if scope.key else self.matcher.sub(key)
        return {**record, "key": key, "data": data}

    def _value(self, value: Any) -> Any:
        """A named field's value, pseudonymized item by item."""
        if isinstance(value, list):
            return [self._value(item) for item in value]
        if isinstance(value, str):
            if not is_person(value, self.keep_clear):
                return value
            return self._pseudonym(canonical(value))
        if isinstance(value, int) and not isinstance(value, bool):
            return self._pseudonym(str(value))
        if isinstance(value, dict) and (raw := _b64_bytes(value)) is not None:
            return self._pseudonym(raw)
        return value

    def _rewrite(self, value: Any) -> Any:
        """Any other value: person values replaced where they stand as tokens."""
        if isinstance(value, str):
            return self.matcher.sub(value)
        if isinstance(value, list):
            return [self._rewrite(item) for item in value]
        if isinstance(value, dict):
            raw = _b64_bytes(value)
            if raw is not None:  # bytes that are not UTF-8: the whole value, or nothing
                found = self.matcher.found_in(raw.decode("latin-1"))
                return self._pseudonym(raw) if found else value
            return {self.matcher.sub(k): self._rewrite(v) for k, v in value.items()}
        return value

    def _raw(self, data: Mapping[str, Any], people: list[str | bytes]) -> Any:
        raw = data[RAW]
        if not isinstance(raw, str):
            return raw
        if data.get(RAW_TRUNCATED) is True:  # a value cut at the end cannot be found
            return None
        rewritten = self.matcher.sub(raw)
        folded = rewritten.casefold()
        for value in people:
            if isinstance(value, bytes):
                return None
            for form in _forms(value):
                if form.casefold() in folded:
                    return None
        return rewritten
