"""The embeddings page: a stored projection as a WebGL scatter with labels spread over the
map, search, colours, nearest neighbours of a clicked word (in the original space, cosine:
see what the map distorts), the selection as TSV, snapshots over training aligned to each
other, and a form that runs a new projection off the server's event loop."""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (  # type: ignore[attr-defined]
    Button,
    ColumnDataSource,
    CustomJS,
    DataTable,
    Div,
    HoverTool,
    LabelSet,
    NumericInput,
    Range1d,
    Select,
    Slider,
    TableColumn,
    TextInput,
)
from bokeh.palettes import Category10_10, Category20_20, Viridis256
from bokeh.plotting import figure
from embedviz.server.charts import esc, note
from embedviz.server.training import Page, View

from embedviz.plot import label_order, place_labels
from embedviz.records import EmbeddingSet, Projection, content_key

log = logging.getLogger("embedviz.server")

#: one projection at a time per server: t-SNE takes every core it is given
_RUNNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedviz-projection")
N_LABELS = 50
WIDTH, HEIGHT = 820, 620


def families(store: Any) -> dict[str, list]:
    """Embedding sets grouped as the slider shows them: a session's snapshots together
    (by iteration), each other set alone."""
    out: dict[str, list] = {}
    for e in store.embeddings():
        name = e.session or e.key
        out.setdefault(name, []).append(e)
    for sets in out.values():
        sets.sort(key=lambda e: (e.iteration if e.iteration is not None else -1, e.created))
    return out


def align(coords: np.ndarray, labels: list[str], ref: np.ndarray | None,
          ref_labels: list[str] | None) -> np.ndarray:
    """``coords`` rotated, reflected, scaled and moved onto ``ref`` (orthogonal Procrustes
    over the words both hold), so that a snapshot's words move smoothly from the previous
    one's instead of jumping; unchanged when fewer than 3 words are shared."""
    if ref is None or ref_labels is None:
        return coords
    where = {w: i for i, w in enumerate(ref_labels)}
    pairs = [(i, where[w]) for i, w in enumerate(labels) if w in where]
    if len(pairs) < 3:
        return coords
    a = coords[[i for i, _ in pairs]].astype(float)
    b = ref[[j for _, j in pairs]].astype(float)
    ma, mb = a.mean(0), b.mean(0)
    u, sv, vt = np.linalg.svd((a - ma).T @ (b - mb))
    r = u @ vt
    scale = sv.sum() / max(((a - ma) ** 2).sum(), 1e-12)
    return (coords - ma) @ r * scale + mb


