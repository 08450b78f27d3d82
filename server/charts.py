"""Live line charts: the machinery every training page shares.

A :class:`Chart` is a figure whose lines follow the store. Its lines of one session's
worker that come from the same reports (the score, learning rates, per-layer statistics)
share one ColumnDataSource, so a tick sends one message per chart and session, not one
per line (every message costs the server's one event loop, times every open tab): a few
lines as a column triple each (``i<k>`` iteration, ``t<k>`` wall time in ms, ``y<k>``
value), streamed; many (a layer each) as the rows of one MultiLine, their arrays longer
than their points so that new points are patched in (a renderer per line costs the
browser more than its points). A logged metric, on its own clock, has a source of its own.

Lines are read downsampled to what the chart can show (:data:`CHART_POINTS` across its
lines); zooming in replaces the points inside the visible window with the store's points
there (a range read), keeping the overview outside it, so reset returns to the whole run.

What a value cannot be drawn as is marked, never drawn as 0: a stored NaN or Inf breaks
the line with a red cross where it broke off; an exact 0 on a log chart (log10 0 = -inf)
is a marker on the chart's floor, stated in its hover.

The lines of a session with several workers (the ranks of a torch.distributed job) can be
drawn as their spread (worker :data:`ALL`): each line the median across the workers, with
a band from their min to their max, computed from each worker's reads (memoised: every tab
showing it costs one computation a generation) and followed live up to the iteration every
worker has reached.
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bokeh.layouts import column
from bokeh.models import (  # type: ignore[attr-defined]
    BasicTicker,
    BasicTickFormatter,
    Button,
    CDSView,
    ColumnDataSource,
    CustomJS,
    CustomJSTransform,
    DataRange1d,
    DatetimeTicker,
    DatetimeTickFormatter,
    HoverTool,
    Legend,
    LegendItem,
    LinearScale,
    MultiLine,
    NumeralTickFormatter,
    Range1d,
    Scatter,
)
from bokeh.models import Line as LineGlyph  # type: ignore[attr-defined]
from bokeh.models.glyphs import Patches, VArea
from bokeh.palettes import Category10_10, Turbo256
from bokeh.plotting import figure
from bokeh.transform import transform

from embedviz.store import Series, SessionInfo, downsample_index

X_MODES = ("iteration", "relative", "wall")
#: the worker that stands for every worker of a session: its lines drawn as their spread
ALL = "*"
BAND_ALPHA = 0.15
#: seconds behind the session's newest report after which a worker has stopped (a spread
#: is no longer held back to the iteration it reached)
STOPPED_S = 60.0
TOOLS = "xpan,box_zoom,xwheel_zoom,reset,save"
#: points a chart's lines are read with, shared among its lines (a 1,500-pixel chart shows
#: about a min and a max per two pixels)
CHART_POINTS = 4000
LINE_POINTS = (150, 1000)
#: lines beyond which a chart drops its legend for its hover (colours then run by depth)
LEGEND_MAX = 12
FLOOR_Y = 0.04  # a floor marker's height on the floor range (0..1 of the frame)
BAD_COLOR = "#d62728"
#: a line is never selected or muted: no extra glyphs for those states (in the browser each
#: is a view more per line)
BARE = {"selection_glyph": None, "nonselection_glyph": None, "muted_glyph": None}

#: TensorBoard's smoothing, in the browser (a slider moves it without a round trip): an
#: exponential moving average debiased at the start; a NaN stays a gap
EMA_JS = """
const w = weight, out = new Float64Array(xs.length);
let last = 0, n = 0;
for (let i = 0; i < xs.length; i++) {
  const v = xs[i];
  if (!Number.isFinite(v)) { out[i] = NaN; continue; }
  last = last * w + (1 - w) * v; n += 1;
  out[i] = w > 0 ? last / (1 - Math.pow(w, n)) : v;
}
return out;
"""


def palette(n: int) -> list[str]:
    """``n`` colours: Category10 up to 10, else a sweep (early layers blue, late red)."""
    if n <= 10:
        return list(Category10_10[:max(n, 1)])
    return [Turbo256[int(20 + 215 * i / max(n - 1, 1))] for i in range(n)]


def session_color(i: int) -> str:
    """The colour of the ``i``-th picked session, the same on every chart."""
    return Category10_10[i % 10]


@dataclass(eq=False)
class Line:
    """One drawn line: the stored series ``keys`` of a session's worker, combined by
    ``combine`` (one key and no combine: the series itself). ``log``: the values are
    log10s, so an exact 0 in a stored part becomes a floor marker."""

    label: str
    keys: tuple[str, ...]
    combine: Callable[..., np.ndarray] | None = None
    color: str = "#1f77b4"
    dash: str = "solid"
    width: float = 1.6
    alpha: float = 1.0
    log: bool = False
    legend: str | None = None
    smooth: bool = False  # also draw TensorBoard's smoothed line over it
    col: int = 0
    renderers: list[Any] = field(default_factory=list)


def line_columns(line: Line, got: dict[str, Series], log_axis: bool = False) -> dict[str, Any]:
    """A line's points from its series: iteration ``i``, wall time ``t`` (ms), value ``y``
    (NaN where it cannot be drawn), and the rows to mark: ``bad`` (a stored NaN/Inf,
    drawn at the last finite height before it) and ``zero`` (log10 of an exact 0, or a
    value <= 0 on a log axis)."""
    first = got[line.keys[0]]
    its = np.asarray(first.iterations, dtype=np.int64)
    wall = np.asarray(first.wall_times, dtype=float) * 1000.0
    parts = [np.asarray(first.values, dtype=float)]
    parts += [_at(got[k], its) for k in line.keys[1:]]
    bad = ~np.logical_and.reduce([np.isfinite(p) for p in parts])
    if line.combine is None:
        values = parts[0]
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.asarray(line.combine(*parts), dtype=float)
    zero = ~bad & (values == -np.inf) if line.log else np.zeros(len(values), bool)
    if log_axis:
        zero |= ~bad & np.isfinite(values) & (values <= 0)
    finite = np.isfinite(values) & ~zero
    y = np.where(finite, values, np.nan)
    idx = np.where(finite, np.arange(len(y)), -1)
    held = np.maximum.accumulate(idx) if idx.size else idx
    first_ok = int(np.argmax(finite)) if finite.any() else -1
    height = (y[np.where(held >= 0, held, first_ok)] if first_ok >= 0
              else np.full(len(y), 1.0 if log_axis else 0.0))
    return {"i": its, "t": wall, "y": y, "bad": bad, "zero": zero, "height": height,
            "raw": values}


def _at(s: Series, iterations: np.ndarray) -> np.ndarray:
    """Series ``s`` at ``iterations``: its own value where it has a point there, else
    its line between its neighbours (a read downsampled elsewhere), NaN outside it."""
    if len(s) == 0:
        return np.full(len(iterations), np.nan)
    pos = np.clip(np.searchsorted(s.iterations, iterations), 0, len(s) - 1)
    exact = s.iterations[pos] == iterations
    finite = np.isfinite(s.values)
    out = np.full(len(iterations), np.nan)
    if finite.any():
        out = np.interp(iterations, s.iterations[finite], s.values[finite], left=np.nan,
                        right=np.nan)
    return np.where(exact, s.values[pos], out)


class Group:
    """The lines of one chart from one session's worker that share a source."""

    def __init__(self, chart: Chart, session: SessionInfo, worker: str,
                 workers: Sequence[str] = ()) -> None:
        self.chart, self.session, self.worker = chart, session, worker
        #: a spread's workers (worker ALL): its lines are their median, min and max
        self.workers = tuple(workers)
        #: a spread: the last iteration aggregated (every worker has reached it)
        self.ready: int | None = None
        self.band = ColumnDataSource({"xs": [], "ts": [], "ys": [], "color": []})
        self.band_renderer: Any = None
        self.lines: list[Line] = []
        self.cursors: dict[str, int] = {}
        self.source = ColumnDataSource({})
        self.marks = ColumnDataSource({c: [] for c in MARKS})
        self.floor = ColumnDataSource({c: [] for c in MARKS})
        #: relative time: seconds since the session began, computed in the browser
        self.relative = CustomJSTransform(args={"start": session.created * 1000.0},
                                          v_func="return xs.map((x) => (x - start) / 1000);")
        #: each line's points as read whole (downsampled), grown by each tick (the ticks'
        #: points kept apart until asked for: joining arrays every tick costs each tab): a
        #: zoom replaces what is inside its window with the store's points there
        self._overview: list[dict[str, np.ndarray]] = []
        self._added: list[list[dict[str, np.ndarray]]] = []
        self.held = 0  # (points of the longest line held)
        self.window: tuple[int, int] | None = None
        self.extra: list[Any] = []  # (the marker renderers, drawn against x too)
        #: many lines (a layer each) are one MultiLine of a row each, its arrays kept
        #: longer than their points (NaN after ``fill``) so that new points are patched in
        self.multi = False
        self.sparse = False  # (a line of fewer than 2 finite points)
        self.thin_at = 0
        self.multi_renderer: Any = None
        self.fill: list[int] = []
        self.relative_rows = CustomJSTransform(
            args={"start": session.created * 1000.0},
            v_func="return xs.map((a) => a.map((x) => (x - start) / 1000));")

    @property
    def keys(self) -> set[str]:
        return {k for line in self.lines for k in line.keys}

    @property
    def overview(self) -> list[dict[str, np.ndarray]]:
        if self._added:
            chunks = [self._overview, *self._added]
            self._overview = [{c: np.concatenate([ch[k][c] for ch in chunks]) for c in chunks[0][k]}
                              for k in range(len(self._overview))]
            self._added = []
        return self._overview

    @overview.setter
    def overview(self, lines: list[dict[str, np.ndarray]]) -> None:
        self._overview, self._added = lines, []
        self.held = max((len(c["i"]) for c in lines), default=0)

    def add(self, new: list[dict[str, np.ndarray]]) -> None:
        self._added.append(new)
        self.held += max((len(c["i"]) for c in new), default=0)

    @property
    def spec(self) -> tuple:
        """What the group's lines are (the same for every tab showing them)."""
        return tuple((line.keys, line.combine, line.log) for line in self.lines)

    def read(self, provider: Any, log_axis: bool, **kw: Any) -> list[dict[str, np.ndarray]]:
        """The group's lines' columns from one read (a spread: each worker's, aggregated)."""
        if not self.workers:
            got = provider.read(self.session.id, self.worker, self.keys, **kw)
            return [line_columns(line, got, log_axis) for line in self.lines]
        per = [provider.read(self.session.id, w, self.keys, **kw) for w in self.workers]
        cols: list[list[dict[str, Any] | None]] = [
            [line_columns(line, got, log_axis) if all(k in got for k in line.keys) else None
             for line in self.lines] for got in per]
        # (rows up to the iteration every worker still reporting has reached: a later
        # tick adds the rest, with every worker's point; a worker that stopped a minute
        # before the others does not hold them back)
        info = provider.session(self.session.id)
        seen = {w.worker: w.last_update or 0.0 for w in (info.workers if info else [])}
        newest = max(seen.values(), default=0.0)
        lasts = [max((int(c["i"][-1]) for c in mine if c is not None and len(c["i"])), default=None)
                 for mine in cols]
        going = [x for w, x in zip(self.workers, lasts)
                 if x is not None and seen.get(w, newest) >= newest - STOPPED_S]
        upto = min(going) if going else None
        return [spread_columns([c for c in (mine[k] for mine in cols) if c is not None], upto)
                for k in range(len(self.lines))]

    def x(self, k: int | None, mode: str) -> Any:
        i, t = ("i", "t") if k is None else (f"i{k}", f"t{k}")
        if mode == "iteration":
            return i
        return t if mode == "wall" else transform(t, self.relative)

    def xs(self, mode: str) -> Any:
        """The x column of the MultiLine of a many-line group."""
        if mode == "iteration":
            return "xs"
        return "ts" if mode == "wall" else transform("ts", self.relative_rows)


