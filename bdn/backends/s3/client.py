"""The one place that builds boto3 clients and turns botocore errors into ours.

boto3 is the control plane only (list, head, put, multipart upload, presign):
object bytes are read through aiohttp on presigned URLs (:mod:`bdn.http`),
so S3 reads share the transfer engine's retries, stall detection and range
maths with every other origin. boto3 clients are thread-safe once built, and
every call here runs in a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bce
from boto3.exceptions import Boto3Error
from botocore.config import Config

from bdn.backends.bucket import bucket_not_found, failure_type, object_not_found
from bdn.backends.s3.creds import AwsOidcCredentials, S3Auth
from bdn.backends.s3.reader import PresignedReader
from bdn.errors import AuthError, BdnError
from bdn.http import HttpClient, redact_url

_T = TypeVar("_T")

PRESIGN_EXPIRY_S = 12 * 3600
"""Lifetime of presigned GET URLs. A URL signed with temporary credentials dies
with them regardless, which is why readers sign one per range (see
:meth:`S3Bucket.presigned_get`)."""


@dataclass(frozen=True, slots=True)
class S3ClientConfig:
    """How boto3 clients talk to S3. botocore owns control-plane retries:
    ``standard`` mode retries throttling, 5xx and connection errors with capped
    exponential backoff."""

    retry_mode: Literal["standard", "adaptive"] = "standard"
    max_attempts: int = 8
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    # Managed uploads run up to 8 part uploads at once per file, and several
    # files upload concurrently; botocore's default pool of 10 would serialise them.
    max_pool_connections: int = 64


DEFAULT_S3_CLIENT_CONFIG = S3ClientConfig()

_AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn")

# Error codes by meaning. S3 answers HEAD requests without a body, so botocore
# reports only the status there ("404", "403"); the rest are S3's own codes.
_KEY_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_BUCKET_MISSING = frozenset({"NoSuchBucket"})
_AUTH_FAILED = frozenset({
    "AccessDenied", "403", "401", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled",
    "AccountProblem", "InvalidSecurity", "AuthorizationHeaderMalformed",
})


def make_s3_session(credentials: S3Auth | None) -> boto3.session.Session:
    """A boto3 session for ``credentials``: fixed keys, self-renewing ``AWS_OIDC``
    keys (botocore refreshes them as it signs), or ``None`` for boto3's default
    chain (environment, shared config, web identity / IRSA, instance role)."""
    if isinstance(credentials, AwsOidcCredentials):
        return boto3.session.Session(botocore_session=credentials.botocore_session())
    return boto3.session.Session(
        aws_access_key_id=credentials.access_key_id if credentials else None,
        aws_secret_access_key=credentials.secret_access_key if credentials else None,
        aws_session_token=credentials.session_token if credentials else None,
    )


def make_s3_client(
    credentials: S3Auth | None,
    endpoint_url: str | None,
    region: str | None,
    *,
    config: S3ClientConfig = DEFAULT_S3_CLIENT_CONFIG,
    session: boto3.session.Session | None = None,
    addressing: Literal["path", "virtual"] | None = None,
) -> Any:
    """Build an S3 client (blocking: it loads service models; call it in a thread).

    Args:
        credentials: explicit or ``AWS_OIDC`` keys, or ``None`` for boto3's
            default chain (see :func:`make_s3_session`).
        endpoint_url: an S3-compatible server (MinIO, R2, moto); selects
            path-style addressing, which such servers support universally.
        region: signing region; ``None`` uses the credentials' region, then
            boto3's own resolution.
        session: the session to build it in (``None``: a new one for
            ``credentials``); clients of one session share its credentials.
        addressing: force an addressing style on ``endpoint_url`` (CoreWeave
            requires ``virtual``); ``None``: path-style for any endpoint given.
    """
    session = session or make_s3_session(credentials)
    region = region or (credentials.region if credentials else None)
    custom = endpoint_url is not None
    client = session.client(
        "s3", endpoint_url=endpoint_url, region_name=region,
        config=_botocore_config(config, path_style=custom and addressing != "virtual",
                                custom_endpoint=custom),
    )
    if endpoint_url is None:
        # boto3 also honours AWS_ENDPOINT_URL and endpoint_url in the shared
        # config by itself; such an endpoint is an S3-compatible server too and
        # needs path-style addressing, so rebuild with it stated explicitly.
        configured = endpoint_of(client)
        if configured is not None:
            client = session.client(
                "s3", endpoint_url=configured, region_name=region,
                config=_botocore_config(config, path_style=True, custom_endpoint=True),
            )
    return client


def endpoint_of(client: Any) -> str | None:
    """The client's endpoint when it is not AWS itself, else ``None``."""
    url = str(client.meta.endpoint_url)
    host = urlsplit(url).hostname or ""
    return None if host.endswith(_AWS_HOST_SUFFIXES) or host == "amazonaws.com" else url


