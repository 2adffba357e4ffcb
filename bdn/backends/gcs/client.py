"""Google Cloud Storage plumbing shared by the ``gs://`` source and store.

The one place that builds google-cloud-storage clients and google-auth
credentials, honours an emulator, and turns google.api_core / google.auth /
requests exceptions into :mod:`bdn.errors` types. As for S3 (:mod:`bdn.backends.s3.client`),
the control plane (listing, stat, small reads, uploads, deletes) goes through
the SDK in worker threads so the event loop never blocks, and the data plane
(ranged reads) goes through :mod:`bdn.http` on the object's media URL with a
bearer token, so it shares the transfer engine's retries and limits.

Credentials, by case:

- a service-account key secret: :func:`service_account_credentials`;
- ``GCP_OIDC``: :func:`gcp_oidc_credentials` (identity pool + impersonation);
- an emulator (``STORAGE_EMULATOR_HOST``, passed in, never read here):
  anonymous, project ``"test"``, whatever else was configured;
- ``None`` for a store: Application Default Credentials, resolved by
  google-auth when the client is first built.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import google.auth
import google.auth.exceptions as gae
import google_crc32c
import requests
import requests.adapters
from google.api_core import exceptions as gapi
from google.auth import identity_pool
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.transport.requests import AuthorizedSession, Request
from google.cloud import storage
from google.cloud.storage import exceptions as gcs_exceptions
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account

from bdn.backends.oidc import read_oidc_token
from bdn.config.auth import AuthConfig
from bdn.config.secrets import GcpServiceAccount, SecretResolver, load_gcp_service_account
from bdn.errors import (
    AuthError,
    BdnError,
    BlobNotFound,
    ConfigError,
    IntegrityError,
    NotFound,
    SecretError,
    SourceError,
    SourceNotFound,
    StoreError,
)
from bdn.http import HttpClient, HttpRangeReader, redact_url

__all__ = [
    "DEFAULT_GCS_CLIENT_CONFIG",
    "EMULATOR_PROJECT",
    "GCS_API_ENDPOINT",
    "SCOPE_READ_ONLY",
    "SCOPE_READ_WRITE",
    "GcsBucket",
    "GcsClientConfig",
    "GcsReader",
    "emulator_endpoint",
    "gcp_oidc_credentials",
    "gcs_credentials_from_secret",
    "map_gcs_error",
    "service_account_credentials",
]

_T = TypeVar("_T")
MiB = 1024 * 1024

GCS_API_ENDPOINT = "https://storage.googleapis.com"
"""The JSON API (and media download) endpoint of real GCS."""
EMULATOR_PROJECT = "test"
"""Project id used against an emulator, which checks none."""
SCOPE_READ_ONLY = "https://www.googleapis.com/auth/devstorage.read_only"
SCOPE_READ_WRITE = "https://www.googleapis.com/auth/devstorage.read_write"
STS_TOKEN_URL = "https://sts.googleapis.com/v1/token"
IAM_CREDENTIALS_URL = "https://iamcredentials.googleapis.com/v1"
_JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"


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


# --------------------------------------------------------------------------- credentials


def emulator_endpoint(host: str) -> str:
    """The base URL of an emulator named the way ``STORAGE_EMULATOR_HOST`` names it.

    >>> emulator_endpoint("localhost:9023")
    'http://localhost:9023'
    >>> emulator_endpoint("http://127.0.0.1:4443/")
    'http://127.0.0.1:4443'
    """
    text = host.strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


def service_account_credentials(
    account: GcpServiceAccount,
    *,
    scopes: Sequence[str] = (SCOPE_READ_ONLY,),
    secret_name: str | None = None,
) -> Credentials:
    """google-auth credentials for a service-account key (no network yet).

    Raises:
        SecretError: google-auth cannot use the key (e.g. the PEM does not
            parse); the message names the account and ``secret_name``, never
            the key.
    """
    try:
        return service_account.Credentials.from_service_account_info(
            dict(account.info), scopes=list(scopes))
    except (ValueError, TypeError, KeyError, gae.GoogleAuthError):
        # Raised below, outside the handler, so the parser's error is neither
        # chained nor kept as context: it may quote parts of the key.
        pass
    where = f"secret {secret_name!r}: " if secret_name else ""
    raise SecretError(
        f"{where}the service-account key of {account.client_email} cannot be used: its "
        "private_key does not parse; download a fresh JSON key from the Google Cloud console",
        secret_name=secret_name,
    )


def gcs_credentials_from_secret(
    secrets: SecretResolver, name: str, *, scopes: Sequence[str] = (SCOPE_READ_ONLY,)
) -> Credentials:
    """Load secret ``name`` as a service-account key and build credentials from it.

    Raises:
        SecretError: the secret is missing or malformed (one line, naming the
            missing keys; never a value).
    """
    return service_account_credentials(load_gcp_service_account(secrets, name), scopes=scopes,
                                       secret_name=name)


def gcp_oidc_credentials(
    auth: AuthConfig,
    *,
    token_file: Path | None,
    scopes: Sequence[str] = (SCOPE_READ_ONLY,),
    sts_url: str = STS_TOKEN_URL,
    iam_url: str = IAM_CREDENTIALS_URL,
) -> Credentials:
    """``GCP_OIDC`` credentials: workload identity federation with the token in ``token_file``.

    google-auth's identity-pool credentials take the token from the file (read
    afresh at each exchange), exchange it at STS for a federated token
    (audience: the workload identity provider), and trade that for an access
    token of ``gcp_oidc_service_account`` (``generateAccessToken``). Nothing is
    contacted here: the exchange happens on first use and again whenever the
    token nears expiry.

    Args:
        auth: a ``GCP_OIDC`` auth block.
        token_file: the projected token (``BDN_OIDC_TOKEN_FILE``).
        scopes: OAuth scopes of the impersonated access token.
        sts_url: STS token endpoint (tests point it at a local server).
        iam_url: IAM Credentials API base URL (likewise).

    Raises:
        ConfigError: ``auth`` is not a complete ``GCP_OIDC`` block.
        AuthError: no usable token file: OIDC needs one, and says so.
    """
    account, provider = auth.gcp_oidc_service_account, auth.gcp_oidc_workload_id_provider
    if auth.auth_method != "GCP_OIDC" or not account or not provider:
        raise ConfigError(
            "GCP OIDC needs auth_method: GCP_OIDC with gcp_oidc_service_account and "
            "gcp_oidc_workload_id_provider",
            field="auth",
        )
    read_oidc_token(token_file, "GCP_OIDC")  # Fail now, plainly, if there is none.
    assert token_file is not None  # read_oidc_token refuses None.
    return identity_pool.Credentials(
        audience=f"//iam.googleapis.com/{provider}",
        subject_token_type=_JWT_TOKEN_TYPE,
        token_url=sts_url,
        subject_token_supplier=_TokenFileSupplier(token_file),
        service_account_impersonation_url=(
            f"{iam_url.rstrip('/')}/projects/-/serviceAccounts/{account}:generateAccessToken"),
        scopes=list(scopes),
    )


class _TokenFileSupplier(identity_pool.SubjectTokenSupplier):
    """Reads the projected token afresh at every exchange (the kubelet rotates it).

    google-auth's own file source would send the file verbatim, trailing
    newline included; this one strips it, and a token file that vanished
    later fails with the same plain :class:`AuthError` as a missing one.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def get_subject_token(self, context: object, request: object) -> str:
        return read_oidc_token(self._path, "GCP_OIDC")


