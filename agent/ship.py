"""The shipper: moves sealed bundles from the spool to the store, in seq order.

Per bundle: the agent's public key document, the records object, then the
manifest (the commit mark), each create-only; a HEAD confirms both; only then is
the spool entry removed. A crash anywhere repeats at most a put of identical
bytes, which the store treats as success.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from agent.crashpoints import crashpoint
from agent.state import StateDir
from agent.store import Store
from signing.errors import StoreError
from signing.keys import key_object_name


@dataclass
class ShipReport:
    shipped: list[str] = field(default_factory=list)  # manifest keys
    remaining: int = 0


def _put(store: Store, key: str, data: bytes) -> None:
    store.put(key, data, hashlib.sha256(data).hexdigest())
    info = store.head(key)
    if info is None or info.size != len(data):
        raise StoreError(f"store {store.url}: {key} not confirmed after upload")


def ship_spool(state: StateDir, store: Store, key_id: str) -> ShipReport:
    """Ship every complete spool entry. Caller holds `state.locked()` and ran recover()."""
    report = ShipReport()
    entries = state.entries()
    if not entries:
        return report
    _put(store, key_object_name(key_id), state.key_document_bytes())
    for index, entry in enumerate(entries):
        report.remaining = len(entries) - index
        _put(store, entry.name.records_key, entry.records_path.read_bytes())
        crashpoint("records shipped")
        _put(store, entry.name.manifest_key, entry.manifest_path.read_bytes())
        crashpoint("manifest shipped")
        state.remove_entry(entry)
        report.shipped.append(entry.name.manifest_key)
    report.remaining = 0
    return report
