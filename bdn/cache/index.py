"""``index.db``: LRU times of blobs and the trees materialized from them.

The files under ``blobs/`` are the truth about what the cache holds; the index
only adds what a file cannot say: when a blob was last used, and which
directory trees were materialized from which blobs (a copied tree shares no
inode with its blobs, so only this record keeps them from eviction). A blob
file without a row is still a blob (its mtime stands in for ``last_used``); a
row without a file is swept by ``gc``.

Tables::

    blobs(hex PK, size, last_used REAL,
          ino, mtime_ns, proven, vouched_by)  how the file was admitted (bdn.cache.trust)
    trees(path PK, manifest_id, mode, created REAL)
    tree_blobs(path, hex)          the distinct blobs of each recorded tree

sqlite in WAL mode: readers never block the writer, and several processes on
the node share the file. Writes use ``BEGIN IMMEDIATE`` so a writer waits (up
to the busy timeout) at the start of its transaction instead of failing at
commit with "database is locked". It lists every tree path on the node, so it
is created 0600, and one readable by others is tightened when opened.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bdn.cache.lock import file_lock
from bdn.config.units import format_bytes
from bdn.errors import CacheError, InsufficientSpace

BUSY_TIMEOUT_S = 30.0
"""How long a statement waits for another process's write transaction."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs(
    hex TEXT PRIMARY KEY, size INTEGER NOT NULL, last_used REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trees(
    path TEXT PRIMARY KEY, manifest_id TEXT NOT NULL, mode TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tree_blobs(
    path TEXT NOT NULL, hex TEXT NOT NULL, PRIMARY KEY(path, hex)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tree_blobs_hex ON tree_blobs(hex);
"""

# Admission columns, added to an index.db made before they existed. NULL ``ino``:
# nothing recorded, so the blob's file is "unknown" and proven before shared use.
_ADMISSION_COLUMNS = {
    "ino": "INTEGER", "mtime_ns": "INTEGER", "proven": "INTEGER NOT NULL DEFAULT 0",
    "vouched_by": "TEXT",
}

DB_MODE = 0o600
"""Mode of a new ``index.db`` (and its ``-wal``/``-shm``): it names every tree on the node."""

QUARANTINED = "quarantined"
"""``manifest_id`` of a tree record whose files came from a blob that failed its proof:
the next materialize there rebuilds the tree instead of finding it ``unchanged``."""


@dataclass(frozen=True, slots=True)
class AdmissionRow:
    """How the blob file with inode ``ino`` and mtime ``mtime_ns`` entered the cache."""

    ino: int
    mtime_ns: int
    proven: bool
    vouched_by: str | None


@dataclass(frozen=True, slots=True)
class TreeRecord:
    """A materialized tree: where, from which manifest, and how its files were made."""

    path: Path
    manifest_id: str
    mode: str
    created: float


class CacheIndex:
    """Thread-safe access to ``index.db``; also safe across processes and forks.

    One connection per process, opened on first use and guarded by a lock, so
    any thread may call any method. A forked child never touches its parent's
    connection (sqlite forbids it): it opens its own.
    """

    def __init__(self, path: Path, init_lock: Path) -> None:
        self.path = path
        self._init_lock = init_lock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    # -- plumbing --------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Creating the schema and switching to WAL both need the write lock;
        # serializing first use across processes avoids sqlite's "database is
        # locked" on a brand-new file, which the busy timeout does not cover.
        with file_lock(self._init_lock):
            _private(self.path)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                # FULL: a tree record lost to a power cut would make the next
                # pull see "someone else's directory" at its own mount.
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
                have = {row[1] for row in conn.execute("PRAGMA table_info(blobs)")}
                for name, decl in _ADMISSION_COLUMNS.items():
                    if name not in have:
                        conn.execute(f"ALTER TABLE blobs ADD COLUMN {name} {decl}")
                for suffix in ("-wal", "-shm"):
                    _tighten(Path(f"{self.path}{suffix}"))
            except BaseException:
                conn.close()
                raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._connect()
            except sqlite3.Error as err:
                raise self._error(err) from err

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                conn = self._connect()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    # sqlite already rolled back after some errors (SQLITE_FULL among
                    # them); a second ROLLBACK would hide the real error.
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                raise self._error(err) from err

    def _error(self, err: sqlite3.Error) -> CacheError:
        code = (getattr(err, "sqlite_errorcode", None) or 0) & 0xFF  # primary result code
        if code == sqlite3.SQLITE_FULL or (
            code == sqlite3.SQLITE_IOERR and _free_bytes(self.path) < INDEX_WRITE_BYTES
        ):
            # A full disk (sqlite reports some ENOSPC as I/O errors), not a corrupt
            # file: deleting the index would lose tree records and free nothing.
            return disk_full(self.path, INDEX_WRITE_BYTES, f"node cache index {self.path}")
        return CacheError(
            f"node cache index {self.path}: {err}; if the file is corrupt, delete it "
            "(the cache rebuilds it from blobs/, only LRU times and tree records are lost)",
            path=str(self.path),
        )

    def close(self) -> None:
        """Close this process's connection; idempotent, and reopened on next use."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # -- blobs -----------------------------------------------------------------
    def put_blobs(self, rows: Iterable[tuple[str, int, float]]) -> None:
        """Insert or replace ``(hex, size, last_used)`` rows in one transaction."""
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO blobs(hex, size, last_used) VALUES (?, ?, ?) "
                "ON CONFLICT(hex) DO UPDATE SET size=excluded.size, last_used=excluded.last_used",
                rows,
            )

    def blobs(self) -> dict[str, tuple[int, float]]:
        """Every blob row: ``hex -> (size, last_used)``."""
        with self._read() as conn:
            return {h: (s, t) for h, s, t in conn.execute("SELECT hex, size, last_used FROM blobs")}

    def delete_blobs(self, hexes: Iterable[str]) -> None:
        with self._write() as conn:
            conn.executemany("DELETE FROM blobs WHERE hex = ?", ((h,) for h in hexes))

    # -- admission ---------------------------------------------------------------
    def admit(self, hex_: str, size: int, row: AdmissionRow, last_used: float) -> None:
        """Record (replacing any earlier record) how blob ``hex_``'s file was admitted."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO blobs(hex, size, last_used, ino, mtime_ns, proven, vouched_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(hex) DO UPDATE SET "
                "size=excluded.size, last_used=excluded.last_used, ino=excluded.ino, "
                "mtime_ns=excluded.mtime_ns, proven=excluded.proven, "
                "vouched_by=excluded.vouched_by",
                (hex_, size, last_used, row.ino, row.mtime_ns, int(row.proven), row.vouched_by),
            )

    def admissions(self, hexes: Iterable[str]) -> dict[str, AdmissionRow]:
        """The admission records of those of ``hexes`` that have one."""
        found: dict[str, AdmissionRow] = {}
        with self._read() as conn:
            for h in set(hexes):
                row = conn.execute("SELECT ino, mtime_ns, proven, vouched_by FROM blobs "
                                   "WHERE hex = ? AND ino IS NOT NULL", (h,)).fetchone()
                if row is not None:
                    found[h] = AdmissionRow(row[0], row[1], bool(row[2]), row[3])
        return found

    def quarantine_trees(self, hex_: str) -> list[Path]:
        """Mark every recorded tree holding blob ``hex_`` for a rebuild; returns their paths."""
        with self._write() as conn:
            paths = [p for (p,) in conn.execute(
                "SELECT path FROM tree_blobs WHERE hex = ?", (hex_,)).fetchall()]
            conn.executemany("UPDATE trees SET manifest_id = ? WHERE path = ?",
                             ((QUARANTINED, p) for p in paths))
        return [Path(p) for p in paths]

    # -- trees -----------------------------------------------------------------
    def put_tree(self, path: Path, manifest_id: str, mode: str, hexes: Iterable[str],
                 created: float) -> None:
        """Record (or re-record) the tree at ``path`` and the blobs it holds."""
        key = str(path)
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO trees(path, manifest_id, mode, created) "
                         "VALUES (?, ?, ?, ?)", (key, manifest_id, mode, created))
            conn.execute("DELETE FROM tree_blobs WHERE path = ?", (key,))
            conn.executemany("INSERT OR IGNORE INTO tree_blobs(path, hex) VALUES (?, ?)",
                             ((key, h) for h in hexes))

    def restore_tree(self, path: Path, previous: TreeRecord | None,
                     previous_hexes: Iterable[str]) -> None:
        """Put back what :meth:`tree` and :meth:`tree_blobs` returned before a failed swap."""
        if previous is None:
            self.delete_trees([path])
        else:
            self.put_tree(path, previous.manifest_id, previous.mode, previous_hexes,
                          previous.created)

    def tree(self, path: Path) -> TreeRecord | None:
        with self._read() as conn:
            row = conn.execute("SELECT path, manifest_id, mode, created FROM trees "
                               "WHERE path = ?", (str(path),)).fetchone()
        return None if row is None else TreeRecord(Path(row[0]), row[1], row[2], row[3])

    def trees(self) -> list[TreeRecord]:
        with self._read() as conn:
            rows = conn.execute("SELECT path, manifest_id, mode, created FROM trees "
                                "ORDER BY path").fetchall()
        return [TreeRecord(Path(p), m, mode, c) for p, m, mode, c in rows]

    def tree_blobs(self, path: Path) -> list[str]:
        with self._read() as conn:
            rows = conn.execute("SELECT hex FROM tree_blobs WHERE path = ?",
                                (str(path),)).fetchall()
        return [h for (h,) in rows]

    def blob_trees(self) -> dict[str, list[TreeRecord]]:
        """For every blob some recorded tree holds: ``hex -> [those trees]``."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT tb.hex, t.path, t.manifest_id, t.mode, t.created "
                "FROM tree_blobs tb JOIN trees t ON t.path = tb.path").fetchall()
        found: dict[str, list[TreeRecord]] = {}
        for h, p, m, mode, c in rows:
            found.setdefault(h, []).append(TreeRecord(Path(p), m, mode, c))
        return found

    def delete_trees(self, paths: Iterable[Path]) -> None:
        with self._write() as conn:
            for path in paths:
                conn.execute("DELETE FROM trees WHERE path = ?", (str(path),))
                conn.execute("DELETE FROM tree_blobs WHERE path = ?", (str(path),))


