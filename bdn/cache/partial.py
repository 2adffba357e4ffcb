"""Blobs being fetched: ``incomplete/<hex>.part`` and its record of verified chunks.

The partial file is named by its digest, not uniquely per writer, so a pull
that crashed can be resumed by the next one. That is safe only because every
writer holds the blob's lock (``NodeCache.lock``) from :func:`open_partial`
to ``commit``/``discard``; the origin ``FileStore`` makes the opposite choice
(unique temp names, no locks) because it may live on NFS.

The record ``incomplete/<hex>.chunks`` is one JSON header line::

    {"size": 1234, "chunk_size": 67108864, "chunks_digest": "<sha256 hex>"}

(``chunks_digest`` is the SHA-256 of the expected xxh3-128 chunk digests
joined by ``\\n``), then one line per event, each appended with a single
``O_APPEND`` write: a verified chunk index (``7``), or how much of a chunk not
yet verified is written (``7:8388608:<boot id>``, the bytes from the chunk's
start; the last such line of a chunk wins, ``7:0:...`` withdraws it). A crash
can tear the last line; it is ignored. A header that does not match the request
(the manifest changed the chunking or the content) discards the partial.

Ordering: the transfer engine appends a progress line only after the
``pwrite`` of those bytes returned, so after a SIGKILL (the page cache survives
the process) a recorded prefix is always on disk. Nothing here is fsynced,
consistent with the commit path's per-boot "unflushed" markers: after a power
cut the ``.part`` may lack bytes the record claims, so prefixes recorded in an
earlier boot are dropped on open, and the engine re-verifies resumed chunks
(keep ``TransferConfig.verify_resumed_chunks`` on, the default). A resumed
prefix is verified with the rest of its chunk (xxh3-128 of the whole chunk);
on a mismatch the chunk is fetched again from its start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bdn.cache.index import CacheIndex
from bdn.cache.layout import (
    BLOB_MODE,
    PART_SUFFIX,
    RECORD_SUFFIX,
    CacheLayout,
    current_boot_id,
    digest_of_name,
)
from bdn.digest import Digest, chunk_count
from bdn.errors import CacheError

log = logging.getLogger(__name__)

_NEW_SUFFIX = ".new"  # The record being rewritten by open_partial, before its rename.


@dataclass(frozen=True, slots=True)
class PartialInfo:
    """A blob fetch in progress or abandoned, as ``bdn cache ls`` shows it.

    Attributes:
        digest: the blob being fetched.
        bytes_on_disk: blocks allocated to the ``.part`` file, in bytes (a
            preallocated file counts in full).
        done_chunks: indices of the verified chunks in the record.
        total_chunks: chunks of the whole blob, from the record's header;
            ``None`` when the record is missing or unreadable.
        size: the blob's size from the header; ``None`` likewise.
        modified: latest mtime of the ``.part`` and the record (epoch seconds).
    """

    digest: Digest
    bytes_on_disk: int
    done_chunks: frozenset[int]
    total_chunks: int | None
    size: int | None
    modified: float


def record_header(size: int, chunk_size: int, chunks: Sequence[str]) -> dict[str, Any]:
    """The header line a record for this request must start with."""
    joined = "\n".join(chunks).encode("ascii")
    return {
        "size": size,
        "chunk_size": chunk_size,
        "chunks_digest": hashlib.sha256(joined).hexdigest(),
    }


def read_record(path: Path) -> tuple[dict[str, Any] | None, set[int]]:
    """Parse a record: its header (``None`` if unreadable) and the chunk indices in it.

    Lines that are not a plain integer (the torn tail of an interrupted append,
    progress lines) are ignored; range checks are the caller's, who knows the
    chunk count.
    """
    header, done, _ = read_progress(path)
    return header, done


def read_progress(
    path: Path,
) -> tuple[dict[str, Any] | None, set[int], dict[int, tuple[int, str]]]:
    """Parse a record fully: header, verified chunks, and written prefixes.

    The prefixes map a chunk index to ``(bytes written from its start, boot id)``
    of its last progress line; a chunk that is verified has none.
    """
    try:
        text = path.read_bytes().decode("ascii", errors="replace")
    except FileNotFoundError:
        return None, set(), {}
    lines = text.split("\n")
    try:
        header = json.loads(lines[0])
    except ValueError:
        return None, set(), {}
    if not isinstance(header, dict):
        return None, set(), {}
    if not text.endswith("\n"):
        lines.pop()  # An append cut short: its index may be half written.
    done: set[int] = set()
    prefixes: dict[int, tuple[int, str]] = {}
    for line in lines[1:]:
        if line.isdigit():
            done.add(int(line))
            continue
        fields = line.split(":")
        if len(fields) == 3 and fields[0].isdigit() and fields[1].isdigit() and fields[2]:
            prefixes[int(fields[0])] = (int(fields[1]), fields[2])
    for index in done:
        prefixes.pop(index, None)
    return header, done, prefixes


class Partial:
    """The partial file of one blob, opened under that blob's lock.

    Not thread-safe on its own and not meant to be: one holder of the blob's
    lock drives it. Methods raise :class:`CacheError` for filesystem failures.

    Attributes:
        digest: the blob.
        path: ``incomplete/<hex>.part``; the transfer engine creates and
            preallocates it.
        done_chunks: chunk indices verified before this open (resume).
        partial_chunks: for chunks not verified, the bytes from the chunk's
            start written in this boot before this open (resume inside a chunk).
    """

    def __init__(
        self,
        layout: CacheLayout,
        index: CacheIndex,
        digest: Digest,
        size: int,
        done_chunks: frozenset[int],
        partial_chunks: Mapping[int, int] | None = None,
    ) -> None:
        self._layout = layout
        self._index = index
        self.digest = digest
        self.size = size
        self.path = layout.part(digest)
        self.record_path = layout.record(digest)
        self.done_chunks = done_chunks
        self.partial_chunks: Mapping[int, int] = dict(partial_chunks or {})
        self._boot = _boot_tag()
        self._record_warned = False

    def mark_done(self, index: int) -> None:
        """Append chunk ``index`` to the record; cheap and never fails the caller.

        A failed append costs only resumability (the chunk is fetched again
        after a crash), so it is logged, not raised.
        """
        self._append(f"{index}\n")

    def mark_progress(self, index: int, written: int) -> None:
        """Record that chunk ``index``'s first ``written`` bytes are in the file.

        Call it only after the ``pwrite`` of those bytes returned (see the
        module docstring); ``written=0`` withdraws the chunk's prefix (it failed
        verification). Never fails the caller, like :meth:`mark_done`.
        """
        self._append(f"{index}:{written}:{self._boot}\n")

    def _append(self, line: str) -> None:
        """One ``O_APPEND`` write of ``line`` to the record; a failure is logged once."""
        try:
            fd = os.open(self.record_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                os.write(fd, line.encode("ascii"))
            finally:
                os.close(fd)
        except OSError as err:
            if not self._record_warned:
                self._record_warned = True
                log.warning(
                    "cannot record progress of blob %s in %s (%s); the fetch goes "
                    "on but will not resume after a crash",
                    self.digest,
                    self.record_path,
                    err,
                )

    def commit(self, *, sync: bool = True) -> Path:
        """Publish the finished partial as the blob; returns the blob's path.

        A power cut must never leave a complete-looking blob with missing bytes
        (blobs are trusted by size alone). With ``sync`` the data is fsynced
        first. Without it, which keeps a multi-GB flush off the pull's critical
        path, a marker ``unflushed/<boot id>/<hex>`` is made durable *before*
        the rename; a blob whose marker names an earlier boot is re-verified
        before it is trusted again (:meth:`NodeCache.unflushed_earlier`).
        Then the blob is made 0444 and renamed into ``blobs/`` (a blob already
        there is replaced by identical content), the record is dropped and
        the blob indexed.

        Raises:
            CacheError: the partial is missing, has the wrong size, or a
                filesystem call failed.
        """
        target = self._layout.blob(self.digest)
        try:
            st = os.stat(self.path)
            if st.st_size != self.size:
                raise CacheError(
                    f"cannot commit blob {self.digest}: {self.path} has {st.st_size} bytes, "
                    f"expected {self.size}; it was changed outside BDN, fetch it again",
                    path=str(self.path),
                )
            boot = None if sync else current_boot_id()
            if boot is None:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            else:
                _mark_unflushed(self._layout.unflushed / boot, self.digest)
            os.chmod(self.path, BLOB_MODE)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, target)
            # The directory entry is not fsynced: losing the rename to a power
            # cut costs a refetch, never a wrong blob.
            self.record_path.unlink(missing_ok=True)
        except OSError as err:
            if isinstance(err, CacheError):
                raise
            raise CacheError(
                f"cannot commit blob {self.digest} into {target}: {err}", path=str(target)
            ) from err
        self._index.put_blobs([(self.digest.hex, self.size, time.time())])
        return target

    def discard(self) -> None:
        """Remove the partial and its record (missing files are fine)."""
        discard_files(self._layout, self.digest)


def discard_files(layout: CacheLayout, digest: Digest) -> None:
    """Remove every file of ``digest``'s partial; the caller holds the blob's lock."""
    record = layout.record(digest)
    for path in (layout.part(digest), record, record.with_name(record.name + _NEW_SUFFIX)):
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise CacheError(f"cannot remove {path}: {err}", path=str(path)) from err


def open_partial(
    layout: CacheLayout,
    index: CacheIndex,
    digest: Digest,
    size: int,
    chunk_size: int,
    chunks: Sequence[str],
) -> Partial:
    """Resume or start the partial of ``digest``; call only while holding its lock.

    The record is rewritten (to a sibling name, then renamed over) with only
    its valid entries, so later appends never land after a torn line.

    Raises:
        ValueError: ``chunks`` does not have one digest per chunk of ``size``.
        CacheError: the incomplete/ directory cannot be written.
    """
    if len(chunks) != chunk_count(size, chunk_size):
        raise ValueError(
            f"blob {digest}: {len(chunks)} chunk digests for {size} bytes in chunks of {chunk_size}"
        )
    header = record_header(size, chunk_size, chunks)
    record = layout.record(digest)
    try:
        layout.incomplete.mkdir(parents=True, exist_ok=True)
        found, done, prefixes = read_progress(record)
        resumable = found == header and _size_of(layout.part(digest)) == size
        if not resumable:
            if found is not None:
                log.info(
                    "discarding partial blob %s: it was started for other chunking or content",
                    digest,
                )
            discard_files(layout, digest)
            done, prefixes = set(), {}
        done = {i for i in done if 0 <= i < len(chunks)}
        kept = _valid_prefixes(prefixes, size, chunk_size, len(chunks))
        boot = _boot_tag()
        fresh = record.with_name(record.name + _NEW_SUFFIX)
        lines = [json.dumps(header, sort_keys=True)] + [str(i) for i in sorted(done)]
        lines += [f"{i}:{n}:{boot}" for i, n in sorted(kept.items())]
        fresh.write_text("\n".join(lines) + "\n", encoding="ascii")
        os.replace(fresh, record)
    except OSError as err:
        if isinstance(err, CacheError):
            raise
        raise CacheError(
            f"cannot prepare partial blob {digest} in {layout.incomplete}: {err}",
            path=str(layout.incomplete),
        ) from err
    return Partial(layout, index, digest, size, frozenset(done), kept)


def list_partials(layout: CacheLayout) -> list[PartialInfo]:
    """Every partial under ``incomplete/`` (a ``.part``, a record, or both), by digest."""
    found: dict[Digest, list[os.DirEntry[str]]] = {}
    try:
        entries = list(os.scandir(layout.incomplete))
    except FileNotFoundError:
        return []
    for entry in entries:
        for suffix in (PART_SUFFIX, RECORD_SUFFIX, RECORD_SUFFIX + _NEW_SUFFIX):
            digest = digest_of_name(entry.name, suffix)
            if digest is not None:
                found.setdefault(digest, []).append(entry)
                break
    infos = []
    for digest, files in sorted(found.items()):
        on_disk, modified = 0, 0.0
        for entry in files:
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat(follow_symlinks=False)
                modified = max(modified, st.st_mtime)
                if entry.name.endswith(PART_SUFFIX):
                    on_disk = st.st_blocks * 512
        header, done = read_record(layout.record(digest))
        size = header.get("size") if header else None
        chunk_size = header.get("chunk_size") if header else None
        total = (
            chunk_count(size, chunk_size)
            if isinstance(size, int) and isinstance(chunk_size, int) and chunk_size > 0
            else None
        )
        valid = frozenset(done if total is None else (i for i in done if i < total))
        infos.append(
            PartialInfo(
                digest, on_disk, valid, total, size if isinstance(size, int) else None, modified
            )
        )
    return infos


def _boot_tag() -> str:
    """This boot's id as progress lines carry it (``-`` where the kernel has none)."""
    return current_boot_id() or "-"


def _valid_prefixes(
    prefixes: dict[int, tuple[int, str]], size: int, chunk_size: int, count: int
) -> dict[int, int]:
    """The recorded prefixes a resume may trust: this boot's, inside their chunk.

    A prefix written in an earlier boot may never have left the page cache
    before a power cut, so it is dropped (its chunk is fetched from the start).
    """
    boot = _boot_tag()
    kept = {}
    for index, (written, when) in prefixes.items():
        length = min(chunk_size, size - index * chunk_size) if 0 <= index < count else 0
        if when == boot and 0 < written < length:
            kept[index] = written
    return kept


def _size_of(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _mark_unflushed(directory: Path, digest: Digest) -> None:
    """Durably note that ``digest`` is committed but not yet known to be on disk.

    The directory is fsynced so the marker reaches the disk before the blob's
    rename can; a crash then either loses the rename (a refetch) or keeps the
    marker (a re-verification), never a trusted torn blob.
    """
    directory.mkdir(parents=True, exist_ok=True)
    os.close(os.open(directory / digest.hex, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
