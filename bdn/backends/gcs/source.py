"""A GCS prefix as a weights source: ``gs://bucket/models/llama``.

Listing through google-cloud-storage (name, size, md5, crc32c, generation);
bytes as ranged GETs of each object's media URL, pinned to the listed
generation, through the transfer engine's aiohttp path (:mod:`bdn.backends.gcs.client`).
:func:`gcs_source_from_entry` turns a weights entry's ``auth`` into credentials.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from google.auth.credentials import Credentials

from bdn.backends.base import RangeReader, SourceObject
from bdn.backends.bucket import BucketSource
from bdn.backends.gcs.client import DEFAULT_GCS_CLIENT_CONFIG, GcsBucket, GcsClientConfig
from bdn.backends.gcs.creds import SCOPE_READ_ONLY, gcs_source_credentials
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.errors import ConfigError
from bdn.http import HttpClient, redact_url

__all__ = ["GcsSource", "gcs_source_from_entry"]


class GcsSource(BucketSource):
    """Every object under ``gs://bucket/prefix/``, listed with its generation.

    The prefix is a folder: ``gs://b/models/llama`` lists ``models/llama/...``
    (not ``models/llama-2/...``) and paths are relative to it. Folder
    placeholders (names ending in ``/``) are skipped.

    Each :class:`SourceObject` carries:

    - ``identity`` ``gcs:<endpoint>:<bucket>/<name>#<generation>``: GCS gives
      every write of an object a new generation, so it changes exactly when
      the content may have;
    - ``etag`` the generation (recorded as ``source_etag``);
    - ``content_id`` ``gcs-md5:<endpoint>:<bucket>:<md5 hex>:<size>``, scoped to
      the bucket for the reason :class:`SourceObject` gives; ``None`` when GCS
      has no MD5 (composite objects), since a 32-bit CRC is too weak to name
      content.

    Args:
        bucket: bucket name.
        prefix: folder inside the bucket ("" for the whole bucket).
        credentials: google-auth credentials; ignored with an emulator.
        emulator_host: ``STORAGE_EMULATOR_HOST`` from the entry point's
            environment snapshot, or ``None`` for real GCS.
        api_endpoint: a non-default GCS endpoint that checks credentials
            (Private Service Connect); ``None`` for ``storage.googleapis.com``.
        http: shared HTTP client; one is created (and closed by :meth:`close`)
            when not given.
        client_config: SDK timeouts and retries.
    """

    kind = "gcs"

    _bucket: GcsBucket

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        credentials: Credentials | None,
        emulator_host: str | None = None,
        api_endpoint: str | None = None,
        http: HttpClient | None = None,
        client_config: GcsClientConfig = DEFAULT_GCS_CLIENT_CONFIG,
    ) -> None:
        super().__init__("gs", bucket, prefix, http)
        self._bucket = GcsBucket(bucket, credentials=credentials, emulator_host=emulator_host,
                                 api_endpoint=api_endpoint, scopes=(SCOPE_READ_ONLY,),
                                 config=client_config, for_source=True)
        # (generation, crc32c) per listed path, so a reader can check a whole read.
        self._crc32c: dict[str, tuple[str, str]] = {}

    async def _listing(self) -> AsyncIterator[tuple[str, Any]]:
        async for blob in self._bucket.list_blobs(
            self._base, action=f"list {self.uri}",
            fields="items(name,size,md5Hash,crc32c,generation),nextPageToken",
        ):
            yield str(blob.name), blob

    def _object(self, path: str, name: str, entry: Any) -> SourceObject:
        """Pinned by generation (see the class); remembers the CRC32C for :meth:`reader`."""
        bucket = self._bucket.bucket
        where = redact_url(self._bucket.endpoint)
        size = int(entry.size or 0)
        generation = str(entry.generation)
        md5 = _hex(entry.md5_hash)
        if entry.crc32c:
            self._crc32c[path] = (generation, str(entry.crc32c))
        return SourceObject(
            path=path, size=size, etag=generation,
            # The endpoint belongs in the identity: the same bucket/name on
            # an emulator and on GCS are two objects.
            identity=f"gcs:{where}:{bucket}/{name}#{generation}",
            # Same MD5 and size in the same bucket: the same content (only
            # the bucket's writers can put it there). Never across buckets.
            content_id=f"gcs-md5:{where}:{bucket}:{md5}:{size}" if md5 else None,
        )

    def reader(self, obj: SourceObject) -> RangeReader:
        """Ranged GETs of ``obj``'s media URL, pinned to its generation (``obj.etag``)."""
        listed = self._crc32c.get(obj.path)
        crc32c = listed[1] if listed is not None and listed[0] == obj.etag else None
        return self._bucket.reader(self._base + obj.path, obj.size, self._http_client,
                                   generation=obj.etag, crc32c=crc32c)


def _hex(b64: object) -> str | None:
    """GCS's base64 MD5 as hex, or ``None`` when absent or malformed."""
    if not b64:
        return None
    try:
        raw = base64.b64decode(str(b64), validate=True)
    except ValueError:
        return None
    return raw.hex() if len(raw) == 16 else None


def gcs_source_from_entry(
    entry: WeightsEntry,
    *,
    secrets: SecretResolver,
    emulator_host: str | None,
    http: HttpClient,
    token_file: Path | None = None,
    client_config: GcsClientConfig = DEFAULT_GCS_CLIENT_CONFIG,
) -> GcsSource:
    """Build the :class:`GcsSource` for a ``gs://`` weights entry, resolving its ``auth``.

    - ``CUSTOM_SECRET``: the secret is a service-account key (JSON);
    - ``GCP_OIDC``: workload identity federation with the projected token in
      ``token_file`` (``BDN_OIDC_TOKEN_FILE``);
    - no ``auth``: refused, except against an emulator.

    With ``emulator_host`` every method ends up anonymous (the emulator checks
    nothing), but the secret or token file is still loaded and checked, so a
    mistake fails the same way it would against GCS. Nothing is contacted here.

    Args:
        entry: the weights entry (its source must be ``gs://``).
        secrets: where ``auth_secret_name`` is looked up.
        emulator_host: ``STORAGE_EMULATOR_HOST`` from the entry point's
            environment snapshot (never read from ``os.environ`` here).
        http: the shared HTTP client for the data plane (not closed by the source).
        token_file: the OIDC token file, for ``GCP_OIDC``.
        client_config: SDK timeouts and retries.

    Raises:
        ConfigError: no auth (Baseten's ``no credentials configured: need
            either OIDC config or secret_id``, then the fix), an auth method
            that cannot authenticate GCS, or a source that is not ``gs://``.
        SecretError: the service-account secret is missing or malformed.
        AuthError: ``GCP_OIDC`` without a usable token file.
    """
    parsed = entry.parsed_source
    if parsed.kind != "gcs" or parsed.bucket is None:
        raise ConfigError(f"{entry.source!r} is not a gs:// source", field="source")
    credentials = gcs_source_credentials(entry.auth, secrets=secrets, emulator_host=emulator_host,
                                         token_file=token_file)
    return GcsSource(parsed.bucket, parsed.prefix, credentials=credentials,
                     emulator_host=emulator_host, http=http, client_config=client_config)
