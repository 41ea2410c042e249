"""The daemon's store work in short-lived children (agent/store_child.py), and its
`sealed` log line.

With an S3 store (moto over HTTP on loopback), a daemon process seals, looks at the
store and ships without ever importing boto3 or botocore itself.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.daemon import Daemon, Log
from agent.store_child import run_child
from collector._linux import unreadable_record
from collector.record import Record
from collector.registry import all_collectors, coverage_gap
from signing.errors import RUNTIME, USAGE
from tests.agent.s3_fixtures import S3GamsaEnv
from tests.collector.test_coverage import fake
from tests.conftest import GamsaEnv

IN_A_DAEMON = """
import json, sys
from pathlib import Path
from agent.config import load_config
from agent.daemon import Daemon, Log, Shipper
from collector.registry import all_collectors

path = Path(sys.argv[1])
daemon = Daemon(lambda: load_config(path), lambda c: [all_collectors()["host"]], Log("json"))
sealed = daemon.seal(["host"], "schedule")
shipped = Shipper(daemon).ship(lambda: None)
print(json.dumps({"sealed": sealed, "ship_error": shipped.error if shipped else "nothing",
                  "store_modules": sorted(m for m in sys.modules
                                          if m.split(".")[0] in ("boto3", "botocore"))}))
"""


def test_an_s3_daemon_never_imports_a_store_client(s3_gamsa: S3GamsaEnv,
                                                   s3_client: Any) -> None:
    result = subprocess.run([sys.executable, "-c", IN_A_DAEMON, str(s3_gamsa.config)],
                            env=s3_gamsa.environment(), capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome == {"sealed": True, "ship_error": None, "store_modules": []}, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    shipped = [e for e in events if e["event"] == "shipped"]
    assert shipped and shipped[0]["count"] == 1, events  # the child's line, relayed
    assert not any(e["event"] == "store_unchecked" for e in events), events
    keys = [o["Key"] for o in s3_client.list_objects_v2(
        Bucket=s3_gamsa.bucket, Prefix=s3_gamsa.prefix)["Contents"]]
    manifest = next(k for k in keys if k.endswith(".manifest.dsse.json"))
    envelope = json.loads(s3_client.get_object(Bucket=s3_gamsa.bucket, Key=manifest)["Body"]
                          .read())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    # the look ran (in its child): the bundle carries the store's clock
    assert statement["predicate"]["collection"]["clock_check"]["source"] == "store_date"
    assert s3_gamsa.spool_names() == []


def test_sealed_line_names_the_gap_reasons_of_a_partial_collector(gamsa_env: GamsaEnv) -> None:
    denied = PermissionError(13, "Permission denied")
    records: list[Record] = [
        coverage_gap("fake", "exe", "access denied", 3),
        unreadable_record("fake", "/home/alice/.ssh/authorized_keys", denied)]
    config = load_config(gamsa_env.config)
    for fmt in ("text", "json"):
        stream = io.StringIO()
        daemon = Daemon(lambda: config, lambda _c: [fake(records)], Log(fmt, stream))
        assert daemon.seal(["fake"], "schedule", [fake(records)])  # sealed here
        line = stream.getvalue().splitlines()[0]
        assert "alice" not in line and "/home" not in line  # reasons and counts only
        if fmt == "text":
            assert line.startswith("gamsa: sealed seq 1 (schedule: fake partial (exe: access "
                                   "denied x3; unreadable: "), line
        else:
            event = json.loads(line)
            assert event["collectors"] == {"fake": "partial"}
            assert {g["reason"]: g["count"] for g in event["gaps"]["fake"]} == {
                "exe: access denied": 3,
                "unreadable: PermissionError: Permission denied": 1}, event["gaps"]


def test_a_sweep_is_sealed_in_a_child_a_file_change_here(gamsa_env: GamsaEnv) -> None:
    def broken(_ctx: Any) -> list[Record]:
        raise RuntimeError("ran in the daemon")

    # The daemon's own copy of `host` fails: only a sweep sealed elsewhere can be ok.
    host = dataclasses.replace(all_collectors()["host"], collect=broken)
    stream = io.StringIO()
    daemon = Daemon(lambda: load_config(gamsa_env.config), lambda _c: [host],
                    Log("json", stream))
    assert daemon.seal(["host"], "schedule")
    assert daemon.seal(["host"], "file-change", [host])
    sealed = [e for e in map(json.loads, stream.getvalue().splitlines())
              if e["event"] == "sealed"]
    assert [(e["seq"], e["trigger"], e["collectors"]) for e in sealed] == [
        (1, "schedule", {"host": "ok"}), (2, "file-change", {"host": "error"})]
    assert gamsa_env.run("ship").returncode == 0
    verified = gamsa_env.run("verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert [c["bundles"] for c in json.loads(verified.stdout)["chains"]] == [2]


def test_a_child_that_cannot_start_is_an_error_not_a_dead_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    relayed: list[dict[str, Any]] = []
    result = run_child("ship", {}, relayed.append, lambda: None)
    assert result.returncode == RUNTIME
    assert result.error == ("cannot start the store child /nonexistent/python3: "
                            "No such file or directory")
    assert relayed == []


def test_a_child_crash_is_relayed_line_by_line(gamsa_env: GamsaEnv) -> None:
    relayed: list[dict[str, Any]] = []
    result = run_child("ship", {"config": "not = [toml", "source": "x"}, relayed.append,
                       lambda: None)
    assert result.returncode == USAGE
    assert result.error is not None and "not valid TOML" in result.error
    assert relayed == []  # the error is the result's, logged once by the caller


def test_a_deadline_of_now_ends_a_hanging_child_at_once(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A preempted ship's deadline is "now" at every look: the child is ended within the
    poll and the kill grace, not left to finish (its own timeouts, a hanging store)."""
    hangs = tmp_path / "python3"
    hangs.write_text("#!/bin/sh\nexec sleep 30\n")
    hangs.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(hangs))
    started = time.monotonic()
    result = run_child("ship", {}, [].append, time.monotonic)
    took = time.monotonic() - started
    assert result.killed and result.returncode < 0, result
    assert took < 5, took


