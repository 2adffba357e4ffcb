"""The store layout: which key holds what, and the checks that keep it honest.

Same on every backend (``file://``, ``s3://``, ``gs://``, ``http(s)://``)::

    blobs/sha256/<2 hex>/<hex>                  immutable blob content
    chunks/<chunk_size>/<2 hex>/<hex>.json      xxh3-128 chunk digests of a blob
    manifests/<hex>.json                        canonical manifest bytes; <hex> = its sha256
    refs/<config hash>                          the manifest id last mirrored for a config
    index/<2 hex>/<sha256 of identity>.json     source object identity -> blob digest

Write order is what makes a crash harmless: a blob first, then its chunk list
and index entry, then the manifest, then the ref. So every manifest a reader
can find points at blobs that exist, and every index entry at a blob that
exists.

The deep check re-hashes stored bytes (:func:`digest_stream`), so a store can be
fsck'd from any machine that can read it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from bdn.backends.base import BlobStore, RangeReader
from bdn.digest import Digest, chunk_count, is_xxh3_hex, new_xxh3
from bdn.errors import (
    BdnError,
    BlobNotFound,
    ManifestInvalid,
    ManifestNotFound,
    NotFound,
    RefNotFound,
    StoreError,
    TransferError,
)
from bdn.manifest import Manifest

BLOBS = "blobs/sha256/"
CHUNKS = "chunks/"
MANIFESTS = "manifests/"
REFS = "refs/"
INDEX = "index/"


def blob_key(digest: Digest) -> str:
    """Key of a blob's content."""
    return f"{BLOBS}{digest.hex[:2]}/{digest.hex}"


def chunks_key(digest: Digest, chunk_size: int) -> str:
    """Key of a blob's chunk-digest list for one chunk size."""
    return f"{CHUNKS}{chunk_size}/{digest.hex[:2]}/{digest.hex}.json"


def manifest_key(manifest_id: str) -> str:
    """Key of a manifest, from its id (``sha256:<hex>`` or bare hex)."""
    return f"{MANIFESTS}{Digest.parse(manifest_id).hex}.json"


def ref_key(config_hash: str) -> str:
    """Key of the ref for a weights config hash."""
    return f"{REFS}{config_hash}"


