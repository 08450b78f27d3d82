"""The store interface every backend implements, and the logic they share.

A backend implements the small set of ``_``-prefixed primitives at the bottom of
:class:`Store`; validation, worker resolution and JSONL import/export live here once, so
every backend behaves the same and one contract suite tests them all. Downsampling is one
function (:func:`~embedviz.store.downsample_index`) with the same guarantees everywhere,
but the SQLite store feeds it its blocks' extremes, so the points kept may differ (see
:meth:`Store.read_series`); cursors are each store's own opaque numbers.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

import numpy as np

from embedviz.errors import InvalidRecordError, UnknownSessionError
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
    """A session with its workers (sorted by worker id, in natural order: "2" before "10")."""

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
    """What :meth:`Store.import_jsonl` did: ``imported`` records by type, how many records
    were ``skipped_existing`` (already in the store, or earlier in the file) and the
    ``bad_lines`` skipped, (line number, reason), in line order."""

    imported: dict[str, int] = field(default_factory=dict)
    skipped_existing: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


class Store(ABC):
    """A stats store. Open one with :func:`embedviz.open_store`.

    Writing goes through :meth:`write` (one atomic batch) or the ``put_*`` helpers; reading
    serves a live dashboard: :meth:`read_series` with a ``since`` cursor returns only what is
    new, and ``max_points`` downsamples a long series without hiding its spikes.

    ``url`` is what :func:`embedviz.open_store` takes to open this store again (in another
    process too), options included.
    """

    url: str = ""

    # ---------------------------------------------------------------- writing
    def write(self, records: Iterable[Record]) -> None:
        """Write a batch of records atomically: all of them or, on any error, none.

        Sessions must exist (created earlier or earlier in the same batch).
        """
        batch = list(records)
        self._validate(batch)
        if batch:
            self._write(batch)

    def write_once(self, records: Iterable[Record], seqs: Sequence[str | None]) -> int:
        """Write the records not written before, as :meth:`write` does (validated, one
        atomic batch); returns how many were written.

        Record i carries the receipt (session, worker, ``seqs[i]``): its session (a
        Session's id) and worker, "" where it has none. A record whose receipt is stored is
        skipped; the rest are written with their receipts, so a batch sent again (a retry
        after a lost reply) is stored once. A seq of None: no receipt, always written.
        """
        batch = list(records)
        seqs = list(seqs)
        if len(seqs) != len(batch):
            raise InvalidRecordError(f"write_once needs one seq per record (got {len(seqs)} "
                                     f"for {len(batch)} records): pass None for a record without")
        for q in seqs:
            if q is not None and (not isinstance(q, str) or not q or len(q) > 200):
                raise InvalidRecordError(f"a seq is a non-empty string of at most 200 "
                                         f"characters, or None (got {q!r})")
        self._validate(batch)
        if not batch:
            return 0
        receipts = [None if q is None else _receipt(r, q) for r, q in zip(batch, seqs)]
        return self._write(batch, receipts)

    def _validate(self, batch: list[Record]) -> None:
        """What :meth:`write` checks before it writes anything."""
        check_records(batch)
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
        None: unbounded). ``limit`` keeps the first ``limit`` of them, as stored; it
        overrides ``max_points``, which is then ignored. ``max_points`` (without ``limit``)
        downsamples them to at most that many (:func:`~embedviz.store.downsample_index`:
        each bucket's minimum, maximum and first NaN, and the last point, so no spike is
        lost; the SQLite store's buckets come from its pre-aggregated blocks, so the points
        kept may differ from the in-memory store's).

        The returned ``cursor`` is the ``since`` of the next read: the cursor of the last
        point selected before downsampling (``since`` itself when none is). Cursors are
        opaque numbers to pass back to the store that gave them: not iterations, and not
        comparable across stores or backends.
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
        ignored); cursors are opaque numbers from earlier reads of this store (see
        :meth:`read_series`, also for what ``max_points`` keeps). The SQLite store reads them
        in a few statements whatever their number.
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

    def embedding(self, key: str, vectors: bool = True) -> EmbeddingSet:
        """A stored set; ``vectors=False``: its words and metadata only (the vectors an
        array of shape (n, 0)), for drawing a map without reading a gigabyte of vectors."""
        found = self._embedding(key) if vectors else self._embedding_labels(key)
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
        """Write every record (of one session) as one JSON object a line; returns the number
        of records.

        A file named by a path is written whole or not at all: the records go to a
        temporary file beside it, renamed into place once all are written (an unknown
        session, a full disk or a damaged store leaves an existing file as it was).
        """
        records = self.records(session)  # (checks the session before a file is touched)
        own = not isinstance(target, io.TextIOBase) and not hasattr(target, "write")
        if not own:
            return _write_jsonl(cast("IO[str]", target), records)
        path = check_output_path(target)  # type: ignore[arg-type]
        with replace_when_done(path) as out:
            return _write_jsonl(out, records)

    def import_jsonl(self, source: str | os.PathLike, *, skip_bad: bool = False) -> ImportReport:
        """Read a JSONL export into this store.

        The whole file is checked before anything is written: a malformed or truncated line
        raises ImportFormatError with its line number and nothing is imported, unless
        ``skip_bad`` is set, in which case bad lines are reported and the rest imported.
        A line of a session that is neither in the file nor in the store, or a projection of
        an embedding set that is in neither, is a bad line too.

        Records already present are skipped and counted in ``skipped_existing``, so
        importing a file twice imports nothing the second time: sessions already stored,
        updates, metrics and findings of a (session, worker, iteration) already stored,
        embedding sets whose key is stored, projections stored unchanged, static info equal
        to the stored one. The file is written in one transaction.
        """
        from embedviz.store.jsonl import import_jsonl

        return import_jsonl(self, source, skip_bad=skip_bad)

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

    @property
    def label(self) -> str:
        """The store's URL as shown to people (a password left out)."""
        return self.url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label}>"

    # ---------------------------------------------------------------- backend primitives
    @abstractmethod
    def _write(self, records: list[Record],
               receipts: list[tuple[str, str, str] | None] | None = None) -> int:
        """Write validated records in one transaction; with ``receipts`` (one per record,
        see :meth:`write_once`), only those whose receipt is not stored, with their receipts.
        Returns how many were written."""

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

    def _embedding_labels(self, key: str) -> EmbeddingSet | None:
        return self._embedding(key)  # (a backend that can leave the vectors out does)

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
_DIGITS = re.compile(r"([0-9]+)")


