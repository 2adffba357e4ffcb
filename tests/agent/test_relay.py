"""The holder side of fan-out (bdn.agent.relay, through ChunkService.relay), on real caches."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from bdn.agent.chunks import ChunkService
from bdn.backends import open_store
from bdn.cache import NodeCache
from tests.agent.test_chunks import FAST, _big, _ref
from tests.test_pull import CHUNK, MODEL, mirror_model


async def test_a_chunk_kept_to_pass_on_is_served_only_for_its_digest(tmp_path: Path) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    big = _big(manifest)
    ref = _ref(big, manifest, 1)
    want = MODEL[big.path][CHUNK : 2 * CHUNK]
    origin = open_store(f"file://{store_root}")
    with NodeCache(tmp_path / "cache") as cache:
        service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks", retry=FAST,
                               fanout=2)
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
        await service.close()
    await origin.close()


async def test_a_failed_read_answers_its_waiters_with_nothing(tmp_path: Path) -> None:
    store_root, manifest = await mirror_model(tmp_path)
    ref = _ref(_big(manifest), manifest, 2)
    origin = open_store(f"file://{store_root}")
    with NodeCache(tmp_path / "cache") as cache:
        service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks", retry=FAST,
                               fanout=1)
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
        await service.close()
    await origin.close()


async def test_fanout_off_keeps_nothing(tmp_path: Path) -> None:
    store_root, _ = await mirror_model(tmp_path)
    origin = open_store(f"file://{store_root}")
    with NodeCache(tmp_path / "cache") as cache:
        service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks", retry=FAST)
        assert service.relay is None and service.fanout.k == 0
        await service.close()
    await origin.close()


async def test_no_relay_copy_is_wanted_where_nobody_can_be_redirected(tmp_path: Path) -> None:
    # An owner sends a chunk itself to its first K requesters: in a ring of at most
    # K + 1 nodes nobody is redirected, so a relay copy would be a wasted disk write.
    store_root, _ = await mirror_model(tmp_path)
    origin = open_store(f"file://{store_root}")
    with NodeCache(tmp_path / "cache") as cache:
        service = ChunkService(cache, origin, chunk_cache_dir=tmp_path / "chunks", retry=FAST,
                               fanout=2)
        relay = service.relay
        assert relay is not None
        assert [relay.wanted(n) for n in (1, 2, 3, 4, 8)] == [False, False, False, True, True]
        await service.close()
    await origin.close()
