"""Pull requests: the background flag and the rate-limited options it selects."""

from __future__ import annotations

from typing import Any

import pytest

from bdn.agent.protocol import parse_pull_request
from bdn.agent.pulls import PullContext
from bdn.errors import ConfigError
from bdn.pull import PullOptions

ID = "sha256:" + "a" * 64


def test_background_is_parsed_and_checked() -> None:
    assert parse_pull_request({"manifest_id": ID, "mount_location": "/m"}).background is False
    assert parse_pull_request(
        {"manifest_id": ID, "mount_location": "/m", "background": True}).background is True
    with pytest.raises(ConfigError, match="background"):
        parse_pull_request({"manifest_id": ID, "mount_location": "/m", "background": "yes"})


def test_only_background_pulls_run_under_the_fill_rate() -> None:
    fields: dict[str, Any] = dict(store=None, cache=None, secrets=None, tiers=None)
    ctx = PullContext(options=PullOptions(), background_fill_rate=200e6, **fields)
    fg = parse_pull_request({"manifest_id": ID, "mount_location": "/m"})
    bg = parse_pull_request({"manifest_id": ID, "mount_location": "/m", "background": True})
    assert ctx.options_for(fg).transfer.max_bytes_per_second is None
    assert ctx.options_for(bg).transfer.max_bytes_per_second == 200e6
    uncapped = PullContext(options=PullOptions(), background_fill_rate=None, **fields)
    assert uncapped.options_for(bg).transfer.max_bytes_per_second is None
