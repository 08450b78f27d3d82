"""StatsListener: the Python form of Deeplearning4j's StatsListener, for PyTorch.

On iterations it does not report it costs the training thread a counter (no hooks are in
place, no device synchronisation, the loss is not touched). On reported iterations its hooks
copy (samples of) the watched tensors into a capture buffer (embedviz.monitor._capture) and
``step()`` hands the report to the sink that summarizes and writes it (embedviz.monitor._sink).
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from embedviz.monitor._capture import BufferPool, Capture
from embedviz.monitor._sink import ProcessSink, Report, ThreadSink
from embedviz.monitor._static import shapes, static_info

from embedviz.errors import InvalidRecordError
from embedviz.health import Checker
from embedviz.records import Metric, Session
from embedviz.store import SQLiteStore, Store, open_store

log = logging.getLogger("embedviz.monitor")

#: background="auto" summarizes in a worker process from this many watched parameters on
#: (on the CPU, into an SQLite file): below it, a thread's summaries cost training less
#: than a process's hand-overs and wakeups
PROCESS_PARAMETERS = 100_000
BACKGROUNDS = ("auto", "thread", "process")
#: capture buffers beyond max_pending + 2 that reports may take while the worker process
#: starts (~0.3 s: a fast loop's first reports would otherwise be dropped)
STARTING_BUFFERS = 32


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


def _check_int(name: str, value: Any, low: int, high: int | None = None, hint: str = "") -> None:
    if (isinstance(value, bool) or not isinstance(value, int) or value < low
            or (high is not None and value > high)):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InvalidRecordError(f"{name} must be an integer {span} (got {value!r}){hint}")


def _matches(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    return (any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude))


class ListenerHandle:
    """``attach()``'s result: ``remove()`` takes the hooks away and writes what is pending."""

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
        scaled to the full size; NaN and Inf counted over every element whenever the loss or
        a sampled value is not finite). ``None``: every element, always.
    max_pending: reports that may wait to be summarized; more are dropped and counted.
    close_timeout: seconds ``remove()``/``close()`` waits for pending reports.
    flush_seconds: reports are written in batches at most this often: a report is in the
        store about this long after it was taken.
    num_classes: the classes of a cross-entropy score: the health checks compare the first
        score with chance, ln(num_classes).
    checks: run the health checks (embedviz.health) on the background path as reports
        arrive, writing their findings; False: none; a dict: parameters per check
        (``{"dead_units": {"threshold": 0.95}}``, ``{"loss_noisy": False}``).
    background: where summaries are made: ``"process"``, a worker process at a low
        scheduling priority (CPU tensors, an SQLite store, Linux); ``"thread"``, a thread of
        this process; ``"auto"``: the process for models of at least PROCESS_PARAMETERS
        watched parameters where it can, the thread otherwise.
    """

    def __init__(self, store: Store | str | os.PathLike, frequency: int = 10, *,
                 session: str | None = None, session_name: str | None = None,
                 tags: dict | None = None, hyperparameters: dict | None = None,
                 worker: str = "0", watch: Sequence[str] = ("*",), ignore: Sequence[str] = (),
                 histograms: bool = True, activations: bool = True, bins: int = 20,
                 sample_limit: int | None = 4096,
                 max_pending: int = 4, close_timeout: float = 5.0, flush_seconds: float = 1.0,
                 background: str = "auto", num_classes: int | None = None,
                 checks: bool | dict = True) -> None:
        _check_int("frequency", frequency, 1, hint=": report every `frequency` iterations, e.g. 10")
        _check_int("bins", bins, 2, 10_000)
        _check_int("max_pending", max_pending, 1)
        if sample_limit is not None:
            _check_int("sample_limit", sample_limit, 1024, hint=" or None (every element)")
        if isinstance(watch, str) or isinstance(ignore, str):
            raise InvalidRecordError("watch and ignore take a list of patterns, e.g. "
                                     "watch=['fc*'] (got a string)")
        if background not in BACKGROUNDS:
            raise InvalidRecordError(f"background must be one of {', '.join(BACKGROUNDS)} "
                                     f"(got {background!r})")
        if num_classes is not None:
            _check_int("num_classes", num_classes, 2, hint=": the classes of a cross-entropy score")
        if not isinstance(checks, (bool, dict)):
            raise InvalidRecordError(f"checks must be True, False or a dict of per-check "
                                     f"parameters (got {type(checks).__name__})")
        #: the health checks' arguments (None: no checks)
        self._checks: dict[str, Any] | None = None if checks is False else {
            "num_classes": num_classes, "options": checks if isinstance(checks, dict) else None}
        if self._checks is not None:
            Checker(**self._checks)  # (bad options fail here, not in the background)
        self.store = open_store(store)
        self._owns_store = self.store is not store  # (opened here: closed here)
        self.frequency = frequency
        info = {} if num_classes is None else {"num_classes": num_classes}
        record = (Session(name=session_name, tags=tags or {}, info=info) if session is None
                  else Session(id=session, name=session_name, tags=tags or {}, info=info))
        self.session, self._session_record = record.id, record
        self.worker = str(worker)
        self.hyperparameters = dict(hyperparameters or {})
        self.watch, self.ignore = tuple(watch), tuple(ignore)
        self.histograms, self.activations, self.bins = histograms, activations, bins
        self.sample_limit = sample_limit
        self.max_pending, self.close_timeout = max_pending, close_timeout
        self.flush_seconds = float(flush_seconds)
        self.background = background
        self.iteration = 0
        self.epoch: int | None = None
        self._sink: ThreadSink | ProcessSink | None = None
        self._pool: BufferPool | None = None
        self._capture = Capture(sample_limit, self._acquire)
        self._warned: set[str] = set()
        self._own_seconds = 0.0
        self._dropped = 0  # reports that found no free capture buffer
        self._lost_before = [0, 0]  # (dropped, failed) of sinks already closed
        self._lrs: dict[str, float] = {}
        self._grads_taken = self._params_taken = self._stepped = self._grads_after_step = False
        self._model: torch.nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._params: dict[str, torch.nn.Parameter] = {}
        self._shapes: dict[str, dict] = {}
        self._trained_shapes: set[str] = set()  # (recorded from a training pass)
        self._order: list[str] = []
        self._static_sent = False
        self._hooks: list = []  # (handle, hook) of each hook registered
        self._armed = False
        self._leaves: dict[int, str] = {}  # id(leaf module) -> its name
        self._watched_outputs: set[str] = set()  # leaves whose outputs are recorded
        self._device: torch.device | None = None
        self._dtype = torch.float32
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
        self._capture.forget()
        self._leaves = {id(module): name or "output" for name, module in model.named_modules()
                        if not any(True for _ in module.children())}  # (the model, if alone)
        self._watched_outputs = {name for name in self._leaves.values()
                                 if self.activations and _matches(name, self.watch, self.ignore)}
        dtypes = {p.dtype for p in self._params.values()}
        self._dtype = torch.float64 if torch.float64 in dtypes else torch.float32
        self._device = next(iter(self._params.values())).device if self._params else None
        if self._sink is None:
            self._open_sink()
        self._window = self._new_window()
        if self._reporting():
            self._arm()
        return ListenerHandle(self)

    def _open_sink(self, thread: bool = False) -> None:
        """The pool of capture buffers (each report that may wait, the one being summarized,
        the one being captured) and the sink, as ``background`` says; ``thread``: a thread
        for a worker that died (the session and static info again: they may be lost)."""
        process = not thread and self._wants_process()
        if not thread or self._pool is None:  # (a thread after a dead worker keeps its pool)
            self._pool = BufferPool(self.max_pending + 2, shared=process)
        self._static_sent = self._static_sent and not thread
        try:
            self._sink = ProcessSink(self.store, self._pool, close_timeout=self.close_timeout,  # type: ignore[arg-type]
                                     flush_seconds=self.flush_seconds, checks=self._checks) if process else None
        except Exception as exc:  # (its buffers serve a thread as well)
            self._warn_once("process", "could not start the worker process; summarizing on a "
                            "thread instead", exc)
        self._sink = self._sink or ThreadSink(self.store, self._pool, max_pending=self.max_pending,
                                              flush_seconds=self.flush_seconds,
                                              close_timeout=self.close_timeout, checks=self._checks)
        if not self._static_sent:
            self._sink.submit([self._session_record])

    def _wants_process(self) -> bool:
        if self.background == "thread":
            return False
        can = (isinstance(self.store, SQLiteStore) and not self.store.readonly
               and hasattr(os, "memfd_create") and hasattr(socket, "send_fds")
               and all(p.device.type == "cpu" for p in self._params.values()))
        if self.background == "process":
            if not can:
                self._warn_once("process", "background='process' needs CPU tensors, an SQLite "
                                "store opened for writing and Linux; summarizing on a thread")
            return can
        return can and sum(p.numel() for p in self._params.values()) >= PROCESS_PARAMETERS

    def _acquire(self, device: torch.device) -> Any:
        """A free capture buffer (None: every one is in use, the report is dropped)."""
        if self._sink is None or self._pool is None:
            return None
        self._sink.collect()
        pool, starting = self._pool, getattr(self._sink, "starting", False)
        pool.size = max(self.max_pending + 2, pool.size if starting else 0)
        buf = pool.acquire(self._device or device, self._dtype)
        if buf is None and starting and pool.size < self.max_pending + 2 + STARTING_BUFFERS:
            pool.size += 1  # (the worker is still starting: a fast loop waits for it)
            buf = pool.acquire(self._device or device, self._dtype)
        return buf

    def _arm(self) -> None:
        """Hook into the model and optimizer for one reported iteration. Hooks are there only
        while an iteration is reported (a forward hook costs every module call Python work);
        one global module forward hook, not one per leaf."""
        if self._armed or self._model is None:
            return
        self._armed = True
        if self._hooks:  # registered before: back in place under the same keys
            for handle, hook in self._hooks:
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

    def _detach(self) -> None:  # (ListenerHandle.remove)
        self._disarm(forget=True)
        self.close()

    def close(self) -> None:
        """Write what is pending (waiting at most ``close_timeout`` seconds) and stop."""
        self._capture.reset()
        self._retire_sink()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._owns_store:
            self.store.close()

    def _retire_sink(self, wait: bool = True) -> None:
        """Close the sink (in the background unless ``wait``), keeping its counts."""
        sink, self._sink = self._sink, None
        if sink is not None:
            if wait:
                sink.close(self.close_timeout)
            else:
                threading.Thread(target=sink.close, args=(self.close_timeout,), daemon=True).start()
            self._lost_before[0] += sink.dropped
            self._lost_before[1] += sink.failed

    # ------------------------------------------------------------------ hooks (training thread)
    def _reporting(self) -> bool:
        return self.iteration % self.frequency == 0

    def _on_forward(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        name = self._leaves.get(id(module))  # (other modules, other models: not ours)
        if name is None:
            return
        # a training pass's outputs only: not those of a validation pass (no_grad or eval())
        training = module.training and torch.is_grad_enabled()
        if name not in self._shapes or (training and name not in self._trained_shapes):
            self._record_shapes(name, inputs, output, training)
        if name in self._watched_outputs and training:
            if name not in self._capture.seen:  # (several passes before one step: the first)
                self._capture_activation(name, output)
            elif self._capture.holding_outputs:  # another pass: keep nothing of the first
                self._check_activations()

    @_guarded
    def _check_activations(self) -> None:
        self._capture.check_activations()

    @_guarded
    def _record_shapes(self, name: str, inputs: Any, output: Any, training: bool) -> None:
        """The shapes of the first training pass (of the first pass until one comes: a
        sanity-check validation pass before training, a module kept in eval() mode)."""
        if name not in self._shapes:
            self._order.append(name)
        self._shapes[name] = {"input": shapes(inputs), "output": shapes(output)}
        if training:
            self._trained_shapes.add(name)

    @_guarded
    def _capture_activation(self, name: str, output: Any) -> None:
        self._capture.activation(name, output)

    def _grads(self) -> dict[str, torch.Tensor]:
        return {n: p.grad for n, p in self._params.items() if p.grad is not None}

    @_guarded
    def _pre_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if not self._reporting() or self._capture.before is not None:
            return
        # with a closure, backward runs inside step(): gradients are read after it
        self._grads_after_step = len(args) > 1 or "closure" in kwargs  # (args[0]: the optimizer)
        # the parameters before the step, where their updates will be, and the gradients
        blocks = self._capture.tensors(self._device or torch.device("cpu"), (
            "update", self._params), *(() if self._grads_after_step else (("gradient", self._grads()),)))
        self._capture.before = blocks.get("update")
        self._grads_taken = not self._grads_after_step

    @_guarded
    def _post_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        cap = self._capture
        if not self._reporting() or cap.before is None or self._params_taken:
            return
        device = self._device or torch.device("cpu")
        if self._grads_after_step:
            cap.tensors(device, ("gradient", self._grads()))
            self._grads_taken = True
        after = cap.tensors(device, ("param", self._params)).get("param")
        self._params_taken = self._stepped = True
        if after is not None:  # before becomes the update, there (see Report.update)
            cap.update = (*cap.before, after[0])
        self._lrs = {str(i): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)
                     if isinstance(g.get("lr"), (int, float))}

    # ------------------------------------------------------------------ the loop's calls
    def step(self, loss: Any = None, batch_size: int | None = None, epoch: int | None = None) -> None:
        """Call once per iteration, after ``optimizer.step()``.

        ``loss``: the minibatch loss (a tensor is fine: on a device it is read in the
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
        try:
            if reporting and self._sink is not None:
                self._report(loss, now)
        finally:
            self.iteration += 1
            if reporting:
                self._capture.reset()
                self._lrs = {}
                self._grads_taken = self._params_taken = self._stepped = False
                self._grads_after_step = False
        if self._sink is not None:
            if self._reporting():
                self._arm()
            elif self._armed:
                self._disarm()

    def log_metric(self, name: str, value: Any, iteration: int | None = None) -> None:
        """Record a metric (validation loss, accuracy) at ``iteration`` (default: the last)."""
        try:
            it = max(self.iteration - 1, 0) if iteration is None else iteration
            value = value.detach() if isinstance(value, torch.Tensor) else value
            if self._sink is not None:
                self._sink.submit([Metric(self.session, name, float(value), it, self.worker)])
            else:
                self._warn_once("metric-detached", "log_metric called while not attached; "
                                "attach the listener first")
        except Exception as exc:
            self._warn_once("log_metric", "log_metric failed", exc)

    # ------------------------------------------------------------------ reporting
    def _new_window(self) -> dict:
        return {"start": time.perf_counter(), "steps": 0, "examples": 0, "own": self._own_seconds,
                "busy": self._sink.busy_seconds if self._sink else 0.0}

    def _report(self, loss: Any, now: float) -> None:
        sink, cap = self._sink, self._capture
        assert sink is not None
        no_room = isinstance(sink, ProcessSink) and self._pool is not None and self._pool.warning
        if sink.gone or no_room:  # the worker died, or no shared memory: a thread from here on
            if no_room:
                self._warn_once("pool", f"{no_room}; summarizing on a thread")
            self._retire_sink(wait=False)  # (a live worker writes what it has, meanwhile)
            self._open_sink(thread=True)
            sink = self._sink
            assert sink is not None
        w, self._window = self._window, self._new_window()
        elapsed = max(now - w["start"], 1e-9)
        device = self._device or torch.device("cpu")
        if not self._grads_taken:  # no optimizer hooks ran
            cap.tensors(device, ("gradient", self._grads()))
        if not self._params_taken:
            cap.tensors(device, ("param", self._params))
        if cap.missed:  # every capture buffer is in use: the summarizer is behind
            self._dropped += 1
            self._warn_once("dropped", "the store is not keeping up: dropping reports "
                            "(counted as monitor/dropped_reports)")
            return
        if isinstance(loss, torch.Tensor) and (loss.device.type == "cpu" or isinstance(sink, ProcessSink)):
            loss = loss.item()  # (on a device it is read in the background)
        elif isinstance(loss, torch.Tensor):
            loss = loss.detach()
        nonfinite = cap.nonfinite(loss if loss is not None else float("nan"), self._stepped)
        scalars = {f"lr/{k}": v for k, v in self._lrs.items()}
        if w["steps"] and self.iteration > 0:
            scalars["timing/iteration_ms"] = 1000.0 * elapsed / w["steps"]
            scalars["timing/batches_per_s"] = w["steps"] / elapsed
            if w["examples"]:
                scalars["timing/examples_per_s"] = w["examples"] / elapsed
            scalars["timing/listener_ms"] = 1000.0 * (self._own_seconds - w["own"]) / w["steps"]
            scalars["timing/listener_background_ms"] = 1000.0 * (sink.busy_seconds - w["busy"]) / w["steps"]
        if device.type == "cuda":
            scalars["memory/device_allocated_bytes"] = float(torch.cuda.memory_allocated(device))
            scalars["memory/device_max_allocated_bytes"] = float(torch.cuda.max_memory_allocated(device))
        scalars["monitor/dropped_reports"] = float(self.dropped_reports)
        scalars["monitor/failed_reports"] = float(self._lost_before[1] + sink.failed)
        static = None if self._static_sent else static_info(self)
        self._static_sent = True
        buf = cap.take()
        sink.submit(Report(
            self.session, self.worker, self.iteration, self.epoch, loss, scalars,
            layout=buf.layout if buf else [], buffer=buf.index if buf else -1,
            used=buf.used if buf else 0, dtype="float64" if self._dtype == torch.float64 else "float32",
            update=cap.update, bins=self.bins if self.histograms else None, nonfinite=nonfinite,
            static=static))

    def _warn_once(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("embedviz monitor: %s", message, exc_info=exc)

    @property
    def dropped_reports(self) -> int:
        """Reports dropped because the store did not keep up (so far, over every attach)."""
        return self._dropped + self._lost_before[0] + (self._sink.dropped if self._sink else 0)
