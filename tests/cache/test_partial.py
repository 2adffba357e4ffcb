"""Partials: the chunk record appends, resumes, survives a torn line, and commits a 0444 blob."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from bdn.cache import NodeCache, Partial
from bdn.digest import Digest
from tests.cache import CHUNK, chunks_of

DATA = bytes(range(256)) * 3  # 768 bytes: 48 chunks of 16


def open_(cache: NodeCache, data: bytes = DATA, chunk_size: int = CHUNK) -> Partial:
    return cache.open_partial(Digest.of_bytes(data), len(data), chunk_size,
                              chunks_of(data, chunk_size))


def test_construction_does_no_io(tmp_path: Path) -> None:
    NodeCache(tmp_path / "nowhere").close()
    assert not (tmp_path / "nowhere").exists()


def test_new_partial_starts_empty_with_header(cache: NodeCache) -> None:
    p = open_(cache)
    assert p.done_chunks == frozenset()
    assert p.path == cache.root / "incomplete" / (Digest.of_bytes(DATA).hex + ".part")
    header = json.loads(p.record_path.read_text().splitlines()[0])
    assert header["size"] == len(DATA) and header["chunk_size"] == CHUNK
    assert set(header) == {"size", "chunk_size", "chunks_digest"}


def test_marks_resume_in_a_later_open(cache: NodeCache) -> None:
    p = open_(cache)
    p.path.write_bytes(DATA)  # What the engine's preallocation and writes leave.
    for i in (0, 5, 3, 5):
        p.mark_done(i)
    again = open_(cache)
    assert again.done_chunks == {0, 3, 5}


def test_torn_trailing_line_is_ignored_and_not_appended_to(cache: NodeCache) -> None:
    p = open_(cache)
    p.path.write_bytes(DATA)
    p.mark_done(1)
    with open(p.record_path, "a") as f:
        f.write("4")  # A crash cut "42\n" short.
    again = open_(cache)
    assert again.done_chunks == {1}
    # The record was rewritten clean, so the next append is its own line.
    again.mark_done(7)
    assert open_(cache).done_chunks == {1, 7}


def test_garbage_lines_and_out_of_range_indices_are_dropped(cache: NodeCache) -> None:
    p = open_(cache)
    p.path.write_bytes(DATA)
    with open(p.record_path, "a") as f:
        f.write("2\nxx\n-1\n999\n47\n")
    assert open_(cache).done_chunks == {2, 47}


@pytest.mark.parametrize("change", ["chunk_size", "record_header", "part_size", "no_part"])
def test_mismatch_discards_the_partial(cache: NodeCache, change: str) -> None:
    p = open_(cache)
    p.path.write_bytes(DATA)
    p.mark_done(0)
    if change == "chunk_size":
        again = open_(cache, chunk_size=32)
    else:
        if change == "record_header":
            lines = p.record_path.read_text().splitlines()
            lines[0] = lines[0].replace(str(len(DATA)), "1")
            p.record_path.write_text("\n".join(lines) + "\n")
        elif change == "part_size":
            p.path.write_bytes(DATA[:100])
        else:
            p.path.unlink()
        again = open_(cache)
    assert again.done_chunks == frozenset()
    assert not again.path.exists()


def test_unparsable_header_discards(cache: NodeCache) -> None:
    p = open_(cache)
    p.path.write_bytes(DATA)
    p.record_path.write_text('{"size": 7\n0\n1\n')
    assert open_(cache).done_chunks == frozenset()


def test_wrong_chunk_count_is_rejected(cache: NodeCache) -> None:
    with pytest.raises(ValueError, match="chunk digests"):
        cache.open_partial(Digest.of_bytes(DATA), len(DATA), CHUNK, ("0" * 32,))


def test_commit_publishes_a_read_only_indexed_blob(cache: NodeCache) -> None:
    digest = Digest.of_bytes(DATA)
    p = open_(cache)
    p.path.write_bytes(DATA)
    p.mark_done(0)
    path = p.commit()
    assert path == cache.blob_path(digest)
    assert path == cache.root / "blobs" / "sha256" / digest.hex[:2] / digest.hex
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
    assert path.read_bytes() == DATA
    assert not p.path.exists() and not p.record_path.exists()
    assert cache.has_blob(digest) and cache.has_blob(digest, len(DATA))
    assert not cache.has_blob(digest, len(DATA) + 1)
    [info] = cache.ls()
    assert (info.digest, info.size, info.referenced) == (digest, len(DATA), False)


def test_commit_refuses_a_short_partial(cache: NodeCache) -> None:
    p = open_(cache)
    p.path.write_bytes(DATA[:10])
    with pytest.raises(OSError, match="has 10 bytes"):
        p.commit()
    assert not cache.has_blob(Digest.of_bytes(DATA))


def test_discard_removes_both_files(cache: NodeCache) -> None:
    p = open_(cache)
    p.path.write_bytes(DATA)
    p.discard()
    assert not p.path.exists() and not p.record_path.exists()


def test_ls_partials_reports_progress(cache: NodeCache) -> None:
    p = open_(cache)
    p.path.write_bytes(DATA)
    p.mark_done(0)
    p.mark_done(1)
    [info] = cache.ls_partials()
    assert info.digest == Digest.of_bytes(DATA)
    assert (info.done_chunks, info.total_chunks, info.size) == ({0, 1}, 48, len(DATA))
    assert info.bytes_on_disk > 0


def test_progress_prefixes_resume_in_a_later_open(cache: NodeCache) -> None:
    p = open_(cache)
    p.path.write_bytes(DATA)
    p.mark_progress(3, 8)
    p.mark_progress(3, 12)  # The last line of a chunk wins.
    p.mark_progress(5, 4)
    p.mark_progress(5, 0)  # Withdrawn.
    p.mark_progress(6, 4)
    p.mark_done(6)  # Verified since: no prefix.
    p.mark_progress(9, CHUNK)  # A whole chunk is never a prefix.
    again = open_(cache)
    assert dict(again.partial_chunks) == {3: 12}
    assert again.done_chunks == frozenset({6})
    assert open_(cache).partial_chunks == {3: 12}  # The rewrite kept it.


def test_prefixes_from_an_earlier_boot_are_dropped(cache: NodeCache) -> None:
    p = open_(cache)
    p.path.write_bytes(DATA)
    with open(p.record_path, "a", encoding="ascii") as f:
        f.write("2:8:a-boot-before-a-power-cut\n4:8")  # and a torn line
    assert open_(cache).partial_chunks == {}
