"""The Hugging Face Hub's API for one repo at one revision, with its errors mapped to ours.

Metadata comes from ``huggingface_hub.HfApi`` (never a hand-written client):
:meth:`HubClient.pin` resolves the revision to a commit SHA once, and the tree
listing is read at that commit, so a branch that moves during a mirror cannot
mix two commits. Every blocking call runs in a worker thread under the
metadata retry policy.

Errors from the Hub, whether raised by ``huggingface_hub`` or seen on a resolve
HEAD (:mod:`bdn.backends.hf.reader`), become one-line :mod:`bdn.errors` values
that name the fix: :meth:`HubClient.error` looks the ``X-Error-Code`` header up
in :data:`_BY_CODE`, then the status in :data:`_BY_STATUS`. The token never
appears in a message, and exceptions that hold it (``huggingface_hub``'s carry
the request headers) are not chained.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
from huggingface_hub import HfApi, RepoFile
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

from bdn import __version__
from bdn.errors import (
    AuthError,
    BdnError,
    ConfigError,
    HTTPStatusError,
    RetryableHTTPError,
    SourceError,
    SourceNotFound,
    TransferError,
)
from bdn.http import RETRY_METADATA, RetryPolicy, parse_retry_after, redact_url, retrying

__all__ = [
    "DEFAULT_HF_ENDPOINT",
    "DEFAULT_HF_SECRET_NAME",
    "HubClient",
    "HubFile",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
"""The public Hub; ``HF_ENDPOINT`` (resolved by the caller) overrides it."""

DEFAULT_HF_SECRET_NAME = "hf_access_token"
"""The secret name Baseten's docs use for a Hugging Face token; named in hints."""

METADATA_TIMEOUT = 60.0
"""Seconds one Hub metadata call may take (``huggingface_hub``'s client has no timeout)."""

_SHA256_HEX = frozenset("0123456789abcdef")
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
"""The Hub's ``X-Error-Message`` for a token it does not know, on any route."""


@dataclass(frozen=True, slots=True)
class HubFile:
    """One file of the pinned commit, as the Hub describes it."""

    path: str
    size: int
    oid: str  # The git blob id (of the pointer file, for LFS).
    sha256: str | None  # LFS files only.


@dataclass(frozen=True, slots=True)
class _Answer:
    """One error answer of the Hub, as the error builders below need it."""

    status: int
    message: str | None
    path: str | None
    suffix: str  # " (request id …)" or "".
    request_id: str | None
    retry_after: float | None


