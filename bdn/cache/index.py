"""``index.db``: LRU times of blobs and the trees materialized from them.

The files under ``blobs/`` are the truth about what the cache holds; the index
only adds what a file cannot say: when a blob was last used, and which
directory trees were materialized from which blobs (a copied tree shares no
inode with its blobs, so only this record keeps them from eviction). A blob
file without a row is still a blob (its mtime stands in for ``last_used``); a
row without a file is swept by ``gc``.

Tables::

    blobs(hex PK, size, last_used REAL)
    trees(path PK, manifest_id, mode, created REAL)
    tree_blobs(path, hex)          the distinct blobs of each recorded tree

sqlite in WAL mode: readers never block the writer, and several processes on
the node share the file. Writes use ``BEGIN IMMEDIATE`` so a writer waits (up
to the busy timeout) at the start of its transaction instead of failing at
commit with "database is locked".
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bdn.cache.lock import file_lock
from bdn.errors import CacheError

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
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                # FULL: a tree record lost to a power cut would make the next
                # pull see "someone else's directory" at its own mount.
                conn.execute("PRAGMA synchronous=FULL")
                conn.executescript(_SCHEMA)
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
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as err:
                raise self._error(err) from err

    def _error(self, err: sqlite3.Error) -> CacheError:
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
