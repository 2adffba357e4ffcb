"""The node agent's wire, written once: what the client sends and the server accepts.

Pure data and parsing (no I/O, no HTTP server), so the library side
(:mod:`bdn.agent.client`, :mod:`bdn.peer`) and the daemon side
(:mod:`bdn.agent.server`, :mod:`bdn.agent.pulls`) build and read the very
same paths, bodies and error names.

Pod API (the unix socket; over TCP behind the peers' bearer token)::

    POST /v1/pulls          PullRequest body  -> 202 {"id", "state"}
    GET  /v1/pulls/{id}     -> 200 PullStatus body
    GET  /healthz           -> 200 {"status": "ok", ...}; 503 {"status": "draining"}
    GET  /metrics           -> Prometheus text

Peer wire (TCP)::

    GET /v1/chunks/<sha256 hex>/<index>?size=<blob size>&chunk_size=<n>&xxh3=<32 hex>
    Authorization: Bearer <token>
    X-BDN-Forwarded: 1

An error answers ``{"error": "<one line>"}``; a failed pull names its error
class in ``error_type`` (see :data:`ERROR_TYPES`).

>>> ref = ChunkRef(Digest("ab" * 32), 1, 10, 4, "0" * 32)
>>> path = chunk_path(ref)
>>> path.split("?")[1]
'size=10&chunk_size=4&xxh3=00000000000000000000000000000000'
>>> parse_chunk_ref("ab" * 32, "1", {"size": "10", "chunk_size": "4", "xxh3": "0" * 32}) == ref
True
>>> parse_pull_request(request_for("sha256:" + "a" * 64, "/models/m/")).mount
'/models/m'
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bdn import errors
from bdn.config.weights import WeightsEntry, parse_entry
from bdn.digest import MAX_CHUNK_SIZE, Digest, chunk_count, is_xxh3_hex
from bdn.errors import BdnError, ConfigError, ManifestInvalid

# -- paths and headers -------------------------------------------------------------------

PULLS_PATH = "/v1/pulls"
PULL_ROUTE = "/v1/pulls/{id}"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
CHUNK_ROUTE = "/v1/chunks/{digest}/{index}"

FORWARDED_HEADER = "X-BDN-Forwarded"
"""Sent on every peer chunk request: the owner answers it itself, never forwards it."""

EARLY_ANSWER_HEADER = "X-BDN-Early-Answer"
"""Sent (``1``) on a chunk request by a requester that takes an early answer: the
owner sends the 200 and its headers at once and the body when the bytes are ready
(after filling the chunk from origin, or waiting for a response slot). A failure
after that aborts the connection instead of answering 404/502. Without it (an
older requester) the owner answers once it holds the chunk, as before."""

CHUNK_SOURCE_HEADER = "X-BDN-Chunk-Source"
"""On an early answer: ``cache`` (the owner holds the chunk) or ``origin`` (it is
filling the chunk from origin; the body waits for that fetch). Older requesters
ignore it."""

ChunkSource = Literal["cache", "origin"]
"""The values of :data:`CHUNK_SOURCE_HEADER`."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_UINT = re.compile(r"[0-9]{1,19}")


def pull_path(pull_id: str) -> str:
    """The progress path of one pull (also the ``Location`` of a 202)."""
    return PULL_ROUTE.format(id=pull_id)


