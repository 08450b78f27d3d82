"""Model: the layer table as a selector; for the chosen layer, in every session picked, its
update:param ratio and the two magnitudes, activation mean +/- 2 stdev, dead units, NaN/Inf
counts, the learning rate, and its histograms over time with any report's histogram."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (  # type: ignore[attr-defined]
    BasicTicker,
    BoxAnnotation,
    ColumnDataSource,
    DataTable,
    LinearColorMapper,
    PrintfTickFormatter,
    Select,
    Slider,
    TableColumn,
)
from bokeh.palettes import Viridis256
from bokeh.plotting import figure
from embedviz.server import explain
from embedviz.server.charts import ALL, TOOLS, Chart, palette, set_x_axis
from embedviz.server.data import histogram_grid, layer_rows, log10_ratio
from embedviz.server.page import Context, Page, div, esc, hint, note, stack

from embedviz.layers import forward_order, layer_of, tensor_names
from embedviz.store import HistogramRecord, SessionInfo

#: reports a histogram image holds at most (evenly spaced over the run)
HIST_COLUMNS = 400
DASHES = ("solid", "dashed", "dotted", "dotdash")


def build(ctx: Context) -> Page:
    t = ctx.t
    shown = [s for s in ctx.sessions if ctx.keys(s)]
    first = shown[0] if shown else None
    keys, static = (ctx.keys(first), ctx.static(first)) if first else (frozenset(), {})
    params = tensor_names(keys, "param", static)
    acts = tensor_names(keys, "activation", static)
    if first is None or not (params or acts):
        return Page(note(t("No per-layer statistics in the sessions picked (a word2vec run "
                           "records its loss only): record a training with StatsListener.")))
    # (in the order the forward pass ran them, as the health checks name them)
    rank = {m or "(model)": i for i, m in enumerate(forward_order(static))}
    table_rows = sorted(layer_rows(static), key=lambda r: rank.get(r["name"], len(rank)))
    modules = [r["name"] for r in table_rows]
    for n in acts + [layer_of(p) for p in params]:  # (modules the table does not list)
        if (n or "(model)") not in modules:
            modules.append(n or "(model)")
            table_rows.append({"name": n or "(model)", "type": "", "n_params": "", "params": "",
                               "output": ""})
    charted = [m for m in modules
               if _own(m) in acts or any(layer_of(p) == _own(m) for p in params)]
    asked = ctx.state.get("layer")
    if asked not in charted:
        with_params = [m for m in charted if any(layer_of(p) == _own(m) for p in params)]
        asked = (layer_of(asked) if asked and layer_of(asked) in charted
                 else (with_params or charted)[0])
    table = ColumnDataSource({k: [r[k] for r in table_rows]
                              for k in ("name", "type", "n_params", "params", "output")})
    graph = DataTable(source=table, height=min(40 + 25 * len(table_rows), 260), width=640,
                      index_position=None, name="layers", columns=[
        TableColumn(field="name", title=t("name")), TableColumn(field="type", title=t("type")),
        TableColumn(field="n_params", title=t("parameters")),
        TableColumn(field="params", title=t("shapes")), TableColumn(field="output", title=t("output"))])
    pick = Select(title=t("Layer"), options=charted, value=asked, width=200, name="layer")
    holder = column(sizing_mode="stretch_width")
    current: dict[str, Page] = {}

    def show(module: str, at: int | None) -> None:
        old = current.get("page")
        if old is not None:
            old.close()
        sub = dataclasses.replace(ctx, charts=[])
        current["page"] = _layer(sub, shown, params, acts, module, at)
        holder.children = [current["page"].layout]

    def on_row(attr: str, old: list[int], new: list[int]) -> None:
        if new and table.data["name"][new[0]] in charted:
            pick.value = table.data["name"][new[0]]
    table.selected.on_change("indices", on_row)

    def on_pick(attr: str, old: str, new: str) -> None:
        ctx.state["layer"] = new
        ctx.state.pop("it", None)
        show(new, None)
        ctx.changed()
    pick.on_change("value", on_pick)
    ctx.state["layer"] = asked
    at = ctx.state.get("it")
    show(asked, int(at) if at and at.lstrip("-").isdigit() else None)
    title = div(f"<b>{esc(t('Layer graph'))}</b>: " + ", ".join(esc(ctx.label(s)) for s in shown[:1]))
    page = Page(stack(title, row(graph, pick), holder))
    page.polls.append(lambda: current["page"].poll())
    page.modes.append(lambda m: current["page"].set_mode(m))
    page.zooms.append(lambda a, b: current["page"].zoom(a, b))
    return page


def _own(module: str) -> str:
    return "" if module == "(model)" else module


def _layer(ctx: Context, shown: list[SessionInfo], params: list[str], acts: list[str],
           module: str, at: int | None) -> Page:
    t = ctx.t
    own = _own(module)
    mine = [p for p in params if layer_of(p) == own]
    mine.sort(key=lambda p: not p.rpartition(".")[2].startswith("weight"))  # (weights first)
    several = len(shown) > 1
    children: list[Any] = []

    def style(s: SessionInfo, i: int, n: int) -> dict:
        """A session's colour with a dash per tensor, or a colour per tensor for one."""
        return ({"color": ctx.color(s), "dash": DASHES[i % len(DASHES)]} if several
                else {"color": palette(n)[i]})

    def name(s: SessionInfo, text: str) -> str:
        return f"{ctx.label(s)}: {text}" if several else text

    def why(fn: Any, *args: Any) -> str | None:
        """Why a chart is empty, for every session shown (None: nothing to say)."""
        return explain.join(((ctx.label(s), fn(t, *args, ctx.keys(s), ctx.static(s)))
                             for s in shown), several)
    how_updates = why(explain.updates)

    if mine:
        ratio = ctx.chart(f"{t('Update:param ratio (log10)')}: {module}", height=240)
        ratio.fig.add_layout(BoxAnnotation(bottom=-4, top=-2, fill_alpha=0.07, fill_color="green"))
        mags = ctx.chart(f"{t('Mean magnitude of parameters and updates')}: {module}",
                         height=240, log_axis=True)
        for s in shown:
            keys, worker = ctx.keys(s), ctx.worker_of(s) or ""
            for i, p in enumerate(mine):
                short = p.rpartition(".")[2]
                if f"update/{p}/mean_magnitude" in keys:
                    ratio.add(s, worker, name(s, short), (f"update/{p}/mean_magnitude",
                              f"param/{p}/mean_magnitude"), combine=log10_ratio, log=True,
                              width=2.2, **style(s, i, len(mine)))
                    mags.add(s, worker, name(s, f"{short} {t('mean |update|')}"),
                             (f"update/{p}/mean_magnitude",), width=1.2,
                             **{**style(s, i, len(mine)), "dash": "dashed"})
                if f"param/{p}/mean_magnitude" in keys:
                    mags.add(s, worker, name(s, f"{short} {t('mean |param|')}"),
                             (f"param/{p}/mean_magnitude",), width=2.0,
                             **{**style(s, i, len(mine)), "dash": "solid"})
        children.append(row(_panel(ctx, ratio, how_updates), _panel(ctx, mags, how_updates),
                            sizing_mode="stretch_width"))
        if how_updates and ratio.lines:  # (measured without an optimizer: say how)
            children.append(hint(how_updates, name="updates-note"))
    no_acts = why(explain.activations)
    if own not in acts and no_acts:
        children.append(hint(no_acts, name="activations-note"))
    if own in acts:
        act = ctx.chart(f"{t('Activation mean +/- 2 stdev')}: {module}", height=240)
        dead = ctx.chart(f"{t('Dead units (zero fraction of the output)')}: {module}", height=240)
        mean, sd = f"activation/{own}/mean", f"activation/{own}/stdev"
        for s in shown:
            worker, c = ctx.worker_of(s) or "", ctx.color(s) if several else palette(1)[0]
            if mean not in ctx.keys(s):
                continue
            act.add(s, worker, name(s, t("mean")), (mean,), color=c, width=2.2,
                    legend=ctx.label(s) if several else None)
            act.add(s, worker, name(s, "+2 stdev"), (mean, sd), combine=lambda m, d: m + 2 * d,
                    color=c, width=1, dash="dashed", legend=ctx.label(s) if several else None)
            act.add(s, worker, name(s, "-2 stdev"), (mean, sd), combine=lambda m, d: m - 2 * d,
                    color=c, width=1, dash="dashed", legend=ctx.label(s) if several else None)
            dead.add(s, worker, name(s, t("zero fraction")), (f"activation/{own}/zero_fraction",),
                     color=ctx.color(s) if several else palette(4)[3])
        children.append(row(_panel(ctx, act), _panel(ctx, dead), sizing_mode="stretch_width"))
    hist = _histograms(ctx, shown, mine[0] if mine else None, own if own in acts else None,
                       module, at)
    no_hist = explain.join(((ctx.label(s), explain.histograms(t, ctx.static(s))) for s in shown),
                           several)
    if no_hist:
        children.append(hint(no_hist, name="histograms-note"))
    bad = ctx.chart(f"{t('NaN and Inf counts')}: {module}", height=200)
    lr = ctx.chart(t("Learning rate per parameter group"), height=200)
    kinds = [(k, s_) for k in ("param", "gradient", "update", "activation")
             for s_ in ("nan_count", "inf_count")]
    for s in shown:
        keys, worker = ctx.keys(s), ctx.worker_of(s) or ""
        found = [(k, st) for k, st in kinds
                 if f"{k}/{own if k == 'activation' else (mine[0] if mine else '')}/{st}" in keys]
        for i, (kind, stat) in enumerate(found):
            target = own if kind == "activation" else mine[0]
            bad.add(s, worker, name(s, f"{t(kind)} {stat[:3]}"), (f"{kind}/{target}/{stat}",),
                    **style(s, i, len(found)))
        lrs = sorted(k for k in keys if k.startswith("lr/"))
        for i, key in enumerate(lrs):
            lr.add(s, worker, name(s, f"{t('group')} {key[3:]}"), (key,), **style(s, i, len(lrs)))
    for c in ctx.charts:
        c.load()
    children += [hist.layout, row(_panel(ctx, bad), _panel(ctx, lr, why(explain.lr)),
                                  sizing_mode="stretch_width")]
    return Page(stack(*children), list(ctx.charts), modes=hist.modes)


