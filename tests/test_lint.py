"""The code base stays ruff-clean, type-checks and keeps its import contracts.

Part of the one test command, so a lint error or a wrong import arrow fails the
suite instead of waiting for a review. The contracts live in ``.importlinter``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


def test_ruff_is_clean() -> None:
    if shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists():
        pytest.fail("ruff is not installed; install the dev extra: pip install -e '.[dev]'")
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    res = _run(ruff, "check", "bdn", "bench", "tests", "manifests")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_is_clean() -> None:
    res = _run(sys.executable, "-m", "mypy", "bdn")
    assert res.returncode == 0, res.stdout + res.stderr


def test_import_contracts_hold() -> None:
    lint_imports = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(lint_imports).exists():
        pytest.fail(
            "import-linter is not installed; install the dev extra: pip install -e '.[dev]'"
        )
    # --no-cache: the check takes about a second, and a cache would litter the checkout.
    res = _run(lint_imports, "--no-cache", "--no-logo")
    assert res.returncode == 0, res.stdout + res.stderr