# --------------------------------------------------------------------------- errors

_Missing = Literal["bucket", "object"]
_TRANSPORT_ERRORS = (requests.exceptions.RequestException, ConnectionError)
_KNOWN_ERRORS = (gapi.GoogleAPIError, gae.GoogleAuthError, gcs_exceptions.InvalidResponse,
                 gcs_exceptions.DataCorruption, *_TRANSPORT_ERRORS)


def is_gcs_error(err: BaseException) -> bool:
    """True for the exception types :func:`map_gcs_error` understands."""
    return isinstance(err, _KNOWN_ERRORS)


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
    failure = SourceError if for_source else StoreError
    status = _status_of(err)
    if status in (404, 410):
        if missing == "bucket":
            message = (f"bucket {bucket!r} does not exist at {server}; check the bucket name "
                       "(and STORAGE_EMULATOR_HOST if an emulator is meant)")
            return SourceNotFound(message) if for_source else NotFound(message)
        if for_source:
            return SourceNotFound(f"{where} does not exist")
        return BlobNotFound(f"{where} does not exist", digest=_digest_of(key))
    if status in (401, 403):
        return AuthError(
            f"cannot {action}: access denied by {server} (HTTP {status}); check the "
            "service-account key or GCP_OIDC settings, and that the account may "
            f"{'read' if for_source else 'read and write'} objects in bucket {bucket!r} "
            f"(e.g. roles/storage.{'objectViewer' if for_source else 'objectUser'})",
            url=where, status=status,
        )
    if isinstance(err, gae.DefaultCredentialsError):
        return AuthError(
            f"cannot {action}: no GCP credentials found; set GOOGLE_APPLICATION_CREDENTIALS "
            "to a service-account key file or run with a service account attached "
            "(GKE workload identity), or give the store credentials explicitly",
            url=where,
        )
    if isinstance(err, gae.TransportError):
        return failure(f"cannot {action}: cannot reach Google's token endpoint "
                       f"({_type_of_cause(err)}); check the network")
    if isinstance(err, gae.GoogleAuthError):  # RefreshError and the like
        return AuthError(
            f"cannot {action}: Google refused the credentials when issuing an access token "
            f"({_oauth_code(err)}); check that the service-account key is current (not "
            "deleted or disabled), or for GCP_OIDC the workload identity provider, its "
            "audience and the service account's roles/iam.workloadIdentityUser binding",
            url=where,
        )
    if isinstance(err, gcs_exceptions.DataCorruption):
        return failure(f"cannot {action}: the bytes did not match GCS's checksum; retry")
    if isinstance(err, _TRANSPORT_ERRORS):
        return failure(
            f"cannot {action}: cannot reach {server} ({type(err).__name__}); check the network, "
            "or STORAGE_EMULATOR_HOST for an emulator"
        )
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


