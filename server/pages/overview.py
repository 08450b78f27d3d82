"""Overview: the score (smoothed, log axis, findings marked), the logged metrics beside the
training score, the model and training info of every session picked, the update:param
ratio per weight, the stdev of activations, gradients and updates, the learning rate."""

from __future__ import annotations

from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (  # type: ignore[attr-defined]
    BoxAnnotation,
    CheckboxGroup,
    ColumnDataSource,
    CustomJS,
    HoverTool,
    Slider,
    Span,
)
from embedviz.server import explain
from embedviz.server.charts import ALL, Chart, palette
from embedviz.server.data import log10, log10_ratio, model_rows
from embedviz.server.findings import describe, severity_color, severity_text
from embedviz.server.page import Context, Page, div, esc, hint, note, stack

from embedviz.health import SEVERITY_RANK
from embedviz.layers import tensor_names, weight_names
from embedviz.store import SessionInfo

FINDING_Y = 0.93  # a finding's marker: near the top of the score chart (its floor range)
FINDING_TIP = ("<div style='max-width:420px;white-space:normal'><b>@label</b><br>@message</div>")


def build(ctx: Context) -> Page:
    t = ctx.t
    shown = [s for s in ctx.sessions if ctx.keys(s)]
    if not shown:
        return Page(note(t("Nothing recorded yet in the sessions picked: the pages fill as a "
                           "training reports.")))
    score_box = column(sizing_mode="stretch_width")
    smooth = Slider(title=t("Smoothing"), start=0, end=0.99, step=0.01,
                    value=float(ctx.state.get("smooth", 0.6)), width=220, name="smoothing")
    log_box = CheckboxGroup(labels=[t("Log scale")], active=[0] if ctx.state.get("log") else [],
                            name="log-scale")
    page = Page(score_box)  # (its layout is set below; the score chart swaps itself)
    marks = Findings(ctx)
    page.polls.append(marks.poll)

    def draw_score(log: bool) -> None:
        old = [c for c in page.charts if c.fig.name == "score"]
        fig = _score(ctx, shown, log)
        fig.load()
        marks.attach(fig)
        smooth.js_on_change("value", CustomJS(args={"ema": fig.smoothing},
                                              code="if (ema) ema.args = {...ema.args, weight: cb_obj.value};"))
        if fig.smoothing is not None:
            fig.smoothing.args = {"weight": smooth.value}
        page.charts[:] = [fig if c in old else c for c in page.charts] if old else [fig, *page.charts]
        score_box.children = [fig.panel() if fig.lines else note(t(
            "No training score in the sessions picked: StatsListener records it when "
            "step(loss) is given the loss."))]

    def on_log(attr: str, old: list[int], new: list[int]) -> None:
        ctx.state["log"] = "1" if new else ""
        draw_score(bool(new))
        ctx.changed()

    def on_smooth(attr: str, old: float, new: float) -> None:
        ctx.state["smooth"] = f"{new:g}"
        ctx.changed()
    log_box.on_change("active", on_log)
    smooth.on_change("value_throttled", on_smooth)

    metrics = _metrics(ctx, shown)
    ratio = _ratio(ctx, shown)
    stdevs = [_stdev(ctx, shown, kind, title) for kind, title in STDEVS]
    lr = _lr(ctx, shown)
    for c in ctx.charts:
        c.load()
    page.charts += ctx.charts
    draw_score(bool(ctx.state.get("log")))
    several = len(shown) > 1

    def why(fn: Any) -> str | None:
        return explain.join(((ctx.label(s), fn(t, ctx.keys(s), ctx.static(s))) for s in shown),
                            several)
    how_updates = why(explain.updates)
    page.layout = stack(
        *_adversarial(ctx, shown, marks.found),
        row(smooth, log_box), score_box,
        row(_panel(ctx, metrics), _info(ctx, shown), sizing_mode="stretch_width"),
        _panel(ctx, ratio, how_updates or t("No update:param ratio: no parameter updates were "
                                            "recorded in the sessions picked.")),
        *([hint(how_updates, name="updates-note")] if how_updates and ratio.lines else []),
        row(*[_panel(ctx, c, why(explain.activations) if kind == "activation" else
                     (how_updates if kind == "update" else None))
              for c, (kind, _) in zip(stdevs, STDEVS)], sizing_mode="stretch_width"),
        _panel(ctx, lr, why(explain.lr) or t("No learning rate was recorded in the sessions "
                                            "picked.")))
    return page


