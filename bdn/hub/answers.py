"""The Hub's error answers, its ``Range`` rules and its file ids, as the client expects them.

``huggingface_hub`` turns an error into a typed exception by the
``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``, ``GatedRepo``) and shows ``X-Error-Message``; the JSON body
``{"error": ...}`` is what other clients print. Every answer here is one line
that says what was wrong and how to fix it (usually: mirror it first).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from aiohttp import web

from bdn.manifest import FileEntry

MIRROR_HINT = "mirror it first: bdn mirror hf://{repo}@{revision}"
"""How to get a repo (at a revision) into the store, appended to not-found answers."""


class HubError(Exception):
    """An answer the Hub would give instead of the resource: status, error code, message."""

    def __init__(self, status: int, code: str | None, message: str,
                 headers: Mapping[str, str] | None = None, *, unmirrored: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.unmirrored = unmirrored
        """True when the repo or revision was never mirrored into the store (as opposed
        to mirrored but private to another token): what pull-through may fetch."""

    def response(self) -> web.Response:
        """The answer: headers the client maps to its exceptions, and a JSON body."""
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code is not None:
            headers["X-Error-Code"] = self.code
        return web.Response(status=self.status, text=json.dumps({"error": self.message}),
                            content_type="application/json", headers=headers)


def bad_request(message: str) -> HubError:
    """400: the request itself is malformed."""
    return HubError(400, None, message)


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a ``Range`` header over ``size`` bytes; None for no header.

    One range only (what ``huggingface_hub`` sends to resume); a suffix
    ``bytes=-N`` takes the last N bytes.

    Raises:
        HubError: 416 with ``Content-Range: bytes */size`` for a malformed or
            unsatisfiable range, saying which form is accepted.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or (match[1] == "" and match[2] == ""):
        raise _unsatisfiable(header, size, "use one range of the form bytes=START-[END]")
    if match[1] == "":
        return max(size - int(match[2]), 0), size
    start = int(match[1])
    end = size if match[2] == "" else min(int(match[2]) + 1, size)
    if start >= end:
        raise _unsatisfiable(header, size, f"the file has {size} bytes")
    return start, end


def _unsatisfiable(header: str, size: int, why: str) -> HubError:
    return HubError(416, None, f"Range {header!r} cannot be served: {why}",
                    {"Content-Range": f"bytes */{size}"})


def lfs_pointer_size(entry: FileEntry) -> int:
    """Bytes of the git-lfs pointer the Hub stores in place of an LFS file."""
    return len(_pointer(entry))


def _pointer(entry: FileEntry) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{entry.sha256.hex}\n"
            f"size {entry.size}\n").encode()


def is_lfs(entry: FileEntry) -> bool:
    """True for a file the Hub stores in LFS: the mirror recorded its sha256 as its etag
    (other files carry their git blob id, 40 hex, :mod:`bdn.backends.hf.source`)."""
    return entry.source_etag == entry.sha256.hex


def blob_id(entry: FileEntry) -> str:
    """The git blob id the Hub publishes (``oid``): of the LFS pointer for an LFS file,
    else the mirrored etag (the id the Hub gave); the content's own id if none was kept."""
    if entry.source_etag and not is_lfs(entry):
        return entry.source_etag
    if is_lfs(entry):
        data = _pointer(entry)
        return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()
    # No etag recorded: the sha256 serves as a stable id (the client only names files by it).
    return entry.sha256.hex
