"""One browser tab of the app: the session, worker and x-axis pickers, the page buttons,
the page, and the URL, which always says what is shown (page, sessions, worker, x axis,
zoom and the page's own choices), so that a link reopens the same view.

The periodic callback asks the server's read layer whether the store changed; when it
did, the page on screen streams what is new (new sessions join the picker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from bokeh.events import RangesUpdate
from bokeh.layouts import column, row
from bokeh.models import CustomJS, Div, MultiChoice, RadioButtonGroup, Select  # type: ignore[attr-defined]
from embedviz.server.charts import ALL, X_MODES
from embedviz.server.messages import Messages, pick_language
from embedviz.server.page import Context, Page, Reactions, div, esc, hint, note
from embedviz.server.pages import PAGES, TITLES, TRAINING

from embedviz.store import SessionInfo

log = logging.getLogger("embedviz.server")

POLL_MS = 500
#: what each page keeps in the URL besides page, sessions, worker, x axis and zoom
PAGE_STATE = {"overview": ("log", "smooth"), "model": ("layer", "it"), "system": (),
              "health": (), "embeddings": ("set", "snap", "proj", "colour", "q", "word")}
X_LABELS = ("Iteration", "Relative time (s)", "Wall time")
SPREAD = ("All workers: each line is the median across the workers of its session, its "
          "band their range (min to max).")

URL_JS = """
const q = state.text;
const url = window.location.pathname + (q ? "?" + q : "") + window.location.hash;
if (url !== window.location.pathname + window.location.search + window.location.hash)
  window.history.replaceState(null, "", url);
"""


def _request_args(doc: Any) -> dict[str, list[str]]:
    ctx = getattr(doc, "session_context", None)
    req = getattr(ctx, "request", None) if ctx is not None else None
    if req is None:
        return {}
    return {k: [v.decode("utf-8", "replace") for v in vs] for k, vs in req.arguments.items()}


def _header(doc: Any, name: str) -> str | None:
    ctx = getattr(doc, "session_context", None)
    req = getattr(ctx, "request", None) if ctx is not None else None
    return None if req is None else req.headers.get(name)


def session_label(s: SessionInfo) -> str:
    """A session as the picker lists it, escaped: the picker (Choices.js) renders its
    labels as HTML, and names and tags come from users' scripts and files."""
    tags = " ".join(f"{k}={v}" for k, v in (s.tags or {}).items())
    return esc(f"{s.name or '-'} {('[' + tags + '] ') if tags else ''}({s.id})")


