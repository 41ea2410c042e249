"""The bundle format: a gzip'd canonical JSON-lines records object and its manifest.

See docs/FORMAT.md for the bytes. This module writes and reads the two objects;
it knows nothing of collectors or stores. Object keys are relative to the store
prefix:

    v1/host=<host_id>/date=<YYYY-MM-DD>/<seq:010d>-<collection_id>.records.jsonl.gz
    v1/host=<host_id>/date=<YYYY-MM-DD>/<seq:010d>-<collection_id>.manifest.dsse.json
"""

from __future__ import annotations

import hashlib
import io
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

from signing.canonical import canonical_bytes, canonical_lines, gc_paused
from signing.dsse import make_statement, sign_envelope
from signing.errors import FormatError
from signing.keys import Signer
from signing.merkle import MerkleBuilder
from signing.predicate import ManifestPredicate
from signing.reading import READ_CHUNK

RECORDS_SUFFIX = ".records.jsonl.gz"
MANIFEST_SUFFIX = ".manifest.dsse.json"
TIMESTAMP_SUFFIX = ".manifest.tsr"  # an RFC 3161 response over the manifest (signing.timestamp)
GZIP_LEVEL = 3  # level 6 costs ~25% more sealing time for ~11% smaller objects
BATCH_RECORDS = 4096  # records canonicalized, hashed and compressed together
# Bounds reading a records object: a gzip bomb must not exhaust the verifier's memory.
MAX_LINE_BYTES = 16 * 1024 * 1024
DECOMPRESS_CHUNK = 1 << 20  # decompressed bytes produced at a time


def max_records_object_bytes(count: int) -> int:
    """The most bytes a records object of `count` records can take and still verify:
    each line at most MAX_LINE_BYTES plus its newline, one gzip member (more lines,
    a longer line or trailing data fail §4 step 6), compressed no worse than zlib's
    conservative deflateBound, plus the gzip header and trailer. What a store holds
    past this is not read (a reader downloading an object to check it stops here)."""
    raw = max(count, 0) * (MAX_LINE_BYTES + 1)
    return raw + ((raw + 7) >> 3) + ((raw + 63) >> 6) + 5 + 18 + 1024


# A host id starts with a letter or digit, so "." and ".." can never be one.
HOST_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
BUNDLE_KEY = re.compile(
    r"^(?P<prefix>v1/host=(?P<host>" + HOST_ID + r")/date=(?P<date>\d{4}-\d{2}-\d{2})/"
    r"(?P<seq>\d{10})-(?P<cid>[A-Za-z0-9_-]{1,64}))"
    r"(?P<suffix>\.records\.jsonl\.gz|\.manifest\.dsse\.json|\.manifest\.tsr)$"
)


@dataclass(frozen=True)
class BundleName:
    """Where a bundle's two objects live, parsed from or made into an object key."""

    host_id: str
    date: str
    seq: int
    collection_id: str

    @property
    def stem(self) -> str:
        return f"v1/host={self.host_id}/date={self.date}/{self.seq:010d}-{self.collection_id}"

    @property
    def records_key(self) -> str:
        return self.stem + RECORDS_SUFFIX

    @property
    def manifest_key(self) -> str:
        return self.stem + MANIFEST_SUFFIX

    @property
    def timestamp_key(self) -> str:
        return self.stem + TIMESTAMP_SUFFIX


_KIND_BY_SUFFIX = {RECORDS_SUFFIX: "records", MANIFEST_SUFFIX: "manifest",
                   TIMESTAMP_SUFFIX: "timestamp"}


def parse_bundle_key(key: str) -> tuple[BundleName, str] | None:
    """(name, "records"|"manifest"|"timestamp") for a bundle object key, else None."""
    match = BUNDLE_KEY.match(key)
    if match is None:
        return None
    host, date, seq, cid, suffix = match.group("host", "date", "seq", "cid", "suffix")
    return BundleName(host, date, int(seq), cid), _KIND_BY_SUFFIX[suffix]


@dataclass(frozen=True)
class RecordsObject:
    """A written records object: its stored bytes and what the manifest says of it."""

    data: bytes
    sha256: str
    count: int
    merkle_root: str


@dataclass(frozen=True)
class RecordsDigest:
    """What the manifest says of a records object streamed to a sink (bytes not kept)."""

    sha256: str
    count: int
    merkle_root: str
    size: int  # bytes written


