"""The files collector's baseline (its checkpoint) and `file_change` records, on tmp
trees: what a sweep and the daemon's watcher report as changed since last sealed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from collector.files import (
    CHANGE_TYPE,
    COLLECTOR,
    Limits,
    baseline_values,
    changes,
    observe,
    scan,
)
from collector.registry import CollectContext
from tests.collector.test_contract import contract_violations

NOT_RACY = Limits(racy_ns=0)


def context(root: Path, paths: list[str], checkpoint: Any = None) -> CollectContext:
    return CollectContext(root=root, options={"files": {"paths": paths}},
                          checkpoints={} if checkpoint is None else {"files": checkpoint})


def sweep(root: Path, paths: list[str], checkpoint: Any = None
          ) -> tuple[dict[str, dict[str, Any]], Any]:
    """(file_change data by key, the checkpoint proposed) of one full run."""
    ctx = context(root, paths, checkpoint)
    records = scan(ctx, NOT_RACY).records
    found = {r.key: r.data for r in records if r.type == CHANGE_TYPE}
    return found, ctx.new_checkpoints.get("files")


def test_a_first_run_reports_nothing_and_proposes_the_whole_baseline(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "a").write_text("1")
    found, checkpoint = sweep(tmp_path, ["/etc/*"])
    assert found == {}
    assert set(baseline_values(checkpoint)) == {"/etc/a"}
    entry = baseline_values(checkpoint)["/etc/a"]
    assert entry["sha256"] == hashlib.sha256(b"1").hexdigest()
    assert entry["kind"] == "file"


def test_a_sweep_reports_created_modified_removed_against_the_baseline(
        tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("kept", "edited", "removed", "chmodded"):
        (etc / name).write_text(name)
    _, baseline = sweep(tmp_path, ["/etc/*"])
    (etc / "edited").write_text("new content")
    (etc / "removed").unlink()
    (etc / "added").write_text("added")
    os.chmod(etc / "chmodded", 0o600)
    found, after = sweep(tmp_path, ["/etc/*"], baseline)
    assert {k: v["change"] for k, v in found.items()} == {
        "/etc/edited": "modified", "/etc/removed": "removed", "/etc/added": "created",
        "/etc/chmodded": "modified"}
    assert found["/etc/chmodded"]["changed_fields"] == ["mode"]
    assert "sha256" in found["/etc/edited"]["changed_fields"]
    assert found["/etc/edited"]["previous"]["sha256"] == hashlib.sha256(b"edited").hexdigest()
    assert found["/etc/removed"]["sha256"] is None
    assert {v["detected_by"] for v in found.values()} == {"sweep"}
    ctx = context(tmp_path, ["/etc/*"], baseline)
    for record in scan(ctx, NOT_RACY).records:
        assert not contract_violations(COLLECTOR, record)
    assert set(baseline_values(after)) == {"/etc/kept", "/etc/edited", "/etc/added",
                                           "/etc/chmodded"}
    again, _ = sweep(tmp_path, ["/etc/*"], after)  # sealed: the next run is quiet
    assert again == {}


def test_a_directory_s_own_mtime_is_not_a_change(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    _, baseline = sweep(tmp_path, ["/etc"])
    (etc / "new").write_text("x")
    found, _ = sweep(tmp_path, ["/etc"], baseline)
    assert list(found) == ["/etc/new"]


def test_a_partial_observation_changes_only_its_scope(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("1")
    paths = ["/one/*", "/two/*"]
    _, baseline = sweep(tmp_path, paths)
    (tmp_path / "one" / "f").write_text("changed")
    (tmp_path / "two" / "f").unlink()  # outside the scope below: not reported, kept
    observation = observe(context(tmp_path, paths), [b"/one"], NOT_RACY)
    diff = changes(observation, baseline, "watch")
    assert diff.changed == 1
    assert [(r.type, r.key) for r in diff.records] == [("file", "/one/f"),
                                                         (CHANGE_TYPE, "/one/f")]
    assert "/two/f" in baseline_values(diff.checkpoint)


def test_a_watch_batch_walks_only_towards_its_paths(tmp_path: Path) -> None:
    (tmp_path / "big").mkdir()
    for i in range(50):
        (tmp_path / "big" / f"f{i}").write_text(str(i))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    observation = observe(context(tmp_path, ["/big/*", "/other"]), [b"/big/f7"], NOT_RACY)
    assert list(observation.files) == ["/big/f7"]
    # the other 49 were not matched; /other, a literal, costs one lstat, and nothing
    # below it was walked
    assert observation.stats.matches == 2


def test_without_a_baseline_a_partial_observation_proposes_none(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "f").write_text("1")
    observation = observe(context(tmp_path, ["/one/*"]), [b"/one"], NOT_RACY)
    diff = changes(observation, None, "watch")
    assert (diff.records, diff.checkpoint, diff.changed) == ([], None, 0)


def test_an_unreadable_path_keeps_its_baseline(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("1")
    _, baseline = sweep(tmp_path, ["/d/f"])
    (tmp_path / "d" / "f").unlink()
    (tmp_path / "d").rmdir()
    (tmp_path / "d").write_text("a file where the directory was")  # ENOTDIR below it
    found, after = sweep(tmp_path, ["/d/f"], baseline)
    assert found == {}  # a source_unreadable record says why; no phantom removal
    assert "/d/f" in baseline_values(after)


def test_nothing_is_called_removed_when_a_pattern_was_truncated(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for name in "abc":
        (tmp_path / "d" / name).write_text(name)
    _, baseline = sweep(tmp_path, ["/d/*"])
    ctx = context(tmp_path, ["/d/*"], baseline)
    records = scan(ctx, Limits(racy_ns=0, max_matches=1)).records
    assert not [r for r in records if r.type == CHANGE_TYPE and r.data["change"] == "removed"]


def test_odd_names_survive_the_baseline(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    names = ["tab\there", "new\nline", 'quote"s', "back\\slash", "\u2028sep", "한글"]
    for name in names:
        (tmp_path / "d" / name).write_text(name)
    (tmp_path / "d").joinpath(os.fsdecode(b"not-utf8-\xff")).write_text("x")
    _, baseline = sweep(tmp_path, ["/d/*"])
    keys = set(baseline_values(baseline))
    assert keys == {f"/d/{n}" for n in names} | {"b64:L2Qvbm90LXV0Zjgt/w=="}
    for name in names:
        (tmp_path / "d" / name).write_text(name + " changed")
    found, _ = sweep(tmp_path, ["/d/*"], baseline)
    assert set(found) == {f"/d/{n}" for n in names}


def test_a_hash_not_read_this_time_is_no_change_and_keeps_the_known_one(
        tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("content")
    ctx = context(tmp_path, ["/d/*"])
    _, baseline = sweep(tmp_path, ["/d/*"])
    observation = observe(ctx, None, NOT_RACY)
    data = observation.files["/d/f"]
    data["sha256"], data["hash_omitted_reason"] = None, "changed_during_read"
    diff = changes(observation, baseline, "watch")
    assert diff.changed == 0
    known = baseline_values(baseline)["/d/f"]["sha256"]
    assert baseline_values(diff.checkpoint)["/d/f"]["sha256"] == known
    data["mtime"] = "2000-01-01T00:00:00.000000Z"  # but a real change still shows
    diff = changes(observation, baseline, "watch")
    assert diff.changed == 1
    assert [r.data["changed_fields"] for r in diff.records if r.type == CHANGE_TYPE] \
        == [["mtime"]]
