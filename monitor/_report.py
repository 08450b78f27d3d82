"""A report: what a listener captured at one reported iteration, before it is summarized.

The training thread copies (samples of) the watched tensors into one flat buffer, a
:class:`Slot`, with a few fused copy operations and no device synchronisation. The slot lives
in shared memory when a worker process may summarize it (an SQLite store, CPU tensors), on
the tensors' device otherwise. :meth:`Report.to_records` turns it into records off the
training thread, with a fixed number of array passes for all the tensors together
(:func:`embedviz.monitor.stats.summarize_flat`).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import platform
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from embedviz.monitor.stats import HISTOGRAM_SAMPLE, _scaled, _summarize_torch, summarize_flat

from embedviz.records import Record, Static, Summary, Update

log = logging.getLogger("embedviz.monitor")


class Slot:
    """One report's capture buffer and what lies where in it: ``entries`` are
    (key, elements in the buffer, elements of the tensor they stand for)."""

    def __init__(self, pool: SlotPool, device: torch.device, dtype: torch.dtype,
                 index: int = 0) -> None:
        self.pool, self.device, self.dtype = pool, device, dtype
        #: its place in the worker's done marks (see SlotPool.state)
        self.index = index
        self.buf = torch.empty(0, dtype=dtype, device=device)
        self.np_dtype = "float64" if dtype == torch.float64 else "float32"
        self.path: str | None = None
        self.entries: list[tuple[str, int, int]] = []
        self.used = 0
        #: views of the buffer, kept: what goes where repeats from report to report
        self._views: dict[tuple, Any] = {}

    def reset(self) -> None:
        self.entries = []
        self.used = 0

    def add(self, keys: list[str], views: list[torch.Tensor], totals: list[int]) -> tuple[int, int]:
        """Copy ``views`` (any shapes) one after the other into the buffer, in one fused
        operation; returns the block's (start, end)."""
        shapes = tuple(v.shape for v in views)
        dst = self._views.get((self.used, shapes))  # where each block goes repeats
        if dst is None:
            dst = self._cache((self.used, shapes), self._blocks(shapes))
        if views:
            torch._foreach_copy_(dst, views)
        start = self.used
        for key, d, total in zip(keys, dst, totals):
            n = d.numel()
            self.entries.append((key, n, total))
            self.used += n
        return start, self.used

    def planned(self, plan: Any, which: str) -> list[torch.Tensor]:
        """Where a step plan's "pre" block (parameters before the step, then gradients) or
        "post" block (parameters after it) goes, from the buffer's current end (kept)."""
        key = (self.used, which, id(plan))
        dst = self._views.get(key)
        if dst is None or dst[0] is not plan:  # (the plan itself: an id may be reused)
            shapes = [v.shape for v in plan.views]
            if which == "pre":
                shapes += plan.grad_shapes
            dst = self._cache(key, (plan, self._blocks(shapes)))
        return dst[1]

    def _blocks(self, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
        """Views of the buffer's next elements, one after the other, in ``shapes``."""
        sizes = [math.prod(s) for s in shapes]
        end = self.used + sum(sizes)
        self._reserve(end)
        return [d.view(s) for d, s in zip(self.buf[self.used:end].split(sizes), shapes)]

    def dst(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The buffer's next elements, in ``shape``, to copy one tensor into (then
        :meth:`commit` it)."""
        dst = self._views.get((self.used, shape))
        if dst is None:
            end = self.used + math.prod(shape)
            self._reserve(end)
            dst = self._cache((self.used, shape), self.buf[self.used:end].view(shape))
        return dst

    def commit(self, key: str, n: int, total: int) -> None:
        self.entries.append((key, n, total))
        self.used += n

    def view(self, start: int, end: int) -> torch.Tensor:
        """``buf[start:end]``, kept."""
        v = self._views.get((start, end))
        if v is None:
            v = self._cache((start, end), self.buf[start:end])
        return v

    def _reserve(self, end: int) -> None:
        if end > self.buf.numel():
            self.pool.grow(self, end)
            self._views = {}

    def _cache(self, key: tuple, value: Any) -> Any:
        if len(self._views) > 256:
            self._views.clear()
        self._views[key] = value
        return value


#: the worker's counters at the head of the shared state array (see SlotPool.state), then
#: the number of slots and of mailboxes, and whether mailboxes carry a CRC (see state_array)
BUSY_NS, FAILED, DROPPED, SLOTS, MAILBOXES, CRC = 0, 1, 2, 3, 4, 5
#: where the slots' done marks begin in it (then the mailboxes' marks)
DONE = 8
#: bytes of each mailbox, and mailboxes at most (those of the first slots; a large
#: max_pending makes many slots, of which only as many as reports waiting are in use)
MAILBOX, MAX_MAILBOXES = 16384, 16
#: whether this CPU makes one thread's stores visible to others in the order they were made
#: (x86's total store order): a report's number, stored after its message, then vouches for
#: the message; elsewhere a CRC-32 of the message does (see state_array)
ORDERED_STORES = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def state_array(path: str, size: int, create: bool = False) -> np.ndarray:
    """The small shared array between a listener and its worker process: the worker's
    counters (busy nanoseconds, failed and dropped reports), the numbers of slots and
    mailboxes, whether these carry a CRC; per slot the number of the last report the worker
    is done with (the slot may be written again); per mailbox the number of the last report
    put in it.

    The mailboxes are the file ``path + ".mail"``: MAILBOX bytes for each of the first
    (at most MAX_MAILBOXES) slots, each a report's layout (its pickled message, see
    embedviz.monitor._writer) behind its length and, unless ORDERED_STORES, its CRC-32, so
    that the training thread hands a report over with memory writes, no system call. Their
    room is reserved up front (see SlotPool._shared); without room there are none."""
    n = DONE + size + min(size, MAX_MAILBOXES)
    if create:
        with open(path, "wb") as f:
            f.write(bytes(8 * n))
        boxes = min(size, MAX_MAILBOXES)
        try:
            fd = os.open(path + ".mail", os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, MAILBOX * boxes)
            finally:
                os.close(fd)
        except OSError:
            boxes = 0
        head = np.memmap(path, dtype=np.int64, mode="r+", shape=(n,))
        head[SLOTS], head[MAILBOXES], head[CRC] = size, boxes, not ORDERED_STORES
        head.flush()
    return np.memmap(path, dtype=np.int64, mode="r+", shape=(n,))


class SlotPool:
    """The slots of one listener: ``size`` of them (the reports that may wait, the one being
    summarized, the one being captured), allocated once and reused, since fresh multi-megabyte
    allocations cost page faults on every report. In ``folder`` (shared memory) for CPU
    tensors when a worker process may read them; ``state`` (see :func:`state_array`) then
    says which slots handed to it the worker is done with."""

    def __init__(self, size: int, folder: str | None = None, state: Any = None) -> None:
        self.size, self.folder, self.state = size, folder, state
        self._free: collections.deque[Slot] = collections.deque()
        self._inflight: list[tuple[Slot, int]] = []  # handed to the worker: (slot, report number)
        self._made = 0
        self._lock = threading.Lock()
        self.warned_full = False

    def acquire(self, device: torch.device, dtype: torch.dtype) -> Slot | None:
        with self._lock:
            if self._inflight:
                self._reap()
            # the most recently released first: its pages are the likeliest to be in cache
            for i in range(len(self._free) - 1, -1, -1):
                slot = self._free[i]
                if slot.device == device and slot.dtype == dtype:
                    del self._free[i]
                    slot.reset()
                    return slot
            if self._made < self.size:
                self._made += 1
                return Slot(self, device, dtype, self._made - 1)
            if self._free:  # every slot made, none of this kind free: remake one
                old = self._free.popleft()
                old.pool = None  # type: ignore[assignment]
                return Slot(self, device, dtype, old.index)
            return None

    def release(self, slot: Slot) -> None:
        if slot.pool is self:
            with self._lock:
                self._free.append(slot)

    def sent(self, slot: Slot, number: int) -> None:
        """``slot`` was handed to the worker process as report ``number``: it is free again
        once the worker marks that number done."""
        with self._lock:
            self._inflight.append((slot, number))

    def _reap(self) -> None:
        assert self.state is not None
        done, waiting = self.state, []
        for slot, number in self._inflight:
            if done[DONE + slot.index] >= number:
                self._free.append(slot)
            else:
                waiting.append((slot, number))
        self._inflight = waiting

    def reclaim(self) -> int:
        """The worker process is gone: what it held is free; returns how many it held."""
        with self._lock:
            held = len(self._inflight)
            self._free.extend(slot for slot, _ in self._inflight)
            self._inflight = []
            return held

    def _shared(self, cap: int, dtype: torch.dtype) -> tuple[str | None, torch.Tensor | None]:
        """A buffer of ``cap`` elements in a file of the shared folder, its space reserved up
        front: writing to a mapped page of a full /dev/shm (64 MB in a default Docker
        container) would kill the process with SIGBUS. (None, None) if there is no room: the
        report is then summarized on the writer thread, from ordinary memory."""
        assert self.folder is not None
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        path = os.path.join(self.folder, f"slot-{secrets.token_hex(6)}")
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, cap * np.dtype(np_dtype).itemsize)
            finally:
                os.close(fd)
            return path, torch.from_numpy(np.memmap(path, dtype=np_dtype, mode="r+", shape=(cap,)))
        except OSError as exc:
            try:
                os.unlink(path)
            except OSError:
                pass
            if not self.warned_full:
                self.warned_full = True
                log.warning("embedviz monitor: no room for capture buffers in %s (%s); "
                            "summarizing in this process instead", self.folder, exc)
            return None, None

    def grow(self, slot: Slot, n: int) -> None:
        cap = max(n + n // 4, 1 << 16)
        path, buf = None, None
        if self.folder is not None and slot.device.type == "cpu":
            path, buf = self._shared(cap, slot.dtype)
        if buf is None:
            buf = torch.empty(cap, dtype=slot.dtype, device=slot.device)
        buf[:slot.used].copy_(slot.buf[:slot.used])
        if slot.path is not None:
            try:
                os.unlink(slot.path)  # mapped views stay valid until dropped
            except OSError:
                pass
        slot.buf, slot.path = buf, path


@dataclass
class Report:
    session: str
    worker: str
    iteration: int
    epoch: int | None
    loss: Any  # a detached tensor, a number or None
    scalars: dict[str, float]
    slot: Slot | None  # None once sent to the worker process (entries travel alone)
    bins: int | None
    #: exact (NaN, Inf) counts of sampled tensors found non-finite over every element
    nonfinite: dict[str, tuple[int, int]] = field(default_factory=dict)
    static: dict | None = None
    extra: list[Record] = field(default_factory=list)
    entries: list[tuple[str, int, int]] = field(default_factory=list)
    #: (start, end, after): the block ``start:end`` holds the parameters before the optimizer
    #: step and the block from ``after`` those after it; their difference, the update, is
    #: made here, off the training thread, before summarizing (the block becomes it)
    update: tuple[int, int, int] | None = None
    #: on an accelerator, histograms of larger tensors come from a sample of this many
    sample: int = HISTOGRAM_SAMPLE

    def __post_init__(self) -> None:
        if self.slot is not None and not self.entries:
            self.entries = list(self.slot.entries)

    def release(self) -> None:
        """Hand the slot back for reuse (once nothing reads it any more)."""
        slot, self.slot = self.slot, None
        if slot is not None and slot.pool is not None:
            slot.pool.release(slot)

    def shippable(self) -> tuple:  # (entries come second to last: see _writer.send_report)
        """This report without its slot, for the worker process (it maps the slot's file):
        a plain tuple, cheap to pickle; :meth:`shipped` makes it a report again."""
        return (self.session, self.worker, self.iteration, self.epoch, self.score(),
                self.scalars, self.bins, self.nonfinite, self.static, self.extra, self.update,
                self.entries, self.sample)

    @classmethod
    def shipped(cls, t: tuple) -> Report:
        (session, worker, iteration, epoch, score, scalars, bins, nonfinite, static, extra,
         update, entries, sample) = t
        return cls(session, worker, iteration, epoch, score, scalars, None, bins, nonfinite,
                   static, extra, entries, update, sample)

    def score(self) -> float | None:
        return None if self.loss is None else float(self.loss)

    def summaries(self, flat: np.ndarray | None = None) -> list[Summary]:
        """Summaries of the captured tensors, from ``flat`` (the slot's contents, e.g. as
        mapped by the worker process, writable) or from the slot."""
        sizes = [n for _, n, _ in self.entries]
        if flat is None:
            assert self.slot is not None
            buf = self.slot.buf[:sum(sizes)]
            if buf.device.type != "cpu":  # summarized on the device; small results leave it
                if self.update is not None:
                    start, end, after = self.update
                    before = buf[start:end]
                    torch.sub(buf[after:after + end - start], before, out=before)
                    self.update = None
                return _summarize_torch(list(buf.split(sizes)), self.bins, self.sample,
                                        [t for _, _, t in self.entries])
            flat = buf.numpy()
        if self.update is not None:
            start, end, after = self.update
            np.subtract(flat[after:after + end - start], flat[start:end], out=flat[start:end])
            self.update = None
        out = summarize_flat(flat, sizes, self.bins)
        for i, (key, _, total) in enumerate(self.entries):
            out[i] = _scaled(out[i], total, self.nonfinite.get(key))
        return out

    def to_records(self, flat: np.ndarray | None = None) -> list[Record]:
        summaries = dict(zip([k for k, _, _ in self.entries], self.summaries(flat)))
        records: list[Record] = list(self.extra)
        if self.static is not None:
            records.append(Static(self.session, self.worker, self.static))
        # (the listener made every field: nothing to check again, a tenth of a ms per report)
        records.append(Update.trusted(self.session, self.worker, self.iteration, self.score(),
                                      self.epoch, self.scalars, summaries))
        return records
