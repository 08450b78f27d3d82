"""The worker process: summarizes reports from shared memory and writes them to the store.

Why a process: summarizing and writing a report is a few milliseconds of Python and numpy
(building the records, SQLite's bindings) that, on a thread beside the training loop, would
hold the GIL while the training thread wants it.

Started by embedviz.monitor._writer as
``python -m embedviz.monitor._worker ADDRESS URL STATE MAX_PENDING``: a fresh interpreter, so
nothing of the training script is imported again. Two ways in:

- reports, straight from the training thread: in the mailbox of the report's capture slot
  (shared memory beside the STATE array: a few memory writes, no system call), or, if no
  slot was free or the message does not fit, as a datagram on the socket whose descriptor is
  in ``EMBEDVIZ_WORKER_FD``. This process looks at both every few report intervals rather
  than sleeping on the socket, so that handing a report over wakes nobody (a wakeup costs the
  training loop more than the send);
- everything else (records, reports that came before the worker was up, "close") on the
  connection at ADDRESS, each answered once taken.

Reports wait in a queue of at most MAX_PENDING (the oldest dropped and counted) for a thread
that summarizes and writes them, so that a store that blocks does not stop the queue from
being drained. The shared STATE array (embedviz.monitor._report.state_array) carries back
which capture buffers this process is done with, and its counters.
"""

from __future__ import annotations

import collections
import gc
import logging
import mmap
import os
import pickle
import select
import shutil
import socket
import struct
import sys
import threading
import time
import zlib
from typing import Any

import numpy as np
import torch
from embedviz.monitor._report import (
    BUSY_NS,
    CRC,
    DONE,
    DROPPED,
    FAILED,
    MAILBOX,
    MAILBOXES,
    SLOTS,
    Report,
)
from embedviz.monitor._writer import _rss_bytes

from embedviz.store import SQLiteStore, open_store

log = logging.getLogger("embedviz.monitor.worker")

#: a report waits at most this long in the worker before it is written
FLUSH_SECONDS = 1.0
#: ... or until this many records are waiting
FLUSH_RECORDS = 50
#: the mailboxes and the report socket are looked at just after the next BATCH reports are
#: due (reports come at a steady pace; if none came, again a quarter interval later), within
#: these bounds (times BATCH): each look is a wakeup, ~0.1 ms of CPU on a 2-vCPU VM
POLL_SECONDS = (0.001, 0.05)
#: reports taken together at each look (at most max_pending - 1): what this process does right
#: after a sleep costs about twice what it does next (measured on a 2-vCPU VM: ~1 ms, then
#: ~0.5 ms per report)
BATCH = 3


def _reply(conn: object, msg: tuple) -> None:
    try:
        conn.send(msg)  # type: ignore[attr-defined]
    except OSError:  # the training process is gone: what is buffered is still written
        pass


