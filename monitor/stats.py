"""Summaries of tensors: one flat array of many tensors' values in a fixed number of passes.

The listener hands these functions either whole tensors or, for tensors larger than its
``sample_limit``, an even sample of them (see StatsListener), with the full size passed as
``totals`` so that counts are scaled. Nothing here knows about models or optimizers.

:func:`summarize_flat` summarizes the consecutive segments of one flat array (a report's
capture buffer) with a fixed number of numpy passes whatever the number of tensors
(``reduceat`` per statistic, one ``bincount`` for every histogram): about 0.5 ms for the
reference MLP's 52,000 sampled values, where one small torch operation per statistic and
tensor cost 20 ms. It needs numpy alone: the listener's worker process starts without torch.

Exactness: ``count``, ``mean``, ``stdev``, ``mean_magnitude``, ``min``, ``max``, the NaN and
Inf counts, ``zero_fraction`` and the histogram (bins, under- and overflow) are computed over
every element handed in.

Bins: the central range comes from quantiles of a sample of the finite values, widened by
half its span on each side and clipped to [min, max], so one outlier lands in the overflow
count instead of squeezing every other value into a single bin.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from embedviz.records import Histogram, Summary

if TYPE_CHECKING:  # (imported where needed: the worker process summarizes without torch)
    import torch

#: elements (strided) the bin range is estimated from
RANGE_SAMPLE = 512
#: quantiles that bound the central bins, before widening
RANGE_QUANTILES = (0.005, 0.995)
#: the central range is widened by this share of its span on each side
RANGE_WIDEN = 0.5


_local = threading.local()


def round_to_total(values: np.ndarray, total: int) -> np.ndarray:
    """Whole numbers close to ``values`` that add up to ``total`` (largest remainders get
    the rounding), so scaled histogram counts still add up to the elements they stand for."""
    floor = np.floor(values).astype(np.int64)
    short = int(total - floor.sum())
    if short > 0:
        floor[np.argsort(-(values - floor), kind="stable")[:short]] += 1
    return floor


def _empty(n: int, nan_count: int = 0, inf_count: int = 0, zeros: float = math.nan) -> Summary:
    nan = math.nan
    return Summary(count=n, mean=nan, stdev=nan, mean_magnitude=nan, min=nan, max=nan,
                   nan_count=nan_count, inf_count=inf_count,
                   zero_fraction=zeros / n if n else nan)


def scaled(s: Summary, total: int, exact: tuple[int, int] | None = None) -> Summary:
    """``s`` summarizes an even sample of a tensor of ``total`` elements: scale the counts.
    ``exact``: the (NaN, Inf) counts over every element, when known."""
    if (s.count == total and exact is None) or s.count == 0:
        s.count = total
        return s
    f = total / s.count
    s.count = total
    s.nan_count, s.inf_count = exact if exact is not None else (round(s.nan_count * f),
                                                                round(s.inf_count * f))
    h = s.histogram
    if h is not None:
        h.underflow, h.overflow = round(h.underflow * f), round(h.overflow * f)
        inside = total - s.nan_count - s.inf_count - h.underflow - h.overflow
        h.counts = round_to_total(h.counts * (inside / max(h.counts.sum(), 1)), max(inside, 0))
    return s


def _reduce(ufunc: np.ufunc, x: np.ndarray, starts: np.ndarray, dtype: type | None = None) -> np.ndarray:
    """``ufunc`` over each of the contiguous, non-empty segments that begin at ``starts``
    and together cover ``x``: one call for all of them."""
    return ufunc.reduceat(x, starts, dtype=dtype)


class _Scratch:
    """Reused work arrays of one thread. A fresh array of a few hundred kilobytes is mapped
    anew by malloc and page-faulted in on every report: that cost more than the arithmetic
    done in it (5 ms instead of 1 ms for a model's worth of tensors)."""

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, object], np.ndarray] = {}
        self._segments: dict[tuple, np.ndarray] = {}

    def get(self, name: str, n: int, dtype: Any) -> np.ndarray:
        a = self._arrays.get((name, dtype))
        if a is None or a.size < n:
            a = self._arrays[(name, dtype)] = np.empty(max(n, 1 << 16), dtype=dtype)
        return a[:n]

    def segments(self, lens: np.ndarray, scale: int = 1, dtype: Any = np.int64) -> np.ndarray:
        """Each element's segment number times ``scale``, as ``dtype`` (cached: a listener's
        layout repeats)."""
        key = (tuple(lens.tolist()), scale, np.dtype(dtype).str)
        seg = self._segments.get(key)
        if seg is None:
            if len(self._segments) >= 8:
                self._segments.clear()
            seg = self._segments[key] = np.repeat(
                np.arange(0, len(lens) * scale, scale, dtype=np.int64), lens).astype(dtype)
        return seg


def _scratch_np() -> _Scratch:
    s = getattr(_local, "np_scratch", None)
    if s is None:
        s = _local.np_scratch = _Scratch()
    return s


