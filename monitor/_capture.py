"""What a reported iteration copies, on the training thread: capture buffers and the copies.

At a reported iteration the listener copies (samples of) the watched tensors into one flat
:class:`Buffer` with a few fused copies and no device synchronisation: the parameters before
and after the optimizer step (the summarizer makes their difference, the update), the
gradients and the leaf modules' outputs. Tensors above ``sample_limit`` elements are sampled
evenly in blocks of BLOCK neighbours; outputs above it keep the batch's first whole examples;
the summarizer scales counts back. NaN and Inf are counted over every element when anything
is off (see :meth:`Capture.nonfinite`).
"""

from __future__ import annotations

import math
import mmap
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

#: samples of large tensors are taken in blocks of this many neighbours (64 bytes of float32)
BLOCK = 16


class Buffer:
    """One report's flat capture buffer ``data`` and what lies where in it: ``layout`` holds
    (key, elements captured, elements of the tensor), in order. For a worker process its
    memory is a memfd, whose descriptor ``fd`` the pool holds until the worker has it."""

    def __init__(self, pool: BufferPool, index: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.pool, self.index, self.device, self.dtype = pool, index, device, dtype
        self.data = torch.empty(0, dtype=dtype, device=device)
        self.fd: int | None = None
        self.layout: list[tuple[str, int, int]] = []
        self.used = 0
        self._views: dict[tuple, Any] = {}  # where each block goes repeats from report to report

    def reset(self) -> None:
        self.layout, self.used = [], 0

    def add(self, keys: list[str], views: list[torch.Tensor], totals: list[int]) -> tuple[int, int]:
        """Copy ``views`` (any shapes) one after the other, in one fused operation; returns
        where they lie (start, end)."""
        shapes = tuple(v.shape for v in views)
        dst = self._views.get((self.used, shapes))
        if dst is None:
            sizes = [math.prod(s) for s in shapes]
            end = self.used + sum(sizes)
            self._reserve(end)
            dst = self._keep((self.used, shapes), [
                d.view(s) for d, s in zip(self.data[self.used:end].split(sizes), shapes)])
        if views:
            torch._foreach_copy_(dst, views)
        start = self.used
        for key, d, total in zip(keys, dst, totals):
            self.commit(key, d.numel(), total)
        return start, self.used

    def dst(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The next elements, in ``shape``, to copy one tensor into (then :meth:`commit`)."""
        dst = self._views.get((self.used, shape))
        if dst is None:
            end = self.used + math.prod(shape)
            self._reserve(end)
            dst = self._keep((self.used, shape), self.data[self.used:end].view(shape))
        return dst

    def commit(self, key: str, n: int, total: int) -> None:
        self.layout.append((key, n, total))
        self.used += n

    def _reserve(self, end: int) -> None:
        if end > self.data.numel():
            self.pool.grow(self, end)
            self._views = {}

    def _keep(self, key: tuple, value: Any) -> Any:
        if len(self._views) > 256:
            self._views.clear()
        self._views[key] = value
        return value


def _memfd_tensor(n: int, dtype: torch.dtype) -> tuple[int, torch.Tensor]:
    """A flat tensor of ``n`` elements in a new memfd, its pages reserved now (a page that
    cannot be had is an error here, not a SIGBUS when training first writes it)."""
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    size = n * np.dtype(np_dtype).itemsize
    fd = os.memfd_create("embedviz-capture", os.MFD_CLOEXEC)
    try:
        os.posix_fallocate(fd, 0, size)
        return fd, torch.from_numpy(np.frombuffer(mmap.mmap(fd, size), dtype=np_dtype))
    except BaseException:
        os.close(fd)
        raise


class BufferPool:
    """A listener's capture buffers, ``size`` at most, made once and reused (fresh
    multi-megabyte allocations cost page faults on every report). ``shared``: CPU buffers
    are memfd memory, for a worker process to map too. Owns their descriptors."""

    def __init__(self, size: int, shared: bool = False) -> None:
        self.size, self.shared = size, shared and hasattr(os, "memfd_create")
        self.buffers: list[Buffer] = []
        self._free: list[int] = []
        self._lock = threading.Lock()
        self.warning: str | None = None  # (set when shared memory could not be had)

    def acquire(self, device: torch.device, dtype: torch.dtype) -> Buffer | None:
        """A free buffer for ``device`` and ``dtype``; None when every buffer is in use."""
        with self._lock:
            for i in [i for i in self._free if i >= self.size]:  # (the size was lowered)
                self._free.remove(i)
                self._close_fd(self.buffers[i])
                self.buffers[i].data = self.buffers[i].data[:0]
            for i in reversed(self._free):  # the last released first: likeliest in cache
                buf = self.buffers[i]
                if buf.device == device and buf.dtype == dtype:
                    self._free.remove(i)
                    buf.reset()
                    return buf
            if len(self.buffers) < self.size:
                buf = Buffer(self, len(self.buffers), device, dtype)
                self.buffers.append(buf)
                return buf
            if self._free:  # none of this kind free: make one anew in the place of another
                i = self._free.pop(0)
                self._close_fd(self.buffers[i])
                buf = self.buffers[i] = Buffer(self, i, device, dtype)
                return buf
            return None

    def release(self, index: int) -> None:
        with self._lock:
            if 0 <= index < len(self.buffers) and index not in self._free:
                self._free.append(index)

    def grow(self, buf: Buffer, n: int) -> None:
        cap = max(n + n // 4, 1 << 16)
        fd, data = None, None
        if self.shared and buf.device.type == "cpu":
            try:
                fd, data = _memfd_tensor(cap, buf.dtype)
            except OSError as exc:
                self.warning = f"no shared memory for capture buffers ({exc})"
        if data is None:
            data = torch.empty(cap, dtype=buf.dtype, device=buf.device)
        data[:buf.used].copy_(buf.data[:buf.used])
        with self._lock:
            self._close_fd(buf)
            buf.data, buf.fd = data, fd

    def hand_over(self, buf: Buffer, send: Callable[[list[int]], bool]) -> bool:
        """``send(fds)`` with the buffer's memfd if the worker does not have it yet (closed
        here once sent); returns what ``send`` returned."""
        with self._lock:
            sent = send([] if buf.fd is None else [buf.fd])
            if sent:
                self._close_fd(buf)
            return sent

    @staticmethod
    def _close_fd(buf: Buffer) -> None:  # (with the lock held)
        fd, buf.fd = buf.fd, None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Close the descriptors still held and let the buffers go (their memory, and the
        mapping's own descriptor, with the last reference to each)."""
        with self._lock:
            for buf in self.buffers:
                self._close_fd(buf)
            self.buffers, self._free = [], []