class _Writer:
    """The queue of taken items and the thread that summarizes and writes them."""

    def __init__(self, url: str, state: np.ndarray, max_pending: int, parent: int) -> None:
        self.store = open_store(url)
        if isinstance(self.store, SQLiteStore):
            self.store.yield_gil = False
        self.state, self.max_pending, self.parent = state, max_pending, parent
        self.queue: collections.deque[tuple] = collections.deque()
        self.cv = threading.Condition()
        self.closing = False
        self.warned: set[str] = set()
        self.maps: dict[str, np.memmap] = {}
        self.pending: list = []
        self.last_flush = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="embedviz-worker-writer",
                                       daemon=True)
        self.thread.start()

    def take(self, *items: tuple) -> None:
        """Queue ("report", slot index, number, path, dtype, used, report) or ("records",
        records) items taken together, waking the thread once for all of them. Reports
        waiting from before make room for them beyond max_pending, the oldest first (dropped
        and counted, their slots marked done); those taken together all stay (a look that
        came late, at start: the thread is not stalled)."""
        with self.cv:
            fresh = sum(1 for item in items if item[0] == "report")
            waiting = [i for i, x in enumerate(self.queue) if x[0] == "report"]
            extra = len(waiting) + fresh - max(self.max_pending, fresh)
            for i in reversed(waiting[:max(extra, 0)]):
                old = self.queue[i]
                del self.queue[i]
                self.state[DROPPED] += 1
                if old[1] >= 0:
                    self.state[DONE + old[1]] = old[2]
                self._warn("dropped", "the store is not keeping up: dropping the oldest "
                           "pending report")
            self.queue.extend(items)
            self.cv.notify()

    def finish(self) -> None:
        with self.cv:
            self.closing = True
            self.cv.notify()
        self.thread.join()
        self.store.close()

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.queue and not self.closing:
                    due = FLUSH_SECONDS - (time.monotonic() - self.last_flush)
                    if self.pending and due <= 0:
                        break
                    self.cv.wait(due if self.pending else None)
                item = self.queue.popleft() if self.queue else None
                last = self.closing and item is None
            t0 = time.perf_counter()
            if item is not None:
                self._handle(item)
            if self.pending and (last or len(self.pending) >= FLUSH_RECORDS
                                 or time.monotonic() - self.last_flush >= FLUSH_SECONDS):
                self._flush()
            self.state[BUSY_NS] += int(1e9 * (time.perf_counter() - t0))
            if last:
                return

    def _handle(self, item: tuple) -> None:
        try:
            if item[0] == "records":
                self.pending.extend(item[1])
                return
            _, index, number, path, dtype, used, shipped = item
            try:
                if path is None:  # nothing captured (no buffer was free): scores and timings
                    flat = np.zeros(0, dtype=dtype)
                else:
                    if path not in self.maps:
                        if len(self.maps) >= 64:  # slots that grew leave old files behind
                            self.maps.clear()
                        # (writable: the update is made in place, see Report.update;
                        # the slot is this process's until it marks the report done)
                        self.maps[path] = np.memmap(path, dtype=dtype, mode="r+")
                    flat = self.maps[path][:used]
                report = Report.shipped(shipped)
                report.scalars["memory/rss_bytes"] = _rss_bytes(self.parent)  # (off training)
                self.pending.extend(report.to_records(flat))
            finally:
                if index >= 0:
                    self.state[DONE + index] = number  # the slot may be written again
        except Exception as exc:
            self.state[FAILED] += 1
            self._warn(type(exc).__name__, "could not summarize a report", exc)

    def _flush(self) -> None:
        """Write what is buffered in one transaction."""
        batch, self.pending, self.last_flush = self.pending, [], time.monotonic()
        try:
            self.store.write(batch)
        except Exception as exc:
            self.state[FAILED] += 1
            self._warn("write:" + type(exc).__name__, "could not write reports", exc)

    def _warn(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            log.warning("embedviz monitor worker: %s", message, exc_info=exc)


class _Mailboxes:
    """The slots' mailboxes (see embedviz.monitor._report.state_array): what the training
    thread put there since the last look."""

    def __init__(self, state: np.ndarray, path: str) -> None:
        slots, boxes = int(state[SLOTS]), int(state[MAILBOXES])
        self.marks = state[DONE + slots:DONE + slots + boxes]
        with open(path, "rb") as f:
            self.mail = memoryview(mmap.mmap(f.fileno(), MAILBOX * boxes, access=mmap.ACCESS_READ))
        self.seen = [0] * boxes  # the number of the last report taken from each
        self.crc = bool(state[CRC])
        self.layout: Any = None  # the last layout that came with a report

    def take(self) -> list[tuple]:
        found = sorted((int(n), i) for i, n in enumerate(self.marks.tolist()) if n > self.seen[i])
        taken = []
        for number, i in found:
            at = i * MAILBOX
            size, crc = struct.unpack_from("<II", self.mail, at)
            body = bytes(self.mail[at + 8:at + 8 + min(size, MAILBOX - 8)])
            # not all of it seen yet (stores seen out of order), or the previous message
            # whole: this one and those after it (their layout may be this one's) next time
            if size > MAILBOX - 8 or self.crc and zlib.crc32(body) != crc:
                break
            index, num, path, dtype, used, shipped = pickle.loads(body)
            if num != number:
                break
            self.seen[i] = number
            if shipped[-2] is None:  # the layout is the previous report's
                shipped = (*shipped[:-2], self.layout, shipped[-1])
            self.layout = shipped[-2]
            taken.append(("report", index, number, path, dtype, used, shipped))
        return taken


def _drain(sock: socket.socket, buf: bytearray, writer: _Writer,
           mailboxes: _Mailboxes | None) -> int:
    """Take every report waiting in the mailboxes and on the socket, handing them to the
    writer together, in order; returns how many."""
    view, taken = memoryview(buf), [] if mailboxes is None else mailboxes.take()
    while True:
        try:
            n = sock.recv_into(buf)
        except OSError:  # (BlockingIOError: none waiting)
            break
        if n == 0:  # the training process closed it
            break
        taken.append(("report", *pickle.loads(view[:n])))
    if taken:
        taken.sort(key=lambda item: item[2])
        writer.take(*taken)
    return len(taken)


def main(address: str, url: str, state_path: str, max_pending: int) -> None:
    from multiprocessing.connection import Client

    torch.set_num_threads(1)
    reports = socket.socket(fileno=int(os.environ["EMBEDVIZ_WORKER_FD"]))
    reports.setblocking(False)
    try:
        conn = Client(address, family="AF_UNIX",
                      authkey=bytes.fromhex(os.environ["EMBEDVIZ_WORKER_KEY"]))
    except OSError:  # the listener closed before we were up: nothing to do, unless its
        # process died (killed while this one started): nobody else removes its folder then
        if os.getppid() != int(os.environ.get("EMBEDVIZ_PARENT", os.getppid())):
            shutil.rmtree(os.path.dirname(address), ignore_errors=True)
        return
    state = np.memmap(state_path, dtype=np.int64, mode="r+")
    writer = _Writer(url, state, max_pending, os.getppid())
    # everything imported so far (torch, numpy: hundreds of thousands of objects) lives as
    # long as this process: keep it out of the cyclic collector's full passes, which would
    # otherwise walk all of it every few hundred reports
    gc.freeze()
    buf = bytearray(1 << 22)  # (a datagram is at most the socket's buffer, ~200 kB)
    mailboxes = _Mailboxes(state, state_path + ".mail") if int(state[MAILBOXES]) else None
    orphaned, wait = False, POLL_SECONDS[1]
    interval, last = POLL_SECONDS[1], time.monotonic()  # between reports: estimate, latest
    batch = max(1, min(BATCH, max_pending - 1))  # (the reports waiting hold capture buffers)
    while True:
        msg: Any = None
        try:  # (select on the connection only: a report arriving must not wake this process)
            if select.select([conn], [], [], wait)[0]:
                msg = conn.recv()
        except (EOFError, OSError):  # the training process died (it says "close" otherwise)
            orphaned = True
        taken = _drain(reports, buf, writer, mailboxes)  # (before the message: sent before it)
        now = time.monotonic()
        if taken:
            interval = 0.7 * interval + 0.3 * min((now - last) / taken, POLL_SECONDS[1])
            last = now
        if now - last > 4 * interval:  # idle (or no reports yet)
            wait = POLL_SECONDS[1]
        else:
            wait = min(max(interval * (batch + 0.05 if taken else 0.25), POLL_SECONDS[0]),
                       batch * POLL_SECONDS[1])
        if orphaned or (msg is not None and msg[0] == "close"):
            break
        if msg is not None:
            writer.take(msg)
            _reply(conn, ("taken",))
    writer.finish()
    if orphaned:  # nobody else will remove the capture buffers (a parent that lives on
        # without this worker falls back to ordinary memory when the folder is gone)
        shutil.rmtree(os.path.dirname(address), ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