def _botocore_config(config: S3ClientConfig, *, path_style: bool,
                     custom_endpoint: bool = False) -> Config:
    options: dict[str, Any] = {
        "signature_version": "s3v4",
        "retries": {"mode": config.retry_mode, "max_attempts": config.max_attempts},
        "connect_timeout": config.connect_timeout_s,
        "read_timeout": config.read_timeout_s,
        "max_pool_connections": config.max_pool_connections,
        # A custom endpoint not addressed path-style is addressed virtual-hosted
        # (CoreWeave accepts nothing else); AWS itself picks ("auto").
        "s3": {"addressing_style": "path" if path_style
               else "virtual" if custom_endpoint else "auto"},
    }
    if (path_style or custom_endpoint) and "request_checksum_calculation" in Config.OPTION_DEFAULTS:
        # botocore >= 1.36 adds CRC checksums to every upload by default, which
        # several S3-compatible servers reject; send them only where required.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    return Config(**options)


def is_aws_error(err: BaseException) -> bool:
    """True for the exception types :func:`map_s3_error` understands."""
    return isinstance(err, bce.BotoCoreError | bce.ClientError | Boto3Error)


def map_s3_error(
    err: BaseException,
    *,
    action: str,
    bucket: str,
    key: str | None = None,
    endpoint_url: str | None = None,
    for_source: bool = False,
) -> BdnError:
    """Translate a boto3/botocore exception into a :mod:`bdn.errors` type.

    ``action`` reads as "cannot <action>" (e.g. ``"read s3://b/k"``). Stores
    get ``BlobNotFound``/``NotFound``/``StoreError``; sources (``for_source``)
    get ``SourceNotFound``/``SourceError``. Credentials never appear: messages
    are built here from error codes, not from the server's text.
    """
    # boto3's managed transfers wrap the ClientError that caused a failure.
    cause = err.__cause__ if isinstance(err, Boto3Error) and err.__cause__ else err
    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    endpoint = redact_url(endpoint_url) if endpoint_url else "AWS S3"
    failure = failure_type(for_source)
    if isinstance(cause, bce.ClientError):
        code = str(cause.response.get("Error", {}).get("Code", ""))
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _BUCKET_MISSING:
            message = (f"bucket {bucket!r} does not exist at {endpoint}; check the bucket "
                       "name and --endpoint-url/AWS_ENDPOINT_URL")
            return bucket_not_found(message, for_source=for_source)
        if code in _KEY_MISSING:
            return object_not_found(where, key, for_source=for_source)
        if code in _AUTH_FAILED:
            return AuthError(
                f"cannot {action}: access denied by {endpoint} ({code}); check the "
                "credentials (auth secret or AWS_* variables) and that they grant "
                f"access to bucket {bucket!r}",
                url=where, status=status if isinstance(status, int) else 403,
            )
        return failure(f"cannot {action}: {endpoint} answered {code or status}")
    if isinstance(cause, bce.NoCredentialsError | bce.PartialCredentialsError
                  | bce.CredentialRetrievalError):
        return AuthError(
            f"cannot {action}: no usable AWS credentials ({type(cause).__name__}); set an "
            "auth secret or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or attach a role",
            url=where,
        )
    if isinstance(cause, bce.ConnectionError | bce.HTTPClientError):
        return failure(
            f"cannot {action}: cannot reach {endpoint} ({type(cause).__name__}); check the "
            "network, or pass --endpoint-url / set AWS_ENDPOINT_URL for an S3-compatible server"
        )
    return failure(f"cannot {action}: {type(cause).__name__}: {_safe_text(cause)}")


def _safe_text(err: BaseException) -> str:
    # Parameter-validation and similar local errors describe our own request,
    # never credentials; still cut them to one line.
    return str(err).splitlines()[0][:300] if str(err) else ""


