"""The store layout: which key holds what, and the checks that keep it honest.

Same on every backend (``file://``, ``s3://``, ``gs://``, ``http(s)://``)::

    blobs/sha256/<2 hex>/<hex>                  immutable blob content
    chunks/<chunk_size>/<2 hex>/<hex>.json      xxh3-128 chunk digests of a blob
    manifests/<hex>.json                        canonical manifest bytes; <hex> = its sha256
    refs/<config hash>                          the manifest id last mirrored for a config
    index/<2 hex>/<sha256 of identity>.json     source object identity -> blob digest
    hub/<repo>/repo.json                        hf:// repo: the revisions mirrored, -> commit
    hub/<repo>/revisions/<revision>.json        hf:// (repo, branch/tag/commit) -> manifests
    hub/<repo>/pulls/<revision>/<holder>.json   a Hub endpoint's pull-through claim (bdn.hub)

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

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
HUB = "hub/"


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


def _hub_name(text: str) -> str:
    """One key segment for a repo id or revision: ``/`` and ``.`` escaped, so a
    name from a request can never climb out of ``hub/``."""
    return quote(text, safe="").replace(".", "%2E")


def hub_repo_key(repo: str) -> str:
    """Key of an hf:// repo's record: which revisions were mirrored."""
    return f"{HUB}{_hub_name(repo)}/repo.json"


def hub_revision_key(repo: str, revision: str) -> str:
    """Key of the manifests mirrored for an hf:// repo at a branch, tag or commit."""
    return f"{HUB}{_hub_name(repo)}/revisions/{_hub_name(revision)}.json"


