"""LocalFileReader: ranges of a local file, alone and through the engine."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bdn.backends.base import LocalCopyReader
from bdn.backends.local.reader import LocalFileReader
from bdn.digest import chunk_bounds, xxh3_128_hex
from bdn.errors import IntegrityError, NotFound, SourceError
from bdn.http import RetryPolicy
from bdn.transfer import FileTask, RangeReader, TransferConfig, TransferEngine
from bdn.transfer.ratelimit import RateCap


async def _read(reader: LocalFileReader, start: int, end: int) -> list[bytes]:
    return [bytes(piece) async for piece in reader.open_range(start, end)]


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(100_003)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return path, data


async def test_ranges_and_pieces(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    reader = LocalFileReader(path, len(data), piece_size=4096)
    assert isinstance(reader, RangeReader)
    assert reader.supports_ranges is True
    assert reader.describe() == str(path)
    for start, end in [(0, len(data)), (1, 2), (4095, 8193), (len(data) - 1, len(data))]:
        pieces = await _read(reader, start, end)
        assert b"".join(pieces) == data[start:end]
        assert all(0 < len(p) <= 4096 for p in pieces)
    assert await _read(reader, 7, 7) == []
    with pytest.raises(ValueError):
        await _read(reader, 0, len(data) + 1)
    await reader.close()
    await reader.close()


async def test_size_changed_before_read(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    reader = LocalFileReader(path, len(data) + 1)
    with pytest.raises(SourceError, match="changed while being read"):
        await _read(reader, 0, 10)


async def test_truncated_while_reading(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    reader = LocalFileReader(path, len(data), piece_size=10_000)
    stream = reader.open_range(0, len(data))
    first = await anext(stream)
    assert first == data[:10_000]
    os.truncate(path, 15_000)
    with pytest.raises(SourceError, match=r"changed while being read \(short read"):
        async for _ in stream:
            pass


async def test_missing_file(tmp_path: Path) -> None:
    reader = LocalFileReader(tmp_path / "nope", 10)
    with pytest.raises(NotFound):
        await _read(reader, 0, 10)


async def test_through_engine(blob: tuple[Path, bytes], tmp_path: Path) -> None:
    path, data = blob
    chunk = 8192
    expected = [xxh3_128_hex(data[a:b]) for a, b in chunk_bounds(len(data), chunk)]
    config = TransferConfig(segment_size=3000, retry=RetryPolicy(max_attempts=2, base_delay=0.001))
    async with TransferEngine(config) as eng:
        res = await eng.fetch(
            FileTask(
                LocalFileReader(path, len(data), piece_size=5000),
                len(data),
                tmp_path / "copy.part",
                chunk,
                expected_chunks=expected,
                compute_sha256=True,
            )
        )
    assert (tmp_path / "copy.part").read_bytes() == data
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert eng.stats.range_fallbacks == 0


async def test_engine_does_not_retry_a_changed_source(
    blob: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, data = blob
    os.truncate(path, 50)
    async with TransferEngine(TransferConfig(retry=RetryPolicy(base_delay=0.001))) as eng:
        with pytest.raises(SourceError, match=r"local/blob: chunk [01] "):
            await eng.fetch(
                FileTask(
                    LocalFileReader(path, len(data)),
                    len(data),
                    tmp_path / "copy.part",
                    65536,
                    label="local/blob",
                )
            )
        assert eng.stats.retries == 0


async def test_engine_local_path_rejects_bytes_that_fail_their_digest(
    blob: tuple[Path, bytes], tmp_path: Path
) -> None:
    # The local fast path digests what landed in the destination, so a source
    # whose bytes differ from the manifest is refused, as on the network path.
    path, data = blob
    chunk = 8192
    expected = [xxh3_128_hex(data[a:b]) for a, b in chunk_bounds(len(data), chunk)]
    expected[3] = "0" * 32
    config = TransferConfig(retry=RetryPolicy(max_attempts=2, base_delay=0.001))
    async with TransferEngine(config) as eng:
        with pytest.raises(IntegrityError, match="chunk 3"):
            await eng.fetch(FileTask(LocalFileReader(path, len(data)), len(data),
                                     tmp_path / "copy.part", chunk, expected_chunks=expected))
        assert eng.stats.corrupt_chunks == 2  # Both attempts were refused.


def test_copy_fallback_without_copy_file_range(blob: tuple[Path, bytes], tmp_path: Path) -> None:
    # Where the kernel cannot copy_file_range between two files, copy_to falls
    # back to pread + pwrite with the same result.
    path, data = blob
    reader = LocalFileReader(path, len(data), piece_size=4096)
    dest = tmp_path / "dest"
    fd = os.open(dest, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, len(data))
        src = os.open(path, os.O_RDONLY)
        try:
            reader._copy_by_pread(src, fd, 10, len(data))
        finally:
            os.close(src)
        reader.copy_to(fd, 0, 10)
    finally:
        os.close(fd)
    assert dest.read_bytes() == data


async def test_a_rate_limited_engine_still_delivers_every_byte(
    blob: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, data = blob
    config = TransferConfig(rate_limit=RateCap(10_000_000))
    async with TransferEngine(config) as eng:
        res = await eng.fetch(FileTask(LocalFileReader(path, len(data)), len(data),
                                       tmp_path / "copy.part", 8192, compute_sha256=True))
    assert (tmp_path / "copy.part").read_bytes() == data
    assert res.sha256 == hashlib.sha256(data).hexdigest()


class _CopyOnlyReader:
    """A reader with the kernel-copy capability whose stream must never be used."""

    supports_ranges: bool | None = True

    def __init__(self, inner: LocalFileReader) -> None:
        self.inner = inner
        self.copies: list[tuple[int, int]] = []

    def describe(self) -> str:
        return "copy-only"

    async def close(self) -> None:
        await self.inner.close()

    def open_range(self, start: int, end: int) -> AsyncIterator[bytes]:
        raise AssertionError("the engine streamed a reader that can copy in the kernel")

    def copy_to(self, dst_fd: int, start: int, end: int) -> None:
        self.copies.append((start, end))
        self.inner.copy_to(dst_fd, start, end)


async def test_engine_copies_through_the_seam_not_a_concrete_reader(
    blob: tuple[Path, bytes], tmp_path: Path
) -> None:
    # The fast path depends on the LocalCopyReader capability, so any reader
    # offering it (not only LocalFileReader) is copied in the kernel and verified.
    path, data = blob
    reader = _CopyOnlyReader(LocalFileReader(path, len(data)))
    assert isinstance(reader, LocalCopyReader)
    assert isinstance(LocalFileReader(path, len(data)), LocalCopyReader)
    chunk = 8192
    expected = [xxh3_128_hex(data[a:b]) for a, b in chunk_bounds(len(data), chunk)]
    async with TransferEngine() as eng:
        res = await eng.fetch(FileTask(reader, len(data), tmp_path / "copy.part", chunk,
                                       expected_chunks=expected))
    assert (tmp_path / "copy.part").read_bytes() == data
    assert sorted(reader.copies) == list(chunk_bounds(len(data), chunk))
    assert list(res.chunks) == expected