def _panel(ctx: Context, chart: Chart, empty: str | None = None) -> Any:
    """The chart, or why it is empty (``empty``: what was not recorded, and how to)."""
    return chart.panel() if chart.lines else note(
        empty or ctx.t("No series of this kind in the sessions picked."))


def _histograms(ctx: Context, shown: list[SessionInfo], param: str | None, act: str | None,
                module: str, at: int | None) -> Page:
    """Each kind's histograms over time (a column per report, bins by value) and the
    histogram of the report the slider picks, for every session picked."""
    t = ctx.t
    target = {"param": param, "gradient": param, "update": param, "activation": act}
    labels = {"param": t("parameter values"), "gradient": t("gradients"),
              "update": t("updates"), "activation": t("activations")}
    rows_: list[Any] = []
    images: list[tuple[Any, Any, SessionInfo, np.ndarray]] = []
    singles: list[tuple[Any, ColumnDataSource, list[HistogramRecord], str]] = []
    reference: list[HistogramRecord] = []
    for kind in ("param", "gradient", "update", "activation"):
        name = target[kind]
        for s in shown:
            # (histograms have no spread: all workers shown, those of the first)
            worker = ctx.one_worker(s)
            if name is None or worker is None or f"{kind}/{name}/mean" not in ctx.provider.keys(s.id, worker):
                continue
            recs = _thin(ctx.provider.histograms(s.id, worker, f"{kind}/{name}"))
            if not recs:
                continue
            reference = reference or recs
            image, lo, hi, its = histogram_grid(recs)
            who = f" ({ctx.label(s)})" if len(shown) > 1 else ""
            if ctx.worker_of(s) == ALL:
                who += f" ({t('worker')} {worker})"
            fig = figure(title=f"{t('Histograms over time')}: {labels[kind]} {name or module}{who}",
                         height=220, sizing_mode="stretch_width", tools=TOOLS, x_range=ctx.x_range,
                         y_axis_label=t("value"))
            fig.toolbar.logo = None
            r = fig.image(image=[image], x=0, y=lo, dw=1, dh=hi - lo,
                          color_mapper=LinearColorMapper(palette=Viridis256, low=0, high=1))
            walls = np.array([x.wall_time for x in recs], dtype=float)
            images.append((r, fig, s, np.stack([its.astype(float), walls])))
            set_x_axis([fig], ctx.mode, t)
            one = figure(title="", height=220, width=330, tools="save", x_axis_label=t("value"),
                         y_axis_label=t("count"))
            one.toolbar.logo = None
            one.xaxis.ticker = BasicTicker(desired_num_ticks=4)
            one.xaxis.formatter = PrintfTickFormatter(format="%.3g")
            src = ColumnDataSource(_hist_cols(recs[-1]))
            one.quad(left="left", right="right", bottom=0, top="count", source=src,
                     fill_color=ctx.color(s) if len(shown) > 1 else palette(4)[len(singles) % 4],
                     line_color="white")
            singles.append((one, src, recs, f"{labels[kind]}{who}"))
            rows_.append(row(fig, one, sizing_mode="stretch_width"))
    if not singles:
        return Page(div(""))

    def place(mode: str) -> None:
        for r, fig, s, xs in images:
            x = xs[0] if mode == "iteration" else (
                xs[1] * 1000.0 if mode == "wall" else xs[1] - s.created)
            # (column j centred on report j: the image spans half a step beyond each end)
            step = float(x[-1] - x[0]) / (len(x) - 1) if len(x) > 1 else 1.0
            step = step if step > 0 else 1.0
            r.glyph.x, r.glyph.dw = float(x[0]) - step / 2, step * len(x)
            set_x_axis([fig], mode, t)
    its = [r.iteration for r in reference]
    pos = len(its) - 1 if at is None else min(int(np.searchsorted(its, at)), len(its) - 1)
    slider = Slider(title="", start=0, end=max(len(its) - 1, 1), step=1, value=pos, width=420,
                    show_value=False, name="histogram-report")

    def pick(attr: str, old: int, new: int) -> None:
        j = min(int(new), len(its) - 1)
        slider.title = f"{t('Iteration')} {its[j]:,} ({j + 1} / {len(its)})"
        for one, src, recs, label in singles:
            k = min(int(np.searchsorted([r.iteration for r in recs], its[j])), len(recs) - 1)
            src.data = _hist_cols(recs[k])
            one.title.text = f"{t('Histogram at iteration')} {recs[k].iteration:,}: {label}"
        if attr == "value":
            ctx.state["it"] = str(its[j])
            ctx.changed()
    slider.on_change("value", pick)
    pick("", 0, pos)
    place(ctx.mode)
    return Page(column(slider, *rows_, sizing_mode="stretch_width"), modes=[place])


