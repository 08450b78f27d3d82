"""Projection jobs for the app: each run of the embeddings page's form (t-SNE, PCA, UMAP) in
a worker of its own, bounded, queued in order, cancellable.

One :class:`Jobs` belongs to one app server and owns every worker it starts;
:meth:`Jobs.close` (idempotent, also run at interpreter exit) stops them all. A worker is a
process (multiprocessing's "spawn": the server has threads, and a forked copy of them is
unsafe) when the store can be opened again from its URL, and a thread of the server when it
cannot (the in-memory store). The worker reads the vectors from the store itself and writes
the projection there as it converges, so a page watches it through the store; ``job.state``
and ``job.progress`` never wait on a worker.

Cancelling: a queued job never starts. A running t-SNE stops at its next callback (every
:data:`STREAM_EVERY` iterations): its partial map stays in the store as "interrupted" and the
job is "cancelled". A worker process still running ``grace`` seconds later (PCA and UMAP have
no callbacks; the t-SNE may still be finding neighbours) is terminated, and its projection,
if still "running", is recorded as failed with the message "cancelled". A thread cannot be
terminated: there a job without callbacks runs to its end. A job that finishes before its
cancel lands stays "done".
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embedviz.errors import ProjectionError, UnknownSessionError

log = logging.getLogger("embedviz.server")

#: a running t-SNE writes its map to the store, and looks for a cancel, this often (iterations)
STREAM_EVERY = 25
STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
#: a job's progress is read from the store at most this often (seconds): pages poll it
READ_EVERY = 0.25
#: finished jobs remembered for list(); older ones are forgotten
KEEP_FINISHED = 100
_TICK = 0.1  # how often a supervisor looks at its worker and its job (seconds)


# ---------------------------------------------------------------------- messages
@dataclass(frozen=True)
class _Spec:
    """What a worker needs to run one job (pickled into a worker process)."""

    embedding: str  # the source set's key
    method: str
    params: dict
    top_n: int | None
    projection: str  # the id the worker's Projection record gets


@dataclass(frozen=True)
class _Report:
    """A worker's word to its job: first the key it projects, last how it ended."""

    embedding: str | None = None
    state: str | None = None  # "done", "cancelled" or "failed" in the last report
    message: str = ""


# ---------------------------------------------------------------------- worker side
def _estimator(method: str, params: dict) -> Any:
    """The estimator for ``method`` with ``params``, its parameters checked (raises
    ProjectionError naming the bad one)."""
    from embedviz.projection import make_estimator

    try:
        est = make_estimator(method, **params)
    except TypeError as exc:  # an unknown keyword: name it and the method
        raise ProjectionError(f"{method}: {exc}: pass only that method's parameters") from None
    check = getattr(est, "_check_params", None)  # (t-SNE checks at fit; we want it now)
    if check is not None:
        check()
    return est


def _selection(source: Any, top_n: int | None) -> tuple[Any, str | None, int | None, str]:
    """The vocabulary to project, the session and iteration to store it under, and its
    key: the set itself, or its first ``top_n`` rows as a set of its own, tied to no session
    (so it is never taken for one of the training's snapshots)."""
    from embedviz.records import content_key
    from embedviz.vocab import Vocabulary

    if top_n is None or top_n >= source.n:
        return (Vocabulary(source.labels, source.vectors, source.metadata, source.name),
                source.session, source.iteration, source.key)
    cut = {k: list(v[:top_n]) for k, v in source.metadata.items()}
    labels, vectors = source.labels[:top_n], source.vectors[:top_n]
    return (Vocabulary(labels, vectors, cut, f"{source.name} (top {top_n})"), None, None,
            content_key(labels, vectors))