def stride_of(t: torch.Tensor, limit: int | None) -> int:
    """1 if all of ``t`` is kept; else how many elements apart the blocks of its sample
    begin: tensors above ``limit`` are sampled evenly in blocks of BLOCK neighbours (a cache
    line each), the block starts sharing at most BLOCK with the last dimension, so that a
    matrix's sample visits every column."""
    n = t.numel()
    if limit is None or n <= limit:
        return 1
    stride = (n - BLOCK) // (limit // BLOCK - 1)  # (>= BLOCK: n > limit)
    step = BLOCK if stride >= 8 * BLOCK else 1  # blocks on cache lines, if spread allows
    stride -= stride % step
    cols = t.shape[-1] if t.dim() else 1
    while stride > BLOCK and math.gcd(stride, cols) > BLOCK:
        stride -= step
    return stride


def count_of(t: torch.Tensor, stride: int, limit: int | None) -> int:
    """Elements of ``t`` kept (see :func:`stride_of`)."""
    return t.numel() if stride == 1 else limit // BLOCK * BLOCK  # type: ignore[operator]


def sample(t: torch.Tensor, stride: int, count: int) -> torch.Tensor:
    """``count // BLOCK`` blocks of BLOCK neighbours of ``t``, ``stride`` apart (a view if
    it can be)."""
    flat = t if t.is_contiguous() else t.reshape(-1)
    return flat.as_strided((count // BLOCK, BLOCK), (stride, 1))


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            found = _first_tensor(v)
            if found is not None:
                return found
    if isinstance(value, dict):
        return _first_tensor(list(value.values()))
    return None


def _not_finite(checks: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """Those (key, CPU tensor) ``checks`` whose sum is not finite: they hold a NaN or Inf
    (or values so large that the sum overflows). One read-back for all."""
    if not checks:
        return []
    with torch.no_grad():
        sums = torch.stack([t.sum() for _, t in checks]).tolist()
    return [(k, t) for (k, t), total in zip(checks, sums) if not math.isfinite(total)]


def _nonfinite_counts(t: torch.Tensor) -> tuple[int, int]:
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


class Capture:
    """The copies of one reported iteration at a time, into a buffer that ``acquire(device)``
    gives (at the first copy). ``reset()`` between reports."""

    def __init__(self, sample_limit: int | None, acquire: Callable[[torch.device], Buffer | None]
                 ) -> None:
        self.limit, self.acquire = sample_limit, acquire
        self._plans: dict[tuple, list[tuple[str, int, int, int]]] = {}
        self._act_plans: dict[tuple, tuple] = {}
        self._param_views: dict[str, tuple[int, torch.Tensor]] = {}
        self.reset()

    def reset(self) -> None:
        buf = getattr(self, "buffer", None)
        if buf is not None:  # captured, never handed over (detached)
            buf.pool.release(buf.index)
        self.buffer: Buffer | None = None
        self.missed = False  # a copy found no free buffer: the report is dropped
        self.before: tuple[int, int] | None = None  # where the parameters before the step lie
        self.update: tuple[int, int, int] | None = None  # (start, end, after): see Report
        self._checks: list[tuple[str, torch.Tensor]] = []  # sampled tensors, for NaN/Inf
        self._grad_checks: dict[str, tuple[str, torch.Tensor]] = {}  # param key -> gradient's
        self._acts: list[tuple[str, torch.Tensor]] = []  # sampled outputs (CPU), for NaN/Inf
        self._found: dict[str, tuple[int, int]] = {}  # exact (NaN, Inf) counts found so far
        self.seen: set[str] = set()  # modules whose output was captured

    def forget(self) -> None:
        """Another model or optimizer: nothing planned for the last one holds."""
        self._plans, self._act_plans, self._param_views = {}, {}, {}

    def take(self) -> Buffer | None:
        """The buffer, now the report's."""
        buf, self.buffer = self.buffer, None
        return buf

    def _buffer(self, device: torch.device) -> Buffer | None:
        if self.buffer is None and not self.missed:
            self.buffer = self.acquire(device)
            self.missed = self.buffer is None
        return self.buffer

    # ------------------------------------------------------------------ parameters, gradients
    def tensors(self, device: torch.device,
                *groups: tuple[str, Mapping[str, torch.Tensor]]) -> dict[str, tuple[int, int]]:
        """Copy (samples of) the tensors of each (kind, {name: tensor}) group in one fused
        copy; returns where each kind's block lies. Kinds: "param", "update" (the parameters
        before the step), "gradient"."""
        buf = self._buffer(device)
        if buf is None:
            return {}
        keys: list[str] = []
        views: list[torch.Tensor] = []
        totals: list[int] = []
        blocks, start = {}, buf.used
        with torch.no_grad():
            for kind, tensors in groups:
                plan = self._plan(kind, tensors)
                if kind in ("param", "update"):
                    views += [self._param_view(n, t) for n, t in tensors.items()]
                    if kind == "param":
                        self._checks += [(key, t) for t, (key, count, _, total) in
                                         zip(tensors.values(), plan) if count < total]
                else:  # (a gradient is a new tensor every iteration)
                    views += [t if stride == 1 else sample(t, stride, count)
                              for t, (_, count, stride, _) in zip(tensors.values(), plan)]
                    # checked over every element only if its parameter turns out non-finite
                    # (where a bad gradient lands), or if no optimizer step ran
                    self._grad_checks.update(
                        ("param" + key[len(kind):], (key, t)) for t, (key, count, _, total)
                        in zip(tensors.values(), plan) if count < total)
                keys += [key for key, _, _, _ in plan]
                totals += [total for _, _, _, total in plan]
                size = sum(count for _, count, _, _ in plan)
                blocks[kind] = (start, start + size)
                start += size
            buf.add(keys, views, totals)
        return blocks

    def _plan(self, kind: str, tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, int, int, int]]:
        """(key, elements kept, stride, elements) of each tensor (made anew if a size changed)."""
        key = (kind, tuple(tensors))
        plan = self._plans.get(key)
        if plan is None or any(t.numel() != p[3] for t, p in zip(tensors.values(), plan)):
            plan = []
            for n, t in tensors.items():
                stride = stride_of(t, self.limit)
                plan.append((f"{kind}/{n}", count_of(t, stride, self.limit), stride, t.numel()))
            self._plans[key] = plan
        return plan

    def view(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` flattened, or its even sample when it is above sample_limit."""
        stride = stride_of(t, self.limit)
        return t.reshape(-1) if stride == 1 else sample(t, stride, count_of(t, stride, self.limit))

    def _param_view(self, name: str, p: torch.Tensor) -> torch.Tensor:
        """A parameter's sample, kept between reports (the optimizer changes it in place;
        made anew if its storage was replaced, every time if it is not contiguous)."""
        if not p.is_contiguous():
            return self.view(p)
        cached = self._param_views.get(name)
        if cached is None or cached[0] != p.data_ptr():
            cached = self._param_views[name] = (p.data_ptr(), self.view(p.detach()))
        return cached[1]

    # ------------------------------------------------------------------ activations
    def activation(self, name: str, output: Any) -> None:
        """Copy (a sample of) a leaf module's output (its first tensor) now: a later in-place
        operation (ReLU(inplace=True), ``x += skip``) may change it, and it is not kept."""
        t = output if type(output) is torch.Tensor else _first_tensor(output)
        if t is None or not t.is_floating_point():
            return
        self.seen.add(name)
        buf = self._buffer(t.device)
        if buf is None:
            return
        plan = self._act_plans.get((name, t.shape))
        if plan is None:
            plan = self._act_plans[(name, t.shape)] = self._activation_plan(name, t)
        key, rows, stride, count, total, check, dst_shape = plan
        with torch.no_grad():
            if rows:  # the batch's first whole examples: a unit's zero fraction stays true
                torch.narrow_copy(t, 0, 0, rows, out=buf.dst(dst_shape))
            elif stride == 1:
                buf.dst(dst_shape).copy_(t)
            else:  # one example too large: an even sample, like a parameter
                buf.dst(dst_shape).copy_(sample(t, stride, count))
        buf.commit(key, count, total)
        if check:  # counted over every element at the report if anything is off
            self._acts.append((key, t.detach()))

    def _activation_plan(self, name: str, t: torch.Tensor) -> tuple:
        """(key, whole examples kept or 0, stride, elements kept, elements, sampled, shape in
        the buffer) for an output like ``t``."""
        n, limit, key = t.numel(), self.limit, "activation/" + name
        if limit is None or n <= limit:
            return key, 0, 1, n, n, False, tuple(t.shape)
        per_row = n // max(t.shape[0], 1) if t.dim() > 1 else n
        if t.dim() > 1 and per_row <= limit:
            rows = limit // per_row
            return key, rows, 1, rows * per_row, n, t.device.type == "cpu", (rows, *t.shape[1:])
        stride = stride_of(t, limit)
        count = count_of(t, stride, limit)
        return key, 0, stride, count, n, t.device.type == "cpu", (count // BLOCK, BLOCK)

    def check_activations(self) -> None:
        """Another forward pass begins: count NaN and Inf in the kept outputs now, and let
        them go."""
        acts, self._acts = self._acts, []
        for key, t in _not_finite(acts):
            self._found[key] = _nonfinite_counts(t)

    @property
    def holding_outputs(self) -> bool:
        return bool(self._acts)

    # ------------------------------------------------------------------ NaN and Inf
    def nonfinite(self, loss: Any, stepped: bool) -> dict[str, tuple[int, int]]:
        """Exact (NaN, Inf) counts of the sampled tensors that hold any, looked for (on CPU)
        only when the loss or a sampled value is not finite: a NaN or Inf parameter or
        activation reaches the loss (NaN x 0 is NaN), and a bad gradient comes in whole rows
        or columns, which the sample visits. A gradient is counted when its parameter turned
        non-finite, or when no optimizer step ran (``stepped``)."""
        checks, grads, found, acts = self._checks, self._grad_checks, self._found, self._acts
        self._checks, self._grad_checks, self._found, self._acts = [], {}, {}, []
        buf = self.buffer
        if (isinstance(loss, (int, float)) and math.isfinite(loss)
                and (buf is None or buf.device.type != "cpu"
                     or math.isfinite(buf.data[:buf.used].sum().item()))):
            return found
        checks += acts
        if not stepped:
            checks += grads.values()
        for key, t in _not_finite([(k, t) for k, t in checks if t.device.type == "cpu"]):
            found[key] = _nonfinite_counts(t)
            grad = grads.get(key) if stepped else None
            if grad is not None and grad[1].device.type == "cpu":
                found[grad[0]] = _nonfinite_counts(grad[1])
        return found
