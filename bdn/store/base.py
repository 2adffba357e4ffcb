"""The blob-store seam: where mirrored blobs, manifests, refs and the index live.

A store is a flat key space (``blobs/sha256/ab/<hex>``, ``manifests/<hex>.json``,
``refs/<hex>``, ...). :mod:`bdn.store.layout` owns the key names; backends only
move bytes. Backends: ``file://`` (:mod:`bdn.store.file`), ``s3://``
(:mod:`bdn.store.s3`), read-only ``http(s)://`` (:mod:`bdn.store.http`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from bdn.transfer.reader import RangeReader


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
