"""Tests of the ``bdn`` command line, and the assertion they share."""

from __future__ import annotations

from tests.fixtures import CliResult


def assert_one_line_error(res: CliResult, *needles: str) -> None:
    """``res`` is a usage error (exit 2): one ``bdn: error:`` line holding every needle,
    no traceback."""
    assert res.code == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("bdn: error: ")
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
