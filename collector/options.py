"""Collector options: declared once, next to the collector that reads them.

A collector lists its `[collectors.<name>]` settings in its `COLLECTOR` declaration
(`Collector(options=...)`): each `Option` has a name, a kind (how a TOML value is
checked and converted), a default as written in TOML, and one line of doc. From
those declarations alone the agent parses its config (agent/config.py), builds
`ctx.options` for a collection (agent/seal.py), and docs/COLLECTORS.md and
packaging/agent.toml list them (collector/docs.py). Adding an option is one
`Option(...)` in the collector's module.

Every check raises `UsageError` with one line naming the dotted key
(`"collectors.files.watch" must be a boolean, got string`); the config parser puts
the file name in front. TOML booleans are not integers here, although Python's
`bool` is a subclass of `int`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Generic, TypeVar

from signing.errors import UsageError

T = TypeVar("T")


# --- how values are shown in errors ------------------------------------------------


def type_name(value: object) -> str:
    """The TOML name of a parsed value's type."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, dt.datetime):
        return "datetime"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, dt.time):
        return "time"
    return type(value).__name__


def show(value: object, limit: int = 80) -> str:
    """A value quoted on one line (JSON escapes newlines), shortened when long."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 4] + '..."'


def article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def typed(value: Any, key: str, kind: type, name: str) -> Any:
    """`value` when it is of `kind` (a bool is no int), else a UsageError naming `key`."""
    if not (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))):
        raise UsageError(f'"{key}" must be {article(name)}, got {type_name(value)}')
    return value


def dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def check_keys(table: Mapping[str, Any], prefix: str, known: list[str]) -> None:
    """An error naming the first key of `table` not in `known`, with a suggestion."""
    for name in table:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = (f'did you mean "{dotted(prefix, close[0])}"?' if close
                    else "known keys: " + ", ".join(known))
            raise UsageError(f'unknown key "{dotted(prefix, name)}"', hint=hint)


# --- durations and sizes -------------------------------------------------------------

_DURATION_RE = re.compile(r"(\d+)\s*([smhd]?)", re.ASCII)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_HINT = 'an integer of seconds, or a string like "90", "90s", "15m", "6h", "1d"'


def parse_duration(value: str | int, key: str) -> int:
    """Seconds from an int (as is) or "90", "90s", "15m", "6h", "1d"; UsageError naming key."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UsageError(f'"{key}" must not be negative, got {value}', hint=DURATION_HINT)
        return value
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value.strip())
        if match:
            return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        raise UsageError(f'"{key}" must be a duration, got {show(value)}', hint=DURATION_HINT)
    raise UsageError(f'"{key}" must be a duration, got {type_name(value)}',
                     hint=DURATION_HINT)


_SIZE_RE = re.compile(r"(\d+)\s*([KMGT]i?B|B)?", re.ASCII)
_SIZE_UNITS = {
    None: 1, "B": 1,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
}
SIZE_HINT = 'an integer of bytes, or a string like "123", "10KiB", "512MiB", "1GiB", "100MB"'


def parse_size(value: str | int, key: str) -> int:
    """Bytes from an int (as is) or "123", "10KiB", "512MiB", "1GiB", "100MB", "1GB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UsageError(f'"{key}" must not be negative, got {value}', hint=SIZE_HINT)
        return value
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value.strip())
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
        raise UsageError(f'"{key}" must be a size, got {show(value)}', hint=SIZE_HINT)
    raise UsageError(f'"{key}" must be a size, got {type_name(value)}', hint=SIZE_HINT)


def positive_duration(value: Any, key: str) -> int:
    """A duration of at least one second."""
    if not isinstance(value, int | str) or isinstance(value, bool):
        raise UsageError(f'"{key}" must be a duration, got {type_name(value)}',
                         hint=DURATION_HINT)
    seconds = parse_duration(value, key)
    if seconds <= 0:
        raise UsageError(f'"{key}" must be at least 1 second, got {show(value)}')
    return seconds


def positive_size(value: Any, key: str) -> int:
    """A size of at least one byte."""
    if not isinstance(value, int | str) or isinstance(value, bool):
        raise UsageError(f'"{key}" must be a size, got {type_name(value)}', hint=SIZE_HINT)
    nbytes = parse_size(value, key)
    if nbytes <= 0:
        raise UsageError(f'"{key}" must be at least 1 byte, got {show(value)}')
    return nbytes


def size_or_zero(value: Any, key: str) -> int:
    """A size where 0 means "no limit"."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0
    if isinstance(value, str) and value.strip() in ("0", "0B"):
        return 0
    return positive_size(value, key)