def _run(store: Any, spec: _Spec, stop: Callable[[], bool],
         tell: Callable[[_Report], None]) -> _Report:
    """Run one job against ``store``; ``stop()`` says it was cancelled. Returns the last
    report (never raises: a worker's failure is the job's message)."""
    from embedviz.projection import BarnesHutTsne, project

    try:
        vocab, session, iteration, key = _selection(store.embedding(spec.embedding), spec.top_n)
        tell(_Report(embedding=key))
        if stop():
            return _Report(state="cancelled")
        est = _estimator(spec.method, spec.params)
        if isinstance(est, BarnesHutTsne):
            est.callback = lambda it, kl, emb: stop()
        result = project(vocab, est, store=store, session=session, iteration=iteration,
                         reuse=False, stream_every=STREAM_EVERY, projection_id=spec.projection)
    except Exception as exc:
        return _Report(state="failed", message=f"{type(exc).__name__}: {exc}")
    return _Report(state="cancelled" if result.projection.state == "interrupted" else "done")


def _child(url: str, spec: _Spec, conn: Any) -> None:
    """A worker process: open the store, run the job, send its reports to the parent.
    Anything the parent sends on ``conn`` (or its end closing) means stop."""
    from threadpoolctl import threadpool_limits

    from embedviz.store import open_store

    # Ctrl-C in the server's terminal reaches its whole process group: the owner stops us
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        store = open_store(url)
    except Exception as exc:
        conn.send(_Report(state="failed", message=f"{type(exc).__name__}: {exc}"))
        return
    _exit_with_parent(lambda: _abandon(store, spec.projection))
    try:
        # (BLAS too: one job's share of the cores, as openTSNE's n_jobs)
        with threadpool_limits(spec.params.get("n_jobs")):
            conn.send(_run(store, spec, conn.poll, conn.send))
    finally:
        store.close()
        conn.close()


