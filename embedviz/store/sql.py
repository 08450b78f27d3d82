"""The SQL stores' shared part: one schema and the statements both SQL backends run.

:class:`SQLStore` holds every statement that writes and reads records, in the SQL SQLite
and PostgreSQL both speak (``?`` parameters; the PostgreSQL store translates them); a
backend supplies its connections, transactions, schema set-up and :meth:`Store.changes`.

- Writers take one lock for the whole store (SQLite's write lock, a PostgreSQL advisory
  lock), so ids grow in commit order: a reader's cursor (the last id it read) never skips a
  row that commits later with a smaller id.
- A NaN is stored as NULL (SQLite's own rule, applied by the PostgreSQL store: a NaN would
  otherwise be every maximum); columns that always hold a number read NULL back as NaN.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

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

_SUMMARY_COLS = STATS  # column names in the summaries table

SCHEMA = f"""
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


#: what was written with Store.write_once: (session, worker, seq) of each record, so that a
#: record sent again (a retry after a lost reply) is not stored twice; made on first use
RECEIPTS = ("CREATE TABLE IF NOT EXISTS receipts (session TEXT NOT NULL, worker TEXT NOT NULL, "
            "seq TEXT NOT NULL, PRIMARY KEY (session, worker, seq))")


#: an embedding set's vectors beyond PART_BYTES are stored in parts (SQLite's and PostgreSQL's
#: values end at 1 GB: a million 300-dimensional vectors are 1.2 GB); made on first use
PARTS = ("CREATE TABLE IF NOT EXISTS vector_parts (key TEXT NOT NULL, part INTEGER NOT NULL, "
         "bytes BLOB NOT NULL, PRIMARY KEY (key, part))")
PART_BYTES = 256 << 20


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


#: the tables an update's values go to, and their columns
_COLUMNS = {"points": ("sid", "id", "update_id", "iteration", "wall_time", "value"),
            "summaries": ("tid", "id", "iteration", "wall_time", *STATS),
            "histograms": ("tid", "id", "iteration", "edges", "counts", "underflow", "overflow")}
_PROJECTION_COLS = ("embedding", "method", "params", "coords", "n_components", "quality",
                    "state", "progress", "iteration", "message", "created", "updated")
_REPLACE_PROJECTION = ", ".join(f"{c} = excluded.{c}" for c in _PROJECTION_COLS)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _where(key: str) -> tuple[str, str, str]:
    """Where a series key's values are stored: (table, value column, key in ``series``)."""
    stat = split_stat_key(key)
    return ("points", "value", key) if stat is None else ("summaries", stat[1], stat[0])