def hub_pull_prefix(repo: str, revision: str) -> str:
    """Folder of the claims of Hub endpoints that want to pull ``repo@revision`` through
    (``bdn.hub.upstream``): one key per claimant, so only one of them mirrors it."""
    return f"{HUB}{_hub_name(repo)}/pulls/{_hub_name(revision)}/"


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What the index knows about one source object version."""

    identity: str
    digest: Digest
    size: int


@dataclass(frozen=True, slots=True)
class HubRevision:
    """What the store holds of an hf:// repo at one revision (the Hub endpoint's view).

    ``manifests`` maps the config hash of each weights entry mirrored at this
    revision to ``(manifest id, auth secret name or None)``; all of them are
    of ``commit`` (a branch that moved keeps only the newest commit's).
    """

    repo: str
    revision: str
    commit: str
    manifests: Mapping[str, tuple[str, str | None]]


@dataclass(slots=True)
class CheckReport:
    """Result of :meth:`Store.check`: ``problems`` empty means the store is consistent.

    A store with nothing in it is consistent, but it is also what a mistyped
    store URI looks like, so the report says which it is: ``empty`` is True
    when the store holds no object at all, and ``exists`` whether its location
    exists where the backend can tell (a ``file://`` directory). An ``s3://``
    or ``gs://`` prefix exists only through its objects, so there an empty
    store cannot be told from a missing one and ``exists`` is None.
    """

    manifests: int = 0
    blobs_checked: int = 0
    problems: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    store: str = ""
    empty: bool = False
    exists: bool | None = True

    @property
    def ok(self) -> bool:
        return not self.problems

    def missing(self) -> str | None:
        """One line saying the store does not exist (or is empty, where the backend
        cannot tell those apart) and what to do; None for a store that exists."""
        if not self.empty or self.exists:
            return None
        what = "does not exist" if self.exists is False else "does not exist (or is empty)"
        return (
            f"store {self.store} {what}: nothing is stored there; check the store URI "
            f"(--store or BDN_STORE) for a typo, or mirror into it first: "
            f"bdn mirror SOURCE --store {self.store}"
        )


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

    async def drop_index(self, identity: str) -> None:
        """Forget what the index knows about ``identity`` (missing: not an error)."""
        await self.backend.delete(index_key(identity))

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

    # -- hf:// revisions (the Hub endpoint, bdn.hub) ------------------------------
    async def put_hub_revision(self, repo: str, revision: str, commit: str, config_hash: str,
                               manifest_id: str, auth_secret: str | None) -> None:
        """Record that ``manifest_id`` (config ``config_hash``) is ``repo`` at ``revision``,
        pinned to ``commit``, under the revision and under the commit. Written after the
        ref. Read-modify-write: of two mirrors of one repo racing, one entry may be lost
        until that config is mirrored again."""
        for rev in dict.fromkeys([revision, commit]):
            old = await self.get_hub_revision(repo, rev)
            kept = dict(old.manifests) if old is not None and old.commit == commit else {}
            kept[config_hash] = (manifest_id, auth_secret)
            doc = {"repo": repo, "revision": rev, "commit": commit,
                   "manifests": {h: {"manifest_id": m, "auth_secret": a}
                                 for h, (m, a) in kept.items()}}
            await self.backend.put_bytes(hub_revision_key(repo, rev), _dumps(doc))
        revisions = await self.hub_revisions(repo)
        revisions.update({revision: commit, commit: commit})
        await self.backend.put_bytes(hub_repo_key(repo),
                                     _dumps({"repo": repo, "revisions": revisions}))

    async def get_hub_revision(self, repo: str, revision: str) -> HubRevision | None:
        """The manifests mirrored for ``repo`` at ``revision``; None if none (or damaged)."""
        try:
            doc = json.loads(await self.backend.get_bytes(hub_revision_key(repo, revision)))
            found = HubRevision(repo=doc["repo"], revision=doc["revision"], commit=doc["commit"],
                                manifests={h: (str(Digest.parse(v["manifest_id"])),
                                               v["auth_secret"])
                                           for h, v in doc["manifests"].items()})
        except NotFound:
            return None
        except (ValueError, KeyError, TypeError, AttributeError, BdnError):
            return None
        return found if (found.repo, found.revision) == (repo, revision) else None

    async def hub_revisions(self, repo: str) -> dict[str, str]:
        """Every revision mirrored for ``repo`` -> its commit; empty if never mirrored."""
        try:
            doc = json.loads(await self.backend.get_bytes(hub_repo_key(repo)))
            revisions = {str(k): str(v) for k, v in doc["revisions"].items()}
        except NotFound:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError):
            return {}
        return revisions if doc.get("repo") == repo else {}

    async def put_hub_pull(self, repo: str, revision: str, holder: str,
                           doc: dict[str, object]) -> None:
        """Write (or refresh) ``holder``'s pull-through claim on ``repo@revision``."""
        key = hub_pull_prefix(repo, revision) + _hub_name(holder) + ".json"
        await self.backend.put_bytes(key, _dumps({**doc, "holder": holder}))

    async def hub_pulls(self, repo: str, revision: str) -> dict[str, dict[str, object]]:
        """Every pull-through claim on ``repo@revision``: holder -> its document (claims
        that cannot be read, e.g. deleted while listed, are left out)."""
        out: dict[str, dict[str, object]] = {}
        async for key in self.backend.list(hub_pull_prefix(repo, revision)):
            try:
                doc = json.loads(await self.backend.get_bytes(key))
                out[str(doc["holder"])] = doc
            except (NotFound, ValueError, KeyError, TypeError):
                continue
        return out

    async def drop_hub_pull(self, repo: str, revision: str, holder: str) -> None:
        """Remove ``holder``'s claim (missing: not an error)."""
        await self.backend.delete(hub_pull_prefix(repo, revision) + _hub_name(holder) + ".json")

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
        report.store = self.uri
        if report.manifests == 0 and not await self._holds_anything():
            report.empty = True
            report.exists = self._location_exists()
        return report

    async def _holds_anything(self) -> bool:
        """Whether the store holds at least one object (a listing stopped at the first)."""
        listing = self.backend.list("")
        try:
            async for _ in listing:
                return True
            return False
        finally:
            close = getattr(listing, "aclose", None)
            if close is not None:
                await close()

    def _location_exists(self) -> bool | None:
        """Whether the store's directory exists (``file://``); None where a store has
        no location apart from its objects (``s3://``, ``gs://``)."""
        path = self.backend.local_path(MANIFESTS.rstrip("/"))
        return None if path is None else path.parent.is_dir()

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
