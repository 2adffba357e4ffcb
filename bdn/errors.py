"""The whole BDN exception tree.

Every error a user can see derives from :class:`BdnError`, carries the data
that explains it as attributes, and says in its message what to do next. Each
subclass also inherits the builtin a generic caller would expect, so
``except FileNotFoundError`` still catches a missing blob::

    BdnError
    ├── ConfigError(ValueError)            bad weights entry, flag or env value
    ├── SecretError(PermissionError)       secret missing, unreadable or malformed
    ├── AuthError(PermissionError)         the remote refused our credentials (401/403)
    ├── ManifestInvalid(ValueError)        manifest bytes fail the schema or path rules
    ├── NotFound(FileNotFoundError)
    │   ├── BlobNotFound                   a blob is not in the store / cache
    │   ├── ManifestNotFound               no manifest with that id in the store
    │   ├── RefNotFound                    no manifest mirrored for that config yet
    │   └── SourceNotFound                 the source (bucket, prefix, dir) does not exist
    ├── SourceError(OSError)               a source could not be listed or read
    ├── StoreError(OSError)                a store operation failed for a non-404 reason
    ├── CacheError(OSError)                the node cache could not do what was asked
    │   └── InsufficientSpace              blobs do not fit the disk or byte budget
    ├── MountConflict(FileExistsError)     a mount location holds a directory we did not make
    └── TransferError(OSError)             a byte transfer failed after all retries
        ├── HTTPStatusError                an HTTP answer we cannot use (carries status)
        │   └── RetryableHTTPError         429/5xx: retried by policy before it surfaces
        ├── StallError                     no bytes arrived for ``stall_timeout`` seconds
        ├── RangeError                     Content-Range/length disagree with the request
        └── IntegrityError                 bytes failed their xxh3-128 or sha256 check

Foreign exceptions (aiohttp, botocore, OSError) are translated at the module
that talks to them and chained with ``raise ... from err``.
"""

from __future__ import annotations

import errno


class BdnError(Exception):
    """Base of every BDN error; ``str(err)`` is a one-line message fit for a user."""


class ConfigError(BdnError, ValueError):
    """A configuration value is wrong; ``field`` names it (e.g. ``weights[0].mount_location``)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class SecretError(BdnError, PermissionError):
    """A named secret is missing or malformed. The secret's value is never included."""

    def __init__(self, message: str, *, secret_name: str | None = None) -> None:
        super().__init__(message)
        self.secret_name = secret_name


class AuthError(BdnError, PermissionError):
    """The remote side rejected our credentials or denied access."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class ManifestInvalid(BdnError, ValueError):
    """Manifest data breaks the schema, the path rules or the size/chunk arithmetic."""


class NotFound(BdnError, FileNotFoundError):
    """Something named does not exist where it was looked for."""


class BlobNotFound(NotFound):
    """A blob (``sha256:<hex>``) is absent from a store or cache."""

    def __init__(self, message: str, *, digest: str | None = None) -> None:
        super().__init__(message)
        self.digest = digest


class ManifestNotFound(NotFound):
    """No manifest with this id is in the store."""

    def __init__(self, message: str, *, manifest_id: str | None = None) -> None:
        super().__init__(message)
        self.manifest_id = manifest_id


class RefNotFound(NotFound):
    """No manifest has been mirrored for this weights config yet."""


class SourceNotFound(NotFound):
    """The source bucket, prefix or directory does not exist."""


class SourceError(BdnError, OSError):
    """Listing or reading a source failed for a reason other than 'not found'."""


class StoreError(BdnError, OSError):
    """A store operation failed for a reason other than 'not found'."""


class TransferError(BdnError, OSError):
    """A byte transfer failed after its retries; ``url`` never carries query secrets."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class HTTPStatusError(TransferError):
    """The server answered with a status we cannot use."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        status: int,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, url=url)
        self.status = status
        self.retry_after = retry_after
        self.request_id = request_id


class RetryableHTTPError(HTTPStatusError):
    """429 or 5xx: worth retrying after ``retry_after`` (or the policy's backoff)."""


class StallError(TransferError):
    """No bytes arrived within the stall timeout."""


class RangeError(TransferError):
    """The server's Content-Range or body length does not match the range we asked for."""


class IntegrityError(TransferError):
    """Bytes failed their digest check; ``expected`` and ``actual`` are digests."""

    def __init__(
        self,
        message: str,
        *,
        url: str | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message, url=url)
        self.expected = expected
        self.actual = actual


class CacheError(BdnError, OSError):
    """The node cache failed for a reason other than a missing blob; ``path`` names where."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class InsufficientSpace(CacheError):
    """A pull's blobs do not fit, even after evicting every evictable blob.

    All three fields are byte counts: ``needed`` what the pull must add, ``free``
    what the disk and the byte budget allow now, ``evictable`` what eviction
    could still free (so ``needed > free + evictable``).
    """

    def __init__(
        self, message: str, *, needed: int, free: int, evictable: int, path: str | None = None
    ) -> None:
        super().__init__(message, path=path)
        self.errno = errno.ENOSPC  # Generic OSError handlers branch on this.
        self.needed = needed
        self.free = free
        self.evictable = evictable


class MountConflict(BdnError, FileExistsError):
    """A mount location is a non-empty directory (or a file) that BDN did not materialize."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
