"""Bounded reading of store objects (signing/reading.py) and of records
(signing.bundle.iter_record_batches, signing.verify.check_records_object)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zlib
from pathlib import Path

import pytest

from signing import bundle
from signing.bundle import iter_record_batches, write_records
from signing.errors import StoreError
from signing.reading import (
    READ_CHUNK,
    DirectoryReader,
    ObjectRefused,
    copy_capped,
    get_capped,
    read_capped,
)
from signing.verify import MAX_FINDINGS_PER_OBJECT, check_records_object


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_only_regular_files_are_opened(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "v1" / "obj"
    target.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(target)  # with no writer, a blocking open would never return
    elif kind == "symlink":
        (tmp_path / "real").write_bytes(b"x")
        target.symlink_to(tmp_path / "real")
    else:
        target.mkdir()
    reader = DirectoryReader(tmp_path)
    with pytest.raises(ObjectRefused) as caught:
        reader.get("v1/obj")
    assert caught.value.code == "object_not_regular"
    assert "v1/obj" in caught.value.message


def test_zero_device_symlink_is_refused_not_read(tmp_path: Path) -> None:
    (tmp_path / "obj").symlink_to("/dev/zero")
    with pytest.raises(ObjectRefused):
        DirectoryReader(tmp_path).open("obj")


def test_read_capped_stops_past_the_cap(tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(b"a" * 101)
    with pytest.raises(ObjectRefused) as caught:
        get_capped(DirectoryReader(tmp_path), "m", 100)
    assert caught.value.code == "object_too_large"
    assert read_capped(io.BytesIO(b"a" * 100), "m", 100) == b"a" * 100


def test_object_refused_survives_pickling() -> None:
    copy = pickle.loads(pickle.dumps(ObjectRefused("k: too big", "object_too_large")))
    assert (copy.message, copy.code) == ("k: too big", "object_too_large")


def test_line_cap_stops_decompression_early() -> None:
    text = os.urandom(3 << 20).hex().encode()  # 6 MiB that gzip cannot shrink below 3 MiB
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    data = zlib.compress(b"\n".join(lines) + b"\n", 1, wbits=31)
    stream = io.BytesIO(data)
    got = [line for batch in iter_record_batches(stream, "k", max_lines=5) for line in batch]
    assert got == lines[:5]
    assert stream.tell() < len(data) // 2  # the rest was never read


def _records() -> bytes:
    return write_records([{"v": 1, "host": "h", "i": i} for i in range(3)]).data


def test_digest_mismatch_reads_no_further() -> None:
    findings = check_records_object(io.BytesIO(b"\x1f\x8b garbage"), "k", "0" * 64, 3, "", "h")
    assert [f.code for f in findings] == ["digest_mismatch"]


def test_findings_per_object_are_capped_with_a_count() -> None:
    data = zlib.compress(b"not json\n" * 50, 9, wbits=31)
    findings = check_records_object(io.BytesIO(data), "k", hashlib.sha256(data).hexdigest(),
                                    50, "", "h")
    codes = [f.code for f in findings]
    assert codes[:MAX_FINDINGS_PER_OBJECT] == ["not_canonical"] * MAX_FINDINGS_PER_OBJECT
    assert codes[MAX_FINDINGS_PER_OBJECT:] == ["findings_capped", "merkle_root_mismatch"]
    assert findings[MAX_FINDINGS_PER_OBJECT].message.startswith("30 more finding(s)")


def test_more_lines_than_signed_stop_at_count_plus_one() -> None:
    data = _records()
    findings = check_records_object(io.BytesIO(data), "k", hashlib.sha256(data).hexdigest(),
                                    1, "", "h")
    assert [(f.code, f.message) for f in findings] == [
        ("count_mismatch", "more than the 1 records the signed manifest says; reading "
                           "stopped at record 2")]


def test_copy_capped_stops_one_byte_past_the_cap() -> None:
    copied: list[bytes] = []
    assert copy_capped(io.BytesIO(b"a" * (READ_CHUNK * 3)), copied.append, READ_CHUNK + 5)
    assert len(b"".join(copied)) == READ_CHUNK + 6
    copied.clear()
    assert not copy_capped(io.BytesIO(b"a" * 10), copied.append, 10)
    assert b"".join(copied) == b"a" * 10


@pytest.mark.parametrize("count", [0, 1, 3])
def test_records_object_bound_holds_for_incompressible_lines(
        count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound with the longest lines gzip cannot shrink (a smaller line cap
    stands in for 16 MiB): every object that could verify fits under it."""
    monkeypatch.setattr(bundle, "MAX_LINE_BYTES", 256 * 1024)
    lines = b"".join(os.urandom(bundle.MAX_LINE_BYTES).replace(b"\n", b" ") + b"\n"
                     for _ in range(count))
    compressor = zlib.compressobj(bundle.GZIP_LEVEL, zlib.DEFLATED, 31)
    stored = compressor.compress(lines) + compressor.flush()
    assert len(stored) <= bundle.max_records_object_bytes(count)
    assert bundle.max_records_object_bytes(count) < bundle.max_records_object_bytes(count + 1)


