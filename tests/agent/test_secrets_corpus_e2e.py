"""The secrets corpus through the real `gamsa collect`: 0 seeded secrets in any byte
written, 0 policy lines altered in the sealed file content.

Every collector runs, with `collectors.files.paths` on the corpus
(tests/assets/secrets-corpus/root), the logs collector on its auth and AI gateway
logs, running processes whose command lines carry the corpus's command-line
secrets, and the agent's own environment carrying a proxy password. Then every
byte gamsa wrote is searched: the store (records decompressed, manifests, keys),
the state dir (spool decompressed, checkpoints, caches, status) and the agent's
stdout and stderr.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from signing.bundle import iter_record_lines
from tests.conftest import GamsaEnv

CORPUS = Path(__file__).resolve().parents[1] / "assets" / "secrets-corpus"
EXPECTED: dict[str, Any] = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
PROXY_SECRET = "Jk9SZw4UdXOnDE"  # in the agent's own HTTPS_PROXY


def all_secrets() -> list[str]:
    secrets = [s for f in EXPECTED["files"].values() for s in f["secrets"]]
    secrets += [s for f in EXPECTED["logs"].values() for s in f["secrets"]]
    secrets += [s for case in EXPECTED["argv"] for s in case["secrets"]]
    return [*secrets, PROXY_SECRET]


def start_commands(bin_dir: Path) -> list[subprocess.Popen[bytes]]:
    """One sleeping process per command-line case, its argv as in the corpus: a
    script named like the tool (`mysql`, `sshpass`) run by this Python, so
    /proc/<pid>/cmdline is `[python, .../mysql, -uroot, -pSECRET, ...]`."""
    bin_dir.mkdir()
    children = []
    for case in EXPECTED["argv"]:
        script = bin_dir / Path(case["argv"][0]).name
        script.write_text("import time\ntime.sleep(120)\n")
        children.append(subprocess.Popen([sys.executable, str(script), *case["argv"][1:]]))
    return children


def written_bytes(env: GamsaEnv) -> dict[str, bytes]:
    """Every file under the store and the state dir, gzip members decompressed."""
    out: dict[str, bytes] = {}
    for top in (env.store, env.state_dir):
        for path in top.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                out[str(path)] = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return out


def sealed_records(env: GamsaEnv) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(env.store.rglob("*.records.jsonl.gz"))
            for line in iter_record_lines(path.read_bytes(), str(path))]


def test_corpus_leaves_no_secret_in_any_byte_and_keeps_every_policy_line(
        gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    root = CORPUS / "root"
    logs = CORPUS / "logs"
    gamsa_env.write_config(
        collectors="[]",
        extra=f'[collectors.files]\npaths = ["{root}/**"]\n'
              f'[collectors.logs]\nsources = [\n'
              f'  {{ path = "{logs}/auth.log", format = "auth" }},\n'
              f'  {{ path = "{logs}/ai-gateway.log", format = "nginx-combined", '
              f'kind = "ai_gateway" }},\n]\n')
    children = start_commands(tmp_path / "bin")
    try:
        time.sleep(0.3)
        result = gamsa_env.run("collect", extra_env={
            "HTTPS_PROXY": f"http://gamsa:{PROXY_SECRET}@proxy.corp.bank.local:3128"})
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert result.returncode in (0, 1), result.stderr

    records = sealed_records(gamsa_env)
    files = {r["key"]: r["data"] for r in records
             if r["collector"] == "files" and r["type"] == "file"}
    # The evidence is there, so a search that finds nothing could have found something.
    assert {f"{root}/{rel}" for rel in EXPECTED["files"]} <= set(files)
    commands = [r["data"]["cmdline"] for r in records if r["type"] == "process"
                and any(str(tmp_path) in arg for arg in r["data"]["cmdline"] or [])]
    assert len(commands) == len(EXPECTED["argv"])
    sudo = [r for r in records if r["collector"] == "logs" and r["data"].get("action") == "sudo"]
    gateway = [r for r in records if r["collector"] == "logs"
               and r["data"].get("log", "").endswith("ai-gateway.log")]
    assert len(sudo) >= 9 and len(gateway) == 2

    everything = dict(written_bytes(gamsa_env))
    everything["stdout"] = result.stdout.encode()
    everything["stderr"] = result.stderr.encode()
    leaks = sorted({(secret, where) for secret in all_secrets()
                    for where, data in everything.items() if secret.encode() in data})
    assert leaks == [], "\n".join(f"{s} in {w}" for s, w in leaks)

    altered = []
    for rel, expected in EXPECTED["files"].items():
        data = files[f"{root}/{rel}"]
        if data["secret_file_rule"] is not None:
            assert (data["content"], data["content_omitted_reason"]) == (None, "secret_file")
            assert data["sha256"] is not None
            continue
        lines = set(data["content"].splitlines())
        altered += [(rel, line) for line in expected["keep"] if line not in lines]
    assert altered == []
    assert sum(1 for d in files.values() if d["secret_file_rule"] is not None) == 4
