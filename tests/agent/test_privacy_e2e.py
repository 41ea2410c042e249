"""Pseudonymization is applied before sealing, through the real `gamsa collect`."""

from __future__ import annotations

import base64
import gzip
import json
import os
from pathlib import Path
from typing import Any

from tests.conftest import GamsaEnv


def sealed_records(env: GamsaEnv) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for path in sorted(env.store.rglob("*.records.jsonl.gz")):
        out += [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    return out


def test_named_fields_are_pseudonymized_before_sealing(gamsa_env: GamsaEnv,
                                                      tmp_path: Path) -> None:
    key = tmp_path / "pseudonym.key"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o600)
    log = tmp_path / "auth.log"
    log.write_text("Dec  2 10:00:01 web-01 sshd[812]: Accepted publickey for jiwoo from "
                   "10.77.1.23 port 52311 ssh2: ED25519 SHA256:abc\n")
    gamsa_env.write_config(
        extra=f'[collectors.logs]\nsources = [{{ path = "{log}", format = "auth" }}]\n'
              f'[privacy]\npseudonymize = ["account", "source"]\nkey_file = "{key}"\n',
        collectors='["logs"]')
    result = gamsa_env.run("collect")
    assert result.returncode == 0, result.stderr
    (access,) = [r for r in sealed_records(gamsa_env) if r["type"] == "access"]
    assert access["data"]["account"].startswith("psn:")
    assert access["data"]["source"].startswith("psn:")
    assert access["data"]["raw_sha256"] is None and len(access["data"]["raw_hmac"]) == 64
    assert "Accepted publickey for psn:" in access["data"]["raw"]
    blob = b"".join(gzip.decompress(p.read_bytes()) for p in gamsa_env.store.rglob("*.gz"))
    assert b"jiwoo" not in blob and b"10.77.1.23" not in blob
    manifest = next(gamsa_env.store.rglob("*.manifest.dsse.json")).read_bytes()
    payload = json.loads(base64.b64decode(json.loads(manifest)["payload"]))
    assert payload["predicate"]["privacy"]["pseudonymized"] == ["account", "source"]
    assert gamsa_env.run("verify").returncode == 0


def test_unsafe_pseudonym_key_stops_before_sealing(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    key = tmp_path / "pseudonym.key"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o644)
    gamsa_env.write_config(extra=f'[privacy]\npseudonymize = ["user"]\n'
                                 f'key_file = "{key}"\n')
    result = gamsa_env.run("collect")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(key) in result.stderr
    assert "chmod 600" in result.stderr
    assert not list(gamsa_env.store.rglob("*.gz"))


def test_collector_errors_in_the_manifest_lose_the_name_too(gamsa_env: GamsaEnv,
                                                           tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.seal import collect_context, seal_collection
    from agent.state import StateDir
    from collector.registry import CollectContext, Collector

    def fail(ctx: CollectContext) -> list[Any]:
        raise PermissionError(f"cannot read {ctx.root}/home/jiwoo/.ssh/authorized_keys")

    broken = Collector(name="broken", version="1", description="raises (tests)",
                       platforms=("linux", "darwin", "win32"), record_types={}, collect=fail)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n"
                                         "jiwoo:x:2001:2001::/home/jiwoo:/bin/bash\n")
    key = tmp_path / "pseudonym.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    gamsa_env.write_config(extra=f'[privacy]\npseudonymize = ["user"]\nkey_file = "{key}"\n')
    config = load_config(gamsa_env.config, {})
    state = StateDir(config.state_dir)
    with state.locked():
        ctx = collect_context(config, state)
        ctx.root = root
        sealed = seal_collection(config, "test-host", [broken], "on-demand", state, ctx)
    manifest = sealed.entry.manifest_path.read_bytes()
    payload = json.loads(base64.b64decode(json.loads(manifest)["payload"]))
    (entry,) = payload["predicate"]["collectors"]
    assert entry["status"] == "error" and "/home/psn:" in entry["error"]
    records = gzip.decompress(sealed.entry.records_path.read_bytes())
    assert b"/home/psn:" in records and b"jiwoo" not in records + manifest
