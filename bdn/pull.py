"""Pull a manifest's tree onto this node: node cache, then the tiers, then origin.

:func:`pull_manifest` reads top-down: every blob the manifest names is looked
up in the node cache; each missing one is fetched by the transfer engine,
chunk by chunk against the manifest's xxh3-128 digests, from a :class:`Tier`
(the node agent's peers) when one is given, else from the store (the mirrored
origin); the tree is then materialized at the mount location from hardlinks
and swapped in atomically (docs/DESIGN.md, "Pull"). This module decides only where
bytes come from: how they land in the cache (lock, recheck, resumable
partial, commit; single-flight across processes) is :mod:`bdn.cache.fill`.

The pull knows its store, so it tells the cache whose word it takes
(:class:`bdn.cache.Trust`): a cached blob admitted on another, untrusted
store's word is proven before it is used, and blobs fetched from a store the
node does not trust are proven (SHA-256, while the chunks are written)
before they are admitted (docs/DESIGN.md, "Blob").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bdn.backends.base import BlobStore, RangeReader
from bdn.cache import NodeCache, Partial, Trust, fill_blob, recheck_after_reboot
from bdn.config.settings import store_identity
from bdn.config.weights import WeightsEntry
from bdn.digest import Digest
from bdn.errors import BlobNotFound, ManifestInvalid, RefNotFound
from bdn.manifest import FileEntry, Manifest
from bdn.store import Store, blob_key
from bdn.transfer.cores import resolve_workers
from bdn.transfer.engine import DEFAULT_TRANSFER_CONFIG, FileTask, TransferConfig, TransferEngine

log = logging.getLogger(__name__)

MAX_BLOBS_IN_FLIGHT = 16
"""Blobs fetched at once; their chunks share the engine's connection cap."""

ChunkDone = Callable[[FileEntry, Path, int], None]
"""Told ``(blob, partial file, chunk index)`` on the event loop for each chunk of a blob
being fetched that is verified and on disk, and, when the fetch starts, of those an
earlier attempt verified (not re-checked yet: a reader checks those itself). The
partial file becomes the cached blob by a rename, so an open handle on it stays valid.
:func:`fill_blobs` takes one (the Hub endpoint streams with it)."""


@dataclass(frozen=True, slots=True)
class InOrder:
    """How :func:`fill_blobs` fetches each blob for a reader that streams it in order
    (``FileTask.first_chunk`` and ``chunks_in_flight``): chunks in order from
    ``first_chunk`` (the reader's, not the tier's node-specific start), at most
    ``chunks_in_flight`` at once, so the one it needs next is not slowed by many later ones."""

    first_chunk: int = 0
    chunks_in_flight: int | None = None


@dataclass(frozen=True, slots=True)
class PullOptions:
    """How a pull runs.

    Attributes:
        transfer: engine limits (connections, segment size, retries).
        strict: also check every file's SHA-256 (the chunk digests are the
            check otherwise; docs/DESIGN.md, "Chunk"): fetched blobs while
            they are written, cached ones not yet proven by this node before
            they are used.
        fsync: flush every blob to disk before committing it. Off by default:
            the cache marks such blobs as unflushed for this boot and verifies
            them again after a reboot, which keeps a multi-GB flush (measured
            at ~1 s per 2 GiB here) off the critical path of a cold start.
        trusted_stores: identities (``bdn.config.settings.store_identity``) of
            the stores whose word this node takes for cached blobs
            (``Settings.trusted_stores``). A pull from a store outside it
            proves every blob it fetches. ``None``: the pull's own store only.
    """

    transfer: TransferConfig = DEFAULT_TRANSFER_CONFIG
    strict: bool = False
    fsync: bool = False
    trusted_stores: frozenset[str] | None = None

    def trusting(self, trusted: frozenset[str] | None, own_store: str) -> PullOptions:
        """These options, trusting ``trusted`` and ``own_store`` (the node agent's
        store counts as trusted for the agent's pulls)."""
        more = frozenset([store_identity(own_store)])
        return dataclasses.replace(self, trusted_stores=(trusted or frozenset()) | more)

    def with_workers(self, requested: int | None) -> PullOptions:
        """These options with ``requested`` data-plane workers (``None``: one per CPU
        this process may use, :func:`bdn.transfer.cores.available_cpus`), unless the
        caller already chose a count in ``transfer.workers`` (1 included): that
        choice sticks, and ``None`` there means none was made."""
        if self.transfer.workers is not None:
            return self
        transfer = dataclasses.replace(self.transfer, workers=resolve_workers(requested))
        return dataclasses.replace(self, transfer=transfer)

    def trust_for(self, store_uri: str) -> Trust:
        """Whose word a pull from ``store_uri`` takes (see :class:`bdn.cache.Trust`)."""
        store = store_identity(store_uri)
        trusted = self.trusted_stores if self.trusted_stores is not None else frozenset([store])
        return Trust(store, trusted, self.strict)


