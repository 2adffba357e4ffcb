"""The holder side of fan-out (bdn.agent.relay, through ChunkService.relay), on real caches."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bdn.agent.chunks import ChunkService
from bdn.backends import open_store
from bdn.cache import NodeCache
from bdn.manifest import Manifest
from tests.agent.test_chunks import FAST, _big, _ref
from tests.test_pull import CHUNK, MODEL, mirror_model


@asynccontextmanager
async def chunk_service(tmp_path: Path, **kw: Any) -> AsyncIterator[tuple[ChunkService, Manifest]]:
    """A chunk service over a mirrored test model's store, on real caches, and the manifest."""
    store_root, manifest = await mirror_model(tmp_path)
    origin = open_store(f"file://{store_root}")
    try:
        with NodeCache(tmp_path / "cache") as cache:
            service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks",
                                   retry=FAST, **kw)
            try:
                yield service, manifest
            finally:
                await service.close()
    finally:
        await origin.close()


async def test_a_chunk_kept_to_pass_on_is_served_only_for_its_digest(tmp_path: Path) -> None:
    async with chunk_service(tmp_path, fanout=2) as (service, manifest):
        big = _big(manifest)
        ref = _ref(big, manifest, 1)
        want = MODEL[big.path][CHUNK : 2 * CHUNK]
        relay = service.relay
        assert relay is not None
        assert await relay.open_now(ref) is None and not relay.in_flight(ref)
        relay.begin(ref)
        assert relay.in_flight(ref)
        # A redirected request arrives while this node's own read runs: it waits for it.
        waiting = asyncio.ensure_future(relay.open_when_read(ref, timeout=60))
        await asyncio.sleep(0)
        assert not waiting.done()
        relay.keep(ref, bytearray(want))
        chunk = await waiting
        assert chunk is not None and chunk.read_all() == want
        chunk.close()
        # Another digest for the same chunk position gets nothing (never these bytes).
        other = dataclasses.replace(ref, xxh3="0" * 32)
        assert await relay.open_now(other) is None
        assert await relay.open_when_read(other, timeout=1) is None
        # Nothing here read origin.
        assert service.stats.origin_fetches == 0


async def test_a_failed_read_answers_its_waiters_with_nothing(tmp_path: Path) -> None:
    async with chunk_service(tmp_path, fanout=1) as (service, manifest):
        ref = _ref(_big(manifest), manifest, 2)
        relay = service.relay
        assert relay is not None
        relay.begin(ref)
        waiting = asyncio.ensure_future(relay.open_when_read(ref, timeout=60))
        await asyncio.sleep(0)
        relay.abandon(ref)
        assert await waiting is None and not relay.in_flight(ref)
        # The per-chunk cap of a holder: k sends at once, the next refused.
        with relay.sending(ref) as first:
            assert first.ok
            with relay.sending(ref) as second:
                assert not second.ok
        with relay.sending(ref) as again:
            assert again.ok


async def test_fanout_off_keeps_nothing(tmp_path: Path) -> None:
    async with chunk_service(tmp_path) as (service, _):
        assert service.relay is None and service.fanout.k == 0


async def test_no_relay_copy_is_wanted_where_nobody_can_be_redirected(tmp_path: Path) -> None:
    # An owner sends a chunk itself to its first K requesters: in a ring of at most
    # K + 1 nodes nobody is redirected, so a relay copy would be a wasted disk write.
    async with chunk_service(tmp_path, fanout=2) as (service, _):
        relay = service.relay
        assert relay is not None
        assert [relay.wanted(n) for n in (1, 2, 3, 4, 8)] == [False, False, False, True, True]
