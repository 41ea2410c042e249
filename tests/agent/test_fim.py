"""File integrity monitoring in `gamsa agent run` (agent/fim.py), as a real subprocess.

A tmp directory is watched through `[collectors.files] paths`; each test changes
files the way users and editors do and reads the bundles back from the file://
store, then `gamsa verify` must be clean with one chain.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.fim import CHILD_BATCH_PATHS
from tests.agent.test_daemon import Running, assert_verifies_one_chain, daemons, start
from tests.conftest import GAMSA, GamsaEnv, ok

__all__ = ["daemons"]  # the fixture, used by name

SEALED_WITHIN = 2.0  # seconds from a change to its sealed bundle (the bound)


def configure(env: GamsaEnv, patterns: list[str], extra: str = "") -> None:
    listed = ", ".join(json.dumps(p) for p in patterns)
    env.write_config(f'[collectors.files]\npaths = [{listed}]\ndebounce = "300ms"\n{extra}'
                     '[schedule]\ndefault = "1h"\nheartbeat = "1h"\n', collectors='["files"]')


def bundles(env: GamsaEnv) -> list[tuple[str, list[dict[str, Any]]]]:
    """(trigger, records) of every bundle in the store or the spool, in seq order."""
    found: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for manifest in [*env.store.rglob("*.manifest.dsse.json"),
                     *(env.state_dir / "spool").rglob("*.manifest.dsse.json")]:
        statement = json.loads(base64.b64decode(json.loads(manifest.read_bytes())["payload"]))
        records_path = manifest.with_name(manifest.name.replace(".manifest.dsse.json",
                                                                ".records.jsonl.gz"))
        try:
            lines = gzip.decompress(records_path.read_bytes()).splitlines()
        except OSError:  # moved from spool to store between the two reads
            continue
        seq = statement["predicate"]["chain"]["seq"]
        found[f"{seq:010d}"] = (statement["predicate"]["collection"]["trigger"],
                                [json.loads(line) for line in lines])
    return [found[k] for k in sorted(found)]


def changes(env: GamsaEnv, trigger: str = "file-change") -> list[dict[str, Any]]:
    return [r["data"] for t, records in bundles(env) if t == trigger
            for r in records if r["type"] == "file_change"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_sealed(d: Running, env: GamsaEnv, path: Path, change: str,
                digest: str | None, started: float) -> float:
    """Seconds from `started` until a file_change of `path` with `digest` is sealed."""
    def seen() -> bool:
        return any(c["path"] == str(path) and c["change"] == change and c["sha256"] == digest
                   for c in changes(env))
    d.wait_for(seen, f"{change} {path} sealed", timeout=30)
    return time.monotonic() - started


def test_edit_rename_over_delete_recreate_each_sealed(gamsa_env: GamsaEnv,
                                                      daemons: list[Running]) -> None:
    watched = gamsa_env.root / "watched"
    watched.mkdir()
    target = watched / "app.conf"
    target.write_bytes(b"v1\n")
    configure(gamsa_env, [f"{watched}/*.conf"])
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 1 (schedule")
    d.wait_line("watching 1 directory (inotify)")
    took = []

    started = time.monotonic()  # an edit in place
    with target.open("ab") as f:
        f.write(b"v2\n")
    took.append(wait_sealed(d, gamsa_env, target, "modified", sha(b"v1\nv2\n"), started))

    started = time.monotonic()  # an editor: write a temp file, rename it over
    temp = watched / ".app.conf.swp"
    temp.write_bytes(b"edited\n")
    os.rename(temp, target)
    took.append(wait_sealed(d, gamsa_env, target, "modified", sha(b"edited\n"), started))
    rename = next(c for c in changes(gamsa_env) if c["sha256"] == sha(b"edited\n"))
    assert "inode" in rename["changed_fields"], rename

    started = time.monotonic()
    target.unlink()
    took.append(wait_sealed(d, gamsa_env, target, "removed", None, started))

    started = time.monotonic()
    target.write_bytes(b"recreated\n")
    took.append(wait_sealed(d, gamsa_env, target, "created", sha(b"recreated\n"), started))

    started = time.monotonic()  # a new file matching the glob is covered too
    (watched / "new.conf").write_bytes(b"new\n")
    took.append(wait_sealed(d, gamsa_env, watched / "new.conf", "created", sha(b"new\n"),
                            started))
    (watched / "ignored.txt").write_bytes(b"not matched\n")  # no bundle for this one
    time.sleep(1.5)
    d.stop()
    assert max(took) <= SEALED_WITHIN + 1.0, took  # + polling and a loaded machine
    triggers = [t for t, _ in bundles(gamsa_env)]
    assert triggers == ["schedule"] + ["file-change"] * 5, triggers
    # each file-change bundle holds only the changed path: a file and its change record
    for _, records in bundles(gamsa_env)[1:]:
        assert {r["key"] for r in records} <= {str(target), str(watched / "new.conf")}
    assert_verifies_one_chain(gamsa_env)


def test_a_directory_made_later_under_a_glob_is_watched(gamsa_env: GamsaEnv,
                                                       daemons: list[Running]) -> None:
    base = gamsa_env.root / "etc"
    base.mkdir()
    configure(gamsa_env, [f"{base}/conf.d/*"])  # conf.d does not exist yet
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 1 (schedule")
    (base / "conf.d").mkdir()
    started = time.monotonic()
    (base / "conf.d" / "late.conf").write_bytes(b"late\n")
    wait_sealed(d, gamsa_env, base / "conf.d" / "late.conf", "created", sha(b"late\n"),
                started)
    started = time.monotonic()  # and the directory is now watched itself
    (base / "conf.d" / "late.conf").write_bytes(b"later\n")
    wait_sealed(d, gamsa_env, base / "conf.d" / "late.conf", "modified", sha(b"later\n"),
                started)
    d.stop()
    assert_verifies_one_chain(gamsa_env)


def test_a_change_while_stopped_is_sealed_at_start(gamsa_env: GamsaEnv,
                                                   daemons: list[Running]) -> None:
    watched = gamsa_env.root / "watched"
    watched.mkdir()
    (watched / "kept").write_bytes(b"same\n")
    (watched / "edited").write_bytes(b"before\n")
    (watched / "removed").write_bytes(b"gone soon\n")
    configure(gamsa_env, [str(watched)])  # a directory: everything under it
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 1 (schedule")
    d.stop()
    assert not changes(gamsa_env, "schedule")  # a first run has no baseline to differ from

    (watched / "edited").write_bytes(b"after\n")
    (watched / "removed").unlink()
    (watched / "added").write_bytes(b"new\n")
    d = start(daemons, gamsa_env, log="second.log")
    d.wait_line("sealed seq 2 (schedule")
    d.stop()
    found = {Path(c["path"]).name: c for c in changes(gamsa_env, "schedule")}
    assert set(found) == {"edited", "removed", "added"}, found
    assert found["edited"]["change"] == "modified"
    assert found["edited"]["sha256"] == sha(b"after\n")
    assert found["edited"]["previous"]["sha256"] == sha(b"before\n")
    assert found["removed"]["change"] == "removed" and found["removed"]["sha256"] is None
    assert found["added"]["change"] == "created"
    assert {c["detected_by"] for c in found.values()} == {"sweep"}
    assert_verifies_one_chain(gamsa_env)


def test_the_agent_s_own_writes_under_a_watched_directory_are_not_changes(
        gamsa_env: GamsaEnv, daemons: list[Running]) -> None:
    """Watching the directory that holds the state dir and the store must not make
    each sealing the cause of the next."""
    (gamsa_env.root / "app.conf").write_bytes(b"1\n")
    configure(gamsa_env, [f"{gamsa_env.root}/*.conf", str(gamsa_env.state_dir),
                          str(gamsa_env.store)])
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 1 (schedule")
    d.wait_line("shipped 1 bundle")
    started = time.monotonic()
    (gamsa_env.root / "app.conf").write_bytes(b"2\n")
    wait_sealed(d, gamsa_env, gamsa_env.root / "app.conf", "modified", sha(b"2\n"), started)
    time.sleep(3)  # sealing and shipping wrote to the state dir and the store meanwhile
    d.stop()
    assert [t for t, _ in bundles(gamsa_env)] == ["schedule", "file-change"]


def test_a_reload_watches_the_new_paths(gamsa_env: GamsaEnv, daemons: list[Running]) -> None:
    old, new = gamsa_env.root / "old", gamsa_env.root / "new"
    old.mkdir()
    new.mkdir()
    configure(gamsa_env, [f"{old}/*"])
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 1 (schedule")
    configure(gamsa_env, [f"{old}/*", f"{new}/*"])
    d.proc.send_signal(signal.SIGHUP)
    d.wait_line("config reloaded")
    assert sum("watching 2 directories" in line for line in d.lines()) == 1
    started = time.monotonic()
    (new / "added").write_bytes(b"after reload\n")
    (old / "edited").write_bytes(b"still watched\n")
    wait_sealed(d, gamsa_env, old / "edited", "created", sha(b"still watched\n"), started)
    wait_sealed(d, gamsa_env, new / "added", "created", sha(b"after reload\n"), started)
    d.stop()
    assert_verifies_one_chain(gamsa_env)


def test_watch_false_watches_nothing_and_a_sweep_still_finds_the_change(
        gamsa_env: GamsaEnv, daemons: list[Running]) -> None:
    watched = gamsa_env.root / "watched"
    watched.mkdir()
    (watched / "a").write_bytes(b"1\n")
    configure(gamsa_env, [f"{watched}/*"], "watch = false\n")
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 1 (schedule")
    (watched / "a").write_bytes(b"2\n")
    time.sleep(3)  # what we assert is that nothing happens
    assert not any("watching" in line for line in d.lines())
    assert [t for t, _ in bundles(gamsa_env)] == ["schedule"]
    ok(gamsa_env.run("collect"))  # the on-demand sweep compares with the baseline
    assert [(c["change"], c["detected_by"]) for c in changes(gamsa_env, "on-demand")] \
        == [("modified", "sweep")]
    d.stop()


@pytest.mark.slow
def test_a_storm_of_10000_writes_gives_few_bundles_and_the_last_hash(
        gamsa_env: GamsaEnv, daemons: list[Running]) -> None:
    watched = gamsa_env.root / "watched"
    watched.mkdir()
    target = watched / "hot"
    target.write_bytes(b"0")
    configure(gamsa_env, [f"{watched}/*"])
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 1 (schedule")
    started = time.monotonic()
    for i in range(10_000):
        with target.open("wb") as f:
            f.write(str(i).encode())
    writing = time.monotonic() - started
    final = sha(b"9999")
    wait_sealed(d, gamsa_env, target, "modified", final, time.monotonic())
    time.sleep(2)  # nothing more may come after the last state is sealed
    d.stop()
    storm = [t for t, _ in bundles(gamsa_env)].count("file-change")
    # a bundle at most every debounce (0.3 s), twice when a storm goes on: bounded by
    # how long the writes took, not by how many there were
    assert 1 <= storm <= writing / 0.3 + 3, (storm, writing)
    assert changes(gamsa_env)[-1]["sha256"] == final
    assert_verifies_one_chain(gamsa_env)


def seal_children(daemon_pid: int) -> list[psutil.Process]:
    """The daemon's live `agent.store_child seal` processes."""
    try:
        children = psutil.Process(daemon_pid).children()
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            if "agent.store_child" in child.cmdline() and "seal" in child.cmdline():
                found.append(child)
        except psutil.Error:
            pass  # exited meanwhile
    return found