# -- chunk references ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk of one blob, with the digest it must have.

    Attributes:
        digest: the blob's SHA-256.
        index: the chunk's position in the blob.
        blob_size: the blob's size in bytes (bounds the last, shorter chunk).
        chunk_size: the manifest's chunk size.
        xxh3: the chunk's xxh3-128 hex from the (trusted) manifest.
    """

    digest: Digest
    index: int
    blob_size: int
    chunk_size: int
    xxh3: str

    def __post_init__(self) -> None:
        exists = 0 <= self.start < max(self.blob_size, 1)
        if self.chunk_size < 1 or self.blob_size < 0 or not exists:
            raise ValueError(
                f"chunk {self.index} of a {self.blob_size}-byte blob in "
                f"{self.chunk_size}-byte chunks does not exist"
            )
        if not is_xxh3_hex(self.xxh3):
            raise ValueError(f"not an xxh3-128 digest: {self.xxh3!r}")

    @property
    def start(self) -> int:
        return self.index * self.chunk_size

    @property
    def end(self) -> int:
        return min(self.start + self.chunk_size, self.blob_size)

    @property
    def key(self) -> str:
        return f"{self.digest.hex}:{self.chunk_size}:{self.index}"


def chunk_path(ref: ChunkRef) -> str:
    """The request path and query of a chunk, as :func:`parse_chunk_ref` reads it."""
    return (
        CHUNK_ROUTE.format(digest=ref.digest.hex, index=ref.index)
        + f"?size={ref.blob_size}&chunk_size={ref.chunk_size}&xxh3={ref.xxh3}"
    )


def parse_chunk_ref(digest: str, index: str, query: Mapping[str, str]) -> ChunkRef:
    """The :class:`ChunkRef` a chunk request names (path parts and query).

    Only what a manifest could have written is accepted: ``chunk_size`` from 1
    byte to :data:`~bdn.digest.MAX_CHUNK_SIZE` (the owner holds a chunk whole
    in memory) and an ``index`` inside the blob. Whether ``size`` is the blob's
    real size is for the server to find out, at origin.

    Raises:
        ValueError: one line naming the malformed parameter and what to send.
    """
    if not _HEX64.fullmatch(digest):
        raise ValueError("the blob digest must be 64 lowercase hex characters, got "
                         f"{_shown(digest)}")
    i = _whole_number("index", index)
    size = _whole_number("size", query.get("size"))
    chunk_size = _whole_number("chunk_size", query.get("chunk_size"))
    xxh3 = query.get("xxh3")
    if xxh3 is None or not is_xxh3_hex(xxh3):
        raise ValueError("xxh3 must be 32 lowercase hex characters, got "
                         f"{'nothing' if xxh3 is None else _shown(xxh3)}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be from 1 to {MAX_CHUNK_SIZE} bytes, got "
                         f"{chunk_size}; send the manifest's chunk_size")
    count = chunk_count(size, chunk_size)
    if i >= count:
        has = f"{count} (indices 0 to {count - 1})" if count else "none"
        raise ValueError(f"chunk {i} does not exist: a {size}-byte blob in {chunk_size}-byte "
                         f"chunks has {has}; send an index inside the blob")
    return ChunkRef(Digest(digest), i, size, chunk_size, xxh3)


def _whole_number(name: str, text: str | None) -> int:
    """A non-negative integer parameter of a chunk request (at most 19 digits)."""
    if text is None:
        raise ValueError(f"{name} must be a whole number, 0 or more; it is missing")
    if not _UINT.fullmatch(text):
        raise ValueError(f"{name} must be a whole number from 0 to {10**19 - 1}, got "
                         f"{_shown(text)}")
    return int(text)


def _shown(text: str) -> str:
    """A request value quoted for an error message, cut short (it comes from the wire)."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


# -- pull requests ---------------------------------------------------------------------------

_SOURCE_KEYS = ("source", "allow_patterns", "ignore_patterns", "auth")
_ALL_KEYS = frozenset({"manifest_id", "mount_location", "background", "strict", *_SOURCE_KEYS})


@dataclass(frozen=True, slots=True)
class PullRequest:
    """A validated ``POST /v1/pulls`` body.

    Attributes:
        target: the manifest id (``sha256:<hex>``), or the weights entry whose
            mirrored manifest is looked up by config hash.
        mount: the absolute, normalized mount location.
        background: a fill nobody waits on (warming a node); it runs under the
            agent's background fill rate so it does not starve inference I/O.
        strict: prove every blob the pull uses by its SHA-256, cache hits and
            fetches alike (``bdn pull --strict``), not only the chunk digests.
    """

    target: str | WeightsEntry
    mount: str
    background: bool = False
    strict: bool = False

    @property
    def key(self) -> tuple[str, str]:
        """What makes two requests the same pull: the content asked for, and where."""
        what = self.target if isinstance(self.target, str) else self.target.config_hash()
        return what, self.mount