def neighbours(vectors: np.ndarray, i: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest words to word ``i`` by cosine distance, and those distances."""
    norms = np.linalg.norm(vectors, axis=1)
    norms[norms == 0] = 1.0
    sims = vectors @ vectors[i] / (norms * norms[i])
    sims[i] = -np.inf
    k = min(k, len(vectors) - 1)
    idx = np.argpartition(-sims, k)[:k] if k < len(sims) - 1 else np.arange(len(sims))
    idx = idx[np.argsort(-sims[idx])][:k]
    return idx, 1.0 - sims[idx]


def colours(values: list) -> tuple[list[str], list[tuple[str, str]]]:
    """A colour per point from a column (categorical: a palette; numeric: viridis, log
    where it spans orders) and the legend's (label, colour) pairs."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric and values:
        a = np.asarray(values, dtype=float)
        if np.nanmin(a) > 0 and np.nanmax(a) / np.nanmin(a) > 100:
            a = np.log10(a)
        lo, hi = np.nanmin(a), np.nanmax(a)
        idx = ((a - lo) / (hi - lo if hi > lo else 1) * 255).astype(int).clip(0, 255)
        return [Viridis256[i] for i in idx], [(f"{np.nanmin(values):.3g}", Viridis256[0]),
                                              (f"{np.nanmax(values):.3g}", Viridis256[-1])]
    factors = sorted({str(v) for v in values})
    base = Category10_10 if len(factors) <= 10 else Category20_20
    pal = {f: base[i % len(base)] for i, f in enumerate(factors)}
    return [pal[str(v)] for v in values], [(f, pal[f]) for f in factors[:20]]


def embeddings(v: View) -> Page:
    t, store = v.t, v.store
    fams = families(store)
    if not fams:
        return Page(note(t("No embedding sets in this store.")))
    names = list(fams)
    session_names = {s.id: v.label(s) for s in store.sessions()}
    # the picked session's snapshots first, when it has any
    first = next((s.id for s in v.sessions if s.id in fams), names[-1])
    pick = Select(title=t("Embedding set"), value=first, width=320, options=[])
    snap = Slider(title=t("Snapshot"), start=0, end=1, step=1, value=0, width=320)
    colour = Select(title=t("Colour by"), value="none", options=["none", "cluster"], width=160,
                    name="colour")
    search = TextInput(placeholder=t("Search words"), width=220, name="search")
    found = Div(text="", width=200, name="found")
    quality = Div(text="", width=WIDTH, name="quality")
    src = ColumnDataSource({"x": [], "y": [], "word": [], "color": []}, name="points")
    labels_src = ColumnDataSource({"x": [], "y": [], "word": []})
    hits = ColumnDataSource({"x": [], "y": []}, name="hits")
    links = ColumnDataSource({"x0": [], "y0": [], "x1": [], "y1": []})
    # explicit ranges: a search moves them to its match (a DataRange1d would take them back)
    xr, yr = Range1d(start=0, end=1), Range1d(start=0, end=1)
    fig = figure(width=WIDTH, height=HEIGHT, output_backend="webgl", x_range=xr, y_range=yr,
                 tools="pan,wheel_zoom,box_zoom,box_select,lasso_select,tap,reset,save",
                 active_scroll="wheel_zoom", name="map")
    fig.toolbar.logo = None
    fig.axis.visible = False
    fig.grid.visible = False
    fig.segment("x0", "y0", "x1", "y1", source=links, color="#d62728", alpha=0.6, line_width=1.5)
    points = fig.scatter("x", "y", source=src, size=6, alpha=0.75, color="color",
                         nonselection_alpha=0.25, selection_color="#d62728")
    fig.scatter("x", "y", source=hits, size=14, fill_alpha=0, line_color="#d62728", line_width=2)
    fig.add_layout(LabelSet(x="x", y="y", text="word", source=labels_src, x_offset=4, y_offset=-6,
                            text_font_size="9pt", text_color="#333333"))
    hover = HoverTool(renderers=[points], tooltips=[("word", "@word")])
    fig.add_tools(hover)
    near_src = ColumnDataSource({"word": [], "cosine": [], "map": []}, name="neighbours")
    near = DataTable(source=near_src, width=330, height=280, index_position=None, columns=[
        TableColumn(field="word", title=t("word")), TableColumn(field="cosine", title=t("cosine distance")),
        TableColumn(field="map", title=t("map distance"))])
    near_title = Div(text=f"<b>{esc(t('Nearest neighbours (cosine, original space)'))}</b>", width=330)
    sel_src = ColumnDataSource({"word": []}, name="selection")
    sel = DataTable(source=sel_src, width=330, height=200, index_position=None,
                    columns=[TableColumn(field="word", title=t("Selection"))])
    tsv = Button(label=t("Download TSV"), width=130, height=26, styles={"font-size": "11px"})
    tsv.js_on_event("button_click", CustomJS(args={"src": sel_src}, code="""
        const blob = new Blob(["word\\n" + src.data.word.join("\\n") + "\\n"], {type: "text/tab-separated-values"});
        const a = document.createElement("a"); a.href = URL.createObjectURL(blob);
        a.download = "selection.tsv"; document.body.appendChild(a); a.click(); a.remove();"""))
    help_ = Div(text=f"<i>{esc(t('Click a word to list its nearest neighbours; lasso or box-select to list a group.'))}</i>",
                width=330)
    state: dict[str, Any] = {"set": None, "coords": None, "running": None, "drawn": None}
    palette: dict[tuple[str, str], list[str]] = {}  # (set, colour by) -> a colour per point

    def colour_of(e: EmbeddingSet, by: str) -> list[str]:
        """(cached: "cluster" runs k-means, and a running projection redraws every second)"""
        if (e.key, by) not in palette:
            palette[(e.key, by)] = _colour_column(e, by)
        return palette[(e.key, by)]

    def options() -> list[tuple[str, str]]:
        return [(n, f"{session_names.get(n, fams[n][-1].name)} ({fams[n][-1].n} {t('words')})")
                for n in fams]
    pick.options = options()

    def draw(e: EmbeddingSet, p: Projection | None) -> None:
        prev_c, prev_l = state.get("coords"), state["set"].labels if state["set"] is not None else None
        state["set"], links.data = e, {"x0": [], "y0": [], "x1": [], "y1": []}
        if p is None or p.coords is None:
            state["coords"] = None
            src.data = {"x": [], "y": [], "word": [], "color": []}
            labels_src.data = {"x": [], "y": [], "word": []}
            hits.data = {"x": [], "y": []}
            quality.text = esc(t("No projection of this set yet: run one with the form."))
            return
        c = align(np.asarray(p.coords, dtype=float)[:, :2], e.labels, prev_c, prev_l)
        state["coords"] = c
        lo, hi = c.min(axis=0), c.max(axis=0)
        mid, span = (lo + hi) / 2, hi - lo
        # one data unit is as long across as up (t-SNE distances have no direction)
        h = state["half"] = max(span[1] / 2, span[0] / 2 * HEIGHT / WIDTH, 1e-9) * 1.08
        for rng, m, half in ((xr, mid[0], h * WIDTH / HEIGHT), (yr, mid[1], h)):
            rng.update(start=m - half, end=m + half, reset_start=m - half, reset_end=m + half)
        data: dict[str, Any] = {"x": c[:, 0], "y": c[:, 1], "word": e.labels,
                                "color": colour_of(e, colour.value)}
        for col, values in e.metadata.items():
            data[col] = [x if isinstance(x, (int, float, str)) else str(x) for x in values]
        src.data = data
        hover.tooltips = [("word", "@word")] + [(c_, f"@{{{c_}}}") for c_ in e.metadata]
        colour.options = ["none", "cluster"] + list(e.metadata)
        order = label_order(c, e.metadata.get("count"))
        chosen = place_labels(c, e.labels, order, max_labels=N_LABELS, width_px=WIDTH - 60,
                              height_px=HEIGHT - 60)
        labels_src.data = {"x": c[chosen, 0], "y": c[chosen, 1], "word": [e.labels[i] for i in chosen]}
        q = p.quality
        name = (f"{session_names.get(e.session, e.name)}, {t('Snapshot')} {e.iteration}"
                if e.session else e.name)
        bits = [f"{esc(name)}: {e.n} {esc(t('words'))}, {esc(p.method)}"]
        if p.state != "done":
            bits.append(f"{esc(t(p.state) if p.state in ('running', 'failed', 'done') else p.state)} "
                        f"{p.progress:.0%}")
        if "knn_preservation" in q:
            bits.append(f"{esc(t('kNN kept'))} {q['knn_preservation']:.2f}")
        if "trustworthiness" in q:
            bits.append(f"{esc(t('trustworthiness'))} {q['trustworthiness']:.2f}")
        params = p.params
        bits.append(", ".join(f"{k}={params[k]}" for k in ("perplexity", "max_iter") if k in params))
        quality.text = " &middot; ".join(b for b in bits if b)
        on_search("value", "", search.value)

    def show_set(i: int) -> None:
        info = fams[pick.value][i]
        e = store.embedding(info.key)
        done = [p for p in store.projections(info.key) if p.coords is not None]
        done.sort(key=lambda p: (p.state == "done", p.updated))
        draw(e, done[-1] if done else None)

    def on_pick(attr: str, old: str, new: str) -> None:
        n = len(fams[new])
        snap.end = max(n - 1, 1)
        snap.value = n - 1
        snap.visible = n > 1
        state["coords"] = None
        state["set"] = None
        meta = store.embedding(fams[new][-1].key).metadata
        # a few classes (a digit, a label) colour the map by default
        classes = [c for c, vals in meta.items() if 1 < len({str(x) for x in vals}) <= 20
                   and not all(isinstance(x, (int, float)) for x in vals)]
        colour.options = ["none", "cluster"] + list(meta)
        colour.value = classes[0] if classes else "cluster"
        show_set(n - 1)

    def on_search(attr: str, old: str, new: str) -> None:
        q = new.strip().lower()
        words = src.data["word"]
        idx = [i for i, w in enumerate(words) if q and q in str(w).lower()]
        hits.data = {"x": [src.data["x"][i] for i in idx], "y": [src.data["y"][i] for i in idx]}
        found.text = f"{len(idx)} {esc(t('matches'))}" if q else ""
        if idx and state["coords"] is not None:  # centre the view on the best match
            exact = [i for i in idx if str(words[i]).lower() == q]
            c = state["coords"][(exact or idx)[0]]
            h = state["half"] / 3  # (a third of the map, around it)
            xr.update(start=c[0] - h * WIDTH / HEIGHT, end=c[0] + h * WIDTH / HEIGHT)
            yr.update(start=c[1] - h, end=c[1] + h)

    def on_select(attr: str, old: list[int], new: list[int]) -> None:
        e, c = state["set"], state["coords"]
        if e is None or c is None:
            return
        sel_src.data = {"word": [e.labels[i] for i in new]}
        if len(new) != 1:
            near_src.data = {"word": [], "cosine": [], "map": []}
            links.data = {"x0": [], "y0": [], "x1": [], "y1": []}
            return
        i = new[0]
        idx, dist = neighbours(e.vectors, i)
        mapd = np.linalg.norm(c[idx] - c[i], axis=1)
        near_src.data = {"word": [e.labels[j] for j in idx],
                         "cosine": [round(float(d), 3) for d in dist],
                         "map": [round(float(d), 2) for d in mapd]}
        near_title.text = (f"<b>{esc(t('Nearest neighbours (cosine, original space)'))}: "
                           f"{esc(e.labels[i])}</b>")
        links.data = {"x0": [c[i, 0]] * len(idx), "y0": [c[i, 1]] * len(idx),
                      "x1": c[idx, 0].tolist(), "y1": c[idx, 1].tolist()}

    def on_colour(attr: str, old: str, new: str) -> None:
        if state["set"] is not None and state["coords"] is not None:
            src.data["color"] = colour_of(state["set"], new)

    pick.on_change("value", on_pick)
    snap.on_change("value", lambda a, o, n: show_set(int(n)))
    search.on_change("value", on_search)
    src.selected.on_change("indices", on_select)
    colour.on_change("value", on_colour)
    form, poll_form = _projection_form(v, state, lambda: draw_running())

    def draw_running() -> None:
        running = state["running"]
        if running is None:
            return
        key, future = running
        got = [p for p in store.projections(key) if p.coords is not None]
        if got:
            latest = max(got, key=lambda p: p.updated)
            if state["drawn"] != (latest.id, latest.updated):  # (only what moved)
                state["drawn"] = (latest.id, latest.updated)
                state["coords"] = None  # (the running map is not aligned: it moves)
                draw(store.embedding(key), latest)
        if future.done():
            state["running"] = None
            fams.clear()
            fams.update(families(store))
            pick.options = options()

    on_pick("value", "", pick.value)
    side = column(near_title, near, Div(text=f"<b>{esc(t('Selection'))}</b>"), sel, tsv, help_)
    layout = column(row(pick, snap, colour), row(search, found), quality, row(fig, side), form)
    return Page(layout, None, [poll_form])


def _colour_column(e: EmbeddingSet, by: str) -> list[str]:
    if by == "cluster":
        from sklearn.cluster import KMeans

        k = max(1, min(8, e.n))
        values = [str(c) for c in KMeans(k, n_init=4, random_state=0).fit_predict(e.vectors)]
        return colours(values)[0]
    if by in e.metadata:
        return colours(list(e.metadata[by]))[0]
    return ["#1f77b4"] * e.n


def _projection_form(v: View, state: dict, redraw: Any) -> tuple[Any, Any]:
    """Method, perplexity, iterations, top N, and a button that runs the projection on the
    server's projection thread: its progress is written to the store every 25 iterations
    and the map redraws from there as it converges."""
    t = v.t
    method = Select(title=t("Method"), value="tsne", options=["tsne", "pca", "umap"], width=110)
    perplexity = NumericInput(title=t("Perplexity"), value=30, low=2, high=200, mode="float", width=110)
    iterations = NumericInput(title=t("Iterations"), value=500, low=50, high=5000, width=110)
    top = NumericInput(title=t("Top N words"), value=1000, low=10, high=100_000, width=110)
    run = Button(label=t("Run"), button_type="primary", width=100, name="run")
    status = Div(text="", width=400, name="status")

    def start() -> None:
        from embedviz.projection import make_estimator, project
        from embedviz.vocab import Vocabulary

        e: EmbeddingSet | None = state["set"]
        if e is None or state["running"] is not None:
            return
        n = int(top.value or e.n)
        vocab = Vocabulary(e.labels[:n], e.vectors[:n], {k: c[:n] for k, c in e.metadata.items()},
                           e.name)
        params: dict[str, Any] = {}
        if method.value == "tsne":
            its = int(iterations.value or 500)
            params = {"perplexity": float(min(perplexity.value or 30, max(2, (len(vocab) - 1) / 3))),
                      "max_iter": its, "stop_lying_iteration": min(250, its // 4),
                      "random_state": 0}
        try:
            est = make_estimator(method.value, **params)
        except Exception as exc:  # (bad parameters: say so, keep the page)
            status.text = esc(f"{t('failed')}: {exc}")
            return
        key = content_key(vocab.labels, np.ascontiguousarray(vocab.vectors, dtype=np.float32))
        future = _RUNNER.submit(project, vocab, est, store=v.store, session=e.session,
                                iteration=e.iteration, reuse=False, stream_every=25)
        state["running"] = (key, future)
        status.text = f"{esc(t('running'))}..."
        run.disabled = True

    def poll() -> None:
        running = state["running"]
        if running is None:
            return
        key, future = running
        projs = v.store.projections(key)
        if projs:
            p = max(projs, key=lambda p: p.updated)
            status.text = f"{esc(t(p.state) if p.state in ('running', 'done', 'failed') else p.state)} {p.progress:.0%}"
        if future.done():
            exc = future.exception()
            if exc is not None:
                status.text = esc(f"{t('failed')}: {exc}")
            run.disabled = False
        redraw()

    run.on_click(start)
    return column(Div(text=f"<b>{esc(t('New projection'))}</b>"),
                  row(method, perplexity, iterations, top, run), status), poll
