"""An S3 (or S3-compatible) prefix as a weights source: ``s3://bucket/models/llama``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bdn.backends.base import RangeReader, SourceObject
from bdn.backends.bucket import BucketSource
from bdn.backends.s3.client import DEFAULT_S3_CLIENT_CONFIG, S3Bucket, S3ClientConfig
from bdn.backends.s3.creds import S3Auth, s3_credentials_for
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.http import HttpClient, redact_url

__all__ = ["S3Source", "s3_source_from_entry"]


class S3Source(BucketSource):
    """Every object under ``s3://bucket/prefix/``, listed with its ETag.

    The prefix is a folder: ``s3://b/models/llama`` lists ``models/llama/...``
    (not ``models/llama-2/...``) and paths are relative to it. Folder-marker
    keys (ending in ``/``) are skipped. Bytes are read over aiohttp on
    presigned URLs, so reads share the transfer engine's retries.

    Args:
        bucket: bucket name.
        prefix: folder inside the bucket ("" for the whole bucket).
        credentials: keys from the auth secret, self-renewing ``AWS_OIDC``
            keys, or ``None`` for boto3's default chain (environment,
            IRSA/web identity, instance role).
        endpoint_url: S3-compatible server; ``None`` for AWS.
        http: shared HTTP client; one is created (and closed by :meth:`close`)
            when not given.
    """

    kind = "s3"

    _bucket: S3Bucket

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        credentials: S3Auth | None,
        endpoint_url: str | None = None,
        http: HttpClient | None = None,
        client_config: S3ClientConfig = DEFAULT_S3_CLIENT_CONFIG,
    ) -> None:
        super().__init__("s3", bucket, prefix, http)
        self._bucket = S3Bucket(bucket, credentials=credentials, endpoint_url=endpoint_url,
                                config=client_config, for_source=True)

    async def _listing(self) -> AsyncIterator[tuple[str, Any]]:
        async for entry in self._bucket.list_objects(self._base, action=f"list {self.uri}"):
            yield str(entry["Key"]), entry

    def _object(self, path: str, name: str, entry: Any) -> SourceObject:
        """Pinned by ETag and size; S3 has no revision for a prefix."""
        bucket = self._bucket.bucket
        etag = str(entry.get("ETag", "")).strip('"') or None
        size = int(entry["Size"])
        # The endpoint belongs in the identity: the same bucket/key on two
        # servers are two objects. Index keys are stored, so no userinfo.
        endpoint = self._bucket.endpoint_url
        where = redact_url(endpoint) if endpoint else "aws"
        return SourceObject(
            path=path, size=size, etag=etag,
            identity=f"s3:{where}:{bucket}/{name}:{etag}:{size}",
            # Same ETag and size in the same bucket: the same content (only
            # the bucket's owner can write there), so a shard copied to a
            # new prefix dedups without being read. Never across buckets.
            content_id=f"s3-etag:{where}:{bucket}:{etag}:{size}" if etag else None,
        )

    def reader(self, obj: SourceObject) -> RangeReader:
        """Ranged GETs of ``obj`` on presigned URLs (one signed per range)."""
        return self._bucket.reader(self._base + obj.path, obj.size, self._http_client,
                                   etag=obj.etag)


def s3_source_from_entry(
    entry: WeightsEntry,
    *,
    secrets: SecretResolver,
    http: HttpClient,
    endpoint_url: str | None = None,
    token_file: Path | None = None,
) -> S3Source:
    """Build the :class:`S3Source` for an ``s3://`` weights entry, resolving its ``auth``
    (a credentials secret, or ``AWS_OIDC`` with the token in ``token_file``).

    Raises:
        ConfigError: no auth or no secret name (``secret_id is required``, then the fix).
        SecretError: the named secret is missing or malformed.
        AuthError: ``AWS_OIDC`` without a usable token file, or refused by STS.
    """
    parsed = entry.parsed_source
    credentials = s3_credentials_for(entry.auth, secrets=secrets, token_file=token_file)
    assert parsed.bucket is not None
    return S3Source(parsed.bucket, parsed.prefix, credentials=credentials,
                    endpoint_url=endpoint_url, http=http)
