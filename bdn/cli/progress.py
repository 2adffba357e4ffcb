"""Byte progress bars for the CLI (rich, on a TTY only) and callbacks for API callers."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class ByteProgress:
    """A progress bar of bytes with rate and ETA; a no-op when ``stream`` is not a TTY.

    Use it as a context manager and pass :meth:`advance` as an ``on_progress``
    callback. Negative deltas (a retried chunk giving back its bytes) are fine.
    """

    def __init__(
        self, description: str, *, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        out = stream if stream is not None else sys.stderr
        self.enabled = out.isatty() if enabled is None else enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=out),
                transient=True,
            )
            self._task = self._progress.add_task(description, total=None)

    def set_total(self, total: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)

    def advance(self, delta: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, delta)

    def __enter__(self) -> ByteProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
