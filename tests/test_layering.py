"""The layering of docs/DESIGN.md, held: `signing/` imports nothing of ours (a
regulator verifies with it alone), `collector/` never imports `agent/`, and
`gamsa --help` imports neither boto3 nor botocore (nor the collectors)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("signing", "collector", "agent")
# What each package may import of ours (docs/DESIGN.md, "Layout").
ALLOWED = {"signing": {"signing"}, "collector": {"collector", "signing"},
           "agent": {"agent", "collector", "signing"}}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of ours a module imports, at any depth (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(OURS)


@pytest.mark.parametrize("package", OURS)
def test_each_package_imports_only_the_layers_below(package: str) -> None:
    wrong = {str(path.relative_to(REPO)): sorted(imported_packages(path) - ALLOWED[package])
             for path in sorted((REPO / package).rglob("*.py"))}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os\ndef f():\n    from agent.cli import main\n"
                     "    import signing.keys\n", encoding="utf-8")
    assert imported_packages(probe) == {"agent", "signing"}


def test_only_agent_query_imports_duckdb() -> None:
    """DuckDB is the `audit` extra: one module imports it, inside `gamsa query`."""
    importers = []
    for path in sorted(REPO.glob("*/*.py")):
        if path.parts[-2] not in OURS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "duckdb" for n in names):
                importers.append(str(path.relative_to(REPO)))
    assert sorted(set(importers)) == ["agent/query.py"]


def test_help_imports_no_aws_sdk_and_no_collector() -> None:
    code = ("import sys\nfrom agent.cli import main\nsys.argv = ['gamsa', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('boto3', 'botocore', 's3transfer', 'psutil', 'duckdb', 'dask', 'distributed')"
            " or m.startswith('collector.'))\n"
            "print('HEAVY', heavy)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout[-500:]


def test_signing_needs_only_the_stdlib_and_cryptography() -> None:
    """`gamsa export` ships signing/ to inspectors who install only `cryptography`:
    any other import must be optional (msgspec, falling back) or of one backend
    (python-pkcs11, imported by signing/pkcs11.py when a pkcs11: URI is used)."""
    optional = {"msgspec", "pkcs11"}
    allowed = set(sys.stdlib_module_names) | {"signing", "cryptography", "__future__"}
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "signing").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = {node.module.split(".")[0]}
            else:
                continue
            found.setdefault(path.name, set()).update(names - allowed)
    assert {k: v for k, v in found.items() if v - optional} == {}
    assert found.get("canonical.py") == {"msgspec"} and found.get("pkcs11.py") == {"pkcs11"}
