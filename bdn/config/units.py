"""Human byte sizes for flags and reports.

>>> parse_size("64MiB"), parse_size("1.5G"), parse_size("4096")
(67108864, 1500000000, 4096)
>>> format_bytes(3 * 1024**3)
'3.00 GiB'
"""

from __future__ import annotations

import re

from bdn.digest import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from bdn.errors import ConfigError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "ki": 2**10,
    "kib": 2**10,
    "mi": 2**20,
    "mib": 2**20,
    "gi": 2**30,
    "gib": 2**30,
    "ti": 2**40,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str, *, field: str | None = None) -> int:
    """Parse ``512``, ``64MiB``, ``1.5G`` (SI and IEC units) into bytes."""
    m = _SIZE.fullmatch(text)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ConfigError(
            f"{text!r} is not a size; use a number of bytes or a unit, e.g. 64MiB or 2G",
            field=field,
        )
    return int(float(m.group(1)) * _UNITS[unit])


def parse_chunk_size(text: str, *, field: str | None = None) -> int:
    """Parse a manifest chunk size a user gave (``64MiB``) and hold it to the user bounds.

    The bounds are :data:`~bdn.digest.MIN_CHUNK_SIZE` (smaller chunks make a
    mirror crawl) and :data:`~bdn.digest.MAX_CHUNK_SIZE` (bigger ones are
    held whole in memory by the agent that serves them to peers).

    Raises:
        ConfigError: not a size, or outside the bounds; the message gives them.
    """
    size = parse_size(text, field=field)
    if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise ConfigError(
            f"{text!r} is {_bytes_phrase(size)}; use a chunk size from "
            f"{format_bytes(MIN_CHUNK_SIZE)} to {format_bytes(MAX_CHUNK_SIZE)}, "
            "e.g. 64MiB (the default)",
            field=field,
        )
    return size


def _bytes_phrase(size: int) -> str:
    """``1 byte``, ``512 bytes``: the exact count, for out-of-bounds messages."""
    return "1 byte" if size == 1 else f"{size} bytes"


def format_bytes(n: float) -> str:
    """Format a byte count with a binary unit, two decimals."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