def _exit_with_parent(last_words: Callable[[], None]) -> None:
    """End this worker process, after ``last_words()``, if its server dies without
    closing it (no orphans)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        try:
            last_words()
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="embedviz-job-parent", daemon=True).start()


def _abandon(store: Any, projection_id: str) -> None:
    """Record a projection whose server has gone as failed (nobody else is left to)."""
    try:
        record = store.projection(projection_id)
        if record.state == "running":
            record.state, record.message = "failed", "the server stopped"
            store.put_projection(record)
    except Exception:  # (not written yet; or the store is gone too)
        pass


# ---------------------------------------------------------------------- workers
class _ProcessWorker:
    """A job in a spawned process; reports come, and a stop goes, over one pipe (no named
    semaphores, which a killed server would leave behind)."""

    def __init__(self, url: str, spec: _Spec) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_end = ctx.Pipe(duplex=True)
        self._child_end = child_end
        self._proc = ctx.Process(target=_child, args=(url, spec, child_end),
                                 name=f"embedviz-job-{spec.projection[:8]}")
        self._eof = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def start(self) -> None:
        self._proc.start()
        self._child_end.close()  # (so a dead child reads as end of file here)

    def stop(self) -> None:
        try:
            self._conn.send(None)
        except OSError:  # (it has ended: nothing to stop)
            pass

    def alive(self) -> bool:
        return self._proc.is_alive()

    def reports(self, timeout: float) -> list[_Report]:
        waiting: list[Any] = [self._proc.sentinel] + ([] if self._eof else [self._conn])
        multiprocessing.connection.wait(waiting, timeout)
        out = []
        try:
            while not self._eof and self._conn.poll():
                out.append(self._conn.recv())
        except (EOFError, OSError):
            self._eof = True
        return out

    def kill(self) -> bool:
        self._proc.terminate()
        self._proc.join(1.0)
        if self._proc.is_alive():  # (SIGTERM ignored or stuck in the kernel)
            self._proc.kill()
            self._proc.join(5.0)
        return True

    def ended(self) -> str:
        """Why the process ended without a last report."""
        self._proc.join(1.0)
        code = self._proc.exitcode
        if code is not None and code < 0:
            return f"the worker process died (signal {-code})"
        return f"the worker process ended without a result (exit code {code})"

    def close(self) -> None:
        """Reap the process (terminated if it lingers after its last report)."""
        self._child_end.close()
        if self._proc.pid is None:  # (it never started)
            self._conn.close()
            return
        self._proc.join(5.0)
        if self._proc.exitcode is None:
            self.kill()
        self._conn.close()
        self._proc.close()


class _ThreadWorker:
    """A job in a thread of the server (the store cannot be opened from another process)."""

    def __init__(self, store: Any, spec: _Spec) -> None:
        self._stop = threading.Event()
        self._box: deque[_Report] = deque()
        self._news = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(store, spec), daemon=True,
                                        name=f"embedviz-job-{spec.projection[:8]}")

    pid = None

    def _main(self, store: Any, spec: _Spec) -> None:
        self._tell(_run(store, spec, self._stop.is_set, self._tell))

    def _tell(self, report: _Report) -> None:
        self._box.append(report)
        self._news.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def reports(self, timeout: float) -> list[_Report]:
        self._news.wait(timeout)
        self._news.clear()
        out = []
        while self._box:
            out.append(self._box.popleft())
        return out

    def kill(self) -> bool:
        return False  # (a thread cannot be stopped from outside: it runs to its end)

    def ended(self) -> str:
        return "the worker thread ended without a result"

    def close(self) -> None:
        pass


_Worker = Any  # _ProcessWorker or _ThreadWorker (one interface)


# ---------------------------------------------------------------------- jobs
@dataclass(eq=False)
class Job:
    """One projection run (made by :meth:`Jobs.submit`). Reading its attributes never
    waits on a worker: ``progress`` and ``projection`` read the store at most every
    READ_EVERY seconds.

    ``source``, ``method``, ``top_n``, ``owner``: as submitted; ``params``: as the worker
    builds the estimator from them (the job's defaults filled in). ``embedding``: the key of
    the set actually projected (the source's, or the top-N set's once the worker has made
    it; None until then). ``projection``: the id of its Projection record once written.
    ``state``: queued, running, done, failed or cancelled. ``progress``: 0..1, from the
    store's record. ``message``: why it failed. ``pid``: the worker process's id while it
    runs (None in a thread).
    """

    source: str
    method: str
    params: dict
    top_n: int | None
    owner: Any = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "queued"
    message: str = ""
    embedding: str | None = None
    pid: int | None = None  # the worker process's id while it has one
    _jobs: Any = field(default=None, repr=False)
    _record: str = field(default_factory=lambda: uuid.uuid4().hex, repr=False)
    _written: bool = field(default=False, repr=False)
    _progress: float = field(default=0.0, repr=False)
    _read_at: float = field(default=float("-inf"), repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def projection(self) -> str | None:
        self._refresh()
        # (a page that sees the record can always look up the set it belongs to)
        return self._record if self._written and self.embedding is not None else None

    @property
    def progress(self) -> float:
        self._refresh()
        return self._progress

    def cancel(self) -> bool:
        """Ask the job to stop; False if it had already finished. Returns at once."""
        return bool(self._jobs._cancel(self))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (True) or ``timeout`` seconds pass (False).
        Not for the server's event loop: poll ``state`` there."""
        return self._finished.wait(timeout)

    def _refresh(self, force: bool = False) -> None:
        """Read progress from the store's record, at most every READ_EVERY seconds."""
        now = time.monotonic()
        if not force and (now - self._read_at < READ_EVERY or self._finished.is_set()
                          or self.state == "queued"):
            return
        self._read_at = now
        try:
            record = self._jobs.store.projection(self._record)
        except UnknownSessionError:  # not written yet, or never (it failed before)
            return
        self._written, self._progress = True, record.progress


class Jobs:
    """The projection jobs of one app server: at most ``max_workers`` run at once (default:
    the number of CPUs, at least 2, so one tab's t-SNE never waits behind another's), the
    rest wait in order. ``grace``: seconds a cancelled worker process gets to stop before
    it is terminated."""

    def __init__(self, store: Any, max_workers: int | None = None, *, grace: float = 3.0) -> None:
        if max_workers is None:
            max_workers = max(2, os.cpu_count() or 1)
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a whole number >= 1 (got {max_workers!r})")
        self.store = store
        self.max_workers = max_workers
        self.grace = grace
        #: "process" when workers can open the store from its URL, else "thread"
        self.mode = "process" if _reopenable(store) else "thread"
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._supervisors: dict[str, threading.Thread] = {}
        self._closed = False
        atexit.register(self.close)

    # ------------------------------------------------------------------ public
    def submit(self, embedding_key: str, method: str = "tsne", params: dict | None = None,
               top_n: int | None = None, owner: Any = None) -> Job:
        """Queue a projection of the stored set ``embedding_key`` (its first ``top_n`` rows
        as a set of their own when ``top_n`` < its size). Bad parameters raise
        ProjectionError here, before anything is queued."""
        if not isinstance(embedding_key, str) or not embedding_key:
            raise ProjectionError(f"embedding_key must be a stored set's key (got "
                                  f"{embedding_key!r}): store.embeddings() lists them")
        threads = max(1, (os.cpu_count() or 1) // self.max_workers)
        spec_params = _checked(method, params, top_n, threads)
        job = Job(embedding_key, method, spec_params, top_n, owner, _jobs=self)
        if top_n is None:
            job.embedding = embedding_key
        with self._lock:
            if self._closed:
                raise RuntimeError("these jobs are closed (the server is stopping): open a "
                                   "new Jobs to run more")
            self._jobs[job.id] = job
            self._queue.append(job)
        self._start_next()
        return job

    def list(self, owner: Any = None) -> list[Job]:
        """The jobs (of ``owner``, or all), oldest first."""
        with self._lock:
            jobs = list(self._jobs.values())
        return [j for j in jobs if owner is None or j.owner == owner]

    def close(self) -> None:
        """Cancel every job and end every worker (terminated after ``grace`` seconds);
        idempotent. Worker threads that cannot stop are left to end on their own."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            running = [j for j in self._jobs.values() if j.state == "running"]
            supervisors = list(self._supervisors.values())
        for job in queued:
            self._finish(job, "cancelled")
        for job in running:
            job._cancel.set()
        deadline = time.monotonic() + self.grace + 5.0
        for t in supervisors:
            if t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        atexit.unregister(self.close)

    def __enter__(self) -> Jobs:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ inside
    def _cancel(self, job: Job) -> bool:
        with self._lock:
            if job.finished:
                return False
            job._cancel.set()  # (a running job's supervisor passes it on)
            queued = job.state == "queued"
            if queued:
                self._queue.remove(job)
        if queued:
            self._finish(job, "cancelled")
        return True

    def _start_next(self) -> None:
        with self._lock:
            running = sum(1 for j in self._jobs.values() if j.state == "running")
            while self._queue and running < self.max_workers and not self._closed:
                job = self._queue.popleft()
                job.state = "running"
                running += 1
                t = threading.Thread(target=self._supervise, args=(job,), daemon=True,
                                     name=f"embedviz-jobs-{job.id}")
                self._supervisors[job.id] = t
                t.start()

    def _supervise(self, job: Job) -> None:
        """Run ``job`` in a worker and settle the job and its record however it ended;
        then start the next job. Never leaves the job unfinished."""
        spec = _Spec(job.source, job.method, job.params, job.top_n, job._record)
        worker: _Worker = (_ProcessWorker(self.store.url, spec) if self.mode == "process"
                           else _ThreadWorker(self.store, spec))
        try:
            last = self._attend(job, worker)
        except Exception as exc:  # (e.g. a process that could not start: the job says why)
            last = _Report(state="failed", message=f"{type(exc).__name__}: {exc}")
        try:
            worker.close()
        except Exception:
            log.exception("embedviz: could not reap the worker of job %s", job.id)
        self._settle(job, last)
        self._start_next()

    def _attend(self, job: Job, worker: _Worker) -> _Report:
        """Start ``worker`` (unless cancelled first) and follow it to its last report."""
        if job._cancel.is_set():
            return _Report(state="cancelled")
        worker.start()
        job.pid = worker.pid
        last = self._watch(job, worker)
        return last if last is not None else _Report(state="failed", message=worker.ended())

    def _watch(self, job: Job, worker: _Worker) -> _Report | None:
        """Follow ``worker`` until it ends, passing on a cancel and terminating it when it
        has not stopped ``grace`` seconds later; its last report (None if it sent none)."""
        last: _Report | None = None
        asked: float | None = None
        while True:
            last = self._read(job, worker, _TICK) or last
            if last is not None or not worker.alive():
                return last or self._read(job, worker, 0)  # (sent just before it ended)
            if job._cancel.is_set():
                if asked is None:
                    worker.stop()
                    asked = time.monotonic()
                elif time.monotonic() - asked > self.grace and worker.kill():
                    # (unless it finished as it was stopped)
                    return self._read(job, worker, 0) or _Report(state="cancelled",
                                                                 message="cancelled")

    @staticmethod
    def _read(job: Job, worker: _Worker, timeout: float) -> _Report | None:
        """Take in the worker's reports; its last one, if it has come."""
        last = None
        for r in worker.reports(timeout):
            if r.embedding is not None:
                job.embedding = r.embedding
            if r.state is not None:
                last = r
        return last

    def _settle(self, job: Job, last: _Report) -> None:
        """Record how the job ended; a record its worker left "running" becomes failed."""
        state = last.state or "failed"
        try:
            record = self.store.projection(job._record)
            if record.state == "running":
                record.state = "failed"
                record.message = last.message or "the worker ended without a result"
                self.store.put_projection(record)
            job._refresh(force=True)
        except UnknownSessionError:  # (it failed before writing one)
            pass
        except Exception:  # (the store closed under us: the job still ends)
            log.exception("embedviz: could not settle the projection of job %s", job.id)
        self._finish(job, state, "" if state == "cancelled" else last.message)

    def _finish(self, job: Job, state: str, message: str = "") -> None:
        with self._lock:
            job.state, job.message, job.pid = state, message, None
            self._supervisors.pop(job.id, None)
            done = [j for j in self._jobs.values() if j.finished]
            for old in done[:max(0, len(done) - KEEP_FINISHED)]:
                del self._jobs[old.id]
        job._finished.set()


def _reopenable(store: Any) -> bool:
    """Whether a worker process can open ``store`` again from its URL."""
    url = getattr(store, "url", "") or ""
    return bool(url) and not url.lstrip(":").startswith("memory")


def _checked(method: str, params: dict | None, top_n: int | None, threads: int) -> dict:
    """The parameters a worker will build the estimator from, checked now (ProjectionError
    names the bad one): a t-SNE streams and looks for a cancel every STREAM_EVERY iterations,
    draws no progress bar and uses ``threads`` threads."""
    params = dict(params or {})
    if not isinstance(method, str):
        raise ProjectionError(f"method must be 'tsne', 'pca' or 'umap' (got {method!r})")
    if method.lower().lower() in ("tsne", "t-sne", "barneshut", "bhtsne"):
        params.setdefault("callback_every", STREAM_EVERY)
        params.setdefault("progress", False)
        # jobs running together share the cores: openTSNE's threads wait for each other at
        # every iteration, so one descheduled thread stalls the whole job (10x slower here)
        params.setdefault("n_jobs", threads)
    if "callback" in params:
        raise ProjectionError("callback is the job's own (it stops a cancelled t-SNE): "
                              "leave it out of params")
    _estimator(method, params)
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int)
                              or top_n < 2):
        raise ProjectionError(f"top_n must be a whole number >= 2 or None for every row "
                              f"(got {top_n!r})")
    return params
