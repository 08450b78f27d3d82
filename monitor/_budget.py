"""The listener's cost budget: reports spaced further apart when one costs more than the
budget allows at the asked frequency.

At each report the listener hands :meth:`Budget.observe` what the report cost (its training
thread's time, the background's where it competes for the same cores) and how long the
loop took meanwhile. The spacing in use, ``every``, stays a multiple of the asked frequency
(reported iterations stay aligned: 0, 20, 40 for frequency 10 spaced to 20) and is the
frequency itself whenever the budget allows it.
"""

from __future__ import annotations

import math

#: windows between reports that are not judged: the first reports pay for plans, buffers,
#: the static info and the background's start (a count, not seconds: on a fast loop at a
#: high frequency, seconds of it would cost the run more than the budget)
WARMUP_REPORTS = 4
#: the weight of a new window in the running estimates
ALPHA = 0.3
#: the spacing is lowered again only once the cost would fit this many times over
SLACK = 2.0
#: and raised only once the cost exceeds the budget by this factor (a measured cost is noisy)
TOLERANCE = 1.2
#: at most this many times the asked frequency
MAX_FACTOR = 10_000
#: one judgement raises the spacing at most this many times (a window measured wrong would
#: otherwise space reports past the run's end, with no report left to correct it)
GROWTH = 8


class Budget:
    """``fraction``: the share of the loop's time the listener may take (None or 0: no
    budget, ``every`` stays ``frequency``)."""

    def __init__(self, frequency: int, fraction: float | None) -> None:
        self.frequency = frequency
        self.fraction = float(fraction or 0.0)
        self.every = frequency
        self.cost: float | None = None  # seconds per report (running estimate)
        self.iteration: float | None = None  # seconds per iteration of the bare loop
        self._windows = 0

    def observe(self, cost: float, elapsed: float, iterations: int,
                inline: float | None = None) -> bool:
        """One window between reports: the report's ``cost`` (s), the window's ``elapsed``
        wall time and its ``iterations``; ``inline``: the part of ``cost`` spent on the loop's
        own thread (all of it by default). Only that part is taken out of ``elapsed`` for the
        bare loop's time: a background's time overlaps the loop's (counted in full, it can
        exceed the window and make the loop look free). True when this spaced reports further
        apart."""
        if self.fraction <= 0 or iterations <= 0 or elapsed <= 0:
            return False
        self._windows += 1
        inline = cost if inline is None else inline
        bare = max(elapsed - inline, 1e-3 * elapsed) / iterations  # (may be below 0: noise)
        if self.cost is None or self.iteration is None or self._windows <= WARMUP_REPORTS:
            self.cost, self.iteration = cost, bare  # (the latest, until judged)
            return False
        self.cost += ALPHA * (cost - self.cost)
        self.iteration += ALPHA * (bare - self.iteration)
        needed = max(self.cost, 0.0) / (self.fraction * self.iteration)  # iterations per report
        f, every = self.frequency, self.every
        if needed > TOLERANCE * every:
            every = f * math.ceil(needed / f)
        elif needed * SLACK < every:
            every = f * math.ceil(needed * SLACK / f)
        every = max(f, min(every, GROWTH * self.every, f * MAX_FACTOR))
        grew, self.every = every > self.every, every
        return grew

    def back_off(self) -> bool:
        """The background did not keep up (reports dropped): twice the spacing; True if it grew."""
        every = min(max(2 * self.every, 2 * self.frequency), self.frequency * MAX_FACTOR)
        grew, self.every = every > self.every, every
        return grew

    def spaced(self) -> str:
        """What the log says (once) when reports are first spaced beyond the frequency."""
        why = ("the background did not keep up" if self.cost is None or self.iteration is None
               else f"a report costs {1000 * self.cost:.2f} ms, more than budget={self.fraction:g}"
                    f" of the loop's time allows ({1000 * self.iteration:.3g} ms an iteration)")
        return (f"{why} at frequency={self.frequency}: reporting every {self.every} iterations "
                "(monitor/report_every; budget=None keeps the frequency)")

    @property
    def overhead(self) -> float | None:
        """The share of the loop's time the listener takes at the spacing in use (estimated)."""
        if self.cost is None or not self.iteration:
            return None
        return self.cost / (self.every * self.iteration)
