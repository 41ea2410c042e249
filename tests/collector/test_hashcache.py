"""The hash cache shared by the collectors that hash files."""

from __future__ import annotations

import os
from pathlib import Path

from collector._hashcache import HashCache

DIGEST = "ab" * 32


def test_round_trip_prune_and_no_rewrite_when_nothing_changed(tmp_path: Path) -> None:
    name = Path("cache") / "x.json"
    first = HashCache.under(tmp_path, name)
    first.put("a", DIGEST)
    first.put("b", DIGEST)
    first.save()
    path = tmp_path / name
    assert path.is_file()

    second = HashCache.under(tmp_path, name)
    assert len(second) == 2 and second.get("a") == DIGEST and second.hits == 1
    os.utime(path, ns=(1, 1))
    second.save(prune=False)  # nothing changed: the file is not written again
    assert path.stat().st_mtime_ns == 1
    second.save()  # "b" was not used in this run: pruned, so written
    assert path.stat().st_mtime_ns != 1
    assert HashCache.under(tmp_path, name).lookup("b") is None


def test_damaged_or_foreign_cache_files_are_empty_caches(tmp_path: Path) -> None:
    name = Path("c.json")
    for damage in ("not json", "[]", '{"version": 2, "entries": {}}',
                   '{"version": 1, "entries": {"k": "short"}}'):
        (tmp_path / name).write_text(damage)
        assert len(HashCache.under(tmp_path, name)) == 0
    memory_only = HashCache.under(None, name)
    memory_only.put("k", DIGEST)
    memory_only.save()  # nowhere to write: no error
