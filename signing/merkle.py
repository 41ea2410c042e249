"""The RFC 9162 (Certificate Transparency v2) Merkle tree for gamsa record files.

A records object is sealed by the Merkle Tree Hash (MTH, RFC 9162 §2.1.1) over its
lines in file order, each line a leaf hashed as SHA-256(0x00 || canonical bytes);
the root goes into the signed manifest. Inclusion proofs (§2.1.3) show a regulator
one record without the rest; consistency proofs (§2.1.4) show that a larger tree
only appended to a smaller one.

Everything here is stdlib (hashlib) and works on already-hashed leaves. Building a
root is iterative with a stack of perfect-subtree roots: O(n) time and O(log n)
memory beyond the input, so a million leaves take about a second. The verifiers
follow the RFC 9162 §2.1.3.2 and §2.1.4.2 algorithms step by step and raise
`ProofError`, naming the expected and the computed value, when a proof fails.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from signing.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleBuilder",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
"""MTH({}) of the empty tree: SHA-256 of the empty string."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d), the hash of one leaf."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right), the hash of an interior node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _hashes(n: int) -> str:
    return "1 hash" if n == 1 else f"{n} hashes"


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2): RFC 9162's k."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleBuilder:
    """An incremental Merkle Tree Hash: add leaf hashes one at a time, read the root.

    Holds only the roots of the perfect subtrees the leaves so far decompose into
    (one per set bit of `size`, largest first), so memory is O(log n).
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []

    @property
    def size(self) -> int:
        """Number of leaves added so far."""
        return self._size

    def add(self, leaf_hash: bytes) -> None:
        """Append one already-hashed leaf (see `leaf_hash`)."""
        _check_hash(leaf_hash, "leaf hash")
        stack = self._stack
        node = leaf_hash
        self._size += 1
        n = self._size
        # Each trailing zero bit of the new size closes one perfect subtree.
        while not n & 1:
            node = node_hash(stack.pop(), node)
            n >>= 1
        stack.append(node)

    def add_leaves(self, data: Iterable[bytes]) -> list[bytes]:
        """Hash and append many leaves (raw leaf data); return their leaf hashes.

        Same result as `add(leaf_hash(d))` for each item, but aligned runs of 2**k
        leaves are reduced level by level in bulk, which roughly halves the Python
        overhead per leaf when sealing large bundles.
        """
        sha = hashlib.sha256
        hashes = [sha(b"\x00" + item).digest() for item in data]
        position = 0
        remaining = len(hashes)
        while remaining:
            # The largest perfect subtree that starts at the current size and fits.
            run = self._size & -self._size if self._size else 1 << (remaining.bit_length() - 1)
            while run > remaining:
                run >>= 1
            level = hashes[position:position + run]
            while len(level) > 1:
                level = [sha(b"\x01" + left + right).digest()
                         for left, right in zip(level[0::2], level[1::2], strict=True)]
            self._push(level[0], run.bit_length() - 1)
            position += run
            remaining -= run
        return hashes

    def _push(self, node: bytes, height: int) -> None:
        # Appending a perfect subtree of 2**height leaves at an aligned size is a binary
        # increment of size >> height: each carry merges one stacked root.
        stack = self._stack
        self._size += 1 << height
        n = self._size >> height
        while not n & 1:
            node = node_hash(stack.pop(), node)
            n >>= 1
        stack.append(node)

    def root(self) -> bytes:
        """MTH over the leaves added so far (EMPTY_ROOT for none)."""
        stack = self._stack
        if not stack:
            return EMPTY_ROOT
        node = stack[-1]
        for left in reversed(stack[:-1]):
            node = node_hash(left, node)
        return node


def _range_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    """MTH(D[start:end]) without copying the range; O(log n) extra memory."""
    if start >= end:
        return EMPTY_ROOT
    sha256 = hashlib.sha256
    stack: list[bytes] = []
    count = 0
    for i in range(start, end):
        node = leaf_hashes[i]
        if len(node) != HASH_SIZE:
            _check_hash(node, f"leaf hash {i}")
        count += 1
        n = count
        while not n & 1:
            node = sha256(_NODE_PREFIX + stack.pop() + node).digest()
            n >>= 1
        stack.append(node)
    node = stack.pop()
    while stack:
        node = sha256(_NODE_PREFIX + stack.pop() + node).digest()
    return node


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) (RFC 9162 §2.1.1) over already-hashed leaves, in order."""
    return _range_root(leaf_hashes, 0, len(leaf_hashes))


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (RFC 9162 §2.1.3.1): the audit path for leaf `index`.

    Ordered from the leaf's sibling up to the child of the root, as
    `verify_inclusion` consumes it.
    """
    size = len(leaf_hashes)
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    # Walk down from the root; each level contributes the other half's MTH.
    siblings: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            siblings.append(_range_root(leaf_hashes, mid, hi))
            hi = mid
        else:
            siblings.append(_range_root(leaf_hashes, lo, mid))
            lo = mid
    siblings.reverse()
    return siblings


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) (RFC 9162 §2.1.4.1) that D[0:old_size] is a prefix of D[n].

    Empty when old_size is 0 or n: the empty tree and the tree itself need no proof.
    """
    size = len(leaf_hashes)
    if not 0 <= old_size <= size:
        raise ProofError(f"old size {old_size} is outside 0..{size}")
    if old_size in (0, size):
        return []
    # SUBPROOF(m, D[lo:hi], b) unrolled: each level appends one MTH after the
    # proof of the level below, so collect top-down and reverse.
    upper: list[bytes] = []
    lo, hi, m, whole = 0, size, old_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            upper.append(_range_root(leaf_hashes, lo + k, hi))
            hi = lo + k
        else:
            upper.append(_range_root(leaf_hashes, lo, lo + k))
            lo += k
            m -= k
            whole = False
    proof = [] if whole else [_range_root(leaf_hashes, lo, hi)]
    proof.extend(reversed(upper))
    return proof


