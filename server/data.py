"""What the pages compute from what they read: no Bokeh here, so it is tested on its own."""

from __future__ import annotations

from typing import Any

import numpy as np


def log10_ratio(update: np.ndarray, param: np.ndarray) -> np.ndarray:
    """log10(mean |update| / mean |parameter|): about -3 is healthy (seed 001)."""
    return np.log10(update / param)


def log10(values: np.ndarray) -> np.ndarray:
    return np.log10(values)


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
