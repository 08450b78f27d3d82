"""The report: what the training thread hands the summarizer at one reported iteration, and
how it becomes records (numpy alone: the worker process imports this without torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from embedviz.monitor.stats import scaled, summarize_flat

from embedviz.records import Record, Static, Update


@dataclass
class Report:
    """What the training thread hands a sink at one reported iteration."""

    session: str
    worker: str
    iteration: int
    epoch: int | None
    score: Any  # a float, None, or a loss tensor on a device (read in the background)
    scalars: dict[str, float]
    #: (key, elements captured, elements of the tensor), in buffer order
    layout: list[tuple[str, int, int]] = field(default_factory=list)
    buffer: int = -1  # the capture buffer's index in the pool; -1: nothing captured
    used: int = 0  # elements of it in use
    dtype: str = "float32"
    #: (start, end, after): the parameters before the step lie at start:end, after it from
    #: ``after``; the summarizer makes their difference, the update, in place of "before"
    update: tuple[int, int, int] | None = None
    bins: int | None = 20
    #: exact (NaN, Inf) counts of sampled tensors found non-finite over every element
    nonfinite: dict[str, tuple[int, int]] = field(default_factory=dict)
    static: dict | None = None


def report_records(report: Report, flat: np.ndarray | None, rss: float | None) -> list[Record]:
    """The records of a report whose captured values are ``flat`` (writable)."""
    if flat is None:
        flat = np.zeros(0, np.float32)
    if report.update is not None:
        start, end, after = report.update
        np.subtract(flat[after:after + end - start], flat[start:end], out=flat[start:end])
    summaries = summarize_flat(flat, [n for _, n, _ in report.layout], report.bins)
    summaries = [scaled(s, total, report.nonfinite.get(key))
                 for s, (key, _, total) in zip(summaries, report.layout)]
    scalars = dict(report.scalars)
    if rss is not None:
        scalars["memory/rss_bytes"] = rss
    score = None if report.score is None else float(report.score)
    records: list[Record] = []
    if report.static is not None:
        records.append(Static(report.session, report.worker, report.static))
    records.append(Update.trusted(report.session, report.worker, report.iteration, score,
                                  report.epoch, scalars,
                                  dict(zip([k for k, _, _ in report.layout], summaries))))
    return records


def rss_bytes(pid: int) -> float | None:
    """A process's resident memory, bytes (None where /proc does not tell)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