def _private(path: Path) -> None:
    """Create ``path`` 0600 if it is missing, else take read access from others."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, DB_MODE)
    except FileExistsError:
        _tighten(path)
    else:
        os.close(fd)


def _tighten(path: Path) -> None:
    """Drop the "others" permission bits of an existing file.

    A missing file is fine, and so is one another user owns: its owner's next
    open tightens it.
    """
    with contextlib.suppress(FileNotFoundError, PermissionError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o007:
            os.chmod(path, mode & ~0o007)


INDEX_WRITE_BYTES = 1024 * 1024
"""What an index write may need on disk (WAL frames and checkpoint), for disk-full messages."""


def disk_full(path: Path, needed: int, context: str) -> InsufficientSpace:
    """The error for ENOSPC (or SQLITE_FULL) at ``path``: the disk is full, with need/have.

    ``needed`` is the bytes the failed step still had to write; the free bytes
    are measured now. The advice is to free space: the cache's files are fine.
    """
    free = _free_bytes(path)
    return InsufficientSpace(
        f"{context}: the disk holding {path} is full: need {needed} bytes "
        f"({format_bytes(needed)}), free {free} ({format_bytes(free)}); free space on that "
        "disk (or set a smaller --max-cache-bytes / BDN_CACHE_MAX_BYTES), then pull again "
        "(verified chunks are kept)",
        needed=needed, free=free, evictable=0, path=str(path),
    )


def _free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem (0 if unknown)."""
    for where in (path, *path.parents):
        try:
            st = os.statvfs(where)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return 0
