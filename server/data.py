"""What the pages show, read from the store: no Bokeh here, so it is tested on its own.

A page holds :class:`Tail` objects: each knows one line of one chart (a stored series, or a
ratio of two) and its cursor, and gives only the points written since its last read, so a
periodic callback streams what is new instead of re-reading the whole series.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedviz.store import Store

#: points a line is read with at first (the store keeps each bucket's min, max, first NaN
#: and last point, so spikes and divergence stay visible)
MAX_POINTS = 2000


def columns(iterations: np.ndarray, values: np.ndarray, wall: np.ndarray, start: float,
            stored_bad: np.ndarray | None = None) -> dict:
    """A line's columns: ``y`` has NaN where the value is not finite (Bokeh draws a gap),
    ``mark`` a height only there (a marker is drawn), ``raw`` the value as stored, and the
    three x axes a user can pick. ``stored_bad``: for a value computed from stored ones (a
    log, a ratio), where those were NaN or Inf; a log of 0 is a gap, not a marker."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    bad = ~finite if stored_bad is None else np.asarray(stored_bad, dtype=bool)
    # a NaN/Inf point's marker sits at the last finite value before it (the first one after
    # it at the start): where the line breaks off
    idx = np.where(finite, np.arange(values.size), -1)
    idx = np.maximum.accumulate(idx) if idx.size else idx
    first = int(np.argmax(finite)) if finite.any() else -1
    held = values[np.where(idx >= 0, idx, first)] if first >= 0 else np.ones_like(values)
    return {"iteration": np.asarray(iterations, dtype=np.int64),
            "relative": np.asarray(wall, dtype=float) - start,
            "wall": np.asarray(wall, dtype=float) * 1000.0,  # (Bokeh's datetimes: ms)
            "y": np.where(finite, values, np.nan),
            "raw": values,
            "mark": np.where(bad, held, np.nan)}


@dataclass
class Tail:
    """One line of a chart: the stored series ``keys`` combined by ``combine`` (one key:
    the series itself), read since its cursor."""

    session: str
    worker: str | None
    keys: tuple[str, ...]
    combine: Callable[..., np.ndarray] | None = None
    start: float = 0.0  # the session's start (relative time)
    cursors: list[int] = field(default_factory=list)
    #: the first read was downsampled (so zooming in has more to show)
    downsampled: bool = False

    def whole(self, store: Store) -> dict:
        """Every point written so far, at full resolution (the cursors stay as they are)."""
        return Tail(self.session, self.worker, self.keys, self.combine, self.start).read(store)

    def read(self, store: Store, max_points: int | None = None) -> dict:
        """The columns of the points written since the last read (all of them, downsampled
        to ``max_points``, the first time)."""
        fresh = not self.cursors
        if fresh:
            self.cursors = [0] * len(self.keys)
        got = []
        for i, key in enumerate(self.keys):
            s = store.read_series(self.session, key, worker=self.worker, since=self.cursors[i],
                                  max_points=max_points)
            self.cursors[i] = s.cursor
            got.append(s)
        first = got[0]
        # (a downsampled read keeps about max_points of many more)
        self.downsampled |= fresh and max_points is not None and len(first) >= max_points // 2
        values, bad = first.values, None
        if len(got) > 1:
            # a ratio and the like, at the first series' points: each other series' own point
            # where it has one there, else (downsampled, its extremes fall elsewhere) its line
            # between its neighbours
            parts = [first.values] + [_at(s, first.iterations) for s in got[1:]]
            bad = ~np.logical_and.reduce([np.isfinite(p) for p in parts])
            assert self.combine is not None
            with np.errstate(divide="ignore", invalid="ignore"):
                values = self.combine(*parts)
        elif self.combine is not None:
            bad = ~np.isfinite(values)
            with np.errstate(divide="ignore", invalid="ignore"):
                values = self.combine(values)
        return columns(first.iterations, values, first.wall_times, self.start, bad)


def _at(s: Any, iterations: np.ndarray) -> np.ndarray:
    """Series ``s``'s values at ``iterations``: its own where it has a point, interpolated
    between its finite points elsewhere (NaN outside its range)."""
    if len(s) == 0:
        return np.full(len(iterations), np.nan)
    pos = np.clip(np.searchsorted(s.iterations, iterations), 0, len(s) - 1)
    exact = s.iterations[pos] == iterations
    finite = np.isfinite(s.values)
    out = np.full(len(iterations), np.nan)
    if finite.any():
        out = np.interp(iterations, s.iterations[finite], s.values[finite], left=np.nan, right=np.nan)
    return np.where(exact, s.values[pos], out)


def log10_ratio(update: np.ndarray, param: np.ndarray) -> np.ndarray:
    """log10(mean |update| / mean |parameter|): about -3 is healthy (seed 001)."""
    return np.log10(update / param)


