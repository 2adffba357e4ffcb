"""`bdn demo`, the README's main command, as a newcomer runs it (at a small size)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fixtures import run_bdn


def test_demo_runs_reports_and_cleans_up(tmp_path: Path) -> None:
    res = run_bdn("demo", "--size", "16MiB", "--agents", "3", "--workdir", str(tmp_path),
                  home=tmp_path, timeout=300)
    assert res.code == 0, res.stdout + res.stderr
    assert "started 3 agents on loopback as one ring" in res.stdout
    for agent in ("agent-0", "agent-1", "agent-2"):
        assert res.stdout.count(agent) >= 2  # a row per model
    ratio = re.search(r"= ([0-9.]+)x the distinct content", res.stdout.replace("\n", " "))
    assert ratio is not None and float(ratio.group(1)) <= 1.05
    assert list(tmp_path.glob("bdn-demo-*")) == []  # Cleaned up after itself.


def test_demo_shows_what_fan_out_passed_on(tmp_path: Path) -> None:
    res = run_bdn("demo", "--size", "16MiB", "--agents", "3", "--fanout", "1",
                  "--workdir", str(tmp_path), home=tmp_path, timeout=300)
    assert res.code == 0, res.stdout + res.stderr
    text = " ".join(res.stdout.split())  # Rich wraps lines where it likes.
    assert "(--fanout 1)" in text and "what every agent sent to its peers" in text
    # Three agents, K = 1: of each chunk's two requesters, the second is redirected.
    passed_on = re.search(r"fan-out holders passed on ([0-9.]+) ([KMG]i?B|B)", text)
    assert passed_on is not None and float(passed_on.group(1)) > 0, res.stdout
    ratio = re.search(r"= ([0-9.]+)x the distinct content", text)
    assert ratio is not None and float(ratio.group(1)) <= 1.05
