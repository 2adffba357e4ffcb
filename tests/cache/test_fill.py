"""The write path: a fill commits once, keeps verified chunks on a full disk, and the
unflushed blobs of an earlier boot are verified again before they are trusted."""

from __future__ import annotations

import errno

import pytest

from bdn.cache import FetchInto, NodeCache, Partial, fill_blob, recheck_after_reboot
from bdn.errors import CacheError, InsufficientSpace, IntegrityError
from tests.cache import CHUNK, chunks_of, entry_of, write_blob

DATA = bytes(range(256)) * 2  # 512 bytes: 32 chunks of 16
ENTRY = entry_of(DATA)


def writing(data: bytes) -> FetchInto:
    """A fetch that writes the whole blob and marks every chunk done."""

    async def fetch(partial: Partial) -> int:
        partial.path.write_bytes(data)
        for i in range(len(chunks_of(data))):
            partial.mark_done(i)
        return len(data)

    return fetch


def failing_after_one_chunk(err: BaseException) -> FetchInto:
    """A fetch that verifies chunk 0, then fails with ``err``."""

    async def fetch(partial: Partial) -> int:
        # The engine preallocates the file; only chunk 0 holds its bytes yet.
        partial.path.write_bytes(DATA[:CHUNK] + bytes(len(DATA) - CHUNK))
        partial.mark_done(0)
        raise err

    return fetch


def boots(cache: NodeCache) -> dict[str, set[str]]:
    root = cache.root / "unflushed"
    return {b.name: {m.name for m in b.iterdir()} for b in root.iterdir()} if root.exists() else {}


async def test_a_fill_commits_and_the_next_one_is_a_hit(cache: NodeCache) -> None:
    assert await fill_blob(cache, ENTRY, CHUNK, writing(DATA)) == len(DATA)
    assert cache.blob_path(ENTRY.sha256).read_bytes() == DATA
    # Committed without fsync: marked unflushed for this boot.
    assert list(boots(cache).values()) == [{ENTRY.sha256.hex}]

    async def must_not_run(partial: Partial) -> int:
        raise AssertionError("the blob was fetched twice")

    assert await fill_blob(cache, ENTRY, CHUNK, must_not_run) is None


async def test_fsync_commits_with_no_unflushed_marker(cache: NodeCache) -> None:
    assert await fill_blob(cache, ENTRY, CHUNK, writing(DATA), fsync=True) == len(DATA)
    assert cache.has_blob(ENTRY.sha256, len(DATA))
    assert all(not markers for markers in boots(cache).values())


@pytest.mark.parametrize("wrapped", [False, True], ids=["ENOSPC", "ENOSPC as a cause"])
async def test_a_full_disk_is_a_clear_error_that_keeps_verified_chunks(
    cache: NodeCache, wrapped: bool
) -> None:
    err: OSError = OSError(errno.ENOSPC, "No space left on device")
    if wrapped:
        try:
            raise CacheError("cannot write") from err
        except CacheError as outer:
            err = outer
    with pytest.raises(CacheError, match="disk filled up") as info:
        await fill_blob(cache, ENTRY, CHUNK, failing_after_one_chunk(err))
    assert "free space" in str(info.value) and info.value.path == str(cache.root)
    assert info.value.__cause__ is err
    assert not cache.has_blob(ENTRY.sha256)
    async with cache.lock(ENTRY.sha256):
        resumed = cache.open_partial(ENTRY.sha256, ENTRY.size, CHUNK, ENTRY.chunks)
    assert resumed.done_chunks == {0}


@pytest.mark.parametrize(
    "err",
    [
        InsufficientSpace("no room", needed=10, free=1, evictable=0),
        OSError(errno.EIO, "I/O error"),
    ],
    ids=["InsufficientSpace", "EIO"],
)
async def test_other_errors_pass_through_unchanged(cache: NodeCache, err: OSError) -> None:
    with pytest.raises(type(err)) as info:
        await fill_blob(cache, ENTRY, CHUNK, failing_after_one_chunk(err))
    assert info.value is err


@pytest.mark.parametrize("strict", [False, True])
async def test_a_whole_file_mismatch_discards_the_partial_only_when_strict(
    cache: NodeCache, strict: bool
) -> None:
    bad = IntegrityError("sha256 mismatch", expected="a", actual="b")
    with pytest.raises(IntegrityError):
        await fill_blob(cache, ENTRY, CHUNK, failing_after_one_chunk(bad), strict=strict)
    part = cache.root / "incomplete" / (ENTRY.sha256.hex + ".part")
    assert part.exists() is not strict


async def test_unflushed_blobs_of_an_earlier_boot_are_verified_again(cache: NodeCache) -> None:
    torn, intact = entry_of(b"t" * 100, "torn"), entry_of(b"i" * 100, "intact")
    await fill_blob(cache, torn, CHUNK, writing(b"t" * 100))
    await fill_blob(cache, intact, CHUNK, writing(b"i" * 100))
    (boot,) = (cache.root / "unflushed").iterdir()
    boot.rename(boot.with_name("an-earlier-boot"))  # As if the node rebooted.
    blob = cache.blob_path(torn.sha256)
    blob.chmod(0o644)
    with open(blob, "r+b") as f:  # The page cache never reached the disk: zeros.
        f.seek(CHUNK)
        f.write(b"\0" * CHUNK)
    held = entry_of(b"h" * 40, "held")  # Committed with fsync: no marker, not read.
    async with cache.lock(held.sha256):
        write_blob(cache, b"h" * 40)

    await recheck_after_reboot(cache, [torn, intact, held], CHUNK)
    assert not cache.has_blob(torn.sha256)
    assert cache.has_blob(intact.sha256) and cache.has_blob(held.sha256)
    assert boots(cache) == {"an-earlier-boot": set()}
