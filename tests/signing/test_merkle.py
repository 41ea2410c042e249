"""Tests for signing.merkle: RFC 6962/9162 vectors, a recursive reference, tampering.

The reference below is written straight from the RFC 9162 definitions (MTH §2.1.1,
PATH §2.1.3.1, PROOF/SUBPROOF §2.1.4.1), recursing over list slices and hashing with
hashlib directly, so it shares no code with the module under test. Every published
vector is checked against it as well as against the fast functions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from signing import merkle
from signing.errors import FINDINGS, GamsaError, ProofError
from signing.merkle import (
    EMPTY_ROOT,
    MerkleBuilder,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

VECTORS_PATH = Path(__file__).resolve().parent.parent / "assets" / "merkle" / "rfc6962_vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

LEAVES: list[bytes] = [bytes.fromhex(x) for x in VECTORS["leaves"]]
ROOTS: list[bytes] = [bytes.fromhex(x) for x in VECTORS["roots"]]  # index = tree size
NODE_HASHES: list[list[bytes]] = [[bytes.fromhex(x) for x in level]
                                  for level in VECTORS["node_hashes"]]
LEAF_HASHES: list[bytes] = [leaf_hash(d) for d in LEAVES]

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

# --- reference implementation, straight from RFC 9162 ------------------------


def ref_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over the inputs D (not their hashes)."""
    n = len(d)
    if n == 0:
        return ref_hash(b"")
    if n == 1:
        return ref_hash(b"\x00" + d[0])
    k = ref_k(n)
    return ref_hash(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n])."""
    n = len(d)
    if n == 1:
        return []
    k = ref_k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = ref_k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true)."""
    return ref_subproof(m, d, True)


def ref_directions(m: int, n: int) -> list[str]:
    """Which side each PATH(m, D[n]) element sits on, leaf first ('L' or 'R').

    An inclusion proof verifies for (m', n') exactly when its directions match
    those of (m, n): the verifier computes the same root from the same hashes.
    """
    if n == 1:
        return []
    k = ref_k(n)
    if m < k:
        return [*ref_directions(m, k), "R"]
    return [*ref_directions(m - k, n - k), "L"]


# --- helpers -------------------------------------------------------------------


def flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 0x08]) + h[1:]


def rejects_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes],
                      root: bytes) -> bool:
    try:
        verify_inclusion(index, size, leaf, proof, root)
    except ProofError:
        return True
    return False


def rejects_consistency(m: int, n: int, root1: bytes, root2: bytes,
                        proof: Sequence[bytes]) -> bool:
    try:
        verify_consistency(m, n, root1, root2, proof)
    except ProofError:
        return True
    return False