def _thin(recs: list[HistogramRecord]) -> list[HistogramRecord]:
    if len(recs) <= HIST_COLUMNS:
        return recs
    idx = np.unique(np.linspace(0, len(recs) - 1, HIST_COLUMNS).round().astype(int))
    return [recs[i] for i in idx]


#: bins of one histogram drawn when its own are uneven
EVEN_BINS = 50


def _hist_cols(rec: HistogramRecord) -> dict:
    """One report's histogram as bars. Uneven bins (TensorBoard's default buckets grow
    exponentially away from zero) are drawn as EVEN_BINS even ones over the same range,
    each bin's count spread uniformly over its width (as TensorBoard draws them): bars of
    uneven widths read as counts would mislead the eye."""
    e = np.asarray(rec.histogram.edges, dtype=float)
    counts = np.asarray(rec.histogram.counts, dtype=float)
    widths = np.diff(e)
    if len(widths) > 1 and widths.max() > 2 * widths.min():
        grid = np.linspace(e[0], e[-1], EVEN_BINS + 1)
        cdf = np.concatenate([[0.0], np.cumsum(counts)])
        return {"left": grid[:-1], "right": grid[1:], "count": np.diff(np.interp(grid, e, cdf))}
    return {"left": e[:-1], "right": e[1:], "count": counts}


__all__ = ["build"]
