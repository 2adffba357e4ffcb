"""Safetensors header reading: real MiniLM counts, and every way a header can be wrong."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from bdn.backends.local.reader import LocalFileReader
from bdn.plan.header import HeaderError, HeaderSummary, read_header
from tests.plan.synth import header_bytes, write_sparse


async def summarize(path: Path) -> HeaderSummary:
    return await read_header(LocalFileReader(path, path.stat().st_size), path.stat().st_size,
                             path.name)


async def test_minilm_counts_match_its_header(minilm_dir: Path) -> None:
    s = await summarize(minilm_dir / "model.safetensors")
    # 103 F32 tensors and the I64 position_ids buffer (512 entries), counted by hand
    # from the header; the data section is the file minus the 8 + 11408 header bytes.
    assert s.by_dtype["F32"].tensors == 103 and s.by_dtype["I64"].parameters == 512
    assert s.parameters == 22_713_728
    assert s.by_dtype["F32"].bytes == (22_713_728 - 512) * 4
    assert s.bytes == (minilm_dir / "model.safetensors").stat().st_size - 8 - 11408
    assert not s.unknown_dtypes


async def test_sparse_header_is_read_without_the_data(tmp_path: Path) -> None:
    head, data = header_bytes([("w", [1 << 20, 1 << 14])])  # 32 GiB of BF16
    write_sparse(tmp_path / "big.safetensors", head, data)
    s = await summarize(tmp_path / "big.safetensors")
    assert s.parameters == 1 << 34 and s.bytes == 1 << 35


async def test_malformed_header_is_one_line(tmp_path: Path) -> None:
    raw = b"{not json"
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)
    with pytest.raises(HeaderError, match=r"bad.safetensors: header is not JSON") as err:
        await summarize(tmp_path / "bad.safetensors")
    assert "\n" not in str(err.value)


async def test_header_larger_than_the_file(tmp_path: Path) -> None:
    (tmp_path / "short.safetensors").write_bytes(struct.pack("<Q", 4096) + b"{}")
    with pytest.raises(HeaderError, match="header says 4096 bytes but the file has 10"):
        await summarize(tmp_path / "short.safetensors")


async def test_truncated_file(tmp_path: Path) -> None:
    head, data = header_bytes([("a", [1024]), ("b", [1024])])
    write_sparse(tmp_path / "cut.safetensors", head, data - 100)
    with pytest.raises(HeaderError, match=r"tensor 'b' ends at data byte 4096 .* truncated"):
        await summarize(tmp_path / "cut.safetensors")


async def test_offsets_that_disagree_with_the_shape(tmp_path: Path) -> None:
    raw = json.dumps({"w": {"dtype": "F32", "shape": [10], "data_offsets": [0, 20]}}).encode()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 20)
    with pytest.raises(HeaderError, match="is 40 bytes but its offsets span 20"):
        await summarize(tmp_path / "m.safetensors")


async def test_too_short_and_absurd_lengths(tmp_path: Path) -> None:
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    with pytest.raises(HeaderError, match="too short"):
        await summarize(tmp_path / "tiny.safetensors")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(HeaderError, match="not a safetensors header"):
        await summarize(tmp_path / "huge.safetensors")


async def test_unknown_dtype_is_counted_and_reported(tmp_path: Path) -> None:
    head, data = header_bytes([("q", [64, 64])], dtype="Q4_K", item=1)
    write_sparse(tmp_path / "q.safetensors", head, data)
    s = await summarize(tmp_path / "q.safetensors")
    assert s.unknown_dtypes == {"Q4_K"} and s.parameters == 4096 and s.bytes == 4096