def inclusion_content_probes(index: int, size: int, leaf: bytes, proof: list[bytes],
                             root: bytes) -> list[tuple[str, tuple[Any, ...]]]:
    """Probes that change the leaf, root or proof: every one must be rejected."""
    probes: list[tuple[str, tuple[Any, ...]]] = [
        ("wrong leaf", (index, size, flip(leaf), proof, root)),
        ("short leaf", (index, size, b"WrongLeaf", proof, root)),
        ("empty root", (index, size, leaf, proof, EMPTY_ROOT)),
        ("random root", (index, size, leaf, proof, SOME_HASH)),
        ("flipped root", (index, size, leaf, proof, flip(root))),
        ("trailing garbage", (index, size, leaf, [*proof, b""], root)),
        ("trailing root", (index, size, leaf, [*proof, root], root)),
        ("preceding garbage", (index, size, leaf, [b"", *proof], root)),
        ("preceding root", (index, size, leaf, [root, *proof], root)),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = flip(wrong[i])
        probes.append((f"flipped proof[{i}]", (index, size, leaf, wrong, root)))
    if proof:
        probes.append(("truncated", (index, size, leaf, proof[:-1], root)))
    if len(proof) > 1:
        probes.append(("inserted", (index, size, leaf, [proof[0], SOME_HASH, *proof[1:]],
                                    root)))
    return probes


def consistency_content_probes(m: int, n: int, root1: bytes, root2: bytes,
                               proof: list[bytes]) -> list[tuple[str, tuple[Any, ...]]]:
    """Probes that change roots or proof of a non-trivial proof: all must fail."""
    probes: list[tuple[str, tuple[Any, ...]]] = [
        ("wrong root1", (m, n, flip(root1), root2, proof)),
        ("wrong root2", (m, n, root1, flip(root2), proof)),
        ("short root1", (m, n, b"WrongRoot", root2, proof)),
        ("swapped roots", (m, n, root2, root1, proof)),
        ("empty proof", (m, n, root1, root2, [])),
        ("trailing garbage", (m, n, root1, root2, [*proof, b""])),
        ("trailing root1", (m, n, root1, root2, [*proof, root1])),
        ("trailing root2", (m, n, root1, root2, [*proof, root2])),
        ("preceding garbage", (m, n, root1, root2, [b"", *proof])),
        ("preceding root1", (m, n, root1, root2, [root1, *proof])),
        ("preceding root2", (m, n, root1, root2, [root2, *proof])),
        ("preceding proof[0]", (m, n, root1, root2, [proof[0], *proof])),
        ("truncated", (m, n, root1, root2, proof[:-1])),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = flip(wrong[i])
        probes.append((f"flipped proof[{i}]", (m, n, root1, root2, wrong)))
    return probes


def exhaustive_data(n: int) -> list[bytes]:
    return [b""] + [b"leaf %d" % i for i in range(1, n)]


# --- the hash functions and published constants --------------------------------


def test_hash_primitives() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    left, right = b"L" * 32, b"R" * 32
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert ProofError("x").exit_code == FINDINGS
    assert issubclass(ProofError, GamsaError)


def test_published_leaf_and_node_hashes() -> None:
    assert LEAF_HASHES == NODE_HASHES[0]
    assert [ref_mth([d]) for d in LEAVES] == NODE_HASHES[0]
    for level, hashes in enumerate(NODE_HASHES):
        width = 1 << level
        for j, expected in enumerate(hashes):
            span = slice(j * width, (j + 1) * width)
            assert ref_mth(LEAVES[span]) == expected
            assert root_from_leaf_hashes(LEAF_HASHES[span]) == expected


@pytest.mark.parametrize("size", range(9))
def test_published_roots_of_every_prefix(size: int) -> None:
    assert ref_mth(LEAVES[:size]) == ROOTS[size]
    assert root_from_leaf_hashes(LEAF_HASHES[:size]) == ROOTS[size]
    builder = MerkleBuilder()
    for h in LEAF_HASHES[:size]:
        builder.add(h)
    assert builder.size == size
    assert builder.root() == ROOTS[size]


# --- published proofs ----------------------------------------------------------


def _inclusion_ids(v: dict[str, Any]) -> str:
    return f"leaf{v['index']}-of-{v['size']}"


@pytest.mark.parametrize("vector", VECTORS["inclusion_proofs"], ids=_inclusion_ids)
def test_published_inclusion_proof(vector: dict[str, Any]) -> None:
    index, size = vector["index"], vector["size"]
    published = [bytes.fromhex(x) for x in vector["proof"]]
    assert ref_path(index, LEAVES[:size]) == published
    assert inclusion_proof(index, LEAF_HASHES[:size]) == published
    verify_inclusion(index, size, LEAF_HASHES[index], published, ROOTS[size])


@pytest.mark.parametrize("vector", VECTORS["inclusion_proofs"], ids=_inclusion_ids)
def test_published_inclusion_proof_go_probes(vector: dict[str, Any]) -> None:
    """transparency-dev/merkle's corruptInclusionProof probe set, all rejected."""
    index, size = vector["index"], vector["size"]
    proof = [bytes.fromhex(x) for x in vector["proof"]]
    root, leaf = ROOTS[size], LEAF_HASHES[index]
    probes = inclusion_content_probes(index, size, leaf, proof, root)
    probes += [
        ("index - 1", (index - 1, size, leaf, proof, root)),
        ("index + 1", (index + 1, size, leaf, proof, root)),
        ("index ^ 2", (index ^ 2, size, leaf, proof, root)),
        ("size * 2", (index, size * 2, leaf, proof, root)),
        ("size // 2", (index, size // 2, leaf, proof, root)),
    ]
    accepted = [desc for desc, args in probes if not rejects_inclusion(*args)]
    assert accepted == []


def _consistency_ids(v: dict[str, Any]) -> str:
    return f"{v['old_size']}-to-{v['new_size']}"


@pytest.mark.parametrize("vector", VECTORS["consistency_proofs"], ids=_consistency_ids)
def test_published_consistency_proof(vector: dict[str, Any]) -> None:
    m, n = vector["old_size"], vector["new_size"]
    published = [bytes.fromhex(x) for x in vector["proof"]]
    assert ref_proof(m, LEAVES[:n]) == published
    assert consistency_proof(m, LEAF_HASHES[:n]) == published
    verify_consistency(m, n, ROOTS[m], ROOTS[n], published)


@pytest.mark.parametrize("vector", [v for v in VECTORS["consistency_proofs"] if v["proof"]],
                         ids=_consistency_ids)
def test_published_consistency_proof_go_probes(vector: dict[str, Any]) -> None:
    """transparency-dev/merkle's corruptConsistencyProof probe set, all rejected."""
    m, n = vector["old_size"], vector["new_size"]
    proof = [bytes.fromhex(x) for x in vector["proof"]]
    root1, root2 = ROOTS[m], ROOTS[n]
    probes = consistency_content_probes(m, n, root1, root2, proof)
    probes += [
        ("size1 - 1", (m - 1, n, root1, root2, proof)),
        ("size1 + 1", (m + 1, n, root1, root2, proof)),
        ("size1 ^ 2", (m ^ 2, n, root1, root2, proof)),
        ("size2 * 2", (m, n * 2, root1, root2, proof)),
        ("size2 // 2", (m, n // 2, root1, root2, proof)),
    ]
    accepted = [desc for desc, args in probes if not rejects_consistency(*args)]
    assert accepted == []


# --- every proof over the 8 published leaves ------------------------------------


def _all_inclusion_cases(max_size: int) -> list[tuple[int, int]]:
    return [(i, n) for n in range(1, max_size + 1) for i in range(n)]


@pytest.mark.parametrize(("index", "size"), _all_inclusion_cases(8))
def test_every_inclusion_proof_of_published_leaves(index: int, size: int) -> None:
    proof = inclusion_proof(index, LEAF_HASHES[:size])
    assert proof == ref_path(index, LEAVES[:size])
    leaf, root = LEAF_HASHES[index], ROOTS[size]
    verify_inclusion(index, size, leaf, proof, root)
    accepted = [desc for desc, args in inclusion_content_probes(index, size, leaf, proof, root)
                if not rejects_inclusion(*args)]
    assert accepted == []
    # Wrong index or size: rejected unless the verifier's path shape is identical
    # (an inclusion proof alone does not bind the tree size; the signed size does).
    for other_index, other_size in [(index - 1, size), (index + 1, size), (index ^ 2, size),
                                    (index, size + 1), (index, size - 1), (index, size * 2),
                                    (index, size // 2), (index, 0)]:
        if (other_index, other_size) == (index, size):
            continue
        same_shape = (0 <= other_index < other_size
                      and ref_directions(other_index, other_size) == ref_directions(index, size))
        assert rejects_inclusion(other_index, other_size, leaf, proof, root) != same_shape, (
            other_index, other_size)


@pytest.mark.parametrize(("m", "n"), [(m, n) for n in range(1, 9) for m in range(1, n + 1)])
def test_every_consistency_proof_of_published_leaves(m: int, n: int) -> None:
    proof = consistency_proof(m, LEAF_HASHES[:n])
    assert proof == ref_proof(m, LEAVES[:n])
    verify_consistency(m, n, ROOTS[m], ROOTS[n], proof)
    if m == n:
        assert proof == []
        assert rejects_consistency(m, n, ROOTS[m], flip(ROOTS[n]), [])
        assert rejects_consistency(m, n, ROOTS[m], ROOTS[n], [ROOTS[m]])
        return
    accepted = [desc for desc, args in consistency_content_probes(m, n, ROOTS[m], ROOTS[n], proof)
                if not rejects_consistency(*args)]
    assert accepted == []
    # Roots of other prefix sizes never verify against this proof.
    for other in range(9):
        if other != m:
            assert rejects_consistency(m, n, ROOTS[other], ROOTS[n], proof)
        if other != n:
            assert rejects_consistency(m, n, ROOTS[m], ROOTS[other], proof)


# --- exhaustive sizes 1..70 against the reference ---------------------------------


@pytest.mark.parametrize("size", range(1, 71))
def test_exhaustive_against_reference(size: int) -> None:
    data = exhaustive_data(size)
    hashes = [leaf_hash(d) for d in data]
    root = root_from_leaf_hashes(hashes)
    assert root == ref_mth(data)
    for index in range(size):
        proof = inclusion_proof(index, hashes)
        assert proof == ref_path(index, data), index
        verify_inclusion(index, size, hashes[index], proof, root)
        for desc, args in inclusion_content_probes(index, size, hashes[index], proof, root):
            assert rejects_inclusion(*args), (index, desc)
        for other_index in (index - 1, index + 1):
            assert rejects_inclusion(other_index, size, hashes[index], proof, root)
    for m in range(1, size + 1):
        old_root = root_from_leaf_hashes(hashes[:m])
        proof = consistency_proof(m, hashes)
        assert proof == ref_proof(m, data), m
        verify_consistency(m, size, old_root, root, proof)
        if m < size:
            for desc, args in consistency_content_probes(m, size, old_root, root, proof):
                assert rejects_consistency(*args), (m, desc)


# --- the incremental builder and a big tree ----------------------------------------


def test_builder_matches_every_prefix() -> None:
    data = exhaustive_data(200)
    hashes = [leaf_hash(d) for d in data]
    builder = MerkleBuilder()
    assert builder.size == 0
    assert builder.root() == EMPTY_ROOT
    for n, h in enumerate(hashes, start=1):
        builder.add(h)
        assert builder.size == n
        assert builder.root() == root_from_leaf_hashes(hashes[:n])
        assert builder.root() == builder.root()  # reading the root changes nothing
    assert builder.root() == ref_mth(data)


def test_builder_stack_is_logarithmic() -> None:
    builder = MerkleBuilder()
    for i in range(1000):
        builder.add(i.to_bytes(32, "big"))
        assert len(builder._stack) == (i + 1).bit_count()


def test_million_leaves() -> None:
    hashes = [i.to_bytes(32, "big") for i in range(1_000_000)]
    root = root_from_leaf_hashes(hashes)
    builder = MerkleBuilder()
    for h in hashes:
        builder.add(h)
    assert builder.size == 1_000_000
    assert builder.root() == root
    assert root != root_from_leaf_hashes(hashes[:-1])


# --- edge cases and messages --------------------------------------------------------


def test_inclusion_index_out_of_range() -> None:
    with pytest.raises(ProofError, match="outside"):
        inclusion_proof(8, LEAF_HASHES)
    with pytest.raises(ProofError, match="outside"):
        inclusion_proof(-1, LEAF_HASHES)
    with pytest.raises(ProofError, match="outside"):
        inclusion_proof(0, [])
    for index, size in [(8, 8), (9, 8), (-1, 8), (0, 0), (1, 0), (2, 1)]:
        with pytest.raises(ProofError, match="outside"):
            verify_inclusion(index, size, LEAF_HASHES[0], [], ROOTS[8])


def test_inclusion_single_entry() -> None:
    h = leaf_hash(b"data")
    verify_inclusion(0, 1, h, [], h)
    assert rejects_inclusion(0, 1, h, [], b"")
    assert rejects_inclusion(0, 1, b"", [], h)
    assert rejects_inclusion(0, 1, h, [], flip(h))
    assert rejects_inclusion(0, 1, h, [h], h)


def test_inclusion_error_names_expected_and_computed_root() -> None:
    proof = inclusion_proof(5, LEAF_HASHES)
    with pytest.raises(ProofError) as err:
        verify_inclusion(5, 8, LEAF_HASHES[5], proof, ROOTS[7])
    assert ROOTS[7].hex() in err.value.message
    assert ROOTS[8].hex() in err.value.message  # what the proof computes


def test_inclusion_error_names_expected_length() -> None:
    proof = inclusion_proof(5, LEAF_HASHES)
    with pytest.raises(ProofError, match="expected 3 hashes, got 2"):
        verify_inclusion(5, 8, LEAF_HASHES[5], proof[:-1], ROOTS[8])
    with pytest.raises(ProofError, match="expected 3 hashes, got 4"):
        verify_inclusion(5, 8, LEAF_HASHES[5], [*proof, SOME_HASH], ROOTS[8])


def test_consistency_sizes_out_of_range() -> None:
    for m in (-1, 9):
        with pytest.raises(ProofError, match="outside"):
            consistency_proof(m, LEAF_HASHES)
    for m, n in [(1, 0), (2, 1), (8, 5), (-1, 3)]:
        with pytest.raises(ProofError, match="do not grow"):
            verify_consistency(m, n, ROOTS[1], ROOTS[1], [])


def test_consistency_equal_sizes() -> None:
    for n in range(9):
        assert consistency_proof(n, LEAF_HASHES[:n]) == []
        verify_consistency(n, n, ROOTS[n], ROOTS[n], [])
    with pytest.raises(ProofError, match="expected no hashes, got 1"):
        verify_consistency(3, 3, ROOTS[3], ROOTS[3], [ROOTS[3]])
    with pytest.raises(ProofError) as err:
        verify_consistency(3, 3, ROOTS[3], ROOTS[4], [])
    assert ROOTS[3].hex() in err.value.message
    assert ROOTS[4].hex() in err.value.message


def test_consistency_from_empty_tree() -> None:
    for n in range(9):
        assert consistency_proof(0, LEAF_HASHES[:n]) == []
        verify_consistency(0, n, EMPTY_ROOT, ROOTS[n], [])
    # A non-empty proof, or an old root that is not the empty tree's, fails.
    with pytest.raises(ProofError, match="expected no hashes, got 1"):
        verify_consistency(0, 1, EMPTY_ROOT, ROOTS[1], [EMPTY_ROOT])
    with pytest.raises(ProofError, match=EMPTY_ROOT.hex()):
        verify_consistency(0, 5, ROOTS[1], ROOTS[5], [])
    with pytest.raises(ProofError):
        verify_consistency(0, 0, EMPTY_ROOT, ROOTS[1], [])


def test_consistency_go_trivial_table() -> None:
    """transparency-dev/merkle TestVerifyConsistency, with 32-byte roots.

    One deliberate difference: Go accepts (0, 1) with any old root; we require
    the old root of the empty tree to be EMPTY_ROOT.
    """
    root1, root2 = SOME_HASH, flip(SOME_HASH)
    cases: list[tuple[int, int, bytes, bytes, list[bytes], bool]] = [
        (0, 0, root1, root2, [], True),
        (1, 1, root1, root2, [], True),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [], False),
        (0, 1, EMPTY_ROOT, root2, [], False),
        (0, 1, root1, root2, [], True),  # Go: accepted
        (1, 1, root2, root2, [], False),
        (1, 0, root1, root2, [], True),
        (2, 1, root1, root2, [], True),
        (1, 2, root1, root2, [], True),
        (0, 0, EMPTY_ROOT, root2, [], True),
        (1, 1, EMPTY_ROOT, root2, [], True),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], True),
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], True),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT], True),
    ]
    for m, n, r1, r2, proof, want_error in cases:
        assert rejects_consistency(m, n, r1, r2, proof) == want_error, (m, n)


def test_consistency_error_names_expected_and_computed() -> None:
    proof = consistency_proof(6, LEAF_HASHES)
    with pytest.raises(ProofError) as err:
        verify_consistency(6, 8, ROOTS[6], ROOTS[7], proof)
    assert ROOTS[7].hex() in err.value.message
    assert ROOTS[8].hex() in err.value.message
    with pytest.raises(ProofError) as err:
        verify_consistency(6, 8, ROOTS[5], ROOTS[8], proof)
    assert ROOTS[5].hex() in err.value.message
    assert ROOTS[6].hex() in err.value.message
    with pytest.raises(ProofError, match="expected 3 hashes, got 2"):
        verify_consistency(6, 8, ROOTS[6], ROOTS[8], proof[:-1])
    with pytest.raises(ProofError, match="expected 3 hashes, got 0"):
        verify_consistency(6, 8, ROOTS[6], ROOTS[8], [])
    with pytest.raises(ProofError, match="expected 3 hashes, got 4"):
        verify_consistency(6, 8, ROOTS[6], ROOTS[8], [*proof, SOME_HASH])
    with pytest.raises(ProofError, match="expected 1 hash, got 4"):
        verify_consistency(4, 8, ROOTS[4], ROOTS[8], [*consistency_proof(4, LEAF_HASHES),
                                                      SOME_HASH, SOME_HASH, SOME_HASH])


def test_hash_lengths_are_checked() -> None:
    short = b"\x00" * 31
    with pytest.raises(ProofError, match="32 bytes"):
        MerkleBuilder().add(short)
    with pytest.raises(ProofError, match="32 bytes"):
        root_from_leaf_hashes([LEAF_HASHES[0], short])
    with pytest.raises(ProofError, match="32 bytes"):
        verify_inclusion(0, 2, LEAF_HASHES[0], [short], ROOTS[2])
    with pytest.raises(ProofError, match="32 bytes"):
        verify_consistency(1, 2, ROOTS[1], ROOTS[2], [short])
    assert merkle.HASH_SIZE == 32


@pytest.mark.parametrize("splits", [[0], [1], [5], [64], [100], [1, 1, 7], [3, 64, 1, 200],
                                    [4096, 5000], [7, 0, 9, 1024, 3]])
def test_add_leaves_equals_add_one_by_one(splits: list[int]) -> None:
    bulk, single = MerkleBuilder(), MerkleBuilder()
    counter = 0
    for size in splits:
        data = [counter.to_bytes(4, "big") + bytes([i % 7]) for i in range(size)]
        counter += 1
        hashes = bulk.add_leaves(data)
        assert hashes == [leaf_hash(d) for d in data]
        for h in hashes:
            single.add(h)
        assert bulk.size == single.size
        assert bulk.root() == single.root()