def _digest_of(key: str | None) -> str | None:
    from bdn.backends.keys import blob_digest  # Late: bdn.backends imports this module.

    return blob_digest(key) if key else None


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


class GcsReader:
    """:class:`~bdn.backends.base.RangeReader` of one GCS object, over aiohttp.

    Each range is one GET of the media URL (pinned to ``generation`` when
    given, so an object overwritten since it was listed answers 404 instead of
    other bytes) with a fresh bearer header. A range that covers the whole
    object is checked against ``crc32c`` (base64, as GCS lists it) when given,
    catching corruption between GCS and us; partial ranges rely on the
    manifest's own digests.
    """

    supports_ranges: bool | None = True

    def __init__(self, bucket: GcsBucket, name: str, size: int,
                 http: Callable[[], HttpClient], *, generation: int | str | None = None,
                 crc32c: str | None = None) -> None:
        self._bucket = bucket
        self._name = name
        self._size = size
        self._http = http
        self._url = bucket.media_url(name, generation)
        self._crc32c = base64.b64decode(crc32c) if crc32c else None

    async def open_range(
        self, start: int, end: int
    ) -> AsyncIterator[bytes | bytearray | memoryview]:
        """Yield the bytes of ``[start, end)``; see the RangeReader contract.

        Raises:
            IntegrityError: a whole-object read does not match the listed CRC32C.
            AuthError, BlobNotFound, TransferError...: as :class:`HttpRangeReader`.
        """
        headers = await self._bucket.auth_headers()
        inner = HttpRangeReader(self._http(), self._url, self._size, headers=headers)
        check = (google_crc32c.Checksum()
                 if self._crc32c is not None and start == 0 and end == self._size else None)
        try:
            async for piece in inner.open_range(start, end):
                if check is not None:
                    check.update(piece)
                yield piece
        finally:
            if inner.supports_ranges is not None:
                self.supports_ranges = inner.supports_ranges
        if check is not None and check.digest() != self._crc32c:
            raise IntegrityError(
                f"{self.describe()}: the bytes read do not match the CRC32C that GCS listed; "
                "the transfer was corrupted (it is retried)",
                url=self.describe(),
                expected=f"crc32c:{base64.b64encode(self._crc32c or b'').decode()}",
                actual=f"crc32c:{base64.b64encode(check.digest()).decode()}",
            )

    def describe(self) -> str:
        return f"gs://{self._bucket.bucket}/{self._name}"

    async def close(self) -> None:
        """Nothing to release: connections belong to the shared HttpClient."""