DEFAULT_PULL_OPTIONS = PullOptions()


@dataclass(slots=True)
class PullResult:
    """Outcome of one pull; bytes are counted per tier, as ``--json`` prints them.

    ``bytes_proven`` counts the bytes this pull hashed with SHA-256 (fetched
    from an untrusted store or with ``strict``, or cached on another store's
    word); it is 0 for a pull from a trusted store that met no such blob.
    """

    manifest_id: str
    path: Path
    files: int
    total_bytes: int
    bytes_from_node_cache: int = 0
    bytes_from_peers: int = 0
    bytes_from_origin: int = 0
    seconds: float = 0.0
    materialized: str = ""
    peer_failures: int = 0
    corrupt_from_peers: int = 0
    bytes_proven: int = 0

    def summary(self) -> dict[str, object]:
        """The result as ``bdn pull --json`` prints it (peer failure counts are not in it)."""
        return {
            "manifest_id": self.manifest_id,
            "path": str(self.path),
            "files": self.files,
            "total_bytes": self.total_bytes,
            "bytes_from_node_cache": self.bytes_from_node_cache,
            "bytes_from_peers": self.bytes_from_peers,
            "bytes_from_origin": self.bytes_from_origin,
            "seconds": round(self.seconds, 3),
            "materialized": self.materialized,
        }


class Tier(Protocol):
    """Where a blob's chunks come from between the node cache and origin.

    The pull looks in the node cache first; for each blob it must fetch, it
    wraps origin's reader in the tier's. The node agent passes its peer tier
    (``bdn.peer.tiered.TierConfig``); without a tier, chunks come from origin.

    Contract:
        - ``start_pull()`` is called once per pull; the counters of the
          :class:`TierPull` it returns cover that pull only.
        - ``TierPull.reader(origin, entry, chunk_size)`` is a reader of exactly
          ``entry``'s blob (chunk ``i`` is ``[i * chunk_size, ...)``). It may
          serve any range from elsewhere and falls back to ``origin``;
          closing it closes ``origin``.
        - Its bytes are trusted no more than origin's: the transfer engine
          verifies every chunk and asks again for one it rejected; the
          reader should not ask the same source for that chunk again.
        - ``TierPull.stats`` counts every byte its readers handed over by where
          it came from, origin included (the pull then counts no origin bytes
          itself), plus the peers that failed or sent corrupt chunks.
    """

    def start_pull(self) -> TierPull: ...


class TierPull(Protocol):
    """One pull's use of a :class:`Tier`: readers of its blobs, and what they counted."""

    @property
    def stats(self) -> TierCounts: ...

    def reader(self, origin: RangeReader, entry: FileEntry, chunk_size: int) -> RangeReader: ...

    def first_chunk(self, entry: FileEntry, chunk_size: int) -> int:
        """The chunk of ``entry`` this node fetches first (see ``FileTask.first_chunk``)."""
        ...


class TierCounts(Protocol):
    """What a tier counted over one pull; :class:`PullResult` reports these."""

    @property
    def bytes_from_peers(self) -> int: ...

    @property
    def bytes_from_origin(self) -> int: ...

    @property
    def bytes_from_local_cache(self) -> int: ...

    @property
    def peer_failures(self) -> int: ...

    @property
    def corrupt_from_peers(self) -> int: ...


def looks_like_manifest_id(text: str) -> bool:
    """True for ``sha256:<64 hex>`` or a bare 64-hex string (not a source URI or path)."""
    try:
        Digest.parse(text.strip())
    except ManifestInvalid:
        return False
    return True


async def resolve_manifest(ref: str | WeightsEntry, store: BlobStore) -> Manifest:
    """The manifest a pull should materialize.

    ``ref`` is a manifest id, or a weights entry whose manifest is looked up in
    the store's ``refs/`` by config hash. This never mirrors: embedded mode
    (:mod:`bdn.api`) catches RefNotFound and mirrors first, so pulling does not
    load the mirror code and its source SDKs.

    Raises:
        ManifestNotFound / RefNotFound: nothing to pull.
    """
    layout = Store(store)
    if isinstance(ref, str):
        return await layout.get_manifest(ref)
    try:
        manifest_id = await layout.get_ref(ref.config_hash())
    except RefNotFound:
        raise RefNotFound(
            f"{ref.source} has not been mirrored into {store.uri} yet; run "
            f"`bdn mirror {ref.source}` first (or pull it in embedded mode with no agent)"
        ) from None
    return await layout.get_manifest(manifest_id)