_MILLIS_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s)", re.ASCII)
SHORT_SECONDS_HINT = 'seconds (0.5, 2) or a string like "500ms", "2s"'


def short_seconds(value: Any, key: str) -> float:
    """Seconds to the millisecond, 0 to 60, from a number (0.5, 2) or "500ms", "2s"."""
    if isinstance(value, str):
        match = _MILLIS_RE.fullmatch(value.strip())
        if not match:
            raise UsageError(f'"{key}" must be a duration, got {show(value)}',
                             hint=SHORT_SECONDS_HINT)
        millis = float(match.group(1)) * (1 if match.group(2) == "ms" else 1000)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        millis = float(value) * 1000
    else:
        raise UsageError(f'"{key}" must be a duration, got {type_name(value)}',
                         hint=SHORT_SECONDS_HINT)
    if not 0 <= millis <= 60_000:
        raise UsageError(f'"{key}" must be between 0 and 60 s, got {show(value)}',
                         hint=SHORT_SECONDS_HINT)
    return round(millis) / 1000


def toml_value(value: Any) -> str:
    """A value as TOML text (inline: arrays and tables on one line)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


# --- kinds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind(Generic[T]):
    """How a TOML value of an option is checked and converted: `parse(value, key)`
    gives the value collectors read, or raises UsageError naming `key`."""

    name: str  # for docs: "size", "duration", "boolean", ...
    parse: Callable[[Any, str], T]


def _boolean(value: Any, key: str) -> bool:
    result: bool = typed(value, key, bool, "boolean")
    return result


def _string(value: Any, key: str) -> str:
    result: str = typed(value, key, str, "string")
    return result


def positive_int(value: Any, key: str) -> int:
    number: int = typed(value, key, int, "integer")
    if number <= 0:
        raise UsageError(f'"{key}" must be greater than 0, got {number}')
    return number


def absolute_path(value: str, key: str) -> str:
    if not PurePosixPath(value).is_absolute():
        raise UsageError(f'"{key}" must be an absolute path, got {show(value)}')
    return value


def string_list_of(value: Any, key: str, item: Callable[[str, str], object] | None = None,
                   ) -> list[str]:
    """A list of non-empty strings, each also passed to `item(text, key[i])`."""
    typed(value, key, list, "array")
    for index, text in enumerate(value):
        item_key = f"{key}[{index}]"
        typed(text, item_key, str, "string")
        if not text:
            raise UsageError(f'"{item_key}" must not be empty')
        if item is not None:
            item(text, item_key)
    return list(value)


def choice_of(allowed: tuple[str, ...]) -> Callable[[Any, str], str]:
    def parse(value: Any, key: str) -> str:
        text = _string(value, key)
        if text not in allowed:
            options = ", ".join(json.dumps(a) for a in allowed)
            folded = [a for a in allowed if a.casefold() == text.casefold()]
            hint = f"did you mean {json.dumps(folded[0])}?" if folded else ""
            raise UsageError(f'"{key}" must be one of {options}, got {show(text)}', hint=hint)
        return text
    return parse


BOOL: Kind[bool] = Kind("boolean", _boolean)
INT: Kind[int] = Kind("integer > 0", positive_int)
STRING: Kind[str] = Kind("string", _string)
ABSOLUTE_PATH: Kind[str] = Kind("absolute path",
                                lambda value, key: absolute_path(_string(value, key), key))
SIZE: Kind[int] = Kind("size", positive_size)
SIZE_OR_ZERO: Kind[int] = Kind("size (0 = no limit)", size_or_zero)
SHORT_SECONDS: Kind[float] = Kind("seconds, to the millisecond (0-60)", short_seconds)
DURATION: Kind[int] = Kind("duration", positive_duration)
STRING_LIST: Kind[list[str]] = Kind("list of strings", string_list_of)
PATH_GLOB_LIST: Kind[list[str]] = Kind(
    "list of absolute path globs",
    lambda value, key: string_list_of(value, key, absolute_path))


def choice(*allowed: str) -> Kind[str]:
    """One of `allowed` (the error suggests the right case)."""
    return Kind("one of " + ", ".join(json.dumps(a) for a in allowed), choice_of(allowed))


def checked_string_list(check: Callable[[str], str | None], hint: str = "") -> Kind[list[str]]:
    """A list of strings each of which `check` accepts (it returns a reason otherwise)."""
    def item(text: str, key: str) -> None:
        problem = check(text)
        if problem is not None:
            raise UsageError(f'"{key}" {problem}, got {show(text)}', hint=hint)
    return Kind("list of strings", lambda value, key: string_list_of(value, key, item))


@dataclass(frozen=True)
class TableKey:
    """One key of the tables of a `table_list` option. `default` None: absent from
    the parsed table when not given (a required key must be given)."""

    name: str
    kind: Kind[Any]
    doc: str
    required: bool = False
    default: Any = None


def table_list(keys: tuple[TableKey, ...],
               check: Callable[[dict[str, Any], str], None] | None = None,
               ) -> Kind[list[dict[str, Any]]]:
    """A list of tables with the given keys; `check(table, key)` sees each parsed
    table (keys missing in combination, values that exclude each other)."""
    names = [k.name for k in keys]

    def parse(value: Any, key: str) -> list[dict[str, Any]]:
        typed(value, key, list, "array")
        parsed = []
        for index, entry in enumerate(value):
            entry_key = f"{key}[{index}]"
            typed(entry, entry_key, dict, "table")
            check_keys(entry, entry_key, names)
            table: dict[str, Any] = {}
            for table_key in keys:
                sub_key = f"{entry_key}.{table_key.name}"
                if table_key.name in entry:
                    table[table_key.name] = table_key.kind.parse(entry[table_key.name], sub_key)
                elif table_key.required:
                    raise UsageError(f'"{sub_key}" is missing')
                elif table_key.default is not None:
                    table[table_key.name] = table_key.default
            if check is not None:
                check(table, entry_key)
            parsed.append(table)
        return parsed

    return Kind("list of tables", parse)


# --- options -------------------------------------------------------------------------


@dataclass(frozen=True)
class Option(Generic[T]):
    """One `[collectors.<collector>]` setting: `default` as written in TOML (e.g.
    "1GiB"; packaging/agent.toml shows it so), `doc` one line for the docs.
    `table_keys`: for a list of tables, its keys (docs only; `kind` checks them)."""

    collector: str
    name: str
    kind: Kind[T]
    default: Any
    doc: str
    table_keys: tuple[TableKey, ...] = field(default=())

    @property
    def key(self) -> str:
        """The dotted config key, e.g. `collectors.files.paths`."""
        return f"collectors.{self.collector}.{self.name}"

    def parse(self, value: Any) -> T:
        """The value collectors read, from a TOML value; UsageError naming the key."""
        return self.kind.parse(value, self.key)

    @property
    def default_value(self) -> T:
        return self.kind.parse(self.default, self.key)


def option_value(options: Mapping[str, Mapping[str, Any]], option: Option[T]) -> T:
    """The value of `option` in per-collector `options` (as in config and
    `ctx.options`), else its declared default."""
    values = options.get(option.collector, {})
    if option.name in values:
        result: T = values[option.name]
        return result
    return option.default_value


def parse_options(collector: str, options: Mapping[str, Option[Any]],
                  table: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of `collector` from its `[collectors.<collector>]` table (defaults
    for absent keys); unknown keys and bad values raise UsageError naming the key."""
    check_keys(table, f"collectors.{collector}", list(options))
    return {name: option.parse(table[name]) if name in table else option.default_value
            for name, option in options.items()}
