"""The shared stats store: one interface, several backends, picked by a URL.

``open_store(target)``:

- ``":memory:"``                       -> :class:`MemoryStore`
- ``"runs.db"``, ``"sqlite:///runs.db"`` -> :class:`SQLiteStore` (the embedded default);
  options after ``?`` in either form (a string): ``readonly=1`` and ``synchronous=FULL``;
  a file whose name holds the ``?`` literally is opened as it is when it exists
- an existing :class:`Store`            -> itself

This package imports neither torch, openTSNE nor Bokeh.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlsplit

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
    "SessionInfo", "Store", "WorkerInfo", "downsample_index", "open_store",
]

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
#: the options a SQLite store takes after "?" in its path or URL
_OPTIONS = ("readonly", "synchronous")


def open_store(target: str | os.PathLike | Store, *, readonly: bool = False) -> Store:
    """Open (creating if needed) the store ``target`` names; see the module docstring."""
    if isinstance(target, Store):
        return target
    literal = isinstance(target, os.PathLike)  # (a Path names a file: no options)
    if literal:
        target = os.fspath(target)
    if not isinstance(target, str) or not target:
        raise StoreOpenError(f"open_store needs a path or URL (got {target!r}): pass e.g. "
                             "'runs.db', 'sqlite:///runs.db' or ':memory:'")
    if target in (":memory:", "memory://"):
        return MemoryStore()
    scheme = urlsplit(target).scheme if "://" in target else ""
    if scheme == "sqlite":
        parts = urlsplit(target)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if not path:
            raise StoreOpenError(f"{target!r} names no file: write sqlite:///runs.db "
                                 "(relative) or sqlite:////abs/path/runs.db")
        return _sqlite(path, parts.query, target, readonly)
    if scheme:
        raise StoreOpenError(f"no store backend for {scheme}:// URLs in this version: use a "
                             "file path, sqlite:///path or ':memory:'")
    path, mark, query = target.partition("?")
    if literal or not mark or os.path.exists(target):
        return SQLiteStore(target, readonly=readonly)
    return _sqlite(path, query, target, readonly)


def _sqlite(path: str, query: str, target: str, readonly: bool) -> SQLiteStore:
    """An SQLite store with the options of ``query`` (``readonly=1&synchronous=FULL``)."""
    opts = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(opts) - set(_OPTIONS))
    if unknown:
        raise StoreOpenError(f"unknown option {unknown[0]!r} in {target!r}: the options are "
                             f"{', '.join(_OPTIONS)} (e.g. runs.db?readonly=1)")
    flag = opts.get("readonly", "0").lower()
    if flag not in _TRUE + _FALSE:
        raise StoreOpenError(f"readonly={opts['readonly']!r} in {target!r}: write readonly=1 "
                             "or readonly=0")
    return SQLiteStore(path, readonly=readonly or flag in _TRUE,
                       synchronous=opts.get("synchronous", "NORMAL"))
