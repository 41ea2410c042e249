"""The bundle format and the store verifier, in-process over a real directory."""

from __future__ import annotations

import base64
import gc
import gzip
import hashlib
import json
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from signing import verify
from signing.bundle import (
    BundleName,
    iter_record_lines,
    manifest_sha256,
    parse_bundle_key,
    sign_manifest,
    write_records,
)
from signing.canonical import canonical_bytes
from signing.dsse import sign_envelope
from signing.errors import FormatError, StoreError
from signing.keys import FileSigner, PublicKey, generate_private_key
from signing.merkle import leaf_hash, root_from_leaf_hashes
from signing.verify import DirectoryReader, check_records, verify_store
from tests.signing.bundle_fixtures import manifest_predicate


def records(n: int, host: str = "h1") -> list[dict[str, Any]]:
    return [{"v": 1, "collector": "t", "type": "row", "key": str(i), "host": host,
             "observed_at": "2026-11-25T00:00:00.000000Z", "data": {"i": i, "s": "é\n"}}
            for i in range(n)]


def test_records_object_round_trip_is_deterministic() -> None:
    rows = records(2500)
    written = write_records(rows)
    assert written == write_records(rows)  # same bytes every time: mtime 0, no name
    raw = gzip.decompress(written.data)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 2500
    lines = list(iter_record_lines(written.data, "x"))
    assert [json.loads(line) for line in lines] == rows
    assert written.count == 2500
    assert written.merkle_root == root_from_leaf_hashes([leaf_hash(x) for x in lines]).hex()
    assert written.sha256 == hashlib.sha256(written.data).hexdigest()


def test_empty_records_object() -> None:
    written = write_records([])
    assert written.count == 0
    assert written.merkle_root == hashlib.sha256(b"").hexdigest()
    assert list(iter_record_lines(written.data, "x")) == []


@pytest.mark.parametrize("data", [b"", b"not gzip", gzip.compress(b'{"a":1}'),
                                  gzip.compress(b"x\n") + b"trailing"])
def test_bad_records_objects_are_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        list(iter_record_lines(data, "obj"))


def test_gzip_bomb_line_is_bounded() -> None:
    bomb = gzip.compress(b"a" * (20 * 1024 * 1024))
    with pytest.raises(FormatError, match="longer than"):
        list(iter_record_lines(bomb, "bomb"))


def test_bundle_keys_parse() -> None:
    name = BundleName("web-01", "2026-11-25", 7, "20261125T000000Z-abcd0123")
    assert name.records_key == ("v1/host=web-01/date=2026-11-25/"
                                "0000000007-20261125T000000Z-abcd0123.records.jsonl.gz")
    assert parse_bundle_key(name.records_key) == (name, "records")
    assert parse_bundle_key(name.manifest_key) == (name, "manifest")
    for bad in ("v1/keys/x.json", "v1/host=a/b/date=2026-11-25/0000000001-x.records.jsonl.gz",
                "v1/host=../date=2026-11-25/0000000001-x.records.jsonl.gz"):
        assert parse_bundle_key(bad) is None


def write_chain(root: Path, signer: FileSigner, count: int, host: str = "h1",
                chain_id: str = "c1", start: int = 1) -> list[BundleName]:
    prev: str | None = None
    names = []
    for seq in range(start, start + count):
        name = BundleName(host, "2026-11-25", seq, f"c{seq:04d}")
        obj = write_records(records(3, host))
        chain: dict[str, Any] = {"id": chain_id, "seq": seq, "prev": prev}
        predicate = manifest_predicate(name, obj, f"2026-11-25T00:00:{seq:02d}.000000Z",
                                       f"2026-11-25T00:00:{seq:02d}.500000Z", chain)
        manifest = sign_manifest(name, obj, predicate, signer)
        for key, data in ((name.records_key, obj.data), (name.manifest_key, manifest)):
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(data)
        prev = manifest_sha256(manifest)
        names.append(name)
    return names


def trusted(signer: FileSigner) -> dict[str, PublicKey]:
    return {signer.key_id: signer.public_key()}


def test_directory_store_verifies_and_reports_findings(tmp_path: Path) -> None:
    signer = FileSigner.from_key(generate_private_key())
    names = write_chain(tmp_path, signer, 4)
    result = verify_store(DirectoryReader(tmp_path), trusted(signer))
    assert result.ok and len(result.bundles) == 4 and result.records == 12
    # A fork: a second, differently signed bundle at seq 3.
    fork = write_chain(tmp_path / "fork", signer, 1, start=3)[0]
    other = BundleName("h1", "2026-11-25", 3, "c9999")
    for suffix in (".records.jsonl.gz", ".manifest.dsse.json"):
        data = (tmp_path / "fork" / (fork.stem + suffix)).read_bytes()
        (tmp_path / (other.stem + suffix)).write_bytes(data)
    result = verify_store(DirectoryReader(tmp_path), trusted(signer), host="h1")
    codes = {(f.code, f.key) for f in result.findings if f.severity == "error"}
    assert ("chain_fork", names[2].manifest_key) in codes
    assert ("key_mismatch", other.manifest_key) in codes  # its signed collection id differs


