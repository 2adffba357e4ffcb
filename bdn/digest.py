"""Content digests: the ``sha256:<hex>`` blob identity and the xxh3-128 chunk check.

SHA-256 names blobs because dedup crosses models and tenants, so the identity
must resist crafted collisions. xxh3-128 checks chunks on the hot path because
it runs at ~8 GB/s per core against SHA-256's ~1.2 GB/s (docs/DESIGN.md, "Chunk").

>>> d = Digest.parse("sha256:" + "ab" * 32)
>>> d.hex[:4], str(d)[:11]
('abab', 'sha256:abab')
>>> chunk_count(0, 4), chunk_count(9, 4), chunk_count(8, 4)
(0, 3, 2)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

from bdn.errors import ManifestInvalid

SHA256_PREFIX = "sha256:"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_XXH3_HEX = re.compile(r"[0-9a-f]{32}")

DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
"""Chunk size for manifests when none is configured (docs/DESIGN.md, "Chunk")."""

MIN_CHUNK_SIZE = 1024 * 1024
"""The smallest chunk size a user may ask for (``bdn mirror --chunk-size``).

Every chunk costs a digest in the manifest, a record in a partial file and a
request to a peer or origin, so tiny chunks make a mirror crawl (1-byte chunks
of a small model did not finish in 90 s) and a manifest balloon. The library
itself (``MirrorOptions``, the manifest format, the peer wire) accepts any
chunk size of at least 1 byte: tests use small chunks to get many chunks out
of little data."""

MAX_CHUNK_SIZE = 256 * 1024 * 1024
"""The largest chunk size a user may ask for, and the largest a peer serves.

An agent holds every chunk it serves to a peer whole in memory, so a peer
request naming a bigger chunk is refused rather than read into memory."""


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A SHA-256 blob identity. ``str()`` gives the canonical ``sha256:<hex>`` form."""

    hex: str

    def __post_init__(self) -> None:
        if not _SHA256_HEX.fullmatch(self.hex):
            raise ManifestInvalid(
                f"not a sha256 digest: {self.hex!r} (expected 64 lowercase hex characters)"
            )

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<hex>``; a bare 64-char hex string is accepted too."""
        value = text[len(SHA256_PREFIX) :] if text.startswith(SHA256_PREFIX) else text
        try:
            return cls(value)
        except ManifestInvalid:
            raise ManifestInvalid(
                f"not a sha256 digest: {text!r} (expected 'sha256:' followed by 64 lowercase hex)"
            ) from None

    @classmethod
    def of_bytes(cls, data: bytes | bytearray | memoryview) -> Digest:
        """SHA-256 of an in-memory buffer (manifests, small metadata)."""
        return cls(hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return SHA256_PREFIX + self.hex


def is_xxh3_hex(text: str) -> bool:
    """True when ``text`` is a 32-char lowercase hex xxh3-128 digest."""
    return bool(_XXH3_HEX.fullmatch(text))


def xxh3_128_hex(data: bytes | bytearray | memoryview) -> str:
    """xxh3-128 of a buffer as 32 lowercase hex characters (the chunk digest form)."""
    return xxhash.xxh3_128_hexdigest(data)


def new_xxh3() -> xxhash.xxh3_128:
    """A fresh incremental xxh3-128 hasher, for chunks that arrive in pieces."""
    return xxhash.xxh3_128()


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks of a ``size``-byte blob; a zero-byte blob has none."""
    return -(-size // chunk_size)


def chunk_bounds(size: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` byte ranges (end exclusive) of each chunk, in order."""
    for start in range(0, size, chunk_size):
        yield start, min(start + chunk_size, size)
