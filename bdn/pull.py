"""Pull a manifest's tree onto this node: node cache first, then origin.

Every blob the manifest names is looked up in the node cache; the missing ones
are fetched from the store (the mirrored origin) by the transfer engine into
resumable partial files, verified chunk by chunk against the manifest's
xxh3-128 digests, and committed into the cache under a cross-process lock, so
concurrent pulls on one node download each blob once. The tree is then
materialized at the mount location from hardlinks and swapped in atomically.
The peer tier slots in between cache and origin (DESIGN.md, "Pull").
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bdn.backends.base import BlobStore, RangeReader
from bdn.cache import NodeCache
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.digest import Digest, xxh3_128_hex
from bdn.errors import (
    BlobNotFound,
    CacheError,
    InsufficientSpace,
    IntegrityError,
    ManifestInvalid,
    RefNotFound,
)
from bdn.manifest import FileEntry, Manifest
from bdn.mirror import MirrorOptions, run_mirror
from bdn.peer.tiered import TierConfig, TieredReader, TierStats
from bdn.store import Store, blob_key
from bdn.transfer.engine import DEFAULT_TRANSFER_CONFIG, FileTask, TransferConfig, TransferEngine

log = logging.getLogger(__name__)

MAX_BLOBS_IN_FLIGHT = 16
"""Blobs fetched at once; their chunks share the engine's connection cap."""


@dataclass(frozen=True, slots=True)
class PullOptions:
    """How a pull runs.

    Attributes:
        transfer: engine limits (connections, segment size, retries).
        strict: also check every file's SHA-256 (the chunk digests are the
            check otherwise; DESIGN.md, "Chunk").
        fsync: flush every blob to disk before committing it. Off by default:
            the cache marks such blobs as unflushed for this boot and verifies
            them again after a reboot, which keeps a multi-GB flush (measured
            at ~1 s per 2 GiB here) off the critical path of a cold start.
    """

    transfer: TransferConfig = DEFAULT_TRANSFER_CONFIG
    strict: bool = False
    fsync: bool = False


DEFAULT_PULL_OPTIONS = PullOptions()


@dataclass(slots=True)
class PullResult:
    """Outcome of one pull; bytes are counted per tier, as ``--json`` prints them."""

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

    def summary(self) -> dict[str, object]:
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


@dataclass(frozen=True, slots=True)
class _Peers:
    """A pull's peer tier and the counters its readers share."""

    config: TierConfig
    stats: TierStats


def looks_like_manifest_id(text: str) -> bool:
    """True for ``sha256:<64 hex>`` or a bare 64-hex string (not a source URI or path)."""
    try:
        Digest.parse(text.strip())
    except ManifestInvalid:
        return False
    return True


async def resolve_manifest(
    ref: str | WeightsEntry,
    store: BlobStore,
    *,
    secrets: SecretResolver,
    mirror_options: MirrorOptions | None = None,
    mirror_if_missing: bool = False,
) -> Manifest:
    """The manifest a pull should materialize.

    ``ref`` is a manifest id, or a weights entry whose manifest is looked up in
    the store's ``refs/`` by config hash. With ``mirror_if_missing`` (embedded
    mode: no agent, no mirror service) a source never mirrored is mirrored first.

    Raises:
        ManifestNotFound / RefNotFound: nothing to pull, and no mirroring allowed.
        Anything :func:`bdn.mirror.run_mirror` raises, when it mirrors.
    """
    layout = Store(store)
    if isinstance(ref, str):
        return await layout.get_manifest(ref)
    try:
        manifest_id = await layout.get_ref(ref.config_hash())
    except RefNotFound:
        if not mirror_if_missing:
            raise RefNotFound(
                f"{ref.source} has not been mirrored into {store.uri} yet; run "
                f"`bdn mirror {ref.source}` first (or pull it in embedded mode with no agent)"
            ) from None
        log.info("%s not mirrored yet; mirroring into %s first", ref.source, store.uri)
        result = await run_mirror(
            ref, store=store, secrets=secrets, options=mirror_options or MirrorOptions()
        )
        manifest_id = result.manifest_id
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
    tiers: TierConfig | None = None,
) -> PullResult:
    """Make ``mount`` hold exactly ``manifest``'s tree, verified and read-only.

    With ``tiers`` (the node agent), each missing chunk is read from its owner
    on the ring (or this node's chunk service) before origin.

    ``on_plan(bytes_to_fetch)`` is called once the cache has been consulted;
    ``on_progress(delta)`` with bytes as they are fetched.

    Raises:
        InsufficientSpace: the missing blobs do not fit, even after eviction.
        MountConflict: ``mount`` is someone else's non-empty directory.
        TransferError / IntegrityError / NotFound: origin could not deliver.
    """
    started = time.monotonic()
    result = PullResult(manifest.id, mount, len(manifest.files), manifest.total_size)
    fetched: set[Digest] = set()
    peers = _Peers(tiers, TierStats()) if tiers is not None else None
    for attempt in (1, 2):
        await _fill_cache(
            manifest, store, cache, options, result, fetched, on_progress, on_plan, peers
        )
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
    # Every byte of the tree came from origin (blobs fetched now) or the node
    # cache (blobs already held, and repeated paths of the same content).
    sizes = {e.sha256: e.size for e in manifest.files}
    result.bytes_from_node_cache = manifest.total_size - sum(sizes[d] for d in fetched)
    if peers is not None:
        result.bytes_from_peers = peers.stats.bytes_from_peers
        result.bytes_from_origin = peers.stats.bytes_from_origin
        # Own chunks this node's chunk service already held (a peer asked first).
        result.bytes_from_node_cache += peers.stats.bytes_from_local_cache
        result.peer_failures = peers.stats.peer_failures
        result.corrupt_from_peers = peers.stats.corrupt_from_peers
    result.seconds = time.monotonic() - started
    return result


