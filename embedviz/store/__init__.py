"""The shared stats store: one interface, several backends, picked by a URL.

:func:`open_store` opens one (its docstring lists the targets and options). This package
imports neither torch, openTSNE nor Bokeh.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlsplit

from embedviz.errors import StoreOpenError
from embedviz.store.base import (
    EmbeddingInfo,
    HistogramRecord,
    ImportReport,
    SessionInfo,
    Store,
    WorkerInfo,
)
from embedviz.store.memory import MemoryStore
from embedviz.store.series import Series, downsample_index
from embedviz.store.sqlite import SQLiteStore

__all__ = [
    "EmbeddingInfo", "HistogramRecord", "ImportReport", "MemoryStore", "SQLiteStore", "Series",
    "SessionInfo", "Store", "WorkerInfo", "backend_failure", "downsample_index", "open_store",
]

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
#: the options a SQLite store takes after "?" in its path or URL
_OPTIONS = ("readonly", "synchronous")
_MEMORY = ":memory:"


def open_store(target: str | os.PathLike | Store, *, readonly: bool = False,
               token: str | None = None) -> Store:
    """Open the stats store ``target`` names (an SQLite file is created if missing, unless
    ``readonly``).

    Targets:

    - ``":memory:"`` (or ``"sqlite:///:memory:"``): a new, empty :class:`MemoryStore`,
      held in this process only.
    - ``"runs.db"`` or ``"sqlite:///runs.db"`` (relative), ``"sqlite:////abs/runs.db"``:
      an :class:`SQLiteStore`, the embedded default. In the URL form the path is
      percent-decoded (``%3F`` is a ``?``), as :attr:`Store.url` writes it, so
      ``open_store(store.url)`` reopens the same file with the same options.
    - ``"postgresql://user@host:5432/db"``: a :class:`~embedviz.store.postgres.PostgresStore`
      (a team's server; see its module for the options ``schema=`` and ``readonly=1``).
    - ``"http://host:5006"`` (or ``https://``): a :class:`~embedviz.store.remote.RemoteStore`
      that posts records to that ``embedviz serve`` (writes only), with ``token`` (default
      ``$EMBEDVIZ_TOKEN``, else the file ``$EMBEDVIZ_TOKEN_FILE``; never in the URL).
    - a :class:`pathlib.Path` (any ``os.PathLike``): that file, as named (no options).
    - a :class:`Store`: itself.

    Options, after ``?`` in a string path or URL (``runs.db?readonly=1&synchronous=FULL``):

    - ``readonly=1``: read without ever writing (also the ``readonly=True`` argument); works
      in a folder this user cannot write.
    - ``synchronous=OFF|NORMAL|FULL|EXTRA``: ``FULL`` survives power loss, ``NORMAL`` (the
      default) a killed process.

    A file whose name holds a ``?`` is passed as a :class:`pathlib.Path`, or as a URL with
    the ``?`` written ``%3F``; a string path naming an existing file is opened as it is.
    Raises :class:`~embedviz.errors.StoreOpenError` (a subclass for a file that is not a
    store, or one of a newer schema) naming the way out.
    """
    if isinstance(target, Store):
        return target
    literal = isinstance(target, os.PathLike)  # (a Path names a file: no options)
    if literal:
        target = os.fspath(target)
    if not isinstance(target, str) or not target:
        raise StoreOpenError(f"open_store needs a path or URL (got {target!r}): pass e.g. "
                             "'runs.db', 'sqlite:///runs.db' or ':memory:'")
    if token is not None and not target.startswith(("http://", "https://")):
        raise StoreOpenError("token= is for a server's address (http://HOST:PORT): this "
                             "store takes none")
    if literal:
        return SQLiteStore(target, readonly=readonly)
    if target in (_MEMORY, "memory://"):
        return MemoryStore()
    scheme = urlsplit(target).scheme if "://" in target else ""
    if scheme == "sqlite":
        parts = urlsplit(target)
        if "#" in target:
            raise StoreOpenError(f"{target!r}: a '#' in a URL begins a fragment, not part of "
                                 "the file name: write a '#' of the name as %23 (or pass the "
                                 "path as a pathlib.Path)")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise StoreOpenError(f"{target!r} names no file: write sqlite:///runs.db "
                                 "(relative) or sqlite:////abs/path/runs.db")
        return _sqlite(os.fsdecode(unquote_to_bytes(path)), parts.query, target, readonly)
    if scheme in ("http", "https"):
        if readonly:
            raise StoreOpenError("a remote store only takes writes: open the server's store "
                                 "(its path or postgresql:// URL) to read, or open the app")
        from embedviz.store.remote import RemoteStore

        return RemoteStore(target, token=token)
    if scheme in ("postgresql", "postgres"):
        from embedviz.store.postgres import PostgresStore

        return PostgresStore(target, readonly=readonly)
    if scheme:
        raise StoreOpenError(f"no store backend for {scheme}:// URLs: use a file path, "
                             "sqlite:///path, postgresql://user@host/db or ':memory:'")
    path, mark, query = target.partition("?")
    if not mark or os.path.exists(target):
        return SQLiteStore(target, readonly=readonly)
    return _sqlite(path, query, target, readonly)


def backend_failure(exc: BaseException) -> str | None:
    """What a backend's own error, raised after its store was opened, means for a user and
    what to do (None: not a backend's error)."""
    import sqlite3
    import sys

    if isinstance(exc, sqlite3.DatabaseError):
        return (f"the store is damaged or unreadable ({exc}): restore it from a copy, or "
                "recover what is left with `sqlite3 FILE .recover`")
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.Error):
        return (f"the PostgreSQL server failed ({' '.join(str(exc).split())}): check that it still runs "
                "and accepts this user (nothing half-written was kept: each batch is one "
                "transaction)")
    return None


def _sqlite(path: str, query: str, target: str, readonly: bool) -> Store:
    """An SQLite store with the options of ``query`` (``readonly=1&synchronous=FULL``)."""
    opts = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(opts) - set(_OPTIONS))
    if unknown:
        raise StoreOpenError(
            f"unknown option {unknown[0]!r} in {target!r}: the options are "
            f"{', '.join(_OPTIONS)} (e.g. runs.db?readonly=1); a file whose name holds a '?' "
            "is passed as a pathlib.Path, or as a URL with the '?' written %3F "
            f"(sqlite:///{quote(path + '?' + query, safe='/')})")
    flag = opts.get("readonly", "0").lower()
    if flag not in _TRUE + _FALSE:
        raise StoreOpenError(f"readonly={opts['readonly']!r} in {target!r}: write readonly=1 "
                             "or readonly=0")
    readonly = readonly or flag in _TRUE
    if path == _MEMORY:
        if readonly:
            raise StoreOpenError(f"{target!r}: an in-memory store starts empty and no other "
                                 "process sees it, so there is nothing to read read-only: pass "
                                 "the path of a store file, or ':memory:' without readonly")
        return MemoryStore()
    return SQLiteStore(path, readonly=readonly, synchronous=opts.get("synchronous", "NORMAL"))