def test_records_line_tamper_is_reported_per_line(tmp_path: Path) -> None:
    signer = FileSigner.from_key(generate_private_key())
    name = write_chain(tmp_path, signer, 1)[0]
    path = tmp_path / name.records_key
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    lines[1] = lines[1].replace(b'"i":1', b'"i": 1')
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    result = verify_store(DirectoryReader(tmp_path), trusted(signer))
    # Not the signed bytes: one finding, and the object is not read further.
    bad = [(f.code, f.key) for f in result.findings if f.severity == "error"]
    assert bad == [("digest_mismatch", name.records_key)]
    # The per-line checks, on the same bytes, name the line.
    count, _root, findings = check_records(path.read_bytes(), name.records_key, "h1")
    assert count == 3 and [f.code for f in findings] == ["not_canonical"]
    assert findings[0].message.startswith("line 2:")


def test_time_backwards_and_broken_prev(tmp_path: Path) -> None:
    signer = FileSigner.from_key(generate_private_key())
    write_chain(tmp_path, signer, 2)
    # Rewrite seq 2 with an earlier time and a wrong prev, validly signed.
    name = BundleName("h1", "2026-11-25", 2, "c0002")
    obj = write_records(records(3))
    predicate = manifest_predicate(name, obj, "2026-11-25T00:00:00.000000Z",
                                   "2026-11-25T00:00:00.100000Z",
                                   {"id": "c1", "seq": 2, "prev": "00" * 32})
    (tmp_path / name.manifest_key).write_bytes(sign_manifest(name, obj, predicate, signer))
    (tmp_path / name.records_key).write_bytes(obj.data)
    result = verify_store(DirectoryReader(tmp_path), trusted(signer))
    codes = {f.code for f in result.findings if f.severity == "error"}
    assert codes == {"chain_prev_mismatch", "time_backwards"}


def test_records_without_manifest_is_a_warning(tmp_path: Path) -> None:
    signer = FileSigner.from_key(generate_private_key())
    names = write_chain(tmp_path, signer, 2)
    (tmp_path / names[1].manifest_key).unlink()
    result = verify_store(DirectoryReader(tmp_path), trusted(signer))
    assert result.ok
    assert [f.code for f in result.findings if f.severity == "warning"] == ["manifest_missing"]


class CountingReader:
    """A directory store that records how many `get`s run at the same moment."""

    def __init__(self, root: Path, fail_on: str | None = None) -> None:
        self.directory = DirectoryReader(root)
        self.fail_on = fail_on
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def list(self, prefix: str) -> Iterator[str]:
        return self.directory.list(prefix)

    def get(self, key: str) -> bytes:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.01)  # a network round trip, so that workers overlap
            if key == self.fail_on:
                raise StoreError(f"store: cannot read {key}")
            return self.directory.get(key)
        finally:
            with self.lock:
                self.now -= 1


def test_parallel_verify_finds_exactly_what_one_worker_finds(tmp_path: Path) -> None:
    signer = FileSigner.from_key(generate_private_key())
    names = write_chain(tmp_path, signer, 24)
    # Tamper in several places: a records byte, a deleted bundle, a records-only bundle.
    path = tmp_path / names[5].records_key
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    for suffix in (".records.jsonl.gz", ".manifest.dsse.json"):
        (tmp_path / (names[11].stem + suffix)).unlink()
    (tmp_path / names[17].manifest_key).unlink()

    serial = verify_store(DirectoryReader(tmp_path), trusted(signer))
    reader = CountingReader(tmp_path)
    seen: list[tuple[int, int]] = []
    parallel = verify_store(reader, trusted(signer), workers=6,
                            progress=lambda done, total: seen.append((done, total)))
    assert not serial.ok and serial.findings
    assert parallel.as_dict() == serial.as_dict()
    assert [f.code for f in parallel.findings] == [f.code for f in serial.findings]
    assert seen == [(n, 23) for n in range(1, 24)]  # in order, once per bundle
    assert 2 <= reader.most <= 6


def test_parallel_verify_passes_a_store_error_on(tmp_path: Path) -> None:
    signer = FileSigner.from_key(generate_private_key())
    names = write_chain(tmp_path, signer, 12)
    reader = CountingReader(tmp_path, fail_on=names[7].records_key)
    with pytest.raises(StoreError, match=names[7].records_key):
        verify_store(reader, trusted(signer), workers=4)
    assert reader.now == 0  # nothing left running


