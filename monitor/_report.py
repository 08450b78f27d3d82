"""A report: what a listener captured at one reported iteration, before it is summarized.

Built on the training thread (device-side copies, no synchronisation); turned into records
by :meth:`Report.to_records` on the writer's background thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from embedviz.monitor.stats import summarize_many

from embedviz.records import Record, Static, Summary, Update


class BufferPool:
    """Reused tensors for a listener's copies: a fresh multi-megabyte allocation costs page
    faults on every report, more than the copy itself."""

    def __init__(self, per_shape: int = 8) -> None:
        self.per_shape = per_shape
        self._free: dict[tuple, list[torch.Tensor]] = {}

    def copy(self, t: torch.Tensor) -> torch.Tensor:
        src = t.detach()
        free = self._free.get((src.shape, src.dtype, src.device))
        try:
            buf = free.pop() if free else None
        except IndexError:  # emptied by another thread meanwhile
            buf = None
        if buf is None:
            return src.clone(memory_format=torch.contiguous_format)
        return buf.copy_(src)

    def release(self, tensors: list[torch.Tensor]) -> None:
        for t in tensors:
            free = self._free.setdefault((t.shape, t.dtype, t.device), [])
            if len(free) < self.per_shape:
                free.append(t)


@dataclass
class Report:
    session: str
    worker: str
    iteration: int
    epoch: int | None
    loss: Any  # a detached tensor, a number or None
    scalars: dict[str, float]
    tensors: list[tuple[str, torch.Tensor, int]]  # ("update/fc1.weight", copy or sample, numel)
    bins: int | None
    sample: int
    static: dict | None = None
    extra: list[Record] = field(default_factory=list)
    pool: BufferPool | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        """Hand the copies back for reuse (once nothing reads them any more)."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.release([t for _, t, _ in self.tensors])

    def __getstate__(self) -> dict:  # the pool stays in the training process
        state = dict(self.__dict__)
        state["pool"] = None
        return state

    def score(self) -> float | None:
        return None if self.loss is None else float(self.loss)

    def to_records(self, tensors: list[torch.Tensor] | None = None) -> list[Record]:
        """Summarize the tensors (or the given replacements, e.g. views of shared memory)."""
        ts = [t for _, t, _ in self.tensors] if tensors is None else tensors
        totals = [n for _, _, n in self.tensors]
        summaries: dict[str, Summary] = dict(zip(
            [k for k, _, _ in self.tensors], summarize_many(ts, self.bins, self.sample, totals)))
        records: list[Record] = list(self.extra)
        if self.static is not None:
            records.append(Static(self.session, self.worker, self.static))
        records.append(Update(self.session, self.worker, self.iteration, score=self.score(),
                              epoch=self.epoch, scalars=self.scalars, summaries=summaries))
        return records