class HubClient:
    """The Hub's metadata API for ``repo_id`` at ``revision``, errors mapped and retried.

    Args:
        repo_id: ``owner/name``.
        revision: branch, tag or commit SHA; :meth:`pin` resolves it.
        token: the Hub token (plain text) or ``None`` for public access; no
            token is ever looked up from ``~/.cache/huggingface`` or the environment.
        endpoint: the Hub's base URL, e.g. ``https://huggingface.co``.
        secret_name: the secret the token came from, named in error hints.
        retry: policy for metadata calls (listing, resolve HEADs).

    Its default ``repr`` shows no attribute, so the token cannot leak through it.
    """

    def __init__(
        self,
        repo_id: str,
        revision: str,
        *,
        token: str | None,
        endpoint: str,
        secret_name: str | None = None,
        retry: RetryPolicy = RETRY_METADATA,
    ) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.uri = f"hf://{repo_id}@{revision}"
        self.endpoint = endpoint.rstrip("/")
        self.token = token or None
        self.secret_name = secret_name or DEFAULT_HF_SECRET_NAME
        self.retry = retry
        self.commit: str | None = None
        """The commit :meth:`pin` resolved the revision to; ``None`` before."""
        self._api = HfApi(
            endpoint=self.endpoint,
            # False, not None: never fall back to a token cached on this machine.
            token=self.token or False,
            library_name="bdn",
            library_version=__version__,
        )

    def auth_headers(self) -> dict[str, str]:
        """``Authorization`` for requests to the Hub itself (never to its CDN)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def pin(self) -> list[HubFile] | None:
        """Resolve the revision to a commit SHA (kept in :attr:`commit`).

        One ``model_info(files_metadata=True)`` call answers both the commit and,
        for ordinary repos, the file list of that very commit, returned here;
        ``None`` means the answer lacked per-file metadata (see :meth:`list_tree`).

        Raises:
            SourceNotFound: the repo or the revision does not exist (or is private).
            AuthError: the token is rejected, or the repo is gated and not granted.
            TransferError: the Hub could not be reached after retries.
            SourceError: the endpoint answered no commit SHA.
        """
        info = await self.call(
            lambda: self._api.model_info(
                self.repo_id, revision=self.revision, files_metadata=True,
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
        self.commit = commit
        log.debug("%s is commit %s on %s", self.uri, commit, redact_url(self.endpoint))
        return _from_siblings(getattr(info, "siblings", None))

    async def list_tree(self, commit: str) -> list[HubFile]:
        """Every file of ``commit`` from the recursive (paginated) tree listing.

        Raises:
            SourceNotFound / AuthError / TransferError: as :meth:`pin`.
            SourceError: the Hub's metadata is inconsistent.
        """
        files = await self.call(
            lambda: [
                f
                for f in self._api.list_repo_tree(self.repo_id, recursive=True, revision=commit)
                if isinstance(f, RepoFile)
            ],
            what=f"list {self.uri}",
        )
        return [_hub_file(f.path, f.size, f.blob_id, f.lfs) for f in files]

    async def call(self, call: Callable[[], T], *, what: str) -> T:
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

        return await retrying(self.retry, once, describe=f"{what} on {redact_url(self.endpoint)}")

    def _translate(self, err: Exception, what: str) -> BdnError:
        """Our error for what ``huggingface_hub`` (or its HTTP library) raised."""
        if isinstance(err, HfHubHTTPError):
            response = getattr(err, "response", None)
            headers: Mapping[str, str] = getattr(response, "headers", None) or {}
            return self.error(
                int(getattr(response, "status_code", 0) or 0),
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
                f"{self.uri}: {self.scrub(str(err))}; use hf://owner/repo@revision",
                field="source",
            )
        if isinstance(err, httpx2.RequestError):
            detail = self.scrub(str(err)) or type(err).__name__
            return TransferError(
                f"{redact_url(self.endpoint)}: {what}: connection failed ({detail})",
                url=redact_url(self.endpoint),
            )
        return SourceError(f"cannot {what}: {type(err).__name__}: {self.scrub(str(err))}")

    def error(
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
        message = self.scrub(message) if message else None
        suffix = f" (request id {request_id})" if request_id else ""
        answer = _Answer(status, message, path, suffix, request_id, retry_after)
        build: _Builder
        if status == 401 and self.token is not None and message == _INVALID_CREDENTIALS:
            build = _bad_token  # Whatever the code says, the token itself is unknown.
        elif code is not None and code in _BY_CODE:
            build = _BY_CODE[code]
        elif status in _BY_STATUS:
            build = _BY_STATUS[status]
        elif 500 <= status < 600:
            build = _throttled_or_failing
        else:
            build = _unexpected
        return build(self, answer)

    def scrub(self, text: str) -> str:
        """``text`` without the token, in case a foreign message ever quotes it."""
        return text.replace(self.token, "<token>") if self.token else text


# --------------------------------------------------------------------------- errors

_Builder = Callable[[HubClient, _Answer], BdnError]


def _gated(hub: HubClient, a: _Answer) -> BdnError:
    if hub.token is None:
        who = "no token is configured"
        then = (f"set the {DEFAULT_HF_SECRET_NAME} secret to that account's token (auth: "
                f"{{auth_method: CUSTOM_SECRET, auth_secret_name: {DEFAULT_HF_SECRET_NAME}}})")
    else:
        who = f"the token in secret {hub.secret_name!r} has not been granted access"
        then = f"set the {hub.secret_name} secret to the token of an account that was granted it"
    return AuthError(
        f"{hub.repo_id} is a gated repo and {who}: request access on the Hub page of "
        f"{hub.repo_id} ({hub.endpoint}/{hub.repo_id}) and {then}{a.suffix}",
        url=redact_url(hub.endpoint),
        status=a.status,
    )


def _repo_not_found(hub: HubClient, a: _Answer) -> BdnError:
    if hub.token is None:
        hint = (
            "check the name; a private repo needs a token: set auth: {auth_method: "
            f"CUSTOM_SECRET, auth_secret_name: {DEFAULT_HF_SECRET_NAME}}}"
        )
    else:
        hint = (
            f"check the name, and that the token in secret {hub.secret_name!r} can read "
            "this repo if it is private"
        )
    return SourceNotFound(f"Hugging Face repo {hub.repo_id} not found on {hub.endpoint}; {hint}"
                          f"{a.suffix}")


def _revision_not_found(hub: HubClient, a: _Answer) -> BdnError:
    return SourceNotFound(
        f"revision {hub.revision!r} not found in Hugging Face repo {hub.repo_id}; use an "
        f"existing branch, tag or commit SHA (hf://{hub.repo_id}@main){a.suffix}"
    )


def _entry_not_found(hub: HubClient, a: _Answer) -> BdnError:
    where = f"{hub.repo_id}@{hub.commit or hub.revision}"
    return SourceNotFound(
        f"{a.path or 'a listed file'} not found in {where} on {hub.endpoint}, though the Hub "
        f"listed it; mirror again{a.suffix}"
    )


def _bad_token(hub: HubClient, a: _Answer) -> BdnError:
    return AuthError(
        f"{hub.endpoint} rejected the token (HTTP {a.status}): the {hub.secret_name} secret is "
        "wrong or expired; put a valid token from https://huggingface.co/settings/tokens "
        f"in it{a.suffix}",
        url=redact_url(hub.endpoint),
        status=a.status,
    )


def _unauthorized(hub: HubClient, a: _Answer) -> BdnError:
    # With no token, the Hub answers 401 for a private repo: to the caller, it is not there.
    return (_repo_not_found if hub.token is None else _bad_token)(hub, a)


def _denied(hub: HubClient, a: _Answer) -> BdnError:
    return AuthError(
        f"{hub.endpoint} denied the token in secret {hub.secret_name!r} access to "
        f"{hub.repo_id} (HTTP 403{': ' + a.message if a.message else ''}); give the token "
        f"read access to this repo (a fine-grained token needs it listed){a.suffix}",
        url=redact_url(hub.endpoint),
        status=a.status,
    )


def _throttled_or_failing(hub: HubClient, a: _Answer) -> BdnError:
    return _status_error(RetryableHTTPError, hub, a, "; the Hub is throttling or failing",
                         retry_after=a.retry_after)


def _unexpected(hub: HubClient, a: _Answer) -> BdnError:
    detail = f": {a.message}" if a.message else ""
    return _status_error(HTTPStatusError, hub, a, f"{detail}; unexpected answer from the Hub")


def _status_error(kind: type[HTTPStatusError], hub: HubClient, a: _Answer, what: str, *,
                  retry_after: float | None = None) -> BdnError:
    """A ``kind`` error for an answer no rule above explains: it names the Hub
    (redacted), the status and the repo, then ``what``, and carries the request id."""
    where = redact_url(hub.endpoint)
    return kind(f"{where}: HTTP {a.status} for {hub.repo_id}{what}{a.suffix}", url=where,
                status=a.status, retry_after=retry_after, request_id=a.request_id)


_BY_CODE: Mapping[str, _Builder] = {
    "GatedRepo": _gated,
    "RepoNotFound": _repo_not_found,
    "RevisionNotFound": _revision_not_found,
    "EntryNotFound": _entry_not_found,
}
"""``X-Error-Code`` -> the error it becomes (policy as data: docs/DESIGN.md, "Conventions")."""

_BY_STATUS: Mapping[int, _Builder] = {
    401: _unauthorized,
    403: _denied,
    404: _repo_not_found,
    429: _throttled_or_failing,
}
"""The status -> the error, for answers without a known code (5xx are retryable too)."""


# --------------------------------------------------------------------------- listing


def _hub_file(path: str, size: int | None, oid: str | None, lfs: Any) -> HubFile:
    """Normalize one file of ``model_info`` siblings or of the tree listing."""
    if size is None or oid is None:
        raise SourceError(f"the Hub listed {path!r} without size or blob id; mirror again")
    sha256 = None
    if lfs is not None:
        sha256 = str(lfs["sha256"] if isinstance(lfs, Mapping) else lfs.sha256).lower()
        if len(sha256) != 64 or not set(sha256) <= _SHA256_HEX:
            raise SourceError(f"the Hub listed {path!r} with a malformed LFS sha256 {sha256!r}")
    return HubFile(path=path, size=int(size), oid=oid, sha256=sha256)


def _from_siblings(siblings: Any) -> list[HubFile] | None:
    """The file list from ``model_info(files_metadata=True)``, or ``None`` if incomplete."""
    if siblings is None:
        return None
    out: list[HubFile] = []
    for s in siblings:
        if s.size is None or s.blob_id is None:
            return None  # No per-file metadata: the caller lists the tree instead.
        out.append(_hub_file(s.rfilename, s.size, s.blob_id, s.lfs))
    return out
