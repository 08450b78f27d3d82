"""plot_vocab: the Python form of Deeplearning4j's ``vec.lookupTable().plotVocab(tsne)``.

A WebGL scatter of the projected vocabulary: hover shows the word and its metadata (escaped:
a word holding HTML is shown as text), labels spread over the map's regions (the most
frequent word of each region first) where they do not pile up, points are coloured by a metadata column or by cluster, and a search
box highlights matching words. ``output=`` writes a standalone HTML file that needs no
network (BokehJS is inlined).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from embedviz.errors import ProjectionError
from embedviz.projection import BarnesHutTsne, ProjectionResult, project


def place_labels(coords: np.ndarray, words: list[str], order: np.ndarray, *, max_labels: int,
                 width_px: int, height_px: int, char_px: float = 7.0,
                 line_px: float = 14.0) -> list[int]:
    """Indices (from ``order``, most important first) whose text boxes do not overlap,
    estimated for a plot of ``width_px`` x ``height_px`` showing all of ``coords``."""
    if len(coords) == 0:
        return []
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    px = (coords - lo) / span * np.array([width_px, height_px])
    boxes: list[tuple[float, float, float, float]] = []
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= max_labels:
            break
        x0, y0 = px[i, 0] + 4, px[i, 1] - line_px / 2
        x1, y1 = x0 + char_px * len(words[i]), y0 + line_px
        if all(x1 < a or x0 > c or y1 < b or y0 > d for a, b, c, d in boxes):
            boxes.append((x0, y0, x1, y1))
            chosen.append(int(i))
    return chosen


def label_order(coords: np.ndarray, counts: Any = None, cells: int = 8) -> np.ndarray:
    """Indices in the order words should get a label so that labels cover the map: the most
    frequent word of each cell of a ``cells`` x ``cells`` grid first (busiest cells first),
    then the second of each, and so on. Most-frequent-first alone labels one corner of
    stopwords ("the", "of", "he")."""
    n = len(coords)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    freq = np.asarray(counts, dtype=float) if counts is not None else -np.arange(n, dtype=float)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    cell = np.minimum(((coords - lo) / span * cells).astype(np.int64), cells - 1)
    cell_id = cell[:, 0] * cells + cell[:, 1]
    by_freq = np.argsort(-freq, kind="stable")
    rank_in_cell = np.zeros(n, dtype=np.int64)
    seen: dict[int, int] = {}
    for i in by_freq.tolist():
        c = int(cell_id[i])
        rank_in_cell[i] = seen.get(c, 0)
        seen[c] = rank_in_cell[i] + 1
    busy = np.bincount(cell_id, minlength=cells * cells)
    # by rank within the cell, then the busier cell, then frequency
    return np.lexsort((-freq, -busy[cell_id], rank_in_cell))


def _colors(values: list, name: str) -> tuple[Any, Any]:
    """(color spec for the glyph, colour bar) for a numeric column, (spec, None) for a
    categorical one (a legend explains it)."""
    from bokeh.models.annotations import ColorBar
    from bokeh.palettes import Category10_10, Category20_20, Viridis256
    from bokeh.transform import factor_cmap, linear_cmap, log_cmap

    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                  for v in values)
    if numeric:
        arr = np.asarray(values, dtype=float)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if lo > 0 and hi / lo > 100:
            mapper = log_cmap(name, Viridis256, lo, hi)
        else:
            mapper = linear_cmap(name, Viridis256, lo, hi if hi > lo else lo + 1)
        bar = ColorBar(color_mapper=mapper.transform,  # type: ignore[arg-type]  # (a mapper)
                       title=name, width=10)
        return mapper, bar
    factors = sorted({str(v) for v in values})
    base = Category10_10 if len(factors) <= 10 else Category20_20
    palette = [base[i % len(base)] for i in range(len(factors))]
    return factor_cmap(name, palette, factors), None


def vocab_figure(result: ProjectionResult, *, color_by: str | None = None, n_labels: int = 60,
                 title: str | None = None, width: int = 900, height: int = 700,
                 n_clusters: int = 8) -> tuple[Any, Any]:
    """(figure, layout with the search box) for a projection result."""
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, CustomJS, HoverTool
    from bokeh.models.annotations import LabelSet
    from bokeh.models.widgets import Div, TextInput
    from bokeh.plotting import figure

    vocab, coords = result.vocab, np.asarray(result.coords)
    if coords.shape[1] < 2:
        raise ProjectionError("plot_vocab needs 2-D coordinates: use n_components=2")
    data: dict[str, Any] = {"x": coords[:, 0], "y": coords[:, 1], "word": list(vocab.labels)}
    for col, values in vocab.metadata.items():
        data[col] = [v if isinstance(v, (int, float, str)) else str(v) for v in values]
    if color_by == "cluster":
        from sklearn.cluster import KMeans

        k = max(1, min(n_clusters, len(vocab)))
        data["cluster"] = [str(c) for c in KMeans(k, n_init=4, random_state=0).fit_predict(vocab.vectors)]
    elif color_by is not None and color_by not in data:
        raise ProjectionError(f"color_by={color_by!r} is not a metadata column: use one of "
                              f"{sorted(vocab.metadata) + ['cluster']}")
    source = ColumnDataSource(data)
    q = result.projection.quality
    subtitle = (f"{len(vocab)} words, {result.projection.method}"
                + (f", kNN kept {q['knn_preservation']:.2f}" if "knn_preservation" in q else ""))
    fig = figure(title=title or f"{vocab.name}: {subtitle}", width=width, height=height,
                 output_backend="webgl", match_aspect=True,
                 tools="pan,wheel_zoom,box_zoom,box_select,lasso_select,tap,reset,save",
                 active_scroll="wheel_zoom")
    fig.axis.visible = False
    fig.grid.visible = False
    color: Any = "#1f77b4"
    legend = False
    if color_by is not None:
        color, bar = _colors(data[color_by], color_by)
        if bar is not None:
            fig.add_layout(bar, "right")
        legend = bar is None
    extra: dict[str, Any] = {"legend_field": color_by} if legend else {}
    renderer = fig.scatter("x", "y", source=source, size=6, alpha=0.75, color=color,
                           nonselection_alpha=0.15, selection_color="#d62728", **extra)
    if legend:
        fig.legend.location = "top_left"
        fig.legend.click_policy = "hide"
        fig.legend.label_text_font_size = "9pt"
    tooltips = [("word", "@word")] + [(c, f"@{{{c}}}") for c in data if c not in ("x", "y", "word")]
    fig.add_tools(HoverTool(renderers=[renderer], tooltips=tooltips))
    order = label_order(coords, vocab.metadata.get("count"))
    chosen = place_labels(coords, list(vocab.labels), order, max_labels=n_labels,
                          width_px=width - 60, height_px=height - 60)
    label_source = ColumnDataSource({"x": coords[chosen, 0], "y": coords[chosen, 1],
                                     "word": [vocab.labels[i] for i in chosen]})
    fig.add_layout(LabelSet(x="x", y="y", text="word", source=label_source, x_offset=4,
                            y_offset=-6, text_font_size="9pt", text_color="#333333"))
    search = TextInput(placeholder="search words (substring)", width=260)
    found = Div(text="", width=300)
    search.js_on_change("value", CustomJS(args={"source": source, "found": found}, code="""
        const q = cb_obj.value.trim().toLowerCase();
        const words = source.data.word;
        const hits = [];
        if (q.length) { for (let i = 0; i < words.length; i++)
            if (String(words[i]).toLowerCase().includes(q)) hits.push(i); }
        source.selected.indices = hits;
        found.text = q.length ? `${hits.length} match${hits.length === 1 ? "" : "es"}` : "";
    """))
    return fig, column(row(search, found), fig)


def plot_vocab(model: Any, tsne: Any = None, *, top_n: int | None = 1000,
               color_by: str | None = None, output: str | os.PathLike | None = None,
               store: Any = None, session: str | None = None, n_labels: int = 60,
               title: str | None = None, width: int = 900, height: int = 700,
               **load: Any) -> Any:
    """Project a vocabulary with t-SNE (``tsne``: a BarnesHutTsne, or None for the defaults)
    and return a Bokeh figure; with ``output``, also write a standalone HTML page (with a
    search box). ``model``: anything :func:`embedviz.load_vocabulary` reads. ``color_by``: a
    metadata column (e.g. "count") or "cluster". ``store``: record the projection there and
    reuse a stored one for the same words and parameters."""
    estimator = tsne if tsne is not None else BarnesHutTsne()
    result = project(model, estimator, store=store, session=session, top_n=top_n, **load)
    fig, layout = vocab_figure(result, color_by=color_by, n_labels=n_labels, title=title,
                               width=width, height=height)
    if output is not None:
        from bokeh.embed import file_html
        from bokeh.resources import INLINE

        html = file_html(layout, INLINE, title=title or f"embedviz: {result.vocab.name}")
        with open(output, "w", encoding="utf-8") as f:
            f.write(html)
    return fig
