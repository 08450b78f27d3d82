"""Level of detail for large maps: a density image of the view plus the points worth drawing.

A browser draws a few thousand points quickly but not a million, and a million words with
their positions are ~30 MB on the wire. Above :data:`LOD_POINTS` points a map is drawn as an RGBA density image
of what is in view (each pixel the mean colour of its points, more opaque where more points
fall) with, on top, the points of the view that matter most (in ``priority`` order, the
label order: the most frequent word of each region first), at most :data:`VIEW_POINTS`;
when the view holds that few, every point in it. Zooming in therefore ends in plain points
with hover and labels. The server page computes this in Python per view
(:class:`MapLOD`); a standalone HTML file does the same in the browser (``LOD_JS``, over
the columns it must carry anyway).

Datashader (HoloViz) does the same aggregation and shading; measured beside this
(``benchmarks/bench_app.py --maps``) it aggregates a whole million-point view in 26-27 ms to
our 35-56 ms, a zoomed one in 25 ms to our 1-2 ms, after compiling for 1-1.6 s, and would bring
numba, pandas, xarray and dask into the core: numpy it is.
"""

from __future__ import annotations

import numpy as np

#: maps with more points than this are drawn with level of detail; below, every point as is
LOD_POINTS = 50_000
#: at most this many points drawn on top of the density image
VIEW_POINTS = 5_000
#: the density image's pixels per screen pixel (2: one image pixel covers 2 x 2 screen pixels)
COARSE = 2


def _rgb(colours: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(palette of shape (m, 3), index of each colour into it, the m colours) from "#rrggbb"
    strings."""
    names = list(dict.fromkeys(colours))
    codes = {c: i for i, c in enumerate(names)}
    index = np.array(list(map(codes.__getitem__, colours)), dtype=np.int32)
    rgb = np.array([[int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)]
                    if len(c) == 7 and c.startswith("#") else [31, 119, 180] for c in names],
                   dtype=np.float64).reshape(-1, 3)
    return rgb, index, names


class MapLOD:
    """The points of a map in priority order, answering "what to draw for this view".

    ``coords``: (n, 2); ``colours``: n "#rrggbb" strings; ``priority``: indices, most
    important first (:func:`embedviz.plot.label_order`).
    """

    def __init__(self, coords: np.ndarray, colours: list[str], priority: np.ndarray) -> None:
        self.order = np.asarray(priority, dtype=np.int64)
        xy = np.asarray(coords, dtype=np.float64)[self.order]
        self.x, self.y = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
        self.recolour(colours)

    def recolour(self, colours: list[str]) -> None:
        self.palette, self.colour, self.names = _rgb([colours[i] for i in self.order])

    def __len__(self) -> int:
        return len(self.order)

    def view(self, x0: float, x1: float, y0: float, y1: float, width: int, height: int,
             limit: int = VIEW_POINTS) -> tuple[np.ndarray | None, np.ndarray]:
        """(image, points) for the view [x0, x1] x [y0, y1] drawn ``width`` x ``height``
        pixels: ``image`` an RGBA (uint32, shape (height, width)) density image, or None when
        the view holds at most ``limit`` points; ``points`` the original indices of the
        points to draw, most important first."""
        inside = (self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1)
        where = np.flatnonzero(inside)
        if len(where) <= limit:
            return None, self.order[where]
        w, h = max(1, width), max(1, height)
        ix = np.minimum(((self.x[where] - x0) / max(x1 - x0, 1e-300) * w).astype(np.int64), w - 1)
        iy = np.minimum(((self.y[where] - y0) / max(y1 - y0, 1e-300) * h).astype(np.int64), h - 1)
        cell = iy * w + ix
        count = np.bincount(cell, minlength=w * h).astype(np.float64)
        filled = count > 0
        rgb = np.zeros((w * h, 3))
        colour = self.palette[self.colour[where]]
        for k in range(3):
            rgb[:, k] = np.bincount(cell, weights=colour[:, k], minlength=w * h)
        rgb[filled] /= count[filled, None]
        # opacity by log density: a lone point faint but seen, the densest pixel solid
        alpha = np.where(filled, 0.25 + 0.75 * np.log1p(count) / np.log1p(count.max()), 0.0)
        packed = (rgb[:, 0].astype(np.uint32) | (rgb[:, 1].astype(np.uint32) << 8)
                  | (rgb[:, 2].astype(np.uint32) << 16)
                  | ((alpha * 255).astype(np.uint32) << 24))
        return packed.reshape(h, w), self.order[where[:limit]]


class WordSearch:
    """Substring search over many words, ignoring case: one scan of the words joined into one
    text (a million words: ~20 ms, against ~0.4 s to lowercase them one by one first)."""

    SEP = "\x00"

    def __init__(self, words: list[str]) -> None:
        import re

        self._re = re
        self.words = words
        self.text = self.SEP.join(words)
        lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        self.starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])

    def find(self, query: str) -> tuple[list[int], int]:
        """(indices of the words holding ``query``, in order; the index of the word equal to
        it, or -1), both ignoring case."""
        q = query.strip()
        if not q or self.SEP in q:
            return [], -1
        at = np.fromiter((m.start() for m in self._re.finditer(self._re.escape(q), self.text,
                                                               self._re.IGNORECASE)),
                         dtype=np.int64)
        idx = np.unique(np.searchsorted(self.starts, at, side="right") - 1).tolist()
        low = q.lower()
        exact = next((i for i in idx if len(self.words[i]) == len(q)
                      and self.words[i].lower() == low), -1)
        return idx, exact
