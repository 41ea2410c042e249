"""A collection's records, streamed from the collectors into the records object.

Each record goes, as its collector yields it, from `Record` to its JSON object to
the `RecordsWriter` (canonical line, Merkle leaf, gzip) whose bytes go straight to
the bundle's temp dir in the spool. What stays in memory is a batch of records, the
Merkle tree's O(log n) stack and per-collector counts and gaps, so a collection of
a million records costs no more memory than one of thousands.

With `[privacy] pseudonymize`, a record cannot be rewritten before every person value
of the bundle is known (a name seen in the last record is replaced in the first:
collector/privacy.py), so the records pass twice: first each is gathered by the
pseudonymizer and held as a canonical line, gzip'd in memory (about the size of the
sealed records object; never written to disk before it is pseudonymized), then
each is pseudonymized and written.
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from collector.privacy import BundlePseudonymizer
from collector.record import Record
from collector.registry import CollectContext, Collector, CollectorResult, stream_collector
from signing.bundle import BATCH_RECORDS, RecordsDigest, RecordsWriter
from signing.canonical import canonical_lines, gc_paused

HELD_GZIP_LEVEL = 1  # held only until the second pass: speed over size

try:  # msgspec parses a line ~5x faster than json (both give plain dicts and lists)
    from msgspec.json import Decoder

    _parse: Callable[[bytes], Any] = Decoder().decode
except ImportError:  # pragma: no cover - msgspec is a dependency, but optional to signing/
    _parse = json.loads


Emit = Callable[[Record], object]
Run = Callable[[Collector, Emit], CollectorResult]


def seal_records(collectors: Iterable[Collector], ctx: CollectContext, host_id: str,
                 sink: Callable[[bytes], object],
                 rewriter: BundlePseudonymizer | None = None,
                 run: Run | None = None,
                 ) -> tuple[list[CollectorResult], RecordsDigest]:
    """Run `collectors` in order, writing their records object to `sink`.

    Returns each collector's result (counts, status, gaps; no records) and the
    object's digest, count and Merkle root. `rewriter`: pseudonymize first. `run`:
    how one collector runs (the agent's: under its timeout); default: as it is.
    """
    def run_plain(collector: Collector, emit: Emit) -> CollectorResult:
        return stream_collector(collector, ctx, emit)

    run_one = run or run_plain
    with RecordsWriter(sink) as writer:
        if rewriter is None:
            def write(record: Record) -> None:
                writer.add(record.to_json(host_id))
            results = [run_one(c, write) for c in collectors]
        else:
            held = HeldRecords()

            def gather(record: Record) -> None:
                value = record.to_json(host_id)
                rewriter.gather(value)
                held.add(value)
            results = [run_one(c, gather) for c in collectors]
            rewriter.prepare()
            for value in held.replay():
                writer.add(rewriter.pseudonymize(value))
        return results, writer.finish()


class HeldRecords:
    """Records held between the two passes: canonical lines, gzip'd in memory."""

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(HELD_GZIP_LEVEL)
        self._chunks: list[bytes] = []
        self._batch: list[Any] = []

    def add(self, value: Any) -> None:
        self._batch.append(value)
        if len(self._batch) >= BATCH_RECORDS:
            self._flush()

    def _flush(self) -> None:
        with gc_paused():
            lines = canonical_lines(self._batch)
        self._batch = []
        self._chunks.append(self._compressor.compress(b"\n".join(lines) + b"\n"))

    def replay(self) -> Iterator[Any]:
        """Each record, in order, as a fresh JSON object (the held bytes are freed)."""
        if self._batch:
            self._flush()
        self._chunks.append(self._compressor.flush())
        chunks, self._chunks = deque(self._chunks), []
        decompressor = zlib.decompressobj()
        tail = b""
        while chunks:
            lines = (tail + decompressor.decompress(chunks.popleft())).split(b"\n")
            tail = lines.pop()
            for line in lines:
                yield _parse(line)
        if tail or not decompressor.eof:
            raise RuntimeError("held records ended mid-line (this is a bug)")
