"""The SQLite store: one file, the embedded default.

- WAL journal: one writer and any number of readers, in other processes too, at once.
- Every batch is one transaction that takes the write lock up front (``BEGIN IMMEDIATE``,
  with a busy timeout); a deferred read-then-write transaction would fail at once under
  contention instead of waiting.
- ``synchronous=NORMAL`` (the default): a committed batch survives the writer being killed
  at any moment; pass ``synchronous="FULL"`` to survive power loss too.
- Connections are per thread and per process: one opened before ``fork()`` is never used
  in the child, which opens its own.
- The statements that write and read records are :class:`~embedviz.store.sql.SQLStore`'s,
  shared with the PostgreSQL store.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from tqdm import tqdm

from embedviz.errors import NotAStoreError, StoreError, StoreOpenError, StoreVersionError
from embedviz.store import blocks
from embedviz.store.sql import SCHEMA, SQLStore

APPLICATION_ID = 0x45564253  # "EVBS": marks the file as an embedviz store
SCHEMA_VERSION = 2  # 2: the blocks tables (embedviz.store.blocks)


def _quoted(path: Path) -> str:
    """The absolute ``path`` percent-encoded, as a URL's path ("?" as %3F, "%" as %25)."""
    return quote(os.fsencode(path.absolute()), safe="/")



