"""A local directory as a weights source (``bdn mirror ./my-model``)."""

from __future__ import annotations

import asyncio
import builtins
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from bdn.backends.base import RangeReader, SourceObject
from bdn.backends.local.reader import LocalFileReader
from bdn.config.weights import WeightsEntry
from bdn.errors import ManifestInvalid, SourceError, SourceNotFound
from bdn.manifest import validate_path


class LocalSource:
    """Every regular file under ``root``, as :class:`SourceObject` s sorted by path.

    Symlinks that stay inside ``root`` are followed (the file is listed under
    the link's path); one that leads outside is refused, so mirroring a
    directory never silently copies files from elsewhere on the machine.
    Sockets, fifos and devices are refused too: their "content" is not a file.

    ``identity`` changes whenever the content may have (path, size, mtime,
    inode, ctime), so an unchanged tree re-mirrors without reading a byte.
    """

    kind = "local"

    def __init__(self, root: Path, uri: str) -> None:
        self.root = Path(root).expanduser()
        self.uri = uri
        # Where list() found each path, so reader() opens the file that was
        # listed even if a symlink is changed in between.
        self._real: dict[str, str] = {}

    async def resolve(self) -> str | None:
        """A directory has no revision to pin; returns ``None``."""
        return None

    async def list(self) -> list[SourceObject]:
        """Walk the tree (in a worker thread).

        Raises:
            SourceNotFound: ``root`` is missing or not a directory.
            SourceError: a symlink escapes ``root`` or dangles, a loop of
                symlinks, a special file, a name that is not a valid manifest
                path, or an unreadable directory.
        """
        walk = await asyncio.to_thread(self._walk)
        self._real = {entry.path: entry.real for entry in walk}
        return [entry.obj for entry in walk]

    def reader(self, obj: SourceObject) -> RangeReader:
        """A reader of ``obj``'s file (its resolved target for a symlink)."""
        real = self._real.get(obj.path)
        return LocalFileReader(Path(real) if real else self.root / obj.path, obj.size)

    async def close(self) -> None:
        """Nothing to release; idempotent."""

    def _walk(self) -> builtins.list[_Found]:
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            raise SourceNotFound(f"source directory {self.root} does not exist") from None
        except OSError as err:
            raise SourceError(f"cannot read source directory {self.root}: "
                              f"{err.strerror or err}") from err
        if not stat.S_ISDIR(st.st_mode):
            raise SourceNotFound(f"source {self.root} is not a directory; point it at the "
                                 "directory that holds the weights")
        walker = _Walker(os.path.realpath(self.root))
        walker.walk(walker.root_real, "", frozenset({walker.root_real}))
        return sorted(walker.found, key=lambda entry: entry.path)


@dataclass(frozen=True, slots=True)
class _Found:
    path: str
    real: str
    obj: SourceObject


@dataclass(slots=True)
class _Walker:
    root_real: str
    found: list[_Found] = field(default_factory=list)

    def walk(self, directory: str, rel: str, ancestors: frozenset[str]) -> None:
        """List ``directory`` (a real path) whose files appear under ``rel``."""
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError as err:
            raise SourceError(f"cannot list {directory}: {err.strerror or err}") from err
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            real = self._target(entry) if entry.is_symlink() else entry.path
            st = _stat(real, entry.path)
            if stat.S_ISDIR(st.st_mode):
                if real in ancestors:
                    raise SourceError(f"symlink loop: {entry.path} leads back to {real}; "
                                      "remove the link")
                self.walk(real, path, ancestors | {real})
            elif stat.S_ISREG(st.st_mode):
                self.found.append(_Found(path, real, _object(path, real, st)))
            else:
                raise SourceError(
                    f"{entry.path} is not a regular file (socket, fifo or device); "
                    "remove it or mirror a directory without it"
                )

    def _target(self, entry: os.DirEntry[str]) -> str:
        target = os.path.realpath(entry.path)
        inside = target == self.root_real or target.startswith(self.root_real + os.sep)
        if not inside:
            raise SourceError(
                f"{entry.path} -> {target}: refusing symlink that escapes the source "
                "directory; copy the file in or mirror the target directory"
            )
        return target


def _stat(real: str, shown: str) -> os.stat_result:
    try:
        return os.stat(real)
    except FileNotFoundError:
        raise SourceError(f"{shown} is a broken symlink (its target {real} does not exist); "
                          "fix or remove it") from None
    except OSError as err:
        raise SourceError(f"cannot stat {shown}: {err.strerror or err}") from err


def _object(path: str, real: str, st: os.stat_result) -> SourceObject:
    try:
        validate_path(path)
    except ManifestInvalid as err:
        raise SourceError(f"cannot mirror {real}: {err}; rename the file") from err
    identity = f"local:{real}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"
    return SourceObject(path=path, size=st.st_size, identity=identity, etag=None)



def local_source_from_entry(entry: WeightsEntry) -> LocalSource:
    """Build the :class:`LocalSource` for a weights entry naming a local directory."""
    parsed = entry.parsed_source
    assert parsed.path is not None
    return LocalSource(Path(parsed.path), parsed.uri)
