"""Where the listener's iterations end: an iteration is an optimizer step.

With an optimizer attached, a counter in its step hook (always in place while attached:
one Python call per optimizer step) tells ``step()`` whether the optimizer stepped since the
last iteration ended:

- it did: the iteration ends (step() called once per optimizer step, the recommended way,
  or at the last micro-batch of an accumulated batch: examples add up over the calls);
- it did not, with a GradScaler attached: the scaler skipped the step (inf/NaN gradients):
  the iteration ends, counted as skipped;
- it did not, without one: a micro-batch of an accumulated batch (the optimizer steps at a
  later call); an optimizer that has never stepped in NEVER_STEPPED calls is not the one the
  loop steps: each call is then an iteration.

``accumulation=k`` (a loop that updates by hand, or a scaler with accumulation): every k-th
call ends an iteration. Without an optimizer: each call is one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: step() calls without an optimizer step, none ever, before each call counts as an iteration
NEVER_STEPPED = 64
#: an iteration number no loop reaches (an inactive listener's next slow step)
NEVER = 1 << 62


class Steps:
    """The count of one listener's iterations' ends (see the module doc). ``fast_until``:
    the first iteration whose step() is not a counter (see :meth:`next_slow`)."""

    def __init__(self, accumulation: int | None, active: bool = True) -> None:
        self.given, self.accumulation = accumulation, accumulation or 1
        self.optimizer_steps = self.seen = 0  # (seen: the optimizer's steps when the last iteration ended)
        self.each_call = self.accumulation == 1
        self.calls = self.idle = 0
        self.skipped = 0  # optimizer steps a GradScaler skipped
        self.fast_until = 0 if active else NEVER
        self._auto = False  # (an optimizer attached, accumulation not given)
        self._scaler = False
        self._counter: Any = None

    def attach(self, optimizer: Any, scaler: Any) -> None:
        self.detach()
        self._auto = optimizer is not None and self.given is None
        self._scaler = scaler is not None
        # (with a scaler, a call whose optimizer did not step is a skip: never a counter)
        self.each_call = (self.accumulation == 1 and not self._scaler
                          and (optimizer is None or self.given == 1))
        self.optimizer_steps = self.seen = self.calls = self.idle = 0
        self.fast_until = 0
        if optimizer is not None:
            self._counter = optimizer.register_step_post_hook(self._count)

    def _count(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.optimizer_steps += 1

    def detach(self) -> None:
        if self._counter is not None:
            self._counter.remove()
            self._counter = None

    def completes(self, warn: Callable[[str, str], None]) -> tuple[bool, bool]:
        """Whether this step() call ends an iteration, and whether its optimizer step was
        skipped (a GradScaler found inf/NaN gradients: the optimizer did not step)."""
        n = self.optimizer_steps
        stepped = n != self.seen
        if self.accumulation > 1:
            self.calls += 1
            if self.calls < self.accumulation:
                return False, False
            self.calls = 0
        elif not stepped and self._auto and not self._scaler and not self.each_call:
            self.idle += 1  # a micro-batch: the optimizer steps at a later call
            if n or self.idle < NEVER_STEPPED:
                return False, False
            self.each_call = True
            warn("never-stepped", f"the optimizer attached did not step in {NEVER_STEPPED} "
                 "calls of step(): each call is taken for an iteration (attach the optimizer "
                 "the loop steps)")
        self.seen, self.idle = n, 0
        skipped = self._scaler and not stepped
        self.skipped += skipped
        return True, skipped

    def next_slow(self, it: int, every: int, snapshot_every: int) -> int:
        """The first iteration from ``it`` on whose step() is not a counter: the one before
        a report (hooks go in), a report (every ``every``), a snapshot."""
        until = it + (every - 1 - it % every) if it % every else it
        if snapshot_every:
            until = min(until, it + (-it) % snapshot_every)
        return until