async def _fill_cache(
    manifest: Manifest,
    store: BlobStore,
    cache: NodeCache,
    options: PullOptions,
    result: PullResult,
    fetched: set[Digest],
    on_progress: Callable[[int], None] | None,
    on_plan: Callable[[int], None] | None,
    peers: _Peers | None,
) -> None:
    """Make every blob of ``manifest`` present in the node cache."""
    blobs = _unique_blobs(manifest)
    await _recheck_after_reboot(blobs, manifest.chunk_size, cache)
    missing = [e for e in blobs if not cache.has_blob(e.sha256, e.size)]
    # Most recently used now, so a concurrent pull's eviction takes others first.
    cache.touch(e.sha256 for e in blobs)
    if on_plan:
        on_plan(sum(e.size for e in missing))
    if not missing:
        return
    await cache.ensure_space(sum(e.size for e in missing), keep=[e.sha256 for e in blobs])
    slots = asyncio.Semaphore(MAX_BLOBS_IN_FLIGHT)
    async with TransferEngine(options.transfer, on_progress=on_progress) as engine:

        async def one(entry: FileEntry) -> None:
            async with slots:
                if await _fetch_blob(
                    entry, manifest.chunk_size, store, cache, engine, options, result, peers
                ):
                    fetched.add(entry.sha256)

        await asyncio.gather(*(one(e) for e in missing))
    cache.touch(e.sha256 for e in missing)


async def _recheck_after_reboot(blobs: list[FileEntry], chunk_size: int, cache: NodeCache) -> None:
    """Verify held blobs committed without fsync in an earlier boot (see PullOptions.fsync).

    The chunk digests are the check (xxh3-128, several GB/s); a blob that
    fails is removed so this pull fetches it again.
    """
    held = [e for e in blobs if cache.has_blob(e.sha256, e.size)]
    suspects = cache.unflushed_earlier(e.sha256 for e in held)
    for entry in (e for e in held if e.sha256 in suspects):
        path = cache.blob_path(entry.sha256)
        if await asyncio.to_thread(_chunks_match, path, chunk_size, entry.chunks):
            cache.mark_verified(entry.sha256)
        else:
            log.warning(
                "%s: cached blob %s was damaged by an unclean shutdown; refetching",
                entry.path,
                entry.sha256,
            )
            cache.remove_blob(entry.sha256)


def _disk_full(err: BaseException) -> bool:
    """ENOSPC, directly or as the cause of a wrapped cache error."""
    while err is not None:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        err = err.__cause__  # type: ignore[assignment]
    return False


def _chunks_match(path: Path, chunk_size: int, chunks: tuple[str, ...]) -> bool:
    try:
        with open(path, "rb") as f:
            for expected in chunks:
                if xxh3_128_hex(f.read(chunk_size)) != expected:
                    return False
            return f.read(1) == b""
    except OSError:
        return False


def _unique_blobs(manifest: Manifest) -> list[FileEntry]:
    seen: dict[Digest, FileEntry] = {}
    for entry in manifest.files:
        seen.setdefault(entry.sha256, entry)
    return list(seen.values())


async def _fetch_blob(
    entry: FileEntry,
    chunk_size: int,
    store: BlobStore,
    cache: NodeCache,
    engine: TransferEngine,
    options: PullOptions,
    result: PullResult,
    peers: _Peers | None = None,
) -> bool:
    """Fetch one blob into the cache; False when another task or process just did."""
    async with cache.lock(entry.sha256):
        # Single-flight: whoever held the lock before us may have committed it.
        if cache.has_blob(entry.sha256, entry.size):
            return False
        reader: RangeReader = store.reader(blob_key(entry.sha256), entry.size)
        if peers is not None:
            reader = TieredReader(
                reader,
                entry.sha256,
                entry.size,
                chunk_size,
                entry.chunks,
                peers.config,
                peers.stats,
            )
        try:
            partial = cache.open_partial(entry.sha256, entry.size, chunk_size, entry.chunks)
            fetched = await engine.fetch(
                FileTask(
                    reader=reader,
                    size=entry.size,
                    dest=partial.path,
                    chunk_size=chunk_size,
                    expected_chunks=entry.chunks,
                    expected_sha256=entry.sha256.hex if options.strict else None,
                    done_chunks=partial.done_chunks,
                    on_chunk_done=partial.mark_done,
                    label=entry.path,
                )
            )
        except IntegrityError:
            # Only a whole-file SHA-256 mismatch gets here (chunk mismatches are
            # retried inside the engine): the partial cannot be trusted.
            if options.strict:
                partial.discard()
            raise
        except OSError as err:
            if not _disk_full(err) or isinstance(err, InsufficientSpace):
                raise
            # Someone else filled the disk after the space check. The partial
            # keeps its verified chunks, so a later pull resumes from there.
            raise CacheError(
                f"{entry.path}: the node cache's disk filled up while fetching "
                f"({cache.root}); free space or set a smaller --max-cache-bytes / "
                "BDN_CACHE_MAX_BYTES, then pull again (verified chunks are kept)",
                path=str(cache.root),
            ) from err
        finally:
            await reader.close()
        await asyncio.to_thread(partial.commit, sync=options.fsync)
        if peers is None:
            result.bytes_from_origin += fetched.bytes_fetched
        return True
