"""A manifest predicate built the one way tests and bench/bench_verify.py build it.

Light on purpose (signing/ only, no pytest): bench/bench_verify.py imports it, and its
forkserver workers import the bench's module again, so a heavier fixture module would
be paid for in every worker it times."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from signing.bundle import BundleName, RecordsObject
from signing.predicate import ManifestPredicate, parse_predicate


def manifest_predicate(name: BundleName, records: RecordsObject, started_at: str,
                       finished_at: str, chain: dict[str, Any], *,
                       collectors: Sequence[dict[str, Any]] = (),
                       count: int | None = None) -> ManifestPredicate:
    """The predicate of bundle `name` over `records`, read by the model's own parser (so
    a field the format drops or renames fails here, not as a puzzling finding later).
    `count` overrides the signed record count, to make a bundle that lies about it."""
    return parse_predicate({
        "host": {"id": name.host_id},
        "collection": {"id": name.collection_id, "trigger": "schedule",
                       "started_at": started_at, "finished_at": finished_at},
        "collectors": list(collectors),
        "records": {"count": records.count if count is None else count,
                    "merkle_root": records.merkle_root},
        "chain": chain})
