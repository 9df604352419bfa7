"""The layers gate (import-linter's contracts in pyproject.toml) holds on the tree, and fails
on an import that points up — checked on a copy of the package with one such import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_its_layers() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout
    assert "3 kept, 0 broken" in done.stdout


def test_an_import_that_points_up_fails_the_gate(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proxy", tmp_path / "proxy", ignore=shutil.ignore_patterns("static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    money = tmp_path / "proxy" / "core" / "money.py"
    money.write_text(money.read_text() + "\nimport proxy.storage.keys  # points up\n")
    done = lint(tmp_path)
    assert done.returncode == 1, done.stdout
    assert "proxy.core.money -> proxy.storage.keys" in done.stdout
