"""Helpers of the tests that change a source while it is mirrored.

The change is made from the mirror's own ``on_progress`` callback, once a set
number of bytes has been written, so it lands at a known point of the run
without a sleep. The mirror copies one file at a time over one connection
(:data:`SERIAL`), so "after the first file's bytes" means "while the second
file is being read".
"""

from __future__ import annotations

from collections.abc import Callable

from bdn.backends.base import BlobStore
from bdn.mirror import MirrorOptions
from bdn.store import Store, index_key
from bdn.transfer.engine import TransferConfig

__all__ = ["CHUNK", "FIRST", "SECOND", "SERIAL", "ChangeAt", "assert_nothing_published"]

CHUNK = 64 * 1024
FIRST = 2 * CHUNK
"""Size of ``a.bin``, the first file copied."""
SECOND = 8 * CHUNK
"""Size of ``b.bin``, read in eight ranges after ``a.bin``."""
SERIAL = MirrorOptions(
    chunk_size=CHUNK,
    max_files_in_flight=1,
    transfer=TransferConfig(max_connections=1, max_connections_per_file=1, segment_size=CHUNK),
)


class ChangeAt:
    """An ``on_progress`` callback that runs ``change()`` once, when more than
    ``after`` bytes have been written."""

    def __init__(self, after: int, change: Callable[[], None]) -> None:
        self.after = after
        self.change = change
        self.seen = 0
        self.done = False

    def __call__(self, delta: int) -> None:
        self.seen += delta
        if not self.done and self.seen > self.after:
            self.done = True
            self.change()


async def assert_nothing_published(store: BlobStore, identities: tuple[str, ...] = ()) -> None:
    """No manifest and no ref in ``store``, and no index entry for ``identities``."""
    assert [k async for k in store.list("manifests/")] == []
    assert [k async for k in store.list("refs/")] == []
    layout = Store(store)
    for identity in identities:
        assert not await store.exists(index_key(identity)), identity
        assert await layout.lookup_index(identity) is None
