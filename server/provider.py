"""The read layer between the store and the pages: one per server, shared by every tab.

TensorBoard's data provider is the model: pages never ask the store themselves. Each
browser tab's periodic callback calls :meth:`Provider.refresh` first; the first call in a
tick asks the store whether anything was written (one cheap statement); when nothing was,
every tab's page is served from what was read before. What was read is kept for the
generation (the store's state between two writes seen), so twenty tabs showing the same
chart at the same cursor cost the store one read, and a chart's lines are read together
(:meth:`read`: one batched store call per chart and session).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from embedviz.records import EmbeddingSet, Finding, Projection
from embedviz.store import EmbeddingInfo, HistogramRecord, Series, SessionInfo, Store

#: seconds within which several tabs' refreshes are one (a tick is 500 ms)
TICK_S = 0.2
#: embedding sets kept decoded (vectors are large; their content never changes)
EMBEDDINGS_KEPT = 4
#: seconds a downsampled read is given to the next tab asking it, and how many are kept
SNAPSHOT_S = 30.0
SNAPSHOTS_KEPT = 256


class Provider:
    """What the pages read, cached per generation of the store.

    ``queries`` counts the calls made into the store (the figure ``bench_app`` prints:
    at most one per chart and tick)."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.monotonic,
                 tick_s: float = TICK_S) -> None:
        self.store = store
        self.queries = 0
        self.generation = 0
        self._clock, self._tick_s = clock, tick_s
        self._checked = -float("inf")
        self._token: Any = None
        self._lock = threading.RLock()
        self._cache: dict[tuple, Any] = {}
        self._tails_kept: dict[tuple[str, str, str], _Tail] = {}
        #: the tabs open on this server (their owners)
        self.viewers: set[str] = set()
        self._embeddings: OrderedDict[tuple[str, bool], EmbeddingSet] = OrderedDict()
        self._snapshots: OrderedDict[tuple, tuple[float, dict[str, Series]]] = OrderedDict()

    # ------------------------------------------------------------ generations
    def refresh(self, force: bool = False) -> int:
        """Start a new generation if the store changed since the last check (checked at
        most once per tick, whoever asks); returns the generation."""
        with self._lock:
            now = self._clock()
            if not force and now - self._checked < self._tick_s:
                return self.generation
            self._checked = now
            token = self._call(self.store.changes)
            if token != self._token:
                self._token = token
                self.generation += 1
                self._cache.clear()
            return self.generation

    def pace(self) -> float:
        """Seconds between one tab's chart updates: half a second, longer when many tabs
        are open (one event loop sends every tab its messages): 1 s for 20 tabs, at most 2."""
        return min(2.0, max(0.5, 0.05 * len(self.viewers)))

    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        self.queries += 1
        return fn(*args, **kw)

    def _cached(self, key: tuple, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = self._call(fn, *args, **kw)
        with self._lock:
            self._cache[key] = value
        return value

    def memo(self, key: tuple, fn: Callable[[], Any]) -> Any:
        """What ``fn`` computes from this generation's reads, computed once however many
        tabs ask (``key`` says what it is)."""
        with self._lock:
            if ("memo", key) in self._cache:
                return self._cache[("memo", key)]
        value = fn()
        with self._lock:
            self._cache[("memo", key)] = value
        return value

    # ------------------------------------------------------------ sessions and workers
    def sessions(self) -> list[SessionInfo]:
        """Every session, oldest first, with its workers."""
        return self._cached(("sessions",), self.store.sessions)

    def session(self, session: str) -> SessionInfo | None:
        return next((s for s in self.sessions() if s.id == session), None)

    def workers(self, session: str) -> list[str]:
        s = self.session(session)
        return [w.worker for w in s.workers] if s is not None else []

    def worker(self, session: str, wanted: str | None = None) -> str | None:
        """The worker a page shows for ``session``: ``wanted`` when the session has it,
        else its first; None when it has none yet."""
        names = self.workers(session)
        if wanted in names:
            return wanted
        return names[0] if names else None

    def keys(self, session: str, worker: str | None) -> frozenset[str]:
        """Every series key of a worker (empty when it has none)."""
        if worker is None:
            return frozenset()
        return self._cached(("keys", session, worker),
                            lambda: frozenset(self.store.series_keys(session, worker)))

    def static(self, session: str, worker: str | None) -> dict:
        if worker is None:
            return {}
        return self._cached(("static", session, worker), self.store.static, session, worker)

    # ------------------------------------------------------------ series
    def read(self, session: str, worker: str, keys: Iterable[str], *,
             since: int | Mapping[str, int] = 0, max_points: int | None = None,
             start: int | None = None, stop: int | None = None) -> dict[str, Series]:
        """Several series of one worker in one store call (what a chart's lines of one
        session need); see :meth:`Store.read_many`. What a live chart asks each tick (the
        points after its cursors) comes from the tails kept here: each generation reads
        the store once per chart and session, however many tabs ask, wherever their
        cursors stand."""
        keys = tuple(sorted(set(keys)))
        cursors = {k: since.get(k, 0) if isinstance(since, Mapping) else since for k in keys}
        if max_points is None and start is None and stop is None and any(cursors.values()):
            return self._tails(session, worker, cursors)
        key = ("read", session, worker, tuple(sorted(cursors.items())), max_points, start, stop)
        if max_points is None:
            return self._cached(key, self.store.read_many, session, keys, worker=worker,
                                since=cursors, start=start, stop=stop)
        # a downsampled read (a page opened, a zoom) stays good for a while past the
        # store's changes: a tab given it reads what came after its cursors at its next
        # tick; so a reload, or a second tab on the same page, reads nothing again
        with self._lock:
            kept = self._snapshots.get(key)
            if kept is not None and self._clock() - kept[0] < SNAPSHOT_S:
                self._snapshots.move_to_end(key)
                return kept[1]
        got = self._call(self.store.read_many, session, keys, worker=worker, since=cursors,
                         max_points=max_points, start=start, stop=stop)
        with self._lock:
            self._snapshots[key] = (self._clock(), got)
            while len(self._snapshots) > SNAPSHOTS_KEPT:
                self._snapshots.popitem(last=False)
        return got

    def _tails(self, session: str, worker: str, cursors: dict[str, int]) -> dict[str, Series]:
        with self._lock:
            tails = {k: self._tails_kept.setdefault((session, worker, k), _Tail()) for k in cursors}
            # a tail is read on from its head once a generation (or when a tab is ahead of
            # it); a tab behind what it keeps starts it again from that tab's cursor
            wanted = {k: t.read_from(cursors[k]) for k, t in tails.items()
                      if t.generation != self.generation or not t.covers(cursors[k])}
        if wanted:  # (one store call reads on every tail this chart needs)
            got = self._call(self.store.read_many, session, tuple(wanted), worker=worker,
                             since=wanted)
            with self._lock:
                for k, s in got.items():
                    tails[k].add(wanted[k], s, self.generation)
        with self._lock:
            out = {k: t.after(cursors[k]) for k, t in tails.items()}
        missing = {k: cursors[k] for k, v in out.items() if v is None}
        if missing:  # (nothing kept for these: read them as asked)
            out.update(self._call(self.store.read_many, session, tuple(missing), worker=worker,
                                  since=missing))
        return out  # type: ignore[return-value]

    def histograms(self, session: str, worker: str, target: str, *,
                   start: int | None = None, stop: int | None = None) -> list[HistogramRecord]:
        return self._cached(("hist", session, worker, target, start, stop),
                            self.store.read_histograms, session, target, worker=worker,
                            start=start, stop=stop)

    # ------------------------------------------------------------ findings
    def findings(self, since: int = 0) -> list[tuple[int, Finding]]:
        """(cursor, finding) pairs of every session written after ``since``."""
        every = self._cached(("findings",), self.store.findings)
        return [(c, f) for c, f in every if c > since]

    # ------------------------------------------------------------ embeddings
    def embeddings(self) -> list[EmbeddingInfo]:
        return self._cached(("embeddings",), self.store.embeddings)

    def embedding(self, key: str, vectors: bool = True) -> EmbeddingSet:
        """A stored set (kept decoded for the next tab: a set's content never changes);
        ``vectors=False``: words and metadata only, unless the whole set is kept already."""
        with self._lock:
            for k in ((key, True), (key, vectors)):
                got = self._embeddings.get(k)
                if got is not None:
                    self._embeddings.move_to_end(k)
                    return got
        got = self._call(self.store.embedding, key, vectors)
        with self._lock:
            self._embeddings[(key, vectors)] = got
            while len(self._embeddings) > EMBEDDINGS_KEPT:
                self._embeddings.popitem(last=False)
        return got

    def projections(self, key: str) -> list[Projection]:
        return self._cached(("projections", key), self.store.projections, key)


class _Tail:
    """The latest points of one series with the cursor after each (``Series.ids``), so a
    tab at any cursor since :attr:`start` is answered from memory."""

    KEEP = 4096  # points kept (a tab further behind reads the store itself)

    def __init__(self) -> None:
        self.start: int | None = None  # the cursor the kept points follow
        self.head: int | None = None  # the cursor after the last kept point
        self.generation = -1
        self.s: Series | None = None  # (with ids)

    def covers(self, cursor: int) -> bool:
        return self.start is not None and self.head is not None and self.start <= cursor <= self.head

    def read_from(self, cursor: int) -> int:
        """Where to read on from so that ``cursor`` is covered."""
        if self.start is None or self.head is None or cursor < self.start:
            return cursor
        return self.head

    def add(self, since: int, s: Series, generation: int) -> None:
        self.generation = generation
        if s.ids is None:  # (a store that gives no cursor per point: nothing to keep)
            self.start = self.head = self.s = None
            return
        kept = self.s
        if kept is None or kept.ids is None or since != self.head:
            self.start, kept = since, s  # (a new start: keep only what was read)
        elif len(s):
            kept = Series(s.key, np.concatenate([kept.iterations, s.iterations]),
                          np.concatenate([kept.values, s.values]),
                          np.concatenate([kept.wall_times, s.wall_times]), s.cursor,
                          np.concatenate([kept.ids, s.ids]))
        self.head = s.cursor
        if kept.ids is not None and len(kept) > self.KEEP:
            cut = len(kept) - self.KEEP
            self.start = int(kept.ids[cut - 1])
            kept = kept.take(np.arange(cut, len(kept)))
        self.s = kept

    def after(self, cursor: int) -> Series | None:
        """The kept points after ``cursor`` (the cursor never goes back); None when this
        tail keeps nothing."""
        s = self.s
        if s is None or s.ids is None or self.head is None:
            return None
        got = s.take(np.flatnonzero(s.ids > cursor))
        got.cursor = max(self.head, cursor)
        return got


__all__ = ["Provider"]
