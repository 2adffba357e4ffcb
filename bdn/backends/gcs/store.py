"""``gs://bucket/prefix`` blob store (Google Cloud Storage, or an emulator).

Control plane through google-cloud-storage (:mod:`bdn.backends.gcs.client`), data plane
through aiohttp on the JSON API media URL with a bearer token. GCS makes an
object visible only once its upload (single request or resumable) is
finalized, so the store's "whole object or nothing" contract holds with no
temp names.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from google.auth.credentials import Credentials

from bdn.backends.base import RangeReader
from bdn.backends.bucket import BucketStore, bucket_and_prefix, object_not_found
from bdn.backends.gcs.client import DEFAULT_GCS_CLIENT_CONFIG, GcsBucket, GcsClientConfig
from bdn.backends.gcs.creds import SCOPE_READ_WRITE
from bdn.errors import BdnError, BlobNotFound
from bdn.http import HttpClient

__all__ = ["GcsStore", "open_gcs_store"]


class GcsStore(BucketStore):
    """A :class:`~bdn.backends.base.BlobStore` on a GCS bucket, under an optional prefix.

    Writes are retried by the SDK on transient failures even though they are
    not conditional: every key the store layout writes either names its own
    content (blobs, manifests, chunk lists) or is a last-writer-wins pointer
    (refs, index entries), so repeating a write is harmless.

    Args:
        bucket: bucket name.
        prefix: object-name prefix ("" for the whole bucket); store keys live
            at ``<prefix>/<key>``.
        credentials: google-auth credentials (e.g. from
            :func:`bdn.backends.gcs.creds.gcs_credentials_from_secret` with the read-write
            scope); ``None`` for Application Default Credentials. Ignored with
            an emulator, which is used anonymously.
        emulator_host: ``STORAGE_EMULATOR_HOST`` from the entry point's
            environment snapshot, or ``None`` for real GCS.
        http: shared aiohttp client for reads; one is created (and closed by
            :meth:`close`) when not given.
        client_config: SDK timeouts, retries, pool size and the resumable
            upload chunk size.
    """

    _bucket: GcsBucket

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        credentials: Credentials | None = None,
        emulator_host: str | None = None,
        http: HttpClient | None = None,
        client_config: GcsClientConfig = DEFAULT_GCS_CLIENT_CONFIG,
    ) -> None:
        super().__init__("gs", bucket, prefix, http)
        self._bucket = GcsBucket(
            bucket,
            credentials=credentials,
            emulator_host=emulator_host,
            scopes=(SCOPE_READ_WRITE,),
            config=client_config,
        )
        self._config = client_config

    # -- reads ---------------------------------------------------------------
    async def size(self, key: str) -> int:
        """Size of ``key``; ``BlobNotFound`` when absent."""
        full = self._full(key)
        blob = await self._bucket.run(
            lambda b: b.get_blob(full, retry=self._bucket.retry, timeout=self._config.timeout_s),
            action=f"stat gs://{self.bucket}/{full}",
            key=full,
        )
        if blob is None:
            raise self._missing(full)
        return int(blob.size or 0)

    async def get_bytes(self, key: str) -> bytes:
        """Whole content of ``key`` (for small objects: manifests, refs, index);
        the SDK checks it against GCS's checksum."""
        full = self._full(key)

        def fetch(b: Any) -> bytes:
            data: bytes = b.blob(full).download_as_bytes(
                retry=self._bucket.retry, timeout=self._config.timeout_s
            )
            return data

        return await self._bucket.run(fetch, action=f"read gs://{self.bucket}/{full}", key=full)

    async def _names(self, prefix: str) -> AsyncIterator[str]:
        async for blob in self._bucket.list_blobs(
            prefix, action=f"list {self.uri}", fields="items(name),nextPageToken"
        ):
            yield str(blob.name)

    def reader(self, key: str, size: int) -> RangeReader:
        """Range reader over aiohttp on the object's media URL (bearer token per range)."""
        return self._bucket.reader(self._full(key), size, self._http_client)

    # -- writes --------------------------------------------------------------
    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` in one upload request (atomic on GCS)."""
        full = self._full(key)
        await self._bucket.run(
            lambda b: b.blob(full).upload_from_string(
                data,
                content_type="application/octet-stream",
                retry=self._bucket.retry,
                timeout=self._config.timeout_s,
            ),
            action=f"write gs://{self.bucket}/{full}",
            key=full,
        )

    def _upload_file(self, handle: Any, source: Path, full: str) -> None:
        """One request up to 8 MiB (the SDK's threshold), a resumable upload in
        ``upload_chunk_size`` chunks beyond (a failed chunk is resent, not the file)."""
        blob = handle.blob(full, chunk_size=self._config.upload_chunk_size)
        blob.upload_from_filename(
            str(source),
            content_type="application/octet-stream",
            retry=self._bucket.retry,
            timeout=self._config.timeout_s,
        )

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        full = self._full(key)
        with contextlib.suppress(BlobNotFound):
            await self._bucket.run(
                lambda b: b.blob(full).delete(
                    retry=self._bucket.retry, timeout=self._config.timeout_s
                ),
                action=f"delete gs://{self.bucket}/{full}",
                key=full,
            )

    # -- helpers -------------------------------------------------------------
    def _missing(self, full: str) -> BdnError:
        return object_not_found(f"gs://{self.bucket}/{full}", full, for_source=False)


def open_gcs_store(uri: str, *, credentials: Credentials | None, emulator_host: str | None,
                   http: HttpClient | None) -> GcsStore:
    """The store ``gs://bucket[/prefix]`` names (see :func:`bdn.backends.open_store`).

    Raises:
        ConfigError: the URI names no bucket.
    """
    bucket, prefix = bucket_and_prefix(uri, "gs")
    return GcsStore(bucket, prefix, credentials=credentials,
                    emulator_host=emulator_host, http=http)
