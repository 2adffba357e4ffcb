"""The agent's Prometheus metrics, in a registry of their own.

The registry is the agent's own (:class:`~bdn.daemon.metrics.DaemonMetrics`
says why), so several agents in one process (tests, ``bdn demo``) stay apart.

Where the numbers come from:

- pulls: :meth:`AgentMetrics.observe_pull` with each finished pull's
  :class:`~bdn.pull.PullResult` (bytes per tier, peer failures, corrupt peer
  chunks, duration);
- origin: :class:`CountingStore` wraps the agent's one store, so every range
  and metadata request to origin is counted once, whoever makes it (a pull's
  fallback or this node's chunk service as an owner);
- the owner side: :class:`~bdn.agent.chunks.ChunkStats`, read at scrape time;
- hedged chunk reads: :class:`~bdn.peer.hedge.HedgeStats`, read at scrape time;
- the caches: :meth:`AgentMetrics.scan_caches`, run periodically off the loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bdn.agent.chunks import ChunkStats
from bdn.backends.base import BlobStore, RangeReader
from bdn.cache import NodeCache
from bdn.daemon.metrics import CONTENT_TYPE, DaemonMetrics
from bdn.digest import Digest
from bdn.peer.hedge import HedgeStats
from bdn.pull import PullResult

__all__ = ["CONTENT_TYPE", "AgentMetrics", "CountingStore"]

Buffer = bytes | bytearray | memoryview

PULL_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
"""Pull durations span a warm re-pull (sub-second) to a cold 140 GB model (minutes)."""


class AgentMetrics(DaemonMetrics):
    """Every collector of one agent. Call from the event loop thread only,
    except :meth:`scan_caches` (blocking; meant for a worker thread)."""

    def __init__(self) -> None:
        super().__init__()
        self._add_pull_metrics()
        self._add_origin_metrics()
        self._add_peer_metrics()
        self._add_cache_metrics()
        self.ring_members = self._gauge("bdn_ring_members", "Live members of the chunk ring.")
        self.draining = self._gauge("bdn_draining", "1 while the agent drains for shutdown.")
        self._seen_blobs: set[Digest] | None = None
        self._scan_lock = threading.Lock()

    def _add_pull_metrics(self) -> None:
        """What the agent's own pulls did (counted by :meth:`observe_pull`)."""
        self.pull_bytes = self._counter(
            "bdn_pull_bytes", "Bytes delivered to finished pulls, by tier.", "tier"
        )
        self.pulls = self._counter("bdn_pulls", "Pulls finished, by outcome.", "outcome")
        self.pull_seconds = self._histogram(
            "bdn_pull_duration_seconds",
            "Wall time of finished pulls, by outcome.",
            "outcome",
            buckets=PULL_BUCKETS,
        )
        self.pulls_running = self._gauge("bdn_pulls_running", "Pulls in progress.")
        self.pulls_rate_lifted = self._counter(
            "bdn_pulls_rate_lifted",
            "Background pulls whose fill-rate limit was lifted because a foreground "
            "request joined them.",
        )
        self.peer_failures = self._counter(
            "bdn_peer_failures",
            "Chunk requests to an owner peer that failed (down, slow, refused); "
            "each was read from origin instead.",
        )
        self.corrupt_from_peers = self._counter(
            "bdn_corrupt_chunks_from_peers",
            "Chunks a peer served that failed their xxh3-128 check; each was read from origin.",
        )

    def _add_origin_metrics(self) -> None:
        """Requests and bytes to origin (counted by :class:`CountingStore`)."""
        self.origin_requests = self._counter(
            "bdn_origin_requests",
            "Requests to origin: byte ranges of blobs, and metadata (manifests, refs).",
            "kind",
        )
        self.origin_bytes = self._counter("bdn_origin_bytes", "Blob bytes received from origin.")

    def _add_peer_metrics(self) -> None:
        """What this agent answered on its peer port, as a chunk owner."""
        self.peer_requests = self._counter(
            "bdn_peer_requests", "Chunk requests this agent answered, by status.", "code"
        )
        self.peer_bytes_served = self._counter(
            "bdn_peer_bytes_served", "Chunk bytes this agent served to peers."
        )
        self.chunks_served = self._counter(
            "bdn_peer_chunks_served",
            "Chunks served to peers, by where this agent found them.",
            "source",
        )

    def _add_cache_metrics(self) -> None:
        """The caches on disk (set by :meth:`scan_caches`)."""
        self.node_cache_bytes = self._gauge(
            "bdn_node_cache_bytes", "Bytes of complete blobs in the node cache."
        )
        self.node_cache_blobs = self._gauge(
            "bdn_node_cache_blobs", "Complete blobs in the node cache."
        )
        self.node_cache_evictions = self._counter(
            "bdn_node_cache_evictions",
            "Blobs that left the node cache between two scans (LRU eviction, or removal "
            "of a corrupt blob).",
        )
        self.chunk_cache_bytes = self._gauge(
            "bdn_chunk_cache_bytes", "Bytes on disk of the owner-side chunk cache."
        )

    def watch_chunk_service(self, stats: Callable[[], ChunkStats]) -> None:
        """Export the owner side's counters, read from ``stats()`` at every scrape."""
        self.registry.register(_ChunkStatsCollector(stats))

    def watch_hedges(self, stats: Callable[[], HedgeStats]) -> None:
        """Export this agent's hedged chunk reads, read from ``stats()`` at every scrape."""
        self.registry.register(_HedgeStatsCollector(stats))

    def observe_pull(self, outcome: str, seconds: float, result: PullResult | None) -> None:
        """Count one finished pull (``outcome``: ``succeeded`` or ``failed``)."""
        self.pulls.labels(outcome).inc()
        self.pull_seconds.labels(outcome).observe(seconds)
        if result is None:
            return
        self.pull_bytes.labels("node_cache").inc(result.bytes_from_node_cache)
        self.pull_bytes.labels("peers").inc(result.bytes_from_peers)
        self.pull_bytes.labels("origin").inc(result.bytes_from_origin)
        self.peer_failures.inc(result.peer_failures)
        self.corrupt_from_peers.inc(result.corrupt_from_peers)

    def scan_caches(self, cache: NodeCache, chunk_cache_dir: Path) -> None:
        """Measure both caches (blocking: run in a worker thread)."""
        with self._scan_lock:  # Two scans at once would count one eviction twice.
            blobs = cache.ls()
            now = {b.digest for b in blobs}
            if self._seen_blobs is not None:
                self.node_cache_evictions.inc(len(self._seen_blobs - now))
            self._seen_blobs = now
        self.node_cache_blobs.set(len(blobs))
        self.node_cache_bytes.set(sum(b.size for b in blobs))
        self.chunk_cache_bytes.set(_tree_bytes(chunk_cache_dir))


