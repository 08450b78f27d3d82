"""The pieces every page uses: a line chart whose lines follow the store live, the x-axis
switch (iteration, relative time, wall time), CSV downloads and escaped text."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from bokeh.events import RangesUpdate
from bokeh.layouts import column
from bokeh.models import (  # type: ignore[attr-defined]
    BasicTickFormatter,
    Button,
    ColumnDataSource,
    CustomJS,
    DatetimeTickFormatter,
    Div,
    HoverTool,
    InlineStyleSheet,
    Legend,
)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from embedviz.server.data import MAX_POINTS, Tail
from embedviz.server.messages import Messages

from embedviz.store import Store
from embedviz.store.series import downsample_index

PALETTE = list(Category10_10)
X_FIELDS = ("iteration", "relative", "wall")
TOOLS = "pan,box_zoom,wheel_zoom,reset,save"


#: Bokeh draws each Div in a shadow root: page CSS does not reach it, so the Divs carry this
CSS = """
  .ev-head { font-size: 15px; padding: 4px 0 8px; border-bottom: 1px solid #ddd; }
  .ev-note { color: #555; font-size: 14px; padding: 16px; background: #f6f6f6; margin: 8px 0; }
  .ev-info { border-collapse: collapse; font-size: 12px; }
  .ev-info td { padding: 1px 6px; border-bottom: 1px solid #eee; }
  .ev-sec { color: #888; }
"""


def div(text: str, **kw: Any) -> Div:
    """A Div of trusted HTML (escape what comes from the store with :func:`esc`)."""
    return Div(text=text, stylesheets=[InlineStyleSheet(css=CSS)], **kw)  # (one per document)


def esc(text: Any) -> str:
    """Text from the store (words, session names, finding messages) made safe for HTML."""
    return html.escape(str(text), quote=True)


def note(text: str) -> Div:
    """A plain sentence where a chart would be (no data, no sessions)."""
    return div(f'<p class="ev-note">{esc(text)}</p>', sizing_mode="stretch_width")


class Lines:
    """The live lines of one page: each a :class:`Tail` feeding a ColumnDataSource.

    ``poll`` streams what each tail gives since its last read: a point written to the store
    appears at the next periodic callback. ``after`` hooks recompute derived columns
    (smoothing) of the sources they name. A long line is read downsampled; zooming into it
    re-reads the visible range at full resolution (:meth:`zoom`)."""

    def __init__(self, store: Store, t: Messages) -> None:
        self.store, self.t = store, t
        self.items: list[tuple[Tail, ColumnDataSource]] = []
        self._figure_of: dict[str, Any] = {}  # source id -> its chart
        self._lines_of: dict[str, dict[str, ColumnDataSource]] = {}  # chart id -> its lines
        self.after: dict[str, Callable[[ColumnDataSource], None]] = {}  # source id -> hook
        self.figures: list[Any] = []
        self._hover: dict[str, HoverTool] = {}  # (one per chart, over all its lines)

    def source(self, tail: Tail) -> ColumnDataSource:
        src = ColumnDataSource(tail.read(self.store, max_points=MAX_POINTS))
        self.items.append((tail, src))
        return src

    def poll(self) -> int:
        """Stream the new points of every line; returns how many came."""
        n = 0
        for tail, src in self.items:
            new = tail.read(self.store)
            k = len(new["iteration"])
            if not k:
                continue
            self._put(src, new, stream=True)
            n += k
        return n

    def _put(self, src: ColumnDataSource, data: dict, stream: bool) -> None:
        """Stream ``data`` into ``src`` or replace its data, then run its ``after`` hook
        (which fills the derived columns, first as copies of ``y``)."""
        hook = self.after.get(src.id)
        if hook is not None:
            data = dict(data, ys=data["y"])
        if stream:
            src.stream(data)
        else:
            src.data = data
        if hook is not None:
            hook(src)

    def zoom(self, fig: Any, field: str, x0: float, x1: float) -> None:
        """Show the lines of ``fig`` between ``x0`` and ``x1`` (of the x column ``field``)
        at full resolution, downsampled again only if that range holds more than
        MAX_POINTS points. Lines read whole at first are left alone."""
        for tail, src in self.items:
            if self._figure_of.get(src.id) is not fig or not tail.downsampled:
                continue
            cols = tail.whole(self.store)
            x = np.asarray(cols[field], dtype=float)
            idx = np.flatnonzero((x >= x0) & (x <= x1))
            if idx.size:  # (one point beyond each edge: the line runs to the border)
                idx = np.arange(max(idx[0] - 1, 0), min(idx[-1] + 2, len(x)))
            if idx.size > MAX_POINTS:
                idx = idx[downsample_index(cols["iteration"][idx], cols["raw"][idx], MAX_POINTS)]
            self._put(src, {k: np.asarray(v)[idx] for k, v in cols.items()}, stream=False)

    def drop(self, fig: Any) -> None:
        """Forget the lines of a chart taken off the page."""
        self.items = [(t_, src) for t_, src in self.items if self._figure_of.get(src.id) is not fig]
        if fig in self.figures:
            self.figures.remove(fig)

    def panel(self, fig: Any) -> Any:
        """The chart with a button that downloads its lines as CSV."""
        title = getattr(fig.title, "text", "") or "chart"
        name = re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_").lower()[:40] or "chart"
        button = csv_button(self._lines_of.get(fig.id, {}), f"{name}.csv", self.t)
        return column(fig, button, sizing_mode="stretch_width")

    def chart(self, title: str, t: Messages, *, y_label: str = "", height: int = 250,
              log_y: bool = False) -> Any:
        fig = figure(title=title, height=height, sizing_mode="stretch_width", tools=TOOLS,
                     y_axis_type="log" if log_y else "linear", x_axis_label=t("Iteration"),
                     y_axis_label=y_label, output_backend="webgl")
        fig.toolbar.logo = None
        fig.add_layout(Legend(click_policy="hide", label_text_font_size="8pt",
                              spacing=0, padding=4), "right")
        # "vline": every line's value at the pointer's x, as TensorBoard lists its runs
        hover = HoverTool(renderers=[], mode="vline",
                          tooltips=[("", "$name"), ("x", "@iteration"), ("y", "@raw")])
        fig.add_tools(hover)
        self._hover[fig.id] = hover
        self.figures.append(fig)

        def zoomed(event: Any) -> None:  # (a RangesUpdate)
            if event.x0 is not None and event.x1 is not None:
                xs = [getattr(getattr(r, "glyph", None), "x", None) for r in fig.renderers]
                field = next((x for x in xs if isinstance(x, str)), "iteration")
                self.zoom(fig, field, float(event.x0), float(event.x1))
        fig.on_event(RangesUpdate, zoomed)
        return fig

    def line(self, fig: Any, tail: Tail, label: str, color: str, *, y: str = "y",
             width: float = 1.6, dash: str = "solid") -> tuple[ColumnDataSource, Any]:
        """A line of ``tail`` on ``fig``, broken with a red cross where a value is NaN or
        Inf (never drawn as 0)."""
        src = self.source(tail)
        self._figure_of[src.id] = fig
        self._lines_of.setdefault(fig.id, {})[label] = src
        r = fig.line("iteration", y, source=src, color=color, line_width=width,
                     line_dash=dash, legend_label=label[:40], name=label[:40])
        hover = self._hover.get(fig.id)
        if hover is not None:
            hover.renderers = [*hover.renderers, r]
        fig.scatter("iteration", "mark", source=src, marker="x", color="#d62728", size=10,
                    line_width=2)
        return src, r


def set_x_axis(figures: list[Any], field: str, t: Messages) -> None:
    """Every line of ``figures`` against ``field`` (one of X_FIELDS)."""
    labels = {"iteration": t("Iteration"), "relative": t("Relative time (s)"), "wall": t("Wall time")}
    for fig in figures:
        for r in fig.renderers:
            glyph = r.glyph
            if hasattr(glyph, "x") and isinstance(glyph.x, str) and glyph.x in X_FIELDS:
                glyph.x = field
        for ax in fig.xaxis:
            ax.axis_label = labels[field]
            ax.formatter = (DatetimeTickFormatter(milliseconds="%H:%M:%S.%3N", seconds="%H:%M:%S",
                                                  minsec="%H:%M:%S", minutes="%H:%M",
                                                  hourmin="%H:%M", hours="%H:%M")
                            if field == "wall" else BasicTickFormatter())


def csv_button(sources: dict[str, ColumnDataSource], filename: str, t: Messages,
               fields: tuple[str, ...] = ("iteration", "relative", "wall", "raw")) -> Button:
    """A button that downloads every line of a chart as one CSV (line, x columns, value)."""
    button = Button(label=t("Download CSV"), width=130, height=26, button_type="default",
                    styles={"font-size": "11px"})
    button.js_on_event("button_click", CustomJS(
        args={"sources": list(sources.values()), "names": list(sources), "fields": list(fields),
              "filename": filename},
        code="""
        const rows = [["line", ...fields].join(",")];
        const q = (s) => /[",\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
        sources.forEach((src, k) => {
          const n = src.get_length() || 0;
          for (let i = 0; i < n; i++)
            rows.push([q(String(names[k])), ...fields.map((f) => {
              const v = src.data[f][i]; return (v === null || Number.isNaN(v)) ? "" : String(v);
            })].join(","));
        });
        const blob = new Blob([rows.join("\\n") + "\\n"], {type: "text/csv"});
        const a = document.createElement("a");
        a.href = URL.createObjectURL(blob); a.download = filename;
        document.body.appendChild(a); a.click(); a.remove();
        """))
    return button


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


__all__ = ["Lines", "div", "color", "csv_button", "esc", "note",
           "set_x_axis"]
