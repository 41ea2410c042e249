"""Create-only and atomic writes (agent/fsutil.py): where the kernel can, the data is
written to a file with no name (O_TMPFILE) and linked into place, so a kill at any
instant leaves no half-written `.tmp-*` file in a store or state dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import fsutil


def _no_named_temp(*_args: object, **_kwargs: object) -> Path:
    raise AssertionError("fell back to a named temp file")


@pytest.mark.skipif(not os.path.isdir(fsutil.PROC_FDS), reason="no /proc")
def test_create_and_replace_never_name_a_temp_file(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fd = fsutil._unnamed_file(tmp_path, b"probe", 0o600)
    if fd is None:
        pytest.skip("this filesystem has no O_TMPFILE")
    os.close(fd)
    monkeypatch.setattr(fsutil, "write_temp", _no_named_temp)
    monkeypatch.setattr(fsutil, "write_new_file", _no_named_temp)
    assert fsutil.create_atomic(tmp_path / "object", b"one", 0o444)
    assert not fsutil.create_atomic(tmp_path / "object", b"two", 0o444)  # create-only
    fsutil.replace_atomic(tmp_path / "state.json", b"{}", 0o600)
    fsutil.replace_atomic(tmp_path / "state.json", b"{\"a\": 1}", 0o600)
    assert (tmp_path / "object").read_bytes() == b"one"
    assert (tmp_path / "object").stat().st_mode & 0o777 == 0o444
    assert (tmp_path / "state.json").read_bytes() == b"{\"a\": 1}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["object", "state.json"]


def test_a_named_temp_is_removed_when_its_write_is_interrupted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there is no O_TMPFILE (NFS), a SIGTERM (SystemExit) mid-write leaves no
    named temp file either."""

    def interrupted(fd: int, data: bytes) -> None:
        raise SystemExit(143)

    monkeypatch.setattr(fsutil, "write_all", interrupted)
    with pytest.raises(SystemExit):
        fsutil.write_new_file(tmp_path / ".tmp-x", b"data")
    assert list(tmp_path.iterdir()) == []
