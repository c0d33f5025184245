"""The layout's rules hold: import-linter's contracts (pyproject.toml) pass on the package,
and they do fail when a route imports Redis or a cycle appears."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_contracts_hold() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "service", tmp_path / "service", ignore=shutil.ignore_patterns("*.pyc"))
    return tmp_path


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        ("api/leak.py", "import redis\n", "Routes never touch Redis"),
        ("api/keys.py", "from service.infra import keys\n", "Routes never touch Redis"),
        ("infra/upward.py", "from service.auth import users\n", "Layers"),
        ("rules/tangle.py", "from service.infra import config\n", "leaves"),
        ("auth/loop.py", "from service.auth import tokens\n", "No import cycles"),
    ],
)
def test_a_broken_rule_is_caught(tmp_path: Path, module: str, source: str, broken: str) -> None:
    root = _copy_of_the_package(tmp_path)
    (root / "service" / module).write_text(source)
    if module == "auth/loop.py":  # tokens -> loop -> tokens
        tokens = root / "service" / "auth" / "tokens.py"
        tokens.write_text(tokens.read_text() + "\nfrom service.auth import loop  # noqa\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    broken_lines = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(broken in line for line in broken_lines), result.stdout
