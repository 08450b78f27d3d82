"""The SQLite store: one file, the embedded default.

- WAL journal: one writer and any number of readers, in other processes too, at once.
- Every batch is one transaction that takes the write lock up front (``BEGIN IMMEDIATE``,
  with a busy timeout); a deferred read-then-write transaction would fail at once under
  contention instead of waiting.
- ``synchronous=NORMAL`` (the default): a committed batch survives the writer being killed
  at any moment; pass ``synchronous="FULL"`` to survive power loss too.
- Connections are per thread and per process: one opened before ``fork()`` is never used
  in the child, which opens its own.
- SQLite stores a NaN as NULL; columns that always hold a number read NULL back as NaN.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
from tqdm import tqdm

from embedviz.errors import NotAStoreError, StoreError, StoreOpenError, StoreVersionError
from embedviz.records import (
    FLOAT_STATS,
    INT_STATS,
    STATS,
    EmbeddingSet,
    Finding,
    Histogram,
    Metric,
    Projection,
    Record,
    Session,
    Static,
    Summary,
    Update,
    split_stat_key,
)
from embedviz.store import blocks, codec
from embedviz.store.base import (
    EmbeddingInfo,
    HistogramRecord,
    SessionInfo,
    Store,
    WorkerInfo,
    natural_key,
)
from embedviz.store.series import Series

APPLICATION_ID = 0x45564253  # "EVBS": marks the file as an embedviz store
SCHEMA_VERSION = 2  # 2: the blocks tables (embedviz.store.blocks)
_SUMMARY_COLS = STATS  # column names in the summaries table

_SCHEMA = f"""
CREATE TABLE sessions (id TEXT PRIMARY KEY, name TEXT, created REAL NOT NULL,
                       tags TEXT NOT NULL, info TEXT NOT NULL);
CREATE TABLE workers (id INTEGER PRIMARY KEY, session TEXT NOT NULL REFERENCES sessions(id),
                      worker TEXT NOT NULL, static TEXT, static_time REAL,
                      UNIQUE (session, worker));
CREATE TABLE series (id INTEGER PRIMARY KEY, wid INTEGER NOT NULL REFERENCES workers(id),
                     key TEXT NOT NULL, UNIQUE (wid, key));
CREATE TABLE updates (id INTEGER PRIMARY KEY, wid INTEGER NOT NULL REFERENCES workers(id),
                      iteration INTEGER NOT NULL, epoch INTEGER, wall_time REAL NOT NULL);
CREATE INDEX updates_by_worker ON updates (wid, iteration);
-- Rows of one series lie together (clustered by series id), so reading a series of
-- 100,000 iterations touches its own pages only. ``id`` is the series' cursor: the update's
-- id for update values, the next number in the series for metrics.
CREATE TABLE points (sid INTEGER NOT NULL REFERENCES series(id), id INTEGER NOT NULL,
                     update_id INTEGER, iteration INTEGER NOT NULL, wall_time REAL NOT NULL,
                     value REAL, PRIMARY KEY (sid, id)) WITHOUT ROWID;
CREATE TABLE summaries (tid INTEGER NOT NULL REFERENCES series(id), id INTEGER NOT NULL,
                        iteration INTEGER NOT NULL, wall_time REAL NOT NULL,
                        {", ".join(c + (" INTEGER" if c in INT_STATS else " REAL") for c in _SUMMARY_COLS)}, PRIMARY KEY (tid, id)) WITHOUT ROWID;
CREATE TABLE histograms (tid INTEGER NOT NULL REFERENCES series(id), id INTEGER NOT NULL,
                         iteration INTEGER NOT NULL, edges BLOB NOT NULL, counts BLOB NOT NULL,
                         underflow INTEGER NOT NULL, overflow INTEGER NOT NULL,
                         PRIMARY KEY (tid, id)) WITHOUT ROWID;
CREATE TABLE findings (id INTEGER PRIMARY KEY, wid INTEGER NOT NULL REFERENCES workers(id),
                       iteration INTEGER NOT NULL, check_id TEXT NOT NULL,
                       severity TEXT NOT NULL, layer TEXT, message TEXT NOT NULL,
                       detail TEXT NOT NULL, wall_time REAL NOT NULL);