STDEVS = (("activation", "log10 stdev of activations"), ("gradient", "log10 stdev of gradients"),
          ("update", "log10 stdev of updates"))


def _adversarial(ctx: Context, shown: list[SessionInfo], found: list[Any]) -> list[Any]:
    """A note for each session whose objective is adversarial (a GAN's G and D): said so
    (session or static info, a finding), or two of its workers (not ranks of one job)
    whose scores move against each other."""
    out = []
    for s in shown:
        workers = ctx.provider.workers(s.id)
        statics = [ctx.provider.static(s.id, w) for w in workers]
        if explain.adversarial(s, statics, found) or (
                len(workers) > 1 and not ctx.ranks(s) and ctx.provider.memo(
                    ("against", s.id), lambda s=s, workers=workers: _against(ctx, s, workers))):
            text = ctx.t(explain.ADVERSARIAL).format(workers=", ".join(workers))
            out.append(hint(f"{ctx.label(s)}: {text}" if len(shown) > 1 else text,
                            name="adversarial-note"))
    return out


def _against(ctx: Context, s: SessionInfo, workers: list[str]) -> bool:
    scores = []
    for w in workers:
        if "score" in ctx.provider.keys(s.id, w):
            got = ctx.provider.read(s.id, w, ("score",), max_points=1000)["score"]
            scores.append((got.iterations, got.values))
    return any(explain.against(a, b) for i, a in enumerate(scores) for b in scores[i + 1:])


def _panel(ctx: Context, chart: Chart, empty: str | None = None) -> Any:
    if chart.lines:
        return chart.panel()
    return note(empty or ctx.t("No series of this kind in the sessions picked."))


def _score(ctx: Context, shown: list[SessionInfo], log: bool) -> Chart:
    t = ctx.t
    # (made outside ctx.chart: it is replaced when the log axis is switched)
    fig = Chart(ctx.provider, t, t("Score"), x_range=ctx.x_range, y_label=t("Score"),
                height=300, log_axis=log, mode=ctx.mode, name="score")
    for s in shown:
        lines = _score_workers(ctx, s)
        for i, (worker, label) in enumerate(lines):
            keys = ctx.keys(s) if worker in (ALL, ctx.worker_of(s)) else ctx.provider.keys(s.id, worker)
            if "score" in keys:
                # (a session's workers: a colour each when it is the only session shown,
                # else its colour with a dash each)
                style = ({"color": palette(len(lines))[i]} if len(shown) == 1 and len(lines) > 1
                         else {"color": ctx.color(s), "dash": DASHES[i % len(DASHES)]})
                fig.add(s, worker, label, ("score",), width=1.2, smooth=True, **style)
    return fig


DASHES = ("solid", "dashed", "dotted", "dotdash")


def _score_workers(ctx: Context, s: SessionInfo) -> list[tuple[str, str]]:
    """(worker, label) of each score line of ``s``: the worker shown (or all of them as
    their spread), but every worker of a session of several models (a GAN's "G" and "D",
    whose losses are read together), each named."""
    workers = ctx.provider.workers(s.id)
    if len(workers) > 1 and not ctx.ranks(s):
        return [(w, f"{ctx.label(s)}: {ctx.t('worker')} {w}") for w in workers]
    return [(ctx.worker_of(s) or "", ctx.label(s))]


def _metrics(ctx: Context, shown: list[SessionInfo]) -> Chart:
    t = ctx.t
    fig = ctx.chart(t("Metrics (training score and logged metrics)"), height=260)
    several = len(shown) > 1
    for s in shown:
        keys = sorted(k for k in ctx.keys(s) if k.startswith("metric/"))
        colors = palette(len(keys) + 1)
        worker = ctx.worker_of(s) or ""
        prefix = f"{ctx.label(s)}: " if several else ""
        if "score" in ctx.keys(s):
            fig.add(s, worker, f"{prefix}{t('training score')}", ("score",), width=1.2,
                    color=ctx.color(s) if several else colors[0], alpha=0.6)
        for i, key in enumerate(keys):  # (several sessions: a colour each, a dash a metric)
            fig.add(s, worker, f"{prefix}{key[7:]}", (key,), width=2.2,
                    color=ctx.color(s) if several else colors[i + 1],
                    dash=DASHES[i % len(DASHES)] if several else
                    "dashed" if "acc" in key else "solid")
    return fig


