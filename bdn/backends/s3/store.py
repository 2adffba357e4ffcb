"""``s3://bucket/prefix`` blob store (AWS S3 or any S3-compatible server).

Control plane through boto3 (:mod:`bdn.backends.s3.client`), data plane through aiohttp on
presigned URLs. S3 makes every PUT and completed multipart upload atomic, so
the store's "whole object or nothing" contract holds with no temp keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from bdn.backends.base import RangeReader
from bdn.backends.bucket import BucketStore, bucket_and_prefix, part_size
from bdn.backends.s3.client import DEFAULT_S3_CLIENT_CONFIG, S3Bucket, S3ClientConfig
from bdn.backends.s3.creds import S3Auth
from bdn.http import HttpClient

__all__ = ["S3Store", "open_s3_store", "part_size_for"]

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
"""Smallest multipart part; larger files get larger parts (see :func:`part_size_for`)."""
MAX_PARTS = 10_000
"""S3's limit on parts per multipart upload."""
UPLOAD_CONCURRENCY = 8
"""Parts of one file uploaded in parallel."""


def part_size_for(size: int, minimum: int = DEFAULT_PART_SIZE) -> int:
    """Part size for a ``size``-byte upload: ``minimum``, or bigger (whole MiB) so
    the upload needs at most :data:`MAX_PARTS` parts.

    >>> part_size_for(1) == DEFAULT_PART_SIZE
    True
    >>> part_size_for(200 * 1024**3) // MiB   # 200 GiB in <= 10,000 parts
    21
    """
    return part_size(size, minimum, MAX_PARTS)


class S3Store(BucketStore):
    """A :class:`~bdn.backends.base.BlobStore` on an S3 bucket, under an optional prefix.

    Args:
        bucket: bucket name.
        prefix: key prefix inside the bucket ("" for the whole bucket); store
            keys live at ``<prefix>/<key>``.
        endpoint_url: S3-compatible server (path-style addressing); ``None``
            for AWS.
        credentials: explicit or self-renewing ``AWS_OIDC`` keys, or ``None``
            for boto3's default chain.
        http: shared aiohttp client for reads; one is created (and closed by
            :meth:`close`) when not given.
        part_size: smallest multipart part in bytes (S3 itself requires
            >= 5 MiB for all parts but the last).
        client_config: boto3 retry and timeout settings.
    """

    _bucket: S3Bucket

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        credentials: S3Auth | None = None,
        http: HttpClient | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        client_config: S3ClientConfig = DEFAULT_S3_CLIENT_CONFIG,
    ) -> None:
        super().__init__("s3", bucket, prefix, http)
        self.part_size = part_size
        self._bucket = S3Bucket(
            bucket, credentials=credentials, endpoint_url=endpoint_url, config=client_config
        )

    # -- reads ---------------------------------------------------------------
    async def size(self, key: str) -> int:
        """Size of ``key``; ``BlobNotFound`` when absent."""
        full = self._full(key)
        head = await self._bucket.run(
            lambda c: c.head_object(Bucket=self.bucket, Key=full),
            action=f"stat s3://{self.bucket}/{full}",
            key=full,
        )
        return int(head["ContentLength"])

    async def get_bytes(self, key: str) -> bytes:
        """Whole content of ``key`` (for small objects: manifests, refs, index)."""
        full = self._full(key)

        def fetch(client: Any) -> bytes:
            body: bytes = client.get_object(Bucket=self.bucket, Key=full)["Body"].read()
            return body

        return await self._bucket.run(fetch, action=f"read s3://{self.bucket}/{full}", key=full)

    async def _names(self, prefix: str) -> AsyncIterator[str]:
        async for entry in self._bucket.list_objects(prefix, action=f"list {self.uri}"):
            yield str(entry["Key"])

    def reader(self, key: str, size: int) -> RangeReader:
        """Range reader over aiohttp on presigned GET URLs (one signed per range)."""
        return self._bucket.reader(self._full(key), size, self._http_client)

    # -- writes --------------------------------------------------------------
    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` with one PUT (atomic on S3)."""
        full = self._full(key)
        await self._bucket.run(
            lambda c: c.put_object(Bucket=self.bucket, Key=full, Body=data),
            action=f"write s3://{self.bucket}/{full}",
            key=full,
        )

    def _upload_file(self, handle: Any, source: Path, full: str) -> None:
        """A parallel multipart upload when the file is larger than one part.

        Never one PutObject above a part: S3 refuses single PUTs over 5 GiB, and a
        multipart upload of up to :data:`MAX_PARTS` parts takes any size S3 stores.
        """
        part = part_size_for(source.stat().st_size, self.part_size)
        config = TransferConfig(
            multipart_threshold=part,
            multipart_chunksize=part,
            max_concurrency=UPLOAD_CONCURRENCY,
            use_threads=True,
        )
        handle.upload_file(str(source), self.bucket, full, Config=config)

    async def delete(self, key: str) -> None:
        """Remove ``key``; S3 treats a missing key as deleted already."""
        full = self._full(key)
        await self._bucket.run(
            lambda c: c.delete_object(Bucket=self.bucket, Key=full),
            action=f"delete s3://{self.bucket}/{full}",
            key=full,
        )


def open_s3_store(uri: str, *, endpoint_url: str | None, credentials: S3Auth | None,
                  http: HttpClient | None) -> S3Store:
    """The store ``s3://bucket[/prefix]`` names (see :func:`bdn.backends.open_store`).

    Raises:
        ConfigError: the URI names no bucket.
    """
    bucket, prefix = bucket_and_prefix(uri, "s3")
    return S3Store(bucket, prefix, endpoint_url=endpoint_url,
                   credentials=credentials, http=http)