@pytest.mark.slow
def test_a_storm_is_sealed_by_the_child_and_its_kill_loses_nothing(
        gamsa_env: GamsaEnv, daemons: list[Running]) -> None:
    """More than CHILD_BATCH_PATHS changed paths are sealed by the sweep child (the
    daemon's memory stays at its floor); that child killed -9 before it sealed leaves
    the batch to be sealed again: every new hash once, as `file-change`."""
    watched = gamsa_env.root / "watched"
    watched.mkdir()
    paths = [watched / f"f{i:04d}" for i in range(CHILD_BATCH_PATHS + 50)]
    for path in paths:
        path.write_bytes(b"v1\n")
    configure(gamsa_env, [f"{watched}/*"])
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 1 (schedule")
    for i, path in enumerate(paths):
        path.write_bytes(f"v2 {i}\n".encode())
    deadline = time.monotonic() + 20
    while not (found := seal_children(d.proc.pid)):
        assert time.monotonic() < deadline, f"no seal child for the storm: {d.lines()}"
        time.sleep(0.005)
    found[0].kill()  # in its interpreter start or its hashing: nothing sealed yet
    d.wait_line("sealing failed (file-change)")
    expected = {str(path): sha(f"v2 {i}\n".encode()) for i, path in enumerate(paths)}

    def all_sealed() -> bool:
        return {c["path"]: c["sha256"] for c in changes(gamsa_env)} == expected
    d.wait_for(all_sealed, "every change of the storm sealed", timeout=60)
    d.stop()
    sealed = changes(gamsa_env)
    assert sorted(c["path"] for c in sealed) == sorted(expected)  # each once
    assert {(c["change"], c["detected_by"]) for c in sealed} == {("modified", "watch")}
    assert_verifies_one_chain(gamsa_env)


@pytest.mark.slow
def test_an_inotify_overflow_rescans_and_seals_the_right_state(
        gamsa_env: GamsaEnv, daemons: list[Running]) -> None:
    """A real overflow: the daemon is stopped (SIGSTOP) while more events than
    fs.inotify.max_queued_events are made, so the kernel drops events."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events is {limit}: too many events to make in a test")
    watched = gamsa_env.root / "watched"
    watched.mkdir()
    names = [watched / "a", watched / "b"]
    for path in names:
        path.write_bytes(b"")
    (watched / "doomed").write_bytes(b"x")
    configure(gamsa_env, [f"{watched}/*"])
    d = start(daemons, gamsa_env)
    d.wait_line("sealed seq 1 (schedule")
    d.wait_line("watching 1 directory")
    d.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(limit + 1000):  # alternating, so the kernel cannot merge them
            with names[i % 2].open("ab") as f:
                f.write(b"x")
        (watched / "doomed").unlink()  # lost among the dropped events
    finally:
        d.proc.send_signal(signal.SIGCONT)
    d.wait_line("inotify queue overflow", timeout=30)

    def rescanned() -> bool:
        return any(r["type"] == "watch_overflow" for _, records in bundles(gamsa_env)
                   for r in records)
    d.wait_for(rescanned, "a watch_overflow record", timeout=30)
    d.stop()
    overflow = next(r["data"] for _, records in bundles(gamsa_env) for r in records
                    if r["type"] == "watch_overflow")
    # a and b may have been sealed from the events read before the overflow
    assert overflow["rescanned"] == 2 and overflow["changed"] >= 1, overflow
    last = {Path(c["path"]).name: c for c in changes(gamsa_env)}
    sizes = {"a": (limit + 1000 + 1) // 2, "b": (limit + 1000) // 2}
    for name, size in sizes.items():
        assert last[name]["sha256"] == sha(b"x" * size), name
    # its event was dropped by the kernel: only the rescan could find it
    assert (last["doomed"]["change"], last["doomed"]["detected_by"]) == ("removed", "rescan")
    assert_verifies_one_chain(gamsa_env)


class Limited(Running):
    """A daemon started under a command prefix (here: a user namespace)."""

    def __init__(self, env: GamsaEnv, prefix: list[str]) -> None:
        self.log_path = env.root / "daemon.log"
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("GAMSA_", "NOTIFY_SOCKET", "WATCHDOG_"))}
        environ["GAMSA_CONFIG"] = str(env.config)
        with self.log_path.open("w") as err:
            self.proc = subprocess.Popen([*prefix, GAMSA, "agent", "run"], env=environ,
                                         stdout=subprocess.DEVNULL, stderr=err)


def _userns_with_watch_limit() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Ur", "sh", "-c",
                            "echo 1 > /proc/sys/user/max_inotify_watches"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _userns_with_watch_limit(),
                    reason="needs a user namespace with a writable max_inotify_watches")
def test_watch_limits_fall_back_to_polling_with_a_record(
        gamsa_env: GamsaEnv, daemons: list[Running], tmp_path: Path) -> None:
    """Real limits: the daemon runs in a user namespace allowed two inotify watches.
    `first` takes one; `second` gets its own but not its subdirectory's (watchdog
    skips that silently: found from /proc/self/fdinfo); `third` is refused (ENOSPC).
    Both are polled instead, each with a watch_limit record."""
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    for directory in (first, second / "sub", third):
        directory.mkdir(parents=True)
    (third / "polled").write_bytes(b"1\n")
    configure(gamsa_env, [f"{first}/*", f"{second}/**", f"{third}/*"])
    wrapper = tmp_path / "limited.sh"
    wrapper.write_text('echo 2 > /proc/sys/user/max_inotify_watches && exec "$@"\n')
    d = Limited(gamsa_env, ["unshare", "-Ur", "sh", str(wrapper)])
    daemons.append(d)
    d.wait_line("sealed seq 1 (schedule")

    def limits() -> dict[str, str]:
        return {r["data"]["path"]: r["data"]["reason"] for _, records in bundles(gamsa_env)
                for r in records if r["type"] == "watch_limit"}
    d.wait_for(lambda: len(limits()) == 2, "two watch_limit records")
    assert "ENOSPC" in limits()[str(third)]
    assert "1 directory below it not watched" in limits()[str(second)]
    started = time.monotonic()
    (third / "polled").write_bytes(b"2\n")
    wait_sealed(d, gamsa_env, third / "polled", "modified", sha(b"2\n"), started)
    started = time.monotonic()
    (second / "sub" / "deep").write_bytes(b"d\n")
    wait_sealed(d, gamsa_env, second / "sub" / "deep", "created", sha(b"d\n"), started)
    started = time.monotonic()  # the first directory still has its inotify watch
    (first / "watched").write_bytes(b"w\n")
    took = wait_sealed(d, gamsa_env, first / "watched", "created", sha(b"w\n"), started)
    d.stop()
    assert took <= SEALED_WITHIN + 1.0
    assert_verifies_one_chain(gamsa_env)


@pytest.mark.slow
@pytest.mark.skipif(not _userns_with_watch_limit(),
                    reason="needs a user namespace with writable inotify limits")
def test_without_inotify_everything_is_polled_with_a_warning(
        gamsa_env: GamsaEnv, daemons: list[Running], tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "a").write_bytes(b"1\n")
    configure(gamsa_env, [f"{watched}/*"])
    wrapper = tmp_path / "no-inotify.sh"
    wrapper.write_text('echo 0 > /proc/sys/user/max_inotify_instances && exec "$@"\n')
    d = Limited(gamsa_env, ["unshare", "-Ur", "sh", str(wrapper)])
    daemons.append(d)
    d.wait_line("sealed seq 1 (schedule")
    d.wait_line("inotify unavailable")
    d.wait_line("watching 1 directory (polling)")
    started = time.monotonic()
    (watched / "a").write_bytes(b"2\n")
    wait_sealed(d, gamsa_env, watched / "a", "modified", sha(b"2\n"), started)
    d.stop()
    assert_verifies_one_chain(gamsa_env)


@pytest.mark.slow
def test_a_kill_at_any_step_neither_loses_nor_repeats_a_change(tmp_path: Path) -> None:
    """The baseline moves with the chain head: `gamsa collect` killed at each
    state-writing step, then run again, seals the change exactly once."""
    step = 1
    while True:
        env = GamsaEnv(tmp_path / str(step), tmp_path / str(step) / "agent.toml",
                       tmp_path / str(step) / "state", tmp_path / str(step) / "store")
        watched = env.root / "watched"
        watched.mkdir(parents=True)
        (watched / "f").write_bytes(b"v1\n")
        configure(env, [f"{watched}/*"])
        ok(env.run("collect"))
        (watched / "f").write_bytes(b"v2\n")
        crashed = env.run("collect", crash_at=step)
        ok(env.run("collect"))
        sealed = [c for c in changes(env, "on-demand") if c["sha256"] == sha(b"v2\n")]
        assert len(sealed) == 1, (step, crashed.stderr, sealed)
        assert_verifies_one_chain(env)
        if crashed.returncode == 0:
            break  # past the last step
        assert "crashpoint" in crashed.stderr
        step += 1
    assert step > 5  # the steps were really there