class S3Bucket:
    """One bucket behind one lazily built client, shared by S3 stores and sources.

    Coroutine-safe: boto3 calls run in worker threads; the client is built on
    first use (in a thread, under a lock) so constructing this never blocks.
    """

    def __init__(
        self,
        bucket: str,
        *,
        credentials: S3Auth | None,
        endpoint_url: str | None,
        config: S3ClientConfig = DEFAULT_S3_CLIENT_CONFIG,
        for_source: bool = False,
    ) -> None:
        self.bucket = bucket
        self._credentials = credentials
        self._endpoint_url = endpoint_url
        self._config = config
        self._for_source = for_source
        self._lock = threading.Lock()
        self._session: boto3.session.Session | None = None
        self._live_credentials: Any = None  # what the session's clients sign with
        self._client: Any = None
        self._presign_client: Any = None
        #: Addressing on a custom endpoint (``None``: path-style); set before first use.
        self.addressing_style: Literal["path", "virtual"] | None = None

    @property
    def endpoint_url(self) -> str | None:
        """The S3-compatible endpoint in use (after the client exists), ``None`` for AWS."""
        if self._endpoint_url is None and self._client is not None:
            return endpoint_of(self._client)
        return self._endpoint_url

    async def run(self, fn: Callable[[Any], _T], *, action: str, key: str | None = None) -> _T:
        """Run ``fn(client)`` in a worker thread, translating AWS errors."""

        def call() -> _T:
            return fn(self._ensure_client())

        try:
            return await asyncio.to_thread(call)
        except Exception as err:
            if is_aws_error(err):
                raise self.error(err, action=action, key=key) from err
            raise

    def error(self, err: BaseException, *, action: str, key: str | None = None) -> BdnError:
        """:func:`map_s3_error` with this bucket's context."""
        return map_s3_error(err, action=action, bucket=self.bucket, key=key,
                            endpoint_url=self.endpoint_url, for_source=self._for_source)

    async def list_objects(self, prefix: str, *, action: str) -> AsyncIterator[dict[str, Any]]:
        """Yield ``list_objects_v2`` entries under ``prefix``, one page per thread hop."""
        pages = await self.run(
            lambda c: iter(c.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix)),
            action=action,
        )
        while True:
            page = await self.run(lambda _c: next(pages, None), action=action)
            if page is None:
                return
            for entry in page.get("Contents", ()):
                yield entry

    async def presigned_get(self, key: str) -> str:
        """A GET URL for ``key``, signed now with the credentials in force (never log it whole).

        Valid for :data:`PRESIGN_EXPIRY_S` or until the signing keys expire,
        whichever comes first; botocore renews temporary keys at least its
        mandatory refresh window (10 minutes) before they expire, so a URL
        from here outlives any single range GET. Signing is local CPU work:
        it runs on the event loop unless the client is yet to be built or the
        keys are due for renewal (an STS call), which go to a worker thread.
        """
        action = f"sign a URL for s3://{self.bucket}/{key}"
        client = self._presign_client
        if client is None or self._renewal_due():
            return await self.run(lambda _c: self._sign(self._ensure_presign_client(), key),
                                  action=action, key=key)
        try:
            return self._sign(client, key)
        except Exception as err:
            if is_aws_error(err):
                raise self.error(err, action=action, key=key) from err
            raise

    def _sign(self, client: Any, key: str) -> str:
        url: str = client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=PRESIGN_EXPIRY_S)
        return url

    def _renewal_due(self) -> bool:
        """True when signing could block on a credential refresh (temporary keys
        within botocore's refresh window)."""
        refresh_needed = getattr(self._live_credentials, "refresh_needed", None)
        return bool(refresh_needed()) if refresh_needed is not None else False

    def reader(self, key: str, size: int, http: Callable[[], HttpClient], *,
               etag: str | None = None) -> PresignedReader:
        """A range reader of ``key`` over aiohttp; each range gets a freshly signed URL
        (and, given the listed ``etag``, an ``If-Match``)."""
        return PresignedReader(self, key, size, http, etag=etag)

    def close(self) -> None:
        """Release the clients' connection pools; idempotent (a later call rebuilds them)."""
        with self._lock:
            clients = {id(c): c for c in (self._client, self._presign_client) if c is not None}
            self._client = self._presign_client = None
        for client in clients.values():
            client.close()

    def _ensure_client(self) -> Any:
        with self._lock:
            if self._client is None:
                # One session for all of this bucket's clients: they share its
                # credentials object, so temporary keys are renewed once.
                if self._session is None:
                    self._session = make_s3_session(self._credentials)
                self._client = make_s3_client(self._credentials, self._endpoint_url, None,
                                              config=self._config, session=self._session,
                                              addressing=self.addressing_style)
                # Resolved (and cached by botocore) while building the client.
                self._live_credentials = self._session.get_credentials()
            return self._client

    def _ensure_presign_client(self) -> Any:
        client = self._ensure_client()
        with self._lock:
            if self._presign_client is None:
                self._presign_client = self._regional_client(client)
            return self._presign_client

    def _regional_client(self, client: Any) -> Any:
        # API calls follow S3's region redirects by themselves, but a presigned
        # URL is signed for one region and fails elsewhere; so on AWS, unless a
        # region was given, ask the bucket where it lives before signing.
        if self.endpoint_url is not None or (self._credentials and self._credentials.region):
            return client
        try:
            meta = client.head_bucket(Bucket=self.bucket)["ResponseMetadata"]
        except bce.ClientError as err:
            meta = err.response.get("ResponseMetadata", {})
        except bce.BotoCoreError:
            return client
        region = meta.get("HTTPHeaders", {}).get("x-amz-bucket-region")
        if not region or region == client.meta.region_name:
            return client
        return make_s3_client(self._credentials, None, region, config=self._config,
                              session=self._session)