def natural_key(name: str) -> tuple:
    """Sort key of a worker id in natural order: its runs of digits compared as numbers
    ("2" before "10", "rank-2" before "rank-10"), ties broken by the text itself."""
    parts = _DIGITS.split(name)  # (text, number, text, ...: a number always at an odd place)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


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


def _write_jsonl(out: IO[str], records: Iterable[Record]) -> int:
    n = 0
    for record in records:
        out.write(codec.dumps(record.to_dict()))
        out.write("\n")
        n += 1
    return n


def check_output_path(target: str | os.PathLike) -> str:
    """``target`` as a path to write a file to, checked before any work: raises an OSError
    that names the way out when its folder does not exist or is not writable, or when it
    is a folder itself."""
    path = os.fspath(target)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    folder = os.path.dirname(os.path.abspath(path)) or os.sep
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a folder; name a file in it")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist; "
                                "create it first, or name a file in an existing folder")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"cannot write {path}: folder {folder} is not writable for "
                              "this user; name a file in another folder")
    return path


@contextlib.contextmanager
def replace_when_done(path: str) -> Iterator[IO[str]]:
    """``with replace_when_done(path) as out:`` writes text to a new file beside ``path``,
    which replaces ``path`` when the block ends without an error and is removed when it
    raises: ``path`` is written whole or not at all. A new file gets the permissions the
    umask gives, a replaced one keeps its own (a symbolic link: the file it points to is
    replaced)."""
    path = os.path.realpath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    out = os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w",
                    encoding="utf-8")
    try:
        with out:
            yield out
        with contextlib.suppress(OSError):  # (a new file: the umask's permissions)
            os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_records(batch: list[Record]) -> None:
    """What :meth:`Store.write` checks of records before it reads the store: their types and
    their own checks (fields may have been changed since construction)."""
    for r in batch:
        if not isinstance(r, tuple(RECORD_TYPES.values())):
            raise InvalidRecordError(
                f"cannot store a {type(r).__name__}: pass records from embedviz.records "
                "(Session, Static, Update, Metric, Finding, EmbeddingSet, Projection)")
        r.__post_init__()


def _receipt(record: Record, seq: str) -> tuple[str, str, str]:
    session = record.id if isinstance(record, Session) else getattr(record, "session", None)
    return (session or "", getattr(record, "worker", None) or "", seq)


def _fingerprint(record: Update | Metric | Finding) -> tuple:
    if isinstance(record, Update):
        return ("update", record.iteration)
    if isinstance(record, Metric):
        return ("metric", record.iteration, record.name)
    return ("finding", record.iteration, record.check, record.layer)

