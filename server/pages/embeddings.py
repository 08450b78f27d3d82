"""Embeddings: a stored projection as a WebGL scatter with labels spread over the map, a
search that answers as you type, colours with their legend, the nearest neighbours of a
clicked word (in the original space, cosine: see what the map distorts), the selection as
TSV, a training's snapshots on a slider (each map aligned to the previous one), every
projection of a set to pick from, and a form that runs a new one in the server's
projection pool, drawn as it converges and cancellable."""

from __future__ import annotations

import importlib.util
import logging
import re
from collections import Counter
from typing import Any

import numpy as np
from bokeh.events import RangesUpdate
from bokeh.layouts import column, row
from bokeh.models import (  # type: ignore[attr-defined]
    Button,
    CheckboxGroup,
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
from bokeh.plotting import figure
from embedviz.server.page import Context, Page, Reactions, div, esc, note, stack

from embedviz.lod import COARSE, LOD_POINTS, MapLOD, WordSearch
from embedviz.plot import MISSING, colours, label_order, place_labels
from embedviz.records import EmbeddingSet, Projection
from embedviz.store import EmbeddingInfo

log = logging.getLogger("embedviz.server")

N_LABELS = 50
#: matches ringed at most (a search of a million words may match most of them)
MAX_RINGS = 2000
#: the methods the form offers: UMAP only where umap-learn is installed
METHODS = ["tsne", "pca"] + (["umap"] if importlib.util.find_spec("umap") else [])
WIDTH, HEIGHT = 820, 620
EMPTY: dict[str, list] = {"x": [], "y": [], "word": [], "color": []}

#: the search runs in the browser as the user types: a match is ringed and the view
#: centred on the best one (an exact word before a part of one)
SEARCH_JS = """
if (src.tags.includes("lod")) return;  // (a large map: the server searches every word)
const q = cb_obj.value_input.trim().toLowerCase();
const words = src.data.word, xs = src.data.x, ys = src.data.y;
const hx = [], hy = [];
let best = -1, exact = -1;
if (q) for (let i = 0; i < words.length; i++) {
  const w = String(words[i]).toLowerCase();
  if (!w.includes(q)) continue;
  hx.push(xs[i]); hy.push(ys[i]);
  if (best < 0) best = i;
  if (exact < 0 && w === q) exact = i;
}
hits.data = {x: hx, y: hy};
found.text = q ? hx.length + " " + (hx.length === 1 ? match : matches) : "";
const at = exact >= 0 ? exact : best;
if (at >= 0) {
  const h = (yr.reset_end - yr.reset_start) / 6, w = (xr.reset_end - xr.reset_start) / 6;
  xr.setv({start: xs[at] - w, end: xs[at] + w});
  yr.setv({start: ys[at] - h, end: ys[at] + h});
}
"""

TSV_JS = """
const q = (s) => String(s).replace(/[\\t\\n\\r]/g, " ");
const blob = new Blob(["word\\n" + src.data.word.map(q).join("\\n") + "\\n"],
                      {type: "text/tab-separated-values"});
const a = document.createElement("a"); a.href = URL.createObjectURL(blob);
a.download = "selection.tsv"; document.body.appendChild(a); a.click(); a.remove();
"""


#: what a snapshot's name may end with (word2vec's "name, epoch N"): not part of its family
SNAPSHOT_SUFFIX = re.compile(r",\s*(?:epoch|iteration)\s+\d+\s*$")


def family_name(name: str) -> str:
    """The name of the family a snapshot belongs to: its own, less a trailing ", epoch N"
    or ", iteration N" (word2vec's snapshots are named so)."""
    return SNAPSHOT_SUFFIX.sub("", name)


def family_key(e: EmbeddingInfo) -> str:
    """A snapshot's family: its session and its family name (a session may hold several:
    an encoder's rows and a layer's outputs); a set of no training: itself."""
    if e.session is None or e.iteration is None:
        return e.key
    return f"{e.session}/{family_name(e.name)}"


def families(infos: list[EmbeddingInfo]) -> dict[str, list[EmbeddingInfo]]:
    """Embedding sets as the page lists them: the snapshots of one family of a training
    session (its session and name, see :func:`family_key`) together, in iteration order
    (the snapshot slider walks them), every other set alone."""
    out: dict[str, list[EmbeddingInfo]] = {}
    for e in infos:
        out.setdefault(family_key(e), []).append(e)
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


def neighbours(vectors: np.ndarray, i: int, k: int = 10,
               norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest words to word ``i`` by cosine distance, and those distances
    (``norms``: the rows' lengths, when known: a million rows take ~0.3 s to measure)."""
    if norms is None:
        norms = np.linalg.norm(vectors, axis=1)
        norms[norms == 0] = 1.0
    sims = vectors @ vectors[i] / (norms * norms[i])
    sims[i] = -np.inf
    k = min(k, len(vectors) - 1)
    idx = np.argpartition(-sims, k)[:k] if k < len(sims) - 1 else np.arange(len(sims))
    idx = idx[np.argsort(-sims[idx])][:k]
    return idx, 1.0 - sims[idx]


def few_classes(values: list, limit: int = 20) -> bool:
    """Whether a column holds 2 to ``limit`` distinct values, not all numbers (a label that
    colours a map well); stops reading at the ``limit + 1``-th value."""
    try:
        if len(set(values[:1000])) > limit:
            return False
        distinct = set(values)
    except TypeError:  # (unhashable values)
        distinct = {str(x) for x in values}
    if not 1 < len(distinct) <= limit:
        return False
    return not all(isinstance(x, (int, float)) for x in distinct)


def colour_column(e: EmbeddingSet, by: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The colours of ``e``'s points by a metadata column, by k-means "cluster", or none."""
    if by == "cluster":
        from sklearn.cluster import KMeans

        k = max(1, min(8, e.n))
        if e.n > LOD_POINTS:  # (full k-means of a million vectors takes minutes)
            from sklearn.cluster import MiniBatchKMeans

            got = MiniBatchKMeans(k, n_init=3, batch_size=4096, random_state=0).fit_predict(e.vectors)
        else:
            got = KMeans(k, n_init=4, random_state=0).fit_predict(e.vectors)
        return colours([f"cluster {c}" for c in got])
    if by in e.metadata:
        return colours(list(e.metadata[by]))
    return ["#1f77b4"] * e.n, []


def legend_html(pairs: list[tuple[str, str]], t: Any, limit: int = 20) -> str:
    """Swatches and labels (escaped: metadata values come from the user's files)."""
    if not pairs:
        return ""
    items = "".join(f"<span class='ev-swatch' style='background:{c}'></span>{esc(label)}"
                    for label, c in pairs[:limit])
    more = f" &middot; {len(pairs) - limit} {esc(t('more'))}" if len(pairs) > limit else ""
    return f"<div style='font-size:12px;line-height:20px'>{items}{more}</div>"


class EmbeddingsPage(Reactions):
    """One tab's embeddings page (see the module docstring)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.t = ctx, ctx.t
        self.provider = ctx.provider
        self.fams = families(self.provider.embeddings())
        self.set: EmbeddingSet | None = None
        self.proj: Projection | None = None
        self.coords: np.ndarray | None = None
        self.drawn: tuple | None = None
        self.job: Any = None
        self._palette: dict[tuple[str, str], tuple[list[str], list]] = {}
        #: a large map's level of detail (None: every point is in ``src``); ``shown``: the
        #: original index of each row of ``src``; ``picked``: the clicked word's index
        self.lod: MapLOD | None = None
        self.shown: np.ndarray | None = None
        self.picked: int | None = None
        self._search: WordSearch | None = None
        self.matched: list[int] = []
        self._norms: np.ndarray | None = None
        self._quiet = False
        self._widgets()

    # ------------------------------------------------------------ layout
    def _widgets(self) -> None:
        t = self.t
        self.pick = Select(title=t("Embedding set"), width=340, options=[], name="set")
        self.snap = Slider(title=t("Snapshot"), start=0, end=1, step=1, value=0, width=320,
                           show_value=False, name="snapshot")
        self.which = Select(title=t("Projection"), width=300, options=[], name="projection")
        self.colour = Select(title=t("Colour by"), value="none", options=self._colours([]),
                             width=160, name="colour")
        self.search = TextInput(placeholder=t("Search words"), width=220, name="search")
        self.found = Div(text="", width=200, name="found")
        self.quality = div("", width=WIDTH, name="quality")
        self.legend = div("", width=WIDTH, name="legend")
        self.src = ColumnDataSource(dict(EMPTY), name="points")
        self.labels = ColumnDataSource({"x": [], "y": [], "word": []})
        self.hits = ColumnDataSource({"x": [], "y": []}, name="hits")
        self.links = ColumnDataSource({"x0": [], "y0": [], "x1": [], "y1": []})
        self.density = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []},
                                        name="density")
        # (explicit ranges: a search moves them to its match; a DataRange1d would not stay)
        self.xr, self.yr = Range1d(start=0, end=1), Range1d(start=0, end=1)
        fig = figure(width=WIDTH, height=HEIGHT, output_backend="webgl", x_range=self.xr,
                     y_range=self.yr, active_scroll="wheel_zoom", name="map",
                     tools="pan,wheel_zoom,box_zoom,box_select,lasso_select,tap,reset,save")
        fig.toolbar.logo = None
        fig.axis.visible = False
        fig.grid.visible = False
        fig.image_rgba(image="image", x="x", y="y", dw="dw", dh="dh", source=self.density)
        fig.segment("x0", "y0", "x1", "y1", source=self.links, color="#d62728", alpha=0.6,
                    line_width=1.5)
        points = fig.scatter("x", "y", source=self.src, size=6, alpha=0.75, color="color",
                             nonselection_alpha=0.25, selection_color="#d62728")
        fig.scatter("x", "y", source=self.hits, size=14, fill_alpha=0, line_color="#d62728",
                    line_width=2)
        fig.add_layout(LabelSet(x="x", y="y", text="word", source=self.labels, x_offset=4,
                                y_offset=-6, text_font_size="9pt", text_color="#333333"))
        self.hover = HoverTool(renderers=[points], tooltips=[(t("word"), "@word")])
        fig.add_tools(self.hover)
        self.fig = fig
        self.near_src = ColumnDataSource({"word": [], "cosine": [], "map": []}, name="neighbours")
        self.near = DataTable(source=self.near_src, width=330, height=280, index_position=None,
                              columns=[TableColumn(field="word", title=t("word")),
                                       TableColumn(field="cosine", title=t("cosine distance")),
                                       TableColumn(field="map", title=t("map distance"))])
        self.near_title = div(f"<b>{esc(t('Nearest neighbours (cosine, original space)'))}</b>",
                              width=330, name="neighbours-title")
        self.sel_src = ColumnDataSource({"word": []}, name="selection")
        self.sel = DataTable(source=self.sel_src, width=330, height=200, index_position=None,
                             columns=[TableColumn(field="word", title=t("Selection"))])
        self.tsv = Button(label=t("Download TSV"), width=130, height=26,
                          styles={"font-size": "11px"})
        self.tsv.js_on_event("button_click", CustomJS(args={"src": self.sel_src}, code=TSV_JS))
        self.search.js_on_change("value_input", CustomJS(
            args={"src": self.src, "hits": self.hits, "found": self.found, "xr": self.xr,
                  "yr": self.yr, "matches": t("matches"), "match": t("match")}, code=SEARCH_JS))
        self._form()

    def _form(self) -> None:
        t = self.t
        self.method = Select(title=t("Method"), value="tsne", options=METHODS, width=110,
                             name="method")
        self.perplexity = NumericInput(title=t("Perplexity"), value=30, low=2, high=200,
                                       mode="float", width=110)
        self.iterations = NumericInput(title=t("Iterations"), value=500, low=50, high=5000,
                                       width=110)
        self.top = NumericInput(title=t("Top N words"), value=None, low=10, high=1_000_000,
                                width=110, placeholder=t("all"))
        self.converge = CheckboxGroup(labels=[t("Stop when converged")], active=[0],
                                      name="converge", width=170)
        self.run = Button(label=t("Run"), button_type="primary", width=100, name="run")
        self.cancel = Button(label=t("Cancel"), width=100, name="cancel", disabled=True)
        self.status = Div(text="", width=420, name="status")
        self.project_this = Button(label=t("Project this set (t-SNE)"), width=220,
                                   name="project-this", visible=False)

    def layout(self) -> Any:
        t = self.t
        side = column(self.near_title, self.near, div(f"<b>{esc(t('Selection'))}</b>"),
                      self.sel, self.tsv,
                      div(f"<i>{esc(t('Click a word to list its nearest neighbours; lasso or box-select to list a group.'))}</i>",
                          width=330))
        form = column(div(f"<b>{esc(t('New projection'))}</b>"),
                      row(self.method, self.perplexity, self.iterations, self.top, self.converge,
                          self.run,
                          self.cancel), self.status)
        return stack(row(self.pick, self.snap, self.which, self.colour),
                     row(self.search, self.found), self.quality, self.project_this,
                     row(column(self.fig, self.legend), side), form)

    # ------------------------------------------------------------ choosing what to show
    def options(self) -> list[tuple[str, str]]:
        """The picker's families, each labelled with its name (a session's snapshots: the
        name the listener gave them, the same at every iteration)."""
        out = []
        for fam, sets in self.fams.items():
            last = sets[-1]
            label = family_name(last.name) if fam != last.key else last.name
            extra = f", {len(sets)} {self.t('snapshots')}" if len(sets) > 1 else ""
            out.append((fam, f"{label} ({last.n:,} {self.t('words')}{extra})"))
        # (the browser's picker tells choices apart by their labels: two runs' "hidden" are
        # named by their sessions, and any still alike numbered)
        seen = Counter(label for _, label in out)
        named = []
        for fam, label in out:
            sid = self.fams[fam][-1].session
            s = self.ctx.provider.session(sid) if sid is not None else None
            named.append((fam, f"{label}: {self.ctx.label(s)}" if seen[label] > 1 and s else label))
        count: Counter = Counter()
        unique = []
        for fam, label in named:
            count[label] += 1
            unique.append((fam, label if count[label] == 1 else f"{label} #{count[label]}"))
        return unique

    def resolve(self, fam: str | None, default: str | None = None) -> str | None:
        """A family by its key, or by its session's id (an older link's, or a session's
        first family); ``default`` when none matches."""
        if fam in self.fams:
            return fam
        return next((f for f, sets in self.fams.items()
                     if fam is not None and f != sets[-1].key and sets[-1].session == fam), default)

    def open_family(self, fam: str, snapshot: int | None = None, proj: str | None = None) -> None:
        """Show family ``fam`` at snapshot index ``snapshot`` (the last when None)."""
        if fam not in self.fams:
            fam = self.resolve(fam) or fam
            self.silently(self.pick, "value", fam)
        sets = self.fams[fam]
        n = len(sets)
        self.snap.end = max(n - 1, 1)
        self.snap.visible = n > 1
        self.coords = None
        self.set = None
        last = self.provider.embedding(sets[-1].key, vectors=False)
        meta = last.metadata
        # (a few classes, such as a digit or a label, colour the map by default)
        classes = [c for c, vals in meta.items() if few_classes(vals)]
        self.colour.options = self._colours(list(meta))
        wanted = self.ctx.state.get("colour")
        # (k-means of a large set's vectors would hold up its first paint: no colour)
        self.colour.value = wanted if wanted in ["none", "cluster", *meta] else (
            classes[0] if classes else "cluster" if last.n <= LOD_POINTS else "none")
        i = n - 1 if snapshot is None else max(0, min(snapshot, n - 1))
        self.silently(self.snap, "value", i)
        self.show_snapshot(i, proj)

    def show_snapshot(self, i: int, proj: str | None = None) -> None:
        info = self.fams[self.pick.value][i]
        if info.iteration is not None and len(self.fams[self.pick.value]) > 1:
            self.snap.title = (f"{self.t('Snapshot')}: {self.t('iteration')} {info.iteration:,} "
                               f"({i + 1} / {len(self.fams[self.pick.value])})")
        e = self.provider.embedding(info.key, vectors=False)
        projs = [p for p in self.provider.projections(info.key) if p.coords is not None]
        projs.sort(key=lambda p: p.created)
        self.which.options = [(p.id, self._proj_label(p)) for p in projs]
        chosen = next((p for p in projs if p.id == proj), None)
        if chosen is None and projs:
            done = [p for p in projs if p.state == "done"]
            chosen = (done or projs)[-1]
        self.silently(self.which, "value", chosen.id if chosen else "")
        self.which.visible = bool(projs)
        self.draw(e, chosen)
        self.ctx.state.update({"set": self.pick.value, "snap": str(i),
                               "proj": chosen.id if chosen else ""})
        self.ctx.changed()

    def _colours(self, columns: list[str]) -> list[tuple[str, str]]:
        """The colour picker's choices: (value, label) in the page's language, then the
        metadata columns by their own names."""
        return [("none", self.t("none")), ("cluster", self.t("cluster"))] + [(c, c) for c in columns]

    def _proj_label(self, p: Projection) -> str:
        params = ", ".join(f"{k}={p.params[k]}" for k in ("perplexity", "max_iter") if k in p.params)
        state = "" if p.state == "done" else f" [{self.t(p.state)}]"
        return f"{p.method}{' (' + params + ')' if params else ''}{state}"

    # ------------------------------------------------------------ drawing
    def draw(self, e: EmbeddingSet, p: Projection | None, aligned: bool = True) -> None:
        """Draw projection ``p`` of set ``e`` (aligned to what was shown, when it was a
        snapshot of the same training); say so when the set has no projection yet."""
        t = self.t
        prev, prev_labels = self.coords, self.set.labels if self.set is not None else None
        changed_set = self.set is None or self.set.key != e.key
        self.set, self.proj = e, p
        self.links.data = {"x0": [], "y0": [], "x1": [], "y1": []}
        if changed_set:
            self._clear_word()
            self._search, self.matched, self._norms = None, [], None
        if p is None or p.coords is None:
            self.coords, self.lod, self.shown = None, None, None
            self.src.tags = []
            self.density.data = {"image": [], "x": [], "y": [], "dw": [], "dh": []}
            self.src.data = dict(EMPTY)
            self.labels.data = {"x": [], "y": [], "word": []}
            self.hits.data = {"x": [], "y": []}
            self.legend.text = ""
            self.quality.text = esc(t("No projection of this set yet: project it with the "
                                      "button below or the form."))
            self.project_this.visible = True
            return
        self.project_this.visible = False
        c = np.asarray(p.coords, dtype=float)[:, :2]
        c = align(c, e.labels, prev, prev_labels) if aligned else c
        self.coords = c
        self._fit(c)
        cols, pairs = self.colour_of(e, self.colour.value)
        # (a tooltip's label is text; its @{field} values are escaped by Bokeh)
        self.hover.tooltips = [(t("word"), "@word")] + [
            (col, f"@{{m_{col}}}") for col in e.metadata]
        self.legend.text = legend_html(pairs, t)
        order = label_order(c, e.metadata.get("count"))
        self.quality.text = self._quality(e, p)
        self.hits.data = {"x": [], "y": []}
        word = self.ctx.state.get("word")
        self.picked = e.labels.index(word) if word and word in e.labels else None
        if e.n > LOD_POINTS:
            self.lod = MapLOD(c, cols, order)
            if self._search is None:  # (ready before the first search: it must answer quickly)
                self._search = WordSearch(e.labels)
            self.src.tags = ["lod"]
            self.view()
            return
        self.lod, self.shown = None, None
        self.src.tags = []
        self.density.data = {"image": [], "x": [], "y": [], "dw": [], "dh": []}
        self.src.data = self._columns(e, c, cols, None)
        chosen = place_labels(c, e.labels, order, max_labels=N_LABELS, width_px=WIDTH - 60,
                              height_px=HEIGHT - 60)
        self.labels.data = {"x": c[chosen, 0], "y": c[chosen, 1],
                            "word": [e.labels[i] for i in chosen]}
        if self.picked is not None:
            self.src.selected.indices = [self.picked]

    @staticmethod
    def _columns(e: EmbeddingSet, c: np.ndarray, cols: list[str],
                 rows: np.ndarray | None) -> dict[str, Any]:
        """The point source's columns, for every point or for ``rows``."""
        pick = (lambda v: list(v)) if rows is None else (lambda v: [v[i] for i in rows])
        xy = c if rows is None else c[rows]
        data: dict[str, Any] = {"x": xy[:, 0], "y": xy[:, 1], "word": pick(e.labels),
                                "color": pick(cols)}
        for col, values in e.metadata.items():
            data[f"m_{col}"] = [x if isinstance(x, (int, float, str)) else str(x)
                                for x in pick(values)]
        return data

    def view(self) -> None:
        """A large map's current view: its density image and the points worth drawing (the
        most important first), their labels, the clicked word kept selected."""
        e, c, lod = self.set, self.coords, self.lod
        if e is None or c is None or lod is None:
            return
        x0, x1 = float(self.xr.start), float(self.xr.end)  # type: ignore[arg-type]
        y0, y1 = float(self.yr.start), float(self.yr.end)  # type: ignore[arg-type]
        image, shown = lod.view(x0, x1, y0, y1, WIDTH // COARSE, HEIGHT // COARSE)
        # (the search's matches and the clicked word are drawn whatever their importance)
        extra = np.asarray(self.matched[:MAX_RINGS] + ([self.picked] if self.picked is not None
                                                        else []), dtype=np.int64)
        if len(extra):
            inside = ((c[extra, 0] >= x0) & (c[extra, 0] <= x1) & (c[extra, 1] >= y0)
                      & (c[extra, 1] <= y1))
            extra = extra[inside & ~np.isin(extra, shown)]
            shown = np.concatenate([shown, extra])
        self.shown = shown
        self.density.data = ({"image": [], "x": [], "y": [], "dw": [], "dh": []} if image is None
                             else {"image": [image], "x": [x0], "y": [y0], "dw": [x1 - x0],
                                   "dh": [y1 - y0]})
        cols, _ = self.colour_of(e, self.colour.value)
        self.src.data = self._columns(e, c, cols, shown)
        # (the search's matches in view get their labels first)
        first: Any = np.flatnonzero(np.isin(shown, self.matched[:10])) if self.matched else []
        ranked = np.concatenate([first, np.setdiff1d(np.arange(len(shown)), first,
                                                     assume_unique=True)]).astype(np.int64)
        chosen = place_labels(c[shown], [e.labels[i] for i in shown], ranked,
                              max_labels=N_LABELS, width_px=WIDTH - 60, height_px=HEIGHT - 60,
                              bounds=((x0, y0), (x1, y1)))
        rows = shown[chosen]
        self.labels.data = {"x": c[rows, 0], "y": c[rows, 1], "word": [e.labels[i] for i in rows]}
        at: Any = np.flatnonzero(shown == self.picked) if self.picked is not None else []
        self._quiet = True  # (the rows moved: the same word, not a new click)
        try:
            self.src.selected.indices = [int(at[0])] if len(at) else []
        finally:
            self._quiet = False

    def _fit(self, c: np.ndarray) -> None:
        lo, hi = c.min(axis=0), c.max(axis=0)
        mid, span = (lo + hi) / 2, hi - lo
        # one data unit is as long across as up (t-SNE distances have no direction)
        h = max(span[1] / 2, span[0] / 2 * HEIGHT / WIDTH, 1e-9) * 1.08
        for rng, m, half in ((self.xr, mid[0], h * WIDTH / HEIGHT), (self.yr, mid[1], h)):
            rng.update(start=m - half, end=m + half, reset_start=m - half, reset_end=m + half)

    def _quality(self, e: EmbeddingSet, p: Projection) -> str:
        t, q = self.t, p.quality
        name = (f"{family_name(e.name)}, {t('iteration')} {e.iteration:,}"
                if e.session and e.iteration is not None else e.name)
        bits = [f"{esc(name)}: {e.n:,} {esc(t('words'))}, {esc(p.method)}"]
        if p.state != "done":
            bits.append(f"{esc(t(p.state))} {p.progress:.0%}")
        if "knn_preservation" in q:
            bits.append(f"{esc(t('kNN kept'))} {q['knn_preservation']:.2f}")
        if "trustworthiness" in q:
            bits.append(f"{esc(t('trustworthiness'))} {q['trustworthiness']:.2f}")
        params = ", ".join(f"{k}={p.params[k]}" for k in ("perplexity", "max_iter") if k in p.params)
        bits.append(esc(params))
        if p.method == "tsne" and p.state == "done" and p.iteration:
            bits.append(f"{p.iteration:,} {esc(t('iterations run'))}")
        return " &middot; ".join(b for b in bits if b)

    def colour_of(self, e: EmbeddingSet, by: str) -> tuple[list[str], list]:
        """(cached: "cluster" runs k-means, and a running projection redraws every tick)"""
        if (e.key, by) not in self._palette:
            whole = self.provider.embedding(e.key) if by == "cluster" else e
            self._palette[(e.key, by)] = colour_column(whole, by)
        return self._palette[(e.key, by)]

    def _clear_word(self) -> None:
        self.near_src.data = {"word": [], "cosine": [], "map": []}
        self.near_title.text = f"<b>{esc(self.t('Nearest neighbours (cosine, original space)'))}</b>"
        self.sel_src.data = {"word": []}
        self.src.selected.indices = []

    # ------------------------------------------------------------ the user's moves
    def on_select(self, attr: str, old: list[int], new: list[int]) -> None:
        e, c = self.set, self.coords
        if e is None or c is None or self._quiet:
            return
        if self.lod is not None and self.shown is not None:
            new = [int(self.shown[i]) for i in new if i < len(self.shown)]
        new = [i for i in new if i < e.n]
        self.sel_src.data = {"word": [e.labels[i] for i in new]}
        if len(new) != 1:
            self.near_src.data = {"word": [], "cosine": [], "map": []}
            self.links.data = {"x0": [], "y0": [], "x1": [], "y1": []}
            self.ctx.state.pop("word", None)
            self.picked = None
            return
        i = new[0]
        self.picked = i
        vectors = self.provider.embedding(e.key).vectors  # (read on the first click)
        if self._norms is None or len(self._norms) != e.n:
            self._norms = np.linalg.norm(vectors, axis=1)
            self._norms[self._norms == 0] = 1.0
        idx, dist = neighbours(vectors, i, norms=self._norms)
        mapd = np.linalg.norm(c[idx] - c[i], axis=1)
        self.near_src.data = {"word": [e.labels[j] for j in idx],
                              "cosine": [round(float(d), 3) for d in dist],
                              "map": [round(float(d), 2) for d in mapd]}
        self.near_title.text = (f"<b>{esc(self.t('Nearest neighbours (cosine, original space)'))}: "
                                f"{esc(e.labels[i])}</b>")
        self.links.data = {"x0": [c[i, 0]] * len(idx), "y0": [c[i, 1]] * len(idx),
                           "x1": c[idx, 0].tolist(), "y1": c[idx, 1].tolist()}
        self.ctx.state["word"] = e.labels[i]
        self.ctx.changed()

    def on_colour(self, attr: str, old: str, new: str) -> None:
        if self.set is not None and self.coords is not None:
            cols, pairs = self.colour_of(self.set, new)
            if self.lod is not None:
                self.lod.recolour(cols)
                self.view()
            else:
                self.src.data["color"] = cols
            self.legend.text = legend_html(pairs, self.t)
        self.ctx.state["colour"] = new
        self.ctx.changed()

    def on_which(self, attr: str, old: str, new: str) -> None:
        if self.set is None or not new:
            return
        p = next((x for x in self.provider.projections(self.set.key) if x.id == new), None)
        self.coords = None  # (another method's map: not aligned to this one)
        self.draw(self.set, p, aligned=False)
        self.ctx.state["proj"] = new
        self.ctx.changed()

    def find(self, query: str) -> None:
        """What the search box's script does in the browser (and the server, for a large
        map): ring the matches and centre the view on the best (an exact word before a part
        of one)."""
        q = query.strip()
        e, c = self.set, self.coords
        if e is None or c is None:
            return
        if self._search is None:
            self._search = WordSearch(e.labels)
        idx, exact = self._search.find(q)
        self.matched = idx
        ring = idx[:MAX_RINGS]
        self.hits.data = {"x": c[ring, 0].tolist(), "y": c[ring, 1].tolist()}
        self.found.text = (f"{len(idx):,} {self.t('match') if len(idx) == 1 else self.t('matches')}"
                           if q else "")
        if idx:
            at = exact if exact >= 0 else idx[0]
            h = (float(self.yr.reset_end) - float(self.yr.reset_start)) / 6  # type: ignore[arg-type]
            w = (float(self.xr.reset_end) - float(self.xr.reset_start)) / 6  # type: ignore[arg-type]
            self.xr.update(start=c[at, 0] - w, end=c[at, 0] + w)
            self.yr.update(start=c[at, 1] - h, end=c[at, 1] + h)
            self.view()

    def on_query(self, attr: str, old: str, new: str) -> None:
        if self.lod is not None:
            self.find(new)
        self.ctx.state["q"] = new
        self.ctx.changed()

    # ------------------------------------------------------------ projections from the form
    def start(self, method: str | None = None) -> None:
        t, jobs = self.t, self.ctx.jobs
        e = self.set
        if e is None or jobs is None or (self.job is not None and self.job.state in ("queued", "running")):
            return
        method = method or self.method.value
        params: dict[str, Any] = {}
        if method == "tsne":
            its = int(self.iterations.value or 500)
            n = min(int(self.top.value or e.n), e.n)
            params = {"perplexity": float(min(self.perplexity.value or 30, max(2, (n - 1) / 3))),
                      "max_iter": its, "stop_lying_iteration": min(250, its // 4),
                      "random_state": 0,
                      "until": "converged" if self.converge.active else "max_iter"}
        top = int(self.top.value) if self.top.value else None
        try:
            from embedviz.projection import make_estimator

            key = make_estimator(method, **params).params()
            same = (self.provider.store.find_projection(e.key, method, key)
                    if top is None or top >= e.n else None)
            if same is not None:  # (the same map again would only take time)
                self.coords = None
                self.show_snapshot(int(self.snap.value), same.id)
                self.status.text = esc(t("Already projected with these parameters: shown."))
                return
            self.job = jobs.submit(e.key, method=method, params=params, top_n=top,
                                   owner=self.ctx.owner)
        except Exception as exc:  # (bad parameters: say so, keep the page)
            self.status.text = esc(f"{t('failed')}: {exc}")
            return
        self.run.disabled, self.cancel.disabled = True, False
        self.status.text = f"{esc(t('queued'))}..."

    def stop(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def poll(self) -> None:
        """Follow the running job: its progress, its map as it converges, and its end."""
        job, t = self.job, self.t
        if job is None:
            return
        state = job.state
        progress = f" {job.progress:.0%}" if state == "running" else ""
        self.status.text = esc(f"{t(state)}{progress}" + (f": {job.message}" if job.message else ""))
        if job.projection and state in ("running", "done", "cancelled"):
            self._draw_job(job)
        if state in ("done", "failed", "cancelled"):
            self.job = None
            self.run.disabled, self.cancel.disabled = False, True
            if state != "failed":
                self._finished(job)

    def _draw_job(self, job: Any) -> None:
        got = next((p for p in self.provider.projections(job.embedding) if p.id == job.projection), None)
        moved = None if got is None else (got.id, got.iteration, got.state)
        if got is None or got.coords is None or self.drawn == moved:
            return
        self.drawn = moved
        self.coords = None  # (a moving map: not aligned)
        e = self.provider.embedding(job.embedding, vectors=False)
        if self.set is not None and self.set.key == e.key:  # (the picker names what is drawn)
            projs = [p for p in self.provider.projections(e.key) if p.coords is not None]
            self.silently(self.which, "options",
                          [(p.id, self._proj_label(p)) for p in sorted(projs, key=lambda p: p.created)])
            self.silently(self.which, "value", got.id)
            self.which.visible = True
        self.draw(e, got, aligned=False)

    def _finished(self, job: Any) -> None:
        """List the new projection (and the new set, for a top-N run) and show it."""
        self.provider.refresh(force=True)
        self.fams = families(self.provider.embeddings())
        self.pick.options = self.options()
        fam = next((f for f, sets in self.fams.items() if any(s.key == job.embedding for s in sets)),
                   None)
        if fam is None:
            return
        sets = self.fams[fam]
        i = next(k for k, s in enumerate(sets) if s.key == job.embedding)
        self.silently(self.pick, "value", fam)
        self.open_family(fam, i, job.projection)

    # ------------------------------------------------------------ plumbing
    def wire(self) -> None:
        guarded = self.guard
        self.pick.on_change("value", guarded(lambda a, o, n: self.open_family(n)))
        self.snap.on_change("value", guarded(lambda a, o, n: self.show_snapshot(int(n))))
        self.which.on_change("value", guarded(self.on_which))
        self.colour.on_change("value", guarded(self.on_colour))
        self.search.on_change("value_input", self.on_query)
        self.src.selected.on_change("indices", self.on_select)
        self.fig.on_event(RangesUpdate, lambda event: self.view())
        self.run.on_click(lambda: self.start())
        self.cancel.on_click(self.stop)
        self.project_this.on_click(lambda: self.start("tsne"))


def build(ctx: Context) -> Page:
    t = ctx.t
    page = EmbeddingsPage(ctx)
    if not page.fams:
        return Page(note(t("No embedding sets in this store: plot_vocab(...) with store=, "
                           "Word2VecListener or embedviz.project(...) adds them.")))
    names = list(page.fams)
    of = {f: sets[-1].session for f, sets in page.fams.items() if f != sets[-1].key}
    picked = [f for s in ctx.sessions for f in names if of.get(f) == s.id]
    # (an older link names a session: its first family)
    fam = page.resolve(ctx.state.get("set"), picked[0] if picked else names[-1])
    assert fam is not None
    page.pick.options = page.options()
    page.pick.value = fam
    snap = ctx.state.get("snap")
    page.open_family(fam, int(snap) if snap and snap.isdigit() else None, ctx.state.get("proj"))
    page.wire()
    if ctx.state.get("q"):  # (a link's search, found as the browser would find it)
        page.search.value = page.search.value_input = ctx.state["q"]
        page.find(ctx.state["q"])
    if page.src.selected.indices:  # (a link's word: its neighbours)
        page.on_select("indices", [], list(page.src.selected.indices))
    if ctx.jobs is None:
        page.run.disabled = True
        page.status.text = esc(t("The store is open read-only: a new projection cannot be "
                                 "stored in it.") if getattr(ctx.provider.store, "readonly", False)
                               else t("This server runs no projections."))
    return Page(page.layout(), polls=[page.poll], view=page)


__all__ = ["MISSING", "align", "build", "colours", "families", "neighbours"]
