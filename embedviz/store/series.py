"""Series read back from a store, and downsampling that keeps spikes visible."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Series:
    """One number over iterations.

    ``iterations``: int64 ndarray of shape (n,); ``values``: float64 (NaN and Inf kept);
    ``wall_times``: float64, seconds since the epoch. ``cursor`` is what to pass as ``since``
    to read only what arrived after this read: an opaque number of the store that gave it
    (not comparable with another store's, nor across backends). ``ids``: int64, the cursor after each point,
    for a read of the points as stored (None when downsampled: a kept point then stands
    for a bucket); a reader that keeps points answers a later cursor from them.
    """

    key: str
    iterations: np.ndarray
    values: np.ndarray
    wall_times: np.ndarray
    cursor: int
    ids: np.ndarray | None = None

    @classmethod
    def empty(cls, key: str, cursor: int) -> Series:
        """No points; ``cursor`` unchanged."""
        nothing = np.empty(0)
        return cls(key, nothing.astype(np.int64), nothing, nothing.copy(), cursor,
                   nothing.astype(np.int64))

    def __len__(self) -> int:
        return len(self.iterations)

    def take(self, index: np.ndarray) -> Series:
        return Series(self.key, self.iterations[index], self.values[index],
                      self.wall_times[index], self.cursor,
                      None if self.ids is None else self.ids[index])


def downsample_index(iterations: np.ndarray, values: np.ndarray, n_points: int) -> np.ndarray:
    """Indices (sorted) of at most ``n_points`` points that keep the shape of a series.

    The iteration range is cut into equal buckets; each bucket keeps its minimum and its
    maximum (Inf counts as an extreme) and its first NaN if it has one, so no spike and no
    divergence disappears; the last point is always kept. With too few points for even one
    bucket's (``n_points`` 2 or 3), they are kept in this order: the last point, the maximum,
    the minimum, the first NaN.

    Both stores downsample with this function, but the SQLite store gives it its blocks'
    extremes where a scan gives it every point (:mod:`embedviz.store.blocks`): both keep
    every bucket's extremes, first NaN and the last point, but their buckets, hence the
    points kept, may differ.
    """
    n = len(values)
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2 (got {n_points}): ask for more points")
    if n <= n_points:
        return np.arange(n)
    nan = np.isnan(values)
    n_buckets = max(1, (n_points - 1) // (3 if nan.any() else 2))
    lo, hi = int(iterations.min()), int(iterations.max())
    bucket = (iterations.astype(np.int64) - lo) * n_buckets // (hi - lo + 1)
    keep = [np.array([n - 1])]
    idx = np.flatnonzero(~nan)
    priority = [n - 1]  # (what to keep first when even one bucket's points are too many)
    if idx.size:
        order = idx[np.lexsort((values[idx], bucket[idx]))]
        b = bucket[order]
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        ends = np.r_[starts[1:] - 1, len(order) - 1]
        keep += [order[starts], order[ends]]
        priority += [int(idx[np.argmax(values[idx])]), int(idx[np.argmin(values[idx])])]
    nan_idx = np.flatnonzero(nan)
    if nan_idx.size:
        _, first = np.unique(bucket[nan_idx], return_index=True)
        keep.append(nan_idx[first])
        priority.append(int(nan_idx[0]))
    out = np.unique(np.concatenate(keep))
    if len(out) > n_points:  # (one bucket: its extremes are the series')
        out = np.unique(np.array(list(dict.fromkeys(priority))[:n_points], dtype=np.int64))
    return out