class _ChunkStatsCollector(Collector):
    def __init__(self, stats: Callable[[], ChunkStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats()
        reads = CounterMetricFamily(
            "bdn_chunk_service_reads",
            "Chunk reads of this agent's chunk service (own pulls and peers), by where "
            "the chunk was found.",
            labels=["source"],
        )
        reads.add_metric(["node_cache"], s.from_node_cache)
        reads.add_metric(["chunk_cache"], s.from_chunk_cache)
        reads.add_metric(["origin"], s.origin_fetches)
        yield reads
        yield CounterMetricFamily(
            "bdn_single_flight_coalesced_waiters",
            "Chunk reads that waited for a fetch from origin already in flight instead of "
            "starting their own.",
            value=s.coalesced_waiters,
        )
        yield CounterMetricFamily(
            "bdn_chunk_service_origin_bytes",
            "Bytes this agent fetched from origin as a chunk owner.",
            value=s.origin_bytes,
        )
        yield from _owner_side(s)
        yield from _fanout(s)


def _fanout(s: ChunkStats) -> Iterator[CounterMetricFamily]:
    """Fan-out (bdn.peer.fanout): redirects by side, chunk bytes sent by role."""
    f = s.fanout
    redirects = CounterMetricFamily(
        "bdn_fanout_redirects",
        "Fan-out redirects: issued (this owner sent a requester to a holder), followed "
        "(this node's pulls read a chunk from a holder they were sent to), failed (that "
        "holder failed and the owner was asked again), refused (this node, as a holder, "
        "held nothing for a redirected request or was at its per-chunk cap).",
        labels=["side"],
    )
    redirects.add_metric(["issued"], f.redirects_issued)
    redirects.add_metric(["followed"], f.redirects_followed)
    redirects.add_metric(["failed"], f.redirects_failed)
    redirects.add_metric(["refused"], f.holder_refusals)
    yield redirects
    served = CounterMetricFamily(
        "bdn_fanout_bytes_served",
        "Chunk bytes this agent sent to peers, by role: owner (asked as the chunk's "
        "owner) or holder (passed on to a redirected requester, as a non-owner).",
        labels=["role"],
    )
    served.add_metric(["owner"], f.bytes_as_owner)
    served.add_metric(["holder"], f.bytes_as_holder)
    yield served
    yield CounterMetricFamily(
        "bdn_fanout_bytes_from_holders",
        "Chunk bytes this agent's pulls read from holders they were redirected to.",
        value=f.bytes_from_holders,
    )


def _owner_side(s: ChunkStats) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """Digest checks, trust refusals and the peer-response gate of the chunk owner."""
    yield CounterMetricFamily(
        "bdn_chunk_service_hashes",
        "xxh3-128 digests the chunk owner computed: one per chunk entering its chunk "
        "cache, none per request.",
        value=s.chunk_hashes,
    )
    yield CounterMetricFamily(
        "bdn_chunk_service_untrusted_blobs",
        "Node-cache blobs the owner did not serve from because their admission is not "
        "acceptable to this agent's trust (the chunk came from the chunk cache or origin).",
        value=s.untrusted_blobs,
    )
    r = s.responses
    yield GaugeMetricFamily("bdn_peer_responses_in_flight",
                            "Chunk responses this owner is running now.", value=r.in_flight)
    yield GaugeMetricFamily("bdn_peer_responses_queued",
                            "Chunk requests waiting for a response slot now.", value=r.queued)
    yield GaugeMetricFamily("bdn_peer_responses_peak_in_flight",
                            "Most chunk responses this owner ever ran at once.",
                            value=r.peak_in_flight)
    yield CounterMetricFamily(
        "bdn_peer_responses_rejected",
        "Chunk requests refused with 503 because the response queue was full.",
        value=r.rejected,
    )


class _HedgeStatsCollector(Collector):
    def __init__(self, stats: Callable[[], HedgeStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        s = self._stats()
        hedges = CounterMetricFamily(
            "bdn_peer_hedges",
            "Second requests sent for a slow chunk read from a peer (no answer in time, a "
            "stalled or slow body), to a replica or origin, by outcome: won (the hedge "
            "answered first), lost (the first request did), denied (a chunk past its "
            "deadline found the concurrent-hedge cap full; it hedges once a slot frees), "
            "withheld (not sent to origin: the owner said it was filling the chunk from "
            "origin, so a hedge would only read it twice), quiet (the owner was silent "
            "past its deadline but so was every other peer: a starved node, not hedged "
            "then), over_budget (not sent straight to origin: the pull's origin-hedge "
            "budget was spent), alive (a silent owner answered a health probe, so a "
            "hedge that could read origin waited longer for it), unresponsive (a silent "
            "owner answered no probe either: hedged at once).",
            labels=["outcome"],
        )
        hedges.add_metric(["won"], s.won)
        hedges.add_metric(["lost"], s.lost)
        hedges.add_metric(["denied"], s.denied)
        hedges.add_metric(["withheld"], s.withheld)
        hedges.add_metric(["quiet"], s.quiet)
        hedges.add_metric(["over_budget"], s.over_budget)
        hedges.add_metric(["alive"], s.alive)
        hedges.add_metric(["unresponsive"], s.unresponsive)
        yield hedges


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name), follow_symlinks=False).st_size
            except OSError:
                continue  # Evicted while we walked.
    return total


class CountingStore:
    """A :class:`~bdn.backends.base.BlobStore` that counts what is asked of origin.

    Delegates everything to ``inner``. Range reads are counted per request and
    byte; every other read (manifests, refs, sizes) as one ``metadata``
    request. A reader from a ``file://`` store keeps its type (the transfer
    engine copies local files by a faster path that has no requests to count),
    so such origins show bytes in ``bdn_pull_bytes_total`` only.
    """

    def __init__(self, inner: BlobStore, metrics: AgentMetrics) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.read_only = inner.read_only
        self._metrics = metrics

    def _meta(self) -> None:
        self._metrics.origin_requests.labels("metadata").inc()

    async def exists(self, key: str) -> bool:
        self._meta()
        return await self.inner.exists(key)

    async def size(self, key: str) -> int:
        self._meta()
        return await self.inner.size(key)

    async def get_bytes(self, key: str) -> bytes:
        self._meta()
        return await self.inner.get_bytes(key)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self.inner.put_bytes(key, data)

    async def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        await self.inner.put_file(key, path, move=move)

    def list(self, prefix: str) -> AsyncIterator[str]:
        self._meta()
        return self.inner.list(prefix)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    def reader(self, key: str, size: int) -> RangeReader:
        inner = self.inner.reader(key, size)
        if self.inner.local_path(key) is not None:
            return inner
        return _CountingReader(inner, self._metrics)

    def local_path(self, key: str) -> Path | None:
        return self.inner.local_path(key)

    def staging_dir(self) -> Path | None:
        return self.inner.staging_dir()

    async def close(self) -> None:
        await self.inner.close()


class _CountingReader:
    def __init__(self, inner: RangeReader, metrics: AgentMetrics) -> None:
        self._inner = inner
        self._metrics = metrics

    @property
    def supports_ranges(self) -> bool | None:
        return self._inner.supports_ranges

    @supports_ranges.setter
    def supports_ranges(self, value: bool | None) -> None:
        self._inner.supports_ranges = value

    async def open_range(self, start: int, end: int) -> AsyncIterator[Buffer]:
        self._metrics.origin_requests.labels("range").inc()
        async for piece in self._inner.open_range(start, end):
            self._metrics.origin_bytes.inc(len(piece))
            yield piece

    def describe(self) -> str:
        return self._inner.describe()

    async def close(self) -> None:
        await self._inner.close()
