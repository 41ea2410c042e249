"""The rows `gamsa export --prove-lines FILE` proves: (bundle, line) pairs read from what
`gamsa query --csv` or `--json` prints (a CSV with a header, a JSON array of objects,
or JSON lines), or written by hand. `bundle` is a bundle's manifest or records key,
`line` the record's 1-based line in its records object; other columns are ignored.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from signing.errors import UsageError

MAX_ROWS = 100_000  # a proof per row: more is a query that forgot its WHERE


@dataclass(frozen=True)
class ProofRow:
    """One record to prove, and where it was asked for (for messages)."""

    bundle: str
    line: int
    where: str  # "FILE row N"


def _row(raw: Any, where: str) -> ProofRow:
    if not isinstance(raw, dict):
        raise UsageError(f"--prove-lines {where}: not an object with bundle and line")
    bundle, line = raw.get("bundle"), raw.get("line")
    if not isinstance(bundle, str) or not bundle.strip():
        raise UsageError(f"--prove-lines {where}: no bundle (the manifest or records key)")
    if isinstance(line, str) and line.strip().isdigit():
        line = int(line)
    if not isinstance(line, int) or isinstance(line, bool) or line < 1:
        raise UsageError(f"--prove-lines {where}: line {line!r} is not a line number (1, 2, …)")
    return ProofRow(bundle.strip(), line, where)


def read_proof_rows(path: Path) -> list[ProofRow]:
    """The rows of `path`, in file order, duplicates dropped."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--prove-lines {path}: cannot read it ({exc})") from exc
    stripped = text.lstrip()
    raws: list[tuple[Any, str]] = []
    try:
        if stripped.startswith("["):
            document = json.loads(text)
            raws = [(item, f"{path} item {n}") for n, item in enumerate(document, start=1)]
        elif stripped.startswith("{"):
            raws = [(json.loads(line), f"{path} line {n}")
                    for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        else:
            reader = csv.DictReader(io.StringIO(text))
            missing = {"bundle", "line"} - set(reader.fieldnames or ())
            if missing:
                raise UsageError(f"--prove-lines {path}: the CSV header has no "
                                 f"{' and no '.join(sorted(missing))} column",
                                 hint="give what `gamsa query --csv` prints, with the "
                                      "records view's bundle and line columns")
            raws = [(row, f"{path} row {n}") for n, row in enumerate(reader, start=2)]
    except ValueError as exc:
        raise UsageError(f"--prove-lines {path}: not JSON ({exc})") from exc
    if len(raws) > MAX_ROWS:
        raise UsageError(f"--prove-lines {path}: {len(raws)} rows, at most {MAX_ROWS}")
    rows: dict[tuple[str, int], ProofRow] = {}
    for raw, where in raws:
        row = _row(raw, where)
        rows.setdefault((row.bundle, row.line), row)
    if not rows:
        raise UsageError(f"--prove-lines {path}: no rows")
    return list(rows.values())