def test_verify_pauses_the_gc_yet_frees_cycles_and_restores_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cyclic GC is off during a verification (a fleet's summaries would be rescanned
    by every full collection), but a young collection every YOUNG_GC_EVERY outcomes
    still frees cycles a check leaves, and the GC is back as it was, even on an error."""
    signer = FileSigner.from_key(generate_private_key())
    write_chain(tmp_path, signer, 12)
    monkeypatch.setattr(verify, "YOUNG_GC_EVERY", 4)

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    alive: list[weakref.ref[Cycle]] = []
    seen_enabled: list[bool] = []

    def leaky(reader: Any, trust: Any, tasks: Any) -> Iterator[Any]:
        for outcome in verify.in_process(reader, trust, tasks):
            seen_enabled.append(gc.isenabled())
            alive.append(weakref.ref(Cycle()))  # garbage only a collection frees
            yield outcome

    assert gc.isenabled()
    result = verify_store(DirectoryReader(tmp_path), trusted(signer), mapper=leaky)
    assert result.ok and len(result.bundles) == 12
    assert seen_enabled == [False] * 12
    assert gc.isenabled()
    assert sum(ref() is not None for ref in alive) < 4  # without the young collections: 12

    def failing(reader: Any, trust: Any, tasks: Any) -> Iterator[Any]:
        raise StoreError("the store went away")
        yield

    with pytest.raises(StoreError):
        verify_store(DirectoryReader(tmp_path), trusted(signer), mapper=failing)
    assert gc.isenabled()
    gc.disable()
    try:
        verify_store(DirectoryReader(tmp_path), trusted(signer))
        assert not gc.isenabled()  # a caller's own pause is left alone
    finally:
        gc.enable()


def test_nothing_to_verify_is_an_error_finding(tmp_path: Path) -> None:
    signer = FileSigner.from_key(generate_private_key())
    empty = verify_store(DirectoryReader(tmp_path), trusted(signer))
    assert not empty.ok
    assert [(f.code, f.key, f.severity) for f in empty.findings] == [
        ("no_bundles", "v1/host=", "error")]
    write_chain(tmp_path, signer, 2)
    assert verify_store(DirectoryReader(tmp_path), trusted(signer)).ok
    other = verify_store(DirectoryReader(tmp_path), trusted(signer), host="elsewhere")
    assert [f.code for f in other.findings] == ["no_bundles"]
    assert "host elsewhere" in other.findings[0].message


def test_the_keys_folder_is_listed_once_per_verification(tmp_path: Path) -> None:
    """Trust, rotation and revocation checks all read v1/keys/: one listing serves them."""
    signer = FileSigner.from_key(generate_private_key())
    write_chain(tmp_path, signer, 3)
    listed: list[str] = []

    class Listing(DirectoryReader):
        def list(self, prefix: str) -> Iterator[str]:
            listed.append(prefix)
            return super().list(prefix)

    org = FileSigner.from_key(generate_private_key())
    result = verify_store(Listing(tmp_path), trusted(signer),
                          org_keys=trusted(org))
    assert result.bundles
    assert listed.count("v1/keys/") == 1, listed


def resign(root: Path, name: BundleName, signer: FileSigner, change: Any) -> None:
    """Sign bundle `name`'s statement again after `change(predicate JSON)`."""
    manifest = root / name.manifest_key
    statement = json.loads(base64.b64decode(json.loads(manifest.read_bytes())["payload"]))
    change(statement["predicate"])
    manifest.write_bytes(sign_envelope(canonical_bytes(statement), signer))


def test_a_predicate_of_the_wrong_shape_is_manifest_invalid_naming_the_field(
        tmp_path: Path) -> None:
    signer = FileSigner.from_key(generate_private_key())
    names = write_chain(tmp_path, signer, 2)
    resign(tmp_path, names[1], signer, lambda p: p["chain"].update(seq="2"))
    result = verify_store(DirectoryReader(tmp_path), trusted(signer))
    assert [(f.code, f.key, f.message) for f in result.findings if f.severity == "error"] == [
        ("manifest_invalid", names[1].manifest_key, "predicate.chain.seq is not an integer")]


def test_unknown_predicate_fields_of_a_newer_writer_still_verify(tmp_path: Path) -> None:
    signer = FileSigner.from_key(generate_private_key())
    names = write_chain(tmp_path, signer, 1)
    resign(tmp_path, names[0], signer, lambda p: p.update(attestation={"tpm": "quote"}))
    result = verify_store(DirectoryReader(tmp_path), trusted(signer))
    assert result.ok and len(result.bundles) == 1
