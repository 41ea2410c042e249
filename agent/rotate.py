"""The host's side of key rotation: a new agent key that continues the same chain.

`gamsa keys rotate` (caller holds the state lock):

1. the old key's public document is kept as `keys/retired/<old_key_id>.json`
   (so this host's own `gamsa verify` still trusts the bundles it signed);
2. the old key signs the rotation statement (signing/rotation.py), naming the new
   key and the chain head; it is kept as `keys/rotations/<sha256>.dsse.json`;
3. the new key is written as `keys/agent.key.next` (0600), `keys/agent.json` is
   removed, and `agent.key.next` is renamed over `agent.key`: the old private key
   is gone (see docs/OPERATIONS.md for why it is destroyed, not kept).

A crash before the rename leaves the old key in place and a statement for a key
that never took effect; such statements are never published and the next rotate
removes them. `continues_after_rotation` is what lets the first bundle of the new
key extend the old chain instead of starting a new one; every ship publishes the
kept statements (and the retired key documents) beside the key documents, and a
statement is dropped from the state dir once it is in the store and the chain
head is the new key's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from agent.fsutil import create_atomic, failing, fsync_dir
from agent.state import ChainHead, StateDir
from agent.store import Store
from signing.enrollment import format_time
from signing.errors import FormatError, GamsaError, SignatureError, UsageError
from signing.keys import PublicKey, generate_private_key, key_object_name, save_private_key
from signing.rotation import (
    ChainPoint,
    Rotation,
    read_rotation,
    rotation_object_name,
    sign_rotation,
)

ROTATIONS_DIR = "rotations"  # under keys/: kept statements, until shipped
RETIRED_DIR = "retired"  # under keys/: public documents of rotated-out keys
NEXT_KEY_FILE = "agent.key.next"


def rotations_dir(state: StateDir) -> Path:
    return state.keys / ROTATIONS_DIR


def retired_dir(state: StateDir) -> Path:
    return state.keys / RETIRED_DIR


@dataclass(frozen=True)
class Rotated:
    """What `rotate_key` did."""

    rotation: Rotation
    statement_path: Path
    envelope: bytes

    @property
    def object_name(self) -> str:
        return rotation_object_name(self.rotation.new_key_id, self.envelope)


def kept_rotations(state: StateDir) -> list[tuple[Path, bytes, Rotation]]:
    """The rotation statements kept in the state dir (ours; signature not rechecked).

    One that is unreadable is passed over rather than stopping collection or
    shipping: the key change then starts a new chain, which the verifier shows.
    """
    directory = rotations_dir(state)
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.dsse.json")):
        with failing("read the kept rotation statement", path):
            data = path.read_bytes()
        try:
            found.append((path, data, read_rotation(data, str(path))))
        except (FormatError, SignatureError):
            continue
    return found


def retired_key_ids(state: StateDir) -> set[str]:
    directory = retired_dir(state)
    if not directory.is_dir():
        return set()
    return {p.name.removesuffix(".json") for p in directory.glob("*.json")}


def _discard_unfinished(state: StateDir, current_key_id: str) -> None:
    """Remove what a rotation that crashed before its rename left behind."""
    took_effect = retired_key_ids(state) | {current_key_id}
    for path, _, rotation in kept_rotations(state):
        if rotation.new_key_id not in took_effect:
            with failing("remove an unfinished rotation statement", path):
                path.unlink()
    with failing("remove an unfinished new key", state.keys):
        (state.keys / NEXT_KEY_FILE).unlink(missing_ok=True)


def rotate_key(state: StateDir, host_id: str, now: dt.datetime) -> Rotated:
    """Replace the agent key; the old key signs the handover. Caller holds the lock."""
    if state.agent_key:
        raise UsageError(f"gamsa keys rotate replaces the state dir's key file, but the agent "
                         f"key is {state.key_name} ([keys] agent)",
                         hint="rotating a token key is not supported yet: see "
                              "docs/OPERATIONS.md, hardware-held keys")
    if not state.key_path.exists():
        raise UsageError(f"no agent key at {state.key_path} to rotate",
                         hint="run: gamsa keys init")
    old_signer, _ = state.signer(host_id)
    head = state.recover()
    _discard_unfinished(state, old_signer.key_id)
    if head is not None and head.key_id != old_signer.key_id:
        raise UsageError(f"the chain head (seq {head.seq}) was sealed by key {head.key_id}, "
                         f"not by the current key {old_signer.key_id}",
                         hint="run `gamsa collect` once with the current key, then rotate")
    new_private = generate_private_key()
    new_public = PublicKey.from_key(new_private.public_key())
    continues = (None if head is None
                 else ChainPoint(head.chain_id, head.seq, head.manifest_sha256))
    rotation = Rotation(host_id, old_signer.key_id, new_public, continues, format_time(now))
    envelope = sign_rotation(rotation, old_signer)
    old_document = state.key_document_bytes()
    for directory in (retired_dir(state), rotations_dir(state)):
        with failing("create the key directory", directory):
            directory.mkdir(mode=0o700, exist_ok=True)
    statement_path = rotations_dir(state) / f"{hashlib.sha256(envelope).hexdigest()}.dsse.json"
    with failing("keep the rotation statement", statement_path):
        create_atomic(retired_dir(state) / f"{old_signer.key_id}.json", old_document, 0o644)
        create_atomic(statement_path, envelope, 0o644)
    next_path = state.keys / NEXT_KEY_FILE
    save_private_key(next_path, new_private)
    with failing("replace the agent key", state.key_path):
        # The document names the old key; it is rebuilt from the new key below. Removed
        # first, so a crash before the rename rebuilds the old key's identical one.
        state.key_doc_path.unlink(missing_ok=True)
        os.replace(next_path, state.key_path)
        fsync_dir(state.keys)
    signer, _ = state.signer(host_id)  # writes the new key's document
    if signer.key_id != new_public.key_id:  # pragma: no cover - a broken filesystem
        raise GamsaError(f"{state.key_path} is not the new key after rotation")
    return Rotated(rotation, statement_path, envelope)


def continues_after_rotation(state: StateDir, head: ChainHead | None, key_id: str) -> bool:
    """True when the chain head was sealed by a key this agent rotated to `key_id`
    from, at exactly that head: the new key's first bundle extends the chain."""
    if head is None or head.key_id == key_id:
        return False
    point = ChainPoint(head.chain_id, head.seq, head.manifest_sha256)
    return any(r.old_key_id == head.key_id and r.new_key_id == key_id and r.continues == point
               for _, _, r in kept_rotations(state))


def publish_rotations(state: StateDir, store: Store, key_id: str) -> list[str]:
    """Put kept rotation statements that took effect, and the retired key documents,
    in the store (create-only, idempotent); drop a statement from the state dir once
    stored and no longer needed to seal (the head is signed by its new key, or
    nothing links to it)."""
    published = []
    retired = retired_key_ids(state)
    for old_id in sorted(retired):
        path = retired_dir(state) / f"{old_id}.json"
        with failing("read the retired key document", path):
            data = path.read_bytes()
        store.put(key_object_name(old_id), data, hashlib.sha256(data).hexdigest())
    head = state.read_head()
    for path, data, rotation in kept_rotations(state):
        if rotation.new_key_id not in retired | {key_id}:
            continue  # its rotation never took effect (a crash before the rename)
        name = rotation_object_name(rotation.new_key_id, data)
        store.put(name, data, hashlib.sha256(data).hexdigest())
        published.append(name)
        if head is None or head.key_id != rotation.old_key_id:
            with failing("remove the shipped rotation statement", path):
                path.unlink()
    return published

