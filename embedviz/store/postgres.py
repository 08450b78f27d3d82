"""The PostgreSQL store: a team's database server, several machines writing at once.

``open_store("postgresql://user@host:5432/db")`` (any libpq URL: ``?host=/run/postgresql``
for a Unix socket, ``?sslmode=require``; a password is best kept in ``~/.pgpass`` or
``PGPASSWORD``, not in the URL). Two options of embedviz's own, after ``?`` beside libpq's:

- ``schema=NAME``: the PostgreSQL schema holding the tables (default ``embedviz``), so one
  database holds several stores and a team's own tables never meet them;
- ``readonly=1``: read without ever writing.

- The tables and statements are the SQLite store's (:class:`~embedviz.store.sql.SQLStore`),
  in PostgreSQL's types (BIGINT, DOUBLE PRECISION, BYTEA).
- Every write transaction takes one advisory lock per store first (as SQLite's writer
  takes the file's write lock), so ids grow in commit order and readers follow with the same
  cursors; reads take no lock.
- Reads are index-driven nested loops, told so per connection (see ``_conn``).
- Connections are per thread and per process (one opened before ``fork()`` is never used
  in the child), in autocommit for reads: no transaction is left open between statements.
- :meth:`changes` reads a counter each write transaction bumps.

Needs psycopg 3 (``pip install 'embedviz[postgres]'``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from embedviz.errors import (
    InvalidRecordError,
    NotAStoreError,
    StoreError,
    StoreOpenError,
    StoreVersionError,
)
from embedviz.store.sql import PARTS, RECEIPTS, SCHEMA, SQLStore

log = logging.getLogger("embedviz.store")

#: how long a write waits for a server that went away (a restart) before it fails
RECONNECT_SECONDS = 60
SCHEMA_VERSION = 2  # (the SQLite store's numbering: the same tables)
#: embedviz's own options in the URL's query; the rest is libpq's
_OPTIONS = ("schema", "readonly")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_PLACEHOLDER = re.compile(r"\?(\d*)")


def _ddl(sqlite_schema: str) -> str:
    """The SQLite schema in PostgreSQL's types: 64-bit integers and floats, BYTEA, ids
    from a sequence."""
    out = sqlite_schema.replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY")
    out = re.sub(r"\bINTEGER\b", "BIGINT", out)
    out = re.sub(r"\bREAL\b", "DOUBLE PRECISION", out)
    out = out.replace("BLOB", "BYTEA").replace(" WITHOUT ROWID", "")
    return out


def _numbered(sql: str) -> str:
    """``?`` and ``?N`` parameters as PostgreSQL's ``$N``."""
    count = 0

    def one(m: re.Match) -> str:
        nonlocal count
        if m.group(1):
            return "$" + m.group(1)
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(one, sql)


def _param(v: Any) -> Any:
    """A parameter as psycopg takes it: NaN as NULL (as SQLite stores it), numpy scalars as
    Python's."""
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return None if np.isnan(v) else float(v)
    return v


class _Connection:
    """A psycopg connection that runs the SQL store's statements (``?`` parameters)."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn
        self._sql: dict[str, str] = {}

    def _translate(self, sql: str) -> str:
        found = self._sql.get(sql)
        if found is None:
            if len(self._sql) > 2000:  # (reads of many series make statements of many shapes)
                self._sql.clear()
            found = self._sql[sql] = _numbered(sql)
        return found

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.raw.execute(self._translate(sql), [_param(v) for v in params], binary=True)

    def executemany(self, sql: str, rows: Any) -> None:
        with self.raw.cursor() as cur:
            cur.executemany(self._translate(sql), [[_param(v) for v in r] for r in rows])

    def close(self) -> None:
        self.raw.close()


def _redacted(url: str) -> str:
    """``url`` without its password (for messages and repr)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


