"""Pseudonymization is applied before sealing, through the real `gamsa collect`."""

from __future__ import annotations

import gzip
import json
import os
import socket
from pathlib import Path

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
    gamsa_env.write_config(extra=f'[privacy]\npseudonymize = ["hostname"]\n'
                                 f'key_file = "{key}"\n')
    result = gamsa_env.run("collect")
    assert result.returncode == 0, result.stderr
    (host,) = [r for r in sealed_records(gamsa_env) if r["type"] == "host"]
    assert host["data"]["hostname"].startswith("psn:")
    hostname = socket.gethostname()
    blob = b"".join(gzip.decompress(p.read_bytes()) for p in gamsa_env.store.rglob("*.gz"))
    assert f'"hostname":"{hostname}"'.encode() not in blob
    assert gamsa_env.run("verify").returncode == 0


def test_unsafe_pseudonym_key_stops_before_sealing(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    key = tmp_path / "pseudonym.key"
    key.write_bytes(os.urandom(32))
    os.chmod(key, 0o644)
    gamsa_env.write_config(extra=f'[privacy]\npseudonymize = ["hostname"]\n'
                                 f'key_file = "{key}"\n')
    result = gamsa_env.run("collect")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and str(key) in result.stderr
    assert "chmod 600" in result.stderr
    assert not list(gamsa_env.store.rglob("*.gz"))