class Chart:
    """A live line chart (see the module docstring). Build it, :meth:`add` its lines,
    then :meth:`load`; :meth:`poll` streams what is new."""

    def __init__(self, provider: Any, t: Any, title: str, *, x_range: Any = None,
                 y_label: str = "", height: int = 250, log_axis: bool = False,
                 mode: str = "iteration", name: str | None = None) -> None:
        self.provider, self.t, self.mode = provider, t, mode
        self.log_axis = log_axis
        self.groups: list[Group] = []
        self.y_range = DataRange1d(renderers=[])
        self.fig = figure(title=title, height=height, sizing_mode="stretch_width", tools=TOOLS,
                          y_axis_type="log" if log_axis else "linear", y_axis_label=y_label,
                          x_range=x_range if x_range is not None else DataRange1d(),
                          y_range=self.y_range, output_backend="canvas", name=name)
        self.fig.toolbar.logo = None
        self.fig.extra_y_ranges = {"floor": Range1d(start=0, end=1)}
        self.fig.extra_y_scales = {"floor": LinearScale()}  # (on a log axis too)
        self.legend = Legend(click_policy="hide", label_text_font_size="8pt", spacing=0,
                             padding=4, items=[])
        self.fig.add_layout(self.legend, "right")
        self.hover = HoverTool(renderers=[], line_policy="nearest", mode="vline")
        self.fig.add_tools(self.hover)
        self.mark_hover = HoverTool(renderers=[], tooltips=[("", "@line"), ("", "@kind")])
        self.fig.add_tools(self.mark_hover)
        self.rows_hover = HoverTool(renderers=[], line_policy="nearest")
        self.fig.add_tools(self.rows_hover)
        self.smoothing: CustomJSTransform | None = None
        self._span: float | None = None
        self._lo, self._hi = np.inf, -np.inf
        self.set_mode(mode)

    # ------------------------------------------------------------ building
    def add(self, session: SessionInfo, worker: str, label: str, keys: Sequence[str], *,
            combine: Callable[..., np.ndarray] | None = None, **style: Any) -> Line:
        """A line of ``session``'s ``worker``: the series ``keys`` (combined). Worker
        :data:`ALL`: the spread of the session's workers (its only worker when it has one)."""
        line = Line(label, tuple(keys), combine, **style)
        workers: tuple[str, ...] = ()
        if worker == ALL:
            workers = tuple(self.provider.workers(session.id))
            if len(workers) < 2:
                worker, workers = (workers[0] if workers else ""), ()
        own = any(k.startswith("metric/") for k in line.keys)  # (on its own clock)
        group = None if own else next(
            (g for g in self.groups if g.session.id == session.id and g.worker == worker
             and not any(k.startswith("metric/") for k in g.keys)), None)
        if group is None:
            group = Group(self, session, worker, workers)
            self.groups.append(group)
        line.col = len(group.lines)
        group.lines.append(line)
        return line

    @property
    def lines(self) -> list[Line]:
        return [line for g in self.groups for line in g.lines]

    def budget(self) -> int:
        lo, hi = LINE_POINTS
        return int(min(max(CHART_POINTS // max(len(self.lines), 1), lo), hi))

    def load(self) -> None:
        """Read every line (downsampled) and draw it."""
        for g in self.groups:
            if g.workers:
                key = ("spread", g.session.id, g.workers, g.spec, self.budget(), self.log_axis)
                g.overview = self.provider.memo(key, lambda g=g: g.read(
                    self.provider, self.log_axis, max_points=self.budget()))
                g.ready = _ready(g.overview)
            else:
                got = self.provider.read(g.session.id, g.worker, g.keys, max_points=self.budget())
                g.cursors = {k: s.cursor for k, s in got.items()}
                g.overview = [line_columns(line, got, self.log_axis) for line in g.lines]
            g.multi = len(g.lines) > LEGEND_MAX
            # (a live line is thinned once it holds 4-5x what it was read with; each tab
            # at its own point, so that twenty tabs do not all send their charts anew at once)
            g.thin_at = int(self.budget() * (4 + random.random()))
            self._draw_group(g)
        self._legend()
        self._fit_span()

    def _draw_group(self, g: Group, lines: list[dict[str, np.ndarray]] | None = None) -> None:
        """Put ``lines`` (the group's overview) into its sources."""
        lines = g.overview if lines is None else lines
        if g.multi:
            # (room for ~100 more points: a page's first load sends what it shows, not
            # NaN; a row that fills up is sent again with as much room as it holds)
            held = max((len(c["i"]) for c in lines), default=0)
            g.source.data, g.fill = _rows_of(g.lines, lines, held + max(100, held))
            if g.workers:
                g.band.data = _bands(g.lines, lines)
        else:
            g.source.data = _pad(lines)
        g.marks.data, g.floor.data = _marks(g.lines, lines)
        g.sparse = _sparse(lines)
        if g.lines and not g.lines[0].renderers:
            self._renderers(g)

    def _renderers(self, g: Group) -> None:
        drawn: list[Any] = []
        view = CDSView()  # (one for the group's lines: a view a line would be ~450 models more)
        if g.multi:
            rows = self.fig.add_glyph(g.source, MultiLine(
                xs=g.xs(self.mode), ys="ys", line_color="color", line_dash="dash",
                line_width=1.4), view=view, **BARE)
            g.multi_renderer = rows
            for line in g.lines:
                line.renderers.append(rows)
            self.rows_hover.renderers = [*self.rows_hover.renderers, rows]
            drawn.append(rows)
        if g.workers and g.multi:  # (a spread's bands: one Patches, a polygon a line)
            g.band_renderer = self.fig.add_glyph(g.band, Patches(
                xs=g.xs(self.mode), ys="ys", fill_color="color", fill_alpha=BAND_ALPHA,
                line_alpha=0), **BARE)
            drawn.append(g.band_renderer)
        for line in [] if g.multi else g.lines:
            k = line.col
            if g.workers:  # (the band under the median line, hidden with it)
                band = self.fig.add_glyph(g.source, VArea(
                    x=g.x(k, self.mode), y1=f"lo{k}", y2=f"hi{k}", fill_color=line.color,
                    fill_alpha=BAND_ALPHA), view=view, **BARE)
                line.renderers.append(band)
                self.y_range.renderers = [*self.y_range.renderers, band]  # type: ignore[misc]
            # (made bare: fig.line() would add four more glyphs a line, ~5 ms each)
            r = self.fig.add_glyph(g.source, LineGlyph(
                x=g.x(k, self.mode), y=f"y{k}", line_color=line.color, line_width=line.width,
                line_dash=line.dash, line_alpha=line.alpha * (0.35 if line.smooth else 1.0)),
                name=line.label, view=view, **BARE)
            line.renderers.append(r)
            drawn.append(r)
            if line.smooth:
                if self.smoothing is None:
                    self.smoothing = CustomJSTransform(args={"weight": 0.6}, v_func=EMA_JS)
                s = self.fig.add_glyph(g.source, LineGlyph(
                    x=g.x(k, self.mode), y=transform(f"y{k}", self.smoothing),
                    line_color=line.color, line_width=2.2, line_dash=line.dash), name=line.label,
                    view=view, **BARE)
                line.renderers.append(s)
        self.hover.renderers = [*self.hover.renderers,
                                *(r for r in drawn if not g.multi and r is not g.band_renderer)]
        self.y_range.renderers = [*self.y_range.renderers, *drawn]  # type: ignore[misc]
        bad = self.fig.add_glyph(g.marks, Scatter(x=g.x(None, self.mode), y="y", marker="marker",
                                                  line_color="color", fill_color="color", size=8,
                                                  line_width=2))
        low = self.fig.add_glyph(g.floor, Scatter(x=g.x(None, self.mode), y="y", marker="marker",
                                                  fill_color="color", line_color="color",
                                                  size=8), y_range_name="floor")
        self.mark_hover.renderers = [*self.mark_hover.renderers, bad, low]
        g.extra += [bad, low]

    def _legend(self) -> None:
        items: dict[str, list[Any]] = {}
        for line in self.lines:
            items.setdefault((line.legend or line.label)[:40], []).extend(line.renderers)
        if len(items) > LEGEND_MAX:  # (the hover names each line instead)
            self.legend.visible = False
            self.hover.mode = "mouse"
            return
        self.legend.items = [LegendItem(label=k, renderers=v) for k, v in items.items()]

    # ------------------------------------------------------------ live
    def poll(self) -> int:
        """Stream the points written since the last read; returns how many came."""
        n = 0
        for g in self.groups:
            # (every tab at these cursors gets the same points: computed once a generation)
            if g.workers:
                spread = ("spread points", g.session.id, g.workers, g.spec, g.ready, self.log_axis)
                ready, new, rows, marks, floor = self.provider.memo(
                    spread, lambda g=g: self._new_spread(g))
                g.ready = ready
            else:
                key = ("points", g.session.id, g.worker, g.spec,
                       tuple(sorted(g.cursors.items())), self.log_axis)
                cursors, new, rows, marks, floor = self.provider.memo(key, lambda g=g: self._new(g))
                g.cursors.update(cursors)
            if not rows["n"]:
                continue
            g.add(new)
            if g.window is None and g.held > g.thin_at:
                # (a long live run: thin what is held, keeping each bucket's extremes)
                g.overview = [_thin(c, self.budget()) for c in g.overview]
                self._draw_group(g)
                n += rows["n"]
                continue
            if g.multi and g.workers:  # (a spread's rows and bands: drawn again)
                self._draw_group(g)
            elif g.multi:
                self._patch(g, new)
            else:
                # (as lists: each array would travel as a websocket frame of its own)
                g.source.stream({c: np.asarray(v).tolist() for c, v in rows.items() if c != "n"})
            self._span_of(new)
            if g.sparse:  # (a line of one point so far: its dot may go, others come)
                g.marks.data, g.floor.data = _marks(g.lines, g.overview)
                g.sparse = _sparse(g.overview)
                n += rows["n"]
                continue
            if len(marks["i"]):
                g.marks.stream(marks)
            if len(floor["i"]):
                g.floor.stream(floor)
            n += rows["n"]
        return n

    def _new(self, g: Group) -> tuple:
        """A group's points after its cursors: (new cursors, each line's columns, the rows
        to stream, NaN crosses, floor markers)."""
        got = self.provider.read(g.session.id, g.worker, g.keys, since=g.cursors)
        cursors = {k: s.cursor for k, s in got.items()}
        if not any(len(s) for s in got.values()):
            return cursors, [], {"n": 0}, {}, {}
        new = [line_columns(line, got, self.log_axis) for line in g.lines]
        return (cursors, new, _rows(new), *_marks(g.lines, new, whole=False))

    def _new_spread(self, g: Group) -> tuple:
        """A spread's rows after the last one aggregated, up to the iteration every
        worker has reached: (that iteration, each line's columns, rows, crosses, floor)."""
        # (each worker's points from the last aggregated one on, all of them before any:
        # a range read, kept for the generation)
        cols = g.read(self.provider, self.log_axis, start=0 if g.ready is None else g.ready)
        ready = _ready(cols)
        if ready is None or (g.ready is not None and ready <= g.ready):
            return g.ready, [], {"n": 0}, {}, {}
        lo = -1 if g.ready is None else g.ready
        new = [{c: v[(x["i"] > lo) & (x["i"] <= ready)] for c, v in x.items()} for x in cols]
        return (ready, new, _rows(new), *_marks(g.lines, new, whole=False))

    def _patch(self, g: Group, new: list[dict[str, np.ndarray]]) -> None:
        """Write new points into the rows' spare room (one message); rows without room
        are drawn again with more."""
        if any(f + len(c["i"]) > len(g.source.data["xs"][k])
               for k, (f, c) in enumerate(zip(g.fill, new))):
            self._draw_group(g, [_merge(o, {}, 0, -1) for o in g.overview])
            return
        patches: dict[str, list] = {"xs": [], "ts": [], "ys": []}
        for k, c in enumerate(new):
            m = len(c["i"])
            if not m:
                continue
            at = slice(g.fill[k], g.fill[k] + m)
            # (as lists: each array would travel as a websocket frame of its own)
            patches["xs"].append(((k, at), c["i"].astype(float).tolist()))
            patches["ts"].append(((k, at), c["t"].tolist()))
            patches["ys"].append(((k, at), c["y"].tolist()))
            g.fill[k] += m
        g.source.patch(patches)

    def zoom(self, x0: float, x1: float) -> None:
        """Show the store's points inside [x0, x1] (in the chart's x units), the
        overview outside; the whole overview when the window holds all of it."""
        for g in self.groups:
            if not g.overview or not len(g.overview[0]["i"]):
                continue
            its, xs = _x_of(g, self.mode)
            lo, hi = np.interp([x0, x1], xs, its) if len(xs) > 1 else (its[0], its[-1])
            start, stop = int(np.floor(lo)), int(np.ceil(hi))
            if start <= its[0] and stop >= its[-1]:
                if g.window is not None:
                    g.window = None
                    self._draw_group(g)
                continue
            inside = g.read(self.provider, self.log_axis, max_points=self.budget(),
                            start=start, stop=stop)
            g.window = (start, stop)
            self._draw_group(g, [_merge(o, w, start, stop) for o, w in zip(g.overview, inside)])

    def covers(self, x0: float, x1: float) -> bool:
        """Whether [x0, x1] holds every line whole (a reset, not a zoom)."""
        for g in self.groups:
            if g.overview and len(g.overview[0]["i"]):
                _, xs = _x_of(g, self.mode)
                if xs.min() < x0 or xs.max() > x1:
                    return False
        return True

    def set_mode(self, mode: str) -> None:
        """Draw every line against ``mode`` (one of X_MODES)."""
        self.mode = mode
        for g in self.groups:
            if g.multi_renderer is not None:
                g.multi_renderer.glyph.xs = g.xs(mode)
            if g.band_renderer is not None:
                g.band_renderer.glyph.xs = g.xs(mode)
            for line in [] if g.multi else g.lines:
                for r in line.renderers:
                    r.glyph.x = g.x(line.col, mode)
            for r in g.extra:
                r.glyph.x = g.x(None, mode)
        x = {"iteration": "$snap_x{%d}", "relative": "$snap_x{%.1f} s",
             "wall": "$snap_x{%F %T}"}[mode]
        formatters: dict[str, Any] = {"$snap_x": "datetime" if mode == "wall" else "printf",
                                      "$snap_y": "printf"}
        for hover, name in ((self.hover, "$name"), (self.rows_hover, "@name")):
            hover.tooltips = [("", name), (self.t(_X_LABELS[mode]), x),
                              (self.t("value"), "$snap_y{%.4g}")]
            hover.formatters = formatters
        set_x_axis([self.fig], mode, self.t)

    def _fit_span(self) -> None:
        """A constant line gets a range around its value, not BokehJS's +/- 1."""
        self._lo, self._hi = np.inf, -np.inf
        self._span_of([c for g in self.groups for c in g.overview])

    def _span_of(self, cols: list[dict[str, np.ndarray]]) -> None:
        ys = [c["y"][np.isfinite(c["y"])] for c in cols if len(c["y"])]
        ys = [y for y in ys if y.size]
        if not ys or self.log_axis:
            return
        self._lo = min(self._lo, *(float(y.min()) for y in ys))
        self._hi = max(self._hi, *(float(y.max()) for y in ys))
        lo, hi = self._lo, self._hi
        span = None if hi - lo > 1e-12 * max(abs(hi), 1e-300) else (abs(hi) * 0.5 or 1.0)
        if span is not None and span != self._span:
            self._span = self.y_range.default_span = span

    def panel(self) -> Any:
        """The chart with a button that downloads its lines as CSV."""
        return column(self.fig, csv_button(self, self.t), sizing_mode="stretch_width")


_X_LABELS = {"iteration": "Iteration", "relative": "Relative time (s)", "wall": "Wall time"}


def _pad(lines: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The lines' columns in one table, each padded with NaN at the front to the longest
    (a NaN before a line's first point draws nothing; rows streamed later line up)."""
    n = max((len(c["i"]) for c in lines), default=0)
    data: dict[str, np.ndarray] = {}
    for k, c in enumerate(lines):
        pad = n - len(c["i"])
        data[f"i{k}"] = np.concatenate([np.full(pad, np.nan), c["i"].astype(float)])
        data[f"t{k}"] = np.concatenate([np.full(pad, np.nan), c["t"]])
        data[f"y{k}"] = np.concatenate([np.full(pad, np.nan), c["y"]])
        for b in ("lo", "hi"):  # (a spread's band)
            if b in c:
                data[f"{b}{k}"] = np.concatenate([np.full(pad, np.nan), c[b]])
    return data


def _rows_of(lines: list[Line], cols: list[dict[str, np.ndarray]], size: int) -> tuple[dict, list[int]]:
    """A many-line group's MultiLine columns: a row a line, its arrays ``size`` long (NaN
    after its points: nothing drawn, room for new ones); and each row's fill."""
    fill = [len(c["i"]) for c in cols]

    def padded(a: np.ndarray) -> np.ndarray:
        out = np.full(size, np.nan)
        out[:len(a)] = a
        return out
    return ({"xs": [padded(c["i"].astype(float)) for c in cols], "ts": [padded(c["t"]) for c in cols],
             "ys": [padded(c["y"]) for c in cols], "name": [line.label for line in lines],
             "color": [line.color for line in lines], "dash": [line.dash for line in lines]}, fill)


def _rows(new: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """New points of a group's lines as rows to stream: one row per report (matched by
    iteration and wall time), NaN for a line without a point in it."""
    keys = sorted({(float(t), int(i)) for c in new for i, t in zip(c["i"], c["t"])})
    out: dict[str, Any] = {"n": len(keys)}
    where = {k: j for j, k in enumerate(keys)}
    for k, c in enumerate(new):
        i, t, y, lo, hi = (np.full(len(keys), np.nan) for _ in range(5))
        band = "lo" in c
        for j0, (it, wt, v) in enumerate(zip(c["i"], c["t"], c["y"])):
            j = where[(float(wt), int(it))]
            i[j], t[j], y[j] = it, wt, v
            if band:
                lo[j], hi[j] = c["lo"][j0], c["hi"][j0]
        out[f"i{k}"], out[f"t{k}"], out[f"y{k}"] = i, t, y
        if band:
            out[f"lo{k}"], out[f"hi{k}"] = lo, hi
    return out


def _at_rows(its: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """A worker's ``values`` (at ``its``) at iterations ``at``: its own value where it has a
    point there, else its line between finite neighbours, NaN outside it."""
    out = np.full(len(at), np.nan)
    if not len(its):
        return out
    finite = np.isfinite(values)
    if finite.any():
        out = np.interp(at, its[finite], values[finite], left=np.nan, right=np.nan)
    pos = np.clip(np.searchsorted(its, at), 0, len(its) - 1)
    exact = its[pos] == at
    return np.where(exact, values[pos], out)


def spread_columns(per: list[dict[str, np.ndarray]], upto: int | None = None) -> dict[str, np.ndarray]:
    """One line's columns from several workers' (:func:`line_columns` each) as their
    spread: on the union of their iterations, the median of the workers' values (``y``),
    their min (``lo``) and max (``hi``); a stored NaN/Inf of any worker is a cross (its
    kind in ``raw``), a log's 0 where no worker has a drawable value a floor marker.
    ``upto``: no row after this iteration."""
    if upto is not None:
        per = [{k: v[c["i"] <= upto] for k, v in c.items()} for c in per]
    per = [c for c in per if len(c["i"])]
    keys = ("i", "t", "y", "bad", "zero", "height", "raw", "lo", "hi")
    if not per:
        return {k: np.zeros(0, dtype=np.int64 if k == "i" else (bool if k in ("bad", "zero")
                                                                    else float)) for k in keys}
    its = np.unique(np.concatenate([np.asarray(c["i"], dtype=np.int64) for c in per]))
    at = its.astype(float)
    ys = np.stack([_at_rows(c["i"].astype(float), c["y"], at) for c in per])
    ts = np.stack([_at_rows(c["i"].astype(float), c["t"], at) for c in per])
    exact = [np.isin(its, c["i"]) for c in per]

    def flag(name: str) -> np.ndarray:
        out = np.zeros(len(its), bool)
        for c, e in zip(per, exact):
            pos = np.searchsorted(c["i"], its[e])
            out[e] |= c[name][pos]
        return out
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (a row no worker has: NaN)
        y, lo, hi = np.nanmedian(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
        t = np.nanmean(ts, 0)
    bad, zero = flag("bad"), flag("zero") & ~np.isfinite(y)
    raw = y.copy()
    for c, e in zip(per, exact):  # (a cross says what was stored)
        pos = np.searchsorted(c["i"], its[e])
        took = np.zeros(len(its), bool)
        took[e] = c["bad"][pos]
        raw[took] = _at_rows(c["i"].astype(float), c["raw"], at)[took]
    finite = np.isfinite(y)
    idx = np.where(finite, np.arange(len(y)), -1)
    held = np.maximum.accumulate(idx) if idx.size else idx
    first_ok = int(np.argmax(finite)) if finite.any() else -1
    height = (y[np.where(held >= 0, held, first_ok)] if first_ok >= 0
              else np.zeros(len(y)))
    return {"i": its, "t": t, "y": y, "bad": bad, "zero": zero, "height": height, "raw": raw,
            "lo": np.where(np.isfinite(lo), lo, np.nan), "hi": np.where(np.isfinite(hi), hi, np.nan)}


def _ready(cols: list[dict[str, np.ndarray]]) -> int | None:
    """The last iteration of a spread's rows (None before any)."""
    last = [int(c["i"][-1]) for c in cols if len(c["i"])]
    return max(last) if last else None


def _bands(lines: list[Line], cols: list[dict[str, np.ndarray]]) -> dict[str, list]:
    """A many-line spread's bands as polygons (min forward, max back), a row a line."""
    out: dict[str, list] = {"xs": [], "ts": [], "ys": [], "color": []}
    for line, c in zip(lines, cols):
        ok = np.isfinite(c["lo"]) & np.isfinite(c["hi"]) if "lo" in c else np.zeros(0, bool)
        i, t = c["i"][ok].astype(float), c["t"][ok]
        out["xs"].append(np.concatenate([i, i[::-1]]))
        out["ts"].append(np.concatenate([t, t[::-1]]))
        out["ys"].append(np.concatenate([c["lo"][ok], c["hi"][ok][::-1]]) if ok.size else i)
        out["color"].append(line.color)
    return out


MARKS = ("i", "t", "y", "line", "kind", "marker", "color")


def _marks(lines: list[Line], cols: list[dict[str, np.ndarray]],
           whole: bool = True) -> tuple[dict, dict]:
    """The marks of these lines' points: a red cross where a stored NaN/Inf breaks a line,
    a dot for a point with no finite neighbour (a line of one point draws nothing: only
    known for ``whole`` lines), and the floor markers."""
    bad: dict[str, list] = {c: [] for c in MARKS}
    low: dict[str, list] = {c: [] for c in MARKS}
    for line, c in zip(lines, cols):
        for j in np.flatnonzero(c["bad"]):
            raw = c["raw"][j]
            kind = "NaN" if np.isnan(raw) else ("+Inf" if raw > 0 else "-Inf")
            bad["i"].append(int(c["i"][j]))
            bad["t"].append(float(c["t"][j]))
            bad["y"].append(float(c["height"][j]))
            bad["line"].append(line.label)
            bad["kind"].append(f"{kind} stored")
            bad["marker"].append("x")
            bad["color"].append(BAD_COLOR)
        for j in np.flatnonzero(_alone(c["y"])) if whole else ():
            bad["i"].append(int(c["i"][j]))
            bad["t"].append(float(c["t"][j]))
            bad["y"].append(float(c["y"][j]))
            bad["line"].append(line.label)
            bad["kind"].append(f"{c['y'][j]:.6g}")
            bad["marker"].append("circle")
            bad["color"].append(line.color)
        for j in np.flatnonzero(c["zero"]):
            low["i"].append(int(c["i"][j]))
            low["t"].append(float(c["t"][j]))
            low["y"].append(FLOOR_Y)
            low["line"].append(line.label)
            low["kind"].append("0 (log10: -inf)" if line.log else f"{c['raw'][j]:.3g} (<= 0 on a log axis)")
            low["marker"].append("triangle")
            low["color"].append("#555555")
    return bad, low


def _sparse(lines: list[dict[str, np.ndarray]]) -> bool:
    """A line of one finite point (a dot that the next point turns into a line), or, early
    in a run, of none yet."""
    finite = [int(np.isfinite(c["y"]).sum()) for c in lines]
    early = max((len(c["y"]) for c in lines), default=0) < 50
    return any(f == 1 or (f == 0 and early) for f in finite)


def _alone(y: np.ndarray) -> np.ndarray:
    """Finite points whose neighbours are not (a line draws nothing there)."""
    ok = np.isfinite(y)
    before = np.r_[False, ok[:-1]]
    after = np.r_[ok[1:], False]
    return ok & ~before & ~after


def _thin(c: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    if len(c["i"]) <= n:
        return c
    idx = downsample_index(c["i"], c["raw"], n)
    return {k: v[idx] for k, v in c.items()}


def _merge(whole: dict[str, np.ndarray], inside: dict[str, np.ndarray], start: int,
           stop: int) -> dict[str, np.ndarray]:
    """``whole`` outside [start, stop], ``inside`` within it (an empty window: ``whole``)."""
    if start > stop:
        return whole
    keep_lo, keep_hi = whole["i"] < start, whole["i"] > stop
    return {c: np.concatenate([whole[c][keep_lo], inside[c], whole[c][keep_hi]]) for c in whole}


def _x_of(g: Group, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, x in ``mode``) of a group's first line, for mapping a window."""
    c = g.overview[0]
    its = c["i"].astype(float)
    if mode == "iteration":
        return its, its
    xs = c["t"] if mode == "wall" else (c["t"] - g.session.created * 1000.0) / 1000.0
    order = np.argsort(xs, kind="stable")
    return its[order], xs[order]


def set_x_axis(figures: list[Any], mode: str, t: Any) -> None:
    """Label and format the x axis of ``figures`` for ``mode``: iterations as 20k, not
    2.000e+4; wall times as clock times."""
    for fig in figures:
        for ax in fig.xaxis:
            ax.axis_label = t(_X_LABELS[mode])
            ax.ticker = DatetimeTicker() if mode == "wall" else BasicTicker()
            if mode == "wall":
                ax.formatter = DatetimeTickFormatter(
                    milliseconds="%H:%M:%S.%3N", seconds="%H:%M:%S", minsec="%H:%M:%S",
                    minutes="%H:%M", hourmin="%H:%M", hours="%H:%M", days="%m-%d %H:%M")
            elif mode == "iteration":
                ax.formatter = NumeralTickFormatter(format="0.[0]a")
            else:
                ax.formatter = BasicTickFormatter(use_scientific=False)


CSV_JS = """
const rows = ["line,iteration,wall_time,value"];
const q = (s) => /[",\\n\\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
const iso = (ms) => Number.isFinite(ms) ? new Date(ms).toISOString() : "";
groups.forEach((g, n) => {
  const d = g.data;
  labels[n].forEach((label, k) => {
    const I = d["i" + k] || [], T = d["t" + k] || [], Y = d["y" + k] || [];
    for (let j = 0; j < I.length; j++)
      if (Number.isFinite(I[j]) && Number.isFinite(Y[j]))
        rows.push([q(label), I[j], iso(T[j]), Y[j]].join(","));
  });
  for (const m of [marks[n].data, floors[n].data])
    for (let j = 0; j < m.i.length; j++)
      rows.push([q(String(m.line[j])), m.i[j], iso(m.t[j]), q(String(m.kind[j]))].join(","));
});
const blob = new Blob([rows.join("\\n") + "\\n"], {type: "text/csv"});
const a = document.createElement("a");
a.href = URL.createObjectURL(blob); a.download = filename;
document.body.appendChild(a); a.click(); a.remove();
"""


def csv_button(chart: Chart, t: Any) -> Button:
    """A button that downloads every line of ``chart`` as CSV: line, iteration, wall time
    (ISO 8601), value as drawn (a NaN, an Inf or a 0 on a log chart by name)."""
    title = getattr(chart.fig.title, "text", "") or "chart"
    name = re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_").lower()[:40] or "chart"
    button = Button(label=t("Download CSV"), width=130, height=26, button_type="default",
                    styles={"font-size": "11px"})
    button.js_on_event("button_click", CustomJS(
        args={"groups": [g.source for g in chart.groups],
              "labels": [[line.label for line in g.lines] for g in chart.groups],
              "marks": [g.marks for g in chart.groups], "floors": [g.floor for g in chart.groups],
              "filename": f"{name}.csv"},
        code=CSV_JS))
    return button


__all__ = ["ALL", "CHART_POINTS", "Chart", "Line", "X_MODES", "csv_button", "line_columns", "palette",
           "session_color", "set_x_axis", "spread_columns"]
