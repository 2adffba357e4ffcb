"""Store key rules shared by every backend.

A key is a relative ``/``-separated name. Backends map it onto a filesystem
path, an object key or a URL path, so a key that could climb out of the store
(``..``), name an absolute path, or mean something else on another OS (``\\``)
is refused before any backend sees it.
"""

from __future__ import annotations

import re

from bdn.errors import StoreError

BLOB_PREFIX = "blobs/"
"""Keys under this prefix hold immutable blob content (kept in step with
:mod:`bdn.store`, which cannot be imported here without a cycle)."""

_BLOB_HEX = re.compile(r"(?:^|/)sha256/[0-9a-f]{2}/([0-9a-f]{64})$")


def check_key(key: str, *, store: str) -> str:
    """Return ``key`` unchanged if it is a safe store key, else raise ``StoreError``."""
    problem = _key_problem(key)
    if problem:
        raise StoreError(f"invalid key {key!r} for store {store}: {problem}")
    return key


def check_prefix(prefix: str, *, store: str) -> str:
    """Like :func:`check_key` for a listing prefix: empty or ``/``-terminated is fine."""
    body = prefix.rstrip("/")
    if body:
        check_key(body, store=store)
    return prefix


def blob_digest(key: str) -> str | None:
    """``sha256:<hex>`` when ``key`` names a blob, for ``BlobNotFound.digest``."""
    match = _BLOB_HEX.search(key)
    return f"sha256:{match.group(1)}" if match else None


def _key_problem(key: str) -> str | None:
    if not key:
        return "keys must not be empty"
    if key.startswith("/"):
        return "keys are relative; drop the leading '/'"
    if "\\" in key or "\x00" in key:
        return "keys must not contain backslashes or NUL"
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "keys must not contain empty, '.' or '..' segments"
    return None