class _Network(io.RawIOBase):
    """A body that cannot seek (as an S3 response), counting what was read of it."""

    def __init__(self, size: int) -> None:
        self.left, self.taken = size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = b"\0" * n
        self.left -= n
        self.taken += n
        return n


@pytest.mark.parametrize("seekable", [True, False])
def test_a_records_object_larger_than_its_signed_count_allows_is_not_read_past_it(
        seekable: bool) -> None:
    limit = bundle.max_records_object_bytes(2)
    body = _Network(limit * 4)
    stream = io.BytesIO(b"\0" * (limit + 100)) if seekable else io.BufferedReader(body)
    findings = check_records_object(stream, "k", "0" * 64, 2, "", "h")  # type: ignore[arg-type]
    assert [(f.code, f.key) for f in findings] == [("object_too_large", "k")]
    assert f"larger than {limit} bytes (the most 2 records can take)" in findings[0].message
    if not seekable:
        assert body.taken <= limit + 1 + READ_CHUNK  # a buffered read ahead, no more


def test_a_listing_walks_only_the_folder_its_prefix_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`v1/keys/` lists the keys folder without walking every host's bundles, and
    every prefix lists exactly what a walk of the whole store, filtered, would."""
    files = ["v1/keys/k1.json", "v1/keys/k2.json", "v1/host=a/date=2026-11-25/1.x",
             "v1/host=a/date=2026-11-26/2.x", "v1/host=ab/date=2026-11-25/3.x",
             "v1/host=b/date=2026-11-25/4.x", "v1/top.json", "other/5.x"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "v1" / "host=link").symlink_to(tmp_path / "v1" / "host=a")
    reader = DirectoryReader(tmp_path)
    everything = list(reader.list(""))  # the whole walk, in walk order
    assert sorted(everything) == sorted(files)
    for prefix in ("v1/", "v1/host=", "v1/host=a", "v1/host=a/", "v1/keys/",
                   "v1/host=a/date=2026-11-25/", "v1/../v1/", "missing/", "v1/top.json/",
                   "v1/host=link/"):
        assert list(reader.list(prefix)) == [
            key for key in everything if key.startswith(prefix)], prefix

    walked: list[str] = []
    scandir = os.scandir

    def counting(path: str) -> object:
        walked.append(os.path.relpath(path, tmp_path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    assert list(reader.list("v1/keys/")) == ["v1/keys/k1.json", "v1/keys/k2.json"]
    assert walked == ["v1/keys"]


def test_a_folder_that_cannot_be_listed_is_an_error_naming_it(tmp_path: Path) -> None:
    """os.walk skips what it cannot list; the reader must not (a mirror an auditor can
    only partly read is not a clean, smaller mirror). Root lists anything, so the
    error is made real with a folder that stops being one under the walk: ENOTDIR."""
    (tmp_path / "v1" / "host=a").mkdir(parents=True)
    (tmp_path / "v1" / "host=a" / "one").write_bytes(b"x")
    (tmp_path / "v1" / "first").write_bytes(b"x")
    listing = iter(DirectoryReader(tmp_path).list("v1/"))
    assert next(listing) == "v1/first"  # v1 is listed; its sub-folders come next
    os.rename(tmp_path / "v1" / "host=a", tmp_path / "v1" / "gone")
    (tmp_path / "v1" / "host=a").write_bytes(b"not a folder any more")
    with pytest.raises(StoreError, match="host=a: cannot list"):
        list(listing)