def _flat_finite(x: np.ndarray, lens: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray | None,
                                                                      np.ndarray | None]:
    """Statistics of contiguous, non-empty segments of finite values covering ``x``.

    Returns ``(stats, counts, ranges)``: stats rows are (sum, min, max, nonzero, abs sum,
    variance); counts the (n_segments, bins + 2) histogram counts with under- and overflow
    last; ranges the (n_segments, 2) bin ranges. A fixed number of array passes whatever the
    number of segments: summarizing a model's tensors costs a few dozen numpy calls.
    """
    n, dt = x.size, x.dtype
    sc = _scratch_np()
    work, per = sc.get("work", n, dt), sc.get("per", n, dt)
    flags = sc.get("flags", n, np.bool_)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    m = lens.astype(np.float64)
    # sums in x's precision (reduceat sums pairwise), centred on a first estimate of the
    # mean, which the centred sum then corrects: no cancellation, no float64 pass
    c = (_reduce(np.add, x, starts) / m).astype(dt)
    np.subtract(x, np.repeat(c, lens), out=work)
    shift = _reduce(np.add, work, starts).astype(np.float64) / m
    mean = c + shift
    total = mean * m
    np.square(work, out=work)
    var = _reduce(np.add, work, starts).astype(np.float64) / m - shift ** 2
    lo_all, hi_all = _reduce(np.minimum, x, starts), _reduce(np.maximum, x, starts)
    nonzero = lens - _count(np.equal(x, 0, out=flags), starts)  # (zeros: often none)
    abs_sum = _reduce(np.add, np.abs(x, out=work), starts).astype(np.float64)
    stats = np.stack([total, lo_all, hi_all, nonzero, abs_sum, np.maximum(var, 0.0)], axis=1)
    if not bins:
        return stats, None, None
    # bin range: central quantiles of RANGE_SAMPLE evenly spaced values of each segment
    k = np.arange(RANGE_SAMPLE)
    ranked = np.sort(x[starts[:, None] + (k[None, :] * lens[:, None]) // RANGE_SAMPLE], axis=1)
    q = ranked[:, [round(p * (RANGE_SAMPLE - 1)) for p in RANGE_QUANTILES]].astype(np.float64)
    lo, hi = bin_ranges(q[:, 0], q[:, 1], lo_all.astype(np.float64), hi_all.astype(np.float64))
    if dt != np.float64:  # the edges are exactly what the comparisons below use
        lo32 = lo.astype(dt)
        hi = np.maximum(hi.astype(dt), np.nextafter(lo32, dt.type(np.inf))).astype(np.float64)
        lo = lo32.astype(np.float64)
    lo_x, hi_x = lo.astype(dt), hi.astype(dt)
    per = np.repeat(lo_x, lens)
    under = _count(np.less(x, per, out=flags), starts)
    np.subtract(x, per, out=work)
    work *= np.repeat((bins / (hi - lo)).astype(dt), lens)
    # under- and overflow land in the end bins, taken out below; in [0, bins - 1], the cast
    # to an integer is the floor
    np.clip(work, 0, bins - 1, out=work)
    if len(lens) * bins < 1 << 24 and dt == np.float32:  # (segment offsets exact as float32)
        work += sc.segments(lens, bins, np.float32)  # each segment's bins after the one before
        idx = _to_int(work, sc)
    else:
        idx = sc.get("idx", n, np.int64)
        np.copyto(idx, sc.segments(lens, bins))
        idx += _to_int(work, sc)
    counts = np.bincount(idx, minlength=len(lens) * bins).reshape(len(lens), bins)
    over = _count(np.greater(x, np.repeat(hi_x, lens), out=flags), starts)
    counts[:, 0] -= under
    counts[:, -1] -= over
    return stats, np.concatenate([counts, under[:, None], over[:, None]], axis=1), np.stack([lo, hi], 1)


def _count(flags: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """True flags in each segment beginning at ``starts`` (most often none: then no pass
    that casts every flag to an integer)."""
    if not flags.any():
        return np.zeros(len(starts), dtype=np.int64)
    return _reduce(np.add, flags, starts, np.int64)


def _to_int(a: np.ndarray, sc: _Scratch) -> np.ndarray:
    out = sc.get("int", a.size, np.int64)
    np.copyto(out, a, casting="unsafe")
    return out


def bin_ranges(q_lo: np.ndarray, q_hi: np.ndarray, lo_all: np.ndarray, hi_all: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bin_range` for arrays of segments."""
    span = q_hi - q_lo
    lo = np.maximum(lo_all, q_lo - RANGE_WIDEN * span)
    hi = np.minimum(hi_all, q_hi + RANGE_WIDEN * span)
    flat = ~(hi > lo)
    lo, hi = np.where(flat, lo_all, lo), np.where(flat, hi_all, hi)
    scale = np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
    tiny = ~((hi - lo) > 1e-6 * scale)
    return np.where(tiny, lo - 0.5 * scale, lo), np.where(tiny, hi + 0.5 * scale, hi)


def summarize_flat(x: np.ndarray, sizes: Sequence[int], bins: int | None = 20,
                   totals: Sequence[int] | None = None) -> list[Summary]:
    """Summaries of the consecutive segments of a flat float array (``sizes`` elements each).

    Every element handed in counts, histogram included. A segment holding NaN or Inf is
    summarized over its finite values, the others counted apart. ``totals``: when segment i
    is an even sample of a tensor of ``totals[i]`` elements, its counts are scaled to that.
    """
    bins = int(bins or 0)
    x = np.ascontiguousarray(x).reshape(-1)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    lens: np.ndarray = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if lens.sum() != x.size:
        raise ValueError(f"the segments hold {int(lens.sum())} elements, the array {x.size}")
    n_seg = len(lens)
    counted = [(int(n), 0, 0, -1) for n in lens]  # (count, NaN, Inf, zeros or -1)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1])) if n_seg else lens
    full = lens > 0
    sums = _reduce(np.add, x, starts[full], np.float64) if x.size else np.zeros(0)
    if not np.isfinite(sums).all():  # the rare path: keep the finite values of each segment
        parts, lens = [], lens.copy()
        for j, s in zip(np.flatnonzero(full).tolist(), starts[full].tolist()):
            seg = x[s:s + counted[j][0]]
            finite = np.isfinite(seg)
            if finite.all():
                parts.append(seg)
                continue
            nan_count = int(np.isnan(seg).sum())
            kept = seg[finite]
            counted[j] = (len(seg), nan_count, len(seg) - kept.size - nan_count, int((seg == 0).sum()))
            parts.append(kept)
            lens[j] = kept.size
        x = np.concatenate(parts) if parts else x[:0]
        full = lens > 0
    out: list[Summary] = []
    if x.size:
        stats, counts, ranges = _flat_finite(x, lens[full], bins)
        m = lens[full].astype(np.float64)
        # float64 rows -> Python floats in one go; everything below is already valid
        means, mags = (stats[:, 0] / m).tolist(), (stats[:, 4] / m).tolist()
        stdevs, mins, maxs = np.sqrt(stats[:, 5]).tolist(), stats[:, 1].tolist(), stats[:, 2].tolist()
        nonzero = stats[:, 3].tolist()
        if bins:
            assert counts is not None and ranges is not None
            edges = ranges[:, :1] + (ranges[:, 1:] - ranges[:, :1]) * (np.arange(bins + 1) / bins)
            edges[:, -1] = ranges[:, 1]
            outside = counts[:, bins:].tolist()
    r = 0
    for i in range(n_seg):
        n, nan_count, inf_count, zeros = counted[i]
        if not full[i]:
            out.append(_empty(n, nan_count, inf_count, max(zeros, 0) if n else math.nan))
            continue
        hist = None
        if bins:
            assert counts is not None
            hist = Histogram.trusted(edges[r], counts[r, :bins], outside[r][0], outside[r][1])
        out.append(Summary.trusted(hist, count=n, mean=means[r], stdev=stdevs[r],
                                   mean_magnitude=mags[r], min=mins[r], max=maxs[r],
                                   nan_count=nan_count, inf_count=inf_count,
                                   zero_fraction=(n - nonzero[r]) / n if zeros < 0 else zeros / n))
        r += 1
    if totals is not None:
        out = [scaled(s, int(t)) for s, t in zip(out, totals)]
    return out


def summarize_many(tensors: Sequence[torch.Tensor], bins: int | None = 20,
                   totals: Sequence[int] | None = None) -> list[Summary]:
    """Summaries of several tensors (any shapes, floating dtypes and devices), computed on
    the host by :func:`summarize_flat` (a tensor on an accelerator is copied over: the
    listener's are samples of a few thousand elements). ``bins=None`` skips histograms;
    ``totals``: when tensor i is an even sample of a tensor of ``totals[i]`` elements, its
    counts are scaled to that size."""
    import torch

    out: list[Summary | None] = [None] * len(tensors)
    for dtype in (torch.float32, torch.float64):  # (each in its own precision)
        idx = [i for i, t in enumerate(tensors) if (t.dtype == torch.float64) == (dtype == torch.float64)]
        if not idx:
            continue
        flat = torch.cat([tensors[i].detach().reshape(-1).to("cpu", dtype) for i in idx])
        got = summarize_flat(flat.numpy(), [tensors[i].numel() for i in idx], bins,
                             None if totals is None else [totals[i] for i in idx])
        for i, summary in zip(idx, got):
            out[i] = summary
    return [s for s in out if s is not None]


def summarize(t: torch.Tensor, bins: int | None = 20) -> Summary:
    """Summary of every element of one tensor (see :func:`summarize_many`)."""
    return summarize_many([t], bins)[0]
