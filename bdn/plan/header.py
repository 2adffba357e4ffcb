"""Reading a safetensors file's header, and nothing else of it.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes
of JSON (tensor name -> ``dtype``, ``shape``, ``data_offsets``; plus an
optional ``__metadata__``), then the tensor data. Every fact ``bdn plan`` needs
(parameter count, bytes by dtype) is in the header, so a plan reads two byte
ranges per file through a :class:`~bdn.backends.base.RangeReader` — never the
weights, which may be hundreds of GB on a remote store.

The header is checked against the file's size: a header longer than the file,
tensors ending past its end (a truncated file) or offsets that disagree with
``shape`` x dtype raise :class:`HeaderError`, one line naming the file.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bdn.errors import BdnError

if TYPE_CHECKING:
    from bdn.backends.base import RangeReader

# Bits per element of every dtype the safetensors format defines; a dtype not
# listed is still counted (shape gives elements, offsets give bytes) and reported.
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "U16": 16, "I16": 16, "F16": 16, "BF16": 16,
    "U32": 32, "I32": 32, "F32": 32,
    "U64": 64, "I64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

# The format's own ceiling on a header (100 MB); a bigger length is not safetensors.
MAX_HEADER_BYTES = 100_000_000
_LENGTH_BYTES = 8


class HeaderError(BdnError, ValueError):
    """A safetensors header is malformed or disagrees with its file's size."""


@dataclass
class DtypeCount:
    """Tensors, elements and bytes of one dtype."""

    tensors: int = 0
    parameters: int = 0
    bytes: int = 0


@dataclass
class HeaderSummary:
    """What one file's (or a whole model's) headers say.

    ``unknown_dtypes`` names dtypes not in :data:`DTYPE_BITS`: their tensors are
    counted (elements from ``shape``, bytes from ``data_offsets``) but their
    byte counts could not be checked against the shape.
    """

    by_dtype: dict[str, DtypeCount] = field(default_factory=dict)
    header_bytes: int = 0
    unknown_dtypes: set[str] = field(default_factory=set)

    @property
    def parameters(self) -> int:
        return sum(c.parameters for c in self.by_dtype.values())

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.by_dtype.values())

    def add(self, other: HeaderSummary) -> None:
        """Fold another file's counts into this one."""
        for dtype, count in other.by_dtype.items():
            mine = self.by_dtype.setdefault(dtype, DtypeCount())
            mine.tensors += count.tensors
            mine.parameters += count.parameters
            mine.bytes += count.bytes
        self.header_bytes += other.header_bytes
        self.unknown_dtypes |= other.unknown_dtypes


async def read_range(reader: RangeReader, start: int, end: int) -> bytes:
    """The bytes ``[start, end)`` of the reader's object."""
    parts = [bytes(piece) async for piece in reader.open_range(start, end)]
    return b"".join(parts)


async def read_header(reader: RangeReader, size: int, name: str) -> HeaderSummary:
    """Read and summarize the header of the safetensors file ``name`` of ``size`` bytes.

    Two range reads: the 8-byte length, then the JSON. Raises :class:`HeaderError`.
    """
    if size < _LENGTH_BYTES:
        raise HeaderError(
            f"{name}: {size} bytes is too short for a safetensors file (8-byte header "
            "length first); the file is truncated or not safetensors: re-mirror it"
        )
    (length,) = struct.unpack("<Q", await read_range(reader, 0, _LENGTH_BYTES))
    check_length(length, size, name)
    raw = await read_range(reader, _LENGTH_BYTES, _LENGTH_BYTES + length)
    return parse_header(raw, size, name)


def check_length(length: int, size: int, name: str) -> None:
    """Refuse a header length the file cannot hold."""
    if length == 0 or length > MAX_HEADER_BYTES:
        raise HeaderError(
            f"{name}: header length {length} is not a safetensors header "
            f"(1 to {MAX_HEADER_BYTES} bytes); the file is not safetensors: re-export it"
        )
    if _LENGTH_BYTES + length > size:
        raise HeaderError(
            f"{name}: header says {length} bytes but the file has {size}; the file is "
            "truncated or not safetensors: re-mirror it"
        )


def parse_header(raw: bytes, size: int, name: str) -> HeaderSummary:
    """Summarize the JSON header ``raw`` of a file of ``size`` bytes."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HeaderError(f"{name}: header is not JSON ({err}); re-export the file") from None
    if not isinstance(doc, dict):
        raise HeaderError(f"{name}: header is not a JSON object; re-export the file")
    data_bytes = size - _LENGTH_BYTES - len(raw)
    summary = HeaderSummary(header_bytes=_LENGTH_BYTES + len(raw))
    for tensor, info in doc.items():
        if tensor == "__metadata__":
            continue
        dtype, elements, nbytes = _tensor(info, data_bytes, f"{name}: tensor {tensor!r}")
        count = summary.by_dtype.setdefault(dtype, DtypeCount())
        count.tensors += 1
        count.parameters += elements
        count.bytes += nbytes
        if dtype not in DTYPE_BITS:
            summary.unknown_dtypes.add(dtype)
    return summary


def _tensor(info: Any, data_bytes: int, where: str) -> tuple[str, int, int]:
    """(dtype, elements, bytes) of one header entry, checked against the data section."""
    if not isinstance(info, dict):
        raise HeaderError(f"{where} is not an object with dtype/shape/data_offsets")
    dtype, shape, offsets = info.get("dtype"), _ints(info.get("shape")), _ints(
        info.get("data_offsets"))
    if not isinstance(dtype, str) or shape is None or offsets is None or len(offsets) != 2:
        raise HeaderError(
            f"{where} needs a string dtype, an integer shape and two data_offsets; "
            "the header is malformed: re-export the file"
        )
    start, end = offsets
    if min(shape, default=0) < 0 or start < 0 or end < start:
        raise HeaderError(f"{where} has negative dims or offsets {offsets}; re-export the file")
    if end > data_bytes:
        raise HeaderError(
            f"{where} ends at data byte {end} but the file holds {data_bytes}; the file "
            "is truncated: re-mirror it"
        )
    elements = math.prod(shape)
    bits = DTYPE_BITS.get(dtype)
    if bits is not None and (elements * bits + 7) // 8 != end - start:
        raise HeaderError(
            f"{where}: shape {shape} of {dtype} is {(elements * bits + 7) // 8} bytes but "
            f"its offsets span {end - start}; the header is malformed: re-export the file"
        )
    return dtype, elements, end - start


def _ints(value: Any) -> list[int] | None:
    """``value`` if it is a list of integers, else None."""
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                       for v in value):
        return value
    return None
