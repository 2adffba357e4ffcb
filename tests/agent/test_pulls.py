"""Pull requests: the background flag and the rate-limited options it selects; a pull
cancelled before it started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bdn.agent.metrics import AgentMetrics
from bdn.agent.protocol import parse_pull_request
from bdn.agent.pulls import PullContext, PullRegistry
from bdn.backends import open_store
from bdn.cache import NodeCache
from bdn.config.secrets import SecretResolver
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


async def test_a_pull_cancelled_before_its_first_step_ends_failed(tmp_path: Path) -> None:
    """Cancelled before its task ever ran (a drain right after the request), the pull
    must still end ``failed``, leave the running set and the running gauge, and let the
    same mount be pulled again."""
    roots = tmp_path / "trees"
    roots.mkdir()
    store = open_store(f"file://{tmp_path / 'store'}")
    cache = NodeCache(tmp_path / "cache")
    metrics = AgentMetrics()
    ctx = PullContext(store, cache, SecretResolver(None, {}), PullOptions(),
                      tiers=None,  # type: ignore[arg-type]  # Never reached.
                      trees_roots=(roots,))
    registry = PullRegistry(ctx, metrics)
    try:
        request = parse_pull_request({"manifest_id": ID, "mount_location": str(roots / "m")})
        job = registry.submit(request)
        await registry.cancel_all()  # The task has not run a single step.
        assert job.task is not None and job.task.cancelled()
        assert job.state == "failed" and job.error_type == "TransferError"
        assert job.error is not None and "pull again" in job.error
        assert registry.running == []
        assert metrics.registry.get_sample_value("bdn_pulls_running") == 0
        assert metrics.registry.get_sample_value(
            "bdn_pulls_total", {"outcome": "failed"}) == 1
        assert registry.submit(request) is not job  # The mount is free again.
        await registry.cancel_all()
    finally:
        cache.close()
        await store.close()
