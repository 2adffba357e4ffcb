"""The transfer engine with in-memory readers: any RangeReader, well-behaved or not."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bdn.digest import chunk_bounds
from bdn.errors import TransferError
from bdn.transfer import FileTask, TransferEngine
from tests.transfer.test_engine import CHUNK, CONFIG, chunks_of


class MemoryReader:
    """A RangeReader over bytes that yields odd-sized mutable pieces and can misbehave."""

    def __init__(self, data: bytes, *, extra: int = 0, short_times: int = 0) -> None:
        self.data = data
        self.extra = extra
        self.short_times = short_times
        self.supports_ranges: bool | None = None
        self.opened: list[tuple[int, int]] = []

    def describe(self) -> str:
        return "memory"

    async def close(self) -> None:
        pass

    async def open_range(self, start: int, end: int) -> AsyncIterator[bytearray | memoryview]:
        self.opened.append((start, end))
        stop = end + self.extra
        if self.short_times:
            self.short_times -= 1
            stop = end - 1
        pos = start
        step = 777
        while pos < stop:
            piece = bytearray(self.data[pos : min(pos + step, stop)] or b"\0")
            yield piece if step % 2 else memoryview(piece)
            pos += len(piece)
            step = step * 3 % 20011 + 1


async def test_generic_reader_pieces_and_unknown_range_support(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 3)
    reader = MemoryReader(data)
    async with TransferEngine(CONFIG) as eng:
        res = await eng.fetch(FileTask(reader, len(data), tmp_path / "m", CHUNK, chunks_of(data)))
    assert (tmp_path / "m").read_bytes() == data
    assert res.chunks == tuple(chunks_of(data))
    assert sorted(reader.opened) == list(chunk_bounds(len(data), CHUNK))
    assert reader.opened[0] == (0, CHUNK)


async def test_reader_breaking_its_contract(tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK)
    async with TransferEngine(CONFIG) as eng:
        short = MemoryReader(data, short_times=1)
        await eng.fetch(FileTask(short, len(data), tmp_path / "s", CHUNK, chunks_of(data)))
        assert (tmp_path / "s").read_bytes() == data
        assert eng.stats.retries == 1
        with pytest.raises(TransferError, match="yielded more bytes"):
            await eng.fetch(FileTask(MemoryReader(data, extra=5), len(data), tmp_path / "x", CHUNK))