async def pull_manifest(
    manifest: Manifest,
    mount: Path,
    *,
    store: BlobStore,
    cache: NodeCache,
    options: PullOptions = DEFAULT_PULL_OPTIONS,
    on_progress: Callable[[int], None] | None = None,
    on_plan: Callable[[int], None] | None = None,
    tiers: Tier | None = None,
) -> PullResult:
    """Make ``mount`` hold exactly ``manifest``'s tree, verified and read-only.

    With ``tiers`` (the node agent's peer tier, see :class:`Tier`), each
    missing chunk is read from its owner on the ring (or this node's chunk
    service) before origin.

    ``on_plan(bytes_to_fetch)`` is called once the cache has been consulted;
    ``on_progress(delta)`` with bytes as they are fetched.

    Raises:
        InsufficientSpace: the missing blobs do not fit, even after eviction.
        MountConflict: ``mount`` is someone else's non-empty directory.
        TransferError / IntegrityError / NotFound: origin could not deliver.
    """
    started = time.monotonic()
    result = PullResult(manifest.id, mount, len(manifest.files), manifest.total_size)
    tier = tiers.start_pull() if tiers is not None else None
    run = _Pull(manifest, store, cache, options, tier, result)
    for attempt in (1, 2):
        await run.fill_cache(on_progress, on_plan)
        try:
            done = await asyncio.to_thread(cache.materialize, manifest, mount)
            break
        except BlobNotFound:
            # Another pull's eviction took a blob between our check and the link
            # (eviction never touches a blob already linked into a tree): once more.
            if attempt == 2:
                raise
            log.info("a cached blob was evicted during the pull; fetching it again")
    result.materialized = done.mode
    run.count_bytes()
    result.seconds = time.monotonic() - started
    return result


