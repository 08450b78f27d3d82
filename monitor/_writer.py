"""Getting reports from the training thread into the store without slowing training.

The training thread hands the :class:`BackgroundWriter` records or :class:`Report` objects
and never waits: when the store is slow or stalled the queue fills, the oldest pending item is
dropped and counted, and a warning is logged once. Any exception in summarizing or in the
store is logged once per kind and swallowed.

Where the work happens. For CPU tensors and a store that another process can open (an
SQLite file), a report's capture buffer already lies in shared memory (see
embedviz.monitor._report.SlotPool) and a worker process (embedviz.monitor._worker)
summarizes and writes it, so that neither the summaries nor the store's Python code hold
this interpreter's GIL while the training thread wants it. Once the worker is up, the
training thread hands it each report itself: the report's small layout goes into its
buffer's mailbox in shared memory (memory writes; a datagram on a socket if it does not
fit), which the worker polls (so no thread of this process and no sleeping process is woken:
on a 2-vCPU machine a wakeup cost the training loop ~0.1 ms, a tenth of a report's cost, and
a send ~25 us right after a training step); the worker makes the updates (parameters after
the step minus before) and marks in shared memory which buffers it is done with.
Otherwise (device tensors, an in-memory store, while the worker starts, or if it died) a
daemon thread here takes the items and does the work itself.

Records are written in batches, one transaction at most every ``flush_seconds`` (or
``flush_records`` records), because a transaction's bookkeeping costs more than its rows: a
report is in the store about ``flush_seconds`` after it was taken, and if the process is
killed at most that much is lost. A writer still open when the interpreter exits (a script
that ends, or fails, without ``remove()`` or ``close()``) is closed then, so that what is
pending is written and the shared folder removed.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import logging
import mmap
import os
import pickle
import secrets
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
import zlib
from multiprocessing.connection import Connection, Listener
from typing import Any

from embedviz.monitor._report import (
    BUSY_NS,
    CRC,
    DONE,
    DROPPED,
    FAILED,
    MAILBOX,
    MAILBOXES,
    Report,
    state_array,
)

from embedviz.records import Record
from embedviz.store import SQLiteStore, Store

log = logging.getLogger("embedviz.monitor")

#: plain records (metrics, static info) that may wait before the oldest are dropped
MAX_RECORDS = 10_000

#: writers of this process not closed yet: closed at exit (see _close_at_exit)
_OPEN: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """Close the writers left open, each waiting at most its ``close_timeout``: without
    this, a script that ends or fails without ``remove()`` loses what is pending (its daemon
    thread stops mid-way; a short run: all of it, session included) and, if the worker process
    was not up yet, leaves its shared folder behind. Runs while daemon threads still do. Not
    in a forked child (that one's writers are its parent's)."""
    for writer in list(_OPEN):
        if writer.pid == os.getpid():
            writer.close(writer.close_timeout)


def _folder_prefix() -> str:
    """How this process's shared folders begin: "embedviz-", then its PID namespace (the PID
    that follows means something only there; "embedviz-0-" when it cannot be told)."""
    try:
        ns = os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:
        ns = ""
    return f"embedviz-{ns if ns.isdigit() else 0}-"


def _sweep(folder: str) -> None:
    """Remove the shared folders in ``folder`` of processes that are gone: a training process
    killed (SIGKILL, or SIGTERM without a handler) together with its worker, or before its
    worker was up, leaves its own behind. Only those of this PID namespace and user, and only
    when the process that made one no longer exists (a PID in use again keeps it)."""
    prefix = _folder_prefix()
    if prefix == "embedviz-0-":
        return
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].partition("-")[0]
        path = os.path.join(folder, name)
        try:
            if not pid.isdigit() or os.stat(path).st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # (alive under another user, or the folder just went)
            continue


def _rss_bytes(pid: int | str = "self") -> float:
    """A process's resident memory (this one's by default), bytes."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def _shareable(item: Report) -> bool:
    """Whether the worker process can summarize the report: its buffer is in shared memory,
    or it captured nothing (no buffer was free: its scores and timings still go, in order)."""
    slot = item.slot
    return slot is not None and (slot.path is not None or not slot.entries)


