"""Printing query and diff rows: an aligned table (on a terminal), CSV or JSON. CSV and
JSON stream batch by batch; the table holds its rows to size the columns."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, TextIO

CELL_WIDTH = 60  # a table cell is cut here (CSV and JSON are never cut)


def plain(value: Any, column_type: str = "") -> Any:
    """A DuckDB value as JSON data: times in RFC 3339 UTC, JSON columns parsed."""
    if value is None:
        return None
    if column_type == "JSON" and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dt.timedelta):
        return str(value)
    return value


def text(value: Any, column_type: str = "") -> str:
    """A value as one cell of text."""
    value = plain(value, column_type)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def write_csv(out: TextIO, columns: Sequence[tuple[str, str]],
              batches: Iterable[Sequence[Sequence[Any]]]) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([name for name, _ in columns])
    count = 0
    for batch in batches:
        writer.writerows([text(v, t) for v, (_, t) in zip(row, columns, strict=True)]
                         for row in batch)
        count += len(batch)
    return count


def write_json(out: TextIO, columns: Sequence[tuple[str, str]],
               batches: Iterable[Sequence[Sequence[Any]]]) -> int:
    """A JSON array of objects, one per row, written as the rows come."""
    names = [name for name, _ in columns]
    count = 0
    out.write("[")
    for batch in batches:
        for row in batch:
            item = {name: plain(v, t) for name, v, (_, t) in zip(names, row, columns,
                                                                 strict=True)}
            out.write(("\n" if count == 0 else ",\n")
                      + json.dumps(item, sort_keys=False, ensure_ascii=False))
            count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def write_table(out: TextIO, columns: Sequence[tuple[str, str]],
                batches: Iterable[Sequence[Sequence[Any]]]) -> int:
    names = [name for name, _ in columns]
    rows = [[_cut(text(v, t)) for v, (_, t) in zip(row, columns, strict=True)]
            for batch in batches for row in batch]
    widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(names)]
    if out.isatty():  # wipe the progress bar DuckDB drew on this line while it ran
        out.write("\r\033[K")
    out.write("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                  + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
    return len(rows)


def _cut(cell: str) -> str:
    cell = cell.replace("\n", "\\n")
    return cell if len(cell) <= CELL_WIDTH else cell[:CELL_WIDTH - 1] + "…"


WRITERS = {"table": write_table, "csv": write_csv, "json": write_json}
