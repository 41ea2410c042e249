"""Pseudonymization: stable across hosts, keyed, and the key file is guarded."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest

from collector.privacy import load_pseudonym_key, pseudonym, pseudonymize
from signing.errors import KeyFileError


def key_file(tmp_path: Path, mode: int = 0o600, content: bytes = b"k" * 32) -> Path:
    path = tmp_path / "pseudonym.key"
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def test_pseudonym_is_hmac_prefix(tmp_path: Path) -> None:
    key = load_pseudonym_key(key_file(tmp_path))
    expected = "psn:" + hmac.new(b"k" * 32, b"alice", hashlib.sha256).hexdigest()[:32]
    assert pseudonym(key, "alice") == expected
    assert pseudonym(b"other-key-000000", "alice") != expected


def test_named_fields_are_replaced_everywhere(tmp_path: Path) -> None:
    key = load_pseudonym_key(key_file(tmp_path))
    data = {"user": "alice", "src": "10.1.2.3", "uid": 1000, "nested": {"user": "bob"},
            "rows": [{"subject": 42}, {"subject": None}], "users": ["x"],
            "path": "/home/alice"}
    out = pseudonymize(data, frozenset({"user", "src", "subject"}), key)
    assert out["user"] == pseudonym(key, "alice")
    assert out["nested"]["user"] == pseudonym(key, "bob")
    assert out["src"] == pseudonym(key, "10.1.2.3")
    assert out["rows"] == [{"subject": pseudonym(key, "42")}, {"subject": None}]
    assert out["uid"] == 1000 and out["users"] == ["x"] and out["path"] == "/home/alice"
    assert pseudonymize(out, frozenset({"user"}), key)["user"] == out["user"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_loose_key_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, mode)
    with pytest.raises(KeyFileError) as info:
        load_pseudonym_key(path)
    assert str(path) in info.value.diagnostics()
    assert "chmod 600" in info.value.diagnostics()
    assert info.value.exit_code == 2


def test_missing_or_short_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        load_pseudonym_key(tmp_path / "nope")
    with pytest.raises(KeyFileError, match="shorter"):
        load_pseudonym_key(key_file(tmp_path, content=b"short"))
