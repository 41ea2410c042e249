"""`gamsa verify` on one process, on worker processes and on a Dask LocalCluster of two
worker processes over TCP: the same findings, in the same order, on a store with
planted defects (a deleted bundle, a flipped byte, a foreign key, a silent host)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from signing.bundle import parse_bundle_key
from tests.agent.mirror_fixtures import agent_key, seal
from tests.conftest import GamsaEnv

pytest.importorskip("distributed")

# A LocalCluster in its own process (its threads stay out of this test process),
# printing its scheduler's address and closing when its stdin closes.
_CLUSTER = """
import sys
from dask.distributed import LocalCluster
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                  dashboard_address=None) as cluster:
    print(cluster.scheduler_address, flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def cluster() -> Iterator[str]:
    with subprocess.Popen([sys.executable, "-c", _CLUSTER], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            address = proc.stdout.readline().strip()
            assert address.startswith("tcp://127.0.0.1:"), address
            yield address
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def verify(env: GamsaEnv, *args: str) -> tuple[int, dict[str, Any]]:
    result = env.run("verify", "--trust", agent_key(env), "--json", "--max-silence", "1h",
                     "--as-of", "2099-01-01T00:00:00Z", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_processes_and_dask_give_the_findings_of_one_process(
        gamsa_env: GamsaEnv, tmp_path: Path, cluster: str) -> None:
    seal(gamsa_env, 6)
    # A foreign key: another agent (its own key) seals into the same store.
    other = GamsaEnv(tmp_path / "other", tmp_path / "other.toml", tmp_path / "other-state",
                     gamsa_env.store)
    (tmp_path / "other").mkdir()
    other.write_config()
    seal(other, 2, host="foreign-host")
    names = sorted({parsed[0] for p in gamsa_env.store.rglob("*")
                    if (parsed := parse_bundle_key(str(p.relative_to(gamsa_env.store))))
                    and parsed[0].host_id == "test-host"}, key=lambda n: n.seq)
    for key in (names[2].records_key, names[2].manifest_key):  # a deleted bundle
        (gamsa_env.store / key).unlink()
    flipped = gamsa_env.store / names[4].records_key  # a flipped byte
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.unlink()
    flipped.write_bytes(bytes(data))

    one = verify(gamsa_env, "--workers", "1")
    two = verify(gamsa_env, "--workers", "2")
    dask = verify(gamsa_env, "--dask", cluster)
    assert one[0] == two[0] == dask[0] == 1
    from dask.distributed import Client

    with Client(cluster) as client:  # the workers that verified tuned malloc for it
        tuned = client.run(lambda: __import__("agent.memory").memory._batch_tuned)
    assert any(tuned.values()), tuned
    assert one[1]["findings"] == two[1]["findings"] == dask[1]["findings"]
    assert one[1]["summary"] == two[1]["summary"] == dask[1]["summary"]

    errors = [(f["code"], f["key"]) for f in one[1]["findings"] if f["severity"] == "error"]
    assert errors.count(("chain_gap", names[3].manifest_key)) == 1
    assert errors.count(("digest_mismatch", names[4].records_key)) == 1
    foreign = [k for c, k in errors if c == "untrusted_key"]
    assert len(foreign) == 2 and all("host=foreign-host/" in k for k in foreign)
    assert errors.count(("host_silent", "v1/host=test-host/")) == 1
    summary = one[1]["summary"]
    assert (summary["gaps"], summary["untrusted_keys"], summary["silent_hosts"]) == (1, 1, 1)
    assert summary["bundles"] == 5 and summary["hosts"] == 1
