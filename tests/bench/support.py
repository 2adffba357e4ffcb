"""Helpers the bench tests share: a quiet console, the ``bdn bench`` parser, tool checks."""

from __future__ import annotations

import argparse
import io
import shutil

import pytest
from rich.console import Console

from bench import build_parser


def quiet_console() -> Console:
    """A wide console writing into a string (read it back with ``.file.getvalue()``)."""
    return Console(file=io.StringIO(), width=240, color_system=None)


def parse_bench(*argv: str) -> argparse.Namespace:
    """``bdn bench ARGV`` parsed by :func:`bench.build_parser`, as ``bench.main`` does."""
    return build_parser().parse_args(list(argv))


def need(*binaries: str) -> None:
    """Skip the test (saying why) unless every binary is on PATH."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install nginx curl aria2)"
        print(f"skipping: {reason}")
        pytest.skip(reason)
