"""An Azure Blob Storage prefix as a weights source: ``azure://account/container/models/llama``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from bdn.backends.azure.client import AzureContainer
from bdn.backends.azure.creds import AzureCredentials, azure_credentials_for
from bdn.backends.base import RangeReader, SourceObject
from bdn.backends.bucket import BucketSource
from bdn.backends.http.pinned import PinnedReader
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.errors import ConfigError
from bdn.http import HttpClient

__all__ = ["AzureSource", "azure_source_from_entry"]


class AzureSource(BucketSource):
    """Every blob under ``azure://account/container/prefix/``, listed with size, ETag
    and Content-MD5.

    The prefix is a folder, as for ``s3://``. Bytes are read over aiohttp on
    URLs carrying a per-range, read-only SAS (plain URLs for a public
    container), each GET pinned with ``If-Match`` to the listed ETag, so a blob
    rewritten mid-mirror fails the mirror instead of mixing versions.

    Args:
        account: storage account name.
        container: container name.
        prefix: folder inside the container ("" for the whole container).
        credentials: the account key, or ``None`` for anonymous (public) access.
        endpoint_url: an emulator's base URL (``BDN_AZURE_ENDPOINT_URL``); the
            account URL is then ``<endpoint_url>/<account>``.
        http: shared HTTP client; one is created (and closed) when not given.
    """

    kind = "azure"

    _bucket: AzureContainer

    def __init__(self, account: str, container: str, prefix: str = "", *,
                 credentials: AzureCredentials | None, endpoint_url: str | None = None,
                 http: HttpClient | None = None) -> None:
        super().__init__("azure", f"{account}/{container}", prefix, http)
        self._bucket = AzureContainer(account, container, credentials=credentials,
                                      endpoint_url=endpoint_url, for_source=True)

    async def _listing(self) -> AsyncIterator[tuple[str, Any]]:
        async for blob in self._bucket.list_blobs(self._base, action=f"list {self.uri}"):
            yield str(blob.name), blob

    def _object(self, path: str, name: str, entry: Any) -> SourceObject:
        """Pinned by ETag and size; Content-MD5 (when the blob has one) names the content."""
        etag = str(entry.etag or "").strip('"') or None
        size = int(entry.size)
        md5 = getattr(entry.content_settings, "content_md5", None)
        where = f"{self._bucket.endpoint}:{self._bucket.bucket}"
        # Same MD5 and size in the same container: the same content (only its
        # owner can write there), so a copied shard dedups unread. Never across
        # containers, where a crafted MD5 collision could poison another's blob.
        content_id = f"azure-md5:{where}:{bytes(md5).hex()}:{size}" if md5 else None
        return SourceObject(path=path, size=size, etag=etag,
                            identity=f"azure:{where}/{name}:{etag}:{size}",
                            content_id=content_id)

    def reader(self, obj: SourceObject) -> RangeReader:
        """Ranged GETs of ``obj`` (SAS signed per range), pinned to its listed ETag."""
        name = self._base + obj.path
        return PinnedReader(self._http_client, lambda: self._bucket.blob_url(name), obj.size,
                            where=f"azure://{self._bucket.bucket}/{name}", etag=obj.etag,
                            supports_ranges=True)


def azure_source_from_entry(entry: WeightsEntry, *, secrets: SecretResolver, http: HttpClient,
                            endpoint_url: str | None = None) -> AzureSource:
    """Build the :class:`AzureSource` for an ``azure://`` weights entry (nothing is contacted).

    Raises:
        ConfigError: an OIDC method, a secret-less ``CUSTOM_SECRET``, or not ``azure://``.
        SecretError: the secret is missing or not ``{"account_key": "..."}``.
    """
    parsed = entry.parsed_source
    if parsed.kind != "azure" or parsed.account_id is None or parsed.bucket is None:
        raise ConfigError(f"{entry.source!r} is not an azure:// source", field="source")
    credentials = azure_credentials_for(entry.auth, secrets=secrets, account=parsed.account_id)
    return AzureSource(parsed.account_id, parsed.bucket, parsed.prefix, credentials=credentials,
                       endpoint_url=endpoint_url, http=http)
