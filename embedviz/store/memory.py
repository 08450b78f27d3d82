"""The in-memory store: nothing touches disk; gone when the process ends.

Tests and short experiments use it through the same interface as the SQLite store.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import threading
from collections.abc import Iterator

import numpy as np

from embedviz.records import (
    INT64_MAX,
    KINDS,
    STATS,
    EmbeddingSet,
    Finding,
    Metric,
    Projection,
    Record,
    Session,
    Static,
    Update,
    split_stat_key,
)
from embedviz.store.base import (
    EmbeddingInfo,
    HistogramRecord,
    SessionInfo,
    Store,
    WorkerInfo,
    natural_key,
)
from embedviz.store.series import Series, downsample_index


class MemoryStore(Store):
    """A stats store held in this process's memory."""

    url = ":memory:"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._session_map: dict[str, Session] = {}
        self._workers: dict[tuple[str, str], Static | None] = {}
        self._updates: dict[tuple[str, str], list[Update]] = {}
        self._metrics: dict[tuple[str, str], list[Metric]] = {}
        # (session, worker, key) -> parallel lists: ids, iterations, wall times, values/summaries
        self._series: dict[tuple[str, str, str], tuple[list, list, list, list]] = {}
        self._finding_list: list[tuple[int, Finding]] = []
        self._embedding_map: dict[str, EmbeddingSet] = {}
        self._projection_map: dict[str, Projection] = {}
        self._version = 0  # changes(): one more per batch written
        self._receipts: set[tuple[str, str, str]] = set()  # (see Store.write_once)

    def _append(self, key: tuple[str, str, str], iteration: int, wall_time: float, value) -> None:
        ids, its, times, values = self._series.setdefault(key, ([], [], [], []))
        ids.append(next(self._ids))
        its.append(iteration)
        times.append(wall_time)
        values.append(value)

    def _write(self, records: list[Record],
               receipts: list[tuple[str, str, str] | None] | None = None) -> int:
        with self._lock:
            new: set[tuple[str, str, str]] = set()
            if receipts is not None:
                keep = []
                for r, k in zip(records, receipts):
                    if k is None or (k not in self._receipts and k not in new):
                        keep.append(r)
                        if k is not None:
                            new.add(k)
                records = keep
            self._write_all(records)
            self._receipts |= new  # (once written)
            return len(records)

    def _write_all(self, records: list[Record]) -> None:
        records = copy.deepcopy(records)  # the caller may reuse its objects
        with self._lock:
            self._version += 1  # (first: a batch that fails half-way changed the store too)
            for r in records:
                if isinstance(r, Session):
                    old = self._session_map.get(r.id)
                    if old is not None and r.name is None:
                        r.name = old.name
                    if old is not None:
                        r.created = old.created
                    self._session_map[r.id] = r
                    continue
                if isinstance(r, (Update, Metric, Finding, Static)):
                    self._workers.setdefault((r.session, r.worker), None)
                if isinstance(r, Static):
                    self._workers[(r.session, r.worker)] = r
                elif isinstance(r, Update):
                    self._updates.setdefault((r.session, r.worker), []).append(r)
                    base = (r.session, r.worker)
                    if r.score is not None:
                        self._append(base + ("score",), r.iteration, r.wall_time, r.score)
                    for k, v in r.scalars.items():
                        self._append(base + (k,), r.iteration, r.wall_time, v)
                    for k, s in r.summaries.items():
                        self._append(base + (k,), r.iteration, r.wall_time, s)
                elif isinstance(r, Metric):
                    self._metrics.setdefault((r.session, r.worker), []).append(r)
                    self._append((r.session, r.worker, "metric/" + r.name), r.iteration,
                                 r.wall_time, r.value)
                elif isinstance(r, Finding):
                    self._finding_list.append((next(self._ids), r))
                elif isinstance(r, EmbeddingSet):
                    self._embedding_map.setdefault(r.key, r)
                elif isinstance(r, Projection):
                    old_p = self._projection_map.pop(r.id, None)
                    if old_p is not None:
                        r.created = old_p.created
                    self._projection_map[r.id] = r

    def _session_ids(self, ids: set[str]) -> set[str]:
        return {i for i in ids if i in self._session_map}

    def _session(self, session_id: str) -> Session:
        return copy.deepcopy(self._session_map[session_id])

    def _sessions(self) -> list[SessionInfo]:
        with self._lock:
            out = []
            for s in sorted(self._session_map.values(), key=lambda s: (s.created, s.id)):
                info = SessionInfo(s.id, s.name, s.created, copy.deepcopy(s.tags),
                                   copy.deepcopy(s.info))
                for (sid, worker), static in sorted(self._workers.items(),
                                                    key=lambda kv: natural_key(kv[0][1])):
                    if sid != s.id:
                        continue
                    ups = self._updates.get((sid, worker), [])
                    its = [u.iteration for u in ups]
                    info.workers.append(WorkerInfo(
                        worker, min(its) if its else None, max(its) if its else None, len(ups),
                        ups[-1].wall_time if ups else None, static is not None))
                out.append(info)
            return out

    def _worker_names(self, session: str) -> list[str] | None:
        if session not in self._session_map:
            return None
        return sorted((w for s, w in list(self._workers) if s == session), key=natural_key)

    def _static(self, session: str, worker: str) -> dict | None:
        static = self._workers.get((session, worker))
        return None if static is None else copy.deepcopy(static.info)

    def _series_keys(self, session: str, worker: str) -> list[str]:
        keys = []
        for (s, w, key) in list(self._series):
            if (s, w) != (session, worker):
                continue
            if key.partition("/")[0] in KINDS:
                keys += [f"{key}/{stat}" for stat in STATS]
            else:
                keys.append(key)
        return sorted(keys)

    def _read_series(self, session: str, worker: str, key: str, since: int,
                     limit: int | None, max_points: int | None, start: int | None,
                     stop: int | None) -> Series:
        stat = split_stat_key(key)
        with self._lock:
            ids, its, times, values = self._series.get(
                (session, worker, stat[0] if stat else key), ([], [], [], []))
            sel = _selection(its, bisect.bisect_right(ids, since), limit, start, stop)
            vals = _pick(values, sel)
            if stat is not None:
                vals = [getattr(v, stat[1]) for v in vals]
            picked_ids = _pick(ids, sel)
            series = Series(key, np.array(_pick(its, sel), dtype=np.int64),
                            np.array(vals, dtype=np.float64),
                            np.array(_pick(times, sel), dtype=np.float64),
                            picked_ids[-1] if picked_ids else since,
                            np.array(picked_ids, dtype=np.int64))
        if limit is None and max_points is not None and len(series) > max_points:
            series = series.take(downsample_index(series.iterations, series.values, max_points))
            series.ids = None
        return series

    def _changes(self) -> int:
        return self._version

    def _read_histograms(self, session: str, worker: str, target: str, start: int | None,
                         stop: int | None) -> list[HistogramRecord]:
        _, its, times, summaries = self._series.get((session, worker, target), ([], [], [], []))
        return [HistogramRecord(i, t, copy.deepcopy(s.histogram))
                for i, t, s in zip(its, times, summaries)
                if s.histogram is not None and (start is None or i >= start)
                and (stop is None or i <= stop)]

    def _findings(self, session: str | None, since: int) -> list[tuple[int, Finding]]:
        return [(i, copy.deepcopy(f)) for i, f in self._finding_list
                if i > since and (session is None or f.session == session)]

    def _has_embedding(self, key: str) -> bool:
        return key in self._embedding_map

    def _embeddings(self, session: str | None) -> list[EmbeddingInfo]:
        return [EmbeddingInfo(e.key, e.name, e.n, e.vectors.shape[1], e.session, e.iteration,
                              e.created)
                for e in sorted(self._embedding_map.values(), key=lambda e: e.created)
                if session is None or e.session == session]

    def _embedding(self, key: str) -> EmbeddingSet | None:
        e = self._embedding_map.get(key)
        return None if e is None else copy.deepcopy(e)

    def _projections(self, embedding: str | None) -> list[Projection]:
        return [copy.deepcopy(p) for p in sorted(self._projection_map.values(),
                                                 key=lambda p: p.created)
                if embedding is None or p.embedding == embedding]

    def _projection(self, projection_id: str) -> Projection | None:
        p = self._projection_map.get(projection_id)
        return None if p is None else copy.deepcopy(p)

    def _iteration_index(self, session: str, worker: str) -> set[tuple]:
        k = (session, worker)
        index: set[tuple] = {("update", u.iteration) for u in self._updates.get(k, [])}
        index |= {("metric", m.iteration, m.name) for m in self._metrics.get(k, [])}
        index |= {("finding", f.iteration, f.check, f.layer) for _, f in self._finding_list
                  if (f.session, f.worker) == k}
        return index

    def _iter_records(self, session: str | None) -> Iterator[Record]:
        for info in self._sessions():
            if session is not None and info.id != session:
                continue
            yield self._session(info.id)
            for w in info.workers:
                k = (info.id, w.worker)
                static = self._workers.get(k)
                if static is not None:
                    yield copy.deepcopy(static)
                yield from copy.deepcopy(self._updates.get(k, []))
                yield from copy.deepcopy(self._metrics.get(k, []))
                yield from (copy.deepcopy(f) for _, f in self._finding_list
                            if (f.session, f.worker) == k)
        keys = set()
        for e in self._embeddings(session):
            keys.add(e.key)
            yield self._embedding(e.key)  # type: ignore[misc]
        for p in self._projections(None):
            if p.embedding in keys:
                yield p


def _selection(its: list[int], first: int, limit: int | None, start: int | None,
               stop: int | None) -> slice | np.ndarray:
    """The points of a series from index ``first`` on, in [start, stop], at most ``limit``:
    a slice, or (with a range) their indices."""
    if start is None and stop is None:
        return slice(first, len(its) if limit is None else min(len(its), first + limit))
    it = np.array(its[first:], dtype=np.int64)
    inside = (it >= (0 if start is None else start)) & (it <= (INT64_MAX if stop is None else stop))
    return (first + np.flatnonzero(inside))[:limit]


def _pick(seq: list, sel: slice | np.ndarray) -> list:
    return seq[sel] if isinstance(sel, slice) else [seq[i] for i in sel]