def index_key(identity: str) -> str:
    """Key of the index entry for a source object identity (hashed: identities hold
    bucket/key names of arbitrary length and characters)."""
    h = hashlib.sha256(identity.encode("utf-8")).hexdigest()
    return f"{INDEX}{h[:2]}/{h}.json"


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What the index knows about one source object version."""

    identity: str
    digest: Digest
    size: int


@dataclass(slots=True)
class CheckReport:
    """Result of :meth:`Store.check`: ``problems`` empty means the store is consistent."""

    manifests: int = 0
    blobs_checked: int = 0
    problems: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Store:
    """Typed access to the layout over any :class:`BlobStore` backend.

    Coroutine-safe as its backend is. Reads verify what they return: a
    manifest must hash to its id, a chunk list must fit its blob's size.
    """

    def __init__(self, backend: BlobStore) -> None:
        self.backend = backend

    @property
    def uri(self) -> str:
        return self.backend.uri

    # -- blobs -------------------------------------------------------------
    async def has_blob(self, digest: Digest) -> bool:
        return await self.backend.exists(blob_key(digest))

    async def blob_size(self, digest: Digest) -> int:
        try:
            return await self.backend.size(blob_key(digest))
        except NotFound:
            raise BlobNotFound(
                f"blob {digest} is not in store {self.uri}; re-run `bdn mirror` for its source",
                digest=str(digest),
            ) from None

    # -- chunk lists -------------------------------------------------------
    async def get_chunks(
        self, digest: Digest, size: int, chunk_size: int
    ) -> tuple[str, ...] | None:
        """The blob's chunk digests for ``chunk_size``, or ``None`` if not recorded."""
        try:
            raw = await self.backend.get_bytes(chunks_key(digest, chunk_size))
        except NotFound:
            return None
        try:
            doc = json.loads(raw)
            chunks = tuple(doc["chunks"])
            valid = (
                doc["sha256"] == str(digest)
                and doc["size"] == size
                and doc["chunk_size"] == chunk_size
                and len(chunks) == chunk_count(size, chunk_size)
                and all(isinstance(c, str) and is_xxh3_hex(c) for c in chunks)
            )
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            # A damaged or mismatched record is treated as absent; the mirror
            # recomputes and overwrites it.
            return None
        return chunks

    async def put_chunks(
        self, digest: Digest, size: int, chunk_size: int, chunks: Sequence[str]
    ) -> None:
        doc = {
            "sha256": str(digest),
            "size": size,
            "chunk_size": chunk_size,
            "chunks": list(chunks),
        }
        await self.backend.put_bytes(chunks_key(digest, chunk_size), _dumps(doc))

    # -- index ---------------------------------------------------------------
    async def lookup_index(self, identity: str) -> IndexEntry | None:
        """The blob a source object version was stored as, if known and still present."""
        try:
            raw = await self.backend.get_bytes(index_key(identity))
            doc = json.loads(raw)
            entry = IndexEntry(
                identity=doc["identity"], digest=Digest.parse(doc["sha256"]), size=int(doc["size"])
            )
        except NotFound:
            return None
        except (ValueError, KeyError, TypeError, BdnError):
            return None
        # The key is a hash of the identity; compare the full text so a
        # (theoretical) collision can never map one object onto another's blob.
        return entry if entry.identity == identity else None

    async def put_index(self, identity: str, digest: Digest, size: int) -> None:
        doc = {"identity": identity, "sha256": str(digest), "size": size}
        await self.backend.put_bytes(index_key(identity), _dumps(doc))

    # -- manifests and refs ----------------------------------------------------
    async def put_manifest(self, manifest: Manifest) -> str:
        """Store a manifest; returns its id. Call only after all its blobs are stored."""
        await self.backend.put_bytes(manifest_key(manifest.id), manifest.canonical_bytes())
        return manifest.id

    async def get_manifest(self, manifest_id: str) -> Manifest:
        """Fetch and verify a manifest (its bytes must hash to its id)."""
        try:
            digest = Digest.parse(manifest_id.strip())
        except ManifestInvalid:
            raise ManifestNotFound(
                f"{manifest_id!r} is not a manifest id; ids look like sha256:<64 hex> "
                "(as printed by `bdn mirror`)",
                manifest_id=manifest_id,
            ) from None
        try:
            raw = await self.backend.get_bytes(manifest_key(str(digest)))
        except NotFound:
            raise ManifestNotFound(
                f"manifest {digest} is not in store {self.uri}; check --store/BDN_STORE "
                "or mirror the model first with `bdn mirror`",
                manifest_id=str(digest),
            ) from None
        return Manifest.from_json(raw, expected_id=str(digest))

    async def put_ref(self, config_hash: str, manifest_id: str) -> None:
        await self.backend.put_bytes(ref_key(config_hash), manifest_id.encode())

    async def get_ref(self, config_hash: str) -> str:
        """The manifest id last mirrored for a config hash."""
        try:
            raw = await self.backend.get_bytes(ref_key(config_hash))
        except NotFound:
            raise RefNotFound(
                f"no manifest mirrored yet for this weights config in {self.uri}; "
                "run `bdn mirror` for it first"
            ) from None
        return str(Digest.parse(raw.decode().strip()))

    # -- fsck ----------------------------------------------------------------
    async def check(self, *, deep: bool = False) -> CheckReport:
        """Verify that every manifest is intact and every blob it names exists with
        the right size (and, with ``deep``, the right chunk digests).

        Leftover temp files of a killed writer are not problems: they are never
        visible under a real key, and the file store removes them on next write.
        """
        report = CheckReport()
        seen: set[Digest] = set()
        async for key in self.backend.list(MANIFESTS):
            if not key.endswith(".json"):
                continue
            report.manifests += 1
            manifest_id = "sha256:" + key[len(MANIFESTS) : -len(".json")]
            try:
                manifest = await self.get_manifest(manifest_id)
            except (ManifestInvalid, NotFound) as err:
                report.problems.append(f"{key}: {err}")
                continue
            for entry in manifest.files:
                if entry.sha256 in seen:
                    continue
                seen.add(entry.sha256)
                report.blobs_checked += 1
                await self._check_blob(
                    manifest, entry.sha256, entry.size, entry.chunks, deep, report
                )
        return report

    async def _check_blob(
        self,
        manifest: Manifest,
        digest: Digest,
        size: int,
        chunks: tuple[str, ...],
        deep: bool,
        report: CheckReport,
    ) -> None:
        where = f"manifest {manifest.id[:19]}…: blob {digest}"
        try:
            actual = await self.backend.size(blob_key(digest))
        except NotFound:
            report.problems.append(f"{where} is missing")
            return
        except StoreError as err:
            report.problems.append(f"{where}: {err}")
            return
        if actual != size:
            report.problems.append(f"{where} has {actual} bytes, manifest says {size}")
            return
        if deep:
            from bdn.store import blob_matches

            if not await blob_matches(
                self.backend, blob_key(digest), size, manifest.chunk_size, chunks, digest
            ):
                report.problems.append(f"{where} content does not match its digests")


async def digest_stream(
    reader: RangeReader, size: int, chunk_size: int
) -> tuple[str, tuple[str, ...]]:
    """Read an object once, in order, and return its sha256 hex and chunk xxh3-128 digests."""
    sha = hashlib.sha256()
    chunks: list[str] = []
    xxh = new_xxh3()
    in_chunk = 0

    def absorb(piece: bytes | bytearray | memoryview) -> None:
        nonlocal xxh, in_chunk
        view = memoryview(piece)
        sha.update(view)
        while view:
            take = min(len(view), chunk_size - in_chunk)
            xxh.update(view[:take])
            in_chunk += take
            view = view[take:]
            if in_chunk == chunk_size:
                chunks.append(xxh.hexdigest())
                xxh, in_chunk = new_xxh3(), 0

    seen = 0
    async for piece in reader.open_range(0, size):
        seen += len(piece)
        # hashlib and xxhash release the GIL on large buffers; keep the loop free.
        await asyncio.to_thread(absorb, piece)
    if seen != size:
        raise TransferError(f"{reader.describe()}: read {seen} bytes, expected {size}")
    if in_chunk:
        chunks.append(xxh.hexdigest())
    return sha.hexdigest(), tuple(chunks)


async def blob_matches(
    backend: BlobStore,
    key: str,
    size: int,
    chunk_size: int,
    chunks: tuple[str, ...],
    digest: Digest,
) -> bool:
    """True when the stored blob hashes to ``digest`` and to the expected chunk list."""
    reader = backend.reader(key, size)
    try:
        sha, actual_chunks = await digest_stream(reader, size, chunk_size)
    except TransferError:
        return False
    finally:
        await reader.close()
    return sha == digest.hex and actual_chunks == chunks
