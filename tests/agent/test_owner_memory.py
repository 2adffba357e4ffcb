"""An owner's memory stays bounded under 64 concurrent peer requests (a real agent process).

64 distinct 4 MiB chunks (256 MiB in all) are asked for at once, three times:
fetched from origin, from the chunk cache, and from the node cache. Each
round's peak RSS (``VmHWM``, reset before the round) must stay under
:data:`BOUND_KIB`, and grow less than :data:`GROWTH_KIB` over the idle agent:
an owner that held each chunk in memory while serving it would need the
256 MiB on top. (Figures for 64 MiB chunks, before and after: see
``python -m tests.agent.owner_load --chunk-mib 64``.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bdn.fleet import free_ports
from tests.agent.owner_load import MiB, measure
from tests.httpserver import FaultServer

BOUND_KIB = 300 * 1024
"""Peak RSS of the owner agent in any round."""

GROWTH_KIB = 160 * 1024
"""Peak RSS above the idle agent's in any round (the chunks asked for total 256 MiB)."""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/<pid>/status")


async def test_owner_rss_is_bounded_under_64_concurrent_requests(
    tmp_path: Path, fault_server: FaultServer
) -> None:
    (port,) = free_ports(1)
    figures = await measure(tmp_path, fault_server, port, 4 * MiB)
    # The node-cache round follows a pull the agent ran itself: measured from after it.
    idle = {"origin": "idle", "chunk_cache": "idle", "node_cache": "idle_after_pull"}
    for round_, before in idle.items():
        peak = figures[f"{round_}_peak"]
        assert peak < BOUND_KIB, (round_, figures)
        assert peak - figures[before] < GROWTH_KIB, (round_, figures)
