"""A foreground request that joins a background pull lifts its fill-rate limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bdn.agent.client import request_for
from bdn.fleet import free_ports
from bdn.transfer.ratelimit import RateCap, RateLimiter
from tests.e2e.agents import (
    assert_same_tree,
    http_json,
    mirrored_model,
    running,
    start_agent,
    wait_ready,
)
from tests.fixtures import pattern_bytes

CHUNK = 128 * 1024
MODEL = {"config.json": b"{}", "model.safetensors": pattern_bytes(91, 16 * CHUNK)}
RATE = 16 * 1024
"""Bytes per second: the background pull alone would need minutes, past every bound here."""


async def test_a_lift_cuts_a_rate_limited_wait_short() -> None:
    forever = asyncio.Event()  # An injected sleep that never ends by itself.

    async def sleep(_: float) -> None:
        await forever.wait()

    rate = RateCap(100.0)
    limiter = RateLimiter(rate, clock=lambda: 0.0, sleep=sleep)
    waiting = asyncio.create_task(limiter.consume(10_000))  # 99 s of debt.
    for _ in range(100):
        await asyncio.sleep(0)
    assert not waiting.done()
    rate.lift()
    await waiting
    assert limiter.lifted and rate.bytes_per_second == 100.0
    await limiter.consume(10**9)  # No longer limited at all.


async def test_foreground_join_lifts_the_background_rate(tmp_path: Path) -> None:
    _, store_root, manifest = await mirrored_model(tmp_path, MODEL, CHUNK)
    (port,) = free_ports(1)
    agent = start_agent(tmp_path, "a", port, store=f"file://{store_root}",
                        extra=["--background-fill-rate", str(RATE)])
    mount = tmp_path / "a" / "models" / "m"
    with running([agent]):
        await wait_ready([agent])
        code, bg = await http_json(agent.address, "POST", "/v1/pulls",
                                   request_for(manifest.id, mount, background=True))
        assert code == 202, bg
        await _until_progress(agent.address, bg["id"])
        code, fg = await http_json(agent.address, "POST", "/v1/pulls",
                                   request_for(manifest.id, mount))
        assert code == 202 and fg["id"] == bg["id"]  # Joined, not a second pull.
        done = await _finished(agent.address, bg["id"])
        assert done["state"] == "succeeded", done
        metrics = await agent.metrics()
    assert metrics["bdn_pulls_rate_lifted_total"] == 1
    assert_same_tree(mount, MODEL)


async def _until_progress(address: str, pull_id: str) -> None:
    """Until the background pull has fetched something (it is running, throttled)."""
    for _ in range(3000):
        _, body = await http_json(address, "GET", f"/v1/pulls/{pull_id}")
        assert body["state"] == "running", body
        if body["bytes_done"] > 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the background pull never started fetching")


async def _finished(address: str, pull_id: str) -> dict[str, object]:
    for _ in range(3000):
        _, body = await http_json(address, "GET", f"/v1/pulls/{pull_id}")
        if body["state"] != "running":
            return dict(body)
        await asyncio.sleep(0.01)
    raise AssertionError(f"pull {pull_id} still running: the rate limit was not lifted")
