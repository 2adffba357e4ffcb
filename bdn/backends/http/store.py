"""Read-only ``http(s)://`` blob store: any server that answers HEAD, GET and Range.

Lets nodes pull from a store published by a plain web server (nginx over a
``file://`` store's directory) or a CDN in front of a bucket, with no
credentials on the nodes. Keys map to ``<base_url>/<key>``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from bdn.backends.base import RangeReader
from bdn.backends.keys import blob_digest, check_key
from bdn.errors import (
    AuthError,
    BlobNotFound,
    ConfigError,
    NotFound,
    StoreError,
    TransferError,
)
from bdn.http import HttpClient, HttpRangeReader, redact_url


class HttpStore:
    """A read-only :class:`~bdn.backends.base.BlobStore` over HTTP(S).

    Args:
        base_url: ``http(s)://host[:port]/prefix``; a query string (e.g. a CDN
            token) is kept on every request but never shown in ``uri`` or errors.
        http: shared client; one is created (and closed by :meth:`close`) when
            not given.

    Every write raises ``StoreError``; :meth:`list` too, since HTTP has no
    portable directory listing.
    """

    read_only = True

    def __init__(self, base_url: str, *, http: HttpClient | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"not an http(s) store URL: {redact_url(base_url)!r}; "
                              "expected http(s)://host[:port]/prefix")
        self._parts = parts._replace(path=parts.path.rstrip("/"), fragment="")
        self.uri = redact_url(urlunsplit(self._parts))
        self._http = http
        self._owns_http = http is None

    async def exists(self, key: str) -> bool:
        """True when a HEAD of the key's URL succeeds (404/410 mean absent)."""
        return await self._head(key) is not None

    async def size(self, key: str) -> int:
        """``Content-Length`` of the key's URL; ``BlobNotFound`` when absent."""
        headers = await self._head(key)
        if headers is None:
            raise self._missing(key)
        try:
            return int(headers["content-length"])
        except (KeyError, ValueError):
            raise StoreError(f"{self.uri}/{key}: the server sent no usable Content-Length; "
                             "serve the store with a server that does (nginx, a CDN)") from None

    async def get_bytes(self, key: str) -> bytes:
        """GET the whole object (small objects: manifests, refs, index entries)."""
        url = self._url(key)
        try:
            return await self._client().get_bytes(url)
        except NotFound as err:
            raise self._missing(key) from err
        except AuthError:
            raise
        except TransferError as err:
            raise StoreError(f"cannot read {key} from {self.uri}: {err}") from err

    async def list(self, prefix: str) -> AsyncIterator[str]:
        """Always raises ``StoreError``: HTTP offers no listing to rely on."""
        raise StoreError(f"http stores cannot be listed ({self.uri}); list the store it "
                         "publishes (file:// or s3://) instead")
        yield  # pragma: no cover - makes this an async generator like the protocol's.

    def reader(self, key: str, size: int) -> RangeReader:
        """Ranged GETs of the key's URL."""
        return HttpRangeReader(self._client(), self._url(key), size)

    def local_path(self, key: str) -> Path | None:
        return None

    def staging_dir(self) -> Path | None:
        return None

    async def put_bytes(self, key: str, data: bytes) -> None:
        raise self._read_only("write", key)

    async def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        raise self._read_only("write", key)

    async def delete(self, key: str) -> None:
        raise self._read_only("delete", key)

    async def close(self) -> None:
        """Close the HTTP client if this store created it; idempotent."""
        if self._owns_http and self._http is not None:
            http, self._http = self._http, None
            await http.close()

    def _url(self, key: str) -> str:
        check_key(key, store=self.uri)
        path = f"{self._parts.path}/{quote(key, safe='/')}"
        return urlunsplit(self._parts._replace(path=path))

    async def _head(self, key: str) -> dict[str, str] | None:
        try:
            return await self._client().head(self._url(key))
        except AuthError:
            raise
        except TransferError as err:
            raise StoreError(f"cannot stat {key} at {self.uri}: {err}") from err

    def _client(self) -> HttpClient:
        if self._http is None:
            self._http = HttpClient()
        return self._http

    def _missing(self, key: str) -> BlobNotFound:
        return BlobNotFound(f"{key} is not in store {self.uri}", digest=blob_digest(key))

    def _read_only(self, action: str, key: str) -> StoreError:
        return StoreError(f"cannot {action} {key}: store {self.uri} is read-only (http); "
                          "write to the file:// or s3:// store it serves instead")


def open_http_store(uri: str, *, http: HttpClient | None) -> HttpStore:
    """The read-only store ``http(s)://host[:port]/prefix`` names (see
    :func:`bdn.backends.open_store`)."""
    return HttpStore(uri.strip(), http=http)
