"""System: process and device memory, iteration time, examples per second, the listener's
own cost and its dropped or failed reports, mixed precision's skipped steps and loss scale,
for every session picked; what was not recorded (device memory on a CPU, examples per
second without a batch size) and how the cost budget spaced the reports, said in notes."""

from __future__ import annotations

from typing import Any

import numpy as np
from bokeh.layouts import row
from embedviz.server import explain
from embedviz.server.charts import ALL, palette
from embedviz.server.page import Context, Page, hint, note, stack

from embedviz.store import SessionInfo

#: (title, series keys or a key prefix ending in "/", scale, log axis)
CHARTS = (("Process memory (MB)", ("memory/rss_bytes",), 1 / 2**20, False),
          ("Device memory (MB)", ("memory/device",), 1 / 2**20, False),
          ("Iteration time (ms)", ("timing/iteration_ms",), 1.0, False),
          ("Examples per second", ("timing/examples_per_s", "timing/words_per_s"), 1.0, False),
          ("The listener's own cost (ms per reported iteration)",
           ("timing/listener_ms", "timing/listener_background_ms"), 1.0, False),
          ("Dropped and failed reports", ("monitor/dropped_reports", "monitor/failed_reports"),
           1.0, False),
          ("Mixed precision: steps skipped by the gradient scaler", ("amp/skipped_steps",),
           1.0, False),
          ("Mixed precision: loss scale", ("amp/scale",), 1.0, True))


def build(ctx: Context) -> Page:
    t = ctx.t
    several = len(ctx.sessions) > 1
    for title, wanted, scale, log in CHARTS:
        fig = None
        for s in ctx.sessions:
            keys = ctx.keys(s)
            found = sorted(k for k in keys if any(k == w or (w.endswith("device") and k.startswith(w))
                                                  for w in wanted))
            colors = palette(len(found))
            for i, key in enumerate(found):
                fig = fig or ctx.chart(t(title), height=230, log_axis=log)
                name = key.split("/", 1)[1].replace("_bytes", "")
                fig.add(s, ctx.worker_of(s) or "", f"{ctx.label(s)}: {name}" if several else name,
                        (key,), combine=(lambda x, f=scale: x * f) if scale != 1.0 else None,
                        color=ctx.color(s) if several else colors[i],
                        dash=("solid", "dashed", "dotted")[i % 3] if several else "solid")
    notes = _notes(ctx)
    if not ctx.charts:
        return Page(stack(*notes, note(t("No system series in the sessions picked: "
                                         "StatsListener records them with every report."))))
    for c in ctx.charts:
        c.load()
    panels = [c.panel() for c in ctx.charts]
    grid = [row(*panels[i:i + 2], sizing_mode="stretch_width") for i in range(0, len(panels), 2)]
    return Page(stack(*notes, *grid), list(ctx.charts))


def _notes(ctx: Context) -> list[Any]:
    """What the charts do not show and why: each said once (per session when several)."""
    t, several = ctx.t, len(ctx.sessions) > 1
    out = []
    spaced = explain.join(((ctx.label(s), explain.spaced(t, _report_every(ctx, s), ctx.static(s)))
                           for s in ctx.sessions), several)
    if spaced:
        out.append(hint(spaced, name="spaced-note"))
    for name, fn in (("device-note", explain.device_memory), ("examples-note", explain.examples)):
        text = explain.join(((ctx.label(s), fn(t, ctx.keys(s), ctx.static(s)))
                             for s in ctx.sessions), several)
        if text:
            out.append(hint(text, name=name))
    return out


def _report_every(ctx: Context, s: SessionInfo) -> float | None:
    """The widest spacing of reports the cost budget chose (``monitor/report_every``)."""
    if "monitor/report_every" not in ctx.keys(s):
        return None
    worker = ctx.worker_of(s)
    workers = ctx.provider.workers(s.id) if worker == ALL else [worker]
    most = None
    for w in workers:
        got = ctx.provider.read(s.id, w, ("monitor/report_every",), start=0)
        v = np.asarray(got["monitor/report_every"].values, dtype=float)
        v = v[np.isfinite(v)]
        if v.size:
            most = max(most or 0.0, float(v.max()))
    return most


__all__ = ["build"]