class SQLiteStore(SQLStore):
    """A stats store in one SQLite file (see the module docstring for its guarantees)."""

    _BY_ID = "NOT INDEXED"

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False,
                 busy_timeout: float = 30.0, synchronous: str = "NORMAL") -> None:
        super().__init__()
        self.path = Path(path)
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreOpenError(f"synchronous must be OFF, NORMAL, FULL or EXTRA (got "
                                 f"{synchronous!r})")
        self.synchronous = synchronous.upper()
        #: what open_store() takes to open it again as it is, options included (the
        #: monitor's worker process and the projection pool reopen it): the absolute path,
        #: percent-encoded, so a name holding "?", "#" or "%" reopens the same file
        options = ([] if self.synchronous == "NORMAL" else [f"synchronous={self.synchronous}"]) + (
            ["readonly=1"] if readonly else [])
        self.url = f"sqlite:///{_quoted(self.path)}" + ("?" + "&".join(options) if options else "")
        #: whether this object created the file (it did not exist): a caller that fails
        #: before recording anything may remove it again
        self.created = False
        existed = self.path.exists()
        self._immutable = False
        self._check_file()
        self._init_schema()
        self.created = self.created and not existed

    # ------------------------------------------------------------ connections
    def _check_file(self) -> None:
        if self.path.is_dir():
            raise NotAStoreError(f"{self.path} is a directory: pass a file path such as "
                                 f"{self.path / 'runs.db'}")
        # (the header is read by SQLite, in _init_schema, never by opening the file here:
        # closing any descriptor of a file drops every POSIX lock this process holds on it,
        # those of the SQLite connections already open to it included, and another process
        # then takes itself for the last one and checkpoints the WAL away under them)
        if self.path.exists() and self.path.stat().st_size > 0:
            if not self.readonly and not os.access(self.path, os.W_OK):
                raise StoreOpenError(f"{self.path} is read-only for this user: open it with "
                                     "readonly=True (a URL with ?readonly=1) to read it, or make "
                                     "it writable to record into it")
            if not self.readonly and not os.access(self.path.parent, os.W_OK) and not all(
                    os.access(self.path.parent / (self.path.name + end), os.W_OK)
                    for end in ("-wal", "-shm")):
                raise StoreOpenError(f"{self.path} is in a folder this user cannot write "
                                     f"({self.path.parent}), and a store records through files "
                                     "beside it (-wal, -shm): open it with readonly=True (a URL "
                                     "or path with ?readonly=1) to read it, or copy it to a "
                                     "writable folder to record into it")
            if self.readonly and not os.access(self.path.parent, os.W_OK) and not (
                    self.path.parent / (self.path.name + "-shm")).exists():
                self._immutable = True
            return
        if self.readonly:
            raise StoreOpenError(f"{self.path} does not exist: check the path (a store is "
                                 "created when something records into it: a StatsListener in "
                                 "a training, `embedviz demo`)")
        if not self.path.parent.exists():
            raise StoreOpenError(f"cannot create {self.path}: folder {self.path.parent} does "
                                 "not exist; create it first")
        if not os.access(self.path.parent, os.W_OK):
            raise StoreOpenError(f"cannot create {self.path}: folder {self.path.parent} is not "
                                 "writable for this user; pick another folder")

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            # never reuse a connection across fork(): open a new one in this process
            if self.readonly:
                # (immutable: a store in a folder this process cannot write, where SQLite
                # cannot make the WAL's shared-memory file; nobody can be writing it there)
                extra = "&immutable=1" if self._immutable else ""
                conn = sqlite3.connect(f"file://{_quoted(self.path)}?mode=ro{extra}", uri=True,
                                       timeout=self.busy_timeout, isolation_level=None,
                                       check_same_thread=False)
            else:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                       isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            local.conn, local.pid, local.data_version = conn, os.getpid(), None
            with self._lock:
                self._all.append((os.getpid(), conn))
        return local.conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only: nothing was written; to record "
                             "into it, open it writable: open_store(path), without "
                             "readonly=True or ?readonly=1")
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        with self._lock:  # (data_version does not count a connection's own commits)
            self._version += 1

    def _init_schema(self) -> None:
        try:
            conn = self._conn()
            # (one snapshot: another process creating the store commits its tables and its
            # application id together; read apart, they looked like a foreign database)
            conn.execute("BEGIN")
            try:
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                tables = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table'")]
            finally:
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self.close()
            if not self.readonly and "readonly" in str(exc):  # (-wal or -shm not writable)
                raise StoreOpenError(f"{self.path} cannot be written by this user ({exc}): open "
                                     "it with readonly=True (a URL or path with ?readonly=1) to "
                                     "read it") from None
            raise NotAStoreError(f"{self.path} is not an embedviz store ({exc}): pass a new "
                                 "path, or the file a StatsListener wrote") from None
        if app_id not in (0, APPLICATION_ID) or (app_id == 0 and tables):
            raise NotAStoreError(f"{self.path} is an SQLite database but not an embedviz store "
                                 f"(tables: {', '.join(tables[:5])}): pass a new path")
        if version > SCHEMA_VERSION:
            raise StoreVersionError(f"{self.path} was written by a newer embedviz (schema "
                                    f"{version}; this one reads up to {SCHEMA_VERSION}): "
                                    "upgrade embedviz (pip install -U embedviz)")
        if app_id == APPLICATION_ID and version < 2:
            if self.readonly:
                self._has_blocks = False  # (read as stored until a writer upgrades it)
                return
            self._add_blocks()
        if app_id == APPLICATION_ID or self.readonly:
            return
        deadline = time.monotonic() + self.busy_timeout
        while True:  # (the switch to WAL is refused at once, not waited for, while another
            try:     # process holds the file: ranks creating one new store at once)
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        with self._transaction() as conn:
            if conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
                return  # another process created it while we waited for the lock
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.created = True

    def _add_blocks(self) -> None:
        """Upgrade a schema-1 store: make the blocks of every series written so far."""
        with self._transaction() as conn:
            if conn.execute("PRAGMA user_version").fetchone()[0] >= 2:
                return
            for statement in blocks.schema().split(";"):
                if statement.strip():
                    conn.execute(statement)
            todo = [("points", r[0]) for r in conn.execute("SELECT DISTINCT sid FROM points")]
            todo += [("summaries", r[0]) for r in conn.execute("SELECT DISTINCT tid FROM summaries")]
            for table, sid in tqdm(todo, desc=f"upgrading {self.path.name}", unit="series",
                                   disable=None, leave=False):
                blocks.roll(conn, table, sid)
            conn.execute("PRAGMA user_version = 2")

    # ------------------------------------------------------------ writing

    def _changes(self) -> int:
        version = self._conn().execute("PRAGMA data_version").fetchone()[0]
        with self._lock:
            # another connection's commit (of this process or another) shows as a new
            # data_version of this thread's connection; a connection seen the first time may
            # have missed some, so it counts as a change too
            if self._local.data_version != version:
                self._local.data_version = version
                self._version += 1
            return self._version

