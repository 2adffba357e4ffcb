"""Worker processes for the data plane of one engine (``TransferConfig.workers``).

The parent :class:`~bdn.transfer.engine.TransferEngine` keeps the plan, the
connection cap, progress, the kept prefixes and acceptance; a chunk attempt
whose reader can be rebuilt elsewhere (:class:`~bdn.backends.base.ReopenableReader`)
may run in one of ``workers - 1`` child processes instead of on the parent's
loop, which stays a lane of its own. Each child receives, writes and hashes
with its own event loop and connection pool (:mod:`bdn.transfer.worker`), so
one pull uses as many cores as it has lanes.

A child's messages arrive on the parent's loop through ``add_reader`` on its
pipe. A child that dies (killed, out of memory) closes its pipe: every attempt
it was running fails with a retryable :class:`~bdn.errors.TransferError`, and
the next attempt goes to a fresh child. What a dead child wrote but had not
reported is simply written again; what it reported stays kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import bdn
from bdn.errors import TransferError
from bdn.transfer.worker import Job, unpack_error

__all__ = ["Lane", "ProcessPlane", "RangesIgnored"]

log = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 5.0


class RangesIgnored(Exception):
    """A probe job in a child saw the server ignore ``Range``."""


@dataclass(slots=True)
class _Pending:
    """A job sent to a child: its callbacks and the future of its final message."""

    finished: asyncio.Future[str]
    on_landed: Callable[[int, int], None]
    on_ranges: Callable[[bool | None], None]
    error: BaseException | None = None  # A parent-side callback failed.


@dataclass(slots=True)
class Lane:
    """One child process and the jobs it is running."""

    process: subprocess.Popen[bytes]
    conn: Connection
    jobs: dict[int, _Pending] = field(default_factory=dict)
    alive: bool = True
    ready: bool = False  # Its interpreter started and said so.

    @property
    def load(self) -> int:
        return len(self.jobs)


class ProcessPlane:
    """``children`` worker processes, started on first use; see the module docstring.

    Use from one event loop; :meth:`close` (idempotent) stops the children and
    waits for them, so no write of theirs outlives the engine.
    """

    def __init__(self, children: int) -> None:
        self.children = children
        self._lanes: list[Lane] = []
        self._ids = itertools.count()
        self._closed = False
        self._broken = False  # A worker died before it started: stay in-process.

    def pids(self) -> list[int]:
        """Process ids of the live children (for tests and diagnostics)."""
        return [lane.process.pid for lane in self._lanes if lane.alive and lane.process.pid]

    def pick(self, local_load: int) -> Lane | None:
        """The least loaded lane: a child, or ``None`` for the parent's own loop.

        Children are started (and dead ones replaced) here; a tie goes to a child.
        """
        if self._closed or self._broken:
            return None
        self._lanes = [lane for lane in self._lanes if lane.alive]
        while len(self._lanes) < self.children:
            self._lanes.append(self._spawn())
        best = min(self._lanes, key=lambda lane: lane.load)
        return best if best.load <= local_load else None

    def _spawn(self) -> Lane:
        """Start one worker: a fresh interpreter (exec, never a fork of this loop and its
        threads) running :func:`bdn.transfer.worker.serve_fd` on one end of a socket pair.

        Not ``multiprocessing``'s spawn, which re-imports the caller's ``__main__``
        in the child: a user script without an ``if __name__ == "__main__"``
        guard would run again in every worker.
        """
        ours, theirs = socket.socketpair()
        root = str(Path(bdn.__file__).resolve().parent.parent)  # The same bdn as ours.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        try:
            process = subprocess.Popen(
                [sys.executable, "-c",
                 f"from bdn.transfer.worker import serve_fd; serve_fd({theirs.fileno()})"],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        lane = Lane(process, Connection(ours.detach()))
        log.info("started data-plane worker process %d", process.pid)
        asyncio.get_running_loop().add_reader(lane.conn.fileno(), self._readable, lane)
        return lane

    # ------------------------------------------------------------------ messages

    def _readable(self, lane: Lane) -> None:
        try:
            while lane.alive and lane.conn.poll():
                self._handle(lane, lane.conn.recv())
        except (EOFError, OSError):
            self._died(lane, stopping=True)

    def _handle(self, lane: Lane, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "ready":
            lane.ready = True
            return
        pending = lane.jobs.get(msg[1])
        if pending is None:
            return
        if kind in ("landed", "ranges"):
            if pending.error is not None:
                return
            try:
                if kind == "landed":
                    pending.on_landed(msg[2], msg[3])
                else:
                    pending.on_ranges(msg[2])
            except BaseException as err:  # Fails the attempt, as it would in-process.
                pending.error = err
                self._send(lane, ("cancel", msg[1]))
            return
        del lane.jobs[msg[1]]
        if pending.finished.done():
            return
        if pending.error is not None:
            pending.finished.set_exception(pending.error)
        elif kind == "done":
            pending.finished.set_result(msg[2])
        elif kind == "unsupported":
            pending.finished.set_exception(RangesIgnored())
        else:
            pending.finished.set_exception(unpack_error(msg[2]))

    def _died(self, lane: Lane, *, stopping: bool = False) -> None:
        """The child's pipe closed: fail its jobs (retryable) and forget it."""
        if not lane.alive:
            return
        lane.alive = False
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(lane.conn.fileno())
        lane.conn.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            lane.process.wait(0.5)
        how = lane.process.returncode
        why = f"signal {-how}" if how is not None and how < 0 else f"status {how}"
        if not lane.ready and not stopping:
            self._broken = True  # It could not even start: the rest stays in-process.
        for pending in lane.jobs.values():
            if not pending.finished.done():
                pending.finished.set_exception(TransferError(
                    f"data-plane worker process {lane.process.pid} exited ({why}); "
                    "the chunk is fetched again from what was kept"
                ))
        lane.jobs.clear()
        if not (stopping or self._closed):
            log.warning("data-plane worker %s exited (%s)", lane.process.pid, why)

    def _send(self, lane: Lane, msg: tuple[Any, ...]) -> None:
        try:
            lane.conn.send(msg)
        except OSError:
            self._died(lane, stopping=True)

    # ------------------------------------------------------------------ jobs

    async def run(
        self,
        lane: Lane,
        job: Callable[[int], Job],
        on_landed: Callable[[int, int], None],
        on_ranges: Callable[[bool | None], None],
    ) -> str:
        """Run ``job(id)`` in ``lane``; the chunk's xxh3-128 hex.

        Raises what the child raised (rebuilt), :class:`RangesIgnored`, or a
        retryable ``TransferError`` when the child died. Cancelled, it tells the
        child and waits until the child reports the job over, so a retry never
        races a stale write of the same bytes.
        """
        if not lane.alive:
            raise TransferError("data-plane worker process exited before the chunk started")
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), on_landed, on_ranges)
        job_id = next(self._ids)
        lane.jobs[job_id] = pending
        j = job(job_id)
        self._send(lane, ("job", j.id, j.spec, j.dest, j.start, j.begin, j.end, j.segment,
                          j.probe))
        try:
            return await asyncio.shield(pending.finished)
        except asyncio.CancelledError:
            if lane.alive and not pending.finished.done():
                self._send(lane, ("cancel", job_id))
                with contextlib.suppress(BaseException):
                    await asyncio.wait([pending.finished])
            if pending.finished.done() and not pending.finished.cancelled():
                pending.finished.exception()  # Retrieved: no "never retrieved" warning.
            raise

    async def close(self) -> None:
        """Stop every child and wait for it (idempotent)."""
        self._closed = True
        lanes, self._lanes = self._lanes, []
        for lane in lanes:
            if lane.alive:
                self._send(lane, ("stop",))
        for lane in lanes:
            try:
                await asyncio.to_thread(lane.process.wait, _STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                lane.process.kill()
                await asyncio.to_thread(lane.process.wait)
            self._died(lane, stopping=True)
