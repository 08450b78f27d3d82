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
from embedviz.lod import LOD_POINTS
from embedviz.projection import BarnesHutTsne, ProjectionResult, project


def place_labels(coords: np.ndarray, words: list[str], order: np.ndarray, *, max_labels: int,
                 width_px: int, height_px: int, char_px: float = 7.0,
                 line_px: float = 14.0, bounds: tuple | None = None) -> list[int]:
    """Indices (from ``order``, most important first) whose text boxes do not overlap,
    estimated for a plot of ``width_px`` x ``height_px`` showing all of ``coords`` (or the
    view ``bounds`` = ((x0, y0), (x1, y1)))."""
    if len(coords) == 0:
        return []
    lo, hi = ((coords.min(axis=0), coords.max(axis=0)) if bounds is None
              else (np.asarray(bounds[0], float), np.asarray(bounds[1], float)))
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
    # each word's rank by frequency within its cell (ties: the earlier first)
    by_cell = np.lexsort((np.arange(n), -freq, cell_id))
    sorted_cells = cell_id[by_cell]
    starts = np.flatnonzero(np.r_[True, sorted_cells[1:] != sorted_cells[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank_in_cell = np.empty(n, dtype=np.int64)
    rank_in_cell[by_cell] = np.arange(n) - first
    busy = np.bincount(cell_id, minlength=cells * cells)
    # by rank within the cell, then the busier cell, then frequency
    return np.lexsort((-freq, -busy[cell_id], rank_in_cell))


MISSING = "#bbbbbb"  # (a point whose metadata value is NaN)


def colours(values: list) -> tuple[list[str], list[tuple[str, str]]]:
    """A colour per point from a column (categorical: a palette; numeric: viridis, log
    where it spans orders) and the legend's (label, colour) pairs."""
    from bokeh.palettes import Category10_10, Category20_20, Viridis256

    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric and values:
        a = np.asarray(values, dtype=float)
        ok = np.isfinite(a)
        if not ok.any():
            return [MISSING] * len(values), [("NaN", MISSING)]
        logged = bool(a[ok].min() > 0 and a[ok].max() / a[ok].min() > 100)
        a = np.log10(np.where(ok, a, 1.0)) if logged else a
        lo, hi = float(a[ok].min()), float(a[ok].max())
        idx = ((np.where(ok, a, lo) - lo) / (hi - lo if hi > lo else 1) * 255).astype(int).clip(0, 255)
        raw = np.asarray(values, dtype=float)[ok]
        ends = [(f"{raw.min():.3g}", Viridis256[0]),
                (f"{raw.max():.3g}" + (" (log)" if logged else ""), Viridis256[-1])]
        if not ok.all():
            ends.append(("NaN", MISSING))
        return [Viridis256[i] if k else MISSING for i, k in zip(idx, ok)], ends
    factors = sorted({str(v) for v in values})
    base = Category10_10 if len(factors) <= 10 else Category20_20
    pal = {f: base[i % len(base)] for i, f in enumerate(factors)}
    return [pal[str(v)] for v in values], [(f, pal[f]) for f in factors]


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


#: a large map in a standalone page: the view's points (most important first, the matches of
#: the search added) and density image, recomputed in the browser when the view moves
LOD_JS = """
const timers = window.__embedviz_lod || (window.__embedviz_lod = {});
clearTimeout(timers[density.id]);  // (one redraw when the view stops moving)
timers[density.id] = setTimeout(() => {
  const X = all.data.x, Y = all.data.y, C = all.data.ci, W = all.data.word, n = X.length;
  const x0 = xr.start, x1 = xr.end, y0 = yr.start, y1 = yr.end;
  const rows = [], sums = new Float64Array(w * h * 4);
  let count = 0;
  for (let i = 0; i < n; i++) {
    const x = X[i], y = Y[i];
    if (x < x0 || x > x1 || y < y0 || y > y1) continue;
    count++;
    if (rows.length < limit) rows.push(i);
    const cx = Math.min(w - 1, Math.floor((x - x0) / (x1 - x0) * w));
    const cy = Math.min(h - 1, Math.floor((y - y0) / (y1 - y0) * h));
    const k = (cy * w + cx) * 4, p = rgb[C[i]];
    sums[k] += p[0]; sums[k + 1] += p[1]; sums[k + 2] += p[2]; sums[k + 3] += 1;
  }
  const dense = count > limit;
  if (dense) {
    const img = density.data.image[0];
    let top = 1;
    for (let j = 0; j < w * h; j++) top = Math.max(top, sums[4 * j + 3]);
    const lt = Math.log1p(top);
    for (let j = 0; j < w * h; j++) {
      const c = sums[4 * j + 3];
      if (!c) { img[j] = 0; continue; }
      const a = Math.round(255 * (0.25 + 0.75 * Math.log1p(c) / lt));
      img[j] = ((a << 24) | (Math.round(sums[4 * j + 2] / c) << 16)
                | (Math.round(sums[4 * j + 1] / c) << 8) | Math.round(sums[4 * j] / c)) >>> 0;
    }
    density.data = {image: [img], x: [x0], y: [y0], dw: [x1 - x0], dh: [y1 - y0]};
  }
  image.visible = dense;
  const have = new Set(rows), found = [];
  for (const i of hits.data.i) {
    const x = X[i], y = Y[i];
    if (x >= x0 && x <= x1 && y >= y0 && y <= y1) {
      found.push(i);
      if (!have.has(i)) { rows.push(i); have.add(i); }
    }
  }
  const data = {x: rows.map(i => X[i]), y: rows.map(i => Y[i]), word: rows.map(i => W[i]),
                color: rows.map(i => hex[C[i]])};
  for (const m of meta) { const v = all.data[m]; data[m] = rows.map(i => v[i]); }
  shown.data = data;
  // labels: the most important first where their boxes do not overlap
  const lx = [], ly = [], lw = [], boxes = [], pw = pxw, ph = pxh;
  for (const i of found.slice(0, 10).concat(rows)) {  // (a search's matches labelled first)
    if (lx.length >= nlabels) break;
    const bx = (X[i] - x0) / (x1 - x0) * pw + 4, by = (Y[i] - y0) / (y1 - y0) * ph - 7;
    const ex = bx + 7 * String(W[i]).length, ey = by + 14;
    if (boxes.some(b => !(ex < b[0] || bx > b[2] || ey < b[1] || by > b[3]))) continue;
    boxes.push([bx, by, ex, ey]); lx.push(X[i]); ly.push(Y[i]); lw.push(W[i]);
  }
  labels.data = {x: lx, y: ly, word: lw};
}, 40);
"""

#: the search of a large standalone map: every word, matches ringed, the view moved to the best
LOD_SEARCH_JS = """
const q = cb_obj.value_input.trim().toLowerCase();
const W = all.data.word, X = all.data.x, Y = all.data.y;
const idx = [];
let exact = -1, total = 0;
if (q) for (let i = 0; i < W.length; i++) {
  const s = String(W[i]).toLowerCase();
  if (!s.includes(q)) continue;
  total++;
  if (idx.length < rings) idx.push(i);
  if (exact < 0 && s === q) { exact = i; if (idx[idx.length - 1] !== i) idx.push(i); }
}
hits.data = {x: idx.map(i => X[i]), y: idx.map(i => Y[i]), i: idx};
found.text = q ? total.toLocaleString("en") + (total === 1 ? " match" : " matches") : "";
const at = exact >= 0 ? exact : (idx.length ? idx[0] : -1);
if (at >= 0) {
  const hw = (xr.reset_end - xr.reset_start) / 12, hh = (yr.reset_end - yr.reset_start) / 12;
  xr.setv({start: X[at] - hw, end: X[at] + hw});
  yr.setv({start: Y[at] - hh, end: Y[at] + hh});
}
"""


def _fit_ranges(coords: np.ndarray, width: int, height: int) -> tuple[Any, Any]:
    """Ranges showing all of ``coords`` with one data unit as long across as up."""
    from bokeh.models import Range1d

    lo, hi = coords.min(axis=0), coords.max(axis=0)
    mid, span = (lo + hi) / 2, hi - lo
    half = max(span[1] / 2, span[0] / 2 * height / width, 1e-9) * 1.05
    out = []
    for m, r in ((mid[0], half * width / height), (mid[1], half)):
        out.append(Range1d(start=float(m - r), end=float(m + r), reset_start=float(m - r),
                           reset_end=float(m + r)))
    return out[0], out[1]


def _lod_figure(result: ProjectionResult, data: dict[str, Any], color_by: str | None, *,
                n_labels: int, title: str, width: int, height: int) -> tuple[Any, Any]:
    """vocab_figure for more than LOD_POINTS points (see embedviz.lod)."""
    from html import escape

    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, CustomJS, HoverTool
    from bokeh.models.annotations import LabelSet
    from bokeh.models.widgets import Div, TextInput
    from bokeh.plotting import figure

    from embedviz.lod import COARSE, VIEW_POINTS, MapLOD

    vocab, coords = result.vocab, np.asarray(result.coords, dtype=np.float64)[:, :2]
    hexes, pairs = colours(data[color_by]) if color_by else (["#1f77b4"] * len(vocab), [])
    order = label_order(coords, vocab.metadata.get("count"))
    lod = MapLOD(coords, hexes, order)
    meta = [c for c in data if c not in ("x", "y", "word")]
    every = {"x": lod.x.astype(np.float32), "y": lod.y.astype(np.float32),
             "word": [vocab.labels[i] for i in order], "ci": lod.colour}
    for c in meta:
        every[c] = [data[c][i] for i in order]
    all_src = ColumnDataSource(every, name="all")
    xr, yr = _fit_ranges(coords, width, height)
    w, h = max(1, (width - 40) // COARSE), max(1, (height - 60) // COARSE)
    img, rows = lod.view(xr.start, xr.end, yr.start, yr.end, w, h)
    first = {"x": coords[rows, 0], "y": coords[rows, 1], "word": [vocab.labels[i] for i in rows],
             "color": [hexes[i] for i in rows]}
    for c in meta:
        first[c] = [data[c][i] for i in rows]
    shown = ColumnDataSource(first, name="points")
    dense = img is not None
    density = ColumnDataSource({"image": [img if dense else np.zeros((h, w), np.uint32)],
                                "x": [xr.start], "y": [yr.start], "dw": [xr.end - xr.start],
                                "dh": [yr.end - yr.start]}, name="density")
    fig = figure(title=title, width=width, height=height, x_range=xr, y_range=yr,
                 tools="pan,wheel_zoom,box_zoom,tap,reset,save", active_scroll="wheel_zoom",
                 name="map")
    fig.axis.visible = False
    fig.grid.visible = False
    image = fig.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=density)
    image.visible = dense
    renderer = fig.scatter("x", "y", source=shown, size=5, alpha=0.8, color="color",
                           nonselection_alpha=0.3, selection_color="#d62728")
    hits = ColumnDataSource({"x": [], "y": [], "i": []}, name="hits")
    fig.scatter("x", "y", source=hits, size=14, fill_alpha=0, line_color="#d62728", line_width=2)
    tooltips = [("word", "@word")] + [(c, f"@{{{c}}}") for c in meta]
    fig.add_tools(HoverTool(renderers=[renderer], tooltips=tooltips))
    placed = place_labels(coords[rows], first["word"], np.arange(len(rows)),
                          max_labels=n_labels, width_px=width - 40, height_px=height - 60,
                          bounds=((xr.start, yr.start), (xr.end, yr.end)))
    labels = ColumnDataSource({"x": coords[rows[placed], 0], "y": coords[rows[placed], 1],
                               "word": [first["word"][j] for j in placed]}, name="labels")
    fig.add_layout(LabelSet(x="x", y="y", text="word", source=labels, x_offset=4, y_offset=-6,
                            text_font_size="9pt", text_color="#333333"))
    args = dict(all=all_src, shown=shown, density=density, image=image, labels=labels,
                hits=hits, xr=xr, yr=yr, w=w, h=h, limit=VIEW_POINTS, nlabels=n_labels,
                rgb=lod.palette.astype(int).tolist(), hex=lod.names, meta=meta,
                pxw=width - 40, pxh=height - 60)
    redraw = CustomJS(args=args, code=LOD_JS)
    for rng in (xr, yr):
        rng.js_on_change("start", redraw)
        rng.js_on_change("end", redraw)
    search = TextInput(placeholder="search words (substring)", width=260, name="search")
    found = Div(text="", width=300, name="found")
    search.js_on_change("value_input", CustomJS(
        args=dict(all=all_src, hits=hits, found=found, xr=xr, yr=yr, rings=2000),
        code=LOD_SEARCH_JS))
    legend = "".join(f"<span style='display:inline-block;width:10px;height:10px;margin:0 4px "
                     f"0 10px;background:{c}'></span>{escape(label)}" for label, c in pairs[:20])
    return fig, column(row(search, found), fig, Div(text=legend, width=width))


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
    q = result.projection.quality
    p = result.projection
    subtitle = (f"{len(vocab)} words, {p.method}"
                + (f" ({p.iteration} iterations)" if p.method == "tsne" and p.iteration else "")
                + (f", kNN kept {q['knn_preservation']:.2f}" if "knn_preservation" in q else ""))
    if len(vocab) > LOD_POINTS:
        return _lod_figure(result, data, color_by, n_labels=n_labels,
                           title=title or f"{vocab.name}: {subtitle}", width=width, height=height)
    source = ColumnDataSource(data)
    xr, yr = _fit_ranges(coords, width, height)
    fig = figure(title=title or f"{vocab.name}: {subtitle}", width=width, height=height,
                 output_backend="webgl", x_range=xr, y_range=yr,
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
    search.js_on_change("value_input", CustomJS(
        args={"source": source, "found": found, "xr": xr, "yr": yr}, code="""
        const q = cb_obj.value_input.trim().toLowerCase();
        const words = source.data.word, X = source.data.x, Y = source.data.y;
        const hits = [];
        let exact = -1;
        if (q.length) { for (let i = 0; i < words.length; i++) {
            const w = String(words[i]).toLowerCase();
            if (!w.includes(q)) continue;
            hits.push(i);
            if (exact < 0 && w === q) exact = i;
        } }
        source.selected.indices = hits;
        found.text = q.length ? `${hits.length} match${hits.length === 1 ? "" : "es"}` : "";
        const at = exact >= 0 ? exact : (hits.length ? hits[0] : -1);
        if (at >= 0) {  // (the view centred on the best match: the word itself before a part)
            const hw = (xr.reset_end - xr.reset_start) / 6, hh = (yr.reset_end - yr.reset_start) / 6;
            xr.setv({start: X[at] - hw, end: X[at] + hw});
            yr.setv({start: Y[at] - hh, end: Y[at] + hh});
        }
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
