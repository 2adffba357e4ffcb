"""A Hugging Face Hub repository at a revision as a weights source: ``hf://owner/repo@main``.

Metadata comes from ``huggingface_hub.HfApi`` (never a hand-written client):
the revision is resolved to a commit SHA once, and everything after that (the
file list, every byte) is read at that commit, so a branch that moves during a
mirror cannot mix two commits. LFS files carry their published SHA-256, so the
mirror decides dedup before any byte moves.

Bytes go through the transfer engine as ranged GETs. For each file a HEAD on
``{endpoint}/{repo}/resolve/{commit}/{path}`` (with the token) finds where the
bytes live: the Hub itself for small files, or a CDN that it redirects LFS files
to. The CDN URL is then read *without* the token: the Hub's token is for the
Hub only. (aiohttp also drops ``Authorization`` on a cross-origin redirect, but
resolving the redirect ourselves makes that independent of the HTTP library,
and saves a round trip per range.)

Errors from the Hub, whether raised by ``huggingface_hub`` or seen on a resolve
HEAD, are mapped by one table (:data:`_HUB_ERRORS`) to one-line
:mod:`bdn.errors` values that name the fix. The token never appears in a
message, and exceptions that hold it (``huggingface_hub``'s carry the request
headers) are not chained.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import httpx2
from huggingface_hub import HfApi, RepoFile
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

from bdn import __version__
from bdn.backends.base import SourceObject
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.errors import (
    AuthError,
    BdnError,
    ConfigError,
    HTTPStatusError,
    ManifestInvalid,
    RetryableHTTPError,
    SecretError,
    SourceError,
    SourceNotFound,
    TransferError,
)
from bdn.http import (
    RETRY_METADATA,
    HttpClient,
    HttpRangeReader,
    RetryPolicy,
    parse_retry_after,
    redact_url,
    retrying,
    translate_client_error,
)
from bdn.manifest import validate_path

__all__ = [
    "DEFAULT_HF_ENDPOINT",
    "DEFAULT_HF_SECRET_NAME",
    "HfFileReader",
    "HfSource",
    "hf_source_from_entry",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
"""The public Hub; ``HF_ENDPOINT`` (resolved by the caller) overrides it."""

DEFAULT_HF_SECRET_NAME = "hf_access_token"
"""The secret name Baseten's docs use for a Hugging Face token; named in hints."""

METADATA_TIMEOUT = 60.0
"""Seconds one Hub metadata call may take (``huggingface_hub``'s client has no timeout)."""

MAX_HUB_REDIRECTS = 5
"""Same-origin redirects followed on a resolve HEAD (a renamed repo answers one)."""

_SHA256_HEX = frozenset("0123456789abcdef")
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
"""The Hub's ``X-Error-Message`` for a token it does not know, on any route."""


@dataclass(frozen=True, slots=True)
class _Listed:
    """One file of the pinned commit, as the Hub describes it."""

    path: str
    size: int
    oid: str  # git blob id (of the pointer file, for LFS)
    sha256: str | None  # LFS files only


