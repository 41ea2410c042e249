"""`[privacy]` in config: only personal fields may be named, the key must exist, and
the check costs nothing when nothing is pseudonymized."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from signing.errors import UsageError
from tests.conftest import GamsaEnv


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n' + text)
    return path


@pytest.mark.parametrize(("names", "fragment"), [
    ('["user", "src"]', "\"privacy.pseudonymize[1]\": 'src' is a field no collector emits"),
    ('["hostname"]', "\"privacy.pseudonymize[0]\": 'hostname' is not a personal field"),
])
def test_a_field_no_record_has_is_a_config_error(tmp_path: Path, names: str,
                                                 fragment: str) -> None:
    path = write(tmp_path, f"[privacy]\npseudonymize = {names}\n")
    with pytest.raises(UsageError) as info:
        load_config(path, {})
    line = info.value.diagnostics()
    assert line.startswith(f"{path}: ") and fragment in line
    assert "personal fields: account, address," in line
    assert info.value.exit_code == 2


def test_every_documented_example_names_personal_fields(tmp_path: Path) -> None:
    path = write(tmp_path, '[privacy]\npseudonymize = ["account", "source", "data_subject", '
                           '"target_account", "user", "home", "gecos", "comment", "host", '
                           '"address", "owner", "members"]\n')
    assert len(load_config(path, {}).privacy.pseudonymize) == 12
    shipped = Path(__file__).parents[2] / "packaging" / "agent.toml"
    assert load_config(shipped, {}).privacy.pseudonymize == []


def test_collectors_are_imported_only_when_something_is_pseudonymized(tmp_path: Path) -> None:
    probe = ("import sys; from pathlib import Path; from agent.config import load_config; "
             "load_config(Path(sys.argv[1]), {}); print('collector.processes' in sys.modules)")
    for text, imported in (("", "False"), ('[privacy]\npseudonymize = ["user"]\n', "True")):
        path = write(tmp_path, text)
        out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parents[2])
        assert out.stdout.strip() == imported, text


def test_config_check_names_a_missing_key_file(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "pseudonym.key"
    gamsa_env.write_config(extra=f'[privacy]\npseudonymize = ["account"]\n'
                                 f'key_file = "{key}"\n')
    result = gamsa_env.run("config", "check")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"privacy.key_file {key}: not found" in result.stderr
    assert "head -c 32 /dev/urandom" in result.stderr
    key.parent.mkdir()
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    assert gamsa_env.run("config", "check").returncode == 0


def test_config_check_ignores_the_key_when_nothing_is_pseudonymized(gamsa_env: GamsaEnv,
                                                                    tmp_path: Path) -> None:
    gamsa_env.write_config(extra=f'[privacy]\nkey_file = "{tmp_path / "absent.key"}"\n')
    result = gamsa_env.run("config", "check")
    assert result.returncode == 0, result.stderr
