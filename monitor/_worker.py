"""The worker process: summarizes reports from shared memory and writes them to the store.

Why a process: summarizing and writing a report is a few milliseconds of Python and numpy
(building the records, SQLite's bindings) that, on a thread beside the training loop, would
hold the GIL while the training thread waits for it.

Started by embedviz.monitor._writer as ``python -m embedviz.monitor._worker ADDRESS URL``:
a fresh interpreter, so nothing of the training script is imported again.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
import time

import numpy as np
import torch
from embedviz.monitor._writer import _rss_bytes

from embedviz.store import SQLiteStore, open_store

log = logging.getLogger("embedviz.monitor.worker")

#: a report waits at most this long in the worker before it is written
FLUSH_SECONDS = 1.0
#: ... or until this many records are waiting
FLUSH_RECORDS = 50


def _reply(conn: object, msg: tuple) -> None:
    try:
        conn.send(msg)  # type: ignore[attr-defined]
    except OSError:  # the training process is gone: what is buffered is still written
        pass


def main(address: str, url: str) -> None:
    from multiprocessing.connection import Client

    torch.set_num_threads(1)
    try:
        conn = Client(address, family="AF_UNIX",
                      authkey=bytes.fromhex(os.environ["EMBEDVIZ_WORKER_KEY"]))
    except OSError:  # the listener closed before we were up: nothing to do
        return
    store = open_store(url)
    if isinstance(store, SQLiteStore):
        store.yield_gil = False
    parent = os.getppid()
    orphaned = False
    # everything imported so far (torch, numpy: hundreds of thousands of objects) lives as
    # long as this process: keep it out of the cyclic collector's full passes, which would
    # otherwise walk all of it every few hundred reports
    gc.freeze()
    maps: dict[str, np.memmap] = {}
    warned: set[str] = set()
    pending: list = []
    last_flush = time.monotonic()

    def flush() -> int:
        """Write what is buffered in one transaction; returns the failures (0 or 1)."""
        nonlocal pending, last_flush
        batch, pending, last_flush = pending, [], time.monotonic()
        if not batch:
            return 0
        try:
            store.write(batch)
            return 0
        except Exception as exc:
            if type(exc).__name__ not in warned:
                warned.add(type(exc).__name__)
                log.warning("embedviz monitor worker: could not write reports", exc_info=exc)
            return 1

    while True:
        if not conn.poll(max(0.0, FLUSH_SECONDS - (time.monotonic() - last_flush))):
            failed = flush()
            if failed:
                _reply(conn, ("failed", failed))
            continue
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the training process died (it says "close" otherwise)
            orphaned = True
            break
        if msg[0] == "close":
            break
        t0 = time.perf_counter()
        failed = 0
        try:
            if msg[0] == "report":
                _, path, dtype, used, report = msg
                if path not in maps:
                    if len(maps) >= 64:  # slots that grew leave old files behind
                        maps.clear()
                    maps[path] = np.memmap(path, dtype=dtype, mode="r")
                report.scalars["memory/rss_bytes"] = _rss_bytes(parent)  # off the training process
                records = report.to_records(maps[path][:used])
            else:
                records = msg[1]
            pending.extend(records)
            if len(pending) >= FLUSH_RECORDS or time.monotonic() - last_flush >= FLUSH_SECONDS:
                failed = flush()
        except Exception as exc:
            failed = 1
            if type(exc).__name__ not in warned:
                warned.add(type(exc).__name__)
                log.warning("embedviz monitor worker: could not summarize a report", exc_info=exc)
        _reply(conn, ("done", failed, time.perf_counter() - t0))
    flush()
    store.close()
    if orphaned:  # nobody else will remove the capture buffers (a parent that lives on
        # without this worker falls back to ordinary memory when the folder is gone)
        shutil.rmtree(os.path.dirname(address), ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    main(sys.argv[1], sys.argv[2])
