"""StatsListener: the Python form of Deeplearning4j's StatsListener, for PyTorch.

On iterations it does not report it costs the training thread a counter (no hooks are in
place but the optimizer's step counter, no device synchronisation, the loss is not
touched). On reported iterations its hooks copy (samples of) the watched tensors into a
capture buffer (embedviz.monitor._capture) and ``step()`` hands the report to the sink that
summarizes and writes it (embedviz.monitor._sink). What it watches of a model (compiled or
not): embedviz.monitor._model; its cost budget: embedviz.monitor._budget.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
from embedviz.monitor._budget import Budget
from embedviz.monitor._capture import BufferPool, Capture
from embedviz.monitor._hooks import Guard, Hooks, guarded
from embedviz.monitor._model import Watched, clean, watched
from embedviz.monitor._options import check_attach, check_listener, lrs_of
from embedviz.monitor._sink import ProcessSink, Report, Sink, ThreadSink, can_process
from embedviz.monitor._snapshots import MAX_ROWS, Snapshots
from embedviz.monitor._static import static_info
from embedviz.monitor._steps import Steps

from embedviz.errors import InvalidRecordError
from embedviz.health import Checker
from embedviz.records import Metric, Session
from embedviz.store import Store, open_store

log = logging.getLogger("embedviz.monitor")

#: background="auto" summarizes in a worker process from this many watched parameters on
#: (on the CPU, into an SQLite file): below it, a thread's summaries cost training less
#: than a process's hand-overs and wakeups
PROCESS_PARAMETERS = 100_000
#: capture buffers beyond max_pending + 2 that reports may take while the worker process
#: starts (~0.3 s: a fast loop's first reports would otherwise be dropped)
STARTING_BUFFERS = 32


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
    """Records training statistics into a store (README: "The training monitor").

    Parameters
    ----------
    store: a :class:`~embedviz.store.Store` or anything :func:`embedviz.open_store` takes.
    frequency: report every this many iterations (iteration 0 is always reported); an
        iteration is an optimizer step (see ``accumulation``).
    session, session_name, tags, hyperparameters: the session to record into (created if
        missing; ``session`` defaults to a new id, agreed by every rank of a torch.distributed
        job), its name, tags, and hyperparameters stored with the static info.
    worker: this process's worker id within the session (default: the rank in a
        torch.distributed job, else "0"). ``ranks``: "all" (each rank records as its worker)
        or "zero" (rank 0 alone; the others record nothing).
    watch, ignore: shell-style patterns on parameter and module names (``"fc*"``).
    histograms, activations, bins: record histograms (of ``bins`` bins) / leaf modules'
        outputs (of training passes, not inside a compiled model).
    sample_limit: tensors with more elements are summarized from an even sample of about
        this many (see embedviz.monitor._capture). ``None``: every element, always.
    max_pending, close_timeout, flush_seconds: reports that may wait to be summarized (more
        are dropped and counted); seconds ``remove()`` waits for them; batches written at most
        this often.
    num_classes: the classes of a cross-entropy score (the health checks compare the first
        score with chance, ln(num_classes)). ``objective``: "adversarial" for a loss not
        meant to fall (a GAN's workers): the health checks judge it so.
    checks: run the health checks (embedviz.health) on the background path; False: none;
        a dict: parameters per check (``{"dead_units": {"threshold": 0.95}}``).
    background: where summaries are made: ``"process"``, ``"thread"`` or ``"auto"`` (the
        process for models of at least PROCESS_PARAMETERS watched parameters where it can).
    budget: the share of the loop's time the listener may take (0.03); reports are spaced
        further apart (a multiple of ``frequency``) when one costs more. None or 0: no budget.
    accumulation: step() calls per optimizer step when step() is called per micro-batch and
        the optimizer is not attached (or with a scaler); None: with an optimizer attached,
        an iteration ends at the step() call after an optimizer step.
    embeddings, snapshot_every: {nn.Embedding module name: labels of its rows}, snapshotted
        as embedding sets of the session every ``snapshot_every`` iterations;
        ``snapshot_rows``: the first rows kept of each (the most frequent tokens of a
        frequency-sorted vocabulary; the log says once when rows are left out).
    """

    def __init__(self, store: Store | str | os.PathLike, frequency: int = 10, *,
                 session: str | None = None, session_name: str | None = None,
                 tags: dict | None = None, hyperparameters: dict | None = None,
                 worker: str | None = None, ranks: str = "all",
                 watch: Sequence[str] = ("*",), ignore: Sequence[str] = (),
                 histograms: bool = True, activations: bool = True, bins: int = 20,
                 sample_limit: int | None = 4096,
                 max_pending: int = 4, close_timeout: float = 5.0, flush_seconds: float = 1.0,
                 background: str = "auto", num_classes: int | None = None,
                 objective: str | None = None, checks: bool | dict = True,
                 budget: float | None = 0.03, accumulation: int | None = None,
                 embeddings: dict[str, Any] | None = None,
                 snapshot_every: int | None = None, snapshot_rows: int = MAX_ROWS) -> None:
        check_listener(frequency=frequency, bins=bins, max_pending=max_pending,
                       sample_limit=sample_limit, watch=watch, ignore=ignore,
                       background=background, num_classes=num_classes, checks=checks,
                       ranks=ranks, objective=objective, budget=budget,
                       accumulation=accumulation, embeddings=embeddings,
                       snapshot_every=snapshot_every)
        self._checks: dict[str, Any] | None = None if checks is False else {
            "num_classes": num_classes, "options": checks if isinstance(checks, dict) else None,
            "objective": objective}  # (and the session's other workers: see BatchWriter)
        if self._checks is not None:
            Checker(**self._checks)  # (bad options fail here, not in the background)
        from embedviz.monitor._distributed import identify

        ident = identify(session, worker, ranks)
        self._records = bool(ident.records)  # (False: a rank that records nothing)
        self._distributed = dict(ident.info or {})
        self.worker = str(ident.worker)
        given = store if isinstance(store, Store) else None
        self.store: Store | None = open_store(store) if self._records else given
        self._owns_store = self._records and self.store is not store  # (opened here: closed here)
        self.frequency = frequency
        info = {k: v for k, v in (("num_classes", num_classes), ("objective", objective))
                if v is not None}
        record = (Session(name=session_name, tags=tags or {}, info=info) if ident.session is None
                  else Session(id=ident.session, name=session_name, tags=tags or {}, info=info))
        self.session, self._session_record = record.id, record
        self._title = session_name or self.session  # (of the embedding sets)
        self.hyperparameters = dict(hyperparameters or {})
        self.watch, self.ignore = tuple(watch), tuple(ignore)
        self.histograms, self.activations, self.bins = histograms, activations, bins
        self.sample_limit, self.background, self.accumulation = sample_limit, background, accumulation
        self.max_pending, self.close_timeout, self.flush_seconds = max_pending, close_timeout, float(flush_seconds)
        self.iteration = 0
        self.epoch: int | None = None
        self._budget = Budget(frequency, budget)
        self._every = frequency  # the spacing of reports in use (see Budget)
        self._snapshots = Snapshots(embeddings, snapshot_every, snapshot_rows)
        self._sink: Sink | None = None
        self._pool: BufferPool | None = None
        self._capture = Capture(sample_limit, self._acquire)
        self.guard = Guard()  # (the training thread's seconds in the listener; warnings given)
        self._snap_seconds = 0.0
        self._dropped = 0  # reports that found no free capture buffer
        self._lost_before = [0, 0]  # (dropped, failed) of sinks already closed
        self._hooks = Hooks(self._capture, self.guard, self._reporting)
        self._step_lrs: dict[str, float] = {}  # step(lr=)'s
        self._watched: Watched | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._scaler: Any = None
        self._params: dict[str, torch.nn.Parameter] = {}
        self._static_sent = False
        self._device: torch.device | None = None
        self._dtype = torch.float32
        self._steps = Steps(accumulation, self._records)  # (where iterations end)
        self._window = self._new_window()

    # ------------------------------------------------------------------ attaching
    def attach(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
               scaler: Any = None) -> ListenerHandle:
        """Hook into ``model`` (compiled or not) and ``optimizer`` (for updates and learning
        rates; without one, updates are the parameters' changes across a reported iteration).
        ``scaler``: the loop's ``torch.amp.GradScaler``: the steps it skips are counted."""
        modules = dict(model.named_modules()) if isinstance(model, torch.nn.Module) else None
        check_attach(model, optimizer, scaler, modules and {clean(k): v for k, v in modules.items()},
                     self._snapshots.embeddings)
        if not self._records:
            return ListenerHandle(self)
        self._hooks.disarm()  # attached again: the hooks of the earlier attach go
        w = self._watched = watched(model, self.watch, self.ignore, self.activations)
        self._optimizer, self._scaler, self._params = optimizer, scaler, w.params
        if not self._params:
            log.warning("embedviz monitor: no parameter of the model matches watch=%s "
                        "ignore=%s; only score, timing and memory are recorded",
                        self.watch, self.ignore)
        self._capture.forget()
        dtypes = {p.dtype for p in self._params.values()}
        self._dtype = torch.float64 if torch.float64 in dtypes else torch.float32
        self._device = next(iter(self._params.values())).device if self._params else None
        self._hooks.attach(w, optimizer, self._device)
        self._steps.attach(optimizer, scaler)
        if self._sink is None:
            self._open_sink()
        self._window = self._new_window()
        if self._reporting():
            self._hooks.arm()
        return ListenerHandle(self)

    def _open_sink(self, thread: bool = False) -> None:
        """The pool of capture buffers (each report that may wait, the one being summarized,
        the one being captured) and the sink, as ``background`` says; ``thread``: a thread
        for a worker that died (the session and static info again: they may be lost)."""
        assert self.store is not None
        process = not thread and self._wants_process()
        if not thread or self._pool is None:  # (a thread after a dead worker keeps its pool)
            self._pool = BufferPool(self.max_pending + 2, shared=process)
        self._static_sent = self._static_sent and not thread
        try:
            self._sink = ProcessSink(self.store, self._pool, close_timeout=self.close_timeout,  # type: ignore[arg-type]
                                     flush_seconds=self.flush_seconds, checks=self._checks) if process else None
        except Exception as exc:  # (its buffers serve a thread as well)
            self.guard.warn_once("process", "could not start the worker process; summarizing on a "
                            "thread instead", exc)
        self._sink = self._sink or ThreadSink(self.store, self._pool, max_pending=self.max_pending,
                                              flush_seconds=self.flush_seconds,
                                              close_timeout=self.close_timeout, checks=self._checks)
        if not self._static_sent:
            self._sink.submit([self._session_record])

    def _wants_process(self) -> bool:
        if self.background == "thread":
            return False
        can = can_process(self.store, all(p.device.type == "cpu" for p in self._params.values()))
        if self.background == "process":
            if not can:
                self.guard.warn_once("process", "background='process' needs CPU tensors, an SQLite "
                                "store opened for writing and Linux; summarizing on a thread")
            return can
        return can and sum(p.numel() for p in self._params.values()) >= PROCESS_PARAMETERS

    def _acquire(self, device: torch.device) -> Any:
        """A free capture buffer (None: every one is in use, the report is dropped)."""
        if self._sink is None or self._pool is None:
            return None
        self._sink.collect()
        pool, starting = self._pool, self._sink.starting
        pool.size = max(self.max_pending + 2, pool.size if starting else 0)
        buf = pool.acquire(self._device or device, self._dtype)
        if buf is None and starting and pool.size < self.max_pending + 2 + STARTING_BUFFERS:
            pool.size += 1  # (the worker is still starting: a fast loop waits for it)
            buf = pool.acquire(self._device or device, self._dtype)
        return buf

    def _detach(self) -> None:  # (ListenerHandle.remove)
        self._hooks.disarm()
        self._steps.detach()
        self.close()

    def close(self) -> None:
        """Write what is pending (waiting at most ``close_timeout`` seconds) and stop."""
        self._capture.reset()
        self._retire_sink()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._owns_store and self.store is not None:
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

    def _reporting(self) -> bool:
        return self.iteration % self._every == 0

    # ------------------------------------------------------------------ the loop's calls
    def step(self, loss: Any = None, batch_size: int | None = None, epoch: int | None = None,
             lr: Any = None) -> None:
        """Call once per iteration, after ``optimizer.step()`` (or per micro-batch: see
        ``accumulation``).

        ``loss``: the minibatch loss (a tensor is fine: on a device it is read in the
        background, only on reported iterations). ``batch_size``: examples in the batch, for
        examples/s. ``epoch``: the current epoch, if known. ``lr``: the learning rate, where
        the loop sets it itself (a number, a list per group or {group: lr}): ``lr/<group>``.
        """
        it, st = self.iteration, self._steps
        if ((st.each_call or st.optimizer_steps != st.seen) and it < st.fast_until
                and epoch is None and (batch_size is None or type(batch_size) is int)):
            # an iteration neither reported nor next to one: counters (nothing here can raise)
            st.seen = st.optimizer_steps
            w = self._window
            w["steps"] += 1
            w["examples"] += batch_size or 0
            self.iteration = it + 1
            return
        self._step(loss, batch_size, epoch, lr)

    @guarded
    def _step(self, loss: Any, batch_size: int | None, epoch: int | None, lr: Any) -> None:
        if not self._records:
            self.iteration += 1
            return
        now = time.perf_counter()
        w = self._window
        if batch_size is not None:
            w["examples"] += int(batch_size)
        if epoch is not None:
            self.epoch = int(epoch)
        if lr is not None and self._reporting():
            try:
                self._step_lrs = lrs_of(lr)
            except InvalidRecordError as exc:  # (said once; the iteration is still counted)
                self.guard.warn_once("lr", str(exc))
        done, skipped = self._steps.completes(self.guard.warn_once)
        if not done:
            return
        w["steps"] += 1
        it, reporting = self.iteration, self._reporting()
        try:
            if reporting and self._sink is not None:
                self._report(loss, now, skipped)
            if self._snapshots.due(it) and self._sink is not None:
                self._snapshot(it)
        finally:
            self.iteration = it + 1
            if reporting:
                self._capture.reset()
                self._hooks.done()
                self._step_lrs = {}
            self._steps.fast_until = self._steps.next_slow(
                self.iteration, self._every, self._snapshots.every if self._snapshots.embeddings else 0)
        if self._sink is not None:
            if self._reporting():
                self._hooks.arm()
            elif self._hooks.armed:
                self._hooks.disarm()

    def log_metric(self, name: str, value: Any, iteration: int | None = None) -> None:
        """Record a metric (validation loss, accuracy) at ``iteration`` (default: the last)."""
        if not self._records:
            return
        try:
            it = max(self.iteration - 1, 0) if iteration is None else iteration
            value = value.detach() if isinstance(value, torch.Tensor) else value
            if self._sink is not None:
                self._sink.submit([Metric(self.session, name, float(value), it, self.worker)])
            else:
                self.guard.warn_once("metric-detached", "log_metric called while not attached; "
                                "attach the listener first")
        except Exception as exc:
            self.guard.warn_once("log_metric", "log_metric failed", exc)

    @guarded
    def snapshot_outputs(self, layer: str, inputs: Any, labels: Sequence[Any] | None = None) -> None:
        """Record ``layer``'s outputs on ``inputs`` (held-out examples, no grad, eval mode)
        as an embedding set of the session at the last iteration, rows labelled ``labels``."""
        if not self._records or self._sink is None or self._watched is None:
            return
        t0 = time.perf_counter()
        try:
            got = self._snapshots.of_outputs(self._watched.model, layer, inputs, labels, self.session,
                                             max(self.iteration - 1, 0), self._title)
            self._sink.submit([got])
        finally:
            self._snap_seconds += time.perf_counter() - t0

    @guarded
    def _snapshot(self, iteration: int) -> None:
        assert self._watched is not None and self._sink is not None
        t0 = time.perf_counter()
        try:
            sets = self._snapshots.of_model(self._watched.model, self.session, iteration, self._title)
            if sets:
                self._sink.submit(list(sets))
        finally:
            self._snap_seconds += time.perf_counter() - t0

    # ------------------------------------------------------------------ reporting
    def _new_window(self) -> dict:
        return {"start": time.perf_counter(), "steps": 0, "examples": 0, "own": self.guard.seconds,
                "snap": self._snap_seconds, "busy": self._sink.busy_seconds if self._sink else 0.0,
                "dropped": self.dropped_reports if self._sink else 0}

    def _report(self, loss: Any, now: float, skipped: bool) -> None:
        sink, cap = self._sink, self._capture
        assert sink is not None
        spacing = self._every  # (this report's: dropped reports or its cost may change the next)
        no_room = not sink.in_process and self._pool is not None and self._pool.warning
        if sink.gone or no_room:  # the worker died, or no shared memory: a thread from here on
            if no_room:
                self.guard.warn_once("pool", f"{no_room}; summarizing on a thread")
            self._retire_sink(wait=False)  # (a live worker writes what it has, meanwhile)
            self._open_sink(thread=True)
            sink = self._sink
            assert sink is not None
        w, self._window = self._window, self._new_window()
        elapsed = max(now - w["start"], 1e-9)
        device = self._device or torch.device("cpu")
        self._hooks.take_rest(skipped)
        if cap.missed:  # every capture buffer is in use: the summarizer is behind
            self._dropped += 1
        if self.dropped_reports > w["dropped"]:
            self._behind()
        if cap.missed:
            return
        if isinstance(loss, torch.Tensor) and (loss.device.type == "cpu" or not sink.in_process):
            loss = loss.item()  # (on a device it is read in the background)
        elif isinstance(loss, torch.Tensor):
            loss = loss.detach()
        nonfinite = cap.nonfinite(loss if loss is not None else float("nan"), self._hooks.stepped)
        lrs = self._step_lrs or self._hooks.lrs or self._hooks.optimizer_lrs()
        scalars = {f"lr/{k}": v for k, v in lrs.items()}
        if w["steps"] and self.iteration > 0:
            scalars["timing/iteration_ms"] = 1000.0 * elapsed / w["steps"]
            scalars["timing/batches_per_s"] = w["steps"] / elapsed
            if w["examples"]:
                scalars["timing/examples_per_s"] = w["examples"] / elapsed
            scalars["timing/listener_ms"] = 1000.0 * (self.guard.seconds - w["own"]) / w["steps"]
            scalars["timing/listener_background_ms"] = 1000.0 * (sink.busy_seconds - w["busy"]) / w["steps"]
            self._judge_cost(w, sink, elapsed)
        if self._scaler is not None:
            scalars["amp/scale"] = float(self._scaler.get_scale())
            scalars["amp/skipped_steps"] = float(self._steps.skipped)
        if device.type == "cuda":
            scalars["memory/device_allocated_bytes"] = float(torch.cuda.memory_allocated(device))
            scalars["memory/device_max_allocated_bytes"] = float(torch.cuda.max_memory_allocated(device))
        scalars["monitor/dropped_reports"] = float(self.dropped_reports)
        scalars["monitor/failed_reports"] = float(self._lost_before[1] + sink.failed)
        scalars["monitor/report_every"] = float(spacing)
        static = None if self._static_sent else self._static(sink)
        self._static_sent = True
        buf = cap.take()
        sink.submit(Report(
            self.session, self.worker, self.iteration, self.epoch, loss, scalars,
            layout=buf.layout if buf else [], buffer=buf.index if buf else -1,
            used=buf.used if buf else 0, dtype="float64" if self._dtype == torch.float64 else "float32",
            update=cap.update, bins=self.bins if self.histograms else None, nonfinite=nonfinite,
            static=static))

    def _judge_cost(self, w: dict, sink: Sink, elapsed: float) -> None:
        """The budget: what the report cost against the loop's time. The cost is CPU time:
        this thread's in the listener and the background's: a worker process's (though at
        a low priority, it takes cores a compiled model's kernels use: +18% unspaced), a
        thread's twice (it takes the interpreter's lock from training, and the hand-overs
        cost as much again: a 0.15 ms step measured +21% counted once, +2% counted twice). Not
        wall time: a busy machine or another listener in the same loop is not this
        listener's cost. Snapshots are not the reports' cost."""
        inline = (self.guard.seconds - w["own"]) - (self._snap_seconds - w["snap"])
        cost = inline + (2.0 if sink.in_process else 1.0) * max(sink.busy_seconds - w["busy"], 0.0)
        if self._budget.observe(cost, elapsed, w["steps"], inline) and self._every == self.frequency:
            self.guard.warn_once("budget", f"session {self.session} worker {self.worker}: "
                                 f"{self._budget.spaced()}")
        self._every = self._budget.every

    def _behind(self) -> None:
        """Reports were dropped (the background is behind): spaced, with a budget; said once."""
        if not self._budget.fraction:
            self.guard.warn_once("dropped", "the store is not keeping up: dropping reports "
                                 "(counted as monitor/dropped_reports)")
        elif self._budget.back_off() and self._every == self.frequency:
            self.guard.warn_once("budget", f"session {self.session} worker {self.worker}: "
                                 f"{self._budget.spaced()}")
        self._every = self._budget.every

    def _static(self, sink: Sink) -> dict:
        w = self._watched
        assert w is not None
        settings = {
            "frequency": self.frequency, "bins": self.bins, "sample_limit": self.sample_limit,
            "histograms": self.histograms, "activations": self.activations and not w.compiled,
            "watch": list(self.watch), "ignore": list(self.ignore), "background": type(sink).__name__,
            "updates": "optimizer" if self._optimizer is not None else "parameter change",
            "lr": "step" if self._step_lrs else "optimizer" if self._optimizer is not None else None,
            "budget": self._budget.fraction or None, "accumulation": self.accumulation,
            "compiled": w.compiled or None,
            "scaler": type(self._scaler).__name__ if self._scaler is not None else None}
        return static_info(w.model, self._optimizer, self._params, self._hooks.shapes, self._hooks.order,
                           settings, self.hyperparameters, self._distributed)

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps a GradScaler skipped (inf/NaN gradients), so far."""
        return self._steps.skipped

    @property
    def dropped_reports(self) -> int:
        """Reports dropped because the store did not keep up (so far, over every attach)."""
        return self._dropped + self._lost_before[0] + (self._sink.dropped if self._sink else 0)
