"""`gamsa config check` and `gamsa collectors`: what they print, through the real CLI."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from agent.config import config_as_dict, config_as_toml, load_config
from collector.registry import COMMON_RECORD_TYPES, all_collectors
from tests.conftest import GamsaEnv


def test_config_check_prints_every_effective_setting(gamsa_env: GamsaEnv,
                                                     tmp_path: Path) -> None:
    gamsa_env.write_config(extra='[schedule]\npackages = "6h"\n[spool]\nmax_bytes = "2MiB"\n')
    result = gamsa_env.run("config", "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# OK: {gamsa_env.config};")
    printed = tomllib.loads(result.stdout)
    assert printed["schedule"] == {"default": 900, "heartbeat": 300, "packages": 21600,
                                   "timeout": 600, "timeouts": {}}
    assert printed["spool"] == {"max_bytes": 2 * 1024 * 1024}
    assert printed["store"]["url"] == gamsa_env.store_url
    assert printed["collectors"]["files"]["watch"] is True  # a default, filled in
    # what it prints is a config file that loads to the very same settings
    again = tmp_path / "again.toml"
    again.write_text(result.stdout)
    env = dict(os.environ)
    first = config_as_dict(load_config(gamsa_env.config, env))
    second = config_as_dict(load_config(again, env))
    for data in (first, second):
        del data["source"], data["sha256"]
    assert first == second


def test_config_as_toml_round_trips_odd_strings(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('host_id = "h-1"\n[collectors.files]\npaths = ["/etc/a b/\\"q\\"/é*"]\n'
                    '[collectors.logs]\nsources = [{ path = "/var/log/x", format = "auth", '
                    'kind = "ai_gateway" }]\n')
    cfg = load_config(path, dict(os.environ))
    again = tmp_path / "b.toml"
    again.write_text(config_as_toml(cfg))
    assert load_config(again, dict(os.environ)).collectors == cfg.collectors


def test_config_check_json(gamsa_env: GamsaEnv) -> None:
    result = gamsa_env.run("config", "check", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["resolved_host_id"] and data["schedule"]["default"] == 900


def test_collectors_lists_record_types_wrapped(gamsa_env: GamsaEnv) -> None:
    result = gamsa_env.run("collectors", extra_env={"COLUMNS": "60"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 60
    text = " ".join(line.strip() for line in lines)
    for collector in all_collectors().values():
        assert f"{collector.name} (version {collector.version};" in text
        assert "record types: " + ", ".join(collector.record_types) in text
        if collector.options:
            assert (f"options [collectors.{collector.name}]: "
                    + ", ".join(o.name for o in collector.options)) in text
    for common in COMMON_RECORD_TYPES:
        assert common in text
