"""From the training thread to the store: one message, two sinks, one batch-writer loop.

The listener fills a capture buffer of its :class:`~embedviz.monitor._capture.BufferPool` and
hands its sink a :class:`Report` naming it; plain records (session, metrics) go the same way,
as a list. Handing over never waits: a report that finds no free buffer, or a worker that
does not keep up, is dropped and counted.

- :class:`ThreadSink`: a daemon thread of this process summarizes and writes.
- :class:`ProcessSink`: a worker process (``python -m embedviz.monitor._sink``: numpy and the
  store, no torch) at a low scheduling priority, so that summaries and the store's
  Python compete with training for neither the interpreter's lock nor a core. Reports go
  pickled on a SOCK_SEQPACKET socket pair, with a capture buffer's memfd the first time; it
  answers each with the buffer's index once done. Nothing is in the file system: a killed
  training process leaves nothing behind, and its worker writes what it was handed.

Both run :meth:`BatchWriter.run`: summarize each report (:func:`summarize_flat`), write in
batches at most every ``flush_seconds`` (a transaction costs more than its rows).
"""

from __future__ import annotations

import atexit
import json
import logging
import mmap
import os
import pickle
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from embedviz.monitor._report import Report, report_records, rss_bytes

from embedviz.health import Checker, store_peers
from embedviz.records import Record
from embedviz.store import Store, open_store
from embedviz.store.sql import SQLStore

log = logging.getLogger("embedviz.monitor")

#: plain records (metrics, static info) that may wait before the newest are dropped
MAX_RECORDS = 10_000
#: a batch is written once it holds this many records, even before flush_seconds
FLUSH_RECORDS = 50
#: a pickled message longer than this travels in a memfd of its own (the socket's buffer
#: holds ~200 kB in all)
INLINE = 16_384
#: the worker process's nice value (see main)
NICE = 10
#: what the worker answers a report with: the buffer it is done with, its busy nanoseconds
#: and failed reports so far
NOTICE = struct.Struct("<qqq")


def can_process(store: Any, on_cpu: bool) -> bool:
    """Whether a :class:`ProcessSink` can serve: an SQL store (its worker reopens it from its
    URL) opened for writing, tensors on the CPU (``on_cpu``: their capture buffers are memfd
    memory), Linux."""
    return (isinstance(store, SQLStore) and not store.readonly and on_cpu
            and hasattr(os, "memfd_create") and hasattr(socket, "send_fds"))


def _warn_once(warned: set[str], kind: str, message: str, exc: BaseException | None = None) -> None:
    if kind not in warned:
        warned.add(kind)
        log.warning("embedviz monitor: %s", message, exc_info=exc)


