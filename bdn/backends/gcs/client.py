"""Google Cloud Storage plumbing shared by the ``gs://`` source and store.

The one place that builds google-cloud-storage clients, honours an emulator,
and turns google.api_core / google.auth / requests exceptions into
:mod:`bdn.errors` types. As for S3 (:mod:`bdn.backends.s3.client`), the control
plane (listing, stat, small reads, uploads, deletes) goes through the SDK in
worker threads so the event loop never blocks, and the data plane (ranged
reads, :mod:`bdn.backends.gcs.reader`) goes through :mod:`bdn.http` on the
object's media URL with a bearer token, so it shares the transfer engine's
retries and limits. Credentials come from :mod:`bdn.backends.gcs.creds`; an
emulator (``STORAGE_EMULATOR_HOST``, passed in, never read here) is used
anonymously with project ``"test"``, whatever else was configured.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import google.auth
import google.auth.exceptions as gae
import requests
import requests.adapters
from google.api_core import exceptions as gapi
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.transport.requests import AuthorizedSession, Request
from google.cloud import storage
from google.cloud.storage import exceptions as gcs_exceptions
from google.cloud.storage.retry import DEFAULT_RETRY

from bdn.backends.bucket import bucket_not_found, failure_type, object_not_found
from bdn.backends.gcs.creds import SCOPE_READ_ONLY
from bdn.backends.gcs.reader import GcsReader
from bdn.errors import AuthError, BdnError
from bdn.http import HttpClient, redact_url

__all__ = [
    "DEFAULT_GCS_CLIENT_CONFIG",
    "EMULATOR_PROJECT",
    "GCS_API_ENDPOINT",
    "GcsBucket",
    "GcsClientConfig",
    "emulator_endpoint",
    "map_gcs_error",
]

_T = TypeVar("_T")
MiB = 1024 * 1024

GCS_API_ENDPOINT = "https://storage.googleapis.com"
"""The JSON API (and media download) endpoint of real GCS."""
EMULATOR_PROJECT = "test"
"""Project id used against an emulator, which checks none."""


@dataclass(frozen=True, slots=True)
class GcsClientConfig:
    """How google-cloud-storage clients talk to GCS.

    Attributes:
        timeout_s: per HTTP request of the SDK (connect and read).
        retry_deadline_s: total time the SDK keeps retrying a call that failed
            transiently (429, 5xx, connection errors), with its capped
            exponential backoff.
        max_pool_connections: connections the SDK keeps open; uploads of
            several files run at once and requests' default of 10 would
            serialise them.
        upload_chunk_size: resumable-upload chunk for ``put_file`` (a multiple
            of 256 KiB, as GCS requires); files up to 8 MiB go in one request.
    """

    timeout_s: float = 60.0
    retry_deadline_s: float = 120.0
    max_pool_connections: int = 64
    upload_chunk_size: int = 32 * MiB

    def __post_init__(self) -> None:
        if self.upload_chunk_size <= 0 or self.upload_chunk_size % (256 * 1024):
            raise ValueError("upload_chunk_size must be a positive multiple of 256 KiB")


DEFAULT_GCS_CLIENT_CONFIG = GcsClientConfig()


# --------------------------------------------------------------------------- endpoints


def emulator_endpoint(host: str) -> str:
    """The base URL of an emulator named the way ``STORAGE_EMULATOR_HOST`` names it.

    >>> emulator_endpoint("localhost:9023")
    'http://localhost:9023'
    >>> emulator_endpoint("http://127.0.0.1:4443/")
    'http://127.0.0.1:4443'
    """
    text = host.strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


# --------------------------------------------------------------------------- errors

_Missing = Literal["bucket", "object"]
_TRANSPORT_ERRORS = (requests.exceptions.RequestException, ConnectionError)
_KNOWN_ERRORS = (gapi.GoogleAPIError, gae.GoogleAuthError, gcs_exceptions.InvalidResponse,
                 gcs_exceptions.DataCorruption, *_TRANSPORT_ERRORS)


def is_gcs_error(err: BaseException) -> bool:
    """True for the exception types :func:`map_gcs_error` understands."""
    return isinstance(err, _KNOWN_ERRORS)


def _not_found(bucket: str, key: str | None, server: str, for_source: bool,
               missing: _Missing) -> BdnError:
    if missing == "bucket":
        message = (f"bucket {bucket!r} does not exist at {server}; check the bucket name "
                   "(and STORAGE_EMULATOR_HOST if an emulator is meant)")
        return bucket_not_found(message, for_source=for_source)
    where = f"gs://{bucket}/{key}" if key else f"gs://{bucket}"
    return object_not_found(where, key, for_source=for_source)


# Without a 404, 410, 401 or 403 the exception's type tells what failed, first
# match wins (google-auth's types subclass one another): whether the message is
# an AuthError (else the store's or source's plain failure) and its wording.
_BY_TYPE: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], bool, str], ...] = (
    (gae.DefaultCredentialsError, True,
     "cannot {action}: no GCP credentials found; set GOOGLE_APPLICATION_CREDENTIALS "
     "to a service-account key file or run with a service account attached "
     "(GKE workload identity), or give the store credentials explicitly"),
    (gae.TransportError, False,
     "cannot {action}: cannot reach Google's token endpoint ({cause}); check the network"),
    (gae.GoogleAuthError, True,  # RefreshError and the like
     "cannot {action}: Google refused the credentials when issuing an access token "
     "({oauth_code}); check that the service-account key is current (not "
     "deleted or disabled), or for GCP_OIDC the workload identity provider, its "
     "audience and the service account's roles/iam.workloadIdentityUser binding"),
    (gcs_exceptions.DataCorruption, False,
     "cannot {action}: the bytes did not match GCS's checksum; retry"),
    (_TRANSPORT_ERRORS, False,
     "cannot {action}: cannot reach {server} ({error}); check the network, "
     "or STORAGE_EMULATOR_HOST for an emulator"),
)


def map_gcs_error(
    err: BaseException,
    *,
    action: str,
    bucket: str,
    key: str | None = None,
    endpoint: str = GCS_API_ENDPOINT,
    for_source: bool = False,
    missing: _Missing = "object",
) -> BdnError:
    """Translate a google-cloud-storage / google-auth exception into a :mod:`bdn.errors` type.

    ``action`` reads as "cannot <action>". A 404 means the bucket is missing
    when ``missing="bucket"`` (listings), else the object. Stores get
    ``NotFound``/``BlobNotFound``/``StoreError``, sources (``for_source``)
    ``SourceNotFound``/``SourceError``; 401/403 and rejected credentials are
    ``AuthError``. Messages are built from status codes and error types, not
    from the server's text, so no credential can leak into one.
    """
    if isinstance(err, gapi.RetryError) and err.cause is not None:
        err = err.cause  # The SDK gave up retrying; what failed last is the story.
    where = f"gs://{bucket}/{key}" if key else f"gs://{bucket}"
    server = redact_url(endpoint)
    status = _status_of(err)
    if status in (404, 410):
        return _not_found(bucket, key, server, for_source, missing)
    if status in (401, 403):
        return AuthError(
            f"cannot {action}: access denied by {server} (HTTP {status}); check the "
            "service-account key or GCP_OIDC settings, and that the account may "
            f"{'read' if for_source else 'read and write'} objects in bucket {bucket!r} "
            f"(e.g. roles/storage.{'objectViewer' if for_source else 'objectUser'})",
            url=where, status=status,
        )
    failure = failure_type(for_source)
    for kind, is_auth, template in _BY_TYPE:
        if isinstance(err, kind):
            message = template.format(action=action, server=server, error=type(err).__name__,
                                      cause=_type_of_cause(err), oauth_code=_oauth_code(err))
            return AuthError(message, url=where) if is_auth else failure(message)
    if status is not None:
        return failure(f"cannot {action}: {server} answered HTTP {status}")
    return failure(f"cannot {action}: {type(err).__name__}")


def _status_of(err: BaseException) -> int | None:
    if isinstance(err, gapi.GoogleAPICallError) and isinstance(err.code, int):
        return err.code
    if isinstance(err, gcs_exceptions.InvalidResponse):
        code = getattr(getattr(err, "response", None), "status_code", None)
        return code if isinstance(code, int) else None
    return None


def _type_of_cause(err: BaseException) -> str:
    cause = err.args[0] if err.args and isinstance(err.args[0], BaseException) else err
    return type(cause).__name__


def _oauth_code(err: BaseException) -> str:
    """The OAuth error code (``invalid_grant``...) at the head of a RefreshError, if any."""
    head = str(err.args[0]) if err.args else ""
    word = head.split(":", 1)[0].strip().removeprefix("Error code ").strip()
    safe = word and len(word) <= 40 and all(c.isalnum() or c == "_" for c in word)
    return word if safe else type(err).__name__


# --------------------------------------------------------------------------- client


def make_gcs_client(
    credentials: Credentials,
    endpoint: str,
    *,
    project: str | None,
    config: GcsClientConfig = DEFAULT_GCS_CLIENT_CONFIG,
) -> Any:
    """Build a ``google.cloud.storage.Client`` on ``endpoint`` with ``credentials``.

    Args:
        credentials: google-auth credentials (anonymous for an emulator).
        endpoint: API base URL (:data:`GCS_API_ENDPOINT` or an emulator's).
        project: billing project; ``None`` skips google-auth's project lookup
            (object reads and writes need none).
    """
    session = AuthorizedSession(credentials)
    adapter = requests.adapters.HTTPAdapter(pool_connections=4,
                                            pool_maxsize=config.max_pool_connections)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return storage.Client(project=project, credentials=credentials, _http=session,
                          client_options={"api_endpoint": endpoint})


class GcsBucket:
    """One bucket behind one lazily built client, shared by GCS stores and sources.

    Coroutine-safe: SDK calls run in worker threads; the client is built on
    first use (in a thread, under a lock), so constructing this never blocks.

    Args:
        bucket: bucket name.
        credentials: explicit credentials; ``None`` means Application Default
            Credentials. Ignored with an emulator, which is used anonymously.
        emulator_host: ``STORAGE_EMULATOR_HOST`` as passed in from the entry
            point (``host:port`` or a URL); ``None`` for real GCS.
        api_endpoint: a GCS endpoint other than :data:`GCS_API_ENDPOINT` that
            does check credentials (a Private Service Connect endpoint, or a
            test server); ignored with an emulator.
        scopes: OAuth scopes for ADC.
        config: SDK timeouts, retries and pool size.
        for_source: map errors to the source types (``SourceNotFound``...).
    """

    def __init__(
        self,
        bucket: str,
        *,
        credentials: Credentials | None,
        emulator_host: str | None = None,
        api_endpoint: str | None = None,
        scopes: Sequence[str] = (SCOPE_READ_ONLY,),
        config: GcsClientConfig = DEFAULT_GCS_CLIENT_CONFIG,
        for_source: bool = False,
    ) -> None:
        self.bucket = bucket
        self.config = config
        self.emulated = bool(emulator_host)
        self.endpoint = (emulator_endpoint(emulator_host) if emulator_host
                         else (api_endpoint or GCS_API_ENDPOINT).rstrip("/"))
        self._credentials: Credentials | None = (
            AnonymousCredentials() if emulator_host else credentials)
        self._scopes = tuple(scopes)
        self._for_source = for_source
        self.retry = DEFAULT_RETRY.with_timeout(config.retry_deadline_s)
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._client: Any = None
        self._handle: Any = None

    async def run(self, fn: Callable[[Any], _T], *, action: str, key: str | None = None,
                  missing: _Missing = "object") -> _T:
        """Run ``fn(bucket_handle)`` in a worker thread, translating GCS errors.

        ``bucket_handle`` is the SDK's ``Bucket`` (``.client`` is the client).
        """

        def call() -> _T:
            return fn(self._ensure_handle())

        try:
            return await asyncio.to_thread(call)
        except BdnError:
            raise
        except Exception as err:
            if is_gcs_error(err):
                raise self.error(err, action=action, key=key, missing=missing) from err
            raise

    def error(self, err: BaseException, *, action: str, key: str | None = None,
              missing: _Missing = "object") -> BdnError:
        """:func:`map_gcs_error` with this bucket's context."""
        return map_gcs_error(err, action=action, bucket=self.bucket, key=key,
                             endpoint=self.endpoint, for_source=self._for_source, missing=missing)

    async def list_blobs(self, prefix: str, *, action: str,
                         fields: str = "items(name,size),nextPageToken") -> AsyncIterator[Any]:
        """Yield the SDK ``Blob`` of every object under ``prefix`` (name order),
        one page per thread hop. A missing bucket raises ``(Source)NotFound``."""
        pages = await self.run(
            lambda b: iter(b.client.list_blobs(b, prefix=prefix or None, fields=fields,
                                               retry=self.retry, timeout=self.config.timeout_s)
                           .pages),
            action=action, missing="bucket",
        )

        def next_page(_bucket: Any) -> list[Any] | None:
            page = next(pages, None)
            return None if page is None else list(page)

        while True:
            blobs = await self.run(next_page, action=action, missing="bucket")
            if blobs is None:
                return
            for blob in blobs:
                yield blob

    def media_url(self, name: str, generation: int | str | None = None) -> str:
        """The JSON API media URL of object ``name``, pinned to ``generation`` if given."""
        url = (f"{self.endpoint}/download/storage/v1/b/{quote(self.bucket, safe='')}/o/"
               f"{quote(name, safe='')}?alt=media")
        return f"{url}&generation={generation}" if generation is not None else url

    async def auth_headers(self) -> dict[str, str]:
        """Request headers that authenticate a data-plane GET (``Authorization: Bearer``;
        none with an emulator). The token is refreshed in a worker thread when it
        is missing or near expiry; concurrent callers share one refresh.

        Raises:
            AuthError: the credentials were refused; StoreError/SourceError: the
            token endpoint could not be reached.
        """
        if self.emulated:
            return {}
        credentials = self._credentials
        if credentials is None or not credentials.valid:
            try:
                credentials = await asyncio.to_thread(self._refreshed_credentials)
            except BdnError:
                raise
            except Exception as err:
                if is_gcs_error(err):
                    raise self.error(err, action=f"authenticate to {self.endpoint}") from err
                raise
        headers: dict[str, str] = {}
        credentials.apply(headers)
        return headers

    def reader(self, name: str, size: int, http: Callable[[], HttpClient], *,
               generation: int | str | None = None, crc32c: str | None = None) -> GcsReader:
        """A range reader of object ``name`` over aiohttp (see :class:`GcsReader`)."""
        return GcsReader(self, name, size, http, generation=generation, crc32c=crc32c)

    def close(self) -> None:
        """Release the client's connection pool; idempotent (a later call rebuilds it)."""
        with self._lock:
            client, self._client, self._handle = self._client, None, None
        if client is not None:
            client.close()

    def _ensure_handle(self) -> Any:
        with self._lock:
            if self._handle is None:
                if self._credentials is None:
                    # Application Default Credentials: blocking (it may ask the
                    # metadata server), hence here, in a worker thread.
                    self._credentials, _ = google.auth.default(scopes=list(self._scopes))
                project = EMULATOR_PROJECT if self.emulated else None
                self._client = make_gcs_client(self._credentials, self.endpoint,
                                               project=project, config=self.config)
                self._handle = self._client.bucket(self.bucket)
            return self._handle

    def _refreshed_credentials(self) -> Credentials:
        self._ensure_handle()  # Resolves ADC when no credentials were given.
        credentials = self._credentials
        assert credentials is not None
        with self._refresh_lock:
            if not credentials.valid:
                credentials.refresh(Request())
        return credentials
