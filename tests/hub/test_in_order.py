"""A cold download fills its blob in the order it is sent, a few chunks at a time.

The real ``huggingface_hub`` client downloads ``model.safetensors`` (22 chunks of
4 MiB) from an endpoint whose origin is a ``file://`` store seen through an
observer: its readers stream (no kernel-copy shortcut, as peers and remote
origins do) and record, for each range the fill opens, its chunk and how many
ranges of the blob were open at that moment. The fill must open the chunks in
order from the one the download starts at, each once, never more than
:data:`~bdn.hub.blobs.STREAM_CHUNKS_IN_FLIGHT` at once: the chunk the download
waits on is always the oldest in flight. These are counts and orders, not
timings: the earlier fill (8 chunks at once, from chunk 0 whatever the download
asked) fails both tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bdn.backends import open_store
from bdn.backends.base import BlobStore, RangeReader
from bdn.cache import NodeCache
from bdn.config.secrets import SecretResolver
from bdn.digest import Digest
from bdn.hub.app import HubContext, hub_app
from bdn.hub.blobs import STREAM_CHUNKS_IN_FLIGHT
from bdn.manifest import FileEntry
from bdn.pull import Tier
from bdn.store import blob_key
from tests.hub.conftest import CHUNK, ENV, REPO, Mirrored, point_hf_client

hf = pytest.importorskip("huggingface_hub")


@dataclass
class _Opens:
    """Ranges opened of one blob: chunk indices in order, the most open at once, and
    whether the fill is over (it closes its reader)."""

    chunks: list[int] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0
    closed: threading.Event = field(default_factory=threading.Event)


class _ObservingReader:
    """A streaming :class:`RangeReader` over another (its ``copy_to`` is not offered)."""

    def __init__(self, inner: RangeReader, opens: _Opens) -> None:
        self._inner, self._opens = inner, opens
        self.supports_ranges = inner.supports_ranges

    async def open_range(self, start: int, end: int) -> AsyncIterator[Any]:
        opens = self._opens
        opens.chunks.append(start // CHUNK)
        opens.open_now += 1
        opens.most_open = max(opens.most_open, opens.open_now)
        try:
            async for piece in self._inner.open_range(start, end):
                yield piece
        finally:
            opens.open_now -= 1

    def describe(self) -> str:
        return self._inner.describe()

    async def close(self) -> None:
        await self._inner.close()
        self._opens.closed.set()


class _ObservingStore:
    """Delegates to a store; its readers record the ranges opened, per blob key."""

    def __init__(self, inner: BlobStore) -> None:
        self._inner = inner
        self.opens: dict[str, _Opens] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def reader(self, key: str, size: int) -> RangeReader:
        return _ObservingReader(self._inner.reader(key, size), self.opens.setdefault(key, _Opens()))


@contextlib.contextmanager
def _endpoint(mirrored: Mirrored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              tiers: Tier | None = None) -> Iterator[_ObservingStore]:
    """The endpoint over the observed store (fresh node cache), ``huggingface_hub`` on it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    backend = open_store(f"file://{mirrored.store}")
    store = _ObservingStore(backend)
    cache = NodeCache(tmp_path / "node")
    ctx = HubContext(store, cache, SecretResolver(None, ENV), tiers=tiers)
    runner = web.AppRunner(hub_app(ctx), access_log=None)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    point_hf_client(monkeypatch, f"http://127.0.0.1:{port}/hf", tmp_path / "hf-home")
    try:
        yield store
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        asyncio.run_coroutine_threadsafe(backend.close(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        cache.close()


@pytest.fixture
def observed(mirrored: Mirrored, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[_ObservingStore]:
    """The endpoint with no peer tier (as ``bdn serve``)."""
    with _endpoint(mirrored, tmp_path, monkeypatch) as store:
        yield store


class _StartsAt:
    """A :class:`~bdn.pull.Tier` that passes every read to origin and, like the peer tier,
    names a node-specific chunk to start a blob at."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.stats = _NoCounts()

    def start_pull(self) -> _StartsAt:
        return self

    def reader(self, origin: RangeReader, entry: FileEntry, chunk_size: int) -> RangeReader:
        return origin

    def first_chunk(self, entry: FileEntry, chunk_size: int) -> int:
        return self.first


@dataclass(frozen=True)
class _NoCounts:
    bytes_from_peers: int = 0
    bytes_from_origin: int = 0
    bytes_from_local_cache: int = 0
    peer_failures: int = 0
    corrupt_from_peers: int = 0


def _weights(mirrored: Mirrored) -> tuple[bytes, str, int]:
    """``model.safetensors``: its bytes, its store key and its chunk count."""
    data = (mirrored.model_dir / "model.safetensors").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    key = blob_key(Digest.parse(f"sha256:{digest}"))
    return data, key, -(-len(data) // CHUNK)


def test_a_cold_download_fills_its_blob_in_order_a_few_chunks_at_a_time(
        observed: _ObservingStore, mirrored: Mirrored, tmp_path: Path) -> None:
    data, key, chunks = _weights(mirrored)
    assert chunks > 2 * STREAM_CHUNKS_IN_FLIGHT  # Enough chunks for a window to show.
    path = Path(hf.hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "hf"))
    assert path.read_bytes() == data
    opens = observed.opens[key]
    assert opens.chunks == list(range(chunks))
    assert opens.most_open <= STREAM_CHUNKS_IN_FLIGHT


def test_a_resumed_download_fills_from_the_chunk_it_resumes_at(
        observed: _ObservingStore, mirrored: Mirrored) -> None:
    data, key, chunks = _weights(mirrored)
    resume_at = 5 * CHUNK + 1000  # Inside chunk 5.
    # What huggingface_hub sends to resume after a transient error (version 2 no longer
    # resumes a left-over ``.incomplete`` file across calls, so it is sent directly).
    url = f"{hf.constants.ENDPOINT}/{REPO}/resolve/main/model.safetensors"
    req = urllib.request.Request(url, headers={"Range": f"bytes={resume_at}-"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 206
        assert resp.read() == data[resume_at:]
    # From chunk 5 to the end first (what the download waits on), then the rest of the
    # blob for the node cache: wait for that fill to end before reading its record.
    assert observed.opens[key].closed.wait(60)
    assert observed.opens[key].chunks == [*range(5, chunks), *range(5)]
    assert observed.opens[key].most_open <= STREAM_CHUNKS_IN_FLIGHT


def test_a_download_through_a_peer_tier_fills_from_its_own_start_not_the_tiers(
        mirrored: Mirrored, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, key, chunks = _weights(mirrored)
    with _endpoint(mirrored, tmp_path, monkeypatch, _StartsAt(7)) as store:
        path = Path(hf.hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "hf"))
        assert path.read_bytes() == data
        # A pull would start at chunk 7; the download needs chunk 0 first.
        assert store.opens[key].chunks == list(range(chunks))
