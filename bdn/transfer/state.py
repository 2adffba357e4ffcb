"""Mutable state of one file being fetched by the engine (:mod:`bdn.transfer.engine`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bdn.backends.base import ReaderSpec
from bdn.transfer.task import FileTask
from bdn.transfer.writes import SharedFd

__all__ = ["FileState"]


@dataclass(slots=True)
class FileState:
    """Mutable state of one ``TransferEngine.fetch``, touched on the event loop only.

    ``kept[i]`` is how many bytes from chunk ``i``'s start are written and may
    be resumed from (not yet verified); ``reported[i]`` the progress reported
    for chunk ``i`` that would be taken back if that prefix were dropped.
    """

    task: FileTask
    label: str
    bounds: list[tuple[int, int]]
    shared: SharedFd
    digests: list[str | None]
    done: list[bool]
    kept: list[int] = field(default_factory=list)
    reported: list[int] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_fetched: int = 0
    retries: int = 0
    spec: ReaderSpec | None = None  # Set: worker processes may fetch its chunks.

    def where(self, index: int) -> str:
        """Names chunk ``index`` and its bytes, for errors and logs."""
        start, end = self.bounds[index]
        return f"{self.label}: chunk {index} (bytes {start}-{end - 1})"

    def expected(self, index: int) -> str | None:
        """The xxh3-128 chunk ``index`` must match, or ``None`` when unchecked."""
        exp = self.task.expected_chunks
        return None if exp is None else exp[index]