def _lines_by_layer(ctx: Context, fig: Chart, shown: list[SessionInfo], names_of: Any,
                    make: Any) -> Chart:
    """One line per tensor of each session: coloured by depth for one session, by session
    (the legend naming sessions) for several."""
    several = len(shown) > 1
    for s in shown:
        names = names_of(s)
        colors = palette(len(names))
        for i, name in enumerate(names):
            keys, combine = make(name)
            if keys[0] not in ctx.keys(s):
                continue
            fig.add(s, ctx.worker_of(s) or "", f"{ctx.label(s)}: {name}" if several else name,
                    keys, combine=combine, log=True,
                    color=ctx.color(s) if several else colors[i],
                    legend=ctx.label(s) if several else None)
    return fig


def _ratio(ctx: Context, shown: list[SessionInfo]) -> Chart:
    fig = ctx.chart(ctx.t("log10 update:param ratio per parameter (about -3 is healthy)"),
                    height=280)
    fig.fig.add_layout(BoxAnnotation(bottom=-4, top=-2, fill_alpha=0.07, fill_color="green"))
    fig.fig.add_layout(Span(location=-3, dimension="width", line_dash="dotted", line_color="green"))

    def names(s: SessionInfo) -> list[str]:
        static = ctx.static(s)
        return weight_names(tensor_names(ctx.keys(s), "param", static), static)

    return _lines_by_layer(ctx, fig, shown, names, lambda n: (
        (f"update/{n}/mean_magnitude", f"param/{n}/mean_magnitude"), log10_ratio))


def _stdev(ctx: Context, shown: list[SessionInfo], kind: str, title: str) -> Chart:
    fig = ctx.chart(ctx.t(title), height=240)

    def names(s: SessionInfo) -> list[str]:
        static = ctx.static(s)
        found = tensor_names(ctx.keys(s), kind, static)
        return found if kind == "activation" else weight_names(found, static)

    return _lines_by_layer(ctx, fig, shown, names, lambda n: ((f"{kind}/{n}/stdev",), log10))


def _lr(ctx: Context, shown: list[SessionInfo]) -> Chart:
    fig = ctx.chart(ctx.t("Learning rate per parameter group"), height=220)
    several = len(shown) > 1
    for s in shown:
        keys = sorted(k for k in ctx.keys(s) if k.startswith("lr/"))
        colors = palette(len(keys))
        for i, key in enumerate(keys):
            label = f"{ctx.t('group')} {key[3:]}"
            fig.add(s, ctx.worker_of(s) or "", f"{ctx.label(s)}: {label}" if several else label,
                    (key,), color=ctx.color(s) if several else colors[i],
                    dash=("solid", "dashed", "dotted", "dotdash")[i % 4] if several else "solid")
    return fig


_OURS = {"model", "listener", "session"}


def _info(ctx: Context, shown: list[SessionInfo]) -> Any:
    """Model and training info, a column per session (escaped: every name and value comes
    from the user's code)."""
    t = ctx.t
    cols: list[dict[tuple[str, str], str]] = []
    for s in shown[:4]:
        last = s.last_update
        rows = {("session", "started"): t.when(s.created), ("session", "last update"): t.when(last)}
        worker = ctx.worker_of(s)
        if worker is not None and len(s.workers) > 1:
            rows[("session", "worker")] = (f"{t('all workers')} ({', '.join(w.worker for w in s.workers)})"
                                           if worker == ALL else worker)
        for name, value in sorted((s.tags or {}).items()):  # (hyperparameters, to compare runs)
            rows[("tags", str(name))] = str(value)
        for sec, name, value in model_rows(ctx.static(s)):
            rows[(sec, name)] = value
        cols.append(rows)
    order: list[tuple[str, str]] = []
    for c in cols:
        order += [k for k in c if k not in order]
    head = "".join(f"<th>{esc(ctx.label(s))}</th>" for s in shown[:4]) if len(shown) > 1 else ""
    body = []
    for sec, name in order:
        shown_name = t(name) if sec in _OURS or name == "type" else name
        cells = "".join(f"<td>{esc(c.get((sec, name), ''))}</td>" for c in cols)
        body.append(f"<tr><td class='ev-sec'>{esc(t(sec))}</td><td>{esc(shown_name)}</td>{cells}</tr>")
    title = (f"<b>{esc(t('Model and training'))}</b>" if len(shown) > 1 else
             f"<b>{esc(t('Model and training'))}: {esc(ctx.label(shown[0]))}</b>")
    table = (f"{title}<table class='ev-info'>{'<tr><th></th><th></th>' + head + '</tr>' if head else ''}"
             f"{''.join(body)}</table>")
    return div(table, width=460, styles={"max-height": "280px", "overflow-y": "auto"}, name="info")