def request_for(
    target: str | WeightsEntry, mount: str | Path, *, background: bool = False,
    strict: bool = False,
) -> dict[str, Any]:
    """The ``POST /v1/pulls`` body for a manifest id or a weights entry, into ``mount``.

    >>> request_for("sha256:" + "a" * 64, "/models/m")["mount_location"]
    '/models/m'
    """
    body: dict[str, Any] = (
        {"manifest_id": target} if isinstance(target, str) else target.to_dict()
    )
    body["mount_location"] = str(mount)
    if background:
        body["background"] = True
    if strict:
        body["strict"] = True
    return body


def parse_pull_request(body: object) -> PullRequest:
    """Validate a request body (already decoded from JSON).

    Raises:
        ConfigError: a one-line message naming the field and the fix.
    """
    if not isinstance(body, Mapping):
        raise ConfigError(
            'the body must be a JSON object such as {"manifest_id": "sha256:...", '
            '"mount_location": "/models/m"}',
            field="request",
        )
    unknown = sorted(set(body) - _ALL_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(map(repr, unknown))}; accepted: "
            f"{', '.join(sorted(_ALL_KEYS))}",
            field="request",
        )
    mount = _mount(body.get("mount_location"))
    background, strict = body.get("background", False), body.get("strict", False)
    for name, flag in (("background", background), ("strict", strict)):
        if not isinstance(flag, bool):
            raise ConfigError("must be true or false", field=name)
    if body.get("manifest_id") is not None:
        return PullRequest(_manifest_id(body), mount, background, strict)
    if body.get("source") is None:
        raise ConfigError(
            "give manifest_id (as printed by `bdn mirror`) or source (a weights entry)",
            field="request",
        )
    data = {k: body[k] for k in _SOURCE_KEYS if body.get(k) is not None}
    data["mount_location"] = mount
    return PullRequest(parse_entry(data, where="request"), mount, background, strict)


def _manifest_id(body: Mapping[str, Any]) -> str:
    """The request's ``manifest_id``, normalized; it excludes the source keys."""
    if any(body.get(k) is not None for k in _SOURCE_KEYS):
        raise ConfigError(
            "give either manifest_id or source (with its patterns and auth), not both",
            field="request",
        )
    manifest_id = body["manifest_id"]
    if not isinstance(manifest_id, str):
        raise ConfigError('must be a string "sha256:<64 hex>"', field="manifest_id")
    try:
        return str(Digest.parse(manifest_id.strip()))
    except ManifestInvalid as err:
        raise ConfigError(str(err), field="manifest_id") from None


