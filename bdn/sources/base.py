"""The source seam: an upstream that weights are mirrored from.

One module per upstream (``local``, ``s3``; ``hf``, ``gcs``, ``r2`` later).
A source lists objects with the metadata that decides dedup before any byte
moves, and hands the transfer engine a :class:`RangeReader` per object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bdn.transfer.reader import RangeReader


@dataclass(frozen=True, slots=True)
class SourceObject:
    """One file of a source, as listed.

    Attributes:
        path: relative ``/``-separated path inside the source (becomes the
            manifest path), already normalized.
        size: size in bytes.
        identity: a string that changes whenever the object's content may have
            changed (bucket/key/etag, generation, path+size+mtime+inode, HF oid).
            It keys the store's index from source identity to blob hash.
        etag: the upstream's own version tag (ETag, generation, oid) recorded
            as ``source_etag`` in the manifest; ``None`` when there is none.
        sha256: the content's SHA-256 hex when the upstream publishes it
            (Hugging Face LFS), so dedup is decided with no byte moved.
        content_id: a metadata key that names the *content* rather than the
            location, trusted only inside one trust domain (e.g. the S3 ETag and
            size, scoped to the bucket: only the bucket's owner can write there).
            It lets a fine-tune whose shards were copied from its base to a new
            prefix dedup without reading them. Never shared across buckets or
            tenants, where a crafted ETag collision could poison another's blob.
    """

    path: str
    size: int
    identity: str
    etag: str | None = None
    sha256: str | None = None
    content_id: str | None = None


@runtime_checkable
class Source(Protocol):
    """An upstream of weights.

    Contract for implementations:

    - ``resolve()`` pins what is being mirrored and returns the resolved
      revision (a commit SHA for HF; ``None`` where the upstream has none).
    - ``list()`` returns every object under the source with ``SourceObject``
      metadata, sorted by path. A missing bucket/prefix/dir raises
      :class:`bdn.errors.SourceNotFound`; an empty one returns ``[]``.
    - ``reader(obj)`` returns a reader for that object's bytes.
    - Credential problems raise :class:`bdn.errors.SecretError` (malformed or
      missing secret) or :class:`bdn.errors.AuthError` (rejected by the remote).
    - Coroutine-safe; ``close()`` is idempotent; nothing it raises or logs
      contains a secret.
    """

    uri: str
    kind: str

    async def resolve(self) -> str | None:
        ...

    async def list(self) -> list[SourceObject]:
        ...

    def reader(self, obj: SourceObject) -> RangeReader:
        ...

    async def close(self) -> None:
        ...
