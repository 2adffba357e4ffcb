"""The one place that builds Azure Blob Storage clients and turns Azure errors into ours.

``azure-storage-blob`` is the control plane only (list, properties, upload,
delete, SAS signing). Object bytes are read over aiohttp (:mod:`bdn.http`) on
URLs signed with a read-only SAS for one blob, so Azure reads share the
transfer engine's retries, stall detection and range maths with every other
origin, exactly as S3 reads do on presigned URLs. A public container (no
credentials) is read on its plain URLs. The SDK's clients are thread-safe; every
call here runs in a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import azure.core.exceptions as ace
from azure.storage.blob import BlobSasPermissions, ContainerClient, generate_blob_sas

from bdn.backends.azure.creds import AzureCredentials
from bdn.backends.bucket import bucket_not_found, failure_type, object_not_found
from bdn.errors import AuthError, BdnError
from bdn.http import redact_url

__all__ = ["SAS_EXPIRY", "AzureContainer", "azure_account_url", "map_azure_error"]

_T = TypeVar("_T")

SAS_EXPIRY = timedelta(hours=12)
"""Lifetime of a read SAS; readers sign one per range, so no URL outlives its use."""

# The SDK logs every request and response at INFO; BDN logs its own summary.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

_CONTAINER_MISSING = frozenset({"ContainerNotFound", "ContainerBeingDeleted"})
_AUTH_FAILED = frozenset({
    "AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
    "InsufficientAccountPermissions", "AccountIsDisabled", "NoAuthenticationInformation",
    "PublicAccessNotPermitted",
})


def azure_account_url(account: str, endpoint_url: str | None) -> str:
    """The Blob service URL of ``account``: Azure's own, or ``<endpoint_url>/<account>``
    (the path-style form of Azurite and other emulators).

    >>> azure_account_url("acct", None)
    'https://acct.blob.core.windows.net'
    >>> azure_account_url("devstoreaccount1", "http://127.0.0.1:10000/")
    'http://127.0.0.1:10000/devstoreaccount1'
    """
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{account}"
    return f"https://{account}.blob.core.windows.net"


def map_azure_error(err: BaseException, *, action: str, where: str, key: str | None,
                    endpoint: str, for_source: bool) -> BdnError:
    """Translate an ``azure.core`` exception into a :mod:`bdn.errors` type.

    ``action`` reads as "cannot <action>"; ``where`` is ``azure://account/container``.
    Messages are built from status and error code, never from the service's text,
    so no key or signature can reach them.
    """
    failure = failure_type(for_source)
    if isinstance(err, ace.HttpResponseError):
        code = str(getattr(err, "error_code", None) or "")
        status = err.status_code
        if code in _CONTAINER_MISSING:
            return bucket_not_found(f"container {where} does not exist at {endpoint}; check the "
                                    "account and container names", for_source=for_source)
        if status == 404 or isinstance(err, ace.ResourceNotFoundError):
            return object_not_found(f"{where}/{key}" if key else where, key,
                                    for_source=for_source)
        if status in (401, 403) or code in _AUTH_FAILED:
            return AuthError(
                f"cannot {action}: access denied by {endpoint} ({code or status}); check the "
                "account_key in the auth secret and that the container allows access",
                url=where, status=status if isinstance(status, int) else 403)
        return failure(f"cannot {action}: {endpoint} answered {code or status}")
    if isinstance(err, ace.ServiceRequestError | ace.ServiceResponseError):
        return failure(f"cannot {action}: cannot reach {endpoint} ({type(err).__name__}); "
                       "check the network, or BDN_AZURE_ENDPOINT_URL for an emulator")
    return failure(f"cannot {action}: {type(err).__name__}")


class AzureContainer:
    """One container behind one lazily built SDK client, shared by the Azure store and source.

    Attributes:
        bucket: ``account/container``, as messages and the bucket base name it.
    """

    def __init__(self, account: str, container: str, *, credentials: AzureCredentials | None,
                 endpoint_url: str | None, for_source: bool = False) -> None:
        self.account = account
        self.container = container
        self.bucket = f"{account}/{container}"
        self.account_url = azure_account_url(account, endpoint_url)
        self.endpoint = redact_url(self.account_url)
        self._credentials = credentials
        self._for_source = for_source
        self._lock = threading.Lock()
        self._client: ContainerClient | None = None

    async def run(self, fn: Callable[[Any], _T], *, action: str, key: str | None = None) -> _T:
        """Run ``fn(container_client)`` in a worker thread, translating Azure errors."""
        try:
            return await asyncio.to_thread(lambda: fn(self._ensure_client()))
        except ace.AzureError as err:
            raise self.error(err, action=action, key=key) from None

    def error(self, err: BaseException, *, action: str, key: str | None = None) -> BdnError:
        """:func:`map_azure_error` with this container's context."""
        return map_azure_error(err, action=action, where=f"azure://{self.bucket}", key=key,
                               endpoint=self.endpoint, for_source=self._for_source)

    async def list_blobs(self, prefix: str, *, action: str) -> AsyncIterator[Any]:
        """Yield the ``BlobProperties`` of every blob under ``prefix``, one page per thread hop."""
        pages: Iterator[Any] = await self.run(
            lambda c: iter(c.list_blobs(name_starts_with=prefix or None).by_page()),
            action=action)
        while True:
            page = await self.run(lambda _c: list(next(pages, None) or ()) or None,
                                  action=action)
            if page is None:
                return
            for blob in page:
                yield blob

    def blob_url(self, name: str) -> str:
        """A GET URL for blob ``name``: SAS-signed (read, one blob) when there are
        credentials, plain for a public container. Signing is local; never log it whole."""
        url = f"{self.account_url}/{quote(self.container)}/{quote(name, safe='/')}"
        if self._credentials is None:
            return url
        sas = generate_blob_sas(
            self.account, self.container, name, account_key=self._credentials.account_key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + SAS_EXPIRY)
        return f"{url}?{sas}"

    def close(self) -> None:
        """Release the client's connection pool; idempotent (a later call rebuilds it)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _ensure_client(self) -> ContainerClient:
        with self._lock:
            if self._client is None:
                credential = self._credentials.sdk_credential() if self._credentials else None
                # Few retries: the transfer engine retries data-plane reads itself,
                # and a wrong endpoint should fail in seconds, not minutes.
                self._client = ContainerClient(self.account_url, self.container,
                                               credential=credential, retry_total=3,
                                               connection_timeout=10, read_timeout=60)
            return self._client