class BatchWriter:
    """The loop both sinks run: summarize what arrives, write it in batches."""

    def __init__(self, store: Store, flush_seconds: float, pid: int, checks: dict | None = None) -> None:
        self.store, self.flush_seconds, self.pid = store, flush_seconds, pid
        #: the health checks, run on what is written (``checks``: Checker's arguments; the
        #: session's other workers, as two listeners of a GAN are, read from the store)
        self.checker = None if checks is None else Checker(**checks, peers=store_peers(store))
        self.pending: list[Record] = []
        self.last_flush = time.monotonic()
        self.busy_ns = 0
        self.failed = 0
        self._warned: set[str] = set()

    def run(self, receive: Callable[[float | None], list | None],
            flat_of: Callable[[Report], np.ndarray], done: Callable[[int], None]) -> None:
        """Until ``receive(timeout)`` gives None: take the items it gives (reports, lists of
        records); ``flat_of(report)`` is the report's captured values, ``done(index)``
        hands its buffer back."""
        while (items := receive(self._wait())) is not None:
            t0 = time.thread_time_ns()  # (its CPU: what it takes from training, where it competes)
            for item in items:
                self._take(item, flat_of, done)
            if self.pending and (len(self.pending) >= FLUSH_RECORDS or self._wait() == 0):
                self.flush()
            self.busy_ns += time.thread_time_ns() - t0
        self.flush()

    def _wait(self) -> float | None:
        if not self.pending:
            return None
        return max(0.0, self.flush_seconds - (time.monotonic() - self.last_flush))

    def _take(self, item: Report | list[Record], flat_of: Callable[[Report], np.ndarray],
              done: Callable[[int], None]) -> None:
        if not isinstance(item, Report):
            self.pending.extend(item)
            self._check(item)
            return
        try:
            try:
                flat = flat_of(item) if item.buffer >= 0 else None
                records = report_records(item, flat, rss_bytes(self.pid))
            finally:
                if item.buffer >= 0:
                    done(item.buffer)
            self.pending.extend(records)
        except Exception as exc:  # a bug or a bad tensor must not stop the others
            self.failed += 1
            self.warn(f"report:{type(exc).__name__}", "could not summarize a report", exc)
            return
        self._check(records)

    def _check(self, records: list[Record]) -> None:
        if self.checker is None:
            return
        try:
            self.pending.extend(self.checker.feed(records))
        except Exception as exc:  # (a check's bug costs its findings, never the records)
            self.warn(f"checks:{type(exc).__name__}", "the health checks failed", exc)

    def flush(self) -> None:
        batch, self.pending, self.last_flush = self.pending, [], time.monotonic()
        if not batch:
            return
        try:
            self.store.write(batch)
        except Exception as exc:
            self.failed += 1
            self.warn(f"store:{type(exc).__name__}", f"writing to {self.store!r} failed; "
                      f"training goes on, {len(batch)} record(s) are lost", exc)

    def warn(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        _warn_once(self._warned, kind, message, exc)


#: sinks not closed yet: closed at interpreter exit, so that a script that ends or fails
#: without remove() loses nothing pending
_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    for sink in list(_OPEN):
        if sink.pid == os.getpid():  # (not in a forked child: they are its parent's)
            sink.close(sink.close_timeout)


class Sink:
    """What the listener hands its reports and records to (``ThreadSink``, ``ProcessSink``).

    ``submit(item)``: a :class:`Report` or a list of records (Session, Metric, EmbeddingSet,
    ...), never blocking; ``collect()``: take back the capture buffers the background is done
    with; ``close(timeout)``: write what is pending, True if all was. ``dropped``: reports
    dropped; ``failed``: reports (or batches) lost to errors; ``busy_seconds``: the CPU
    seconds the background spent summarizing and writing; ``gone``: the background died (reports go
    elsewhere from then on); ``starting``: the background has not answered yet (it may take
    more buffers); ``in_process``: it runs in this process (and may read device tensors).
    """

    in_process = True
    gone = False
    starting = False
    dropped = 0
    close_timeout = 5.0
    pid = 0

    @property
    def failed(self) -> int:
        raise NotImplementedError

    @property
    def busy_seconds(self) -> float:
        raise NotImplementedError

    def submit(self, item: Report | list[Record]) -> None:
        raise NotImplementedError

    def collect(self) -> None:
        """(Nothing to collect where buffers come back by themselves.)"""

    def close(self, timeout: float = 5.0) -> bool:
        raise NotImplementedError


class ThreadSink(Sink):
    """Summarizes and writes on a daemon thread of this process (see the module doc).

    ``pool``: the listener's capture buffers (reports name one); ``max_pending``: reports
    that may wait; ``close_timeout``: what ``close()`` waits at interpreter exit.
    """

    def __init__(self, store: Store, pool: Any, *, max_pending: int = 4,
                 flush_seconds: float = 1.0, close_timeout: float = 5.0,
                 name: str = "embedviz-writer", checks: dict | None = None) -> None:
        self.pool, self.max_pending, self.close_timeout = pool, max_pending, close_timeout
        self.pid = os.getpid()
        self.dropped = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting = [0, 0]  # reports, record lists in the queue
        self._lock = threading.Lock()
        self._closed = False
        self.writer = BatchWriter(store, flush_seconds, self.pid, checks)
        self._thread = threading.Thread(target=self.writer.run, name=name, daemon=True,
                                        args=(self._receive, self._flat, self._done))
        self._thread.start()
        _OPEN.add(self)

    @property
    def failed(self) -> int:
        return self.writer.failed

    @property
    def busy_seconds(self) -> float:
        return self.writer.busy_ns * 1e-9

    def submit(self, item: Report | list[Record]) -> None:
        """Queue a report or records; never blocks (beyond the limits, dropped)."""
        report = isinstance(item, Report)
        with self._lock:
            full = self._waiting[0] >= self.max_pending if report else self._waiting[1] >= MAX_RECORDS
            if self._closed or full:
                if report:
                    self.dropped += 1
                    self.pool.release(item.buffer)  # type: ignore[union-attr]
                if full and not report:  # (dropped reports: the listener says so, or spaces them)
                    self.writer.warn("dropped", "the store is not keeping up: dropping records")
                return
            self._waiting[0 if report else 1] += 1
        self._queue.put(item)

    def _receive(self, timeout: float | None) -> list | None:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        if item is None:
            return None
        with self._lock:
            self._waiting[0 if isinstance(item, Report) else 1] -= 1
        return [item]

    def _flat(self, report: Report) -> np.ndarray:
        # (a buffer on an accelerator comes over whole: it holds samples, a few hundred kB)
        return self.pool.buffers[report.buffer].data[:report.used].cpu().numpy()

    def _done(self, index: int) -> None:
        self.pool.release(index)

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is pending, waiting at most ``timeout`` seconds; True if all was."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
                _OPEN.discard(self)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.writer.warn("close", f"the store did not finish within {timeout:.0f} s; "
                             "what was pending is lost")
            return False
        return True


class ProcessSink(Sink):
    """Summarizes and writes in a worker process (see the module doc). Owns the socket and
    the process; ``close()`` is idempotent and thread-safe. ``gone``: the worker died (its
    reports then go to a thread: see StatsListener)."""

    in_process = False

    def __init__(self, store: SQLStore, pool: Any, *, close_timeout: float = 5.0,
                 flush_seconds: float = 1.0, checks: dict | None = None) -> None:
        self.pool, self.close_timeout = pool, close_timeout
        self._warned: set[str] = set()
        self.pid = os.getpid()
        self.dropped = 0
        self.gone = False
        self._remote = (0, 0)  # the worker's busy ns and failed reports
        #: no answer from the worker yet: it is starting (~0.3 s), and the reports that come
        #: meanwhile may take more buffers (see StatsListener._acquire)
        self.starting = True
        self._held: set[int] = set()  # buffers the worker holds
        #: the worker is woken once this many reports wait (half the buffers), and takes them
        #: back to back: what a process does right after a wakeup costs about twice what it
        #: does next; otherwise it looks every second
        self._batch = max(1, pool.size // 2)
        self._failed = 0
        self._lock = threading.Lock()  # the socket, between the training thread and close()
        self._closing = threading.Lock()
        self._closed = False
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # the doorbell: a socket wakes a reader sleeping on it as a "sync" wakeup, which puts
        # it on the sender's core, beside the training thread; an eventfd does not
        self._bell = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            with theirs:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "embedviz.monitor._sink", store.url,
                     str(theirs.fileno()), str(self._bell), str(self.pid), str(flush_seconds),
                     json.dumps(checks)],
                    pass_fds=(theirs.fileno(), self._bell), stdin=subprocess.DEVNULL)
        except BaseException:
            self._sock.close()
            os.close(self._bell)
            raise
        self._sock.setblocking(False)
        _OPEN.add(self)

    @property
    def failed(self) -> int:
        return self._failed + self._remote[1]

    @property
    def busy_seconds(self) -> float:
        return self._remote[0] * 1e-9

    def collect(self) -> None:
        """Take the worker's answers: the buffers it is done with are free again."""
        with self._lock:
            if self._closed or self.gone:
                return
            while True:
                try:
                    data = self._sock.recv(NOTICE.size)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if len(data) != NOTICE.size:  # (b"": its end closed)
                    self._lost()
                    return
                index, *remote = NOTICE.unpack(data)
                self._remote = (remote[0], remote[1])
                self.starting = False
                self._held.discard(index)
                self.pool.release(index)

    def submit(self, item: Report | list[Record]) -> None:
        """Hand a report or records to the worker; never blocks (a worker that does not
        keep up: dropped and counted)."""
        report = item if isinstance(item, Report) else None
        with self._lock:
            if self._closed or self.gone:
                self._drop(report)
                return
            msg = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                if report is not None and report.buffer >= 0:
                    sent = self.pool.hand_over(self.pool.buffers[report.buffer],
                                               lambda fds: self._send(msg, fds))
                else:
                    sent = self._send(msg, [])
            except OSError:  # (its end closed: the worker died)
                self._lost()
                sent = False
            if not sent:
                self._drop(report)
            elif report is not None and report.buffer >= 0:
                self._held.add(report.buffer)
                if len(self._held) >= self._batch:
                    os.eventfd_write(self._bell, 1)

    def _send(self, msg: bytes, fds: list[int]) -> bool:
        """One message, with the descriptors ``fds``; False if the socket is full."""
        big = None
        if len(msg) > INLINE:  # in a memfd of its own, the first descriptor
            big = os.memfd_create("embedviz-message", os.MFD_CLOEXEC)
            os.write(big, msg)
            msg, fds = b"", [big, *fds]
        try:
            socket.send_fds(self._sock, [msg or b"\0"], fds)  # (non-blocking)
            return True
        except BlockingIOError:
            return False
        finally:
            if big is not None:
                os.close(big)

    def _drop(self, report: Report | None) -> None:
        if report is None:
            return
        self.dropped += 1  # (the listener says so, or spaces reports: see StatsListener._behind)
        self.pool.release(report.buffer)

    def warn(self, kind: str, message: str) -> None:
        _warn_once(self._warned, kind, message)

    def _lost(self) -> None:
        """The worker died: what it held is lost (counted)."""
        if not self.gone:
            self.gone = True
            self.warn("gone", "the worker process stopped; summarizing on a thread from "
                       "now on")
            self._failed += len(self._held)
            for index in self._held:
                self.pool.release(index)
            self._held.clear()

    def close(self, timeout: float = 5.0) -> bool:
        """Let the worker write what it has (at most ``timeout`` seconds, then it is killed)
        and end; True if it ended by itself."""
        with self._closing:
            with self._lock:
                if self._closed:
                    return True
                self._closed = True
                _OPEN.discard(self)
                try:
                    self._sock.shutdown(socket.SHUT_WR)  # it reads what is queued, then EOF
                    os.eventfd_write(self._bell, 1)
                except OSError:
                    pass
            ended = True
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                ended = False
                self.warn("close", f"the worker process did not finish within {timeout:.0f}"
                           " s; what it held is lost")
                self._proc.kill()
                self._proc.wait()
            self._sock.close()
            os.close(self._bell)
            return ended


