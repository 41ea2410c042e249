"""A new chain that follows another: `predicate.chain.follows` (docs/FORMAT.md §3).

When an agent finds the store ahead of its own chain head (its state restored from
a snapshot, or copied to another machine) it refuses to fork: it starts a new
chain whose genesis names the store's bundle it follows. The verifier checks that
the followed manifest is in the store with that digest and shows the new chain
as linked to it, not as an unexplained genesis. Its shape is checked where the
predicate is parsed (signing/predicate.py, `ChainFollows`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from signing.predicate import ChainFollows


@dataclass(slots=True)  # not frozen: one per bundle, and a frozen init costs 5x
class Linked:
    """The few fields of a verified bundle the follows check reads."""

    key: str
    host: str
    chain_id: str
    seq: int
    manifest_sha256: str
    follows: ChainFollows | None


def follows_findings(bundles: Iterable[Linked]) -> list[tuple[str, str, str, bool]]:
    """(object key, code, message, is_error) for each genesis that follows a bundle.

    `chain_follows` (info): the followed manifest is in the store with that digest.
    `chain_follows_mismatch` (error): a manifest is at that place with another digest.
    `chain_follows_missing` (warning): nothing at that place (deleted, or not yet
    shipped by the host whose state was copied).
    `chain_follows_continued` (warning): the followed chain goes on past that place:
    another machine still seals with a copy of this host's state.
    """
    members = list(bundles)
    if not any(b.seq == 1 and b.follows for b in members):
        return []  # no genesis links to a chain before it: nothing to look up
    at: dict[tuple[str, str, int], list[Linked]] = {}
    for b in members:
        at.setdefault((b.host, b.chain_id, b.seq), []).append(b)
    last: dict[tuple[str, str], int] = {}
    for b in members:
        last[(b.host, b.chain_id)] = max(b.seq, last.get((b.host, b.chain_id), 0))
    found: list[tuple[str, str, str, bool]] = []
    for b in members:
        if b.seq != 1 or not b.follows:
            continue
        chain_id, seq, digest = b.follows.chain_id, b.follows.seq, b.follows.manifest_sha256
        target = f"chain {chain_id} seq {seq}"
        there = at.get((b.host, chain_id, seq), [])
        if any(t.manifest_sha256 == digest for t in there):
            found.append((b.key, "chain_follows",
                          f"host {b.host}: chain {b.chain_id} is linked to {target} (its "
                          f"manifest is in the store with the digest named)", False))
            end = last.get((b.host, chain_id), seq)
            if end > seq:
                found.append((b.key, "chain_follows_continued",
                              f"host {b.host}: chain {chain_id} goes on to seq {end} after "
                              f"{target}, which chain {b.chain_id} follows: another machine "
                              f"still seals with a copy of this host's state", False))
        elif there:
            found.append((b.key, "chain_follows_mismatch",
                          f"host {b.host}: chain {b.chain_id} follows {target} with sha256 "
                          f"{digest}, but the store's manifest there hashes to "
                          f"{there[0].manifest_sha256}", True))
        else:
            found.append((b.key, "chain_follows_missing",
                          f"host {b.host}: chain {b.chain_id} follows {target}, which is not "
                          f"in the store (deleted, or its bundles were never shipped)", False))
    return found
