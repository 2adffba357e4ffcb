"""The mirror service's state dir: one JSON file per job, replaced atomically.

Records are rewritten at each state change and after each finished entry
(temp file, fsync, rename, directory fsync), so a restart after SIGKILL sees
every acknowledged job. A lock file keeps a second service off the same dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
from pathlib import Path

from bdn.errors import ConfigError, StoreError
from bdn.mirror.service.jobs import Job

__all__ = ["JobStore"]

log = logging.getLogger(__name__)


class JobStore:
    """One JSON file per job under ``directory/jobs``, each replaced atomically.

    A file is written under a unique temporary name, fsynced, and renamed over
    the old one, so a reader (or a restart after SIGKILL) sees the previous
    state or the new one, never half of either. Writes run in a worker thread;
    writes of one job are serialized in call order.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory / "jobs"
        self._locks: dict[str, asyncio.Lock] = {}
        self._names = itertools.count()
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create the directory, take it for this process, and sweep temp files a
        killed process left.

        Raises:
            ConfigError: the state directory cannot be created, or another live
                process holds it.
        """
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir.parent / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise ConfigError(f"cannot create {self.dir}: {err.strerror or err}; pass a "
                              "writable --state-dir", field="--state-dir") from err
        # Two services on one state dir would run every job twice and overwrite each
        # other's records. flock is released by the kernel when the holder dies, so a
        # SIGKILLed server never blocks its successor.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"another mirror-server is using {self.dir.parent}; stop it "
                              "or pass another --state-dir", field="--state-dir") from None
        self._lock_fd = fd
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the state directory (idempotent)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> list[Job]:
        """Every readable job; a corrupt record is renamed ``*.corrupt`` and skipped."""
        jobs = []
        for path in sorted(self.dir.glob("mj-*.json")):
            try:
                jobs.append(Job.from_record(json.loads(path.read_bytes())))
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("ignoring unreadable job record %s: %s", path.name, err)
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".corrupt"))
        return jobs

    async def save(self, job: Job) -> None:
        """Persist ``job`` as it is now.

        Raises:
            StoreError: the state directory cannot be written.
        """
        data = _encode(job)
        lock = self._locks.setdefault(job.id, asyncio.Lock())
        async with lock:
            try:
                await asyncio.to_thread(self._write, job.id, data)
            except OSError as err:
                raise StoreError(f"cannot write job state to {self.dir}: "
                                 f"{err.strerror or err}; check the --state-dir volume") from err

    def save_now(self, job: Job) -> None:
        """Persist ``job`` from a caller that is not on the event loop yet (start-up).

        Raises:
            StoreError: the state directory cannot be written.
        """
        data = _encode(job)
        try:
            self._write(job.id, data)
        except OSError as err:
            raise StoreError(f"cannot write job state to {self.dir}: "
                             f"{err.strerror or err}; check the --state-dir volume") from err

    async def delete(self, name: str) -> None:
        """Remove job ``name``'s record, after any write of it already asked for.

        Raises:
            StoreError: the record exists but cannot be removed.
        """
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            await asyncio.to_thread(self.delete_now, name)

    def delete_now(self, name: str) -> None:
        """Remove job ``name``'s record (start-up; the loop is not running jobs yet).

        Raises:
            StoreError: the record exists but cannot be removed.
        """
        try:
            (self.dir / f"{name}.json").unlink(missing_ok=True)
        except OSError as err:
            raise StoreError(f"cannot remove job record {name} from {self.dir}: "
                             f"{err.strerror or err}; check the --state-dir volume") from err

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.dir / f".{name}.{os.getpid()}.{next(self._names)}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / f"{name}.json")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        # The rename itself is durable only once the directory is synced; without
        # this a power loss could forget a job that was already acknowledged.
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _encode(job: Job) -> bytes:
    return json.dumps(job.to_record(), indent=1, sort_keys=True).encode()