class SQLStore(Store):
    """What the SQL backends share (see the module docstring). A subclass sets ``readonly``
    and ``url``, calls ``super().__init__()`` and implements :meth:`_conn`,
    :meth:`_transaction`, :meth:`_changes` and ``close``."""

    #: SQL that makes the count of each worker's new updates walk the table's ids, not an
    #: index (SQLite's "NOT INDEXED"; empty where the planner picks well)
    _BY_ID = ""
    #: the vector_parts table's DDL in this backend's types
    _PARTS = PARTS
    readonly = False

    def __init__(self) -> None:
        #: let other threads have the GIL between records (a process of its own, like the
        #: monitor's worker, has no training thread to yield to: it turns this off)
        self.yield_gil = True
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
        self._receipts_ready = False
        #: connections: this thread's (_local), and every one opened, with its process id
        self._local = threading.local()
        self._all: list[tuple[int, Any]] = []

    def close(self) -> None:
        """Close this process's connections (each thread opens a new one on its next call)."""
        with self._lock:
            mine = [c for pid, c in self._all if pid == os.getpid()]
            self._all = [(pid, c) for pid, c in self._all if pid != os.getpid()]
        for conn in mine:
            conn.close()
        self._local = threading.local()

    def _conn(self) -> Any:
        """This thread's connection: ``execute(sql, params)`` returns a cursor."""
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Any]:
        """A write transaction holding the store's write lock; yields the connection."""
        raise NotImplementedError

    # ------------------------------------------------------------ writing
    def _id(self, conn: Any, pending: dict, table: str, key: tuple) -> int:
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
        found = int(row[0] if row else conn.execute(ins + " RETURNING id", key).fetchone()[0])
        pending[cache_key] = found
        return found

    def _write(self, records: list[Record], receipts: list[tuple[str, str, str] | None] | None = None) -> int:
        pending: dict[tuple, int] = {}
        touched: dict[tuple[str, int], int] = {}
        rows: dict[str, list] = {table: [] for table in _COLUMNS}
        next_id: dict[int, int] = {}
        with self._transaction() as conn:
            if receipts is not None:
                records, receipts = self._not_received(conn, records, receipts)
            for r in records:
                if self.yield_gil:
                    time.sleep(0)  # writers run beside training threads: hand the GIL over often
                if isinstance(r, Update):
                    self._write_update(conn, pending, r, touched, rows)
                elif isinstance(r, Metric):
                    wid = self._id(conn, pending, "workers", (r.session, r.worker))
                    sid = self._id(conn, pending, "series", (wid, "metric/" + r.name))
                    # (a metric's cursor: the next number of its series, read once a batch)
                    n = next_id.get(sid)
                    if n is None:
                        n = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM points WHERE "
                                         "sid = ?", (sid,)).fetchone()[0]
                    next_id[sid] = n + 1
                    rows["points"].append((sid, n, None, r.iteration, r.wall_time, r.value))
                    touched[("points", sid)] = touched.get(("points", sid), 0) + 1
                elif isinstance(r, Session):
                    conn.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO "
                                 "UPDATE SET name = coalesce(excluded.name, sessions.name), tags = excluded.tags,"
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
                    whole = np.ascontiguousarray(r.vectors, dtype=np.float32)
                    raw = whole.data.cast("B")
                    big = len(raw) > PART_BYTES
                    conn.execute("INSERT INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                                 "ON CONFLICT (key) DO NOTHING",
                                 (r.key, r.name, r.session, r.iteration, r.n, r.vectors.shape[1],
                                  codec.dumps(r.labels), b"" if big else raw,
                                  codec.dumps(r.metadata), r.created))
                    if big:
                        conn.execute(self._PARTS)
                        for part, at in enumerate(range(0, len(raw), PART_BYTES)):
                            conn.execute("INSERT INTO vector_parts VALUES (?, ?, ?) "
                                         "ON CONFLICT (key, part) DO NOTHING",
                                         (r.key, part, raw[at:at + PART_BYTES]))
                elif isinstance(r, Projection):
                    coords = None if r.coords is None else r.coords.tobytes()
                    ncomp = None if r.coords is None else r.coords.shape[1]
                    conn.execute("INSERT INTO projections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                                 " ?, ?) ON CONFLICT (id) DO UPDATE SET " + _REPLACE_PROJECTION,
                                 (r.id, r.embedding, r.method, codec.dumps(r.params), coords, ncomp,
                                  codec.dumps(r.quality), r.state, r.progress, r.iteration,
                                  r.message, r.created, r.updated))
            for table, columns in _COLUMNS.items():
                if rows[table]:
                    self._insert_rows(conn, table, columns, rows[table])
            self._make_blocks(conn, touched)
            if receipts:
                conn.executemany("INSERT INTO receipts VALUES (?, ?, ?)",
                                 [k for k in receipts if k is not None])
        self._ids.update(pending)  # only ids whose rows are committed
        return len(records)

    def _not_received(self, conn: Any, records: list[Record],
                      receipts: list[tuple[str, str, str] | None]) -> tuple[list, list]:
        """The records (and their receipts) whose receipt is not stored (in the writer's
        transaction: a retry posted while the first try is being written waits for it)."""
        if not self._receipts_ready:
            conn.execute(RECEIPTS)
            self._receipts_ready = True
        wanted: dict[tuple[str, str], list[str]] = {}
        for k in receipts:
            if k is not None:
                wanted.setdefault(k[:2], []).append(k[2])
        stored: set[tuple[str, str, str]] = set()
        for (session, worker), seqs in wanted.items():
            for i in range(0, len(seqs), 500):
                chunk = seqs[i:i + 500]
                stored.update((session, worker, r[0]) for r in conn.execute(
                    f"SELECT seq FROM receipts WHERE session = ? AND worker = ? AND seq IN "
                    f"({','.join('?' * len(chunk))})", (session, worker, *chunk)).fetchall())
        keep = [i for i, k in enumerate(receipts) if k is None or k not in stored]
        seen: set = set()  # (a receipt twice in one batch: the first is written)
        out = []
        for i in keep:
            k = receipts[i]
            if k is None or k not in seen:
                out.append(i)
                if k is not None:
                    seen.add(k)
        return [records[i] for i in out], [receipts[i] for i in out]

    def _make_blocks(self, conn: Any, touched: dict[tuple[str, int], int]) -> None:
        # a series is checked once per FANOUT rows this process wrote to it (and on its first
        # write here): rows not yet in a block are read as stored, so a late check loses nothing
        due: dict[str, list[int]] = {}
        for k, added in touched.items():
            n = self._unblocked.get(k, blocks.FANOUT - 1) + added
            if n >= blocks.FANOUT:
                due.setdefault(k[0], []).append(k[1])
                n = 0
            self._unblocked[k] = n
        for table, sids in due.items():
            blocks.roll(conn, table, sids)

    def _write_update(self, conn: Any, pending: dict, u: Update,
                      touched: dict[tuple[str, int], int], rows: dict[str, list]) -> None:
        """Insert the update; its points, summaries and histograms go to ``rows`` (inserted
        together at the end of the batch)."""
        wid = self._id(conn, pending, "workers", (u.session, u.worker))
        uid = conn.execute("INSERT INTO updates (wid, iteration, epoch, wall_time) VALUES "
                           "(?, ?, ?, ?) RETURNING id",
                           (wid, u.iteration, u.epoch, u.wall_time)).fetchone()[0]
        points = [] if u.score is None else [("score", u.score)]
        points += u.scalars.items()
        for k, v in points:
            sid = self._id(conn, pending, "series", (wid, k))
            rows["points"].append((sid, uid, uid, u.iteration, u.wall_time, v))
            touched[("points", sid)] = touched.get(("points", sid), 0) + 1
        for target, sm in u.summaries.items():
            tid = self._id(conn, pending, "series", (wid, target))
            rows["summaries"].append((tid, uid, u.iteration, u.wall_time,
                                      *(getattr(sm, c) for c in _SUMMARY_COLS)))
            touched[("summaries", tid)] = touched.get(("summaries", tid), 0) + 1
            h = sm.histogram
            if h is not None:
                rows["histograms"].append((tid, uid, u.iteration, h.edges.tobytes(),
                                           h.counts.tobytes(), h.underflow, h.overflow))

    def _insert_rows(self, conn: Any, table: str, columns: tuple[str, ...], rows: list) -> None:
        """Insert many rows into one table (a backend may have a faster way)."""
        conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                         f"({', '.join('?' * len(columns))})", rows)

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
        rows = self._q(_WORKERS_SQL.format(by_id=self._BY_ID if mark else ""), (mark,))
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

    def _embedding_rows(self, where: str, params: tuple,
                        vectors: bool = True) -> Iterator[EmbeddingSet]:
        for r in self._conn().execute(
                "SELECT key, name, session, iteration, n, dim, labels, "
                + ("vectors" if vectors else "NULL") + ", metadata, created "
                "FROM embeddings " + where + " ORDER BY created", params):
            if not vectors:
                values = np.zeros((r[4], 0), np.float32)
            elif len(r[7]) or not r[4] * r[5]:
                values = np.frombuffer(r[7], np.float32).reshape(r[4], r[5]).copy()
            else:  # (stored in parts: read into one array, a part at a time)
                values = np.empty((r[4], r[5]), np.float32)
                flat, at = values.data.cast("B"), 0
                for (chunk,) in self._conn().execute(
                        "SELECT bytes FROM vector_parts WHERE key = ? ORDER BY part", (r[0],)):
                    flat[at:at + len(chunk)] = chunk
                    at += len(chunk)
            yield EmbeddingSet.trusted(name=r[1], labels=codec.loads(r[6]), vectors=values,
                                       metadata=codec.loads(r[8]), session=r[2],
                                       iteration=r[3], created=r[9], key=r[0])

    def _embedding_labels(self, key: str) -> EmbeddingSet | None:
        return next(self._embedding_rows("WHERE key = ?", (key,), vectors=False), None)

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

