"""What every page is built from (:class:`Context`) and what it gives back (:class:`Page`).

A page is a module of ``embedviz.server.pages`` with ``build(ctx) -> Page``. It reads only
through ``ctx.provider`` (the server's read layer), draws its charts with :meth:`Context.chart`
(which share the page's x range and x-axis mode), keeps what a link should reopen in
``ctx.state`` (the page's part of the URL) and calls ``ctx.changed()`` when that moves.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bokeh.layouts import column
from bokeh.models import DataRange1d, Div, InlineStyleSheet  # type: ignore[attr-defined]
from embedviz.server.charts import ALL, Chart, session_color
from embedviz.server.messages import Messages
from embedviz.server.provider import Provider

from embedviz.records import split_stat_key
from embedviz.store import SessionInfo

log = logging.getLogger("embedviz.server")

#: Bokeh draws each Div in a shadow root: page CSS does not reach it, so the Divs carry this
CSS = """
  .ev-head { font-size: 15px; padding: 4px 0 8px; border-bottom: 1px solid #ddd; }
  .ev-note { color: #555; font-size: 14px; padding: 16px; background: #f6f6f6; margin: 8px 0; }
  .ev-hint { color: #444; font-size: 13px; padding: 5px 10px; background: #f3f7fb; margin: 2px 0;
             border-left: 3px solid #9ecae1; }
  .ev-error { color: #8a1f11; font-size: 14px; padding: 16px; background: #fdecea; margin: 8px 0; }
  .ev-info { border-collapse: collapse; font-size: 12px; }
  .ev-info td, .ev-info th { padding: 1px 6px; border-bottom: 1px solid #eee; text-align: left;
                             vertical-align: top; }
  .ev-sec { color: #888; }
  .ev-swatch { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 10px;
               border-radius: 2px; }
"""


def esc(text: Any) -> str:
    """Text from the store (words, names, messages) made safe for a Div's HTML."""
    return html.escape(str(text), quote=True)


def div(text: str, **kw: Any) -> Div:
    """A Div of trusted HTML: escape everything from the store with :func:`esc`."""
    return Div(text=text, stylesheets=[InlineStyleSheet(css=CSS)], **kw)  # (a model per document)


def note(text: str, *, error: bool = False, name: str | None = None) -> Div:
    """A plain sentence where a chart would be (no data, no sessions, or what failed)."""
    cls = "ev-error" if error else "ev-note"
    return div(f'<p class="{cls}">{esc(text)}</p>', sizing_mode="stretch_width", name=name)


def hint(text: str, *, name: str | None = None) -> Div:
    """A short sentence beside what a page shows: how it was measured, what was not
    recorded and how to record it (text: escaped here)."""
    return div(f'<p class="ev-hint">{esc(text)}</p>', sizing_mode="stretch_width", name=name)


class Reactions:
    """Widgets whose on_change reactions are muted while the code itself sets them (a
    page or tab moving its own pickers)."""

    _quiet = False

    def silently(self, widget: Any, attr: str, value: Any) -> None:
        """Set a widget's property without running this object's reaction to it."""
        self._quiet = True
        try:
            setattr(widget, attr, value)
        finally:
            self._quiet = False

    def guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        """``fn`` as an on_change callback that does not run while muted."""
        def run(attr: str, old: Any, new: Any) -> None:
            if not self._quiet:
                fn(attr, old, new)
        return run


@dataclass
class Context:
    """What a page is built from; one per page build."""

    provider: Provider
    t: Messages
    sessions: list[SessionInfo]
    worker: str | None = None
    mode: str = "iteration"
    state: dict[str, str] = field(default_factory=dict)
    jobs: Any = None
    owner: str = ""
    #: go(page, sessions=[ids], worker=..., **state): open another page
    go: Callable[..., None] = lambda *a, **k: None
    #: the page's URL state changed
    changed: Callable[[], None] = lambda: None
    charts: list[Chart] = field(default_factory=list)
    x_range: Any = field(default_factory=DataRange1d)

    def worker_of(self, s: SessionInfo) -> str | None:
        """The worker shown for ``s``: the one picked where it has it, else its first;
        :data:`ALL` ("all workers" picked, for a session that has several: charts draw
        their spread)."""
        if self.worker == ALL and len(self.provider.workers(s.id)) > 1:
            return ALL
        return self.provider.worker(s.id, self.worker)

    def one_worker(self, s: SessionInfo) -> str | None:
        """A real worker of ``s`` for what has no spread (histograms, static info): the
        one shown, or its first when all are."""
        w = self.worker_of(s)
        return self.provider.worker(s.id) if w == ALL else w

    def several_workers(self, s: SessionInfo) -> bool:
        return len(self.provider.workers(s.id)) > 1

    def ranks(self, s: SessionInfo) -> bool:
        """Whether ``s``'s workers are the ranks of one torch.distributed job (a worker's
        static info says ``distributed`` with a world size above 1), not several models
        (a GAN's "G" and "D")."""
        for w in self.provider.workers(s.id):
            d = self.provider.static(s.id, w).get("distributed")
            if isinstance(d, dict) and isinstance(d.get("world_size"), int) and d["world_size"] > 1:
                return True
        return False

    def color(self, s: SessionInfo) -> str:
        """A session's colour, the same on every chart of every page: by its place among
        the sessions picked in the store's order (the picker's), so that opening a page
        with another session first (a finding's "Show") changes no colour."""
        ordered = sorted(self.sessions, key=lambda x: (x.created, x.id))
        ids = [x.id for x in ordered]
        return session_color(ids.index(s.id) if s.id in ids else len(ids))

    def label(self, s: SessionInfo) -> str:
        return s.name or s.id

    def keys(self, s: SessionInfo) -> frozenset[str]:
        """The series keys of the worker shown (every worker's, for all of them)."""
        if self.worker_of(s) == ALL:
            keys = frozenset().union(*(self.provider.keys(s.id, w)
                                       for w in self.provider.workers(s.id)))
        else:
            keys = self.provider.keys(s.id, self.worker_of(s))
        # (statistics a session's source never had, e.g. TensorBoard's histograms keep no mean
        # magnitude: their all-NaN columns are not series, nor NaN to mark)
        absent = s.info.get("absent_stats") if isinstance(s.info, dict) else None
        if absent and isinstance(absent, list):
            gone = {str(a) for a in absent}
            keys = frozenset(k for k in keys
                             if (st := split_stat_key(k)) is None or st[1] not in gone)
        return keys

    def static(self, s: SessionInfo) -> dict:
        return self.provider.static(s.id, self.one_worker(s))

    def chart(self, title: str, **kw: Any) -> Chart:
        """A live chart on this page's shared x range, in its x-axis mode."""
        c = Chart(self.provider, self.t, title, x_range=self.x_range, mode=self.mode, **kw)
        self.charts.append(c)
        return c


@dataclass
class Page:
    """A built page: its layout, its live charts, and more live work (``polls``) and
    x-axis hooks (``modes``) of its own."""

    layout: Any
    charts: list[Chart] = field(default_factory=list)
    polls: list[Callable[[], Any]] = field(default_factory=list)
    modes: list[Callable[[str], None]] = field(default_factory=list)
    zooms: list[Callable[[float, float], None]] = field(default_factory=list)
    close: Callable[[], None] = lambda: None
    view: Any = None  # (the object behind a page that has one: its state, for tests)

    def poll(self, changed: bool = True) -> int:
        """Stream what is new; the charts only when the store ``changed`` (their other
        reads would find nothing)."""
        n = sum(c.poll() for c in self.charts) if changed else 0
        for p in self.polls:
            p()
        return n

    def set_mode(self, mode: str) -> None:
        for c in self.charts:
            c.set_mode(mode)
        for m in self.modes:
            m(mode)

    def zoom(self, x0: float, x1: float) -> None:
        for step in self.zoom_steps(x0, x1):
            step()

    def covers(self, x0: float, x1: float) -> bool:
        """Whether the window [x0, x1] shows every chart whole (what reset does)."""
        return all(c.covers(x0, x1) for c in self.charts)

    def zoom_steps(self, x0: float, x1: float) -> list[Callable[[], None]]:
        """The zoom chart by chart, in the page's order (so the top chart can be sent
        before the others are read)."""
        steps: list[Callable[[], None]] = [functools.partial(c.zoom, x0, x1) for c in self.charts]
        return steps + [functools.partial(z, x0, x1) for z in self.zooms]


def stack(*children: Any) -> Any:
    return column(*children, sizing_mode="stretch_width")


__all__ = ["CSS", "Context", "Page", "Reactions", "div", "esc", "hint", "note", "stack"]