class _WorkerProcess:
    """The parent's side of the worker process."""

    def __init__(self, store_url: str, folder: str, state_path: str, max_pending: int,
                 start_timeout: float = 120.0, state: Any = None, slots: int = 0) -> None:
        self.folder = folder
        #: the first slots' mailboxes and their marks in ``state`` (see state_array)
        self._mail: memoryview | None = None
        self._state, self._marks = state, DONE + slots
        self._boxes = int(state[MAILBOXES]) if state is not None else 0
        self._crc = bool(state[CRC]) if state is not None else True
        if self._boxes:
            with open(state_path + ".mail", "r+b") as f:
                self._mail = memoryview(mmap.mmap(f.fileno(), MAILBOX * self._boxes))
        authkey = secrets.token_bytes(16)
        self._listener = Listener(os.path.join(self.folder, "socket"), family="AF_UNIX",
                                  authkey=authkey)
        # reports: datagrams (each whole or not at all), sent without blocking
        self.reports, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.reports.setblocking(False)
        env = dict(os.environ, EMBEDVIZ_WORKER_KEY=authkey.hex(),
                   EMBEDVIZ_WORKER_FD=str(theirs.fileno()), EMBEDVIZ_PARENT=str(os.getpid()))
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "embedviz.monitor._worker",
                                          self._listener.address, store_url, state_path,
                                          str(max_pending)], env=env,
                                         stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        self._timeout = start_timeout
        self.conn: Connection | None = None
        self._entries: list | None = None  # the layout of the last report put in a mailbox
        #: set when the worker is gone (see _watch): handing a report over raises OSError then
        self.gone = False
        self._wake_r, self._wake_w = os.pipe()
        self._watching = False

    def connect(self) -> None:
        """Wait for the worker to call back (it imports torch first: seconds)."""
        sock = getattr(getattr(self._listener, "_listener", None), "_socket", None)
        if sock is not None:
            sock.settimeout(self._timeout)  # a worker that never calls back
        self.conn = self._listener.accept()
        self._watching = True  # (it closes the pipe's reading end)
        threading.Thread(target=self._watch, name="embedviz-worker-watch", daemon=True).start()

    def _watch(self) -> None:
        """Wait for the worker's end of the report socket to close (it never writes there:
        readable means gone), or for close(). A mailbox takes reports whether or not anyone
        reads it: without this, a dead worker's mailboxes would swallow every report until
        the capture buffers ran out. Sleeps throughout: wakes nobody while the worker lives."""
        try:
            select.select([self.reports.fileno(), self._wake_r], [], [])
        except (OSError, ValueError):  # (closed under it)
            pass
        self.gone = True
        try:
            os.close(self._wake_r)
        except OSError:  # (closed by close(), which came first)
            pass

    def run(self, item: Any, number: int = 0) -> None:
        """Send one item (a report as report ``number``); returns once the worker took it.
        A report's slot is the worker's until it marks the number done."""
        conn = self.conn
        assert conn is not None
        if isinstance(item, Report):
            slot = item.slot
            assert slot is not None and _shareable(item)
            try:
                conn.send(("report", *self._message(item, number, item.shippable())))
            except BaseException:
                item.release()
                raise
            self._handed_over(item, number)
        else:
            conn.send(("records", item))
        conn.recv()  # ("taken",)

    def send_report(self, item: Report, number: int) -> bool:
        """Hand a report to the worker from the calling thread, without blocking; False if
        the worker does not keep up (its socket is full: the report is dropped). Raises
        OSError if the worker is gone.

        A report with a shared slot goes into the slot's mailbox: memory writes, the number
        last (the worker checks the number in the message, and where stores may be seen out
        of order its CRC, so that it never reads one half written). Its layout (entries)
        comes only when it changed since the last mailbox report. Otherwise (no slot was
        free; a message too long for a mailbox) it goes on the socket, whole."""
        if self.gone:
            raise OSError("the worker process is gone")
        slot = item.slot
        assert slot is not None and _shareable(item)
        shipped = item.shippable()
        mail = self._mail if slot.path is not None and slot.index < self._boxes else None
        if mail is not None:
            same = item.entries == self._entries  # the layout repeats: sent when it changes
            msg = pickle.dumps(self._message(item, number, (*shipped[:-2], None, shipped[-1])
                                             if same else shipped),
                               protocol=pickle.HIGHEST_PROTOCOL)
            if len(msg) <= MAILBOX - 8:
                at = slot.index * MAILBOX
                mail[at + 8:at + 8 + len(msg)] = msg
                struct.pack_into("<II", mail, at, len(msg), zlib.crc32(msg) if self._crc else 0)
                self._state[self._marks + slot.index] = number
                self._entries = item.entries
                self._handed_over(item, number)
                return True
        msg = pickle.dumps(self._message(item, number, shipped), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.reports.send(msg)
        except BlockingIOError:
            return False
        self._handed_over(item, number)
        return True

    @staticmethod
    def _message(item: Report, number: int, shipped: tuple) -> tuple:
        """What the worker is told of a report: (slot index or -1, number, the slot's file,
        dtype, elements used, the report without its slot)."""
        slot = item.slot
        assert slot is not None
        return (-1 if slot.path is None else slot.index, number, slot.path, slot.np_dtype,
                slot.used, shipped)

    @staticmethod
    def _handed_over(item: Report, number: int) -> None:
        """The report's slot is the worker's until it marks ``number`` done."""
        slot = item.slot
        assert slot is not None
        if slot.path is not None:
            slot.pool.sent(slot, number)
        item.slot = None

    def close(self, timeout: float) -> None:
        try:
            os.write(self._wake_w, b"x")  # (the watching thread, if any, ends)
            os.close(self._wake_w)
            if not self._watching:
                os.close(self._wake_r)
        except OSError:
            pass
        try:
            if self.conn is not None:
                self.conn.send(("close",))
                self.proc.wait(timeout)
        except Exception:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for closable in (self._listener, self.reports):
            try:
                closable.close()
            except OSError:
                pass


class BackgroundWriter:
    """A daemon thread between a listener and a store.

    ``max_pending``: items that may wait to be summarized; more drop the oldest.
    ``busy_seconds`` accumulates the time spent summarizing and writing (here and in the
    worker process); ``dropped`` and ``failed`` count reports, here and there.
    """

    def __init__(self, store: Store, *, max_pending: int = 4, flush_seconds: float = 1.0,
                 flush_records: int = 50, use_process: bool = True,
                 name: str = "embedviz-writer", close_timeout: float = 5.0) -> None:
        self.store = store
        self.close_timeout = close_timeout  # (the wait at interpreter exit)
        self.pid = os.getpid()
        self.max_pending = max_pending
        self.flush_seconds = flush_seconds
        self.flush_records = flush_records
        self._dropped = 0
        self.dropped_records = 0
        self._failed = 0
        self.written = 0
        self._busy = 0.0
        #: report numbers: the worker marks each slot with the last it is done with
        self._numbers = itertools.count(1)
        #: capture slots this many (see embedviz.monitor._report.SlotPool) and, with a worker
        #: process, what it has done with them (state_array)
        self.slots = max_pending + 2
        self.state: Any = None
        self._pools: set = set()  # the pools whose slots were handed to the worker
        self._direct = False  # reports go to the worker straight from the training thread
        self._items: collections.deque[Any] = collections.deque()
        self._batch: list[Record] = []
        self._last_flush = time.monotonic()
        self._cv = threading.Condition()
        self._closing = False
        self._warned: set[str] = set()
        self._worker: _WorkerProcess | None = None
        self._starting: _WorkerProcess | None = None
        #: where capture buffers go so that the worker process can map them (None: no worker)
        self.shared_folder: str | None = None
        if use_process and isinstance(store, SQLiteStore) and not store.readonly:
            shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
            _sweep(shm)
            self.shared_folder = tempfile.mkdtemp(prefix=f"{_folder_prefix()}{os.getpid()}-",
                                                  dir=shm)
            state_path = os.path.join(self.shared_folder, "state")
            # (a memoryview: its items are read as Python ints, cheaply, on every report)
            self.state = memoryview(state_array(state_path, self.slots, create=True))
            self._start_worker(store.url, state_path)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _OPEN.add(self)

    @property
    def dropped(self) -> int:
        return self._dropped + (int(self.state[DROPPED]) if self.state is not None else 0)

    @property
    def failed(self) -> int:
        return self._failed + (int(self.state[FAILED]) if self.state is not None else 0)

    @property
    def busy_seconds(self) -> float:
        return self._busy + (int(self.state[BUSY_NS]) * 1e-9 if self.state is not None else 0.0)

    def _start_worker(self, url: str, state_path: str) -> None:
        try:
            worker = self._starting = _WorkerProcess(url, self.shared_folder or "", state_path,
                                                     self.max_pending, state=self.state,
                                                     slots=self.slots)
        except Exception as exc:
            self.warn_once("worker-start", "could not start the worker process; summarizing "
                           "on a thread instead", exc)
            return

        def connect() -> None:  # the worker takes seconds to import torch: don't wait
            try:
                worker.connect()
            except Exception as exc:
                worker.close(timeout=0.1)
                if not self._closing:
                    self.warn_once("worker-start", "the worker process did not start; "
                                   "summarizing on a thread instead", exc)
                return
            with self._cv:
                if self._closing:
                    worker.close(timeout=0.1)
                else:
                    self._worker = worker
                    self._cv.notify_all()

        threading.Thread(target=connect, name="embedviz-worker-start", daemon=True).start()

    def submit(self, item: list[Record] | Report) -> None:
        """Queue records or a report; never blocks.

        At most ``max_pending`` reports wait: one more drops (and counts) the oldest waiting
        report. Plain records (session, static info, metrics) are small and precious: they are
        never dropped for a report, only beyond MAX_RECORDS waiting items, oldest first.
        """
        if self._direct and isinstance(item, Report) and self._send_direct(item):
            return
        with self._cv:
            if self._closing:
                return
            if isinstance(item, Report):
                self._direct = False  # (until this one is handed over: reports stay in order)
                waiting = [i for i, x in enumerate(self._items) if isinstance(x, Report)]
                if len(waiting) >= self.max_pending:
                    old = self._items[waiting[0]]
                    del self._items[waiting[0]]
                    old.release()
                    self._dropped += 1
                    self.warn_once("dropped", "the store is not keeping up: dropping the oldest "
                                   "pending report (the count is recorded as "
                                   "monitor/dropped_reports)")
            elif len(self._items) >= MAX_RECORDS:
                self._items.popleft()
                self.dropped_records += 1
                self.warn_once("dropped-records", f"the store is not keeping up: more than "
                               f"{MAX_RECORDS} metrics wait; dropping the oldest")
            self._items.append(item)
            self._cv.notify()

    def _send_direct(self, item: Report) -> bool:
        """Hand a report to the worker from this (the training) thread; False if it must
        take the thread's way."""
        worker, slot = self._worker, item.slot
        if worker is None or slot is None or not _shareable(item) or item.static is not None:
            return False
        try:
            if not worker.send_report(item, next(self._numbers)):
                item.release()  # the worker is stuck (stopped?): its socket is full
                self._dropped += 1
                self.warn_once("dropped", "the store is not keeping up: dropping reports "
                               "(the count is recorded as monitor/dropped_reports)")
            else:
                self._pools.add(slot.pool)
            return True
        except OSError:  # gone (or the message is too large for a datagram): the thread's way
            return False

    def warn_once(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("embedviz monitor: %s", message, exc_info=exc)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._items and not self._closing:
                    if self._worker is not None and not self._batch:
                        self._direct = True  # all before is with the worker: in order
                    wait = self.flush_seconds - (time.monotonic() - self._last_flush)
                    if self._batch and wait <= 0:
                        break
                    self._cv.wait(wait if self._batch else None)
                item = self._items.popleft() if self._items else None
                closing = self._closing
            t0 = time.perf_counter()
            if item is not None and self._worker is not None and self._to_worker(item):
                pass
            elif item is not None:
                try:
                    self._batch.extend(self._records(item))
                except Exception as exc:  # a bug or a bad tensor must not reach training
                    self._failed += 1
                    self.warn_once("report:" + type(exc).__name__, "could not summarize a "
                                   "report; training goes on without it", exc)
            due = time.monotonic() - self._last_flush >= self.flush_seconds
            if self._batch and (closing or due or len(self._batch) >= self.flush_records):
                self._flush()
            self._busy += time.perf_counter() - t0
            if closing and item is None:
                break
        with self._cv:
            worker, self._worker = self._worker, None
            self._direct = False
        if worker is not None:
            worker.close(timeout=5.0)
        elif self._starting is not None:  # still importing: nothing to finish there
            self._starting.close(timeout=0.1)
        if self.shared_folder is not None:  # mapped buffers stay valid until dropped
            shutil.rmtree(self.shared_folder, ignore_errors=True)

    def _to_worker(self, item: Any) -> bool:
        """Hand the item to the worker process; False if it must be handled here."""
        worker = self._worker
        if worker is None:
            return False
        if isinstance(item, Report):
            if item.slot is None or not _shareable(item):  # on a device, or not shared
                return False  # (the worker reads the training process's memory itself)
        if self._batch:  # keep the order: what this thread holds goes first
            self._flush()
        try:
            if isinstance(item, Report):
                self._pools.add(item.slot.pool)  # type: ignore[union-attr]
                worker.run(item, next(self._numbers))
            else:
                worker.run(item)
        except (OSError, EOFError) as exc:
            self.warn_once("worker-died", "the worker process stopped; summarizing on a "
                           "thread from now on", exc)
            with self._cv:
                self._worker = None
                self._direct = False
            worker.close(timeout=1.0)
            for pool in self._pools:  # what it held is lost (counted); its slots are free
                self._failed += pool.reclaim()
            if isinstance(item, Report):  # its buffer went back to the pool: lost
                self._failed += 1
                return True
            return False
        if self.state is not None and self.state[FAILED] and "worker-failed" not in self._warned:
            self.warn_once("worker-failed", f"the worker process could not write to "
                           f"{self.store!r}; training goes on, reports are lost")
        return True

    def _records(self, item: Any) -> list[Record]:
        if not isinstance(item, Report):
            return list(item)
        item.scalars["memory/rss_bytes"] = _rss_bytes()  # read here, off the training thread
        try:
            return item.to_records()
        finally:
            item.release()

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self._last_flush = time.monotonic()
        try:
            self.store.write(batch)
            self.written += len(batch)
        except Exception as exc:
            self._failed += 1
            self.warn_once("store:" + type(exc).__name__, f"writing to {self.store!r} failed; "
                           f"training goes on, {len(batch)} record(s) are lost", exc)

    def pending(self) -> int:
        with self._cv:
            return len(self._items)

    def close(self, timeout: float = 5.0) -> bool:
        """Summarize and write what is pending, for up to ``timeout`` seconds; True if
        everything was written. Returns in about ``timeout`` even when the store hangs."""
        _OPEN.discard(self)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cv:
                lost = len(self._items)
                self._dropped += sum(isinstance(x, Report) for x in self._items)
                self._items.clear()
            worker = self._worker or self._starting
            if worker is not None and worker.proc.poll() is None:
                worker.proc.kill()
            self.warn_once("close", f"the store did not finish within {timeout:.0f} s; "
                           f"{lost} pending report(s) and the batch being written are lost")
            return False
        return True
