"""`RecordsWriter`: a records object streamed to a file has the bytes, digest, count and
Merkle root `write_records` gives (the format does not depend on how it was written)."""

from __future__ import annotations

import gzip
import hashlib
import threading
from pathlib import Path
from typing import Any

import pytest

from signing.bundle import BATCH_RECORDS, RecordsWriter, iter_record_lines, write_records
from signing.canonical import canonical_bytes
from signing.errors import CanonicalError
from signing.merkle import leaf_hash, root_from_leaf_hashes


def rows(n: int) -> list[dict[str, Any]]:
    return [{"v": 1, "key": f"k{i:06d}", "data": {"n": i, "text": "é" * (i % 7)}}
            for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, BATCH_RECORDS - 1, BATCH_RECORDS, BATCH_RECORDS + 1,
                               3 * BATCH_RECORDS + 17])
def test_streamed_to_a_file_equals_write_records(tmp_path: Path, n: int) -> None:
    records = rows(n)
    path = tmp_path / "records.jsonl.gz"
    with path.open("xb") as out, RecordsWriter(out.write) as writer:
        for record in records:
            writer.add(record)
        digest = writer.finish()
    data = path.read_bytes()
    in_memory = write_records(records)
    assert data == in_memory.data
    assert digest.sha256 == hashlib.sha256(data).hexdigest() == in_memory.sha256
    assert digest.size == len(data) and digest.count == n
    assert digest.merkle_root == in_memory.merkle_root == root_from_leaf_hashes(
        [leaf_hash(canonical_bytes(r)) for r in records]).hex()
    assert list(iter_record_lines(data, "t")) == [canonical_bytes(r) for r in records]
    assert gzip.decompress(data).count(b"\n") == n


def test_the_sink_gets_bytes_while_records_still_come(tmp_path: Path) -> None:
    """Bytes leave for the sink batch by batch: the object is never held whole."""
    written: list[int] = []
    with RecordsWriter(lambda data: written.append(len(data))) as writer:
        for n, record in enumerate(rows(6 * BATCH_RECORDS)):
            writer.add(record)
            if n == 5 * BATCH_RECORDS:
                # by now at least the first batches have been compressed and handed on
                assert sum(written) > 0
        digest = writer.finish()
    assert sum(written) == digest.size


def test_a_failing_sink_or_record_propagates_and_ends_the_worker() -> None:
    before = threading.active_count()

    def full(_data: bytes) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"), RecordsWriter(full) as writer:
        for record in rows(5 * BATCH_RECORDS):
            writer.add(record)
        writer.finish()
    with pytest.raises(CanonicalError, match="float"), RecordsWriter(list().append) as writer:
        writer.add({"v": 1.5})
        writer.finish()
    assert threading.active_count() == before
