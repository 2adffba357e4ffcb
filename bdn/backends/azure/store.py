"""``azure://account/container[/prefix]`` blob store (Azure Blob Storage or Azurite).

Control plane through ``azure-storage-blob`` (:mod:`bdn.backends.azure.client`),
data plane through aiohttp on SAS-signed URLs. A block blob appears only when
its block list is committed, so the store's "whole object or nothing"
contract holds with no temp names.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import azure.core.exceptions as ace
from azure.storage.blob import BlobBlock

from bdn.backends.azure.client import AzureContainer
from bdn.backends.azure.creds import AzureCredentials
from bdn.backends.base import RangeReader
from bdn.backends.bucket import BucketStore, MiB, part_size
from bdn.backends.http.pinned import PinnedReader
from bdn.errors import ConfigError
from bdn.http import HttpClient

__all__ = ["AzureStore", "open_azure_store"]

UPLOAD_CONCURRENCY = 8
"""Blocks of one file uploaded in parallel."""
SINGLE_PUT_SIZE = 64 * MiB
"""Files up to this size go in one Put Blob; larger ones are staged as blocks."""
BLOCK_SIZE = 8 * MiB
"""Smallest staged block; larger files get larger blocks (at most :data:`MAX_BLOCKS`)."""
MAX_BLOCKS = 50_000
"""Azure's limit on committed blocks per block blob."""


class AzureStore(BucketStore):
    """A :class:`~bdn.backends.base.BlobStore` in an Azure container, under an optional prefix.

    Args:
        account: storage account name.
        container: container name (it must exist).
        prefix: blob name prefix ("" for the whole container).
        credentials: the account key (writes need it); ``None`` reads a public container.
        endpoint_url: an emulator's base URL; the account URL is ``<endpoint_url>/<account>``.
        http: shared aiohttp client for reads; one is created (and closed) when not given.
        single_put_size: files up to this size are uploaded in one Put Blob.
        block_size: smallest block of a staged upload (grown so a file needs at
            most :data:`MAX_BLOCKS` blocks).
    """

    _bucket: AzureContainer

    def __init__(self, account: str, container: str, prefix: str = "", *,
                 credentials: AzureCredentials | None = None, endpoint_url: str | None = None,
                 http: HttpClient | None = None, single_put_size: int = SINGLE_PUT_SIZE,
                 block_size: int = BLOCK_SIZE) -> None:
        super().__init__("azure", f"{account}/{container}", prefix, http)
        self.single_put_size = single_put_size
        self.block_size = block_size
        self._bucket = AzureContainer(account, container, credentials=credentials,
                                      endpoint_url=endpoint_url)

    def _where(self, full: str) -> str:
        return f"azure://{self.bucket}/{full}"

    async def size(self, key: str) -> int:
        """Size of ``key``; ``BlobNotFound`` when absent."""
        full = self._full(key)
        props = await self._bucket.run(lambda c: c.get_blob_client(full).get_blob_properties(),
                                       action=f"stat {self._where(full)}", key=full)
        return int(props.size)

    async def get_bytes(self, key: str) -> bytes:
        """Whole content of ``key`` (small objects: manifests, refs, index)."""
        full = self._full(key)

        def fetch(client: Any) -> bytes:
            data: bytes = client.download_blob(full).readall()
            return data

        return await self._bucket.run(fetch, action=f"read {self._where(full)}", key=full)

    async def _names(self, prefix: str) -> AsyncIterator[str]:
        async for blob in self._bucket.list_blobs(prefix, action=f"list {self.uri}"):
            yield str(blob.name)

    def reader(self, key: str, size: int) -> RangeReader:
        """Ranged GETs over aiohttp on SAS-signed URLs (one signed per range)."""
        full = self._full(key)
        return PinnedReader(self._http_client, lambda: self._bucket.blob_url(full), size,
                            where=self._where(full), supports_ranges=True)

    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` with one Put Blob (atomic)."""
        full = self._full(key)
        await self._bucket.run(lambda c: c.upload_blob(full, data, overwrite=True),
                               action=f"write {self._where(full)}", key=full)

    def _upload_file(self, handle: Any, source: Path, full: str) -> None:
        """One Put Blob up to ``single_put_size``; beyond, blocks staged in parallel and
        then one commit of the block list: the blob appears whole or not at all.

        Blocks are staged here rather than by the SDK's ``upload_blob`` so that the
        block size grows with the file (the SDK's fixed 4 MiB blocks cap a blob at
        195 GiB) and so that memory stays at :data:`UPLOAD_CONCURRENCY` blocks.
        """
        size = source.stat().st_size
        with source.open("rb") as stream:
            if size <= self.single_put_size:
                handle.upload_blob(full, stream, length=size, overwrite=True)
                return
            block = part_size(size, self.block_size, MAX_BLOCKS)
            # A random prefix per upload: two writers of one key (several mirrors
            # sharing a store) stage under distinct ids, and each commits only its
            # own list. Azure wants every id of a blob the same length.
            tag = secrets.token_hex(8)
            ids = [base64.b64encode(f"{tag}{i:08d}".encode()).decode()
                   for i in range(-(-size // block))]
            blob = handle.get_blob_client(full)
            fd = stream.fileno()

            def stage(index: int) -> None:
                data = os.pread(fd, block, index * block)
                blob.stage_block(ids[index], data, length=len(data))

            with ThreadPoolExecutor(UPLOAD_CONCURRENCY, thread_name_prefix="bdn-azure") as pool:
                list(pool.map(stage, range(len(ids))))
            blob.commit_block_list([BlobBlock(block_id=i) for i in ids])

    async def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        full = self._full(key)

        def remove(client: Any) -> None:
            with contextlib.suppress(ace.ResourceNotFoundError):
                client.delete_blob(full)

        await self._bucket.run(remove, action=f"delete {self._where(full)}", key=full)


def open_azure_store(uri: str, *, credentials: AzureCredentials | None,
                     endpoint_url: str | None, http: HttpClient | None) -> AzureStore:
    """The store ``azure://account/container[/prefix]`` names (see :func:`bdn.backends.open_store`).

    Raises:
        ConfigError: the URI names no account or container.
    """
    rest = uri.strip().split("://", 1)[-1]
    account, _, path = rest.partition("/")
    container, _, prefix = path.partition("/")
    if not account or not container:
        raise ConfigError(f"store {uri!r} names no container; expected "
                          "azure://account/container[/prefix]")
    if credentials is not None and credentials.account_name != account:
        credentials = AzureCredentials(account, credentials.account_key)
    return AzureStore(account, container, prefix, credentials=credentials,
                      endpoint_url=endpoint_url, http=http)
