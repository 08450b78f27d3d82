"""Tensor summaries: honest histograms, NaN and Inf counted apart."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from embedviz.monitor.stats import summarize, summarize_flat, summarize_many


def test_an_outlier_lands_in_overflow_instead_of_flattening_the_bins():
    torch.manual_seed(0)
    x = torch.randn(10_000)
    x[17] = 1e6
    s = summarize(x, bins=20)
    h = s.histogram
    assert h.overflow == 1 and h.underflow == 0
    assert h.edges[-1] < 10  # the bins cover the bulk, not [min, max]
    assert (h.counts > 0).sum() >= 12  # the bulk spreads over many bins
    assert s.max == 1e6 and h.counts.sum() + h.overflow == 10_000


def test_nan_and_inf_are_counted_apart_not_dropped():
    x = torch.tensor([1.0, -2.0, 0.0, math.nan, math.inf, -math.inf, 3.0])
    s = summarize(x)
    assert (s.count, s.nan_count, s.inf_count) == (7, 1, 2)
    assert s.mean == pytest.approx(0.5) and s.min == -2.0 and s.max == 3.0
    assert s.zero_fraction == pytest.approx(1 / 7)
    assert s.histogram.counts.sum() + s.histogram.underflow + s.histogram.overflow == 4
    all_nan = summarize(torch.full((4,), math.nan))
    assert all_nan.nan_count == 4 and math.isnan(all_nan.mean)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64])
def test_any_dtype_and_constant_tensors(dtype):
    s = summarize(torch.ones(100, dtype=dtype) * 3)
    assert s.mean == 3 and s.stdev == 0 and s.histogram.counts.sum() == 100
    assert s.histogram.edges[0] < 3 < s.histogram.edges[-1]


def test_many_at_once_equals_one_by_one():
    torch.manual_seed(1)
    ts = [torch.randn(50, 3), torch.rand(1000) * 5, torch.zeros(0), torch.randn(7).double()]
    many = summarize_many(ts)
    for t, s in zip(ts, many):
        assert s == summarize(t)
    assert many[2].count == 0


def test_a_sample_scales_counts_to_the_full_tensor():
    torch.manual_seed(2)
    full = torch.randn(100_000)
    sample = full[::10].contiguous()
    (s,) = summarize_many([sample], bins=10, totals=[full.numel()])
    assert s.count == 100_000
    assert abs(s.histogram.counts.sum() + s.histogram.underflow + s.histogram.overflow - 100_000) <= 10
    assert s.stdev == pytest.approx(full.std().item(), rel=0.02)
    exact, _ = np.histogram(full.numpy(), bins=s.histogram.edges)
    assert np.abs(exact - s.histogram.counts).max() < 0.05 * exact.max()


def test_flat_summaries_count_every_element_exactly():
    rng = np.random.default_rng(3)
    parts = [rng.normal(0, 1, 5000), np.zeros(0), rng.normal(5, 1e-3, 300), np.array([2.5]),
             np.where(rng.random(4000) < 0.3, 0.0, rng.exponential(2, 4000)),
             np.array([1.0, np.nan, -np.inf, 0.0, 4.0]), np.full(10, 7.0)]
    parts[0][17] = 1e4  # an outlier
    x = np.concatenate(parts).astype(np.float32)
    got = summarize_flat(x, [len(p) for p in parts], bins=16)
    for part, s in zip(parts, got):
        p32 = part.astype(np.float32).astype(np.float64)
        finite = p32[np.isfinite(p32)]
        assert s.count == len(part)
        assert s.nan_count == int(np.isnan(p32).sum()) and s.inf_count == int(np.isinf(p32).sum())
        if not len(finite):
            assert math.isnan(s.mean)
            continue
        assert s.mean == pytest.approx(finite.mean(), rel=1e-6, abs=1e-9)
        assert s.stdev == pytest.approx(finite.std(), rel=1e-4, abs=1e-9)
        assert s.mean_magnitude == pytest.approx(np.abs(finite).mean(), rel=1e-6)
        assert (s.min, s.max) == (finite.min(), finite.max())
        assert s.zero_fraction == pytest.approx((p32 == 0).sum() / len(part))
        h = s.histogram
        assert h.underflow == (finite < h.edges[0]).sum() and h.overflow == (finite > h.edges[-1]).sum()
        inside = finite[(finite >= h.edges[0]) & (finite <= h.edges[-1])]
        assert h.counts.sum() == len(inside)
        exact, _ = np.histogram(inside, bins=h.edges)
        assert np.abs(exact - h.counts).sum() <= 2  # (a value on an edge may round either way)
    assert got[0].histogram.overflow == 1  # the outlier, not a flattened histogram