class Findings:
    """The findings of the sessions shown, marked on the score chart where each began: a
    line the height of the chart in its severity's colour, its check's name, and a hover
    with its message; new findings join as they are written."""

    COLUMNS = ("i", "t", "y", "check", "severity", "color", "layer", "message", "label")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.chart: Chart | None = None
        self.sources: dict[tuple[str, str], ColumnDataSource] = {}
        self.cursor, self.found = 0, []
        ids = {s.id for s in ctx.sessions}
        for c, f in ctx.provider.findings():
            self.cursor = max(self.cursor, c)
            if f.session in ids:
                self.found.append(f)

    def attach(self, chart: Chart) -> None:
        """Draw the markers on ``chart`` (again, when the chart was drawn anew)."""
        self.chart = chart
        self.sources = {}
        # (a template, so that a long message wraps; Bokeh escapes each @field in it)
        hover = HoverTool(renderers=[], tooltips=FINDING_TIP)
        for g in chart.groups:
            src = ColumnDataSource({c: [] for c in self.COLUMNS})
            self.sources[(g.session.id, g.worker)] = src
            seg = chart.fig.segment(g.x(None, chart.mode), 0, g.x(None, chart.mode), 1, source=src,
                                    y_range_name="floor", line_color="color", line_dash="dashed",
                                    line_alpha=0.7, line_width=1.5)
            tri = chart.fig.scatter(g.x(None, chart.mode), "y", source=src, y_range_name="floor",
                                    marker="inverted_triangle", size=11, color="color")
            txt = chart.fig.text(g.x(None, chart.mode), "y", text="check", source=src,
                                 y_range_name="floor", x_offset=7, y_offset=2, text_font_size="8pt",
                                 text_color="color", text_baseline="middle")
            g.extra += [seg, tri, txt]
            hover.renderers = [*hover.renderers, tri, seg]
        chart.fig.add_tools(hover)
        self._add(self.found)

    def poll(self) -> None:
        new = self.ctx.provider.findings(self.cursor)
        if not new:
            return
        self.cursor = max(c for c, _ in new)
        ids = {s.id for s in self.ctx.sessions}
        fresh = [f for _, f in new if f.session in ids]
        self.found += fresh
        self._add(fresh, stream=True)

    def _add(self, found: list[Any], stream: bool = False) -> None:
        if self.chart is None:
            return
        t = self.ctx.t
        for g in self.chart.groups:
            # (a spread's markers are every worker's findings; a session of several workers
            # names the worker of each)
            mine = [f for f in found if f.session == g.session.id
                    and (f.worker == g.worker or (g.worker == ALL and f.worker in g.workers))]
            named = len(self.ctx.provider.workers(g.session.id)) > 1
            mine.sort(key=lambda f: (SEVERITY_RANK.get(f.severity, 3), f.iteration))
            if not mine:
                continue
            its = np.array([f.iteration for f in mine], dtype=float)
            c = g.overview[0] if g.overview else None
            ts = (np.interp(its, c["i"].astype(float), c["t"]) if c is not None and len(c["i"])
                  else np.array([f.wall_time * 1000.0 for f in mine]))
            # (stacked in time order: labels of findings close together do not overprint;
            # an info finding has its marker and hover, no label)
            order = np.argsort(its, kind="stable")
            ys = np.empty(len(mine))
            ys[order] = FINDING_Y - 0.07 * (np.arange(len(mine)) % 6)
            data = {"i": its.tolist(), "t": ts.tolist(), "y": ys.tolist(),
                    "check": [f.check if f.severity != "info" else "" for f in mine],
                    "severity": [f.severity for f in mine],
                    "color": [severity_color(f.severity) for f in mine],
                    "layer": [f.layer or "" for f in mine],
                    "message": [describe(f, t.lang) for f in mine],
                    "label": [f"{severity_text(f.severity, t.lang)}: {f.check}"
                              + (f" ({f.layer})" if f.layer else "")
                              + (f" [{t('worker')} {f.worker}]" if named else "") for f in mine]}
            if named:  # (the label drawn on the chart names the worker too)
                data["check"] = [f"{c} [{f.worker}]" if c else c for c, f in zip(data["check"], mine)]
            src = self.sources[(g.session.id, g.worker)]
            if stream:
                src.stream(data)
            else:
                src.data = data


__all__ = ["build"]
