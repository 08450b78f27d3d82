"""The shared stats store: one interface, several backends, picked by a URL.

``open_store(target)``:

- ``":memory:"``                       -> :class:`MemoryStore`
- ``"runs.db"``, ``"sqlite:///runs.db"`` -> :class:`SQLiteStore` (the embedded default);
  query options ``?readonly=1`` and ``?synchronous=FULL``
- an existing :class:`Store`            -> itself

This package imports neither torch, openTSNE nor Bokeh.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

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

_TRUE = ("1", "true", "yes", "on")


def open_store(target: str | os.PathLike | Store, *, readonly: bool = False) -> Store:
    """Open (creating if needed) the store ``target`` names; see the module docstring."""
    if isinstance(target, Store):
        return target
    if isinstance(target, os.PathLike):
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
        opts = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return SQLiteStore(path, readonly=readonly or opts.get("readonly", "").lower() in _TRUE,
                           synchronous=opts.get("synchronous", "NORMAL"))
    if scheme:
        raise StoreOpenError(f"no store backend for {scheme}:// URLs in this version: use a "
                             "file path, sqlite:///path or ':memory:'")
    return SQLiteStore(target, readonly=readonly)
