"""The data-plane worker process: fetch chunk ranges into the destination, hash them.

Started by :class:`bdn.transfer.plane.ProcessPlane` as a fresh interpreter
(exec, never a fork of the parent's event loop and threads). It runs its own
event loop and its own HTTP connection pool, and talks to the parent over one
socket pair with small pickled tuples (``multiprocessing.connection`` framing):

parent -> worker
    ``("job", id, spec, dest, start, begin, end, segment, probe)``: fetch bytes
    ``[begin, end)`` of the object ``spec`` rebuilds (a
    :class:`~bdn.backends.base.ReaderSpec`) into the file ``dest`` (already
    created and sized by the parent) at the same offsets; the chunk starts at
    ``start`` and ``[start, begin)`` is a kept prefix, hashed back from ``dest``.
    ``("cancel", id)``; ``("stop",)``.
worker -> parent
    ``("ranges", id, supports)`` once, for a probe job, when the response shows
    whether the server honours ``Range``; ``("landed", id, pos, fetched)`` after
    each segment's ``pwritev`` returned (the file holds the chunk up to ``pos``;
    ``fetched`` bytes were read since the last message); then exactly one of
    ``("done", id, xxh3_hex)``, ``("unsupported", id)`` (ranges ignored) or
    ``("error", id, packed)`` (see :func:`pack_error`), sent only once the job
    writes nothing more.

Writes and hashes run inline on the worker's loop, one segment at a time: a
worker is one of several processes, so blocking it for a ``pwritev`` costs no
other chunk its turn, and no thread hand-off or GIL hand-over is paid per
segment. The worker exits when told to stop or when the parent's end of the
pipe closes (the parent died).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import pickle
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from bdn.backends.base import ReaderSpec
from bdn.digest import new_xxh3
from bdn.errors import TransferError
from bdn.transfer.aio import closing
from bdn.transfer.verify import hash_fd
from bdn.transfer.writes import Buffer, pwritev_all

__all__ = ["Job", "main", "pack_error", "serve_fd", "unpack_error"]


@dataclass(frozen=True, slots=True)
class Job:
    """One chunk attempt, as the parent sends it (see the module docstring)."""

    id: int
    spec: ReaderSpec
    dest: str
    start: int
    begin: int
    end: int
    segment: int
    probe: bool


class _RangesIgnored(Exception):
    """The probe job saw the server answer the whole object: the parent streams it."""


def pack_error(err: BaseException) -> tuple[str, Any]:
    """``err`` in a form that crosses the pipe and comes back as the same type.

    Pickled when that round-trips; otherwise (an exception whose ``__init__``
    takes required keywords) its class, message and attributes, rebuilt by
    :func:`unpack_error` without calling ``__init__``.
    """
    with contextlib.suppress(Exception):
        data = pickle.dumps(err)
        pickle.loads(data)
        return ("pickle", data)
    return ("parts", (type(err).__module__, type(err).__qualname__, str(err),
                      dict(getattr(err, "__dict__", {}))))


def unpack_error(packed: tuple[str, Any]) -> BaseException:
    """The exception :func:`pack_error` packed; a ``TransferError`` if it cannot be rebuilt."""
    kind, data = packed
    with contextlib.suppress(Exception):
        if kind == "pickle":
            err = pickle.loads(data)
            if isinstance(err, BaseException):
                return err
        else:
            module, name, message, attrs = data

            cls: Any = importlib.import_module(module)
            for part in name.split("."):
                cls = getattr(cls, part)
            rebuilt: BaseException = cls.__new__(cls)
            rebuilt.args = (message,)
            rebuilt.__dict__.update(attrs)
            return rebuilt
    return TransferError(f"a data-plane worker failed: {data!r:.200}")


class _Worker:
    """The worker's state on its event loop: running jobs and shared resources."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.jobs: dict[int, asyncio.Task[None]] = {}
        self.resources: dict[object, object] = {}
        self.stop = asyncio.Event()

    def send(self, msg: tuple[Any, ...]) -> None:
        try:
            self.conn.send(msg)
        except OSError:  # The parent is gone: nothing left to report to.
            self.stop.set()

    def readable(self) -> None:
        try:
            while self.conn.poll():
                self.handle(self.conn.recv())
        except (EOFError, OSError):
            self.stop.set()

    def handle(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "job":
            job = Job(*msg[1:])
            self.jobs[job.id] = asyncio.ensure_future(self.run(job))
        elif kind == "cancel":
            task = self.jobs.get(msg[1])
            if task is not None:
                task.cancel()
        elif kind == "stop":
            self.stop.set()

    async def run(self, job: Job) -> None:
        try:
            digest = await self.fetch(job)
        except asyncio.CancelledError:
            self.send(("error", job.id, pack_error(TransferError("cancelled by the parent"))))
        except _RangesIgnored:
            self.send(("unsupported", job.id))
        except Exception as err:
            self.send(("error", job.id, pack_error(err)))
        else:
            self.send(("done", job.id, digest))
        finally:
            self.jobs.pop(job.id, None)

    async def fetch(self, job: Job) -> str:
        """The chunk attempt itself; returns the whole chunk's xxh3-128 hex."""
        fd = os.open(job.dest, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        reader = None
        try:
            hasher = new_xxh3()
            if job.begin > job.start:  # A kept prefix: its hash starts from disk.
                hash_fd(fd, hasher, job.start, job.begin)
            reader = job.spec.open(self.resources)
            pos, fetched, fill = job.begin, 0, 0
            pieces: list[Buffer] = []
            probe = job.probe
            async with closing(reader.open_range(job.begin, job.end)) as stream:
                async for piece in stream:
                    if probe:
                        probe = False
                        self.send(("ranges", job.id, reader.supports_ranges))
                        if reader.supports_ranges is False:
                            raise _RangesIgnored
                    if not isinstance(piece, bytes):
                        view = memoryview(piece)
                        piece = bytes(view) if not view.readonly else view.cast("B")
                    size = len(piece)
                    fetched += size
                    if pos + fill + size > job.end:
                        raise TransferError(
                            f"reader yielded more bytes than the {job.end - pos - fill} "
                            "left in its range"
                        )
                    pieces.append(piece)
                    fill += size
                    if fill >= job.segment:
                        pos = self.land(fd, hasher, pieces, pos, fill)
                        pieces, fill = [], 0
                        self.send(("landed", job.id, pos, fetched))
                        fetched = 0
            if fill:
                pos = self.land(fd, hasher, pieces, pos, fill)
                self.send(("landed", job.id, pos, fetched))
            if pos != job.end:
                raise TransferError(f"stream ended {job.end - pos} bytes early")
            return str(hasher.hexdigest())
        finally:
            os.close(fd)
            if reader is not None:
                await reader.close()

    @staticmethod
    def land(fd: int, hasher: Any, pieces: list[Buffer], pos: int, fill: int) -> int:
        """Write one segment at ``pos`` and hash it; the new end of what is written."""
        pwritev_all(fd, pieces, pos)
        for piece in pieces:
            hasher.update(piece)
        return pos + fill

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self.readable)
        self.send(("ready", os.getpid()))
        try:
            await self.stop.wait()
        finally:
            loop.remove_reader(self.conn.fileno())
            for task in list(self.jobs.values()):
                task.cancel()
            await asyncio.gather(*self.jobs.values(), return_exceptions=True)
            for resource in self.resources.values():
                close = getattr(resource, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()


def serve_fd(fd: int) -> None:
    """The worker process's entry point: serve the parent on socket ``fd``."""
    main(Connection(fd))


def main(conn: Connection) -> None:
    """Serve the parent on ``conn`` until told to stop or the parent is gone."""
    # Ctrl-C goes to the whole process group; the parent decides and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        asyncio.run(_Worker(conn).serve())
    finally:
        conn.close()