def log10(values: np.ndarray) -> np.ndarray:
    return np.log10(values)


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start; a
    NaN or Inf point stays as it is and does not poison what follows."""
    values = np.asarray(values, dtype=float)
    if weight <= 0 or values.size == 0:
        return values.copy()
    out = np.empty_like(values)
    last, n = 0.0, 0
    for i, v in enumerate(values.tolist()):
        if not math.isfinite(v):
            out[i] = v
            continue
        last = last * weight + (1 - weight) * v
        n += 1
        out[i] = last / (1 - weight ** n)
    return out


def tensor_names(keys: list[str], kind: str, static: dict | None = None) -> list[str]:
    """Names of the tensors of ``kind`` ("param", "activation", ...) that have series, in
    the model's order when its layer table is known."""
    names = {k.split("/", 1)[1].rsplit("/", 1)[0] for k in keys
             if k.startswith(kind + "/") and k.endswith("/mean_magnitude")}
    order: list[str] = []
    for layer in (static or {}).get("model", {}).get("layers", []):
        order.append(layer["name"])
        order.extend(f"{layer['name']}.{p}" if layer["name"] else p for p in layer.get("params", {}))
    rank = {n: i for i, n in enumerate(order)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def weight_names(params: list[str]) -> list[str]:
    """The parameters whose update:param ratio is charted (biases start at zero: their
    ratio says little), all of them when none is called a weight."""
    weights = [p for p in params if not p.endswith("bias")]
    return weights or params


def layer_of(name: str) -> str:
    """The module a parameter belongs to ("fc1.weight" -> "fc1")."""
    return name.rsplit(".", 1)[0] if "." in name else ""


def model_rows(static: dict) -> list[tuple[str, str, str]]:
    """(section, name, value) rows of a worker's static info, for the info table."""
    rows: list[tuple[str, str, str]] = []
    model = static.get("model", {})
    if model:
        rows.append(("model", "type", str(model.get("type", "?"))))
        rows.append(("model", "parameters", f"{model.get('n_params', 0):,}"))
        rows.append(("model", "layers", str(len(model.get("layers", [])))))
    opt = static.get("optimizer", {})
    if opt:
        rows.append(("optimizer", "type", str(opt.get("type", "?"))))
        for k, v in opt.get("defaults", {}).items():
            if v not in (None, False, 0) or k == "lr":
                rows.append(("optimizer", k, _short(v)))
    for section in ("hyperparameters", "software", "hardware"):
        for k, v in static.get(section, {}).items():
            rows.append((section, k, _short(v)))
    listener = static.get("listener", {})
    for k in ("frequency", "background", "sample_limit"):
        if k in listener:
            rows.append(("listener", k, _short(listener[k])))
    return rows


def layer_rows(static: dict) -> list[dict[str, Any]]:
    """The layer table: name, type, parameters, output shape."""
    out = []
    for layer in static.get("model", {}).get("layers", []):
        shapes = layer.get("output_shapes") or []
        out.append({"name": layer.get("name") or "(model)", "type": layer.get("type", ""),
                    "n_params": int(layer.get("n_params", 0)),
                    "params": ", ".join(f"{k} {tuple(v)}" for k, v in layer.get("params", {}).items()),
                    "output": ", ".join(str(tuple(s)) for s in shapes)})
    return out


def _short(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 60 else s[:57] + "..."


def histogram_grid(records: list, rows: int = 64) -> tuple[np.ndarray, float, float, np.ndarray]:
    """Histograms over time as one image: ``rows`` value bins by report. The value range
    covers most reports' ranges (the 10th percentile of their lows to the 90th of their
    highs: one wild early report does not squeeze the rest into a line); each bin's count
    is spread over the rows it overlaps, and each column is scaled to its largest row.
    Returns (image rows x reports, low, high, iterations)."""
    its = np.array([r.iteration for r in records], dtype=np.int64)
    if not records:
        return np.zeros((rows, 0)), 0.0, 1.0, its
    los = np.array([float(r.histogram.edges[0]) for r in records])
    his = np.array([float(r.histogram.edges[-1]) for r in records])
    lo, hi = float(np.quantile(los, 0.1)), float(np.quantile(his, 0.9))
    if not hi > lo:
        lo, hi = float(los.min()), float(max(his.max(), los.min() + 1.0))
    grid = np.linspace(lo, hi, rows + 1)
    image = np.zeros((rows, len(records)))
    for j, r in enumerate(records):
        e = np.asarray(r.histogram.edges, dtype=float)
        cdf = np.concatenate([[0.0], np.cumsum(np.asarray(r.histogram.counts, dtype=float))])
        col = np.diff(np.interp(grid, e, cdf))  # (uniform within a bin)
        top = col.max()
        image[:, j] = col / top if top > 0 else col
    return image, lo, hi, its
