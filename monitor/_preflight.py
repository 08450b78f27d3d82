"""Sanity checks to run before a long training (seed 003, "debugging neural networks"):
the loss at chance, overfitting one batch, a gradient check, the inputs' scale, the labels
in a batch. Each works on a copy of the model: the caller's model is not touched."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from embedviz.errors import InvalidRecordError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class PreflightReport:
    """The checks' results; ``ok``: all passed. ``str()`` is the printed table."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def __getitem__(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def __str__(self) -> str:
        lines = [f"{'ok' if c.ok else 'FAIL':<5}{c.name:<16}{c.detail}" for c in self.checks]
        return "\n".join(["embedviz preflight"] + lines)


def preflight(model: torch.nn.Module, loss_fn: Callable, batch: tuple[Any, Any],
              make_optimizer: Callable[[Any], torch.optim.Optimizer], *,
              num_classes: int | None = None, steps: int = 300, samples: int = 20,
              show: bool = True) -> PreflightReport:
    """Run the checks on ``batch`` = (inputs, targets); ``make_optimizer(parameters)`` makes
    the optimizer the training uses. Prints the report (``show``) and returns it."""
    if not isinstance(model, torch.nn.Module):
        raise InvalidRecordError(f"preflight needs the torch.nn.Module you train (got "
                                 f"{type(model).__name__})")
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise InvalidRecordError("batch must be (inputs, targets): one batch of the training data")
    x, y = batch
    report = PreflightReport()
    classes = _classes(model, x, y, num_classes)
    report.checks.append(_initial_loss(model, loss_fn, x, y, classes))
    report.checks.append(_overfit(model, loss_fn, x, y, make_optimizer, steps))
    report.checks.append(_gradients(model, loss_fn, x, y, samples))
    report.checks.append(_input_scale(x))
    report.checks.append(_labels(y, classes))
    if show:
        print(report)
    return report


def _classes(model: torch.nn.Module, x: Any, y: Any, given: int | None) -> int | None:
    if given:
        return given
    if isinstance(y, torch.Tensor) and not y.is_floating_point():
        with torch.no_grad():
            out = copy.deepcopy(model)(x)
        if isinstance(out, torch.Tensor) and out.ndim >= 2:
            return int(out.shape[1])
    return None


def _initial_loss(model: torch.nn.Module, loss_fn: Callable, x: Any, y: Any,
                  classes: int | None) -> Check:
    with torch.no_grad():
        loss = float(loss_fn(copy.deepcopy(model)(x), y))
    if not classes or classes < 2:
        return Check("initial loss", math.isfinite(loss), f"{loss:.4g} (no chance level: pass num_classes)")
    chance = math.log(classes)
    ok = abs(loss / chance - 1) <= 0.5
    return Check("initial loss", ok, f"{loss:.4g}, chance ln({classes}) = {chance:.4g}"
                 + ("" if ok else ": initial weights too large, or a biased last layer"))


def _overfit(model: torch.nn.Module, loss_fn: Callable, x: Any, y: Any,
             make_optimizer: Callable, steps: int) -> Check:
    m = copy.deepcopy(model)
    m.train()
    opt = make_optimizer(m.parameters())
    first = last = math.nan
    for step in range(1, steps + 1):
        loss = loss_fn(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = float(loss.detach())
        first = last if step == 1 else first
        if not math.isfinite(last):
            return Check("overfit a batch", False, f"the loss became {last} at step {step}: "
                         "lower the learning rate")
        if last < 0.01 * first or last < 1e-3:
            return Check("overfit a batch", True, f"loss {first:.3g} -> {last:.3g} in {step} steps")
    return Check("overfit a batch", False, f"loss {first:.3g} -> {last:.3g} after {steps} steps, "
                 "not near 0: the model is too small, the learning rate wrong, or there is a bug")


def _gradients(model: torch.nn.Module, loss_fn: Callable, x: Any, y: Any, samples: int) -> Check:
    """Autograd against central differences, in float64, on ``samples`` parameter entries."""
    m = copy.deepcopy(model).double()
    xd = x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
    yd = y.double() if isinstance(y, torch.Tensor) and y.is_floating_point() else y
    params = [p for p in m.parameters() if p.requires_grad]
    if not params:
        return Check("gradient check", True, "no trainable parameters")

    def loss() -> torch.Tensor:
        torch.manual_seed(0)  # (dropout draws the same mask every time)
        return loss_fn(m(xd), yd)

    m.zero_grad()
    loss().backward()
    gen = torch.Generator().manual_seed(0)
    worst, eps = 0.0, 1e-6
    sizes = torch.tensor([float(p.numel()) for p in params])
    for _ in range(samples):
        p = params[int(torch.multinomial(sizes, 1, generator=gen))]
        i = int(torch.randint(p.numel(), (1,), generator=gen))
        flat = p.data.view(-1)
        grad = float(p.grad.view(-1)[i]) if p.grad is not None else 0.0
        keep = float(flat[i])
        with torch.no_grad():
            flat[i] = keep + eps
            up = float(loss())
            flat[i] = keep - eps
            down = float(loss())
            flat[i] = keep
        numeric = (up - down) / (2 * eps)
        err = abs(numeric - grad) / max(abs(numeric) + abs(grad), 1e-8)
        worst = max(worst, err)
    ok = worst < 1e-4
    return Check("gradient check", ok, f"largest relative error {worst:.2g} on {samples} entries"
                 + ("" if ok else ": a custom backward or an in-place operation is wrong"))


def _input_scale(x: Any) -> Check:
    if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
        return Check("input scale", True, "inputs are not floating point (tokens?): not checked")
    xf = x.detach().double().reshape(len(x), -1)
    mean, sd = float(xf.mean()), float(xf.std())
    ok = 0.1 <= sd <= 10 and abs(mean) <= 5 * max(sd, 1e-12)
    return Check("input scale", ok, f"mean {mean:.3g}, stdev {sd:.3g}"
                 + ("" if ok else ": standardize the features (mean 0, stdev 1)"))


def _labels(y: Any, classes: int | None) -> Check:
    if not (isinstance(y, torch.Tensor) and not y.is_floating_point() and y.ndim == 1):
        return Check("labels", True, "not class labels: not checked")
    present = int(torch.unique(y).numel())
    expected = min(classes or present, len(y))
    ok = present >= max(2, expected // 2) or len(y) < 4
    return Check("labels", ok, f"{present} classes in a batch of {len(y)}"
                 + ("" if ok else ": is the data shuffled?"))
