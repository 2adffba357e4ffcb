"""Byte progress bars for the CLI (rich, on a TTY only), fed by :mod:`bdn.api` callbacks."""

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

    Use it as a context manager and pass :meth:`update` as an ``on_progress``
    callback of :mod:`bdn.api` (and :meth:`describe` as its ``on_begin``). With
    no ``description``, no bar shows until :meth:`describe` names the work.
    """

    def __init__(
        self,
        description: str | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        out = stream if stream is not None else sys.stderr
        self.enabled = out.isatty() if enabled is None else enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._done = 0
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
        if description is not None:
            self.describe(description)

    def describe(self, description: str) -> None:
        """Replace the bar with a fresh one for the next piece of work (an
        ``on_begin`` callback of :mod:`bdn.api`): one bar per entry mirrored."""
        self._done = 0
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=None)

    def set_total(self, total: int) -> None:
        """The bytes the current piece of work has to move, once known."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)

    def advance(self, delta: int) -> None:
        """``delta`` more bytes moved (negative: a retried chunk gave them back)."""
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, delta)

    def update(self, done: int, total: int) -> None:
        """An ``on_progress(bytes_done, bytes_total)`` callback, as :mod:`bdn.api` calls it."""
        self.set_total(total)
        self.advance(done - self._done)
        self._done = done

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