class HfSource:
    """Every file of a Hub model repo at one commit.

    Args:
        repo_id: ``owner/name``.
        revision: branch, tag or commit SHA; :meth:`resolve` pins it to a commit.
        token: the Hub token (plain text) or ``None`` for public access; no
            token is ever looked up from ``~/.cache/huggingface`` or the environment.
        endpoint: the Hub's base URL, e.g. ``https://huggingface.co``.
        http: shared client for the data reads (not owned, not closed here).
        secret_name: the secret the token came from, named in error hints.
        retry: policy for metadata calls (listing, resolve HEADs).

    Coroutine-safe; :meth:`close` is idempotent; nothing raised or logged
    contains the token.
    """

    kind = "hf"

    def __init__(
        self,
        repo_id: str,
        revision: str,
        *,
        token: str | None,
        endpoint: str,
        http: HttpClient,
        secret_name: str | None = None,
        retry: RetryPolicy = RETRY_METADATA,
    ) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.uri = f"hf://{repo_id}@{revision}"
        self.endpoint = endpoint.rstrip("/")
        self._token = token or None
        self._secret_name = secret_name or DEFAULT_HF_SECRET_NAME
        self._http = http
        self._retry = retry
        self._api = HfApi(
            endpoint=self.endpoint,
            # False, not None: never fall back to a token cached on this machine.
            token=self._token or False,
            library_name="bdn",
            library_version=__version__,
        )
        self._commit: str | None = None
        self._listed: builtins.list[_Listed] | None = None
        self._resolve_lock = asyncio.Lock()

    def __repr__(self) -> str:
        token = "set" if self._token else None
        return f"HfSource({self.uri!r}, endpoint={self.endpoint!r}, token={token})"

    @property
    def commit(self) -> str | None:
        """The commit SHA :meth:`resolve` pinned, or ``None`` before it ran."""
        return self._commit

    async def resolve(self) -> str | None:
        """Pin the revision: return the commit SHA it points at now (called once; cached).

        One ``model_info(files_metadata=True)`` call answers both the commit and,
        for ordinary repos, the file list of that very commit.

        Raises:
            SourceNotFound: the repo or the revision does not exist (or is private).
            AuthError: the token is rejected, or the repo is gated and not granted.
            TransferError: the Hub could not be reached after retries.
        """
        async with self._resolve_lock:
            if self._commit is None:
                info = await self._hub(
                    lambda: self._api.model_info(
                        self.repo_id,
                        revision=self.revision,
                        files_metadata=True,
                        timeout=METADATA_TIMEOUT,
                    ),
                    what=f"read {self.uri}",
                )
                commit = getattr(info, "sha", None)
                if not isinstance(commit, str) or not commit:
                    raise SourceError(
                        f"{self.endpoint} answered no commit SHA for {self.uri}; "
                        "check that HF_ENDPOINT points at a Hugging Face Hub"
                    )
                self._commit = commit
                self._listed = _from_siblings(getattr(info, "siblings", None))
                log.debug("%s is commit %s on %s", self.uri, commit, redact_url(self.endpoint))
        return self._commit

    async def list(self) -> builtins.list[SourceObject]:
        """Every file of the pinned commit (resolving first if needed), sorted by path.

        LFS files carry ``sha256`` (and ``etag`` = that sha256); other files
        carry the git blob id as ``etag`` and in ``identity``. Falls back to the
        recursive tree listing at the commit when the revision info lacks
        per-file metadata.

        Raises:
            SourceNotFound / AuthError / TransferError: as :meth:`resolve`.
            SourceError: a path is not a valid manifest path, or the Hub's
                metadata is inconsistent.
        """
        commit = await self.resolve()
        assert commit is not None
        listed = self._listed
        if listed is None:
            files = await self._hub(
                lambda: [
                    f
                    for f in self._api.list_repo_tree(self.repo_id, recursive=True, revision=commit)
                    if isinstance(f, RepoFile)
                ],
                what=f"list {self.uri}",
            )
            listed = [_entry(f.path, f.size, f.blob_id, f.lfs) for f in files]
        return sorted((self._object(e) for e in listed), key=lambda o: o.path)

    def reader(self, obj: SourceObject) -> HfFileReader:
        """A reader of ``obj`` at the pinned commit; :meth:`resolve` must have run."""
        if self._commit is None:
            raise RuntimeError("HfSource.reader() before resolve(): the commit is not pinned")
        url = f"{self.endpoint}/{self.repo_id}/resolve/{self._commit}/{quote(obj.path)}"
        return HfFileReader(self, url, obj.path, obj.size)

    async def close(self) -> None:
        """Nothing to release (the HTTP client is the caller's); idempotent."""

    # ------------------------------------------------------------------ internals

    def _object(self, e: _Listed) -> SourceObject:
        try:
            validate_path(e.path)
        except ManifestInvalid as err:
            raise SourceError(
                f"cannot mirror {e.path!r} from {self.uri}: {err}; narrow the source with "
                "ignore_patterns"
            ) from None
        where = redact_url(self.endpoint)
        return SourceObject(
            path=e.path,
            size=e.size,
            # The git blob id is derived from the content (of the LFS pointer,
            # which names the sha256), so it changes whenever the file does.
            identity=f"hf:{where}:{self.repo_id}:{e.oid}",
            etag=e.sha256 or e.oid,
            sha256=e.sha256,
        )

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def _hub(self, call: Callable[[], T], *, what: str) -> T:
        """Run a blocking ``huggingface_hub`` call in a thread, errors mapped and retried."""

        async def once() -> T:
            try:
                return await asyncio.to_thread(call)
            except BdnError:
                raise
            except Exception as err:
                mapped = self._translate(err, what)
            # Raised outside the handler so the foreign error (whose request
            # carries the Authorization header) is neither chained nor context.
            raise mapped

        return await retrying(self._retry, once, describe=f"{what} on {redact_url(self.endpoint)}")

    def _translate(self, err: Exception, what: str) -> BdnError:
        """Our error for what ``huggingface_hub`` (or its HTTP library) raised."""
        if isinstance(err, HfHubHTTPError):
            response = getattr(err, "response", None)
            headers: Mapping[str, str] = getattr(response, "headers", None) or {}
            status = int(getattr(response, "status_code", 0) or 0)
            return self.hub_error(
                status,
                headers.get("X-Error-Code"),
                headers.get("X-Error-Message"),
                request_id=getattr(err, "request_id", None),
                retry_after=parse_retry_after(headers.get("Retry-After")),
            )
        if isinstance(err, OfflineModeIsEnabled):
            return SourceError(
                f"cannot {what}: HF_HUB_OFFLINE is set in this process's environment, which "
                "makes huggingface_hub refuse all network calls; unset it to mirror"
            )
        if isinstance(err, HFValidationError):
            return ConfigError(
                f"{self.uri}: {_scrub(str(err), self._token)}; use hf://owner/repo@revision",
                field="source",
            )
        if isinstance(err, httpx2.RequestError):
            detail = _scrub(str(err), self._token) or type(err).__name__
            return TransferError(
                f"{redact_url(self.endpoint)}: {what}: connection failed ({detail})",
                url=redact_url(self.endpoint),
            )
        return SourceError(
            f"cannot {what}: {type(err).__name__}: {_scrub(str(err), self._token)}"
        )

    def hub_error(
        self,
        status: int,
        code: str | None,
        message: str | None,
        *,
        path: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> BdnError:
        """The :mod:`bdn.errors` value for a Hub error answer.

        ``code`` is the ``X-Error-Code`` header (``GatedRepo``, ``RepoNotFound``,
        ``RevisionNotFound``, ``EntryNotFound``), ``message`` ``X-Error-Message``.
        Unknown codes fall back on the status: 401 means a rejected token (or,
        with no token, a private repo), 403 a token without access, 429/5xx are
        retryable.
        """
        suffix = f" (request id {request_id})" if request_id else ""
        message = _scrub(message, self._token) if message else None
        if status == 401 and self._token is not None and message == _INVALID_CREDENTIALS:
            return _bad_token(self, status, path, suffix)
        if code is not None and code in _HUB_ERRORS:
            return _HUB_ERRORS[code](self, status, path, suffix)
        if status == 401 and self._token is None:
            return _repo_not_found(self, status, path, suffix)
        if status == 401:
            return _bad_token(self, status, path, suffix)
        if status == 403:
            return AuthError(
                f"{self.endpoint} denied the token in secret {self._secret_name!r} access to "
                f"{self.repo_id} (HTTP 403{': ' + message if message else ''}); give the token "
                f"read access to this repo (a fine-grained token needs it listed){suffix}",
                url=redact_url(self.endpoint),
                status=status,
            )
        if status == 404:
            return _repo_not_found(self, status, path, suffix)
        if status == 429 or 500 <= status < 600:
            return RetryableHTTPError(
                f"{redact_url(self.endpoint)}: HTTP {status} for {self.repo_id}; the Hub is "
                f"throttling or failing{suffix}",
                url=redact_url(self.endpoint),
                status=status,
                retry_after=retry_after,
                request_id=request_id,
            )
        return HTTPStatusError(
            f"{redact_url(self.endpoint)}: HTTP {status} for {self.repo_id}"
            f"{': ' + message if message else ''}; unexpected answer from the Hub{suffix}",
            url=redact_url(self.endpoint),
            status=status,
            request_id=request_id,
        )


# --------------------------------------------------------------------------- errors


def _scrub(text: str, token: str | None) -> str:
    """``text`` without the token, in case a foreign message ever quotes it."""
    return text.replace(token, "<token>") if token else text


def _gated(src: HfSource, status: int, path: str | None, suffix: str) -> BdnError:
    if src._token is None:
        who = "no token is configured"
        then = (f"set the {DEFAULT_HF_SECRET_NAME} secret to that account's token (auth: "
                f"{{auth_method: CUSTOM_SECRET, auth_secret_name: {DEFAULT_HF_SECRET_NAME}}})")
    else:
        who = f"the token in secret {src._secret_name!r} has not been granted access"
        then = f"set the {src._secret_name} secret to the token of an account that was granted it"
    return AuthError(
        f"{src.repo_id} is a gated repo and {who}: request access on the Hub page of "
        f"{src.repo_id} ({src.endpoint}/{src.repo_id}) and {then}{suffix}",
        url=redact_url(src.endpoint),
        status=status,
    )


def _repo_not_found(src: HfSource, status: int, path: str | None, suffix: str) -> BdnError:
    if src._token is None:
        hint = (
            "check the name; a private repo needs a token: set auth: {auth_method: "
            f"CUSTOM_SECRET, auth_secret_name: {DEFAULT_HF_SECRET_NAME}}}"
        )
    else:
        hint = (
            f"check the name, and that the token in secret {src._secret_name!r} can read "
            "this repo if it is private"
        )
    return SourceNotFound(f"Hugging Face repo {src.repo_id} not found on {src.endpoint}; {hint}"
                          f"{suffix}")


def _revision_not_found(src: HfSource, status: int, path: str | None, suffix: str) -> BdnError:
    return SourceNotFound(
        f"revision {src.revision!r} not found in Hugging Face repo {src.repo_id}; use an "
        f"existing branch, tag or commit SHA (hf://{src.repo_id}@main){suffix}"
    )


def _entry_not_found(src: HfSource, status: int, path: str | None, suffix: str) -> BdnError:
    where = f"{src.repo_id}@{src._commit or src.revision}"
    return SourceNotFound(
        f"{path or 'a listed file'} not found in {where} on {src.endpoint}, though the Hub "
        f"listed it; mirror again{suffix}"
    )


def _bad_token(src: HfSource, status: int, path: str | None, suffix: str) -> BdnError:
    return AuthError(
        f"{src.endpoint} rejected the token (HTTP {status}): the {src._secret_name} secret is "
        "wrong or expired; put a valid token from https://huggingface.co/settings/tokens "
        f"in it{suffix}",
        url=redact_url(src.endpoint),
        status=status,
    )


_HUB_ERRORS: Mapping[str, Callable[[HfSource, int, str | None, str], BdnError]] = {
    "GatedRepo": _gated,
    "RepoNotFound": _repo_not_found,
    "RevisionNotFound": _revision_not_found,
    "EntryNotFound": _entry_not_found,
}
"""``X-Error-Code`` -> the error it becomes (policy as data, STYLE.md §10)."""


# --------------------------------------------------------------------------- listing


def _entry(path: str, size: int | None, oid: str | None, lfs: Any) -> _Listed:
    """Normalize one file of ``model_info`` siblings or of the tree listing."""
    if size is None or oid is None:
        raise SourceError(f"the Hub listed {path!r} without size or blob id; mirror again")
    sha256 = None
    if lfs is not None:
        sha256 = str(lfs["sha256"] if isinstance(lfs, Mapping) else lfs.sha256).lower()
        if len(sha256) != 64 or not set(sha256) <= _SHA256_HEX:
            raise SourceError(f"the Hub listed {path!r} with a malformed LFS sha256 {sha256!r}")
    return _Listed(path=path, size=int(size), oid=oid, sha256=sha256)


def _from_siblings(siblings: Any) -> list[_Listed] | None:
    """The file list from ``model_info(files_metadata=True)``, or ``None`` if incomplete."""
    if siblings is None:
        return None
    out: list[_Listed] = []
    for s in siblings:
        if s.size is None or s.blob_id is None:
            return None  # No per-file metadata: the caller lists the tree instead.
        out.append(_entry(s.rfilename, s.size, s.blob_id, s.lfs))
    return out


# --------------------------------------------------------------------------- reader


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


class HfFileReader:
    """A :class:`~bdn.backends.base.RangeReader` of one file at the pinned commit.

    On first use it HEADs the resolve URL with the token and follows redirects
    that stay on the Hub's origin; a redirect elsewhere (the LFS CDN) ends the
    walk, and that URL is read with **no** ``Authorization`` header. Ranges are
    then plain :class:`~bdn.http.HttpRangeReader` GETs on the final URL. If the
    CDN later refuses (a signed URL expired), the file is located once more and
    the range retried. Coroutine-safe: concurrent ranges share one HEAD.
    """

    def __init__(self, source: HfSource, url: str, path: str, size: int) -> None:
        self._source = source
        self.url = url
        self.path = path
        self.size = size
        self._inner: HttpRangeReader | None = None
        self._lock = asyncio.Lock()
        self._supports_ranges: bool | None = None

    @property
    def supports_ranges(self) -> bool | None:
        """Whether the final host honours ``Range`` (``None`` until known)."""
        return self._inner.supports_ranges if self._inner is not None else self._supports_ranges

    @supports_ranges.setter
    def supports_ranges(self, value: bool | None) -> None:
        self._supports_ranges = value
        if self._inner is not None:
            self._inner.supports_ranges = value

    def describe(self) -> str:
        """The resolve URL without credentials or query string."""
        return redact_url(self.url)

    async def close(self) -> None:
        """Nothing to release; idempotent."""

    async def open_range(self, start: int, end: int) -> AsyncIterator[bytes | memoryview]:
        """Yield bytes ``[start, end)``; errors as :class:`~bdn.http.HttpRangeReader`."""
        stale: HttpRangeReader | None = None
        yielded = False
        for attempt in (1, 2):
            inner = await self._located(stale)
            stream = inner.open_range(start, end)
            try:
                async for piece in stream:
                    yielded = True
                    yield piece
                return
            except AuthError:
                on_hub = _origin(inner.url) == _origin(self._source.endpoint)
                if yielded or on_hub or attempt == 2:
                    raise
                # A signed CDN URL may have expired mid-mirror: locate afresh, once.
                stale = inner
            finally:
                # Close the inner stream now (not at garbage collection), so an
                # abandoned range releases its connection at once.
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()

    async def _located(self, stale: HttpRangeReader | None) -> HttpRangeReader:
        async with self._lock:
            if self._inner is None or self._inner is stale:
                known = self.supports_ranges
                self._inner = await retrying(
                    self._source._retry, self._locate, describe=f"HEAD {self.describe()}"
                )
                self._inner.supports_ranges = known
            return self._inner

    async def _locate(self) -> HttpRangeReader:
        """HEAD the resolve URL; the reader for wherever the bytes are."""
        src = self._source
        url = self.url
        hub = _origin(src.endpoint)
        session = await src._http.session()
        for _ in range(MAX_HUB_REDIRECTS + 1):
            try:
                async with session.head(
                    url, headers=src._auth_headers(), allow_redirects=False
                ) as resp:
                    status, headers = resp.status, resp.headers
            except (TimeoutError, aiohttp.ClientError, OSError) as err:
                raise translate_client_error(err, url, "HEAD") from None
            location = headers.get("Location")
            if 300 <= status < 400 and location:
                target = urljoin(url, location)
                if _origin(target) == hub:
                    url = target  # Still the Hub (a renamed repo): keep the token.
                    continue
                self._check_size(headers)
                log.debug("%s: bytes on %s", self.describe(), redact_url(target))
                return HttpRangeReader(src._http, target, self.size)  # No token off the Hub.
            if status >= 400:
                raise src.hub_error(
                    status,
                    headers.get("X-Error-Code"),
                    headers.get("X-Error-Message"),
                    path=self.path,
                    request_id=headers.get("X-Request-Id"),
                    retry_after=parse_retry_after(headers.get("Retry-After")),
                )
            self._check_size(headers)
            return HttpRangeReader(src._http, url, self.size, headers=src._auth_headers())
        raise SourceError(
            f"{redact_url(self.url)}: more than {MAX_HUB_REDIRECTS} redirects on the Hub; "
            "check HF_ENDPOINT"
        )

    def _check_size(self, headers: Mapping[str, str]) -> None:
        """Refuse a file whose size differs from the listing (a redirect's own
        ``Content-Length`` is its body's, so only ``X-Linked-Size`` counts there)."""
        text = headers.get("X-Linked-Size")
        if text is None and "Location" not in headers:
            text = headers.get("Content-Length")
        try:
            size = int(text) if text is not None else None
        except ValueError:
            size = None
        if size is not None and size != self.size:
            raise SourceError(
                f"{self.describe()}: the Hub says {size} bytes, its listing said {self.size}; "
                "the repo changed under the pinned commit? mirror again"
            )


# --------------------------------------------------------------------------- factory


def hf_source_from_entry(
    entry: WeightsEntry,
    *,
    secrets: SecretResolver,
    endpoint: str,
    http: HttpClient,
) -> HfSource:
    """Build the :class:`HfSource` of an ``hf://owner/repo@revision`` weights entry.

    ``auth: {auth_method: CUSTOM_SECRET, auth_secret_name: NAME}`` reads the token
    (plain text, surrounding whitespace stripped) from secret ``NAME``; no
    ``auth`` means public access.

    Args:
        entry: the weights entry; its source must be ``hf://``.
        secrets: resolves the secret name.
        endpoint: the Hub's base URL (the caller resolves ``HF_ENDPOINT``;
            :data:`DEFAULT_HF_ENDPOINT` otherwise).
        http: shared HTTP client for the data reads.

    Raises:
        ConfigError: the source is not ``hf://``, or the auth method is not
            ``CUSTOM_SECRET`` or names no secret.
        SecretError: the secret is missing, unreadable or empty.
    """
    parsed = entry.parsed_source
    if parsed.kind != "hf" or parsed.repo_id is None or parsed.revision is None:
        raise ConfigError(f"{entry.source!r} is not an hf://owner/repo source", field="source")
    token: str | None = None
    secret_name: str | None = None
    auth = entry.auth
    if auth is not None:
        if auth.auth_method != "CUSTOM_SECRET":
            raise ConfigError(
                f"{auth.auth_method} cannot authenticate to the Hugging Face Hub; use "
                f"auth_method: CUSTOM_SECRET with auth_secret_name: {DEFAULT_HF_SECRET_NAME}",
                field="auth.auth_method",
            )
        if not auth.auth_secret_name:
            raise ConfigError(
                "secret_id is required: name the secret that holds the Hugging Face token, "
                f"e.g. auth_secret_name: {DEFAULT_HF_SECRET_NAME}",
                field="auth.auth_secret_name",
            )
        secret_name = auth.auth_secret_name
        token = secrets.get(secret_name).strip()
        if not token:
            raise SecretError(
                f"secret {secret_name!r} is empty or only whitespace; write the Hugging Face "
                "token (hf_...) into it",
                secret_name=secret_name,
            )
    return HfSource(
        parsed.repo_id,
        parsed.revision,
        token=token,
        endpoint=endpoint or DEFAULT_HF_ENDPOINT,
        http=http,
        secret_name=secret_name,
    )
