"""System: process and device memory, iteration time, examples per second, the listener's
own cost and its dropped or failed reports, for every session picked."""

from __future__ import annotations

from bokeh.layouts import row
from embedviz.server.charts import palette
from embedviz.server.page import Context, Page, note, stack

#: (title, series keys or a key prefix ending in "/", scale)
CHARTS = (("Process memory (MB)", ("memory/rss_bytes",), 1 / 2**20),
          ("Device memory (MB)", ("memory/device",), 1 / 2**20),
          ("Iteration time (ms)", ("timing/iteration_ms",), 1.0),
          ("Examples per second", ("timing/examples_per_s", "timing/words_per_s"), 1.0),
          ("The listener's own cost (ms per reported iteration)",
           ("timing/listener_ms", "timing/listener_background_ms"), 1.0),
          ("Dropped and failed reports", ("monitor/dropped_reports", "monitor/failed_reports"), 1.0))


def build(ctx: Context) -> Page:
    t = ctx.t
    several = len(ctx.sessions) > 1
    for title, wanted, scale in CHARTS:
        fig = None
        for s in ctx.sessions:
            keys = ctx.keys(s)
            found = sorted(k for k in keys if any(k == w or (w.endswith("device") and k.startswith(w))
                                                  for w in wanted))
            colors = palette(len(found))
            for i, key in enumerate(found):
                fig = fig or ctx.chart(t(title), height=230)
                name = key.split("/", 1)[1].replace("_bytes", "")
                fig.add(s, ctx.worker_of(s) or "", f"{ctx.label(s)}: {name}" if several else name,
                        (key,), combine=(lambda x, f=scale: x * f) if scale != 1.0 else None,
                        color=ctx.color(s) if several else colors[i],
                        dash=("solid", "dashed", "dotted")[i % 3] if several else "solid")
    if not ctx.charts:
        return Page(note(t("No system series in the sessions picked: StatsListener records "
                           "them with every report.")))
    for c in ctx.charts:
        c.load()
    panels = [c.panel() for c in ctx.charts]
    grid = [row(*panels[i:i + 2], sizing_mode="stretch_width") for i in range(0, len(panels), 2)]
    return Page(stack(*grid), list(ctx.charts))


__all__ = ["build"]