def _inclusion_proof_length(index: int, size: int) -> int:
    length = 0
    while size > 1:
        k = _split(size)
        if index < k:
            size = k
        else:
            index -= k
            size -= k
        length += 1
    return length


def _consistency_proof_length(old_size: int, new_size: int) -> int:
    length, whole = 0, True
    while old_size != new_size:
        k = _split(new_size)
        if old_size <= k:
            new_size = k
        else:
            old_size -= k
            new_size -= k
            whole = False
        length += 1
    return length if whole else length + 1


def verify_inclusion(
    index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check an inclusion proof by RFC 9162 §2.1.3.2; raise ProofError if it fails."""
    # 1. leaf_index must be below tree_size.
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is outside a tree of size {tree_size}")
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    for i, p in enumerate(proof):
        _check_hash(p, f"inclusion proof hash {i}")
    # 2. fn = leaf_index, sn = tree_size - 1.   3. r = hash.
    fn, sn = index, tree_size - 1
    r = leaf_hash
    # 4. For each value p in the inclusion_path:
    for p in proof:
        # a. If sn is 0, stop and fail.
        if sn == 0:
            raise ProofError(
                f"inclusion proof too long: expected "
                f"{_hashes(_inclusion_proof_length(index, tree_size))}, got {len(proof)} "
                f"(leaf {index} of {tree_size})"
            )
        # b. If LSB(fn) is set, or fn equals sn:
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # If LSB(fn) is not set, shift until LSB(fn) is set or fn is 0.
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        # c. Right-shift both fn and sn once.
        fn >>= 1
        sn >>= 1
    # 5. sn must be 0 and r must equal root_hash.
    if sn != 0:
        raise ProofError(
            f"inclusion proof too short: expected "
            f"{_hashes(_inclusion_proof_length(index, tree_size))}, got {len(proof)} "
            f"(leaf {index} of {tree_size})"
        )
    if r != root:
        raise ProofError(
            f"inclusion proof does not verify (leaf {index} of {tree_size}): "
            f"expected root {root.hex()}, computed {r.hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check a consistency proof by RFC 9162 §2.1.4.2; raise ProofError if it fails.

    Trivial cases first: from the empty tree (old_size 0, old_root must be
    EMPTY_ROOT) and between equal sizes (roots must be equal) the proof must be
    empty.
    """
    if not 0 <= old_size <= new_size:
        raise ProofError(f"sizes do not grow: old size {old_size}, new size {new_size}")
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    for i, c in enumerate(proof):
        _check_hash(c, f"consistency proof hash {i}")
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ProofError(
                f"consistency proof from size {old_size} to {new_size}: "
                f"expected no hashes, got {len(proof)}"
            )
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError(
                f"empty tree root mismatch: expected {EMPTY_ROOT.hex()}, got {old_root.hex()}"
            )
        if old_size == new_size and old_root != new_root:
            raise ProofError(
                f"roots differ for equal size {new_size}: "
                f"expected {old_root.hex()}, got {new_root.hex()}"
            )
        return

    def _wrong_length() -> ProofError:
        return ProofError(
            f"consistency proof from size {old_size} to {new_size}: expected "
            f"{_hashes(_consistency_proof_length(old_size, new_size))}, got {len(proof)}"
        )

    # 1. An empty consistency_path fails.
    if not proof:
        raise _wrong_length()
    # 2. If first is an exact power of 2, prepend first_hash.
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. While LSB(fn) is set, right-shift both.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first value of the path.
    fr = sr = path[0]
    # 6. For each subsequent value c:
    for c in path[1:]:
        # a. If sn is 0, stop and fail.
        if sn == 0:
            raise _wrong_length()
        # b. If LSB(fn) is set, or fn equals sn:
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # If LSB(fn) is not set, shift until LSB(fn) is set or fn is 0.
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        # c. Right-shift both fn and sn once.
        fn >>= 1
        sn >>= 1
    # 7. fr must equal first_hash, sr second_hash, and sn must be 0.
    if sn != 0:
        raise _wrong_length()
    if fr != old_root:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} does not verify: "
            f"expected old root {old_root.hex()}, computed {fr.hex()}"
        )
    if sr != new_root:
        raise ProofError(
            f"consistency proof from size {old_size} to {new_size} does not verify: "
            f"expected new root {new_root.hex()}, computed {sr.hex()}"
        )
