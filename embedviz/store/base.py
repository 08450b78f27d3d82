"""The store interface every backend implements, and the logic they share.

A backend implements the small set of ``_``-prefixed primitives at the bottom of
:class:`Store`; validation, worker resolution, downsampling and JSONL import/export live
here once, so every backend behaves the same and one contract suite tests them all.
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, cast

import numpy as np

from embedviz.errors import ImportFormatError, InvalidRecordError, UnknownSessionError
from embedviz.records import (
    INT64_MAX,
    RECORD_TYPES,
    EmbeddingSet,
    Finding,
    Histogram,
    Metric,
    Projection,
    Record,
    Session,
    Static,
    Update,
    record_from_dict,
    split_summary_key,
)
from embedviz.store import codec
from embedviz.store.series import Series


@dataclass
class WorkerInfo:
    """One worker of a session: its iteration range, its number of updates and when it last
    reported (``last_update``: the wall time of the update written last, seconds since the
    epoch)."""

    worker: str
    first_iteration: int | None
    last_iteration: int | None
    n_updates: int
    last_update: float | None
    has_static: bool


@dataclass
class SessionInfo:
    """A session with its workers (sorted by worker id)."""

    id: str
    name: str | None
    created: float
    tags: dict
    info: dict
    workers: list[WorkerInfo] = field(default_factory=list)

    @property
    def last_update(self) -> float | None:
        times = [w.last_update for w in self.workers if w.last_update is not None]
        return max(times) if times else None


@dataclass
class HistogramRecord:
    """The histogram of one target (e.g. ``"param/fc1.weight"``) at one iteration."""

    iteration: int
    wall_time: float
    histogram: Histogram


@dataclass
class EmbeddingInfo:
    """An embedding set without its vectors."""

    key: str
    name: str
    n: int
    dim: int
    session: str | None
    iteration: int | None
    created: float


@dataclass
class ImportReport:
    """What :meth:`Store.import_jsonl` did. ``bad_lines``: (line number, reason) skipped."""

    imported: dict[str, int] = field(default_factory=dict)
    skipped_existing: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


class Store(ABC):
    """A stats store. Open one with :func:`embedviz.open_store`.

    Writing goes through :meth:`write` (one atomic batch) or the ``put_*`` helpers; reading
    serves a live dashboard: :meth:`read_series` with a ``since`` cursor returns only what is
    new, and ``max_points`` downsamples a long series without hiding its spikes.
    """

    url: str = ""

    # ---------------------------------------------------------------- writing
    def write(self, records: Iterable[Record]) -> None:
        """Write a batch of records atomically: all of them or, on any error, none.

        Sessions must exist (created earlier or earlier in the same batch).
        """
        batch = list(records)
        for r in batch:
            if not isinstance(r, tuple(RECORD_TYPES.values())):
                raise InvalidRecordError(
                    f"cannot store a {type(r).__name__}: pass records from embedviz.records "
                    "(Session, Static, Update, Metric, Finding, EmbeddingSet, Projection)")
            r.__post_init__()  # fields may have been changed since construction
        created = {r.id for r in batch if isinstance(r, Session)}
        wanted = {r.session for r in batch
                  if not isinstance(r, (Session, Projection)) and r.session is not None}
        missing = wanted - created
        if missing:
            missing -= self._session_ids(missing)
        if missing:
            raise UnknownSessionError(
                f"unknown session(s) {sorted(missing)}: create them first with "
                "store.create_session(id) (known: " + self._known_hint() + ")")
        keys = {r.embedding for r in batch if isinstance(r, Projection)}
        keys -= {r.key for r in batch if isinstance(r, EmbeddingSet)}
        unknown = [k for k in keys if not self._has_embedding(k)]
        if unknown:
            raise UnknownSessionError(f"projection of unknown embedding set(s) {unknown}: "
                                      "store the EmbeddingSet first (store.put_embedding)")
        if batch:
            self._write(batch)

    def create_session(self, session_id: str | None = None, *, name: str | None = None,
                       tags: dict | None = None, info: dict | None = None) -> Session:
        """Create (or, if it exists, return unchanged) a session; returns it."""
        if session_id is not None and self._session_ids({session_id}):
            return self._session(session_id)
        session = (Session(name=name, tags=tags or {}, info=info or {}) if session_id is None
                   else Session(id=session_id, name=name, tags=tags or {}, info=info or {}))
        self.write([session])
        return session

    def put_static(self, session: str, worker: str, info: dict) -> None:
        """Store (replace) a worker's static info."""
        self.write([Static(session, worker, info)])

    def put_update(self, update: Update) -> None:
        self.write([update])

    def log_metric(self, session: str, name: str, value: float, iteration: int,
                   worker: str = "0") -> None:
        """Record a named metric (validation loss, accuracy) at an iteration."""
        self.write([Metric(session, name, value, iteration, worker)])

    def add_finding(self, finding: Finding) -> None:
        self.write([finding])

    def put_embedding(self, embedding: EmbeddingSet) -> str:
        """Store an embedding set (stored once per content); returns its key."""
        self.write([embedding])
        return embedding.key

    def put_projection(self, projection: Projection) -> str:
        """Store or replace (same id) a projection; returns its id."""
        self.write([projection])
        return projection.id

    # ---------------------------------------------------------------- reading
    def sessions(self) -> list[SessionInfo]:
        """Every session, oldest first, with its workers."""
        return self._sessions()

    def session(self, session_id: str) -> SessionInfo:
        for info in self._sessions():
            if info.id == session_id:
                return info
        raise UnknownSessionError(f"unknown session {session_id!r}: known sessions are "
                                  + self._known_hint() + "; `embedviz sessions STORE` lists them")

    def static(self, session: str, worker: str | None = None) -> dict:
        """A worker's static info ({} if it sent none)."""
        worker = self._resolve_worker(session, worker)
        return self._static(session, worker) or {}

    def series_keys(self, session: str, worker: str | None = None) -> list[str]:
        """Every series key of a worker, sorted (see embedviz.records for the key forms)."""
        return self._series_keys(session, self._resolve_worker(session, worker))

    def read_series(self, session: str, key: str, *, worker: str | None = None,
                    since: int = 0, limit: int | None = None, max_points: int | None = None,
                    start: int | None = None, stop: int | None = None) -> Series:
        """Points of one series written after cursor ``since``, in write order.

        ``start``/``stop`` keep the points at iterations in [start, stop] (either may be
        None: unbounded); ``limit`` keeps the first ``limit`` of them; ``max_points``
        (without ``limit``) downsamples them (bucket min and max, first NaN, last point).
        The returned ``cursor`` is the ``since`` of the next read: the cursor of the last
        point kept before downsampling (``since`` itself when none is).
        """
        worker = self._resolve_worker(session, worker)
        _check_key(key)
        since = _check_cursor(since, "since")
        if limit is not None and (not _is_int(limit) or limit < 0):
            raise InvalidRecordError(f"limit must be an integer >= 0 or None (got {limit!r})")
        start, stop = _check_range(start, stop)
        return self._read_series(session, worker, key, since, None if limit is None else int(limit),
                                 _check_max_points(max_points), start, stop)

    def read_many(self, session: str, keys: Iterable[str], *, worker: str | None = None,
                  since: int | Mapping[str, int] = 0, max_points: int | None = None,
                  start: int | None = None, stop: int | None = None) -> dict[str, Series]:
        """Several series of one worker at once: ``{key: read_series(session, key, ...)}``
        with the same arguments, in the order of ``keys`` (a key stored nowhere reads as an
        empty series, its cursor unchanged). ``since`` is one cursor for every key, or a
        mapping key -> cursor (a key it lacks reads from 0; keys it has beyond ``keys`` are
        ignored). The SQLite store reads them in a few statements whatever their number.
        """
        if isinstance(keys, str):
            raise InvalidRecordError(f"keys must be a list of series keys (got the string "
                                     f"{keys!r}): pass [{keys!r}], or use read_series")
        keys = list(dict.fromkeys(keys))
        for key in keys:
            _check_key(key)
        worker = self._resolve_worker(session, worker)
        if isinstance(since, Mapping):
            cursors = {k: _check_cursor(since.get(k, 0), f"since[{k!r}]") for k in keys}
        else:
            cursors = dict.fromkeys(keys, _check_cursor(since, "since"))
        start, stop = _check_range(start, stop)
        return self._read_many(session, worker, keys, cursors, _check_max_points(max_points),
                               start, stop)

    def changes(self) -> int:
        """A number that differs from the one the previous call returned whenever anything
        was committed to the store since (by this object, another one, another process).

        It may also differ when nothing was (the first call from a new thread of an SQLite
        store), never the other way round; one cheap statement. A dashboard calls it each
        tick and reads again only when it changed.
        """
        return self._changes()

    def read_histograms(self, session: str, target: str, *, worker: str | None = None,
                        start: int | None = None, stop: int | None = None) -> list[HistogramRecord]:
        """Histograms of ``target`` (e.g. ``"update/fc1.weight"``) for iterations in
        [start, stop], oldest first."""
        split_summary_key(target)
        worker = self._resolve_worker(session, worker)
        return self._read_histograms(session, worker, target, start, stop)

    def findings(self, session: str | None = None, since: int = 0) -> list[tuple[int, Finding]]:
        """(cursor, finding) pairs written after ``since``."""
        if session is not None:
            self.session(session)
        return self._findings(session, since)

    def embeddings(self, session: str | None = None) -> list[EmbeddingInfo]:
        return self._embeddings(session)

    def embedding(self, key: str) -> EmbeddingSet:
        found = self._embedding(key)
        if found is None:
            raise UnknownSessionError(f"unknown embedding set {key!r}: store.embeddings() "
                                      "lists the stored ones")
        return found

    def projections(self, embedding: str | None = None) -> list[Projection]:
        return self._projections(embedding)

    def projection(self, projection_id: str) -> Projection:
        found = self._projection(projection_id)
        if found is None:
            raise UnknownSessionError(f"unknown projection {projection_id!r}: "
                                      "store.projections() lists the stored ones")
        return found

    def find_projection(self, embedding: str, method: str, params: dict) -> Projection | None:
        """A finished projection of ``embedding`` made with exactly these parameters."""
        want = codec.dumps(params)
        for p in self._projections(embedding):
            if p.state == "done" and p.method == method and codec.dumps(p.params) == want:
                return p
        return None

    # ---------------------------------------------------------------- export / import
    def records(self, session: str | None = None) -> Iterator[Record]:
        """Every record (of one session, with the embeddings and projections tied to it)."""
        if session is not None:
            self.session(session)
        return self._iter_records(session)

    def export_jsonl(self, target: str | os.PathLike | IO[str], session: str | None = None) -> int:
        """Write every record as one JSON object a line; returns the number of records."""
        own = not isinstance(target, io.TextIOBase) and not hasattr(target, "write")
        out = cast("IO[str]", open(target, "w", encoding="utf-8")  # type: ignore[arg-type]
                   if own else target)
        n = 0
        try:
            for record in self.records(session):
                out.write(codec.dumps(record.to_dict()))
                out.write("\n")
                n += 1
        finally:
            if own:
                out.close()
        return n

    def import_jsonl(self, source: str | os.PathLike, *, skip_bad: bool = False) -> ImportReport:
        """Read a JSONL export into this store.

        The whole file is checked before anything is written: a malformed or truncated line
        raises ImportFormatError with its line number and nothing is imported, unless
        ``skip_bad`` is set, in which case bad lines are reported and the rest imported.
        Records already present (same session, worker, iteration) are skipped, so importing a
        file twice does not duplicate it. The file is written in one transaction.
        """
        report = ImportReport()
        parsed: list[Record] = []
        with open(source, "rb") as f:  # (decoded a line at a time: a bad byte names its line)
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                    parsed.append(record_from_dict(codec.loads(line)))
                except (ValueError, KeyError, TypeError, RecursionError) as exc:
                    if isinstance(exc, UnicodeDecodeError):
                        reason = f"not UTF-8 ({exc}): is this a file from `embedviz export`?"
                    elif isinstance(exc, RecursionError):
                        reason = "JSON nested too deeply"
                    else:
                        reason = str(exc) or type(exc).__name__
                    if not raw.endswith(b"\n"):  # what a killed exporter leaves behind
                        reason = "truncated last line: " + reason
                    if not skip_bad:
                        raise ImportFormatError(
                            f"{source}: line {lineno} is malformed ({reason}); nothing was "
                            "imported. Fix or delete that line, or pass --skip-bad to import "
                            "every other line", line=lineno, path=str(source)) from None
                    report.bad_lines.append((lineno, reason))
        self._import(parsed, report)
        return report

    def _import(self, parsed: list[Record], report: ImportReport) -> None:
        present: dict[tuple[str, str], set[tuple]] = {}
        known = self._session_ids({r.session for r in parsed if hasattr(r, "session")
                                   and isinstance(r.session, str)})
        batch: list[Record] = []
        for record in parsed:
            kind = _TYPE_NAMES[type(record)]
            if isinstance(record, Session) and record.id in known:
                continue  # merge into the existing session
            if isinstance(record, (Update, Metric, Finding)):
                k = (record.session, record.worker)
                if k not in present:
                    present[k] = (self._iteration_index(*k) if record.session in known else set())
                fp = _fingerprint(record)
                if fp in present[k]:
                    report.skipped_existing += 1
                    continue
                present[k].add(fp)
            batch.append(record)
            report.imported[kind] = report.imported.get(kind, 0) + 1
        self.write(batch)  # (one transaction: the file lands whole or not at all)

    # ---------------------------------------------------------------- helpers
    def _resolve_worker(self, session: str, worker: str | None) -> str:
        names = self._worker_names(session)
        if names is None:
            self.session(session)  # raises, naming the known sessions
            names = []
        if worker is None:
            if len(names) == 1:
                return names[0]
            if not names:
                raise UnknownSessionError(f"session {session!r} has no workers yet: nothing "
                                          "was recorded in it")
            raise InvalidRecordError(f"session {session!r} has several workers {names}: "
                                     "pass worker=")
        if worker not in names:
            raise UnknownSessionError(f"session {session!r} has no worker {worker!r}: its "
                                      f"workers are {names}")
        return worker

    def _known_hint(self) -> str:
        ids = [s.id for s in self._sessions()]
        return ", ".join(repr(i) for i in ids[-10:]) if ids else "none"

    def close(self) -> None:
        """Release connections and files."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    # ---------------------------------------------------------------- backend primitives
    @abstractmethod
    def _write(self, records: list[Record]) -> None:
        """Write validated records in one transaction."""

    @abstractmethod
    def _session_ids(self, ids: set[str]) -> set[str]:
        """The subset of ``ids`` that are stored sessions."""

    @abstractmethod
    def _session(self, session_id: str) -> Session: ...

    @abstractmethod
    def _sessions(self) -> list[SessionInfo]: ...

    @abstractmethod
    def _worker_names(self, session: str) -> list[str] | None:
        """Sorted worker ids of a session; None if there is no such session."""

    @abstractmethod
    def _static(self, session: str, worker: str) -> dict | None: ...

    @abstractmethod
    def _series_keys(self, session: str, worker: str) -> list[str]: ...

    @abstractmethod
    def _read_series(self, session: str, worker: str, key: str, since: int,
                     limit: int | None, max_points: int | None, start: int | None,
                     stop: int | None) -> Series:
        """Points after ``since`` at iterations in [start, stop] (None: unbounded), at most
        ``limit``, downsampled as :func:`downsample_index` does when there are more than
        ``max_points`` and no limit; the cursor is the last such point's (before
        downsampling), ``since`` when there is none."""

    def _read_many(self, session: str, worker: str, keys: list[str], since: dict[str, int],
                   max_points: int | None, start: int | None, stop: int | None) -> dict[str, Series]:
        """:meth:`_read_series` of each key (a backend may read them together)."""
        return {k: self._read_series(session, worker, k, since[k], None, max_points, start, stop)
                for k in keys}

    @abstractmethod
    def _changes(self) -> int:
        """See :meth:`changes`."""

    @abstractmethod
    def _read_histograms(self, session: str, worker: str, target: str, start: int | None,
                         stop: int | None) -> list[HistogramRecord]: ...

    @abstractmethod
    def _findings(self, session: str | None, since: int) -> list[tuple[int, Finding]]: ...

    @abstractmethod
    def _has_embedding(self, key: str) -> bool: ...

    @abstractmethod
    def _embeddings(self, session: str | None) -> list[EmbeddingInfo]: ...

    @abstractmethod
    def _embedding(self, key: str) -> EmbeddingSet | None: ...

    @abstractmethod
    def _projections(self, embedding: str | None) -> list[Projection]: ...

    @abstractmethod
    def _projection(self, projection_id: str) -> Projection | None: ...

    @abstractmethod
    def _iter_records(self, session: str | None) -> Iterator[Record]: ...

    @abstractmethod
    def _iteration_index(self, session: str, worker: str) -> set[tuple]:
        """Fingerprints (see _fingerprint) of the updates, metrics and findings stored."""


_TYPE_NAMES = {cls: name for name, cls in RECORD_TYPES.items()}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_key(key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise InvalidRecordError(f"series key must be a non-empty string (got {key!r}): "
                                 "store.series_keys(session) lists them")


def _check_cursor(value: Any, name: str) -> int:
    if not _is_int(value) or not 0 <= value <= INT64_MAX:
        raise InvalidRecordError(f"{name} must be a cursor >= 0 (got {value!r}): pass 0 or the "
                                 "cursor of the previous read")
    return int(value)


def _check_max_points(value: Any) -> int | None:
    if value is not None and (not _is_int(value) or value < 2):
        raise InvalidRecordError(f"max_points must be an integer >= 2 or None (got {value!r})")
    return None if value is None else int(value)


def _check_range(start: Any, stop: Any) -> tuple[int | None, int | None]:
    """``start`` and ``stop`` as ints (or None), checked: iterations, start <= stop."""
    for name, value, end in (("start", start, "first"), ("stop", stop, "last")):
        if value is not None and (not _is_int(value) or not 0 <= value <= INT64_MAX):
            raise InvalidRecordError(
                f"{name} must be an iteration (an integer >= 0) or None (got {value!r}): pass "
                f"int({name}), or None to read from the series' {end} point")
    if start is not None and stop is not None and start > stop:
        raise InvalidRecordError(f"start {start!r} is after stop {stop!r}: pass start <= stop "
                                 "(both iterations, both kept)")
    return (None if start is None else int(start)), (None if stop is None else int(stop))


def _fingerprint(record: Update | Metric | Finding) -> tuple:
    if isinstance(record, Update):
        return ("update", record.iteration)
    if isinstance(record, Metric):
        return ("metric", record.iteration, record.name)
    return ("finding", record.iteration, record.check, record.layer)