def _mount(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(
            "is required: the absolute directory the tree appears in, e.g. /models/m",
            field="mount_location",
        )
    if not value.startswith("/") or ".." in value.split("/"):
        raise ConfigError(
            f"{value!r} must be an absolute path without '..', e.g. /models/m",
            field="mount_location",
        )
    mount = "/" + posixpath.normpath(value).lstrip("/")
    if mount == "/":
        raise ConfigError("must not be the filesystem root", field="mount_location")
    return mount


# -- pull progress ---------------------------------------------------------------------------

State = Literal["running", "succeeded", "failed"]


@dataclass(frozen=True, slots=True)
class PullStatus:
    """The ``GET /v1/pulls/{id}`` body: one pull's progress, then its outcome.

    ``bytes_total`` is what the pull has to fetch (0 until the node cache was
    consulted) and ``bytes_done`` how much of it has arrived. The per-tier
    counts, ``bytes_proven`` (hashed with SHA-256), ``files``, ``tree_bytes`` and
    ``materialized`` are set once the pull succeeded; ``error`` and ``error_type`` once it failed.
    """

    id: str
    state: State
    manifest_id: str | None
    mount_location: str
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_from_node_cache: int = 0
    bytes_from_peers: int = 0
    bytes_from_origin: int = 0
    bytes_proven: int = 0
    files: int | None = None
    tree_bytes: int | None = None
    materialized: str | None = None
    seconds: float = 0.0
    error: str | None = None
    error_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in field order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> PullStatus:
        """Read a body leniently (missing or null numbers are 0); only
        ``mount_location`` is required (``KeyError`` without it)."""

        def count(name: str) -> int:
            return int(body.get(name) or 0)

        return cls(
            id=str(body.get("id") or ""),
            state=body.get("state") or "running",
            manifest_id=str(body.get("manifest_id") or ""),
            mount_location=str(body["mount_location"]),
            bytes_total=count("bytes_total"),
            bytes_done=count("bytes_done"),
            bytes_from_node_cache=count("bytes_from_node_cache"),
            bytes_from_peers=count("bytes_from_peers"),
            bytes_from_origin=count("bytes_from_origin"),
            bytes_proven=count("bytes_proven"),
            files=count("files"),
            tree_bytes=count("tree_bytes"),
            materialized=str(body.get("materialized") or ""),
            seconds=float(body.get("seconds") or 0.0),
            error=body.get("error"),
            error_type=body.get("error_type"),
        )


# -- errors ----------------------------------------------------------------------------------

_ERROR_CLASSES: tuple[type[BdnError], ...] = (
    errors.ConfigError,
    errors.SecretError,
    errors.AuthError,
    errors.ManifestInvalid,
    errors.NotFound,
    errors.BlobNotFound,
    errors.ManifestNotFound,
    errors.RefNotFound,
    errors.SourceNotFound,
    errors.SourceError,
    errors.StoreError,
    errors.CacheError,
    errors.MountConflict,
    errors.TransferError,
    errors.StallError,
    errors.RangeError,
    errors.IntegrityError,
)

ERROR_TYPES: Mapping[str, type[BdnError]] = {
    **{cls.__name__: cls for cls in _ERROR_CLASSES},
    # Classes whose constructor needs more than a message map to their nearest
    # base that does not, so a caller's `except` on the family still works.
    "InsufficientSpace": errors.CacheError,
    "HTTPStatusError": errors.TransferError,
    "RetryableHTTPError": errors.TransferError,
}
"""A failed pull's ``error_type`` -> the class the client raises (others: TransferError)."""

STATUS_ERRORS: Mapping[int, type[BdnError]] = {
    400: errors.ConfigError,  # A malformed request body.
    401: errors.AuthError,  # A missing or wrong bearer token (TCP only).
    409: errors.MountConflict,  # Another running pull fills the mount location.
}
"""The pod API's error statuses that name an error class, both ways. Every other
status (403 no token configured, 404 unknown pull: the agent restarted, 503
draining, 5xx) reads as a TransferError: try again, or elsewhere."""


def error_type_of(err: BaseException) -> str:
    """The ``error_type`` a failed pull reports for ``err``: its class name."""
    return type(err).__name__


def error_of(error_type: object, message: str) -> BdnError:
    """The error to raise for a failed pull's ``error_type`` (see :data:`ERROR_TYPES`)."""
    name = error_type if isinstance(error_type, str) else ""
    return ERROR_TYPES.get(name, errors.TransferError)(message)


def error_for_status(status: int, message: str) -> BdnError:
    """The error to raise for an error status of the pod API."""
    return STATUS_ERRORS.get(status, errors.TransferError)(message)


def status_for(err: BdnError) -> int:
    """The status the pod API answers ``err`` with (500 for one without its own)."""
    for status, cls in STATUS_ERRORS.items():
        if isinstance(err, cls):
            return status
    return 500
