"""Mirror one weights entry: resolve, list, filter, dedup, copy new blobs, write the manifest.

Dedup is decided from metadata before any byte moves: a published SHA-256
(Hugging Face LFS) or the store's index from source object identity to blob
digest. Only the rest is read, through the transfer engine, hashed while it
streams, and stored; the manifest and then the ref are written last, so a
crash at any point leaves nothing that points at a missing blob.

Files are copied and hashed on a pool of threads sized from the CPUs the
process may use (:func:`bdn.transfer.cores.available_cpus`: affinity mask and
cgroup limit): SHA-256 is sequential within a file, but hashlib releases the
GIL, so several files hash on several cores at once. A source with no pinned
revision is listed again before the manifest is written, and any object whose
version changed fails the mirror (:func:`_check_unchanged`), so a manifest
never records two versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bdn.backends import SourceEnv, open_source
from bdn.backends.base import BlobStore, Source, SourceObject
from bdn.backends.staging import staging_name
from bdn.config import patterns
from bdn.config.secrets import SecretResolver
from bdn.config.settings import Settings
from bdn.config.weights import WeightsEntry
from bdn.digest import DEFAULT_CHUNK_SIZE, Digest
from bdn.errors import ConfigError, SourceError
from bdn.http import HttpClient
from bdn.manifest import FileEntry, Filters, Manifest, SourceRef
from bdn.store import Store, blob_key, digest_stream
from bdn.transfer.cores import available_cpus
from bdn.transfer.engine import DEFAULT_TRANSFER_CONFIG, FileTask, TransferConfig, TransferEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MirrorOptions:
    """How a mirror runs.

    Attributes:
        chunk_size: manifest chunk size in bytes (the unit of verification and
            of peer ownership later on).
        transfer: engine limits (connections, segment size, retries).
        endpoint_url: S3-compatible endpoint for ``s3://`` sources.
        max_files_in_flight: files transferred at once; bounds the staging
            space (a file is staged whole before it is committed). ``None``:
            the larger of 8 and ``workers`` for a store that stages in place
            (``file://``); 8 for one that spools to a local temp dir, whose
            space holds every file in flight whole.
        workers: CPUs the mirror keeps busy copying and hashing
            (``BDN_WORKERS``/``--workers``); ``None``: the CPUs this process
            may use. The engine gets two threads per CPU (one hashing while
            the other waits on the disk), replacing its ``io_threads``, and
            as many data-plane processes, unless ``transfer.workers`` already
            names a count (that choice sticks).
        spool_dir: where files are staged for stores that cannot rename into
            place (``s3://``); default: the system temp dir.
        hf_endpoint: the Hugging Face Hub (``HF_ENDPOINT``); ``None`` means
            https://huggingface.co.
        gcs_emulator_host, r2_endpoint_url, cw_endpoint_url, azure_endpoint_url,
        oidc_token_file: see
            :class:`bdn.backends.SourceEnv`.
    """

    chunk_size: int = DEFAULT_CHUNK_SIZE
    transfer: TransferConfig = DEFAULT_TRANSFER_CONFIG
    endpoint_url: str | None = None
    max_files_in_flight: int | None = None
    workers: int | None = None
    spool_dir: Path | None = None
    hf_endpoint: str | None = None
    gcs_emulator_host: str | None = None
    r2_endpoint_url: str | None = None
    cw_endpoint_url: str | None = None
    azure_endpoint_url: str | None = None
    oidc_token_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MirrorOptions:
        """Default options that carry the endpoints and worker count of ``settings``."""
        return cls(**asdict(SourceEnv.of(settings)), workers=settings.workers)

    def source_env(self) -> SourceEnv:
        """The upstream endpoints these options carry."""
        return SourceEnv.of(self)

    def cpus(self) -> int:
        """``workers``, or the CPUs this process may use."""
        return max(1, self.workers if self.workers is not None else available_cpus())

    def files_in_flight(self, *, spooled: bool = False) -> int:
        """``max_files_in_flight``, or the automatic value (see the attribute)."""
        if self.max_files_in_flight is not None:
            return max(1, self.max_files_in_flight)
        return 8 if spooled else max(8, self.cpus())

    def transfer_config(self) -> TransferConfig:
        """The engine's limits with ``io_threads`` two per CPU and one data-plane
        process per CPU (see ``workers``)."""
        cpus = self.cpus()
        workers = self.transfer.workers if self.transfer.workers is not None else cpus
        return dataclasses.replace(self.transfer, io_threads=min(128, 2 * cpus), workers=workers)


DEFAULT_MIRROR_OPTIONS = MirrorOptions()


@dataclass(frozen=True, slots=True)
class MirrorPlan:
    """What a mirror will do, known once the source is listed (for progress bars)."""

    files: int
    total_bytes: int
    bytes_to_transfer: int


@dataclass(slots=True)
class MirrorResult:
    """Outcome of one mirror.

    ``bytes_transferred`` counts bytes read from the source (retries included);
    ``bytes_deduplicated`` counts bytes of files whose content the store already
    held, so they were not stored again; ``bytes_stored`` is new blob bytes.
    """

    manifest_id: str
    files: int
    total_bytes: int
    bytes_transferred: int = 0
    bytes_deduplicated: int = 0
    bytes_stored: int = 0
    seconds: float = 0.0
    revision: str | None = None
    config_hash: str = ""
    stored_paths: list[str] = field(default_factory=list)
    # Digests this run has claimed for storing: two paths with identical new
    # content are both read, but the blob is stored (and counted) once.
    _claimed: set[Digest] = field(default_factory=set, repr=False)

    def summary(self) -> dict[str, object]:
        """The ``--json`` summary of README's ``bdn mirror`` section."""
        return {
            "manifest_id": self.manifest_id,
            "files": self.files,
            "total_bytes": self.total_bytes,
            "bytes_transferred": self.bytes_transferred,
            "bytes_deduplicated": self.bytes_deduplicated,
            "bytes_stored": self.bytes_stored,
            "revision": self.revision,
            "seconds": round(self.seconds, 3),
        }


@dataclass(slots=True)
class _Known:
    """A listed object whose blob the store already holds."""

    obj: SourceObject
    digest: Digest
    chunks: tuple[str, ...] | None  # None: blob held, chunk list for this size missing


async def run_mirror(
    entry: WeightsEntry,
    *,
    store: BlobStore,
    secrets: SecretResolver,
    options: MirrorOptions = DEFAULT_MIRROR_OPTIONS,
    on_progress: Callable[[int], None] | None = None,
    on_plan: Callable[[MirrorPlan], None] | None = None,
    http: HttpClient | None = None,
) -> MirrorResult:
    """Mirror ``entry`` into ``store`` and return the manifest id and byte counts.

    Raises:
        ConfigError: the filters select no file, or the source kind is unsupported.
        SecretError / AuthError: credentials are missing, malformed or refused.
        SourceNotFound: the source does not exist.
        TransferError / StoreError: bytes could not be read or stored.
    """
    started = time.monotonic()
    own_http = http is None
    client = http or HttpClient()
    layout = Store(store)
    try:
        source = open_source(entry, secrets=secrets, http=client, env=options.source_env())
        try:
            result = await _mirror(entry, source, layout, options, on_progress, on_plan)
        finally:
            await source.close()
    finally:
        if own_http:
            await client.close()
    result.seconds = time.monotonic() - started
    return result


async def _mirror(
    entry: WeightsEntry,
    source: Source,
    layout: Store,
    options: MirrorOptions,
    on_progress: Callable[[int], None] | None,
    on_plan: Callable[[MirrorPlan], None] | None,
) -> MirrorResult:
    revision = await source.resolve()
    listed = await source.list()
    selected = _select(entry, source, listed)
    known, unknown = await _partition(layout, selected, options.chunk_size)
    if on_plan:
        on_plan(
            MirrorPlan(len(selected), sum(o.size for o in selected), sum(o.size for o in unknown))
        )

    entries: dict[str, FileEntry] = {}
    result = MirrorResult(
        manifest_id="",
        files=len(selected),
        total_bytes=sum(o.size for o in selected),
        revision=revision,
        config_hash=entry.config_hash(),
    )
    for k in known:
        chunks = k.chunks
        if chunks is None:
            chunks = await _recompute_chunks(layout, k.digest, k.obj.size, options.chunk_size)
        entries[k.obj.path] = FileEntry(k.obj.path, k.obj.size, k.digest, chunks, k.obj.etag)

    if unknown:
        await _transfer(source, layout, unknown, options, on_progress, entries, result)
    if revision is None:  # A revision (HF commit) pins every file already.
        await _check_unchanged(source, layout, selected, unknown)

    manifest = Manifest.build(
        source=SourceRef(uri=source.uri, kind=source.kind, revision=revision),
        filters=Filters(entry.allow_patterns, entry.ignore_patterns),
        chunk_size=options.chunk_size,
        files=list(entries.values()),
    )
    result.manifest_id = await layout.put_manifest(manifest)
    await layout.put_ref(result.config_hash, result.manifest_id)
    await _record_hub_revision(entry, layout, result)
    result.bytes_deduplicated = result.total_bytes - result.bytes_stored
    log.info(
        "mirrored %s -> %s (%d files, %d bytes read, %d bytes stored)",
        source.uri,
        result.manifest_id,
        result.files,
        result.bytes_transferred,
        result.bytes_stored,
    )
    return result


async def _check_unchanged(
    source: Source, layout: Store, selected: list[SourceObject], copied: list[SourceObject]
) -> None:
    """List the source again; fail if any selected object's version changed.

    Reads are pinned to the listed version where the upstream can (S3/R2/cw
    ``If-Match``, GCS ``generation``, Azure ``If-Match``, HTTP ``If-Match`` or
    ``If-Unmodified-Since``), so a change usually fails the read itself. This
    second look covers what a pin cannot: an object changed after it was copied,
    an upstream that ignores the condition, a local file rewritten in place. The
    index entries this run wrote for a changed object are removed, so no later
    mirror trusts bytes that may mix two versions.

    Raises:
        SourceError: an object changed or disappeared; no manifest is written.
    """
    now = {o.path: o for o in await source.list()}
    copied_paths = {o.path for o in copied}
    for obj in selected:
        later = now.get(obj.path)
        if later is not None and later.identity == obj.identity:
            continue
        if obj.path in copied_paths:
            for key in (obj.identity, obj.content_id):
                if key:
                    await layout.drop_index(key)
        base = source.uri.rstrip("/")
        where = base if base.endswith(f"/{obj.path}") else f"{base}/{obj.path}"
        if later is None:
            raise SourceError(f"{where} was deleted upstream while it was being mirrored; no "
                              "manifest was written; run the mirror again")
        versions = (f" (listed as {obj.etag}, now {later.etag})"
                    if obj.etag and later.etag and obj.etag != later.etag else "")
        raise SourceError(f"{where} changed upstream while it was being mirrored{versions}; no "
                          "manifest was written; run the mirror again to copy the new version "
                          "in one piece")


async def _record_hub_revision(entry: WeightsEntry, layout: Store, result: MirrorResult) -> None:
    """For an hf:// source, map (repo, revision) and (repo, commit) to the new manifest, so
    the Hub endpoint (:mod:`bdn.hub`) finds it; the auth secret's name marks it private."""
    parsed = entry.parsed_source
    if parsed.kind != "hf" or not parsed.repo_id or not parsed.revision or not result.revision:
        return
    secret = entry.auth.auth_secret_name if entry.auth is not None else None
    await layout.put_hub_revision(parsed.repo_id, parsed.revision, result.revision,
                                  result.config_hash, result.manifest_id, secret or None)


def _select(entry: WeightsEntry, source: Source, listed: list[SourceObject]) -> list[SourceObject]:
    if not listed:
        raise ConfigError(
            f"source {source.uri} has no files; check the bucket, prefix or directory"
        )
    paths = patterns.select([o.path for o in listed], entry.allow_patterns, entry.ignore_patterns)
    if not paths:
        shown = ", ".join(o.path for o in listed[:5]) + (", …" if len(listed) > 5 else "")
        raise ConfigError(
            f"allow_patterns {list(entry.allow_patterns or [])} / ignore_patterns "
            f"{list(entry.ignore_patterns or [])} select none of the {len(listed)} files in "
            f"{source.uri} ({shown}); note that '*.ext' matches the top level only, "
            "use '**/*.ext' to recurse",
            field="allow_patterns",
        )
    keep = set(paths)
    return [o for o in listed if o.path in keep]


async def _partition(
    layout: Store, objects: list[SourceObject], chunk_size: int
) -> tuple[list[_Known], list[SourceObject]]:
    """Split objects into those the store already holds (from metadata) and the rest."""

    async def lookup(obj: SourceObject) -> _Known | None:
        digest: Digest | None = None
        if obj.sha256:
            digest = Digest.parse(obj.sha256)
        else:
            for key in (obj.identity, obj.content_id):
                hit = await layout.lookup_index(key) if key else None
                if hit is not None and hit.size == obj.size:
                    digest = hit.digest
                    break
        if digest is None or not await layout.has_blob(digest):
            return None
        return _Known(obj, digest, await layout.get_chunks(digest, obj.size, chunk_size))

    sem = asyncio.Semaphore(32)

    async def bounded(obj: SourceObject) -> _Known | None:
        async with sem:
            return await lookup(obj)

    found = await asyncio.gather(*(bounded(o) for o in objects))
    known = [k for k in found if k is not None]
    held = {k.obj.path for k in known}
    return known, [o for o in objects if o.path not in held]


async def _recompute_chunks(
    layout: Store, digest: Digest, size: int, chunk_size: int
) -> tuple[str, ...]:
    """Chunk digests for a held blob mirrored earlier with another chunk size."""
    reader = layout.backend.reader(blob_key(digest), size)
    try:
        sha, chunks = await digest_stream(reader, size, chunk_size)
    finally:
        await reader.close()
    if sha != digest.hex:
        raise ConfigError(f"stored blob {digest} does not hash to its name; run `bdn store check`")
    await layout.put_chunks(digest, size, chunk_size, chunks)
    return chunks


async def _transfer(
    source: Source,
    layout: Store,
    objects: list[SourceObject],
    options: MirrorOptions,
    on_progress: Callable[[int], None] | None,
    entries: dict[str, FileEntry],
    result: MirrorResult,
) -> None:
    staging = layout.backend.staging_dir()
    spool_ctx: contextlib.AbstractContextManager[str | None]
    spool_ctx = (
        contextlib.nullcontext(None)
        if staging is not None
        else tempfile.TemporaryDirectory(prefix="bdn-mirror-", dir=options.spool_dir)
    )
    files_sem = asyncio.Semaphore(options.files_in_flight(spooled=staging is None))
    with spool_ctx as spool:
        stage_dir = staging if staging is not None else Path(str(spool))
        config = options.transfer_config()
        async with TransferEngine(config, on_progress=on_progress) as engine:

            async def one(obj: SourceObject) -> None:
                async with files_sem:
                    await _transfer_one(
                        engine, source, layout, obj, stage_dir, options, entries, result
                    )

            await asyncio.gather(*(one(o) for o in objects))


async def _transfer_one(
    engine: TransferEngine,
    source: Source,
    layout: Store,
    obj: SourceObject,
    stage_dir: Path,
    options: MirrorOptions,
    entries: dict[str, FileEntry],
    result: MirrorResult,
) -> None:
    # Unique per host, process and call (several mirrors may share one store),
    # and recognisable, so the next writer can sweep what a killed one left.
    dest = stage_dir / staging_name()
    reader = source.reader(obj)
    try:
        fetched = await engine.fetch(
            FileTask(
                reader=reader,
                size=obj.size,
                dest=dest,
                chunk_size=options.chunk_size,
                expected_sha256=obj.sha256,
                compute_sha256=True,
                label=obj.path,
                # Stores flush a file before publishing its name; flushing here
                # overlaps that with the SHA-256 pass.
                durable=True,
            )
        )
        result.bytes_transferred += fetched.bytes_fetched
        assert fetched.sha256 is not None  # compute_sha256=True guarantees it
        digest = Digest(fetched.sha256)
        # Claim before the first await so a twin task cannot slip in between.
        if digest not in result._claimed:
            result._claimed.add(digest)
            if not await layout.has_blob(digest):
                await layout.backend.put_file(blob_key(digest), dest, move=True)
                result.bytes_stored += obj.size
                result.stored_paths.append(obj.path)
        await layout.put_chunks(digest, obj.size, options.chunk_size, fetched.chunks)
        await layout.put_index(obj.identity, digest, obj.size)
        if obj.content_id:
            await layout.put_index(obj.content_id, digest, obj.size)
        entries[obj.path] = FileEntry(obj.path, obj.size, digest, fetched.chunks, obj.etag)
    finally:
        await reader.close()
        with contextlib.suppress(FileNotFoundError):
            dest.unlink()
