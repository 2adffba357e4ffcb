"""The seams every backend implements: :class:`RangeReader` (the data plane),
:class:`BlobStore` (where mirrored blobs, manifests, refs and the index live) and
:class:`Source` (an upstream weights are mirrored from).

One package per upstream implements them (:mod:`bdn.backends.local`,
:mod:`~bdn.backends.http`, :mod:`~bdn.backends.s3`, :mod:`~bdn.backends.gcs`,
:mod:`~bdn.backends.hf`); :mod:`bdn.backends` picks one by URI scheme. The store's
key names belong to :mod:`bdn.store`; backends only move bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class RangeReader(Protocol):
    """Streams byte ranges of one immutable object of known size.

    Contract for implementations:

    - ``open_range(start, end)`` yields the bytes of ``[start, end)`` (end
      exclusive) in order, as buffers of any size; the total is exactly
      ``end - start`` or the iterator raises.
    - Failures are raised as :mod:`bdn.errors` types: ``RetryableHTTPError``,
      ``StallError`` or ``TransferError`` for transient trouble (the engine
      retries them), ``NotFound``/``AuthError``/``HTTPStatusError`` for
      permanent ones, ``RangeError`` when the server answered a different range.
    - ``supports_ranges`` may start ``None`` (unknown); an HTTP reader that sees
      a server ignore ``Range`` sets it to ``False`` and, for that request only,
      still yields exactly the requested bytes (skipping the prefix).
    - Safe to use from many tasks of one event loop at once. ``close()`` is
      idempotent. ``describe()`` names the object for errors and logs and never
      includes credentials or presigned query strings.
    """

    supports_ranges: bool | None

    def open_range(self, start: int, end: int) -> AsyncIterator[bytes | bytearray | memoryview]:
        ...

    def describe(self) -> str:
        ...

    async def close(self) -> None:
        ...


@runtime_checkable
class LocalCopyReader(Protocol):
    """Optional capability of a :class:`RangeReader` whose object is a file on this machine.

    The transfer engine checks for it with ``isinstance`` and, when present,
    lets the kernel copy each chunk straight into the destination file instead
    of streaming it through user space, which halves the memory traffic of a
    local copy. The engine still hashes what landed in the destination, so
    verification is the same as on the network path.

    Contract for implementations:

    - ``copy_to(dst_fd, start, end)`` writes the bytes of ``[start, end)`` into
      the open file descriptor ``dst_fd`` at the same offsets, or raises. It
      blocks (the engine calls it from a worker thread) and must not close
      ``dst_fd``.
    - Failures of the object itself are raised as :mod:`bdn.errors` types, as
      ``open_range`` raises them; a failed write to ``dst_fd`` is an ``OSError``.
    """

    def copy_to(self, dst_fd: int, start: int, end: int) -> None:
        ...


class ReaderSpec(Protocol):
    """A picklable recipe that rebuilds a :class:`RangeReader` in another process.

    The transfer engine's worker processes (``TransferConfig.workers``) call
    ``open(resources)`` once per chunk attempt. ``resources`` is a dict private
    to that process and kept for its lifetime, where a spec may cache what its
    readers share (an HTTP client and its connection pool); every value in it
    that has an async ``close()`` is closed when the worker stops. A spec may
    carry credentials (they travel over a pipe to a child process, never to a
    log); it must not carry open sockets or file descriptors.
    """

    def open(self, resources: dict[object, object]) -> RangeReader:
        ...


@runtime_checkable
class ReopenableReader(Protocol):
    """Optional capability of a :class:`RangeReader`: it can be rebuilt elsewhere.

    ``reopen_spec()`` returns a :class:`ReaderSpec` for the same object and
    headers, or ``None`` when this reader must stay in the process that made
    it (it wraps state that cannot be pickled). Readers without the capability
    are fetched in-process, as before.
    """

    def reopen_spec(self) -> ReaderSpec | None:
        ...


@runtime_checkable
class BlobStore(Protocol):
    """Byte storage addressed by ``/``-separated keys.

    Contract for implementations:

    - Coroutine-safe: many tasks may call any method concurrently. Blocking SDK
      calls run in worker threads, never on the event loop.
    - Writes are atomic: a reader sees the whole object or none of it, never a
      partial one. ``put_*`` onto an existing key replaces it atomically; for
      content-addressed keys that is a harmless no-op in effect.
    - "Not found" is always :class:`bdn.errors.NotFound` (``BlobNotFound`` for
      ``get_bytes``/``size``/``reader`` of a missing key); other failures are
      :class:`bdn.errors.StoreError` (or ``AuthError`` for 401/403).
    - Read-only stores raise ``StoreError`` from every write, naming the store.
    - ``close()`` is idempotent. Neither messages nor ``uri`` carry secrets.
    """

    uri: str
    read_only: bool

    async def exists(self, key: str) -> bool:
        ...

    async def size(self, key: str) -> int:
        ...

    async def get_bytes(self, key: str) -> bytes:
        ...

    async def put_bytes(self, key: str, data: bytes) -> None:
        ...

    async def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        """Store a local file under ``key`` (S3: parallel multipart upload).

        With ``move=True`` the store may consume ``path`` (``file://`` renames
        it into place when it lies on the store's filesystem, so a staged blob
        is never copied twice); otherwise ``path`` is left untouched.
        """
        ...

    def list(self, prefix: str) -> AsyncIterator[str]:
        """Yield every key under ``prefix`` (a ``/``-terminated folder or key prefix)."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...

    def reader(self, key: str, size: int) -> RangeReader:
        """A data-plane reader of ``key`` (known ``size``) for the transfer engine."""
        ...

    def local_path(self, key: str) -> Path | None:
        """Where ``key`` lives on this machine's filesystem, if it does (``file://``)."""
        ...

    def staging_dir(self) -> Path | None:
        """A directory on the store's filesystem for temp files that ``put_file`` can
        rename into place (``file://`` only); ``None`` means 'use any local temp dir'."""
        ...

    async def close(self) -> None:
        ...


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
