"""StatsListener: the Python form of Deeplearning4j's StatsListener, for PyTorch.

Attach it to a model and its optimizer; call :meth:`StatsListener.step` once per training
iteration. Every ``frequency`` iterations it records, for every watched parameter, the
parameter, its gradient (as the optimizer saw it) and its update (the change the optimizer
applied, learning rate, momentum and weight decay included), every watched leaf module's
output, the score, learning rates, timing and memory.

What it costs the training thread: on iterations that are not reported, a counter and a
clock read (no device synchronisation, the loss is not touched). On reported iterations, a
few fused copies of the watched tensors (of an even sample of those above ``sample_limit``)
into one flat buffer and, when the loss or a sampled value is not finite, one sum per sampled
parameter and activation, so that a NaN or Inf is counted exactly. Summaries are computed off the training thread: for CPU tensors into an
SQLite store by a worker process reading the buffer from shared memory, otherwise by a
background thread, on the tensors' device (only small results leave it). ``max_pending``
bounds how many reports' buffers may wait.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import math
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from embedviz.monitor._report import Report, Slot, SlotPool
from embedviz.monitor._writer import BackgroundWriter
from embedviz.monitor.stats import HISTOGRAM_SAMPLE

import embedviz
from embedviz.errors import InvalidRecordError
from embedviz.records import Metric, Session
from embedviz.store import Store, open_store

log = logging.getLogger("embedviz.monitor")

#: samples of large tensors are taken in blocks of this many neighbours (64 bytes of float32)
BLOCK = 16


def _guarded(method: Callable) -> Callable:
    """Run a listener method on the training thread; any exception is logged once and
    swallowed so that it never reaches the training loop."""

    @functools.wraps(method)
    def wrapper(self: StatsListener, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self._warn_once(f"{method.__name__}:{type(exc).__name__}",
                            f"{method.__name__} failed; training goes on unmonitored there", exc)
            return None
        finally:
            self._own_seconds += time.perf_counter() - t0

    return wrapper


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


def _shapes(value: Any) -> list[list[int]]:
    if isinstance(value, torch.Tensor):
        return [list(value.shape)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _shapes(v)]
    return []


def _matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    return (any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude))


class _StepPlan:
    """What a reported optimizer step copies, worked out once per attach: the parameters'
    sample views and every block's place and keys, so that a step with a gradient for every
    watched parameter costs two fused copies and little Python (see _pre_step)."""

    def __init__(self, listener: StatsListener) -> None:
        names, params = list(listener._params), list(listener._params.values())
        self.params = params
        self.ptrs = [p.data_ptr() for p in params]
        strides = [listener._stride(p) for p in params]
        counts = [listener._count(p, s) for p, s in zip(params, strides)]
        totals = [p.numel() for p in params]
        self.views = [listener._param_view(n, p) for n, p in zip(names, params)]
        #: gradients copied from a sample view: (position, stride, elements kept)
        self.sampled = [(i, s, c) for i, (s, c) in enumerate(zip(strides, counts)) if s > 1]
        self.size = sum(counts)
        self.pre = ([(f"update/{n}", c, t) for n, c, t in zip(names, counts, totals)]
                    + [(f"gradient/{n}", c, t) for n, c, t in zip(names, counts, totals)])
        self.post = [(f"param/{n}", c, t) for n, c, t in zip(names, counts, totals)]
        self.checks = [(f"param/{names[i]}", params[i]) for i, _, _ in self.sampled]
        self.grad_keys = [(f"param/{names[i]}", f"gradient/{names[i]}", i) for i, _, _ in self.sampled]
        #: the gradient blocks' shapes (a whole gradient is copied as it is)
        self.grad_shapes = [p.shape if s == 1 else torch.Size((c // BLOCK, BLOCK))
                            for p, s, c in zip(params, strides, counts)]

    @staticmethod
    def make(listener: StatsListener) -> _StepPlan | None:
        params = listener._params.values()
        if not params or not all(p.is_contiguous() for p in params):
            return None  # (a channels_last weight's sample is a copy: the general way)
        return _StepPlan(listener)

    def valid(self) -> bool:
        return [p.data_ptr() for p in self.params] == self.ptrs


class ListenerHandle:
    """What :meth:`StatsListener.attach` returns: ``remove()`` takes every hook away and
    writes what is pending; also a context manager."""

    def __init__(self, listener: StatsListener) -> None:
        self.listener = listener

    def remove(self) -> None:
        self.listener._detach()

    def __enter__(self) -> ListenerHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


class StatsListener:
    """Records training statistics into a store.

    Parameters
    ----------
    store: a :class:`~embedviz.store.Store` or anything :func:`embedviz.open_store` takes.
    frequency: report every this many iterations (iteration 0 is always reported).
    session, session_name, tags, hyperparameters: the session to record into (created if
        missing; ``session`` defaults to a new id), its name, tags, and hyperparameters
        stored with the static info.
    worker: this process's worker id within the session (e.g. the rank).
    watch, ignore: shell-style patterns on parameter and module names (``"fc*"``).
    histograms, activations: record histograms / leaf-module outputs (of training passes:
        grad enabled and the module in training mode; a validation pass is not taken).
    bins: histogram bins.
    sample_limit: tensors with more elements are summarized from an even sample of about
        this many (the same positions every report, in blocks of 16 neighbours spread so that
        every column is visited; activations: the batch's first whole examples; counts
        scaled to the full size; NaN and Inf of parameters, gradients and activations
        counted over every element on CPU whenever the loss or a sampled value is not
        finite, which a bad value makes it (see _nonfinite); an update's from its sample):
        copying
        and reducing every element of every large tensor would cost the training loop far
        more than the numbers are worth. ``None``: every element, always.
    histogram_sample: on an accelerator, tensors with more elements (after sampling) get
        their histogram from a strided sample of this many (on CPU every element counts).
    max_pending: reports that may wait for the store before the oldest are dropped.
    close_timeout: seconds ``remove()``/``close()`` waits for pending reports.
    flush_seconds: reports are written in batches at most this often (see
        embedviz.monitor._writer): a report is in the store about this long after it was taken.
    """

    def __init__(self, store: Store | str | os.PathLike, frequency: int = 10, *,
                 session: str | None = None, session_name: str | None = None,
                 tags: dict | None = None, hyperparameters: dict | None = None,
                 worker: str = "0", watch: Sequence[str] = ("*",), ignore: Sequence[str] = (),
                 histograms: bool = True, activations: bool = True, bins: int = 20,
                 histogram_sample: int = HISTOGRAM_SAMPLE, sample_limit: int | None = 4096,
                 max_pending: int = 4,
                 close_timeout: float = 5.0, flush_seconds: float = 1.0) -> None:
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise InvalidRecordError(f"frequency must be an integer >= 1 (got {frequency!r}): "
                                     "report every `frequency` iterations, e.g. 10")
        if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 10_000:
            raise InvalidRecordError(f"bins must be an integer in [2, 10000] (got {bins!r})")
        if isinstance(watch, str) or isinstance(ignore, str):
            raise InvalidRecordError("watch and ignore take a list of patterns, e.g. "
                                     "watch=['fc*'] (got a string)")
        if not isinstance(max_pending, int) or max_pending < 1:
            raise InvalidRecordError(f"max_pending must be an integer >= 1 (got {max_pending!r})")
        self.store = open_store(store)
        self.frequency = frequency
        session_record = (Session(name=session_name, tags=tags or {}) if session is None
                          else Session(id=session, name=session_name, tags=tags or {}))
        self.session = session_record.id
        self._session_record = session_record
        self.worker = str(worker)
        self.hyperparameters = dict(hyperparameters or {})
        self.watch, self.ignore = tuple(watch), tuple(ignore)
        self.histograms, self.activations, self.bins = histograms, activations, bins
        self.histogram_sample = int(histogram_sample)
        if sample_limit is not None and (isinstance(sample_limit, bool) or not isinstance(sample_limit, int) or sample_limit < 1024):
            raise InvalidRecordError(f"sample_limit must be None (exact) or an integer >= 1024 "
                                     f"(got {sample_limit!r})")
        self.sample_limit = sample_limit
        self.max_pending, self.close_timeout = max_pending, close_timeout
        self.flush_seconds = float(flush_seconds)
        self.iteration = 0
        self.epoch: int | None = None
        self._writer: BackgroundWriter | None = None
        self._warned: set[str] = set()
        self._own_seconds = 0.0
        self._dropped_before = 0  # drops of writers already closed
        # what one reported iteration captured (see _reset_capture)
        self._slot: Slot | None = None
        self._before: tuple[int, int] | None = None  # where the parameters before the step lie
        self._update: tuple[int, int, int] | None = None  # and those after it (Report.update)
        self._grads_captured = self._params_captured = False
        self._checks: list[tuple[str, torch.Tensor]] = []  # sampled tensors to check for NaN/Inf
        self._grad_checks: dict[str, tuple[str, torch.Tensor]] = {}  # param key -> its gradient's
        self._stepped = False  # the optimizer's step hooks ran
        self._seen: set[str] = set()  # modules whose output was captured
        self._found: dict[str, tuple[int, int]] = {}  # exact (NaN, Inf) counts found so far
        self._act_checks: list[tuple[str, torch.Tensor]] = []  # sampled outputs (CPU)
        self._lrs: dict[str, float] = {}
        self._grads_after_step = False
        self._model: torch.nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._params: dict[str, torch.nn.Parameter] = {}
        self._shapes: dict[str, dict] = {}
        self._trained_shapes: set[str] = set()  # (recorded from a training pass)
        self._order: list[str] = []
        self._static_sent = False
        self._hooks: list = []  # (handle, hook) of each hook registered
        self._armed = False
        self._param_views: dict[str, tuple[int, torch.Tensor]] = {}
        self._step_plan: _StepPlan | None = None
        self._plans: dict[tuple, list[tuple[str, int, int, int]]] = {}
        self._leaves: dict[int, str] = {}  # id(leaf module) -> its name
        self._watched_outputs: set[str] = set()  # leaves whose outputs are recorded
        self._act_plans: dict[tuple, tuple] = {}
        self._pool: SlotPool | None = None
        self._window = self._new_window()

    # ------------------------------------------------------------------ attaching
    def attach(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
               ) -> ListenerHandle:
        """Hook into ``model`` (and ``optimizer``, for updates and learning rates)."""
        if not isinstance(model, torch.nn.Module):
            raise InvalidRecordError(f"attach needs a torch.nn.Module (got {type(model).__name__})"
                                     ": pass the model you train")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise InvalidRecordError(f"optimizer must be a torch.optim.Optimizer (got "
                                     f"{type(optimizer).__name__})")
        self._model, self._optimizer = model, optimizer
        self._params = {n: p for n, p in model.named_parameters()
                        if p.requires_grad and _matches(n, self.watch, self.ignore)}
        if not self._params:
            log.warning("embedviz monitor: no parameter of the model matches watch=%s "
                        "ignore=%s; only score, timing and memory are recorded",
                        self.watch, self.ignore)
        self._disarm(forget=True)  # attached again: the hooks of the earlier attach go
        self._param_views, self._plans = {}, {}
        self._step_plan = _StepPlan.make(self)
        self._leaves = {id(module): name or "output" for name, module in model.named_modules()
                        if not any(True for _ in module.children())}  # (the model, if alone)
        self._watched_outputs = {name for name in self._leaves.values()
                                 if self.activations and _matches(name, self.watch, self.ignore)}
        self._act_plans = {}
        if self._writer is None:
            self._writer = BackgroundWriter(self.store, max_pending=self.max_pending,
                                            flush_seconds=self.flush_seconds,
                                            close_timeout=self.close_timeout)
            self._writer.submit([self._session_record])
            # every report that may wait, the one being summarized, the one being captured
            self._pool = SlotPool(self._writer.slots, self._writer.shared_folder,
                                  self._writer.state)
        dtypes = {p.dtype for p in self._params.values()}
        self._dtype = torch.float64 if torch.float64 in dtypes else torch.float32
        self._device = next(iter(self._params.values())).device if self._params else None
        self._window = self._new_window()
        if self._reporting():
            self._arm()
        return ListenerHandle(self)

    def _arm(self) -> None:
        """Hook into the model and optimizer for one reported iteration. Hooks are there only
        while an iteration is reported (a forward hook costs every module call Python work).
        One global module forward hook, not one per leaf: arming and disarming every report
        then costs two registrations, whatever the size of the model."""
        if self._armed or self._model is None:
            return
        self._armed = True
        if self._hooks:  # registered before: back in place under the same keys (cheaper
            for handle, hook in self._hooks:  # than a registration, every report)
                hooks = handle.hooks_dict_ref()
                if hooks is not None:
                    hooks[handle.id] = hook
            return
        self._hooks = [(torch.nn.modules.module.register_module_forward_hook(self._on_forward),
                        self._on_forward)]
        if self._optimizer is not None:
            self._hooks.append((self._optimizer.register_step_pre_hook(self._pre_step),
                                self._pre_step))
            self._hooks.append((self._optimizer.register_step_post_hook(self._post_step),
                                self._post_step))

    def _disarm(self, forget: bool = False) -> None:
        """Take the hooks away (``forget``: for good, as for another model or optimizer)."""
        self._armed = False
        for handle, _ in self._hooks:
            hooks = handle.hooks_dict_ref()
            if hooks is not None:
                hooks.pop(handle.id, None)
        if forget:
            self._hooks = []

    def _detach(self) -> None:
        self._disarm(forget=True)
        self.close()

    def close(self) -> None:
        """Write what is pending (waiting at most ``close_timeout`` seconds) and stop."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close(self.close_timeout)
            self._dropped_before += writer.dropped

    # ------------------------------------------------------------------ hooks (training thread)
    def _reporting(self) -> bool:
        return self.iteration % self.frequency == 0

    def _on_forward(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        name = self._leaves.get(id(module))  # (other modules, other models: not ours)
        if name is None:
            return
        # a training pass's outputs only: not those of a validation pass (no_grad or eval())
        # run between two steps, which would pass for the reported iteration's activations
        training = module.training and torch.is_grad_enabled()
        if name not in self._shapes or (training and name not in self._trained_shapes):
            self._record_shapes(name, module, inputs, output, training)
        if name in self._watched_outputs and training:
            if name not in self._seen:
                # (several forward passes before one step: the first batch's outputs)
                self._capture_activation(name, output)
            elif self._act_checks:  # another pass: keep no outputs of the first any longer
                self._check_activations()

    @_guarded
    def _record_shapes(self, name: str, module: torch.nn.Module, inputs: Any, output: Any,
                       training: bool) -> None:
        """The shapes of the first training pass (of the first pass until one comes: a
        sanity-check validation pass before training, a module kept in eval() mode)."""
        if name not in self._shapes:
            self._order.append(name)
        self._shapes[name] = {"input": _shapes(inputs), "output": _shapes(output)}
        if training:
            self._trained_shapes.add(name)

    @_guarded
    def _capture_activation(self, name: str, output: Any) -> None:
        """Copy (a sample of) a leaf module's output into the slot now: a later in-place
        operation (ReLU(inplace=True), ``x += skip``) may change it, and it is not kept
        alive. (Keeping CPU outputs for one fused copy with the gradients, where their
        version counters showed them unchanged, cost the reported iteration more on a 2-vCPU
        VM: 156 us instead of 82 for five outputs, as code run once per report runs cold.)"""
        t = output if type(output) is torch.Tensor else _first_tensor(output)
        if t is None or not t.is_floating_point():
            return
        self._seen.add(name)
        slot = self._slot or self._slot_for(t.device)
        if slot is None:
            return
        shape = t.shape
        plan = self._act_plans.get((name, shape))
        if plan is None:
            plan = self._act_plans[(name, shape)] = self._activation_plan(name, t)
        key, rows, stride, count, total, check, dst_shape = plan
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # (no graph for the copy)
        try:
            if rows:  # the batch's first whole examples: a batch is a random sample already,
                # and a unit's zero fraction stays what it is
                torch.narrow_copy(t, 0, 0, rows, out=slot.dst(dst_shape))
            elif stride == 1:
                slot.dst(dst_shape).copy_(t)
            else:  # one example too large: an even sample, like a parameter
                slot.dst(dst_shape).copy_(self._sample(t, stride, count))
            slot.commit(key, count, total)
            if check:  # NaN and Inf over every element, at the report, if the loss or a
                # sampled value is not finite (see _nonfinite); kept until then
                self._act_checks.append((key, t.detach()))
        finally:
            torch._C._set_grad_enabled(grad_mode)

    @_guarded
    def _check_activations(self) -> None:
        """Count NaN and Inf in the kept outputs now, over every element, and let them go."""
        acts, self._act_checks = self._act_checks, []
        for key, t in self._not_finite(acts):
            self._found[key] = self._count_nonfinite(t)

    def _activation_plan(self, name: str, t: torch.Tensor) -> tuple:
        """(key, whole examples kept or 0, stride, elements kept, elements, sampled, shape in
        the slot) for an output like ``t``."""
        n, limit, key = t.numel(), self.sample_limit, "activation/" + name
        if limit is None or n <= limit:
            return key, 0, 1, n, n, False, tuple(t.shape)
        per_row = n // max(t.shape[0], 1) if t.dim() > 1 else n
        if t.dim() > 1 and per_row <= limit:
            rows = limit // per_row
            return (key, rows, 1, rows * per_row, n, t.device.type == "cpu",
                    (rows, *t.shape[1:]))
        stride = self._stride(t)
        count = self._count(t, stride)
        return key, 0, stride, count, n, t.device.type == "cpu", (count // BLOCK, BLOCK)

    def _slot_for(self, device: torch.device) -> Slot | None:
        """This iteration's capture buffer (taken from the pool at the first capture)."""
        if self._slot is None and self._pool is not None:
            self._slot = self._pool.acquire(self._device or device, self._dtype)
            if self._slot is None:
                self._warn_once("no-slot", "no capture buffer free; this report is skipped")
        return self._slot

    def _capture(self, *groups: tuple[str, Mapping[str, torch.Tensor]]) -> dict[str, tuple[int, int]]:
        """Copy (samples of) the tensors of each (kind, {name: tensor}) group into the slot, in
        one fused copy; returns where each kind's block lies."""
        slot = self._slot_for(self._device or torch.device("cpu"))
        if slot is None:
            return {}
        keys: list[str] = []
        views: list[torch.Tensor] = []
        totals: list[int] = []
        blocks = {}
        start = slot.used
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # (views without detach, copies without a graph)
        try:
            for kind, tensors in groups:
                plan = self._plan(kind, tensors)
                if kind in ("param", "update"):
                    views += [self._param_view(n, t) for n, t in tensors.items()]
                    if kind == "param":  # (after the step: what the parameters are now)
                        self._checks += [(key, t) for t, (key, count, _, total) in
                                         zip(tensors.values(), plan) if count < total]
                else:  # gradients: new tensors every iteration (a whole one is copied as is)
                    views += [t if stride == 1 else self._sample(t, stride, count)
                              for t, (_, count, stride, _) in zip(tensors.values(), plan)]
                    # (checked over every element only if its parameter turns out non-finite,
                    # or if no optimizer step ran: a NaN or Inf in a gradient lands in the
                    # parameter it updates)
                    self._grad_checks.update(
                        ("param" + key[len(kind):], (key, t)) for t, (key, count, _, total)
                        in zip(tensors.values(), plan) if count < total)
                keys += [key for key, _, _, _ in plan]
                totals += [total for _, _, _, total in plan]
                size = sum(count for _, count, _, _ in plan)
                blocks[kind] = (start, start + size)
                start += size
            slot.add(keys, views, totals)
        finally:
            torch._C._set_grad_enabled(grad_mode)
        return blocks

    def _plan(self, kind: str, tensors: Mapping[str, torch.Tensor]) -> list[tuple[str, int, int, int]]:
        """(key, elements kept, stride, elements) of each tensor; kept from report to report
        (made anew if a tensor's size changed)."""
        key = (kind, tuple(tensors))
        plan = self._plans.get(key)
        if plan is None or any(t.numel() != p[3] for t, p in zip(tensors.values(), plan)):
            plan = []
            for n, t in tensors.items():
                stride = self._stride(t)
                plan.append((f"{kind}/{n}", self._count(t, stride), stride, t.numel()))
            self._plans[key] = plan
        return plan

    def _stride(self, t: torch.Tensor) -> int:
        """1 if all of ``t`` is kept; else how many elements apart the blocks of its sample
        begin. Tensors above sample_limit are sampled evenly, in blocks of BLOCK neighbours
        (a cache line: a sample of single elements cost a cache line per element, and most
        of a report's copying time); block starts share at most BLOCK with the last
        dimension, so that a matrix's sample visits every column."""
        n, limit = t.numel(), self.sample_limit
        if limit is None or n <= limit:
            return 1
        stride = (n - BLOCK) // (limit // BLOCK - 1)  # (>= BLOCK: n > limit)
        step = BLOCK if stride >= 8 * BLOCK else 1  # blocks on cache lines, if spread allows
        stride -= stride % step
        cols = t.shape[-1] if t.dim() else 1
        while stride > BLOCK and math.gcd(stride, cols) > BLOCK:
            stride -= step
        return stride

    def _count(self, t: torch.Tensor, stride: int) -> int:
        """Elements of ``t`` kept (see :meth:`_stride`)."""
        return t.numel() if stride == 1 else self.sample_limit // BLOCK * BLOCK  # type: ignore[operator]

    @staticmethod
    def _sample(t: torch.Tensor, stride: int, count: int) -> torch.Tensor:
        """``count // BLOCK`` blocks of BLOCK neighbours of ``t``, ``stride`` elements
        apart, as a view if it can be."""
        return (t if t.is_contiguous() else t.reshape(-1)).as_strided((count // BLOCK, BLOCK),
                                                                      (stride, 1))

    def _param_view(self, name: str, p: torch.Tensor) -> torch.Tensor:
        """The sample of a parameter, kept between reports (the optimizer changes it in
        place; made anew if its storage was replaced)."""
        if not p.is_contiguous():  # (channels_last weights): its sample is a copy, made anew
            return self._view(p)
        cached = self._param_views.get(name)
        if cached is None or cached[0] != p.data_ptr():
            cached = self._param_views[name] = (p.data_ptr(), self._view(p.detach()))
        return cached[1]

    @_guarded
    def _pre_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if not self._reporting() or self._before is not None:
            return
        # with a closure, backward runs inside step(): gradients are read after it
        self._grads_after_step = len(args) > 1 or "closure" in kwargs  # (args[0]: the optimizer)
        if not self._grads_after_step and self._pre_step_planned():
            return
        # the parameters before the step, where their updates will be, and the gradients
        blocks = self._capture(("update", self._params), *(
            () if self._grads_after_step else (("gradient", self._grads()),)))
        self._before = blocks.get("update")
        self._grads_captured = not self._grads_after_step

    def _pre_step_planned(self) -> bool:
        """The parameters before the step and the gradients, by the step plan, in one fused
        copy; False if the plan does not fit this step (the general way then)."""
        plan = self._step_plan
        if plan is None:
            return False
        maybe = [p.grad for p in plan.params]
        if not plan.valid():
            self._step_plan = _StepPlan.make(self)
            return False
        if any(g is None for g in maybe):  # (not "None in grads": that compares tensors)
            return False
        grads = cast("list[torch.Tensor]", maybe)
        slot = self._slot or self._slot_for(self._device or torch.device("cpu"))
        if slot is None:
            return True
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            grads_seen = list(grads)  # (the whole gradients, for the NaN checks)
            for i, stride, count in plan.sampled:
                grads[i] = self._sample(grads[i], stride, count)
            start = slot.used
            torch._foreach_copy_(slot.planned(plan, "pre"), plan.views + grads)
        finally:
            torch._C._set_grad_enabled(grad_mode)
        slot.entries += plan.pre
        slot.used = start + 2 * plan.size
        self._before = (start, start + plan.size)
        self._grads_captured = True
        # (checked over every element only if its parameter turns out non-finite, or if no
        # optimizer step ran: a NaN or Inf in a gradient lands in the parameter it updates)
        self._grad_checks = {pk: (gk, grads_seen[i]) for pk, gk, i in plan.grad_keys}
        return True

    @_guarded
    def _post_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if not self._reporting() or self._before is None or self._params_captured:
            return
        if self._grads_after_step:
            self._capture_grads()
        plan, slot = self._step_plan, self._slot
        if plan is not None and slot is not None and self._before[0] + 2 * plan.size == slot.used:
            # planned: the parameters right after what pre_step copied
            start = slot.used
            grad_mode = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)
            try:
                torch._foreach_copy_(slot.planned(plan, "post"), plan.views)
            finally:
                torch._C._set_grad_enabled(grad_mode)
            slot.entries += plan.post
            slot.used = start + plan.size
            self._checks += plan.checks
            after: tuple[int, int] | None = (start, slot.used)
        else:
            after = self._capture(("param", self._params)).get("param")
        self._params_captured = self._stepped = True
        if after is not None and self._slot is not None:  # before becomes the update, there
            self._update = (*self._before, after[0])  # (see Report.update)
        self._lrs = {str(i): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)
                     if isinstance(g.get("lr"), (int, float))}

    def _grads(self) -> dict[str, torch.Tensor]:
        return {n: p.grad for n, p in self._params.items() if p.grad is not None}

    def _capture_grads(self) -> None:
        self._capture(("gradient", self._grads()))
        self._grads_captured = True

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` flattened, or an even sample of it when it is above sample_limit (the same
        positions every time for a given shape; see :meth:`_stride`)."""
        stride = self._stride(t)
        if stride == 1:
            return t.reshape(-1)
        return self._sample(t, stride, self._count(t, stride))

    def _nonfinite(self, full: bool = True) -> dict[str, tuple[int, int]]:
        """Exact (NaN, Inf) counts of the sampled tensors that hold any: a sum over every
        element finds those (CPU only: on a device, reading it back would synchronise).
        Parameters and activations, if ``full``: when the loss is not finite or a sampled
        value is not (a NaN or Inf parameter or activation reaches the loss: NaN x 0 is NaN;
        a bad gradient comes in whole rows or columns, which the sample visits); a gradient
        when its parameter turned non-finite (where a bad gradient lands), or when no
        optimizer step ran (e.g. skipped by a GradScaler because of it). The activations are
        the outputs as they are at the report (kept from the forward pass, on reported
        iterations only: a later in-place operation such as ReLU(inplace=True) may have
        turned a -Inf into 0), or were counted when a second forward pass began."""
        checks, self._checks = self._checks, []
        grads, self._grad_checks = self._grad_checks, {}
        found, self._found = self._found, {}
        acts, self._act_checks = self._act_checks, []
        if not full:
            return found
        checks += acts
        if not self._stepped:
            checks += grads.values()
        for key, t in self._not_finite([(k, t) for k, t in checks if t.device.type == "cpu"]):
            found[key] = self._count_nonfinite(t)
            grad = grads.get(key) if self._stepped else None
            if grad is not None and grad[1].device.type == "cpu":
                found[grad[0]] = self._count_nonfinite(grad[1])
        return found

    @staticmethod
    def _not_finite(checks: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        """Those of the (key, CPU tensor) ``checks`` whose sum over every element is not
        finite: they hold a NaN or Inf (or finite values so large that the sum overflows;
        counted exactly, those come out 0). One read-back for all of them."""
        if not checks:
            return []
        with torch.no_grad():
            sums = torch.stack([t.sum() for _, t in checks]).tolist()
        return [(k, t) for (k, t), total in zip(checks, sums) if not math.isfinite(total)]

    @staticmethod
    def _count_nonfinite(t: torch.Tensor) -> tuple[int, int]:
        return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())

    # ------------------------------------------------------------------ the loop's calls
    def step(self, loss: Any = None, batch_size: int | None = None, epoch: int | None = None) -> None:
        """Call once per iteration, after ``optimizer.step()``.

        ``loss``: the minibatch loss (a tensor is fine: it is read off the device in the
        background, only on reported iterations). ``batch_size``: examples in the batch, for
        examples/s. ``epoch``: the current epoch, if known.
        """
        it, f = self.iteration, self.frequency
        if it % f and (it + 1) % f and epoch is None and (batch_size is None or type(batch_size) is int):
            # neither reported nor next to one: two counters (nothing here can raise)
            w = self._window
            w["steps"] += 1
            w["examples"] += batch_size or 0
            self.iteration = it + 1
            return
        self._step(loss, batch_size, epoch)

    @_guarded
    def _step(self, loss: Any, batch_size: int | None, epoch: int | None) -> None:
        now = time.perf_counter()
        w = self._window
        w["steps"] += 1
        if batch_size is not None:
            w["examples"] += int(batch_size)
        if epoch is not None:
            self.epoch = int(epoch)
        reporting = self._reporting()
        if reporting and self._writer is not None:
            self._report(loss, now)
        self.iteration += 1
        if reporting:
            self._reset_capture()
        if self._writer is not None:
            if self._reporting():
                self._arm()
            elif self._armed:
                self._disarm()

    def log_metric(self, name: str, value: Any, iteration: int | None = None) -> None:
        """Record a named metric (validation loss, accuracy) at ``iteration`` (default: the
        last completed iteration). Written in the background, like everything else."""
        try:
            it = max(self.iteration - 1, 0) if iteration is None else iteration
            value = value.detach() if isinstance(value, torch.Tensor) else value
            if self._writer is not None:
                self._writer.submit([Metric(self.session, name, float(value), it, self.worker)])
            else:
                self._warn_once("metric-detached", "log_metric called while not attached; "
                                "attach the listener first")
        except Exception as exc:
            self._warn_once("log_metric", "log_metric failed", exc)

    # ------------------------------------------------------------------ reporting
    def _new_window(self) -> dict:
        return {"start": time.perf_counter(), "steps": 0, "examples": 0, "own": self._own_seconds,
                "busy": self._writer.busy_seconds if self._writer else 0.0}

    def _reset_capture(self) -> None:
        slot = self._slot
        if slot is not None and slot.pool is not None:  # captured, not reported (detached)
            slot.pool.release(slot)
        self._slot = None
        self._before = self._update = None
        self._grads_captured = self._params_captured = False
        self._checks = []
        self._grad_checks = {}
        self._stepped = False
        self._found = {}
        self._act_checks = []
        self._seen = set()
        self._lrs = {}
        self._grads_after_step = False

    def _report(self, loss: Any, now: float) -> None:
        writer = self._writer
        assert writer is not None
        w, self._window = self._window, self._new_window()
        elapsed = max(now - w["start"], 1e-9)
        if not self._grads_captured:  # no optimizer hooks ran
            self._capture_grads()
        if not self._params_captured:
            self._capture(("param", self._params))
        slot = self._slot
        if isinstance(loss, torch.Tensor) and loss.device.type == "cpu":
            loss = loss.item()  # (no synchronisation on CPU)
        # every element of the parameters is checked for NaN and Inf only when something is
        # off: a loss that is not finite (or not given) or a sampled value that is not
        nonfinite = self._nonfinite(full=not (
            isinstance(loss, (int, float)) and math.isfinite(loss)
            and (slot is None or slot.device.type != "cpu"
                 or math.isfinite(slot.view(0, slot.used).sum().item()))))
        scalars = {f"lr/{k}": v for k, v in self._lrs.items()}
        if w["steps"] and self.iteration > 0:
            scalars["timing/iteration_ms"] = 1000.0 * elapsed / w["steps"]
            scalars["timing/batches_per_s"] = w["steps"] / elapsed
            if w["examples"]:
                scalars["timing/examples_per_s"] = w["examples"] / elapsed
            scalars["timing/listener_ms"] = 1000.0 * (self._own_seconds - w["own"]) / w["steps"]
            scalars["timing/listener_background_ms"] = 1000.0 * (writer.busy_seconds - w["busy"]) / w["steps"]
        device = self._device  # (of the watched parameters, found at attach)
        if device is not None and device.type == "cuda":
            scalars["memory/device_allocated_bytes"] = float(torch.cuda.memory_allocated(device))
            scalars["memory/device_max_allocated_bytes"] = float(torch.cuda.max_memory_allocated(device))
        scalars["monitor/dropped_reports"] = float(writer.dropped)
        scalars["monitor/failed_reports"] = float(writer.failed)
        loss = loss.detach() if isinstance(loss, torch.Tensor) else loss
        static = None if self._static_sent else self._static_info()
        self._static_sent = True
        self._slot = None
        if slot is None:  # nothing captured (no buffer free): the numbers without summaries
            slot = Slot(SlotPool(0), torch.device("cpu"), torch.float32)
        writer.submit(Report(self.session, self.worker, self.iteration, self.epoch, loss, scalars,
                             slot, self.bins if self.histograms else None, nonfinite, static,
                             update=self._update, sample=self.histogram_sample))

    def _static_info(self) -> dict:
        model, opt = self._model, self._optimizer
        assert model is not None
        layers = []
        for name, module in model.named_modules():
            own = dict(module.named_parameters(recurse=False))
            if not name or (any(True for _ in module.children()) and not own):
                continue
            layers.append({
                "name": name, "type": type(module).__name__,
                "params": {k: list(p.shape) for k, p in own.items()},
                "n_params": int(sum(p.numel() for p in own.values())),
                "trainable": int(sum(p.numel() for p in own.values() if p.requires_grad)),
                "input_shapes": self._shapes.get(name, {}).get("input", []),
                "output_shapes": self._shapes.get(name, {}).get("output", []),
                "watched": [f"{name}.{k}" for k in own if f"{name}.{k}" in self._params],
            })
        edges = [[name.rpartition(".")[0], name] for name, _ in model.named_modules() if name]
        devices = sorted({str(p.device) for p in model.parameters()})
        hardware: dict[str, Any] = {"host": socket.gethostname(), "cpu_count": os.cpu_count(),
                                    "devices": devices, "torch_threads": torch.get_num_threads()}
        if torch.cuda.is_available() and any(d.startswith("cuda") for d in devices):
            props = torch.cuda.get_device_properties(torch.device(devices[0]))
            hardware["device_name"] = props.name
            hardware["device_memory_bytes"] = props.total_memory
        info: dict[str, Any] = {
            "model": {"type": type(model).__name__, "n_params": int(sum(p.numel() for p in model.parameters())),
                      "layers": layers, "graph": {"edges": edges, "execution_order": list(self._order)},
                      "repr": repr(model)[:20000]},
            "hyperparameters": self.hyperparameters,
            "listener": {"frequency": self.frequency, "bins": self.bins,
                         "sample_limit": self.sample_limit,
                         "sampled": {n: [self._count(p, self._stride(p)), p.numel()]
                                     for n, p in self._params.items() if self._stride(p) > 1},
                         "histograms": self.histograms, "activations": self.activations,
                         "watch": list(self.watch), "ignore": list(self.ignore)},
            "software": {"python": sys.version.split()[0], "torch": torch.__version__,
                         "numpy": np.__version__, "embedviz": embedviz.__version__,
                         "platform": platform.platform()},
            "hardware": hardware,
        }
        if opt is not None:
            info["optimizer"] = {
                "type": type(opt).__name__,
                "defaults": {k: v for k, v in opt.defaults.items() if isinstance(v, (int, float, str, bool, tuple, list, type(None)))},
                "param_groups": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()
                                  if k != "params" and isinstance(v, (int, float, str, bool, tuple, list, type(None)))}
                                 | {"n_params": int(sum(p.numel() for p in g["params"]))}
                                 for g in opt.param_groups],
            }
        return info

    def _warn_once(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("embedviz monitor: %s", message, exc_info=exc)

    @property
    def dropped_reports(self) -> int:
        """Reports dropped because the store did not keep up (so far, over every attach)."""
        return self._dropped_before + (self._writer.dropped if self._writer else 0)
