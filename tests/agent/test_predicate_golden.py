"""The manifest writer's bytes do not move: three bundles sealed by the real
`seal_collection` with a fixed key, clock, ids, host and resources, and every
optional predicate field present between them (chain.follows, genesis_reason,
clock_check, clock_started_at, clock_stepped_back, privacy, agent.resources,
collector gaps and errors, a null machine-id hash), must equal the manifests the
writer sealed before the predicate became a typed model (tests/assets/predicate/).

Regenerate the assets only for a deliberate format change:
`GAMSA_WRITE_GOLDEN=1 python -m pytest tests/agent/test_predicate_golden.py`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import agent.identity
import agent.seal
import collector.record
from agent import resources
from agent.chainguard import Divergence, StoreBundle, StoreView
from agent.config import load_config
from agent.seal import seal_collection
from agent.state import StateDir
from collector._timeout import stream_bounded
from collector.record import Record, format_time
from collector.registry import CollectContext, Collector, coverage_gap
from signing.bundle import BundleName
from signing.keys import save_private_key
from tests.conftest import GamsaEnv

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "predicate"
ANY_PLATFORM = ("linux", "darwin", "win32")
OBSERVED = "2026-12-02T00:00:00.000000Z"


def accounts(_ctx: CollectContext) -> Iterator[Record]:
    yield Record("accounts", "user", "jiwoo", {"uid": 1000, "home": "/home/jiwoo"}, OBSERVED)
    raise PermissionError("cannot read /home/jiwoo/.ssh/authorized_keys")


def partial(_ctx: CollectContext) -> Iterator[Record]:
    yield Record("files", "file", "/etc/hosts", {"mode": "0644"}, OBSERVED)
    yield coverage_gap("files", "/proc", "not root", 3)


COLLECTORS = [Collector("accounts", "2", "a person and an error (tests)", ANY_PLATFORM, {},
                        accounts),
              Collector("files", "1", "a gap (tests)", ANY_PLATFORM, {}, partial)]


class Clock:
    """`dt` for agent.seal with a settable now."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 2, 6, 0, 0, 123456, tzinfo=dt.UTC)
        fixed = self

        class FrozenDatetime(dt.datetime):
            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> FrozenDatetime:  # type: ignore[override]
                return fixed.now  # type: ignore[return-value]

        self.module = types.SimpleNamespace(datetime=FrozenDatetime, UTC=dt.UTC,
                                            timedelta=dt.timedelta)