# ---------------------------------------------------------------------- the worker process
def _receive_from(sock: socket.socket, bell: int, maps: dict[int, np.ndarray]) -> Callable:
    """The worker's ``receive``: every message waiting once the doorbell rings (or at most
    ``timeout`` s, and every second: a training process that died rings no bell), mapping
    the buffers whose memfd comes with one; None once the training process closed its end
    (or died) and all was read."""
    ended = False

    def receive(timeout: float | None) -> list | None:
        nonlocal ended
        if ended:
            return None
        if select.select([bell], [], [], min(1.0, 1.0 if timeout is None else timeout))[0]:
            os.eventfd_read(bell)
        items: list = []
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, INLINE + 1, 4)
            except BlockingIOError:
                return items
            except OSError:
                data, fds = b"", []
            if not data:
                ended = True
                return items or None
            try:
                if data == b"\0":  # in a memfd of its own
                    big = fds.pop(0)
                    data = os.pread(big, os.fstat(big).st_size, 0)
                    os.close(big)
                item = pickle.loads(data)
                if fds and isinstance(item, Report):
                    size = os.fstat(fds[0]).st_size
                    maps[item.buffer] = np.frombuffer(mmap.mmap(fds[0], size), dtype=item.dtype)
                items.append(item)
            except Exception as exc:  # (a bug: the others still go)
                log.warning("embedviz monitor worker: could not read a message", exc_info=exc)
            finally:
                for fd in fds:
                    os.close(fd)

    return receive


