"""Collector options and schedules come from the COLLECTOR declarations
(collector/options.py): parsing, defaults, the typed accessor, effective TOML."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import Config, config_as_toml, load_config
from collector import files, logs
from collector._endpoints import AI_ENDPOINTS
from collector.registry import CollectContext, all_collectors
from signing.errors import USAGE, UsageError

REPO = Path(__file__).resolve().parents[2]


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, {"HOME": str(tmp_path)})


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(UsageError) as info:
        load(tmp_path, text)
    assert info.value.exit_code == USAGE
    assert "\n" not in info.value.diagnostics()
    return str(info.value)


def test_typed_accessor_gives_the_value_or_the_declared_default(tmp_path: Path) -> None:
    cfg = load_config(None, {"HOME": str(tmp_path)})
    assert cfg.collectors.value(files.PATHS) == list(files.DEFAULT_PATHS)
    assert cfg.collectors.value(files.HASH_MAX_BYTES) == 1024**3
    assert cfg.collectors.value(files.WATCH) is True
    assert cfg.collectors.value(AI_ENDPOINTS) == []
    assert cfg.collectors.options == {}  # nothing differs from the declarations
    path = tmp_path / "agent.toml"
    path.write_text('[collectors.files]\nwatch = false\nhash_max_bytes = "2MiB"\n'
                    '[collectors.network]\nai_endpoints = ["api.openai.com"]\n')
    cfg = load_config(path, {"HOME": str(tmp_path)})
    assert cfg.collectors.value(files.WATCH) is False
    assert cfg.collectors.value(files.HASH_MAX_BYTES) == 2 * 1024**2
    assert cfg.collectors.value(AI_ENDPOINTS) == ["api.openai.com"]
    assert cfg.collectors.value(files.CONTENT_MAX_BYTES) == 65536


def test_context_value_falls_back_to_the_declaration() -> None:
    ctx = CollectContext(options={"logs": {"max_bytes_per_run": 5}})
    assert ctx.value(logs.MAX_BYTES_PER_RUN) == 5
    assert ctx.value(logs.FIRST_READ_MAX_BYTES) == 64 << 20
    assert ctx.value(logs.SOURCES)[0] == {"path": "/var/log/auth.log", "format": "auth",
                                          "kind": ""}


@pytest.mark.parametrize(("text", "fragment"), [
    ('[collectors.logs]\nmax_bytes_per_run = "lots"\n',
     '"collectors.logs.max_bytes_per_run" must be a size, got "lots"'),
    ("[collectors.logs]\nfirst_read_max_bytes = true\n",
     '"collectors.logs.first_read_max_bytes" must be a size, got boolean'),
    ("[collectors.accounts]\nx = 1\n", 'unknown key "collectors.accounts.x"'),
    ("[collectors.filez]\npaths = []\n", 'unknown key "collectors.filez"'),
    ("[collectors.logs]\nsources = [{ journal = 'system', format = 'auth' }]\n",
     '"collectors.logs.sources[0].format" must be "journald" for a journal source'),
    ("[collectors.logs]\nsources = [{ path = '/x', format = 'journald' }]\n",
     '"collectors.logs.sources[0].format" "journald" needs a journal source'),
    ("[collectors.logs]\nsources = [{ path = '/x', journal = 'system', format = 'auth' }]\n",
     '"collectors.logs.sources[0]" has both path and journal'),
    ("[collectors.logs]\nsources = [{ journal = 'var/log/journal', format = 'journald' }]\n",
     '"collectors.logs.sources[0].journal" must be "system" or an absolute path'),
    ("[collectors.logs]\nsources = [{ path = '/x', format = 'auth', skip_if_exists = 'a' }]\n",
     '"collectors.logs.sources[0].skip_if_exists" must be an absolute path'),
])
def test_declared_checks_name_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error(tmp_path, text)


def test_unknown_collector_table_suggests_a_collector(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        load(tmp_path, "[collectors.filez]\npaths = []\n")
    assert info.value.hint == 'did you mean "collectors.files"?'


def test_declared_schedule_applies_unless_overridden(tmp_path: Path) -> None:
    declared = {name: c.schedule_seconds for name, c in all_collectors().items()}
    assert declared["packages"] == 6 * 3600
    cfg = load_config(None, {"HOME": str(tmp_path)})
    assert cfg.schedule.interval("packages") == 6 * 3600
    assert cfg.schedule.interval("accounts") == cfg.schedule.default == 900
    cfg = load(tmp_path, '[schedule]\npackages = "1h"\ndefault = "5m"\n')
    assert cfg.schedule.interval("packages") == 3600
    assert cfg.schedule.interval("accounts") == 300


def test_effective_toml_loads_back_and_names_declared_schedules(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[collectors.logs]\nsources = [{ journal = "/j", format = '
                         '"journald", kind = "k" }]\n')
    text = config_as_toml(cfg)
    assert "# packages = 21600" in text
    data = tomllib.loads(text)
    assert data["collectors"]["files"]["watch"] is True
    assert data["collectors"]["logs"]["sources"] == [
        {"journal": "/j", "format": "journald", "kind": "k"}]
    again = tmp_path / "again.toml"
    again.write_text(text)
    assert load_config(again, {"HOME": str(tmp_path)}).collectors == cfg.collectors


def test_loading_imports_only_the_collectors_the_file_configures(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[collectors.files]\nwatch = false\n')
    probe = ("import json, sys; from pathlib import Path; from agent.config import load_config; "
             "load_config(Path(sys.argv[1]), {}); "
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('collector.'))))")
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                         text=True, check=True, cwd=REPO)
    imported = json.loads(out.stdout)
    assert "collector.files" in imported
    assert "collector.processes" not in imported and "collector.logs" not in imported