class PostgresStore(SQLStore):
    """A stats store in a PostgreSQL database (see the module docstring)."""

    _PARTS = _ddl(PARTS)

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError:
            raise StoreOpenError("a postgresql:// store needs psycopg 3: pip install "
                                 "'embedviz[postgres]' (or pip install 'psycopg[binary]')") from None
        self._psycopg = psycopg
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in query if k in _OPTIONS}
        for k in _OPTIONS:
            if sum(1 for q, _ in query if q == k) > 1:
                raise StoreOpenError(f"{k}= is given twice in {_redacted(url)!r}: give it once")
        if parts.password:
            log.warning("embedviz: the URL of %s holds a password: it shows in process lists "
                        "(the listener's worker process is given the URL); keep it in "
                        "~/.pgpass or PGPASSWORD instead", _redacted(url))
        flag = ours.get("readonly", "0").lower()
        if flag not in _TRUE + _FALSE:
            raise StoreOpenError(f"readonly={ours['readonly']!r} in {_redacted(url)!r}: write "
                                 "readonly=1 or readonly=0")
        self.readonly = readonly or flag in _TRUE
        self.schema = ours.get("schema", "embedviz")
        if not _NAME.match(self.schema):
            raise StoreOpenError(f"schema={self.schema!r} in {_redacted(url)!r}: a schema name "
                                 "here is lower-case letters, digits and _ (at most 63), not "
                                 "starting with a digit, e.g. schema=embedviz")
        libpq = [(k, v) for k, v in query if k not in _OPTIONS]
        self._conninfo = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(libpq)))
        keep = [(k, v) for k, v in query if k != "readonly"] + (
            [("readonly", "1")] if self.readonly else [])
        #: what open_store() takes to open it again (the monitor's worker, the app's pool)
        self.url = urlunsplit(parts._replace(query=urlencode(keep)))
        #: the advisory lock of this store's writers (one per database and schema)
        self._said_away = False
        self._lock_key = zlib.crc32(f"embedviz:{self.schema}".encode()) - 2**31
        self._conn()  # (fails here, naming the way out, when the server can't be reached)
        self._init_schema()

    @property
    def label(self) -> str:
        return _redacted(self.url)

    # ------------------------------------------------------------ connections
    def _conn(self) -> _Connection:
        local = self._local
        if getattr(local, "pid", None) == os.getpid() and (local.conn.raw.closed or local.conn.raw.broken):
            self._drop(local.conn)  # (the server restarted, or the network broke: a new one)
        if getattr(local, "pid", None) != os.getpid():
            psycopg = self._psycopg
            try:
                raw = psycopg.connect(self._conninfo, autocommit=True,
                                      cursor_factory=psycopg.RawCursor, connect_timeout=10)
            except psycopg.Error as exc:
                raise StoreOpenError(
                    f"cannot connect to {self.label}: {' '.join(str(exc).split())} Check that "
                    "the server runs and the URL's host, port, user and database (psql with the "
                    "URL, less embedviz's schema= and readonly=, tells the same); a password "
                    "goes in ~/.pgpass or PGPASSWORD") from None
            raw.execute(f'SET search_path TO "{self.schema}"')
            # every read joins a short list (series, id ranges) to an index: a nested loop.
            # Where the planner cannot see how short (a range per row), it would hash the
            # whole table in parallel: a live tick of 250 series took 270 ms, not 7
            raw.execute("SET enable_hashjoin = off; SET enable_mergejoin = off; "
                        "SET max_parallel_workers_per_gather = 0")
            if self.readonly:
                raw.execute("SET default_transaction_read_only = on")
            local.conn, local.pid = _Connection(raw), os.getpid()
            with self._lock:
                self._all.append((os.getpid(), local.conn))
        return local.conn

    def _drop(self, conn: _Connection) -> None:
        """Forget this thread's broken connection."""
        with self._lock:
            self._all = [(pid, c) for pid, c in self._all if c is not conn]
        with contextlib.suppress(Exception):
            conn.close()
        self._local.pid = None

    def _write(self, records: list, receipts: list | None = None) -> int:
        """A batch, tried again on a new connection while the server is away (a restart, a
        network break) for up to RECONNECT_SECONDS: the failed try was rolled back whole."""
        delay, deadline = 0.5, time.monotonic() + RECONNECT_SECONDS
        while True:
            try:
                return super()._write(records, receipts)
            except (self._psycopg.OperationalError, StoreOpenError) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                if not self._said_away:
                    self._said_away = True
                    log.warning("embedviz: %s is away (%s); trying again for up to %d s",
                                self.label, " ".join(str(exc).split())[:200], RECONNECT_SECONDS)
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    @contextmanager
    def _transaction(self) -> Iterator[_Connection]:
        if self.readonly:
            raise StoreError(f"{_redacted(self.url)} is open read-only: nothing was written; "
                             "to record into it, open it without readonly=1")
        conn = self._conn()
        try:
            with conn.raw.transaction():
                conn.raw.execute("SELECT pg_advisory_xact_lock($1)", [self._lock_key])
                yield conn
                conn.raw.execute("UPDATE meta SET changes = changes + 1")
        except self._psycopg.DataError as exc:  # (rolled back: nothing of the batch stored)
            raise InvalidRecordError(
                f"PostgreSQL cannot hold a value of this batch ({' '.join(str(exc).split())}); "
                "nothing of it was written: a text with a NUL character (\\x00) is the usual "
                "cause, remove it from names, tags and messages") from None
        with self._lock:
            self._version += 1

    def _insert_rows(self, conn: Any, table: str, columns: tuple[str, ...], rows: list) -> None:
        """COPY: a batch's rows in one stream (an INSERT each costs the server ~3x more)."""
        with conn.raw.cursor() as cur, cur.copy(
                f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row([_param(v) for v in r])

    def _init_schema(self) -> None:
        conn = self._conn()
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
            (self.schema,)).fetchall()}
        self._receipts_ready = True  # (made with the store's tables)
        if "meta" in tables:
            self._check_version(conn)
            return
        if tables:
            raise NotAStoreError(f"schema {self.schema!r} of {_redacted(self.url)} holds tables "
                                 f"that are not an embedviz store ({', '.join(sorted(tables)[:5])}):"
                                 " pass another schema (?schema=embedviz_runs)")
        if self.readonly:
            raise StoreOpenError(f"{_redacted(self.url)} holds no embedviz store (schema "
                                 f"{self.schema!r} is empty or missing): check the URL and "
                                 "?schema=, or open it writable once to create the store")
        with conn.raw.transaction():
            conn.raw.execute("SELECT pg_advisory_xact_lock($1)", [self._lock_key])
            conn.raw.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            if conn.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = ? "
                            "AND table_name = 'meta'", (self.schema,)).fetchall():
                return  # (another process created it while we waited for the lock)
            for statement in (_ddl(SCHEMA) + ";" + _ddl(RECEIPTS)).split(";"):
                if statement.strip():
                    conn.raw.execute(statement)
            conn.raw.execute("CREATE TABLE meta (version BIGINT NOT NULL, changes BIGINT NOT NULL)")
            conn.raw.execute("INSERT INTO meta VALUES ($1, 0)", [SCHEMA_VERSION])

    def _check_version(self, conn: _Connection) -> None:
        version = conn.execute("SELECT version FROM meta").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreVersionError(f"{_redacted(self.url)} was written by a newer embedviz "
                                    f"(schema {version}; this one reads up to {SCHEMA_VERSION}): "
                                    "upgrade embedviz (pip install -U embedviz)")

    def _q(self, sql: str, params: tuple = ()) -> list[tuple]:
        """A read, tried once more on a new connection when the server cut this one (a
        restart): the app's tick starts with changes(), so its reads find a fresh one."""
        try:
            return super()._q(sql, params)
        except self._psycopg.OperationalError:
            cut = getattr(self._local, "conn", None)
            if cut is None or not (cut.raw.broken or cut.raw.closed):
                raise
            return super()._q(sql, params)

    def _changes(self) -> int:
        return int(self._q("SELECT changes FROM meta")[0][0])
