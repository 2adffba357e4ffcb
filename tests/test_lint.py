"""The code base stays ruff-clean and type-checks (STYLE.md §10): part of the one test command."""

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
