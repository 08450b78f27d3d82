"""The training pages: overview, model, system and health, each built as a function of the
store and the sessions picked. Each returns a :class:`Page`: its layout and a ``poll`` that
the app's periodic callback runs to stream what is new."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (  # type: ignore[attr-defined]
    BasicTicker,
    BoxAnnotation,
    Button,
    CheckboxGroup,
    ColumnDataSource,
    DataTable,
    Div,
    LinearColorMapper,
    Select,
    Slider,
    Span,
    TableColumn,
)
from bokeh.palettes import Viridis256
from bokeh.plotting import figure
from embedviz.server.charts import TOOLS, Lines, color, div, esc, note
from embedviz.server.data import (
    Tail,
    ema,
    histogram_grid,
    layer_of,
    layer_rows,
    log10,
    log10_ratio,
    model_rows,
    tensor_names,
    weight_names,
)
from embedviz.server.messages import Messages

from embedviz.health import SEVERITY_RANK
from embedviz.store import SessionInfo, Store


@dataclass
class Page:
    layout: Any
    lines: Lines | None = None
    polls: list[Callable[[], Any]] = field(default_factory=list)

    def poll(self) -> int:
        n = self.lines.poll() if self.lines is not None else 0
        for p in self.polls:
            p()
        return n


@dataclass
class View:
    """What every page is built from: the store, the sessions picked (the first is the one
    per-layer charts show), the worker, the language."""

    store: Store
    sessions: list[SessionInfo]
    worker: str | None
    t: Messages

    def tail(self, s: SessionInfo, *keys: str, combine: Callable | None = None) -> Tail:
        return Tail(s.id, self.worker, keys, combine, start=s.created)

    def keys(self, s: SessionInfo) -> list[str]:
        try:
            return self.store.series_keys(s.id, self.worker)
        except Exception:  # (this worker is not in that session)
            return []

    def static(self, s: SessionInfo) -> dict:
        try:
            return self.store.static(s.id, self.worker)
        except Exception:
            return {}

    def label(self, s: SessionInfo) -> str:
        return s.name or s.id


# ---------------------------------------------------------------------------- overview
def overview(v: View) -> Page:
    t = v.t
    lines = Lines(v.store, t)
    smoothed: list[ColumnDataSource] = []
    smooth = Slider(title=t("Smoothing"), start=0, end=0.99, step=0.01, value=0.6, width=220)

    def resmooth(src: ColumnDataSource) -> None:
        src.data["ys"] = ema(np.asarray(src.data["y"]), smooth.value)

    score_box = column(sizing_mode="stretch_width")
    shown: list[Any] = []  # the score chart on the page

    def draw_score(log: bool) -> None:
        """The score chart (drawn anew for a log axis: BokehJS does not switch one)."""
        for old in shown:
            lines.drop(old)
        shown.clear()
        smoothed.clear()
        fig = lines.chart(t("Score"), t, y_label=t("Score"), height=300, log_y=log)
        for i, s in enumerate(v.sessions):
            if "score" not in v.keys(s):
                continue
            src, raw = lines.line(fig, v.tail(s, "score"), v.label(s), color(i), width=1)
            raw.glyph.line_alpha = 0.35  # faint behind the smoothed line, as in TensorBoard
            resmooth(src)
            fig.line("iteration", "ys", source=src, color=color(i), line_width=2.2)
            smoothed.append(src)
            lines.after[src.id] = resmooth
        _mark_findings(v, fig)
        shown.append(fig)
        score_box.children = [lines.panel(fig)]

    def on_smooth(attr: str, old: float, new: float) -> None:
        for src in smoothed:
            resmooth(src)
    smooth.on_change("value_throttled", on_smooth)
    log_box = CheckboxGroup(labels=[t("Log scale")], active=[], name="log-scale")
    log_box.on_change("active", lambda a, o, n: draw_score(bool(n)))
    draw_score(False)

    metrics = lines.chart(t("Metrics (training score and logged metrics)"), t, height=260)
    k = 0
    for s in v.sessions:
        keys = v.keys(s)
        if "score" in keys:
            lines.line(metrics, v.tail(s, "score"), f"{v.label(s)}: {t('training score')}",
                       color(k), width=1.2)
            k += 1
        for key in keys:
            if key.startswith("metric/"):
                lines.line(metrics, v.tail(s, key), f"{v.label(s)}: {key[7:]}", color(k),
                           width=2.2, dash="dashed" if "acc" in key else "solid")
                k += 1
    children: list[Any] = [
        row(smooth, log_box), score_box,
        row(lines.panel(metrics), _info_table(v), sizing_mode="stretch_width")]
    first = v.sessions[0]
    keys, static = v.keys(first), v.static(first)
    params = tensor_names(keys, "param", static)
    ratio = lines.chart(f"{t('log10 update:param ratio per parameter (about -3 is healthy)')}: "
                        f"{v.label(first)}", t, height=280)
    ratio.add_layout(BoxAnnotation(bottom=-4, top=-2, fill_alpha=0.07, fill_color="green"))
    ratio.add_layout(Span(location=-3, dimension="width", line_dash="dotted", line_color="green"))
    for i, name in enumerate(weight_names(params)):
        if f"update/{name}/mean_magnitude" in keys:
            lines.line(ratio, v.tail(first, f"update/{name}/mean_magnitude",
                                     f"param/{name}/mean_magnitude", combine=log10_ratio),
                       name, color(i))
    children.append(lines.panel(ratio))
    stdev_row = []
    for kind, title in (("activation", "log10 stdev of activations"),
                        ("gradient", "log10 stdev of gradients"), ("update", "log10 stdev of updates")):
        fig = lines.chart(t(title), t, height=240)
        for i, name in enumerate(tensor_names(keys, kind, static)):
            if kind != "activation" and name.endswith("bias"):
                continue
            lines.line(fig, v.tail(first, f"{kind}/{name}/stdev", combine=log10), name, color(i))
        stdev_row.append(lines.panel(fig))
    children.append(row(*stdev_row, sizing_mode="stretch_width"))
    lr = lines.chart(t("Learning rate per parameter group"), t, height=220)
    k = 0
    for s in v.sessions:
        for key in v.keys(s):
            if key.startswith("lr/"):
                lines.line(lr, v.tail(s, key), f"{v.label(s)}: group {key[3:]}", color(k))
                k += 1
    children.append(lines.panel(lr))
    return Page(column(*children, sizing_mode="stretch_width"), lines)


def _mark_findings(v: View, fig: Any) -> None:
    """A vertical line where each finding began, coloured by severity."""
    colors = {"error": "#d62728", "warning": "#ff7f0e", "info": "#1f77b4"}
    for s in v.sessions:
        try:
            found = v.store.findings(s.id)
        except Exception:
            continue
        for _, f in found[:50]:
            fig.add_layout(Span(location=f.iteration, dimension="height", line_dash="dashed",
                                line_color=colors.get(f.severity, "#888"), line_width=1.5))


def _info_table(v: View) -> Any:
    """Model and training info of the first session: parameters, layers, optimizer,
    hyperparameters, software, hardware (escaped: names come from the user's code)."""
    s = v.sessions[0]
    last = max((w.last_update or 0 for w in s.workers), default=0) or None
    rows = [("session", v.t("started"), v.t.when(s.created)),
            ("session", v.t("last update"), v.t.when(last))] + model_rows(v.static(s))
    body = "".join(f"<tr><td class='ev-sec'>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td></tr>"
                   for a, b, c in rows)
    head = f"<b>{esc(v.t('Model and training'))}: {esc(v.label(s))}</b>"
    return div(f"{head}<table class='ev-info'>{body}</table>", width=420,
               styles={"max-height": "260px", "overflow-y": "auto"})


# ---------------------------------------------------------------------------- model
def model(v: View, layer: str | None = None, iteration: int | None = None) -> Page:
    """The layer graph as a selector, and the chosen layer's charts. ``layer`` may name a
    module or one of its parameters (a finding's layer)."""
    t = v.t
    s = v.sessions[0]
    keys, static = v.keys(s), v.static(s)
    params = tensor_names(keys, "param", static)
    acts = tensor_names(keys, "activation", static)
    if not params and not acts:
        return Page(note(t("No series of this kind in this session.")))
    table_rows = layer_rows(static)
    modules = [r["name"] for r in table_rows]
    for n in acts + [layer_of(p) for p in params]:  # (modules the table does not list)
        if (n or "(model)") not in modules:
            modules.append(n or "(model)")
            table_rows.append({"name": n or "(model)", "type": "", "n_params": 0, "params": "", "output": ""})
    charted = [m for m in modules if m in acts or any(layer_of(p) == m for p in params)]
    table = ColumnDataSource({k: [r[k] for r in table_rows]
                              for k in ("name", "type", "n_params", "params", "output")})
    graph = DataTable(source=table, height=min(40 + 25 * len(table_rows), 260), width=640,
                      index_position=None, name="layers", columns=[
        TableColumn(field="name", title=t("name")), TableColumn(field="type", title=t("type")),
        TableColumn(field="n_params", title=t("parameters")),
        TableColumn(field="params", title=t("shapes")), TableColumn(field="output", title=t("output"))])
    if layer is not None and layer not in charted:
        layer = layer_of(layer) if layer_of(layer) in charted else None
    pick = Select(title=t("Layer"), options=charted, value=layer or charted[0], width=200, name="layer")
    holder = column(sizing_mode="stretch_width")
    state: dict[str, Page] = {}

    def show(name: str, at: int | None = None) -> None:
        mine = [p for p in params if layer_of(p) == name]
        mine.sort(key=lambda p: not p.endswith("weight"))  # (the weight first)
        state["page"] = _layer_view(v, s, keys, name, mine, at)
        holder.children = [state["page"].layout]

    def on_row(attr: str, old: list[int], new: list[int]) -> None:
        if new and table.data["name"][new[0]] in charted:
            pick.value = table.data["name"][new[0]]
    table.selected.on_change("indices", on_row)
    pick.on_change("value", lambda a, o, n: show(n))
    show(pick.value, iteration)
    layout = column(div(f"<b>{esc(t('Layer graph'))}</b>: {esc(v.label(s))}"),
                    row(graph, pick), holder, sizing_mode="stretch_width")
    return Page(layout, None, [lambda: state["page"].poll()])


def _layer_view(v: View, s: SessionInfo, keys: list[str], module: str, params: list[str],
                at: int | None) -> Page:
    t = v.t
    lines = Lines(v.store, t)
    children: list[Any] = []
    name = params[0] if params else module
    if params:
        ratio = lines.chart(f"{t('Update:param ratio (log10) and its magnitudes')}: {module}", t,
                            height=240)
        ratio.add_layout(BoxAnnotation(bottom=-4, top=-2, fill_alpha=0.07, fill_color="green"))
        mags = lines.chart(f"{t('Update:param ratio (log10) and its magnitudes')}: {module}", t,
                           height=240, log_y=True)
        for i, p in enumerate(params):
            short = p.rsplit(".", 1)[-1]
            if f"update/{p}/mean_magnitude" in keys:
                lines.line(ratio, v.tail(s, f"update/{p}/mean_magnitude", f"param/{p}/mean_magnitude",
                                         combine=log10_ratio), f"{short} ratio", color(i), width=2.2)
                lines.line(mags, v.tail(s, f"update/{p}/mean_magnitude"),
                           f"{short} {t('mean |update|')}", color(i), dash="dashed")
            lines.line(mags, v.tail(s, f"param/{p}/mean_magnitude"), f"{short} {t('mean |param|')}",
                       color(i))
        children.append(row(lines.panel(ratio), lines.panel(mags), sizing_mode="stretch_width"))
    if f"activation/{module}/mean" in keys:
        act = lines.chart(t("Activation mean +/- 2 stdev"), t, height=240)
        mean, sd = f"activation/{module}/mean", f"activation/{module}/stdev"
        lines.line(act, v.tail(s, mean), "mean", color(0), width=2.2)
        lines.line(act, v.tail(s, mean, sd, combine=lambda m, d: m + 2 * d), "+2 stdev", color(0),
                   width=1, dash="dashed")
        lines.line(act, v.tail(s, mean, sd, combine=lambda m, d: m - 2 * d), "-2 stdev", color(0),
                   width=1, dash="dashed")
        dead = lines.chart(t("Dead units (zero fraction of the output)"), t, height=240)
        lines.line(dead, v.tail(s, f"activation/{module}/zero_fraction"), "zero fraction", color(3))
        children.append(row(lines.panel(act), lines.panel(dead), sizing_mode="stretch_width"))
    bad = lines.chart(t("NaN and Inf counts"), t, height=200)
    k = 0
    for kind in ("param", "gradient", "update", "activation"):
        for stat in ("nan_count", "inf_count"):
            key = f"{kind}/{module if kind == 'activation' else name}/{stat}"
            if key in keys:
                lines.line(bad, v.tail(s, key), f"{kind} {stat[:3]}", color(k))
                k += 1
    children.append(_histograms(v, s, keys, name, module, at))
    children.append(lines.panel(bad))
    return Page(column(*children, sizing_mode="stretch_width"), lines)


def _histograms(v: View, s: SessionInfo, keys: list[str], name: str, module: str,
                at: int | None) -> Any:
    """Each kind's histograms over time (bins by iteration) and the chosen iteration's:
    the parameter ``name``'s and the ``module``'s output's."""
    t = v.t
    target = {"param": name, "gradient": name, "update": name, "activation": module}
    kinds = [k for k in ("param", "gradient", "update", "activation")
             if f"{k}/{target[k]}/mean" in keys]
    labels = {"param": t("parameter values"), "gradient": t("gradients"),
              "update": t("updates"), "activation": t("activations")}
    figs, singles, its_all = [], [], []
    for kind in kinds:
        recs = v.store.read_histograms(s.id, f"{kind}/{target[kind]}", worker=v.worker)
        if not recs:
            continue
        image, lo, hi, its = histogram_grid(recs)
        span = max(int(its[-1] - its[0]), 1)
        fig = figure(title=f"{t('Histograms over time')}: {labels[kind]} {target[kind]}", height=230,
                     sizing_mode="stretch_width", tools=TOOLS, x_axis_label=t("Iteration"),
                     y_axis_label=t("value"))
        fig.toolbar.logo = None
        fig.image(image=[image], x=int(its[0]), y=lo, dw=span, dh=hi - lo,
                  color_mapper=LinearColorMapper(palette=Viridis256, low=0, high=1))
        figs.append(fig)
        hsrc = ColumnDataSource(_hist_cols(recs[-1]))
        one = figure(title=f"{t('Histogram at iteration')} {recs[-1].iteration}: {labels[kind]}",
                     height=230, width=330, tools=TOOLS, x_axis_label=t("value"),
                     y_axis_label=t("count"))
        one.toolbar.logo = None
        one.xaxis.ticker = BasicTicker(desired_num_ticks=4)
        one.quad(left="left", right="right", bottom=0, top="count", source=hsrc,
                 fill_color=color(kinds.index(kind)), line_color="white")
        singles.append((one, hsrc, recs, labels[kind]))
        its_all = list(its)
    if not figs:
        return Div()
    pos = len(its_all) - 1 if at is None else min(int(np.searchsorted(its_all, at)), len(its_all) - 1)
    # (the slider walks the reports; its title says which iteration)
    slider = Slider(title=f"{t('Iteration')} {its_all[pos]}", start=0, end=max(len(its_all) - 1, 1),
                    step=1, value=pos, width=400, show_value=False)

    def pick(attr: str, old: int, new: int) -> None:
        slider.title = f"{t('Iteration')} {its_all[min(int(new), len(its_all) - 1)]}"
        for one, hsrc, recs, label in singles:
            j = min(int(new), len(recs) - 1)
            hsrc.data = _hist_cols(recs[j])
            one.title = f"{t('Histogram at iteration')} {recs[j].iteration}: {label}"
    slider.on_change("value", pick)
    if at is not None:
        pick("value", 0, slider.value)
    return column(slider, *[row(f, one, sizing_mode="stretch_width")
                            for f, (one, *_rest) in zip(figs, singles)], sizing_mode="stretch_width")


def _hist_cols(rec: Any) -> dict:
    e = np.asarray(rec.histogram.edges, dtype=float)
    return {"left": e[:-1], "right": e[1:], "count": np.asarray(rec.histogram.counts)}


# ---------------------------------------------------------------------------- system
SYSTEM = (("Process memory (MB)", ("memory/rss_bytes",), 1 / 2**20),
          ("Device memory (MB)", ("memory/device_allocated_bytes", "memory/device_reserved_bytes"), 1 / 2**20),
          ("Iteration time (ms)", ("timing/iteration_ms",), 1.0),
          ("Examples per second", ("timing/examples_per_s", "timing/words_per_s"), 1.0),
          ("The listener's own cost (ms per reported iteration)",
           ("timing/listener_ms", "timing/listener_background_ms"), 1.0),
          ("Dropped and failed reports", ("monitor/dropped_reports", "monitor/failed_reports"), 1.0))


def system(v: View) -> Page:
    t = v.t
    lines = Lines(v.store, t)
    figs = []
    for title, wanted, scale in SYSTEM:
        fig = None
        k = 0
        for s in v.sessions:
            keys = v.keys(s)
            for key in wanted + tuple(x for x in keys if x.startswith("memory/device") and x not in wanted
                                      and "Device" in title):
                if key not in keys:
                    continue
                fig = fig or lines.chart(t(title), t, height=230)
                combine = (lambda x, f=scale: x * f) if scale != 1.0 else None
                lines.line(fig, v.tail(s, key, combine=combine),
                           f"{v.label(s)}: {key.split('/', 1)[1].replace('_bytes', '')}", color(k))
                k += 1
        if fig is not None:
            figs.append(fig)
    if not figs:
        return Page(note(t("No series of this kind in this session.")))
    grid = [row(*[lines.panel(f) for f in figs[i:i + 2]], sizing_mode="stretch_width")
            for i in range(0, len(figs), 2)]
    return Page(column(*grid, sizing_mode="stretch_width"), lines)


# ---------------------------------------------------------------------------- health
def health(v: View, go: Callable[[str | None, int], None] | None = None) -> Page:
    """The findings of the picked sessions, worst first; a row's button opens the model
    page at its layer and iteration."""
    t = v.t
    found = []
    for s in v.sessions:
        try:
            found += [(v.label(s), f) for _, f in v.store.findings(s.id)]
        except Exception:
            continue
    found.sort(key=lambda p: (SEVERITY_RANK.get(p[1].severity, 3), p[1].iteration))
    if not found:
        return Page(note(t("No findings in the store for these sessions: the health checks "
                           "have not run, or found nothing.")))
    src = ColumnDataSource({
        "severity": [f.severity for _, f in found], "check": [f.check for _, f in found],
        "session": [lab for lab, _ in found], "layer": [f.layer or "" for _, f in found],
        "iteration": [f.iteration for _, f in found], "message": [f.message for _, f in found]})
    table = DataTable(source=src, sizing_mode="stretch_width", height=400, index_position=None,
                      columns=[TableColumn(field="severity", title=t("severity"), width=70),
                               TableColumn(field="check", title=t("check"), width=130),
                               TableColumn(field="session", title=t("Session"), width=130),
                               TableColumn(field="layer", title=t("Layer"), width=90),
                               TableColumn(field="iteration", title=t("Iteration"), width=70),
                               TableColumn(field="message", title=t("message"), width=500)])
    button = Button(label=t("Show"), width=120, disabled=True, name="show-finding")

    def chosen(attr: str, old: list[int], new: list[int]) -> None:
        button.disabled = not new
    src.selected.on_change("indices", chosen)

    def open_it() -> None:
        idx = src.selected.indices
        if idx and go is not None:
            i = idx[0]
            go(src.data["layer"][i] or None, int(src.data["iteration"][i]))
    button.on_click(open_it)
    title = Div(text=f"<b>{esc(t('Findings, worst first'))}</b>")
    return Page(column(title, table, button, sizing_mode="stretch_width"))


__all__ = ["Page", "View", "health", "model", "overview", "system"]