class Tab(Reactions):
    """The app in one browser tab (one Bokeh document); see the module docstring."""

    def __init__(self, doc: Any, app: Any, *, lang: str | None = None,
                 args: dict[str, list[str]] | None = None) -> None:
        self.doc, self.app, self.provider = doc, app, app.provider
        self.args = args if args is not None else _request_args(doc)
        self.t = Messages(pick_language(lang or self._arg("lang") or getattr(app, "lang", None),
                                        _header(doc, "Accept-Language")))
        self.pages: dict[str, Page] = {}
        self.state: dict[str, dict[str, str]] = {p: {} for p in PAGES}
        self.zoom: tuple[float, float] | None = None
        self.current = "overview"
        self.seen = -1
        self.polled = -float("inf")
        self._zooming = 0
        self.owner = getattr(getattr(doc, "session_context", None), "id", "") or str(id(doc))

    def _arg(self, name: str) -> str | None:
        got = self.args.get(name)
        return got[0] if got else None

    # ------------------------------------------------------------ building
    def build(self) -> None:
        t = self.t
        self.doc.title = "embedviz"
        known = self.provider.sessions()
        self.header = div(f"<div class='ev-head'><b>embedviz</b> &middot; "
                          f"{esc(self.app.store.label)}</div>", sizing_mode="stretch_width")
        page = self._arg("page") or ""
        self.current = page if page in PAGES else ("overview" if known else "embeddings")
        for key in PAGE_STATE[self.current]:
            if self._arg(key) is not None:
                self.state[self.current][key] = self._arg(key) or ""
        picked = self._picked_from_url(known) or self._default_sessions(known)
        self.choice = MultiChoice(title=t("Sessions"), options=[(s.id, session_label(s)) for s in known],
                                  value=picked, width=520, name="sessions", visible=bool(known))
        self.worker = Select(title=t("Worker"), options=[], value="", width=150, name="worker")
        mode = self._arg("x")
        self.mode = mode if mode in X_MODES else "iteration"
        self.xmode = RadioButtonGroup(labels=[t(x) for x in X_LABELS], name="x-axis",
                                      active=X_MODES.index(self.mode))
        self.tabs = RadioButtonGroup(labels=[t(TITLES[p]) for p in PAGES], name="pages",
                                     active=list(PAGES).index(self.current))
        self.holder = column(sizing_mode="stretch_width", name="page")
        self.url = Div(text="", visible=False, name="url-state")
        self.url.js_on_change("text", CustomJS(args={"state": self.url}, code=URL_JS))
        # (the URL as first built: no change of the Div's text reaches the browser for it)
        self.doc.js_on_event("document_ready", CustomJS(args={"state": self.url}, code=URL_JS))
        self._workers(self._arg("worker"))
        lo, hi = self._arg("from"), self._arg("to")
        if lo is not None and hi is not None:
            try:
                self.zoom = (float(lo), float(hi))
            except ValueError:
                self.zoom = None
        self.show(self.current)
        self.choice.on_change("value", self.guard(self.on_sessions))
        self.worker.on_change("value", self.guard(lambda a, o, n: self.rebuild()))
        self.tabs.on_change("active", self.guard(self.on_tab))
        self.xmode.on_change("active", self.guard(self.on_mode))
        pickers = row(self.choice, self.worker, column(div(esc(t("x axis"))), self.xmode))
        self.doc.add_root(column(self.header, pickers, self.tabs, self.holder, self.url,
                                 sizing_mode="stretch_width"))
        self.callback = self.doc.add_periodic_callback(self.tick, POLL_MS)
        self.provider.viewers.add(self.owner)
        if hasattr(self.doc, "on_session_destroyed"):
            self.doc.on_session_destroyed(self._closed)

    def _picked_from_url(self, known: list[SessionInfo]) -> list[str]:
        ids = {s.id for s in known}
        wanted: list[str] = []
        for value in self.args.get("session", []):
            # (one value may hold several ids separated by commas, as older links did)
            wanted += [value] if value in ids else [v for v in value.split(",") if v]
        return [w for w in dict.fromkeys(wanted) if w in ids]

    def _default_sessions(self, known: list[SessionInfo]) -> list[str]:
        """The newest session with per-layer statistics (a training, not a word2vec run),
        else the newest."""
        for s in reversed(known):
            worker = self.provider.worker(s.id)
            if any(k.startswith("param/") for k in self.provider.keys(s.id, worker)):
                return [s.id]
        return [known[-1].id] if known else []

    def sessions(self) -> list[SessionInfo]:
        by_id = {s.id: s for s in self.provider.sessions()}
        return [by_id[i] for i in self.choice.value if i in by_id]

    def _workers(self, wanted: str | None = None) -> None:
        """The worker picker: every worker of the sessions picked, and "all workers" (their
        spread) when one of them has several (the ranks of a torch.distributed job)."""
        names: list[str] = []
        several = False
        for s in self.sessions():
            mine = self.provider.workers(s.id)
            several = several or len(mine) > 1
            names += [w for w in mine if w not in names]
        values = ([ALL] if several else []) + names
        if wanted == "all" and "all" not in names:  # (the URL's "*", as a person would write it)
            wanted = ALL
        self.silently(self.worker, "options",
                      [(ALL, self.t("all workers"))] * several + [(w, w) for w in names])
        value = wanted if wanted in values else (self.worker.value if self.worker.value in values
                                                 else (names[0] if names else ""))
        self.silently(self.worker, "value", value)
        self.worker.visible = len(values) > 1

    def context(self, name: str) -> Context:
        return Context(self.provider, self.t, self.sessions(), self.worker.value or None,
                       self.mode, self.state[name], getattr(self.app, "jobs", None), self.owner,
                       go=self.go, changed=self.write_url)

    def show(self, name: str) -> None:
        """Show page ``name``: as built before if it was, else built now."""
        self.current = name
        page = self.pages.get(name)
        if page is None:
            page = self.pages[name] = self._build(name)
        self.holder.children = [page.layout]
        self.write_url()

    def _build(self, name: str) -> Page:
        t = self.t
        if name in TRAINING and not self.sessions():
            return Page(note(t("No training sessions in this store: the Embeddings page shows "
                               "its maps. Record a training with StatsListener, or run "
                               "`embedviz demo`.") if not self.provider.sessions() else
                             t("Pick a session above.")))
        ctx = self.context(name)
        try:
            page = PAGES[name](ctx)
            if ctx.worker == ALL and name != "health" and any(
                    ctx.worker_of(s) == ALL for s in ctx.sessions):
                page.layout = column(hint(t(SPREAD), name="spread-note"), page.layout,
                                     sizing_mode="stretch_width")
            for c in ctx.charts:
                c.fig.on_event(RangesUpdate, self.on_range)
            if self.zoom is not None and ctx.charts:
                page.zoom(*self.zoom)
                self._zoom_js(ctx, *self.zoom)
            return page
        except Exception as exc:  # (a page that cannot be drawn says why; the others work)
            log.exception("embedviz: the %s page failed", name)
            return Page(note(f"{t(TITLES[name])}: {type(exc).__name__}: {exc}", error=True,
                             name="page-error"))

    def _zoom_js(self, ctx: Context, x0: float, x1: float) -> None:
        """The shared x range shows [x0, x1] once the browser has drawn the page (set there,
        so that reset returns to the whole run)."""
        self.doc.js_on_event("document_ready", CustomJS(
            args={"r": ctx.x_range, "x0": x0, "x1": x1}, code="r.setv({start: x0, end: x1});"))

    def rebuild(self) -> None:
        for page in self.pages.values():
            page.close()
        self.pages.clear()
        self.show(self.current)

    # ------------------------------------------------------------ the user's moves
    def on_sessions(self, attr: str, old: list[str], new: list[str]) -> None:
        self._workers()
        self.rebuild()

    def on_tab(self, attr: str, old: int, new: int) -> None:
        self.show(list(PAGES)[new])

    def on_mode(self, attr: str, old: int, new: int) -> None:
        self.mode = X_MODES[new]
        self.zoom = None  # (a window in iterations means nothing in seconds)
        self.rebuild()

    def on_range(self, event: Any) -> None:
        if event.x0 is None or event.x1 is None:
            return
        window = (float(event.x0), float(event.x1))
        if window == self.zoom:
            return
        self.zoom = window
        page = self.pages.get(self.current)
        if page is not None:
            self._zooming += 1
            self._steps(self._zooming, page.zoom_steps(*window))
            if page.covers(*window):
                self.zoom = None  # (reset: a link should follow the whole run)
        self.write_url()

    def _steps(self, zooming: int, steps: list[Callable[[], None]]) -> None:
        """Run the zoom's steps one callback each: each chart's points leave the server
        as soon as they are read (a zoom of a 50-layer page reads ~300 series); a newer
        zoom drops what is left of this one. Without a browser, all at once."""
        while steps and zooming == self._zooming:
            steps.pop(0)()
            if getattr(self.doc, "session_context", None) is not None and steps:
                self.doc.add_next_tick_callback(lambda: self._steps(zooming, steps))
                return

    def go(self, name: str, *, sessions: list[str] | None = None, worker: str | None = None,
           **state: str) -> None:
        """Open page ``name`` for ``sessions`` (the first one's view) at ``state``."""
        if sessions is not None:
            known = {s.id for s in self.provider.sessions()}
            self.silently(self.choice, "value", [s for s in sessions if s in known])
            self._workers(worker)
        self.state[name] = dict(state)
        self.zoom = None
        for page in self.pages.values():
            page.close()
        self.pages.clear()
        self.silently(self.tabs, "active", list(PAGES).index(name))
        self.show(name)

    # ------------------------------------------------------------ live
    def tick(self) -> None:
        started = time.perf_counter()
        try:
            generation = self.provider.refresh()
            changed = generation != self.seen
            if changed and started - self.polled < self.provider.pace() - POLL_MS / 2000:
                return  # (many tabs open: this one's turn comes at the next tick)
            self.seen, self.polled = generation, started
            page = self.pages.get(self.current)
            if page is not None:
                page.poll(changed)
            if changed:
                self._sync_sessions()
        except Exception:  # (a store busy or gone for a moment: the next tick tries again)
            log.warning("embedviz: the live update failed", exc_info=True)
        ticks = getattr(self.app, "ticks", None)
        if ticks is not None:
            ticks.append(time.perf_counter() - started)

    def _sync_sessions(self) -> None:
        now = self.provider.sessions()
        options = [(s.id, session_label(s)) for s in now]
        if options == list(self.choice.options):
            return
        self.silently(self.choice, "options", options)
        if not self.choice.visible and now:
            self.choice.visible = True
            if not self.choice.value:
                self.silently(self.choice, "value", self._default_sessions(now))
                self._workers()
                self.rebuild()

    def _closed(self, session_context: Any) -> None:
        self.provider.viewers.discard(self.owner)
        jobs = getattr(self.app, "jobs", None)
        if jobs is not None:
            for job in jobs.list(owner=self.owner):
                job.cancel()

    # ------------------------------------------------------------ the URL
    def write_url(self) -> None:
        """Put what is shown into the page's URL (the browser replaces it in place)."""
        q: list[tuple[str, str]] = [("page", self.current)]
        q += [("session", s) for s in self.choice.value]
        if self.worker.value and self.worker.visible:
            q.append(("worker", self.worker.value))
        if self.mode != "iteration":
            q.append(("x", str(self.mode)))
        if self.zoom is not None and self.current in TRAINING:
            q += [("from", f"{self.zoom[0]:.10g}"), ("to", f"{self.zoom[1]:.10g}")]
        q += [(k, v) for k, v in self.state[self.current].items()
              if k in PAGE_STATE[self.current] and v not in (None, "")]
        if self._arg("lang"):
            q.append(("lang", str(self.t.lang)))
        self.url.text = urlencode(q)


def build_document(doc: Any, app: Any, *, lang: str | None = None, page: str | None = None,
                   sessions: list[str] | None = None, **state: str) -> Tab:
    """Fill ``doc`` with the app over ``app`` (an :class:`~embedviz.server.AppState`). The
    URL's arguments (``?page=model&session=ID&layer=fc1&lang=ja``) say what to show;
    ``page``, ``sessions`` and ``state`` given here stand in for them (tests)."""
    args = _request_args(doc)
    if page is not None:
        args["page"] = [page]
    if sessions is not None:
        args["session"] = list(sessions)
    for k, v in state.items():
        args[k] = [v]
    tab = Tab(doc, app, lang=lang, args=args)
    tab.build()
    return tab


__all__ = ["POLL_MS", "Tab", "build_document", "session_label"]
