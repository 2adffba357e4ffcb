"""Tests of the node agent (agent/): its servers in-process, its process lifecycle."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bdn.agent.config import AgentConfig, MembershipConfig
from bdn.agent.main import Agent
from bdn.config.settings import Settings
from tests.e2e.agents import TOKEN, free_ports, short_dir


@contextlib.asynccontextmanager
async def in_process_agent(tmp_path: Path, store_uri: str, **config: Any) -> AsyncIterator[Agent]:
    """An agent started in this process over ``store_uri``, caching in ``tmp_path/cache``:
    its peer face on a free loopback port with :data:`TOKEN`, its pod socket in a short
    directory; ``config`` sets more of its :class:`AgentConfig`. Drained and stopped
    after, which must take its socket away."""
    (port,) = free_ports(1)
    with short_dir() as sock_dir:
        agent = Agent(AgentConfig(
            settings=Settings(store_uri=store_uri, cache_dir=tmp_path / "cache"),
            listen=("127.0.0.1", port),
            advertise=f"127.0.0.1:{port}",
            socket_path=sock_dir / "agent.sock",
            token=TOKEN,
            membership=MembershipConfig(probe_interval=0.2),
            drain_timeout=5,
            **config,
        ))
        await agent.start()
        try:
            yield agent
        finally:
            await agent.drain()
            await agent.stop()
        assert not agent.config.socket_path.exists()