@dataclass(slots=True)
class _Pull:
    """One pull's inputs, and the blobs it fetched itself (``fetched``)."""

    manifest: Manifest
    store: BlobStore
    cache: NodeCache
    options: PullOptions
    tier: TierPull | None
    result: PullResult
    fetched: set[Digest] = field(default_factory=set)
    on_chunk: ChunkDone | None = None
    order: InOrder | None = None
    trust: Trust = field(init=False)

    def __post_init__(self) -> None:
        self.trust = self.options.trust_for(self.store.uri)

    async def fill_cache(
        self, on_progress: Callable[[int], None] | None, on_plan: Callable[[int], None] | None,
        blobs: list[FileEntry] | None = None,
    ) -> None:
        """Make every blob of the manifest (or only ``blobs``) present in the node cache."""
        cache = self.cache
        blobs = _unique_blobs(self.manifest) if blobs is None else blobs
        await recheck_after_reboot(cache, blobs, self.manifest.chunk_size)
        held = [e for e in blobs if cache.has_blob(e.sha256, e.size)]
        missing = [e for e in blobs if not cache.has_blob(e.sha256, e.size)]
        # Held, but admitted in a way this pull does not accept: the write path
        # proves them under their lock (and fetches any that fail).
        usable = cache.usable((e.sha256 for e in held), self.trust)
        suspect = [e for e in held if e.sha256 not in usable]
        # Most recently used now, so a concurrent pull's eviction takes others first.
        cache.touch(e.sha256 for e in blobs)
        if on_plan:
            on_plan(sum(e.size for e in missing))
        if not missing and not suspect:
            return
        if missing:
            await cache.ensure_space(sum(e.size for e in missing),
                                     keep=[e.sha256 for e in blobs])
        slots = asyncio.Semaphore(MAX_BLOBS_IN_FLIGHT)
        async with TransferEngine(self.options.transfer, on_progress=on_progress) as engine:

            async def one(entry: FileEntry) -> None:
                async with slots:
                    await self.fetch_blob(entry, engine)

            await asyncio.gather(*(one(e) for e in [*suspect, *missing]))
        cache.touch(e.sha256 for e in [*suspect, *missing])

    async def fetch_blob(self, entry: FileEntry, engine: TransferEngine) -> None:
        """Bring one missing blob into the node cache through the tiers.

        The cache's write path (:func:`bdn.cache.fill.fill_blob`) takes the
        blob's lock and skips the fetch when another task or process just
        committed the blob, or the blob it holds proves to be this pull's;
        then nothing is counted here but the proof.
        """
        prove = self.trust.proves_fetches
        fetched = await fill_blob(
            self.cache,
            entry,
            self.manifest.chunk_size,
            lambda partial: self.fetch_into(partial, entry, engine, prove),
            strict=prove,
            fsync=self.options.fsync,
            trust=self.trust,
            on_proof=self._proved,
        )
        if fetched is None:
            return
        if prove:
            self._proved(entry.size)
        self.fetched.add(entry.sha256)
        if self.tier is None:  # A tier counts origin's bytes itself.
            self.result.bytes_from_origin += fetched

    def _proved(self, nbytes: int) -> None:
        self.result.bytes_proven += nbytes

    async def fetch_into(
        self, partial: Partial, entry: FileEntry, engine: TransferEngine, prove: bool
    ) -> int:
        """Fetch the chunks ``partial`` lacks, each verified; returns the bytes read.

        ``prove``: the engine also hashes the file (SHA-256) as its chunks land,
        reading them back while they are still in the page cache.
        """
        chunk_size = self.manifest.chunk_size
        reader: RangeReader = self.store.reader(blob_key(entry.sha256), entry.size)
        if self.tier is not None:
            reader = self.tier.reader(reader, entry, chunk_size)
        on_done: Callable[[int], None] = partial.mark_done
        if self.on_chunk is not None:
            on_done = self._tell_chunks(partial, entry, self.on_chunk)
        first, in_flight = (self.tier.first_chunk(entry, chunk_size) if self.tier else 0), None
        if self.order is not None:  # A reader streams the blob: in its order, not the tier's.
            first, in_flight = self.order.first_chunk, self.order.chunks_in_flight
        try:
            done = await engine.fetch(
                FileTask(
                    reader=reader,
                    size=entry.size,
                    dest=partial.path,
                    chunk_size=chunk_size,
                    expected_chunks=entry.chunks,
                    expected_sha256=entry.sha256.hex if prove else None,
                    done_chunks=partial.done_chunks,
                    on_chunk_done=on_done,
                    partial_chunks=partial.partial_chunks,
                    on_chunk_progress=partial.mark_progress,
                    label=entry.path,
                    first_chunk=first,
                    chunks_in_flight=in_flight,
                )
            )
        finally:
            await reader.close()
        return done.bytes_fetched

    @staticmethod
    def _tell_chunks(partial: Partial, entry: FileEntry, tell: ChunkDone) -> Callable[[int], None]:
        """``partial.mark_done`` that also tells ``tell``; tells it the chunks already done."""
        for index in sorted(partial.done_chunks):
            tell(entry, partial.path, index)

        def done(index: int) -> None:
            partial.mark_done(index)
            tell(entry, partial.path, index)

        return done

    def count_bytes(self) -> None:
        """Fill in the result's bytes per tier, once the tree is in place."""
        # Every byte of the tree came from the fetch (blobs fetched now) or the
        # node cache (blobs already held, and repeated paths of the same content).
        result, manifest = self.result, self.manifest
        sizes = {e.sha256: e.size for e in manifest.files}
        result.bytes_from_node_cache = manifest.total_size - sum(sizes[d] for d in self.fetched)
        if self.tier is None:
            return
        stats = self.tier.stats
        result.bytes_from_peers = stats.bytes_from_peers
        result.bytes_from_origin = stats.bytes_from_origin
        # Own chunks this node's chunk service already held (a peer asked first).
        result.bytes_from_node_cache += stats.bytes_from_local_cache
        result.peer_failures = stats.peer_failures
        result.corrupt_from_peers = stats.corrupt_from_peers


async def fill_blobs(
    manifest: Manifest,
    blobs: list[FileEntry],
    *,
    store: BlobStore,
    cache: NodeCache,
    options: PullOptions = DEFAULT_PULL_OPTIONS,
    tiers: Tier | None = None,
    on_chunk: ChunkDone | None = None,
    order: InOrder | None = None,
) -> None:
    """Bring ``blobs`` (entries of ``manifest``) into the node cache, with no tree.

    The same path as :func:`pull_manifest`'s (cache, then ``tiers``, then origin,
    every chunk verified, single-flight per blob); ``on_chunk`` sees each chunk as
    it is verified, so a reader may serve it before the blob is complete, and
    ``order`` makes the chunks come in the order that reader needs them.

    Raises:
        As :func:`pull_manifest`, but never MountConflict.
    """
    result = PullResult(manifest.id, Path(), len(blobs), sum(e.size for e in blobs))
    tier = tiers.start_pull() if tiers is not None else None
    run = _Pull(manifest, store, cache, options, tier, result, on_chunk=on_chunk, order=order)
    await run.fill_cache(None, None, blobs=blobs)


def _unique_blobs(manifest: Manifest) -> list[FileEntry]:
    """The manifest's blobs, each once (several paths may share content)."""
    seen: dict[Digest, FileEntry] = {}
    for entry in manifest.files:
        seen.setdefault(entry.sha256, entry)
    return list(seen.values())
