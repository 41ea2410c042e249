"""The bundle format: a gzip'd canonical JSON-lines records object and its manifest.

See docs/FORMAT.md for the bytes. This module writes and reads the two objects;
it knows nothing of collectors or stores. Object keys are relative to the store
prefix:

    v1/host=<host_id>/date=<YYYY-MM-DD>/<seq:010d>-<collection_id>.records.jsonl.gz
    v1/host=<host_id>/date=<YYYY-MM-DD>/<seq:010d>-<collection_id>.manifest.dsse.json
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from signing.canonical import canonical_bytes, canonical_lines, gc_paused
from signing.dsse import make_statement, sign_envelope
from signing.errors import FormatError
from signing.keys import Signer
from signing.merkle import MerkleBuilder

RECORDS_SUFFIX = ".records.jsonl.gz"
MANIFEST_SUFFIX = ".manifest.dsse.json"
TIMESTAMP_SUFFIX = ".manifest.tsr"  # an RFC 3161 response over the manifest (signing.timestamp)
GZIP_LEVEL = 3  # level 6 costs ~25% more sealing time for ~11% smaller objects
BATCH_RECORDS = 4096  # records canonicalized, hashed and compressed together
# Bounds reading a records object: a gzip bomb must not exhaust the verifier's memory.
MAX_LINE_BYTES = 16 * 1024 * 1024

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


def parse_bundle_key(key: str) -> tuple[BundleName, str] | None:
    """(name, "records"|"manifest"|"timestamp") for a bundle object key, else None."""
    match = BUNDLE_KEY.match(key)
    if match is None:
        return None
    name = BundleName(match["host"], match["date"], int(match["seq"]), match["cid"])
    kinds = {RECORDS_SUFFIX: "records", MANIFEST_SUFFIX: "manifest",
             TIMESTAMP_SUFFIX: "timestamp"}
    return name, kinds[match["suffix"]]


@dataclass(frozen=True)
class RecordsObject:
    """A written records object: its stored bytes and what the manifest says of it."""

    data: bytes
    sha256: str
    count: int
    merkle_root: str


def _batches(records: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_records(records: Iterable[Any]) -> RecordsObject:
    """Canonicalize each record, one per line, gzip; compute count and Merkle root.

    The gzip header carries no name and mtime 0, so the same records give the same
    bytes on every host and run. Compression runs on a worker thread (zlib releases
    the GIL) while the next batch is canonicalized and hashed.
    """
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    tree = MerkleBuilder()
    with gc_paused(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="gamsa-gzip") as pool:
        pending: list[Future[bytes]] = []
        for batch in _batches(records, BATCH_RECORDS):
            lines = canonical_lines(batch)
            pending.append(pool.submit(compressor.compress, b"\n".join(lines) + b"\n"))
            tree.add_leaves(lines)
        pending.append(pool.submit(compressor.flush))
        data = b"".join(f.result() for f in pending)
    return RecordsObject(data, hashlib.sha256(data).hexdigest(), tree.size, tree.root().hex())


def iter_record_lines(data: bytes, source: str) -> Iterator[bytes]:
    """Yield each line (without its newline) of a records object, in order.

    Raises FormatError naming `source` for bad gzip, a missing final newline, or a
    line over MAX_LINE_BYTES. An empty object (no records) yields nothing.
    """
    decompressor = zlib.decompressobj(31)
    tail = b""
    view = memoryview(data)
    step = 1 << 20
    try:
        for offset in range(0, len(data), step):
            chunk = decompressor.decompress(view[offset:offset + step].tobytes(),
                                            MAX_LINE_BYTES)
            while True:
                buf = tail + chunk
                lines = buf.split(b"\n")
                tail = lines.pop()
                yield from lines
                if len(tail) > MAX_LINE_BYTES:
                    raise FormatError(f"{source}: a line is longer than {MAX_LINE_BYTES} bytes")
                if not decompressor.unconsumed_tail:
                    break
                chunk = decompressor.decompress(decompressor.unconsumed_tail, MAX_LINE_BYTES)
        if not decompressor.eof or decompressor.unused_data:
            raise FormatError(f"{source}: truncated or trailing data after the gzip stream")
    except zlib.error as exc:
        raise FormatError(f"{source}: not a gzip stream ({exc})") from exc
    if tail:
        raise FormatError(f"{source}: last line has no terminating newline")


def sign_manifest(name: BundleName, records: RecordsObject, predicate: dict[str, Any],
                  signer: Signer) -> bytes:
    """The DSSE envelope over the in-toto statement for this bundle."""
    statement = make_statement(name.records_key, records.sha256, predicate)
    return sign_envelope(canonical_bytes(statement), signer)


def manifest_sha256(manifest: bytes) -> str:
    """The chain link: hex SHA-256 of a manifest object's exact bytes."""
    return hashlib.sha256(manifest).hexdigest()