CREATE TABLE embeddings (key TEXT PRIMARY KEY, name TEXT NOT NULL,
                         session TEXT REFERENCES sessions(id), iteration INTEGER,
                         n INTEGER NOT NULL, dim INTEGER NOT NULL, labels TEXT NOT NULL,
                         vectors BLOB NOT NULL, metadata TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE projections (id TEXT PRIMARY KEY, embedding TEXT NOT NULL REFERENCES embeddings(key),
                          method TEXT NOT NULL, params TEXT NOT NULL, coords BLOB,
                          n_components INTEGER, quality TEXT NOT NULL, state TEXT NOT NULL,
                          progress REAL NOT NULL, iteration INTEGER NOT NULL,
                          message TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
""" + blocks.schema()


#: each worker's iteration range from the (wid, iteration) index, O(log n) each, and how many
#: updates it has beyond update id ? with the last one's wall time: a pass over those only
#: (by_id: "NOT INDEXED" to walk the ids after ?; the first count, of every update, walks
#: the index, narrower than the table)
_WORKERS_SQL = """
SELECT w.id, w.session, w.worker,
       (SELECT min(iteration) FROM updates WHERE wid = w.id),
       (SELECT max(iteration) FROM updates WHERE wid = w.id),
       c.n, c.last, (SELECT wall_time FROM updates WHERE id = c.last), w.static IS NOT NULL
FROM workers w LEFT JOIN (SELECT wid, count(*) AS n, max(id) AS last FROM updates {by_id}
                          WHERE id > ? GROUP BY wid) c ON c.wid = w.id
ORDER BY w.worker"""


def _quoted(path: Path) -> str:
    """The absolute ``path`` percent-encoded, as a URL's path ("?" as %3F, "%" as %25)."""
    return quote(os.fsencode(path.absolute()), safe="/")


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _where(key: str) -> tuple[str, str, str]:
    """Where a series key's values are stored: (table, value column, key in ``series``)."""
    stat = split_stat_key(key)
    return ("points", "value", key) if stat is None else ("summaries", stat[1], stat[0])


class SQLiteStore(Store):
    """A stats store in one SQLite file (see the module docstring for its guarantees)."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False,
                 busy_timeout: float = 30.0, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        #: let other threads have the GIL between records (a process of its own, like the
        #: monitor's worker, has no training thread to yield to: it turns this off)
        self.yield_gil = True
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
        self._local = threading.local()
        self._all: list[tuple[int, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        self._ids: dict[tuple, int] = {}  # committed worker and series ids
        #: rows this process wrote to a series since it last made that series' blocks
        self._unblocked: dict[tuple[str, int], int] = {}
        self._has_blocks = True
        #: changes(): bumped by this object's commits and by other connections' commits seen
        self._version = 0
        #: sessions(): (the last update id counted, {worker id: (updates, last wall time)}),
        #: so each call counts only the updates written since (ids only grow: no deletes)
        self._counted: tuple[int, dict[int, tuple[int, float]]] = (0, {})
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
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")]
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
        conn.execute("PRAGMA journal_mode = WAL")
        with self._transaction() as conn:
            if conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
                return  # another process created it while we waited for the lock
            for statement in _SCHEMA.split(";"):
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

    def close(self) -> None:
        with self._lock:
            mine = [c for pid, c in self._all if pid == os.getpid()]
            self._all = [(pid, c) for pid, c in self._all if pid != os.getpid()]
        for conn in mine:
            conn.close()
        self._local = threading.local()

    # ------------------------------------------------------------ writing
    def _id(self, conn: sqlite3.Connection, pending: dict, table: str, key: tuple) -> int:
        cache_key = (table,) + key
        found = self._ids.get(cache_key) or pending.get(cache_key)
        if found:
            return found
        if table == "workers":
            sel = "SELECT id FROM workers WHERE session = ? AND worker = ?"
            ins = "INSERT INTO workers (session, worker) VALUES (?, ?)"
        else:
            sel = "SELECT id FROM series WHERE wid = ? AND key = ?"
            ins = "INSERT INTO series (wid, key) VALUES (?, ?)"
        row = conn.execute(sel, key).fetchone()
        # (an INSERT always sets lastrowid: int() of a None would fail loudly, not store id 0)
        found = int(row[0] if row else conn.execute(ins, key).lastrowid)  # type: ignore[arg-type]
        pending[cache_key] = found
        return found

    def _write(self, records: list[Record]) -> None:
        pending: dict[tuple, int] = {}
        touched: dict[tuple[str, int], int] = {}
        with self._transaction() as conn:
            for r in records:
                if self.yield_gil:
                    time.sleep(0)  # writers run beside training threads: hand the GIL over often
                if isinstance(r, Update):
                    self._write_update(conn, pending, r, touched)
                elif isinstance(r, Metric):
                    wid = self._id(conn, pending, "workers", (r.session, r.worker))
                    sid = self._id(conn, pending, "series", (wid, "metric/" + r.name))
                    conn.execute("INSERT INTO points (sid, id, update_id, iteration, wall_time, value)"
                                 " SELECT ?, coalesce(max(id), 0) + 1, NULL, ?, ?, ? FROM points "
                                 "WHERE sid = ?", (sid, r.iteration, r.wall_time, r.value, sid))
                    touched[("points", sid)] = touched.get(("points", sid), 0) + 1
                elif isinstance(r, Session):
                    conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO "
                                 "UPDATE SET name = coalesce(excluded.name, name), tags = excluded.tags,"
                                 " info = excluded.info",
                                 (r.id, r.name, r.created, codec.dumps(r.tags), codec.dumps(r.info)))
                elif isinstance(r, Static):
                    wid = self._id(conn, pending, "workers", (r.session, r.worker))
                    conn.execute("UPDATE workers SET static = ?, static_time = ? WHERE id = ?",
                                 (codec.dumps(r.info), r.wall_time, wid))
                elif isinstance(r, Finding):
                    wid = self._id(conn, pending, "workers", (r.session, r.worker))
                    conn.execute("INSERT INTO findings (wid, iteration, check_id, severity, layer,"
                                 " message, detail, wall_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (wid, r.iteration, r.check, r.severity, r.layer, r.message,
                                  codec.dumps(r.detail), r.wall_time))
                elif isinstance(r, EmbeddingSet):
                    conn.execute("INSERT OR IGNORE INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 (r.key, r.name, r.session, r.iteration, r.n, r.vectors.shape[1],
                                  codec.dumps(r.labels), r.vectors.tobytes(),
                                  codec.dumps(r.metadata), r.created))
                elif isinstance(r, Projection):
                    coords = None if r.coords is None else r.coords.tobytes()
                    ncomp = None if r.coords is None else r.coords.shape[1]
                    conn.execute("INSERT OR REPLACE INTO projections VALUES "
                                 "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 (r.id, r.embedding, r.method, codec.dumps(r.params), coords, ncomp,
                                  codec.dumps(r.quality), r.state, r.progress, r.iteration,
                                  r.message, r.created, r.updated))
            self._make_blocks(conn, touched)
        self._ids.update(pending)  # only ids whose rows are committed

    def _make_blocks(self, conn: sqlite3.Connection, touched: dict[tuple[str, int], int]) -> None:
        # a series is checked once per FANOUT rows this process wrote to it (and on its first
        # write here): rows not yet in a block are read as stored, so a late check loses nothing
        for k, added in touched.items():
            n = self._unblocked.get(k, blocks.FANOUT - 1) + added
            if n >= blocks.FANOUT:
                blocks.roll(conn, *k)
                n = 0
            self._unblocked[k] = n

    def _write_update(self, conn: sqlite3.Connection, pending: dict, u: Update,
                      touched: dict[tuple[str, int], int]) -> None:
        wid = self._id(conn, pending, "workers", (u.session, u.worker))
        uid = conn.execute("INSERT INTO updates (wid, iteration, epoch, wall_time) "
                           "VALUES (?, ?, ?, ?)", (wid, u.iteration, u.epoch, u.wall_time)).lastrowid
        points = [] if u.score is None else [("score", u.score)]
        points += u.scalars.items()
        rows = [(self._id(conn, pending, "series", (wid, k)), uid, uid, u.iteration, u.wall_time, v)
                for k, v in points]
        conn.executemany("INSERT INTO points (sid, id, update_id, iteration, wall_time, value) "
                         "VALUES (?, ?, ?, ?, ?, ?)", rows)
        for r in rows:
            touched[("points", r[0])] = touched.get(("points", r[0]), 0) + 1
        stats, hists = [], []
        for target, sm in u.summaries.items():
            tid = self._id(conn, pending, "series", (wid, target))
            stats.append((tid, uid, u.iteration, u.wall_time, *(getattr(sm, c) for c in _SUMMARY_COLS)))
            h = sm.histogram
            if h is not None:
                hists.append((tid, uid, u.iteration, h.edges.tobytes(), h.counts.tobytes(),
                              h.underflow, h.overflow))
        for r in stats:
            touched[("summaries", r[0])] = touched.get(("summaries", r[0]), 0) + 1
        if stats:
            conn.executemany(f"INSERT INTO summaries (tid, id, iteration, wall_time, "
                             f"{', '.join(_SUMMARY_COLS)}) VALUES "
                             f"({', '.join('?' * (len(_SUMMARY_COLS) + 4))})", stats)
        if hists:
            conn.executemany("INSERT INTO histograms VALUES (?, ?, ?, ?, ?, ?, ?)", hists)

    # ------------------------------------------------------------ reading
    def _q(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self._conn().execute(sql, params).fetchall()

    def _session_ids(self, ids: set[str]) -> set[str]:
        wanted = list(ids)
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            found.update(r[0] for r in self._q(
                f"SELECT id FROM sessions WHERE id IN ({','.join('?' * len(chunk))})", tuple(chunk)))
        return found

    def _session(self, session_id: str) -> Session:
        r = self._q("SELECT id, name, created, tags, info FROM sessions WHERE id = ?", (session_id,))[0]
        return Session(r[0], r[1], r[2], codec.loads(r[3]), codec.loads(r[4]))

    def _sessions(self) -> list[SessionInfo]:
        out = {r[0]: SessionInfo(r[0], r[1], r[2], codec.loads(r[3]), codec.loads(r[4]))
               for r in self._q("SELECT id, name, created, tags, info FROM sessions ORDER BY created, id")}
        with self._lock:
            mark, counted = self._counted
        rows = self._q(_WORKERS_SQL.format(by_id="NOT INDEXED" if mark else ""), (mark,))
        counted = self._count_updates(mark, counted, rows)
        for wid, session, worker, first, last, _, _, _, static in rows:
            n, wall = counted.get(wid, (0, None))
            if session in out:  # (not a session created between the two statements)
                out[session].workers.append(WorkerInfo(worker, first, last, n, wall, bool(static)))
        for info in out.values():
            info.workers.sort(key=lambda w: natural_key(w.worker))
        return list(out.values())

    def _count_updates(self, mark: int, counted: dict[int, tuple[int, float]],
                       rows: list[tuple]) -> dict[int, tuple[int, float]]:
        """The counts kept (up to update id ``mark``) plus the updates beyond it in ``rows``
        (of _WORKERS_SQL); kept for the next call."""
        counted = dict(counted)
        for wid, _, _, _, _, n_new, last_id, wall, _ in rows:
            if n_new:
                counted[wid] = (counted.get(wid, (0, 0.0))[0] + n_new, wall)
                mark = max(mark, last_id)
        with self._lock:  # (another thread may have counted further meanwhile: keep the further)
            if mark > self._counted[0]:
                self._counted = (mark, counted)
        return counted

    def _worker_names(self, session: str) -> list[str] | None:
        rows = self._q("SELECT w.worker FROM sessions s LEFT JOIN workers w ON w.session = s.id "
                       "WHERE s.id = ? ORDER BY w.worker", (session,))
        return None if not rows else sorted((r[0] for r in rows if r[0] is not None), key=natural_key)

    def _wid(self, session: str, worker: str) -> int:
        """The worker's id, -1 if it has none (ids never change: a found one is kept)."""
        cached = self._ids.get(("workers", session, worker))
        if cached:
            return cached
        rows = self._q("SELECT id FROM workers WHERE session = ? AND worker = ?", (session, worker))
        if not rows:
            return -1
        self._ids[("workers", session, worker)] = rows[0][0]
        return rows[0][0]

    def _series_ids(self, wid: int, keys: set[str]) -> dict[str, int]:
        """Stored series ids of a worker's ``keys`` (one statement for those not seen before)."""
        found = {k: self._ids[("series", wid, k)] for k in keys if ("series", wid, k) in self._ids}
        todo = sorted(keys - set(found))
        for i in range(0, len(todo), 500):
            chunk = todo[i:i + 500]
            for key, sid in self._q(f"SELECT key, id FROM series WHERE wid = ? AND key IN "
                                    f"({','.join('?' * len(chunk))})", (wid, *chunk)):
                found[key] = self._ids[("series", wid, key)] = sid
        return found

    def _static(self, session: str, worker: str) -> dict | None:
        rows = self._q("SELECT static FROM workers WHERE id = ?", (self._wid(session, worker),))
        return codec.loads(rows[0][0]) if rows and rows[0][0] else None

    def _series_keys(self, session: str, worker: str) -> list[str]:
        keys = []
        for (key,) in self._q("SELECT key FROM series WHERE wid = ?", (self._wid(session, worker),)):
            if key.partition("/")[0] in ("param", "gradient", "update", "activation"):
                keys += [f"{key}/{stat}" for stat in STATS]
            else:
                keys.append(key)
        return sorted(keys)

    def _read_series(self, session: str, worker: str, key: str, since: int,
                     limit: int | None, max_points: int | None, start: int | None,
                     stop: int | None) -> Series:
        if limit is None:
            return self._read_many(session, worker, [key], {key: since}, max_points, start,
                                   stop)[key]
        table, column, series_key = _where(key)
        sid = self._series_ids(self._wid(session, worker), {series_key}).get(series_key)
        if sid is None:
            return Series.empty(key, since)
        rows = self._q(f"SELECT id, iteration, wall_time, {column} FROM {table} WHERE "
                       f"{blocks.TABLES[table][1]} = ? AND id > ? AND iteration >= ? AND "
                       f"iteration <= ? ORDER BY id LIMIT {int(limit)}",
                       (sid, since, blocks.LOWEST if start is None else start,
                        blocks.HIGHEST if stop is None else stop))
        if not rows:
            return Series.empty(key, since)
        arr = np.array(rows, dtype=np.float64)  # NULL (a stored NaN) becomes NaN
        return Series(key, arr[:, 1].astype(np.int64), arr[:, 3], arr[:, 2], int(rows[-1][0]),
                      arr[:, 0].astype(np.int64))

    def _read_many(self, session: str, worker: str, keys: list[str], since: dict[str, int],
                   max_points: int | None, start: int | None, stop: int | None) -> dict[str, Series]:
        """At most three statements for any number of keys (embedviz.store.blocks), and one
        to look up the series ids this object has not seen before."""
        where = {k: _where(k) for k in keys}
        sids = self._series_ids(self._wid(session, worker), {w[2] for w in where.values()})
        wants = [blocks.Want(k, table, sids[skey], column, since[k])
                 for k, (table, column, skey) in where.items() if skey in sids]
        got = blocks.read_many(self._conn(), wants, start=start, stop=stop,
                               max_points=max_points, use_blocks=self._has_blocks)
        return {k: got[k] if k in got else Series.empty(k, since[k]) for k in keys}

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

    def _read_histograms(self, session: str, worker: str, target: str, start: int | None,
                         stop: int | None) -> list[HistogramRecord]:
        sql = ("SELECT h.iteration, m.wall_time, h.edges, h.counts, h.underflow, h.overflow "
               "FROM histograms h JOIN series s ON s.id = h.tid JOIN summaries m ON "
               "m.tid = h.tid AND m.id = h.id WHERE s.wid = ? AND s.key = ? AND "
               "h.iteration >= ? AND h.iteration <= ? ORDER BY h.id")
        rows = self._q(sql, (self._wid(session, worker), target,
                             -1 if start is None else start, 2**62 if stop is None else stop))
        return [HistogramRecord(r[0], r[1], Histogram(np.frombuffer(r[2], np.float64),
                                                      np.frombuffer(r[3], np.int64), r[4], r[5]))
                for r in rows]

    def _finding(self, r: tuple) -> Finding:
        return Finding(session=r[0], worker=r[1], iteration=r[2], check=r[3], severity=r[4],
                       layer=r[5], message=r[6], detail=codec.loads(r[7]), wall_time=r[8])

    _FINDING_SQL = ("SELECT w.session, w.worker, f.iteration, f.check_id, f.severity, f.layer, "
                    "f.message, f.detail, f.wall_time, f.id FROM findings f JOIN workers w ON "
                    "w.id = f.wid")

    def _findings(self, session: str | None, since: int) -> list[tuple[int, Finding]]:
        sql = self._FINDING_SQL + " WHERE f.id > ?" + (" AND w.session = ?" if session else "")
        rows = self._q(sql + " ORDER BY f.id", (since, session) if session else (since,))
        return [(r[9], self._finding(r)) for r in rows]

    def _has_embedding(self, key: str) -> bool:
        return bool(self._q("SELECT 1 FROM embeddings WHERE key = ?", (key,)))

    def _embeddings(self, session: str | None) -> list[EmbeddingInfo]:
        sql = "SELECT key, name, n, dim, session, iteration, created FROM embeddings"
        rows = self._q(sql + " WHERE session = ? ORDER BY created" if session else
                       sql + " ORDER BY created", (session,) if session else ())
        return [EmbeddingInfo(*r) for r in rows]

    def _embedding_rows(self, where: str, params: tuple) -> Iterator[EmbeddingSet]:
        for r in self._conn().execute(
                "SELECT key, name, session, iteration, n, dim, labels, vectors, metadata, created "
                "FROM embeddings " + where + " ORDER BY created", params):
            vectors = np.frombuffer(r[7], np.float32).reshape(r[4], r[5]).copy()
            yield EmbeddingSet(name=r[1], labels=codec.loads(r[6]), vectors=vectors,
                               metadata=codec.loads(r[8]), session=r[2], iteration=r[3],
                               created=r[9], key=r[0])

    def _embedding(self, key: str) -> EmbeddingSet | None:
        return next(self._embedding_rows("WHERE key = ?", (key,)), None)

    def _projection_rows(self, where: str, params: tuple) -> list[Projection]:
        out = []
        for r in self._q("SELECT id, embedding, method, params, coords, n_components, quality, "
                         "state, progress, iteration, message, created, updated FROM projections "
                         + where + " ORDER BY created", params):
            coords = None if r[4] is None else np.frombuffer(r[4], np.float32).reshape(-1, r[5]).copy()
            out.append(Projection(id=r[0], embedding=r[1], method=r[2], params=codec.loads(r[3]),
                                  coords=coords, quality=codec.loads(r[6]), state=r[7],
                                  progress=r[8], iteration=r[9], message=r[10], created=r[11],
                                  updated=r[12]))
        return out

    def _projections(self, embedding: str | None) -> list[Projection]:
        if embedding is None:
            return self._projection_rows("", ())
        return self._projection_rows("WHERE embedding = ?", (embedding,))

    def _projection(self, projection_id: str) -> Projection | None:
        found = self._projection_rows("WHERE id = ?", (projection_id,))
        return found[0] if found else None

    def _iteration_index(self, session: str, worker: str) -> set[tuple]:
        wid = self._wid(session, worker)
        index: set[tuple] = {("update", r[0]) for r in self._q(
            "SELECT iteration FROM updates WHERE wid = ?", (wid,))}
        index |= {("metric", r[0], r[1][len("metric/"):]) for r in self._q(
            "SELECT p.iteration, s.key FROM points p JOIN series s ON s.id = p.sid "
            "WHERE s.wid = ? AND s.key LIKE 'metric/%'", (wid,))}
        index |= {("finding", r[0], r[1], r[2]) for r in self._q(
            "SELECT iteration, check_id, layer FROM findings WHERE wid = ?", (wid,))}
        return index

    def _iter_records(self, session: str | None) -> Iterator[Record]:
        sessions = [s for s in self._sessions() if session is None or s.id == session]
        for info in sessions:
            yield Session(info.id, info.name, info.created, info.tags, info.info)
            for (wid, worker, static, static_time) in self._q(
                    "SELECT id, worker, static, static_time FROM workers WHERE session = ? "
                    "ORDER BY worker", (info.id,)):
                if static is not None:
                    yield Static(info.id, worker, codec.loads(static), static_time)
                yield from self._iter_updates(info.id, worker, wid)
                for r in self._q("SELECT p.iteration, p.wall_time, p.value, s.key FROM points p "
                                 "JOIN series s ON s.id = p.sid WHERE s.wid = ? AND "
                                 "s.key LIKE 'metric/%' ORDER BY p.sid, p.id", (wid,)):
                    yield Metric(info.id, r[3][len("metric/"):], _nan(r[2]), r[0], worker, r[1])
                for r in self._q(self._FINDING_SQL + " WHERE f.wid = ? ORDER BY f.id", (wid,)):
                    yield self._finding(r)
        keys = set()
        where, params = ("", ()) if session is None else ("WHERE session = ?", (session,))
        for emb in self._embedding_rows(where, params):
            keys.add(emb.key)
            yield emb
        for p in self._projections(None):
            if p.embedding in keys:
                yield p

    def _iter_updates(self, session: str, worker: str, wid: int, chunk: int = 1000) -> Iterator[Update]:
        series = self._q("SELECT id, key FROM series WHERE wid = ? AND key NOT LIKE 'metric/%'", (wid,))
        names = dict(series)
        ids = ",".join(str(i) for i in names) or "-1"
        cols = ", ".join(_SUMMARY_COLS)
        last = 0
        while True:
            ups = self._q("SELECT id, iteration, epoch, wall_time FROM updates WHERE wid = ? AND "
                          "id > ? ORDER BY id LIMIT ?", (wid, last, chunk))
            if not ups:
                return
            lo, hi = ups[0][0], ups[-1][0]
            span = f"IN ({ids}) AND id BETWEEN {lo} AND {hi}"
            points: dict[int, list] = {}
            for uid, sid, value in self._q(f"SELECT id, sid, value FROM points WHERE sid {span}"):
                points.setdefault(uid, []).append((names[sid], _nan(value)))
            hists = {(r[0], r[1]): Histogram(np.frombuffer(r[2], np.float64),
                                             np.frombuffer(r[3], np.int64), r[4], r[5])
                     for r in self._q("SELECT id, tid, edges, counts, underflow, overflow FROM "
                                      f"histograms WHERE tid {span}")}
            summaries: dict[int, dict] = {}
            for r in self._q(f"SELECT id, tid, {cols} FROM summaries WHERE tid {span} "
                             "ORDER BY id, tid"):
                values = dict(zip(_SUMMARY_COLS, r[2:]))
                for c in FLOAT_STATS:
                    values[c] = _nan(values[c])
                summaries.setdefault(r[0], {})[names[r[1]]] = Summary(
                    **values, histogram=hists.get((r[0], r[1])))
            for uid, iteration, epoch, wall_time in ups:
                pts = dict(points.get(uid, []))
                score = pts.pop("score", None)
                yield Update(session, worker, iteration, score=score, epoch=epoch,
                             wall_time=wall_time, scalars=pts, summaries=summaries.get(uid, {}))
            last = hi
