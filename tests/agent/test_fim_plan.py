"""agent/fim.py without a daemon: which directories are watched, the pending queue's
debounce, and reading our own inotify watches from /proc."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import pytest

from agent.fim import (
    CHILD_BATCH_PATHS,
    Batch,
    Pending,
    batch_from_json,
    batch_to_json,
    in_child,
    inotify_watched,
    rescan_records,
    unwatched_below,
    watch_roots,
)
from collector.files import COLLECTOR, Limits, changes, observe, scan
from collector.registry import CollectContext
from tests.collector.test_contract import contract_violations


def test_watch_roots_cover_globs_literals_directories_and_missing_parents(
        tmp_path: Path) -> None:
    (tmp_path / "etc" / "sudoers.d").mkdir(parents=True)
    (tmp_path / "etc" / "ssh").mkdir()
    (tmp_path / "etc" / "ssh" / "sshd_config").write_text("x")
    (tmp_path / "etc" / "dir").mkdir()
    root = os.fsencode(tmp_path)
    roots = watch_roots([f"{tmp_path}/etc/sudoers.d/*", f"{tmp_path}/etc/ssh/sshd_config",
                         f"{tmp_path}/etc/dir", f"{tmp_path}/etc/nginx/conf.d/*.conf",
                         "relative/ignored"])
    assert roots == {
        root + b"/etc/sudoers.d": True,  # a glob: everything that can match below
        root + b"/etc/ssh": False,  # a literal file: its directory only
        root + b"/etc": False,  # dir's parent, and where nginx/ will appear
        root + b"/etc/dir": True,  # a directory stands for all under it
    }


def test_pending_keeps_every_path_once_and_bounds_the_wait() -> None:
    woken = []
    pending = Pending(lambda: woken.append(1))
    assert pending.due_in(0.0, 0.5) is None
    for _ in range(1000):
        pending.add(b"/etc/hot")
    pending.add(b"/etc/other")
    assert len(woken) == 1  # only the first event wakes the sealer
    due = pending.due_in(0.0, 0.5)
    assert due is not None
    batch = pending.take()
    assert batch.paths == {b"/etc/hot", b"/etc/other"} and not batch.overflow
    assert pending.due_in(0.0, 0.5) is None


def test_a_storm_is_due_at_twice_the_debounce_after_its_first_event() -> None:
    pending = Pending(lambda: None)
    pending.add(b"/a")
    first = pending._first
    pending._last = first + 10.0  # events kept coming for 10 s
    due = pending.due_in(first, 0.5)
    assert due is not None and due == pytest.approx(1.0)


def test_a_batch_put_back_waits_and_keeps_its_paths() -> None:
    pending = Pending(lambda: None)
    pending.add(b"/a")
    batch = pending.take()
    batch.overflow = True
    pending.add(b"/b")
    pending.put_back(batch, 5.0)
    due = pending.due_in(pending._first, 0.5)
    assert due is not None and due > 4.0
    again = pending.take()
    assert again.paths == {b"/a", b"/b"} and again.overflow


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux")
def test_a_batch_for_the_child_keeps_every_path_byte_for_byte() -> None:
    odd = {b"/etc/a b", b"/etc/new\nline", b"/etc/\xff\xfe latin", b"/"}
    limits = {b"/var/\xffdir": "No space left on device (ENOSPC)", b"/srv": "x\ty"}
    for batch in (Batch(odd, False, limits), Batch(set(), True, {}), Batch({b"/x"})):
        assert batch_from_json(batch_to_json(batch)) == batch


def test_a_storm_or_a_rescan_is_sealed_in_the_child_a_few_paths_here() -> None:
    few = {b"/w/%d" % i for i in range(CHILD_BATCH_PATHS)}
    assert not in_child(Batch(few))
    assert in_child(Batch(few | {b"/w/one-more"}))
    assert in_child(Batch({b"/w/a"}, overflow=True))
    assert in_child(Batch({b"/w/a"}, limits={b"/w": "ENOSPC"}))


def test_our_inotify_watches_are_read_from_proc(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init()
    assert fd >= 0
    try:
        for path in (tmp_path, tmp_path / "sub"):
            assert libc.inotify_add_watch(fd, os.fsencode(path), 0x2) >= 0
        watched = inotify_watched()
        assert watched is not None
        st = os.stat(tmp_path / "sub")
        assert (st.st_dev, st.st_ino) in watched
        assert unwatched_below(os.fsencode(tmp_path), watched) == 1  # sub/deeper
    finally:
        os.close(fd)


def test_rescan_records_count_what_was_rescanned_and_changed(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text("1")
    ctx = CollectContext(root=tmp_path, options={"files": {"paths": ["/one/*", "/two/*"]}})
    scan(ctx, Limits(racy_ns=0))
    baseline = ctx.new_checkpoints["files"]
    (tmp_path / "two" / "f").write_text("changed")
    (tmp_path / "two" / "g").write_text("new")
    observation = observe(ctx, None, Limits(racy_ns=0))
    diff = changes(observation, baseline, "rescan")
    batch = Batch(overflow=True, limits={b"/two": "inotify watch limit reached (ENOSPC)"})
    records = rescan_records(batch, observation, diff)
    assert [(r.type, r.data["rescanned"], r.data["changed"]) for r in records] == [
        ("watch_overflow", 3, 2), ("watch_limit", 2, 2)]
    for record in records + diff.records:
        assert not contract_violations(COLLECTOR, record)