class RecordsWriter:
    """Streams records into a records object: canonical lines, gzip, Merkle root.

    `add` takes one record at a time; every BATCH_RECORDS records are canonicalized
    and their leaves hashed, and the batch is compressed on a worker thread (zlib
    releases the GIL) which hands the bytes, in order, to `sink` (a file's write).
    What stays in memory is one batch, at most two batches being compressed, and the
    Merkle tree's O(log n) stack: never the records or the object. The bytes are
    those `write_records` gives for the same records. Use as a context manager, so
    the worker thread ends whatever happens; `finish()` returns the digest.
    """

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self._sink = sink
        self._compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._tree = MerkleBuilder()
        self._batch: list[Any] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gamsa-gzip")
        self._pending: deque[Future[None]] = deque()

    def __enter__(self) -> RecordsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, record: Any) -> None:
        """Append one record (a JSON value of our domain)."""
        self._batch.append(record)
        if len(self._batch) >= BATCH_RECORDS:
            self._flush()

    def finish(self) -> RecordsDigest:
        """Write what is left and the gzip trailer; the object's digest, count and root."""
        if self._batch:
            self._flush()
        self._submit(self._compressor.flush, None)
        while self._pending:
            self._pending.popleft().result()
        self._pool.shutdown(wait=True)
        return RecordsDigest(self._sha256.hexdigest(), self._tree.size,
                             self._tree.root().hex(), self._size)

    def _flush(self) -> None:
        with gc_paused():
            lines = canonical_lines(self._batch)
        self._batch = []
        self._submit(self._compressor.compress, b"\n".join(lines) + b"\n")
        self._tree.add_leaves(lines)

    def _submit(self, compress: Callable[..., bytes], blob: bytes | None) -> None:
        while len(self._pending) >= 2:  # bounded: the worker must keep up
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write, compress, blob))

    def _write(self, compress: Callable[..., bytes], blob: bytes | None) -> None:
        data = compress() if blob is None else compress(blob)
        if data:
            self._sha256.update(data)
            self._size += len(data)
            self._sink(data)


def write_records(records: Iterable[Any]) -> RecordsObject:
    """Canonicalize each record, one per line, gzip; compute count and Merkle root.

    The gzip header carries no name and mtime 0, so the same records give the same
    bytes on every host and run. The object is built in memory; to stream a large
    one to a file, use `RecordsWriter`.
    """
    chunks: list[bytes] = []
    with RecordsWriter(chunks.append) as writer:
        for record in records:
            writer.add(record)
        digest = writer.finish()
    data = b"".join(chunks)
    return RecordsObject(data, digest.sha256, digest.count, digest.merkle_root)


def iter_record_batches(stream: BinaryIO, source: str,
                        max_lines: int | None = None) -> Iterator[list[bytes]]:
    """Yield the lines (without newlines) of a records object read from `stream`, in
    order, a decompressed chunk's worth at a time.

    Memory stays bounded whatever the object holds: the stream is read a chunk at a
    time, each chunk decompressed to at most DECOMPRESS_CHUNK bytes at a time. With
    `max_lines`, reading stops once that many lines are yielded (a count cap: the
    caller passes the signed count + 1 to see "more than signed" without reading
    the rest). Raises FormatError naming `source` for bad gzip, a missing final
    newline, or a line over MAX_LINE_BYTES. An empty object yields nothing.
    """
    decompressor = zlib.decompressobj(31)
    tail = b""
    left = -1 if max_lines is None else max_lines
    try:
        while left != 0:
            raw = stream.read(READ_CHUNK)
            if not raw:
                break
            if decompressor.eof:
                raise FormatError(f"{source}: trailing data after the gzip stream")
            chunk = decompressor.decompress(raw, DECOMPRESS_CHUNK)
            while True:
                if chunk:
                    lines = chunk.split(b"\n")
                    if tail:
                        lines[0] = tail + lines[0]
                    tail = lines.pop()
                    if lines:
                        if 0 < left <= len(lines):
                            yield lines[:left]
                            return
                        left -= len(lines)
                        yield lines
                    if len(tail) > MAX_LINE_BYTES:
                        raise FormatError(f"{source}: a line is longer than "
                                          f"{MAX_LINE_BYTES} bytes")
                if not decompressor.unconsumed_tail:
                    break
                chunk = decompressor.decompress(decompressor.unconsumed_tail,
                                                DECOMPRESS_CHUNK)
        if left == 0:
            return
        if not decompressor.eof or decompressor.unused_data:
            raise FormatError(f"{source}: truncated or trailing data after the gzip stream")
    except zlib.error as exc:
        raise FormatError(f"{source}: not a gzip stream ({exc})") from exc
    if tail:
        raise FormatError(f"{source}: last line has no terminating newline")


def iter_record_lines(data: bytes, source: str) -> Iterator[bytes]:
    """Yield each line (without its newline) of a records object's bytes, in order.

    Raises FormatError as `iter_record_batches` does.
    """
    for lines in iter_record_batches(io.BytesIO(data), source):
        yield from lines


def sign_manifest(name: BundleName, records: RecordsObject | RecordsDigest,
                  predicate: ManifestPredicate, signer: Signer) -> bytes:
    """The DSSE envelope over the in-toto statement for this bundle."""
    statement = make_statement(name.records_key, records.sha256, predicate.to_json())
    return sign_envelope(canonical_bytes(statement), signer)


def manifest_sha256(manifest: bytes) -> str:
    """The chain link: hex SHA-256 of a manifest object's exact bytes."""
    return hashlib.sha256(manifest).hexdigest()
