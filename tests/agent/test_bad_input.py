"""Bad input gets one line naming the culprit and the documented exit code, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import GamsaEnv

USAGE = 2


def assert_one_line_error(result: object, code: int, *needles: str) -> None:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == code, (result.returncode, stderr)  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_malformed_toml(gamsa_env: GamsaEnv) -> None:
    gamsa_env.config.write_text('state_dir = "/tmp/x"\n[store\nurl = 1\n')
    assert_one_line_error(gamsa_env.run("collect"), USAGE, str(gamsa_env.config), "TOML")


def test_unknown_config_key(gamsa_env: GamsaEnv) -> None:
    gamsa_env.write_config(extra="[collectors.files]\npathz = []\n")
    assert_one_line_error(gamsa_env.run("config", "check"), USAGE, "collectors.files.pathz")


def test_wrong_type_in_config(gamsa_env: GamsaEnv) -> None:
    gamsa_env.config.write_text(gamsa_env.config.read_text().replace(
        "[store]\n", "[store]\nretention_days = \"long\"\n"))
    assert_one_line_error(gamsa_env.run("collect"), USAGE, "store.retention_days")


def test_missing_trust_key_file(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    assert gamsa_env.run("collect").returncode == 0
    missing = tmp_path / "nope.pem"
    assert_one_line_error(gamsa_env.run("verify", "--trust", str(missing)), USAGE, str(missing))


def test_world_readable_private_key(gamsa_env: GamsaEnv) -> None:
    assert gamsa_env.run("collect").returncode == 0
    key = gamsa_env.state_dir / "keys" / "agent.key"
    os.chmod(key, 0o644)
    assert_one_line_error(gamsa_env.run("collect"), USAGE, str(key), "chmod 600")
    # Nothing was sealed with the unsafe key.
    assert len(list(gamsa_env.store.rglob("*.manifest.dsse.json"))) == 1


def test_store_path_that_is_a_file(gamsa_env: GamsaEnv) -> None:
    gamsa_env.store.write_text("not a directory")
    assert_one_line_error(gamsa_env.run("collect"), 3, str(gamsa_env.store), "move it away")


def test_unknown_collector_name(gamsa_env: GamsaEnv) -> None:
    assert_one_line_error(gamsa_env.run("collect", "--collector", "nosuch"), USAGE, "nosuch")
    gamsa_env.write_config(collectors='["host", "nosuch"]')
    assert_one_line_error(gamsa_env.run("collect"), USAGE, "collectors.enabled", "nosuch")


def test_missing_config_file(gamsa_env: GamsaEnv) -> None:
    gamsa_env.config.unlink()
    assert_one_line_error(gamsa_env.run("collect"), USAGE, str(gamsa_env.config))


def test_verify_with_nothing_to_verify_is_a_finding(gamsa_env: GamsaEnv,
                                                    tmp_path: Path) -> None:
    """An empty or absent store, or a host with no bundles, is never "OK: 0 bundles"."""
    assert gamsa_env.run("collect").returncode == 0
    result = gamsa_env.run("verify", "--store", f"file://{tmp_path}/empty")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "no_bundles: v1/host=: no bundles found for any host" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("FAILED: 0 bundle(s)")
    result = gamsa_env.run("verify", "--host", "no-such-host", "--json")
    assert result.returncode == 1
    findings = json.loads(result.stdout)["findings"]
    assert [(f["code"], f["key"]) for f in findings] == [
        ("no_bundles", "v1/host=no-such-host/")]
    assert "no bundles found for host no-such-host" in findings[0]["message"]
    assert gamsa_env.run("verify").returncode == 0  # the host itself has its bundle


@pytest.mark.parametrize("url", ["ftp://x/y", "file://relative/path", "nonsense"])
def test_bad_store_url(gamsa_env: GamsaEnv, url: str) -> None:
    assert_one_line_error(gamsa_env.run("verify", "--store", url), USAGE, "store.url")