@pytest.mark.slow
def test_a_storm_batch_sealed_in_the_child_says_file_change_or_nothing(
        gamsa_env: GamsaEnv) -> None:
    from agent.fim import Batch, batch_to_json
    from collector.agent import JOURNAL_FILE
    from tests.agent.test_fim import changes, configure, sha

    watched = gamsa_env.root / "watched"
    watched.mkdir()
    paths = [watched / f"f{i}" for i in range(3)]
    for path in paths:
        path.write_bytes(b"v1")
    configure(gamsa_env, [f"{watched}/*"])
    stream = io.StringIO()
    daemon = Daemon(lambda: load_config(gamsa_env.config),
                    lambda c: [all_collectors()["files"]], Log("json", stream))
    assert daemon.seal(["files"], "schedule")  # the baseline
    every = Batch({bytes(p) for p in paths})
    assert daemon.seal_batch_in_child(batch_to_json(every)) is None  # nothing differs
    paths[1].write_bytes(b"v2")
    paths[2].unlink()
    assert daemon.seal_batch_in_child(batch_to_json(every)) is True
    assert daemon.seal_batch_in_child(batch_to_json(Batch(overflow=True))) is True
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["seq"], e["trigger"]) for e in events if e["event"] == "sealed"] == [
        (1, "schedule"), (2, "file-change"), (3, "file-change")]
    assert any(e["event"] == "watch_overflow" for e in events)  # the child's line, relayed
    assert gamsa_env.run("ship").returncode == 0
    assert [(c["path"], c["change"], c["sha256"], c["detected_by"])
            for c in changes(gamsa_env)] == [
        (str(paths[1]), "modified", sha(b"v2"), "watch"),
        (str(paths[2]), "removed", None, "watch")]
    noted = (gamsa_env.state_dir / JOURNAL_FILE).read_text()  # by the child
    assert '"watch_overflow"' in noted and '"watcher":"files"' in noted.replace(" ", "")


def test_a_failed_sealing_tells_systemd_one_status_line(gamsa_env: GamsaEnv, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A file name in the reason cannot smuggle another sd_notify assignment."""
    import socket

    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        config = load_config(gamsa_env.config)
        daemon = Daemon(lambda: config, lambda _c: [], Log("json", io.StringIO()))
        daemon.seal_not_done("file-change", ["files"], "cannot read /tmp/x\nWATCHDOG=trigger")
        datagram = listener.recv(4096).decode()
    assert datagram == ("STATUS=sealing failed (file-change): cannot read /tmp/x "
                        "WATCHDOG=trigger")