def main(url: str, fd: int, bell: int, parent: int, flush_seconds: float,
         checks: dict | None = None) -> None:
    """The worker process: read reports from socket ``fd`` when eventfd ``bell`` rings,
    write them to ``url``."""
    try:  # training comes first: never preempted on a wakeup (SCHED_BATCH), and a small
        # share of a busy core (nice 10: about a tenth beside a nice-0 process; at 19 it got
        # too little on a loaded machine to keep up, and reports were dropped)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        os.nice(NICE)
    except (OSError, AttributeError):
        pass
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)  # (socket.recv_fds and send_fds drop their flags argument)
    maps: dict[int, np.ndarray] = {}
    writer = BatchWriter(open_store(url), flush_seconds, parent, checks)
    if isinstance(writer.store, SQLStore):
        writer.store.yield_gil = False  # (no training thread here to yield to)

    def done(index: int) -> None:
        try:
            sock.send(NOTICE.pack(index, writer.busy_ns, writer.failed))
        except OSError:  # (the training process is gone, or not reading: it recounts)
            pass

    def flat_of(report: Report) -> np.ndarray:
        return maps[report.buffer][:report.used]

    try:
        writer.run(_receive_from(sock, bell, maps), flat_of, done)
    finally:
        writer.store.close()
        sock.close()
        os.close(bell)


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    # (the module by its name, not __main__: the reports pickled in the training process
    # name its classes)
    from embedviz.monitor import _sink

    _sink.main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
               float(sys.argv[5]), json.loads(sys.argv[6]) if len(sys.argv) > 6 else None)
