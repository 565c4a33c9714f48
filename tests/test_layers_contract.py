"""The import-linter contracts in pyproject.toml catch an import that points up the layers.

The package is copied to a temporary directory, an import from the core (``models``) up to a tool
(``interop``) is added to the copy, and ``lint-imports`` is run on it with the project's own
contracts: it must name the new import. The unchanged copy must not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
VIOLATION = "glassformer.models.outputs -> glassformer.interop"


def lint(tmp_path: Path, inject: bool) -> tuple[str, int]:
    tree = tmp_path / ("injected" if inject else "clean")
    shutil.copytree(ROOT / "src" / "glassformer", tree / "src" / "glassformer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    if inject:
        outputs = tree / "src" / "glassformer" / "models" / "outputs.py"
        outputs.write_text(outputs.read_text() + "\nimport glassformer.interop  # noqa: E402,F401  (injected)\n")
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run([str(LINT), "--config", "pyproject.toml", "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)
    return done.stdout + done.stderr, done.returncode


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e .[dev])")
def test_an_import_from_models_to_interop_breaks_the_contracts(tmp_path):
    out, code = lint(tmp_path, inject=True)
    assert code != 0 and VIOLATION in out, out[-2000:]
    assert "BROKEN" in out
    clean, _ = lint(tmp_path, inject=False)
    assert VIOLATION not in clean and "Layers: top > tools > data > core > base" in clean
