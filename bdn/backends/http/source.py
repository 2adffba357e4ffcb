"""Plain ``https://`` URLs as a weights source: one file, or named files of one folder.

Truss defines ``source: https://host/path/file`` (one file). A list of files is
written as the folder URL with a trailing ``/`` and ``allow_patterns`` naming
each file (literal relative paths, since HTTP offers no listing), e.g.::

    source: https://example.com/models/qwen/
    allow_patterns: [config.json, model-00001-of-00002.safetensors, ...]

Each file is HEADed when listed; its ``ETag`` (or ``Last-Modified`` when the
ETag is weak or absent) pins it, and every ranged GET carries the matching
``If-Match`` / ``If-Unmodified-Since``, so a file replaced mid-mirror fails the
mirror (HTTP 412) rather than mixing versions. A file with neither validator is
re-read on every mirror (its identity never repeats), though its bytes still
dedup by SHA-256. A server without ``Range`` is read as one stream. An
``Authorization`` header comes from the entry's secret: the secret's text is the
header value (``Bearer <token>``, ``Basic <b64>``), or a bare token that is
sent as ``Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import unquote

from bdn.backends.base import RangeReader, SourceObject
from bdn.backends.http.pinned import PinnedReader
from bdn.config.secrets import SecretResolver
from bdn.config.weights import WeightsEntry
from bdn.errors import AuthError, ConfigError, ManifestInvalid, SourceError, SourceNotFound
from bdn.http import HttpClient
from bdn.manifest import validate_path

__all__ = ["HttpsSource", "https_source_from_entry"]

_GLOB_CHARS = frozenset("*?[")
_HEADS_IN_FLIGHT = 16


class HttpsSource:
    """Files at plain HTTPS URLs (see the module docstring).

    Args:
        url: the file URL, or a folder URL ending in ``/``.
        files: for a folder URL, the relative paths to read under it.
        http: the shared HTTP client (not closed here).
        authorization: the ``Authorization`` header value, or ``None``.
    """

    kind = "http"

    def __init__(self, url: str, *, files: tuple[str, ...] = (), http: HttpClient,
                 authorization: str | None = None) -> None:
        self.uri = url
        self._folder = url.endswith("/")
        # Names this source's listings of files without a validator (see _head).
        self._unversioned = uuid.uuid4().hex
        self._files = files if self._folder else (url.rsplit("/", 1)[1],)
        self._http = http
        self._headers = {"Authorization": authorization} if authorization else {}
        self._ranges: dict[str, bool | None] = {}
        self._pins: dict[str, tuple[str | None, str | None]] = {}

    def _url(self, path: str) -> str:
        return self.uri + path if self._folder else self.uri

    async def resolve(self) -> str | None:
        """No revision for a URL: each file's ETag / Last-Modified pins it."""
        return None

    async def list(self) -> list[SourceObject]:
        """HEAD every file, sorted by path.

        Raises:
            SourceNotFound: a file does not exist (404/410).
            AuthError: the server refused the credentials (401/403).
            SourceError: no usable Content-Length, or a name that is not a valid path.
        """
        sem = asyncio.Semaphore(_HEADS_IN_FLIGHT)

        async def one(path: str) -> SourceObject:
            async with sem:
                return await self._head(path)

        objects = await asyncio.gather(*(one(p) for p in self._files))
        return sorted(objects, key=lambda o: o.path)

    async def _head(self, name: str) -> SourceObject:
        url = self._url(name)
        try:
            headers = await self._http.head(url, headers=self._headers)
        except AuthError as err:
            raise AuthError(f"cannot read {url}: access denied (HTTP {err.status}); check the "
                            "token in the auth secret", url=url, status=err.status) from None
        if headers is None:
            raise SourceNotFound(f"{url} does not exist (HTTP 404); check the URL")
        try:
            size = int(headers["content-length"])
        except (KeyError, ValueError):
            raise SourceError(f"{url}: the server sent no Content-Length for HEAD; serve the "
                              "file from a server that does (nginx, a CDN, a bucket)") from None
        path = unquote(name)
        try:
            validate_path(path)
        except ManifestInvalid as err:
            raise SourceError(f"cannot mirror {url}: {err}; rename the file") from None
        etag = headers.get("etag") or None
        modified = headers.get("last-modified") or None
        accept = headers.get("accept-ranges", "").strip().lower()
        # "none" settles it; "bytes" in a HEAD is not proof that GETs honour Range
        # (some servers and proxies say so and do not), so the engine probes.
        self._ranges[path] = False if accept == "none" else None
        strong = etag if etag and not etag.startswith("W/") else None
        self._pins[path] = (strong, modified)
        version = strong or (f"modified {modified}" if modified else None)
        # Without a validator a later mirror cannot tell the file is unchanged,
        # so its identity never repeats across mirrors: it is read again (and
        # deduped by hash). Within one source it does, so the mirror's second
        # listing before the manifest still compares sizes.
        identity = (f"https:{url}:{version}:{size}" if version
                    else f"https:{url}:unversioned-{self._unversioned}:{size}")
        return SourceObject(path=path, size=size, identity=identity, etag=etag or modified)

    def reader(self, obj: SourceObject) -> RangeReader:
        """Ranged GETs pinned to the listed version; one stream when ranges are refused."""
        etag, modified = self._pins.get(obj.path, (obj.etag, None))
        url = self._url(_quoted(obj.path, self._files))
        return PinnedReader(lambda: self._http, url, obj.size, where=url, etag=etag,
                            last_modified=modified, supports_ranges=self._ranges.get(obj.path),
                            headers=self._headers)

    async def close(self) -> None:
        """Nothing to release: the HTTP client belongs to the caller."""


def _quoted(path: str, names: tuple[str, ...]) -> str:
    """The name as configured (possibly percent-encoded) for listed ``path``."""
    return next((n for n in names if unquote(n) == path), path)


def https_source_from_entry(entry: WeightsEntry, *, secrets: SecretResolver,
                            http: HttpClient) -> HttpsSource:
    """Build the :class:`HttpsSource` for an ``https://`` entry (nothing is contacted).

    Raises:
        ConfigError: a folder URL without literal ``allow_patterns``, or OIDC auth.
        SecretError: the named secret is missing or empty.
    """
    parsed = entry.parsed_source
    if parsed.kind != "https" or parsed.url is None:
        raise ConfigError(f"{entry.source!r} is not an https:// source", field="source")
    files: tuple[str, ...] = ()
    if parsed.url.endswith("/"):
        files = _folder_files(entry)
    authorization = None
    auth = entry.auth
    if auth is not None:
        if auth.auth_method != "CUSTOM_SECRET" or not auth.auth_secret_name:
            raise ConfigError(
                "an https:// source takes auth_method: CUSTOM_SECRET with auth_secret_name "
                "naming a secret that holds the token (or the whole Authorization value)",
                field="auth")
        token = secrets.get(auth.auth_secret_name).strip()
        authorization = token if " " in token else f"Bearer {token}"
    return HttpsSource(parsed.url, files=files, http=http, authorization=authorization)


def _folder_files(entry: WeightsEntry) -> tuple[str, ...]:
    """The files ``allow_patterns`` names under a folder URL: literal paths only."""
    names = tuple(entry.allow_patterns or ())
    if not names or any(_GLOB_CHARS & set(n) for n in names):
        raise ConfigError(
            f"{entry.source!r} is a folder URL; HTTP has no listing, so name each file in "
            "allow_patterns as a plain relative path (no * ? [), e.g. "
            "[config.json, model.safetensors], or give one file's URL",
            field="allow_patterns")
    return names
