"""Seeded secrets never reach a sealed byte, through the real `gamsa collect`.

A config file, a log line and a running process's command line each carry a
real-looking secret; after a collection with the files, logs and processes
collectors, no records object in the store contains any of them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from signing.bundle import iter_record_lines
from tests.conftest import GamsaEnv

SECRETS = ("Hunter2SecretE2E", "Sup3rS3cretE2E", "MyS3cretPw9E2E", "SecretTok3nE2E",
           "sk-proj-E2eAbCdEfGhIjKlMnOpQrStUv")


def test_seeded_secrets_never_reach_the_store(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("[db]\ndb_password = Hunter2SecretE2E\n"
                    "url = postgres://app:Sup3rS3cretE2E@db.internal/core\n"
                    "openai_key: sk-proj-E2eAbCdEfGhIjKlMnOpQrStUv\n")
    log = tmp_path / "auth.log"
    log.write_text("Nov 25 06:00:01 web-01 sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; "
                   "USER=root ; COMMAND=/usr/bin/mysql -uroot -pMyS3cretPw9E2E\n")
    gamsa_env.write_config(
        collectors='["files", "logs", "processes"]',
        extra=f'[collectors.files]\npaths = ["{conf}"]\n'
              f'[collectors.logs]\nsources = [{{ path = "{log}", format = "auth" }}]\n')
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "--token", "SecretTok3nE2E"])
    try:
        time.sleep(0.2)
        result = gamsa_env.run("collect")
        assert result.returncode == 0, result.stderr
    finally:
        child.kill()
        child.wait()
    sealed = b"\n".join(
        line for path in sorted(gamsa_env.store.rglob("*.records.jsonl.gz"))
        for line in iter_record_lines(path.read_bytes(), str(path)))
    # The evidence itself is there (so the test could fail), only the secrets are not.
    assert str(conf).encode() in sealed and b"REDACTED" in sealed
    assert f'"pid":{child.pid}'.encode() in sealed
    assert b'"action":"sudo"' in sealed
    for secret in SECRETS:
        assert secret.encode() not in sealed, secret
    spool_and_state = b"".join(p.read_bytes() for p in gamsa_env.state_dir.rglob("*")
                               if p.is_file() and p.suffix != ".gz")
    for secret in SECRETS:
        assert secret.encode() not in spool_and_state, secret