def fixed_world(monkeypatch: pytest.MonkeyPatch, env: GamsaEnv, tmp_path: Path) -> Clock:
    clock = Clock()
    monkeypatch.setattr(agent.seal, "dt", clock.module)
    monkeypatch.setattr(collector.record, "dt", clock.module)  # records' default times
    monkeypatch.setattr(agent.seal, "utc_now",
                        lambda: format_time(clock.now + dt.timedelta(seconds=2)))
    monkeypatch.setattr(agent.seal, "secrets", types.SimpleNamespace(
        token_hex=lambda n: "ab12cd34"))
    monkeypatch.setattr(agent.identity.socket, "gethostname", lambda: "web-01.bank.example")
    monkeypatch.setattr(agent.identity, "machine_id_sha256", lambda root=None: None)
    monkeypatch.setattr(agent.identity.platform, "system", lambda: "Linux")
    monkeypatch.setattr(agent.identity.platform, "release", lambda: "6.1.0-28-amd64")
    monkeypatch.setattr(agent.identity.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(agent.seal, "__version__", "0.0-golden")
    snapshots = iter([resources.Snapshot(1.0, 0.5, 10 << 20, 20 << 20),
                      resources.Snapshot(1.25, 0.625, 11 << 20, 21 << 20)] * 3)
    monkeypatch.setattr(resources, "snapshot", lambda: next(snapshots))

    def runner(ctx: CollectContext, config: object, state: object) -> object:
        def run(collector: Collector, emit: object) -> object:
            return replace(stream_bounded(collector, ctx, 60, emit),  # type: ignore[arg-type]
                           duration_ms=17)
        return run

    monkeypatch.setattr(agent.seal, "bounded_runner", runner)
    key = tmp_path / "pseudonym.key"
    key.write_bytes(b"golden pseudonym key, 32 bytes..")
    key.chmod(0o600)
    env.write_config(extra=f'[privacy]\npseudonymize = ["user", "home"]\nkey_file = "{key}"\n')
    keys = StateDir(env.state_dir).keys
    keys.mkdir(mode=0o700, parents=True)
    save_private_key(keys / "agent.key", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    return clock


def sealed_manifests(monkeypatch: pytest.MonkeyPatch, env: GamsaEnv,
                     tmp_path: Path) -> list[bytes]:
    clock = fixed_world(monkeypatch, env, tmp_path)
    config = load_config(env.config, {})
    config = replace(config, sha256="c0" * 32)  # its bytes name tmp paths
    state = StateDir(config.state_dir)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                         "jiwoo:x:1000:1000:Jiwoo Kim:/home/jiwoo:/bin/bash\n")
    ctx = CollectContext(root=root, state_dir=state.root)
    followed = StoreBundle(BundleName("golden-host", "2026-12-01", 41, "old"), "chain-old", 41,
                           "5e" * 32)
    seen = StoreView(Divergence("the store holds seq 41 of this host's chain, ahead of "
                                "the local head (state restored?).", followed.follows()),
                     store_time=dt.datetime(2026, 12, 2, 5, 59, 0, tzinfo=dt.UTC),
                     local_time=dt.datetime(2026, 12, 2, 6, 0, 0, 123456, tzinfo=dt.UTC))
    out = []
    with state.locked():
        # 1: a genesis that follows the store's bundle, the store's Date checked
        sealed = seal_collection(config, "golden-host", COLLECTORS, "schedule", state, ctx,
                                 look=lambda head: seen)
        out.append(sealed.entry.manifest_path.read_bytes())
        # 2: the clock a little behind the last bundle's end: held at that end
        clock.now -= dt.timedelta(seconds=30)
        sealed = seal_collection(config, "golden-host", COLLECTORS[1:], "file-change", state,
                                 ctx)
        out.append(sealed.entry.manifest_path.read_bytes())
        # 3: the last bundle far ahead of this clock: not held, said so
        clock.now -= dt.timedelta(days=2)
        sealed = seal_collection(config, "golden-host", [], "heartbeat", state, ctx)
        out.append(sealed.entry.manifest_path.read_bytes())
    return out


def predicate_of(manifest: bytes) -> dict[str, object]:
    payload = json.loads(base64.b64decode(json.loads(manifest)["payload"]))
    predicate: dict[str, object] = payload["predicate"]
    return predicate


def test_sealed_manifests_are_byte_identical_to_the_golden_ones(
        monkeypatch: pytest.MonkeyPatch, gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    manifests = sealed_manifests(monkeypatch, gamsa_env, tmp_path)
    golden = [ASSETS / f"golden-{n}.manifest.dsse.json" for n in (1, 2, 3)]
    if os.environ.get("GAMSA_WRITE_GOLDEN"):
        ASSETS.mkdir(parents=True, exist_ok=True)
        for path, data in zip(golden, manifests, strict=True):
            path.write_bytes(data)
    first, second, third = (predicate_of(m) for m in manifests)
    # the fixture reaches every optional field, or the comparison proves less
    assert {"follows", "genesis_reason"} <= set(first["chain"])  # type: ignore[arg-type]
    assert {"clock_check"} <= set(first["collection"])  # type: ignore[arg-type]
    assert "privacy" in first and "resources" in first["agent"]  # type: ignore[operator]
    statuses = {c["status"] for c in first["collectors"]}  # type: ignore[attr-defined]
    assert statuses == {"error", "partial"}
    assert "clock_started_at" in second["collection"]  # type: ignore[operator]
    assert "clock_stepped_back" in third["collection"]  # type: ignore[operator]
    for path, data in zip(golden, manifests, strict=True):
        assert data == path.read_bytes(), f"{path.name}: the writer's bytes changed"
