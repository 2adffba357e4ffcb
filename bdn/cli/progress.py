"""Byte progress bars for the CLI (rich, on a TTY only), fed by :mod:`bdn.api` callbacks.

While no byte has arrived for :data:`STALL_NOTICE_S` the line names what it is
waiting on and for how long ("waiting on origin 10.0.0.5:9000 for 20s"), so a
silent source is visible long before the transfer gives up on it (after
``RetryPolicy.max_stalls`` stall timeouts, under two minutes by default).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

STALL_NOTICE_S = 5.0
"""Seconds without a byte before the progress line says what it is waiting on."""


def source_label(store_uri: str | None, agent: str | None = None) -> str:
    """What a pull waits on, for the progress line: ``agent <addr>`` or ``origin <host>``.

    >>> source_label("http://10.0.0.5:9000/bdn")
    'origin 10.0.0.5:9000'
    >>> source_label("file:///srv/store")
    'origin /srv/store'
    """
    if agent:
        return f"agent {agent}"
    if not store_uri:
        return "origin"
    parts = urlsplit(store_uri)
    where = parts.hostname or parts.path or store_uri
    if parts.hostname and parts.port:
        where = f"{parts.hostname}:{parts.port}"
    return f"origin {where}"


class StallNotice:
    """Tracks when bytes last moved; says what is awaited once none have for a while.

    ``clock`` is injectable so the text can be tested without waiting.
    """

    def __init__(
        self, source: str, *, after: float = STALL_NOTICE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._after = after
        self._clock = clock
        self._last = clock()

    def moved(self) -> None:
        """Bytes arrived (or work began): the wait starts over."""
        self._last = self._clock()

    def text(self) -> str:
        """``"waiting on <source> for Ns"`` after ``after`` silent seconds, else ``""``."""
        idle = self._clock() - self._last
        return f"waiting on {self.source} for {int(idle)}s" if idle >= self._after else ""


class _StallColumn(ProgressColumn):
    """Renders a :class:`StallNotice` (re-rendered by rich's refresh thread)."""

    def __init__(self, notice: StallNotice) -> None:
        super().__init__()
        self._notice = notice

    def render(self, task: object) -> Text:
        return Text(self._notice.text(), style="yellow")


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
        source: str = "origin",
    ) -> None:
        out = stream if stream is not None else sys.stderr
        self.enabled = out.isatty() if enabled is None else enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._done = 0
        self.stall = StallNotice(source)
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                _StallColumn(self.stall),
                console=Console(file=out),
                transient=True,
            )
        if description is not None:
            self.describe(description)

    def describe(self, description: str) -> None:
        """Replace the bar with a fresh one for the next piece of work (an
        ``on_begin`` callback of :mod:`bdn.api`): one bar per entry mirrored."""
        self._done = 0
        self.stall.moved()
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
        if delta > 0:
            self.stall.moved()
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
