"""The hooks of a reported iteration, on the training thread: what they copy and when.

Hooks are in place only while an iteration is reported (a forward hook costs every module
call Python work): one global module forward hook, not one per leaf (a compiled model: a
forward pre-hook on the module called, outside the graph, or none), and the optimizer's
step pre- and post-hooks, registered with torch's public hook functions and removed with
their handles. Every path that can fail is guarded: an error is logged once and training
goes on (:func:`guarded`).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from embedviz.monitor._capture import Capture
from embedviz.monitor._model import Watched
from embedviz.monitor._static import shapes

log = logging.getLogger("embedviz.monitor")


class Guard:
    """What :func:`guarded` methods share: the training-thread seconds they took, and the
    warnings already given (each kind once)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.warned: set[str] = set()

    def warn_once(self, kind: str, message: str, exc: BaseException | None = None) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            log.warning("embedviz monitor: %s", message, exc_info=exc)


def guarded(method: Callable) -> Callable:
    """Run a method (of an object with a ``guard``) on the training thread; any exception is
    logged once and swallowed so that it never reaches the training loop."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            self.guard.warn_once(f"{method.__name__}:{type(exc).__name__}",
                                 f"{method.__name__} failed; training goes on unmonitored there", exc)
            return None
        finally:
            self.guard.seconds += time.perf_counter() - t0

    return wrapper


class Hooks:
    """A listener's hooks and what they took of the reported iteration so far.

    ``reporting()``: whether the current iteration is reported. After :meth:`attach`,
    :meth:`arm` before a reported iteration, :meth:`done` after it, :meth:`disarm` when the
    next is not reported."""

    def __init__(self, capture: Capture, guard: Guard, reporting: Callable[[], bool]) -> None:
        self.capture, self.guard, self.reporting = capture, guard, reporting
        self.watched: Watched | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.params: dict[str, torch.nn.Parameter] = {}
        self.device = torch.device("cpu")
        self.handles: list = []  # (RemovableHandle)
        self.armed = False
        self.shapes: dict[str, dict] = {}
        self.trained_shapes: set[str] = set()  # (recorded from a training pass)
        self.order: list[str] = []
        self.done()

    def attach(self, watched: Watched, optimizer: torch.optim.Optimizer | None,
               device: torch.device | None) -> None:
        self.disarm()
        self.watched, self.optimizer, self.params = watched, optimizer, watched.params
        self.device = device or torch.device("cpu")

    def done(self) -> None:
        """The reported iteration is over: nothing taken of the next yet."""
        self.grads_taken = self.params_taken = self.stepped = self.grads_after_step = False
        self.want_before = False  # (no optimizer: the parameters before the iteration, wanted)
        self.lrs: dict[str, float] = {}  # the optimizer's, at its step

    def arm(self) -> None:
        """Hook into the model and optimizer for one reported iteration."""
        w = self.watched
        if w is None:
            return
        self.want_before = self.optimizer is None
        if self.want_before and w.compiled == "in place":  # (no hook: the parameters now)
            self.take_before()
        if self.armed:
            return
        self.armed = True
        if not w.compiled:
            self.handles.append(torch.nn.modules.module.register_module_forward_hook(self._on_forward))
        elif w.hook_on is not None and self.want_before:
            self.handles.append(w.hook_on.register_forward_pre_hook(self._on_call))
        if self.optimizer is not None:
            self.handles.append(self.optimizer.register_step_pre_hook(self._pre_step))
            self.handles.append(self.optimizer.register_step_post_hook(self._post_step))

    def disarm(self) -> None:
        self.armed = False
        handles, self.handles = self.handles, []
        for handle in handles:
            handle.remove()

    # ------------------------------------------------------------------ the model
    def _on_forward(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        w = self.watched
        name = w.leaves.get(id(module)) if w is not None else None  # (others: not ours)
        if name is None or w is None:
            return
        if self.want_before:
            self.take_before()
        # a training pass's outputs only: not those of a validation pass (no_grad or eval())
        training = module.training and torch.is_grad_enabled()
        if name not in self.shapes or (training and name not in self.trained_shapes):
            self._record_shapes(name, inputs, output, training)
        if name in w.outputs and training:
            if name not in self.capture.seen:  # (several passes before one step: the first)
                self._capture_activation(name, output)
            elif self.capture.holding_outputs:  # another pass: keep nothing of the first
                self._check_activations()

    def _on_call(self, module: torch.nn.Module, inputs: Any) -> None:  # (a compiled model)
        if self.want_before:
            self.take_before()

    @guarded
    def take_before(self) -> None:
        """No optimizer: the parameters before the reported iteration's first forward pass
        (its update is their change, made at step())."""
        self.want_before = False
        if self.capture.before is None:
            self.capture.before = self.capture.tensors(self.device, ("update", self.params)).get("update")

    @guarded
    def _check_activations(self) -> None:
        self.capture.check_activations()

    @guarded
    def _record_shapes(self, name: str, inputs: Any, output: Any, training: bool) -> None:
        """The shapes of the first training pass (of the first pass until one comes: a
        sanity-check validation pass before training, a module kept in eval() mode)."""
        if name not in self.shapes:
            self.order.append(name)
        self.shapes[name] = {"input": shapes(inputs), "output": shapes(output)}
        if training:
            self.trained_shapes.add(name)

    @guarded
    def _capture_activation(self, name: str, output: Any) -> None:
        self.capture.activation(name, output)

    # ------------------------------------------------------------------ the optimizer
    def grads(self) -> dict[str, torch.Tensor]:
        return {n: p.grad for n, p in self.params.items() if p.grad is not None}

    @guarded
    def _pre_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if not self.reporting() or self.capture.before is not None:
            return
        # with a closure, backward runs inside step(): gradients are read after it
        self.grads_after_step = len(args) > 1 or "closure" in kwargs  # (args[0]: the optimizer)
        # the parameters before the step, where their updates will be, and the gradients
        blocks = self.capture.tensors(self.device, ("update", self.params), *(
            () if self.grads_after_step else (("gradient", self.grads()),)))
        self.capture.before = blocks.get("update")
        self.grads_taken = not self.grads_after_step

    @guarded
    def _post_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        cap = self.capture
        if not self.reporting() or cap.before is None or self.params_taken:
            return
        if self.grads_after_step:
            cap.tensors(self.device, ("gradient", self.grads()))
            self.grads_taken = True
        after = cap.tensors(self.device, ("param", self.params)).get("param")
        self.params_taken = self.stepped = True
        if after is not None:  # before becomes the update, there (see Report.update)
            cap.update = (*cap.before, after[0])
        self.lrs = self.optimizer_lrs()

    def optimizer_lrs(self) -> dict[str, float]:
        groups = self.optimizer.param_groups if self.optimizer is not None else []
        return {str(i): float(g["lr"]) for i, g in enumerate(groups)
                if isinstance(g.get("lr"), (int, float))}

    # ------------------------------------------------------------------ at step()
    def take_rest(self, skipped: bool) -> None:
        """What no optimizer hook took, at step(): the gradients (not those of a step the
        scaler skipped: its infs), the parameters, and with them the update where the
        parameters before the iteration were taken (no optimizer: their change across it)."""
        cap = self.capture
        groups: list = []
        if not self.grads_taken and not skipped:
            groups.append(("gradient", self.grads()))
        if not self.params_taken:
            groups.append(("param", self.params))
        after = cap.tensors(self.device, *groups).get("param") if groups else None
        if after is not None and cap.before is not None and cap.update is None and not skipped:
            cap.update = (*cap.before, after[0])
